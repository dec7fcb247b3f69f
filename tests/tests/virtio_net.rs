//! virtio-net end to end: petrel on a TAP inside a network namespace of the test's own;
//! the guest sends a frame, and echoes the one the host sends.

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use tests::netns::NetNs;
use tests::{fnv1a64, kvm_available, netns_available, petrel, test_guest, wait};

const MAC: [u8; 6] = [0x02, 0x50, 0x54, 0x52, 0x4c, 0x01];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// The frame the guest sends: broadcast, from its MAC, a marker and 46 counting bytes.
fn guest_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(b"petrel-guest-frame");
    f.extend(0..46u8);
    f
}

fn host_frame() -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(b"petrel-host-frame");
    f.extend((0..200u8).map(|i| i.wrapping_mul(3)));
    f
}

#[test]
fn frames_cross_the_tap_byte_for_byte_in_both_directions() {
    if !kvm_available() || !netns_available() {
        return;
    }
    let ns = NetNs::with_tap(&format!("petrel-t{}", std::process::id()), "ptap0");
    let sock = ns.packet_socket("ptap0");
    let mac = MAC.map(|b| format!("{b:02x}")).join(":");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(petrel())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args(["--cmdline", "petrel.test=net", "--net"])
        .arg(format!("tap=ptap0,mac={mac}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn petrel in the namespace");

    let is_test_frame = |f: &[u8]| f.len() > 14 && f[12..14] == ETHERTYPE;
    let sent = sock.recv_matching(Duration::from_secs(60), is_test_frame);
    sock.send(&host_frame());
    let echoed = sock.recv_matching(Duration::from_secs(60), |f| {
        is_test_frame(f) && f[14..].starts_with(b"petrel-host-frame")
    });
    let out = wait(child, Duration::from_secs(60));

    out.assert_pass("net");
    assert_eq!(out.lines_with("NET mac="), vec![format!("NET mac={mac}")]);
    assert_eq!(sent.as_deref(), Some(&guest_frame()[..]), "{out}");
    let host = host_frame();
    assert_eq!(
        out.lines_with("NET recv "),
        vec![format!(
            "NET recv len={} fnv={:016x}",
            host.len(),
            fnv1a64(&host)
        )]
    );
    assert_eq!(echoed.as_deref(), Some(&host[..]), "{out}");
}
