//! Reset, save and restore.

use super::*;

#[test]
fn reset_closes_every_connection() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, _) = host_connect(&mut s, &mut d, 3);
    s.vsock.reset();
    assert_eq!(s.vsock.connection_count(), 0);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(s.vsock.queues().is_empty());
}

#[test]
fn state_round_trips_and_restore_announces_a_transport_reset() {
    let mut s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    d.activate(&mut s.vsock);
    d.post_rx(&mut s.vsock, 8);
    let (mut host, _) = host_connect(&mut s, &mut d, 3);
    let state = s.vsock.save();
    assert_eq!(state.next_host_port, FIRST_HOST_PORT + 1);
    let json = serde_json::to_string(&state).unwrap();
    let back: VsockState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    // The snapshot's device replaces this one: its connections go.
    drop(s.vsock);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    let mut restored = Vsock::restore(&back).unwrap();
    assert_eq!(restored.save(), state);
    assert_eq!(restored.connection_count(), 0);
    let mem2 = memory();
    let mut d2 = Driver::new(&mem2);
    d2.activate(&mut restored);
    let addr = d2.buffer(8);
    d2.add_chain(2, &[(addr, 8, WO)]);
    restored.queue_notify(2);
    assert_eq!(d2.new_used(2), [(0, 4)]);
    let mut event = [0u8; 4];
    mem2.read_slice(&mut event, GuestAddress(addr)).unwrap();
    assert_eq!(u32::from_le_bytes(event), EVENT_TRANSPORT_RESET);
    // Once only.
    let addr = d2.buffer(8);
    d2.add_chain(2, &[(addr, 8, WO)]);
    restored.queue_notify(2);
    assert!(d2.new_used(2).is_empty());
    // The restored device listens again.
    UnixStream::connect(&back.config.uds_path).unwrap();
}

/// Brings the vsock device up through the transport's registers, with the driver's queues.
fn bring_up(t: &mut crate::virtio::mmio::MmioTransport, d: &Driver) {
    use crate::bus::BusDevice;
    use crate::virtio::status;
    use virtio_bindings::virtio_mmio::*;
    let mut w = |offset: u32, value: u32| t.write(u64::from(offset), &value.to_le_bytes());
    w(VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        w(
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features::COMMON >> (32 * sel)) as u32,
        );
    }
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(VIRTIO_MMIO_STATUS, ok);
    for (index, q) in d.queues.iter().enumerate() {
        w(VIRTIO_MMIO_QUEUE_SEL, index as u32);
        w(VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (low, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table_addr().0),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr().0),
            (VIRTIO_MMIO_QUEUE_USED_LOW, q.used_addr().0),
        ] {
            w(low, addr as u32);
            w(low + 4, (addr >> 32) as u32);
        }
        w(VIRTIO_MMIO_QUEUE_READY, 1);
    }
    w(VIRTIO_MMIO_STATUS, ok | status::DRIVER_OK);
}

#[test]
fn transport_and_device_state_round_trip_through_a_restore() {
    use crate::virtio::mmio::MmioTransport;
    let s = setup();
    let mem = memory();
    let mut d = Driver::new(&mem);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(Box::new(s.vsock), mem.clone(), irq).unwrap();
    bring_up(&mut t, &d);
    assert!(t.is_active());
    d.post_rx(
        t.device_mut().as_any_mut().downcast_mut::<Vsock>().unwrap(),
        4,
    );

    let transport_state = t.save();
    let vsock_state = t.device().as_any().downcast_ref::<Vsock>().unwrap().save();
    assert_eq!(transport_state.acked_features, features::COMMON);
    assert_eq!(transport_state.queues.len(), 3);
    assert_eq!(transport_state.queues[0].next_avail, 0);
    drop(t);

    // The driver posts an event buffer while the VM is saved.
    let addr = d.buffer(4);
    d.add_chain(2, &[(addr, 4, WO)]);
    let device = Vsock::restore(&vsock_state).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut restored =
        MmioTransport::restore(Box::new(device), mem.clone(), irq, &transport_state).unwrap();
    assert!(restored.is_active());
    assert_eq!(d.new_used(2), [(0, 4)]);
    let mut event = [0xffu8; 4];
    mem.read_slice(&mut event, GuestAddress(addr)).unwrap();
    assert_eq!(u32::from_le_bytes(event), EVENT_TRANSPORT_RESET);
    let again = restored.save();
    assert_eq!(again.queues[0], transport_state.queues[0]);
    assert_eq!(again.queues[1], transport_state.queues[1]);
    assert_eq!(again.queues[2].next_used, 1);
    let dev = restored.device().as_any().downcast_ref::<Vsock>().unwrap();
    assert_eq!(dev.save(), vsock_state);
    // The restored device serves host connections on the same socket.
    UnixStream::connect(&s.uds).unwrap();
}
