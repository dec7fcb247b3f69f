//! The receive path: frames sent on the host side of the TAP, landing in the test driver's
//! receive buffers.

use std::time::Duration;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

use super::testutil::*;
use super::*;
use crate::virtio::{features, VirtioDevice};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const BUF_LEN: u32 = 2048;

fn header(mem: &memory::GuestMemoryMmap, addr: u64) -> (u8, u8, u16) {
    let hdr = read_guest(mem, addr, VNET_HDR_LEN);
    (hdr[0], hdr[1], u16::from_le_bytes([hdr[10], hdr[11]]))
}

/// Runs `body` with a device on a fresh TAP in a private namespace, activated with `acked`.
fn with_device(
    tag: &'static str,
    acked: u64,
    body: impl FnOnce(
            &HostSide,
            &mut Net,
            &memory::GuestMemoryMmap,
            &mut DriverQueue,
            &std::sync::Arc<crate::virtio::Interrupt>,
        ) + Send
        + 'static,
) {
    if !require_root(tag) {
        return;
    }
    in_netns(move || {
        let host = HostSide::new(&tap_name("rx")).unwrap();
        let mem = guest_memory();
        let mut net = Net::new(config(&host.name)).unwrap();
        host.up();
        let mut rx = DriverQueue::new(&mem, RX_RING);
        let tx = DriverQueue::new(&mem, TX_RING);
        let interrupt = activate(&mut net, &mem, &rx, &tx, acked);
        body(&host, &mut net, &mem, &mut rx, &interrupt);
    });
}

#[test]
fn a_frame_lands_in_a_posted_2k_buffer_with_a_v1_header() {
    with_device(
        "a_frame_lands_in_a_posted_2k_buffer_with_a_v1_header",
        0,
        |host, net, mem, rx, interrupt| {
            rx.post(&[Buf(BUFFERS, BUF_LEN, true)]);
            let sent = frame(GUEST_MAC, 300, 1);
            host.send(&sent);
            tap_readable(net);

            assert_eq!(
                rx.take_used(),
                vec![(0, (VNET_HDR_LEN + sent.len()) as u32)]
            );
            assert_eq!(
                header(mem, BUFFERS),
                (0, 0, 1),
                "flags, gso_type, num_buffers"
            );
            assert_eq!(
                read_guest(mem, BUFFERS + VNET_HDR_LEN as u64, sent.len()),
                sent
            );
            assert!(interrupted(interrupt));
            let m = net.metrics();
            assert_eq!((m.rx_frames, m.rx_bytes, m.rx_dropped), (1, 300, 0));
        },
    );
}

#[test]
fn a_4000_byte_frame_waits_for_a_second_mergeable_buffer_then_spans_both() {
    with_device(
        "a_4000_byte_frame_waits_for_a_second_mergeable_buffer_then_spans_both",
        MRG_RXBUF,
        |host, net, mem, rx, _| {
            rx.post(&[Buf(BUFFERS, BUF_LEN, true)]);
            let sent = frame(GUEST_MAC, 4000, 2);
            host.send(&sent);
            tap_readable(net);
            assert_eq!(rx.take_used(), vec![], "delivered into too little room");
            assert!(net.rx.has_pending());

            rx.post(&[Buf(BUFFERS + 0x1000, BUF_LEN, true)]);
            net.queue_notify(RX_QUEUE);
            let total = VNET_HDR_LEN + sent.len();
            assert_eq!(
                rx.take_used(),
                vec![(0, BUF_LEN), (1, (total - BUF_LEN as usize) as u32)]
            );
            assert_eq!(header(mem, BUFFERS).2, 2, "num_buffers");
            let mut got = read_guest(
                mem,
                BUFFERS + VNET_HDR_LEN as u64,
                BUF_LEN as usize - VNET_HDR_LEN,
            );
            got.extend(read_guest(mem, BUFFERS + 0x1000, total - BUF_LEN as usize));
            assert_eq!(got, sent);
            assert_eq!(net.metrics().rx_frames, 1);
        },
    );
}

