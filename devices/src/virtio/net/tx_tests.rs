//! The transmit path, and save/restore: frames the test driver sends, arriving on the host
//! side of the TAP.

use std::os::fd::AsRawFd;
use std::time::Duration;

use super::testutil::*;
use super::*;
use crate::virtio::{features, VirtioDevice, HOST_EVENT_BASE};

const BROADCAST: [u8; 6] = [0xff; 6];

#[test]
fn tx_frames_reach_the_tap_byte_for_byte() {
    if !require_root("tx_frames_reach_the_tap_byte_for_byte") {
        return;
    }
    in_netns(|| {
        let host = HostSide::new(&tap_name("tx")).unwrap();
        let mem = guest_memory();
        let mut net = Net::new(config(&host.name)).unwrap();
        host.up();
        let rx = DriverQueue::new(&mem, RX_RING);
        let mut tx = DriverQueue::new(&mem, TX_RING);
        let interrupt = activate(&mut net, &mem, &rx, &tx, 0);

        // Header and frame in one descriptor, as virtio-drivers sends.
        let one = frame(BROADCAST, 60, 1);
        let len = write_packet(&mem, BUFFERS, &one);
        tx.post(&[Buf(BUFFERS, len, false)]);
        // Header and frame apart, the frame straddling the boundary between memory regions.
        let two = frame(BROADCAST, 1514, 2);
        let straddling = REGION_SIZE as u64 - 700;
        write_packet(&mem, straddling - VNET_HDR_LEN as u64, &two);
        tx.post(&[
            Buf(straddling - VNET_HDR_LEN as u64, VNET_HDR_LEN as u32, false),
            Buf(straddling, two.len() as u32, false),
        ]);
        net.queue_notify(TX_QUEUE);

        assert_eq!(host.recv(Duration::from_secs(2)).as_deref(), Some(&one[..]));
        assert_eq!(host.recv(Duration::from_secs(2)).as_deref(), Some(&two[..]));
        assert_eq!(tx.take_used(), vec![(0, 0), (1, 0)]);
        assert!(interrupted(&interrupt));
        let m = net.metrics();
        assert_eq!(
            (m.tx_frames, m.tx_bytes, m.tx_malformed, m.tx_dropped),
            (2, 60 + 1514, 0, 0)
        );
    });
}

#[test]
fn malformed_tx_chains_are_dropped_and_counted_and_the_device_keeps_working() {
    if !require_root("malformed_tx_chains_are_dropped_and_counted_and_the_device_keeps_working") {
        return;
    }
    in_netns(|| {
        let host = HostSide::new(&tap_name("txbad")).unwrap();
        let mem = guest_memory();
        let mut net = Net::new(config(&host.name)).unwrap();
        host.up();
        let rx = DriverQueue::new(&mem, RX_RING);
        let mut tx = DriverQueue::new(&mem, TX_RING);
        activate(&mut net, &mem, &rx, &tx, 0);
        let good = frame(BROADCAST, 100, 3);
        let len = write_packet(&mem, BUFFERS, &good);

        tx.post(&[
            Buf(BUFFERS, VNET_HDR_LEN as u32, false),
            Buf(BUFFERS + 12, 88, true),
        ]); // a write-only descriptor
        tx.post(&[Buf(BUFFERS, VNET_HDR_LEN as u32, false)]); // header only
        tx.post(&[
            Buf(BUFFERS, VNET_HDR_LEN as u32, false),
            Buf(1 << 40, 100, false),
        ]); // outside memory
        tx.post(&[Buf(2 * REGION_SIZE as u64 - 50, 100, false)]); // runs off the end of memory
        tx.post(&[Buf(BUFFERS, MAX_PACKET_LEN as u32 + 1, false)]); // longer than 64 KiB + header
        tx.post(&[Buf(BUFFERS, len, false)]);
        net.queue_notify(TX_QUEUE);

        assert_eq!(
            host.recv(Duration::from_secs(2)).as_deref(),
            Some(&good[..])
        );
        assert_eq!(
            host.recv(Duration::from_millis(100)),
            None,
            "a malformed chain reached the TAP"
        );
        let used = tx.take_used();
        assert_eq!(used.len(), 6);
        assert!(used.iter().all(|&(_, len)| len == 0));
        let m = net.metrics();
        assert_eq!((m.tx_malformed, m.tx_frames), (5, 1));
    });
}

