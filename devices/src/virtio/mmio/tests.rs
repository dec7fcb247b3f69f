use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use memory::GuestMemoryMmap;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::{features, status, ActivateError, DeviceEnv, Interrupt, VirtioDevice};

const TEST_FEATURE: u64 = 1 << 5;

/// A device that records what the transport asks of it.
#[derive(Default)]
struct Recorder {
    queues: Vec<Queue>,
    activations: usize,
    resets: usize,
    notified: Vec<usize>,
    acked: u64,
    config: [u8; 8],
    refuse: bool,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        42
    }
    fn avail_features(&self) -> u64 {
        features::COMMON | TEST_FEATURE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = *self.config.get(offset as usize + i).unwrap_or(&0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, queues: Vec<Queue>, env: DeviceEnv) -> Result<(), ActivateError> {
        if self.refuse {
            return Err(ActivateError::Backend("refused".into()));
        }
        self.queues = queues;
        self.activations += 1;
        self.acked = env.acked_features;
        Ok(())
    }
    fn reset(&mut self) {
        self.queues.clear();
        self.resets += 1;
    }
    fn queues(&self) -> Vec<&Queue> {
        self.queues.iter().collect()
    }
    fn queue_notify(&mut self, index: usize) {
        self.notified.push(index);
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn transport() -> MmioTransport {
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    MmioTransport::new(Box::<Recorder>::default(), memory(), interrupt).unwrap()
}

fn recorder(t: &MmioTransport) -> &Recorder {
    t.device()
        .as_any()
        .downcast_ref()
        .expect("these tests wrap a Recorder")
}

fn read(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    t.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

/// Negotiates `acked` and returns what the status register reads after FEATURES_OK.
fn negotiate(t: &mut MmioTransport, acked: u64) -> u32 {
    // virtio-drivers writes ACKNOWLEDGE and DRIVER in one go: that must work.
    write(t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        write(t, VIRTIO_MMIO_DRIVER_FEATURES, (acked >> (32 * sel)) as u32);
    }
    write(
        t,
        VIRTIO_MMIO_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    read(t, VIRTIO_MMIO_STATUS)
}

/// Sets up queue `index` of `size` entries at distinct, aligned addresses.
fn setup_queue(t: &mut MmioTransport, index: u32, size: u32) {
    let base = 0x1_0000 * (u64::from(index) + 1);
    write(t, VIRTIO_MMIO_QUEUE_SEL, index);
    write(t, VIRTIO_MMIO_QUEUE_NUM, size);
    for (low, addr) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, base),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x4000),
        (VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x8000),
    ] {
        write(t, low, addr as u32);
        write(t, low + 4, (addr >> 32) as u32);
    }
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

fn driver_ok(t: &mut MmioTransport) {
    write(
        t,
        VIRTIO_MMIO_STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
}

fn bring_up(t: &mut MmioTransport) {
    assert_ne!(negotiate(t, features::COMMON) & status::FEATURES_OK, 0);
    setup_queue(t, 0, 16);
    setup_queue(t, 1, 8);
    driver_ok(t);
}

#[test]
fn identifies_as_a_version_2_device() {
    let mut t = transport();
    assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
        (features::COMMON | TEST_FEATURE) as u32
    );
    write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1); // VERSION_1 is bit 32
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

#[test]
fn driver_brings_the_device_up_and_it_gets_its_queues() {
    let mut t = transport();
    bring_up(&mut t);
    assert!(t.is_active());
    let dev = recorder(&t);
    assert_eq!(dev.activations, 1);
    assert_eq!(dev.acked, features::COMMON);
    assert_eq!(dev.queues[0].size(), 16);
    assert_eq!(dev.queues[1].desc_table(), 0x2_0000);
    assert!(dev.queues.iter().all(|q| q.event_idx_enabled()));
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn features_the_device_did_not_offer_are_refused() {
    let mut t = transport();
    let status = negotiate(&mut t, features::COMMON | 1 << 40);
    assert_eq!(status & status::FEATURES_OK, 0);
    driver_ok(&mut t);
    assert!(!t.is_active());
}

#[test]
fn a_legacy_driver_without_version_1_is_refused() {
    let mut t = transport();
    assert_eq!(negotiate(&mut t, TEST_FEATURE) & status::FEATURES_OK, 0);
}

#[test]
fn queue_size_that_is_not_a_power_of_two_needs_reset() {
    let mut t = transport();
    negotiate(&mut t, features::COMMON);
    setup_queue(&mut t, 0, 12);
    setup_queue(&mut t, 1, 8);
    driver_ok(&mut t);
    assert!(!t.is_active());
    assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(recorder(&t).activations, 0);
    // A reset clears it and the device can be brought up properly.
    write(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
    bring_up(&mut t);
    assert!(t.is_active());
}

#[test]
fn misaligned_ring_address_needs_reset() {
    let mut t = transport();
    negotiate(&mut t, features::COMMON);
    setup_queue(&mut t, 0, 16);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1_0001);
    driver_ok(&mut t);
    assert!(!t.is_active());
    assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn ready_queue_outside_guest_memory_needs_reset() {
    let mut t = transport();
    negotiate(&mut t, features::COMMON);
    setup_queue(&mut t, 0, 16);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0x10);
    driver_ok(&mut t);
    assert!(!t.is_active());
    assert!(t.interrupt.needs_reset());
}

#[test]
fn queue_setup_after_driver_ok_is_ignored() {
    let mut t = transport();
    bring_up(&mut t);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    assert_eq!(recorder(&t).queues[0].size(), 16);
}

#[test]
fn status_writes_that_clear_bits_are_ignored() {
    let mut t = transport();
    negotiate(&mut t, features::COMMON);
    write(&mut t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE);
    assert_ne!(read(&mut t, VIRTIO_MMIO_STATUS) & status::FEATURES_OK, 0);
}

#[test]
fn reset_returns_device_and_transport_to_their_initial_state() {
    let mut t = transport();
    bring_up(&mut t);
    t.interrupt.signal_used_queue();
    write(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_active());
    assert_eq!(recorder(&t).resets, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    bring_up(&mut t);
    assert_eq!(recorder(&t).activations, 2);
}

#[test]
fn interrupt_status_is_acknowledged_bit_by_bit() {
    let mut t = transport();
    t.interrupt.signal_used_queue();
    t.interrupt.signal_config_change();
    assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    assert_eq!(t.interrupt.irqfd().read().unwrap(), 2);
    write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
}

#[test]
fn config_space_is_reached_at_any_width() {
    let mut t = transport();
    t.write(0x102, &[0xab, 0xcd]);
    let mut byte = [0u8; 1];
    t.read(0x103, &mut byte);
    assert_eq!(byte, [0xcd]);
    let mut word = [0u8; 4];
    t.read(0x100, &mut word);
    assert_eq!(word, [0, 0, 0xab, 0xcd]);
}

#[test]
fn unaligned_or_narrow_register_accesses_are_ignored() {
    let mut t = transport();
    let mut narrow = [0xffu8; 2];
    t.read(0, &mut narrow);
    assert_eq!(narrow, [0, 0]);
    t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
}

fn event_loop(
    t: Arc<Mutex<MmioTransport>>,
) -> EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(Arc::new(Mutex::new(VirtioSubscriber::new(t))));
    em
}

#[test]
fn notifications_reach_an_active_device_only() {
    let t = Arc::new(Mutex::new(transport()));
    let mut em = event_loop(t.clone());
    write(&mut t.lock().unwrap(), VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    em.run_with_timeout(0).unwrap();
    assert!(recorder(&t.lock().unwrap()).notified.is_empty());

    bring_up(&mut t.lock().unwrap());
    write(&mut t.lock().unwrap(), VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    write(&mut t.lock().unwrap(), VIRTIO_MMIO_QUEUE_NOTIFY, 7); // no such queue
    em.run_with_timeout(0).unwrap();
    assert_eq!(recorder(&t.lock().unwrap()).notified, vec![1]);
}

#[test]
fn save_and_restore_an_active_device_with_its_queues() {
    let mut t = transport();
    bring_up(&mut t);
    t.interrupt.signal_used_queue();
    let state = t.save();
    assert!(state.active);
    assert_eq!(state.queues[1].size, 8);
    assert_eq!(state.interrupt_status, 1);

    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut restored =
        MmioTransport::restore(Box::<Recorder>::default(), memory(), irq, &state).unwrap();
    assert!(restored.is_active());
    let dev = recorder(&restored);
    assert_eq!(dev.activations, 1);
    assert_eq!(dev.queues[0].avail_ring(), 0x1_4000);
    // Buffers made available while saving are looked at right away.
    assert_eq!(dev.notified, vec![0, 1]);
    assert_eq!(restored.save(), state);
}

#[test]
fn restore_refuses_a_state_for_another_device() {
    let mut t = transport();
    bring_up(&mut t);
    let mut state = t.save();
    state.queues.pop();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(matches!(
        MmioTransport::restore(Box::<Recorder>::default(), memory(), irq, &state),
        Err(RestoreError::QueueCount {
            saved: 1,
            device: 2
        })
    ));
    let mut state = t.save();
    state.queues[0].size = 3;
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(matches!(
        MmioTransport::restore(Box::<Recorder>::default(), memory(), irq, &state),
        Err(RestoreError::Queue { index: 0, .. })
    ));
}

#[test]
fn queue_ready_zero_on_a_running_device_reads_back_until_reset() {
    let mut t = transport();
    bring_up(&mut t);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    write(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    assert!(t.is_active());
    write(&mut t, VIRTIO_MMIO_STATUS, 0);
    bring_up(&mut t);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn a_device_that_refuses_activation_needs_reset_and_keeps_its_queue_setup() {
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let device = Recorder {
        refuse: true,
        ..Default::default()
    };
    let mut t = MmioTransport::new(Box::new(device), memory(), interrupt).unwrap();
    bring_up(&mut t);
    assert!(!t.is_active());
    assert_ne!(t.device_status() & status::DEVICE_NEEDS_RESET, 0);
    write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    // A snapshot of it still has every queue, and restores.
    let state = t.save();
    assert_eq!(state.queues.len(), 2);
    assert!(state.needs_reset);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let restored =
        MmioTransport::restore(Box::<Recorder>::default(), memory(), irq, &state).unwrap();
    assert_ne!(restored.device_status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn restore_refuses_features_the_device_does_not_offer() {
    let mut t = transport();
    bring_up(&mut t);
    let mut state = t.save();
    state.acked_features |= 1 << 40;
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    assert!(matches!(
        MmioTransport::restore(Box::<Recorder>::default(), memory(), irq, &state),
        Err(RestoreError::Features { .. })
    ));
}