#[test]
fn frames_wait_in_the_device_until_the_driver_posts_buffers() {
    with_device(
        "frames_wait_in_the_device_until_the_driver_posts_buffers",
        0,
        |host, net, mem, rx, interrupt| {
            let first = frame(GUEST_MAC, 100, 3);
            let second = frame(GUEST_MAC, 200, 4);
            host.send(&first);
            host.send(&second);
            tap_readable(net);
            assert_eq!(rx.take_used(), vec![]);
            assert!(!interrupted(interrupt));
            // The device holds one frame and leaves the other in the TAP.
            assert!(net.rx.has_pending());
            assert!(wait_readable(
                std::os::fd::AsRawFd::as_raw_fd(net.tap()),
                Duration::ZERO
            ));

            rx.post(&[Buf(BUFFERS, BUF_LEN, true)]);
            net.queue_notify(RX_QUEUE);
            assert_eq!(
                rx.take_used(),
                vec![(0, (VNET_HDR_LEN + first.len()) as u32)]
            );
            assert_eq!(
                read_guest(mem, BUFFERS + VNET_HDR_LEN as u64, first.len()),
                first
            );
            assert!(interrupted(interrupt));

            rx.post(&[Buf(BUFFERS + 0x1000, BUF_LEN, true)]);
            net.queue_notify(RX_QUEUE);
            assert_eq!(
                rx.take_used(),
                vec![(1, (VNET_HDR_LEN + second.len()) as u32)]
            );
            assert_eq!(
                read_guest(mem, BUFFERS + 0x1000 + VNET_HDR_LEN as u64, second.len()),
                second
            );
            assert!(!net.rx.has_pending());
            assert_eq!(net.metrics().rx_frames, 2);
        },
    );
}

#[test]
fn running_out_of_buffers_asks_for_a_notification_with_event_idx() {
    with_device(
        "running_out_of_buffers_asks_for_a_notification_with_event_idx",
        features::RING_EVENT_IDX,
        |host, net, _, rx, _| {
            rx.post(&[Buf(BUFFERS, BUF_LEN, true)]);
            host.send(&frame(GUEST_MAC, 100, 5));
            host.send(&frame(GUEST_MAC, 100, 6));
            tap_readable(net);
            assert_eq!(rx.take_used().len(), 1);
            // The second frame waits: the driver must notify when it posts the next buffer.
            assert!(net.rx.has_pending());
            assert_eq!(rx.avail_event(), 1);
        },
    );
}

#[test]
fn without_mrg_rxbuf_a_frame_too_big_for_one_buffer_is_dropped_and_the_buffer_kept() {
    with_device(
        "without_mrg_rxbuf_a_frame_too_big_for_one_buffer_is_dropped_and_the_buffer_kept",
        0,
        |host, net, mem, rx, _| {
            rx.post(&[Buf(BUFFERS, BUF_LEN, true)]);
            host.send(&frame(GUEST_MAC, 4000, 7));
            let small = frame(GUEST_MAC, 80, 8);
            host.send(&small);
            tap_readable(net);
            assert_eq!(
                rx.take_used(),
                vec![(0, (VNET_HDR_LEN + small.len()) as u32)]
            );
            assert_eq!(
                read_guest(mem, BUFFERS + VNET_HDR_LEN as u64, small.len()),
                small
            );
            let m = net.metrics();
            assert_eq!((m.rx_dropped, m.rx_frames), (1, 1));
        },
    );
}

#[test]
fn unusable_receive_chains_are_returned_empty_and_the_frame_goes_to_the_next() {
    with_device(
        "unusable_receive_chains_are_returned_empty_and_the_frame_goes_to_the_next",
        MRG_RXBUF,
        |host, net, mem, rx, _| {
            rx.post(&[Buf(BUFFERS, BUF_LEN, false)]); // device-readable
            rx.post(&[Buf(1 << 40, BUF_LEN, true)]); // outside guest memory
            rx.post(&[Buf(BUFFERS, 8, true)]); // smaller than the header
            rx.post(&[Buf(BUFFERS + 0x1000, BUF_LEN, true)]);
            let sent = frame(GUEST_MAC, 500, 9);
            host.send(&sent);
            tap_readable(net);
            assert_eq!(
                rx.take_used(),
                vec![
                    (0, 0),
                    (1, 0),
                    (2, 0),
                    (3, (VNET_HDR_LEN + sent.len()) as u32)
                ]
            );
            assert_eq!(
                read_guest(mem, BUFFERS + 0x1000 + VNET_HDR_LEN as u64, sent.len()),
                sent
            );
            let m = net.metrics();
            assert_eq!((m.rx_malformed, m.rx_frames), (3, 1));
        },
    );
}

#[test]
fn reset_forgets_the_waiting_frame_and_an_inactive_device_drops_what_arrives() {
    with_device(
        "reset_forgets_the_waiting_frame_and_an_inactive_device_drops_what_arrives",
        0,
        |host, net, _, _, _| {
            host.send(&frame(GUEST_MAC, 100, 10));
            tap_readable(net);
            assert!(net.rx.has_pending());
            net.reset();
            assert!(!net.rx.has_pending());
            assert!(net.queues().is_empty());
            host.send(&frame(GUEST_MAC, 100, 11));
            tap_readable(net);
            assert!(!net.rx.has_pending());
            assert_eq!(net.metrics().rx_dropped, 1);
        },
    );
}