#[test]
fn save_and_restore_keep_the_mac_and_the_device_carries_on() {
    if !require_root("save_and_restore_keep_the_mac_and_the_device_carries_on") {
        return;
    }
    in_netns(|| {
        let host = HostSide::new(&tap_name("snap")).unwrap();
        let mem = guest_memory();
        let mut net = Net::new(NetConfig {
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            ..config(&host.name)
        })
        .unwrap();
        host.up();
        let rx = DriverQueue::new(&mem, RX_RING);
        let mut tx = DriverQueue::new(&mem, TX_RING);
        activate(&mut net, &mem, &rx, &tx, 0);
        let first = frame(BROADCAST, 64, 4);
        let len = write_packet(&mem, BUFFERS, &first);
        tx.post(&[Buf(BUFFERS, len, false)]);
        net.queue_notify(TX_QUEUE);
        assert_eq!(
            host.recv(Duration::from_secs(2)).as_deref(),
            Some(&first[..])
        );

        let state = net.save();
        let json = serde_json::to_string(&state).unwrap();
        let queues: Vec<_> = net
            .queues()
            .into_iter()
            .map(crate::virtio::QueueState::of)
            .collect();
        drop(net);
        let state: NetState = serde_json::from_str(&json).unwrap();
        let mut restored = Net::restore(&state).unwrap();
        assert_eq!(restored.save(), state);
        assert_eq!(restored.config().mac, state.config.mac);
        assert_eq!(restored.avail_features(), state.avail_features);

        let queues = queues.iter().map(|q| q.to_queue().unwrap()).collect();
        let interrupt = std::sync::Arc::new(crate::virtio::Interrupt::new(
            vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        ));
        let env = crate::virtio::DeviceEnv {
            mem: mem.clone(),
            interrupt,
            acked_features: features::VERSION_1,
            kicks: Default::default(),
        };
        restored.activate(queues, env).unwrap();
        let second = frame(BROADCAST, 64, 5);
        let len = write_packet(&mem, BUFFERS + 0x1000, &second);
        tx.post(&[Buf(BUFFERS + 0x1000, len, false)]);
        restored.queue_notify(TX_QUEUE);
        assert_eq!(
            host.recv(Duration::from_secs(2)).as_deref(),
            Some(&second[..])
        );
        assert_eq!(tx.take_used(), vec![(0, 0), (1, 0)]);
    });
}

#[test]
fn restore_refuses_a_tap_without_the_offloads_the_guest_may_use() {
    if !require_root("restore_refuses_a_tap_without_the_offloads_the_guest_may_use") {
        return;
    }
    in_netns(|| {
        let unlimited = crate::rate_limiter::RateLimiter::new(Default::default())
            .unwrap()
            .save();
        let state = NetState {
            config: config("ptrestore"),
            avail_features: u64::MAX,
            rx_rate_limiter: unlimited.clone(),
            tx_rate_limiter: unlimited,
        };
        let err = Net::restore(&state)
            .err()
            .expect("restored with impossible features");
        assert!(matches!(err, NetError::RestoreFeatures { .. }), "{err}");
        assert!(err.to_string().contains("ptrestore"));
    });
}

#[test]
fn tx_ops_limit_holds_frames_back_until_the_timer_fires() {
    if !require_root("tx_ops_limit_holds_frames_back_until_the_timer_fires") {
        return;
    }
    in_netns(|| {
        use crate::rate_limiter::{RateLimitConfig, TokenBucketConfig};
        let host = HostSide::new(&tap_name("txrl")).unwrap();
        let mem = guest_memory();
        let mut cfg = config(&host.name);
        // One frame per 50 ms, no burst.
        cfg.tx_rate_limiter = Some(RateLimitConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: 50,
            }),
        });
        let mut net = Net::new(cfg).unwrap();
        host.up();
        let rx = DriverQueue::new(&mem, RX_RING);
        let mut tx = DriverQueue::new(&mem, TX_RING);
        activate(&mut net, &mem, &rx, &tx, 0);
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(BROADCAST, 80, i)).collect();
        for (i, f) in frames.iter().enumerate() {
            let addr = BUFFERS + 0x1000 * i as u64;
            let len = write_packet(&mem, addr, f);
            tx.post(&[Buf(addr, len, false)]);
        }
        net.queue_notify(TX_QUEUE);

        // The bucket lets one through; the others wait on the ring, in order.
        assert_eq!(tx.take_used(), vec![(0, 0)]);
        assert_eq!(
            host.recv(Duration::from_secs(2)).as_deref(),
            Some(&frames[0][..])
        );
        let mut sent = 1;
        while sent < 3 {
            let timer = net.rate_limiters().1.as_raw_fd();
            assert!(
                wait_readable(timer, Duration::from_secs(5)),
                "the limiter's timer fired"
            );
            net.process_limiter_event(HOST_EVENT_BASE + 2);
            for (head, _) in tx.take_used() {
                assert_eq!(head as usize, sent);
                assert_eq!(
                    host.recv(Duration::from_secs(2)).as_deref(),
                    Some(&frames[sent][..])
                );
                sent += 1;
            }
        }
        let limiter = net.rate_limiters().1.metrics();
        assert_eq!(limiter.consumed_ops, 3);
        assert!(limiter.throttled_ops_events >= 2, "{limiter:?}");
        assert_eq!(net.metrics().tx_frames, 3);
    });
}
