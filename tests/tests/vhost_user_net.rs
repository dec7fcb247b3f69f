//! vhost-user-net end to end: a loop-back back end ([`LoopServer`], on a thread of the test)
//! serves the guest's NIC over a vhost-user socket; a frame the guest sends comes back to it.

use std::path::Path;
use std::time::{Duration, Instant};

use resources::snapshot_proto::{fnv1a64, net_frame};
use tests::snapshot_guest::SnapshotGuest;
use tests::vhost_user_net_loop::{LoopConfig, LoopServer};
use tests::{kvm_available, run, test_guest};

/// The back end's MAC, which the guest sees when petrel is given none.
const BACKEND_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01];

/// Serves `socket` with the loop-back back end on a thread, for the rest of the test.
fn loop_server(socket: &Path) -> std::sync::Arc<tests::vhost_user_net_loop::Counters> {
    let config = LoopConfig {
        mac: BACKEND_MAC,
        ..LoopConfig::default()
    };
    let mut server = LoopServer::bind(socket, config).expect("bind the loop-back back end");
    let counters = server.counters();
    std::thread::spawn(move || server.serve(|_| {}));
    counters
}

#[test]
fn a_frame_the_guest_sends_comes_back_through_the_loop_back_back_end() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("net.sock");
    let counters = loop_server(&socket);

    let device = format!("socket={}", socket.display());
    let (mut vm, mut guest) = SnapshotGuest::boot("128M", &["--vhost-user-net", &device]);
    let n = guest.net(&vm);
    let start = Instant::now();
    let got = loop {
        if let Some(got) = guest.net_recv(&vm) {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "frame {n} did not come back"
        );
    };

    // The guest used the back end's MAC (from its config space) as the source.
    let frame = net_frame(BACKEND_MAC, n);
    assert_eq!(got, (frame.len(), fnv1a64(&frame)), "frame {n}");
    assert!(counters.looped() >= 1);
    guest.quit(&mut vm);
}

#[test]
fn a_socket_that_does_not_exist_fails_the_start_naming_it() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = run(
        &[
            "--kernel",
            test_guest().to_str().unwrap(),
            "--vhost-user-net",
            &format!("socket={}", socket.display()),
        ],
        Duration::from_secs(30),
    );
    assert_ne!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stderr
            .contains("cannot connect to the vhost-user socket")
            && out.stderr.contains("nobody.sock"),
        "{out}"
    );
}