/// The device on an event loop, as the transport's subscriber puts it there.
struct OnLoop(Net);

impl event_manager::MutEventSubscriber for OnLoop {
    fn init(&mut self, ops: &mut event_manager::EventOps) {
        self.0.init_host_events(ops);
    }
    fn process(&mut self, events: event_manager::Events, ops: &mut event_manager::EventOps) {
        self.0.host_event(events, ops);
    }
}

#[test]
fn the_event_loop_wakes_for_the_tap_and_no_frame_is_left_behind() {
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    if !require_root("the_event_loop_wakes_for_the_tap_and_no_frame_is_left_behind") {
        return;
    }
    in_netns(|| {
        let host = HostSide::new(&tap_name("loop")).unwrap();
        let mem = guest_memory();
        let mut net = Net::new(config(&host.name)).unwrap();
        host.up();
        let mut rx = DriverQueue::new(&mem, RX_RING);
        let tx = DriverQueue::new(&mem, TX_RING);
        activate(&mut net, &mem, &rx, &tx, 0);
        let device = Arc::new(Mutex::new(OnLoop(net)));
        let mut event_loop = EventManager::<Arc<Mutex<OnLoop>>>::new().unwrap();
        event_loop.add_subscriber(device.clone());
        let run = |event_loop: &mut EventManager<_>| event_loop.run_with_timeout(2000).unwrap();

        // Three frames, one wakeup: the device reads until the TAP is empty.
        for slot in 0..3 {
            rx.post(&[Buf(BUFFERS + slot * 0x1000, BUF_LEN, true)]);
        }
        for seed in 0..3 {
            host.send(&frame(GUEST_MAC, 100, seed));
        }
        while rx.take_used().len() < 3 {
            assert!(run(&mut event_loop) > 0, "no wakeup for frames on the TAP");
        }
        // Out of buffers: the next frame waits, and is delivered when the driver posts one.
        host.send(&frame(GUEST_MAC, 100, 3));
        assert!(run(&mut event_loop) > 0);
        assert!(device.lock().unwrap().0.rx.has_pending());
        rx.post(&[Buf(BUFFERS + 0x4000, BUF_LEN, true)]);
        device.lock().unwrap().0.queue_notify(RX_QUEUE);
        assert_eq!(rx.take_used().len(), 1);
        // Edge-triggered, the loop still wakes for the next frame.
        rx.post(&[Buf(BUFFERS + 0x5000, BUF_LEN, true)]);
        host.send(&frame(GUEST_MAC, 100, 4));
        assert!(
            run(&mut event_loop) > 0,
            "no wakeup after the device drained the TAP"
        );
        assert_eq!(rx.take_used().len(), 1);
        assert_eq!(device.lock().unwrap().0.metrics().rx_frames, 5);
    });
}

#[test]
fn a_frame_waiting_for_buffers_is_charged_to_the_rx_limit_once_when_delivered() {
    with_device(
        "a_frame_waiting_for_buffers_is_charged_to_the_rx_limit_once_when_delivered",
        MRG_RXBUF,
        |host, net, _, rx, _| {
            use crate::rate_limiter::{RateLimitConfig, TokenBucketConfig};
            let three_ops = RateLimitConfig {
                bandwidth: None,
                ops: Some(TokenBucketConfig {
                    size: 3,
                    one_time_burst: 0,
                    refill_time: 10_000,
                }),
            };
            net.update_rate_limiters(three_ops, RateLimitConfig::default());
            rx.post(&[Buf(BUFFERS, BUF_LEN, true)]);
            host.send(&frame(GUEST_MAC, 4000, 9));
            tap_readable(net);
            net.queue_notify(RX_QUEUE);
            net.queue_notify(RX_QUEUE);
            assert_eq!(rx.take_used(), vec![], "still waiting for room");

            rx.post(&[Buf(BUFFERS + 0x1000, BUF_LEN, true)]);
            net.queue_notify(RX_QUEUE);
            assert_eq!(rx.take_used().len(), 2, "delivered, not throttled");
            let limiter = net.rate_limiters().0.metrics();
            assert_eq!(limiter.consumed_ops, 1, "{limiter:?}");
            assert_eq!(limiter.throttled_ops_events, 0, "{limiter:?}");
        },
    );
}
