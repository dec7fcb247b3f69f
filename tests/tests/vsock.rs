//! virtio-vsock end to end: the test guest echoes on connections the host opens (through the
//! device's Unix socket and `CONNECT <port>`) and on one it opens to a host port (a Unix
//! socket listening at `<uds>_<port>`).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tests::{device_metrics, kvm_available, Running};

const GUEST_PORT: u32 = 1234;
const HOST_PORT: u32 = 5000;
const CID: u32 = 52;

/// Connects to guest port `port` through the device's socket; returns the stream once the
/// guest accepted (`OK <host_port>`).
fn connect_guest(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        s.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let host_port: u32 = line
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("bad reply {line:?}"));
    assert!(host_port >= 1 << 30, "{line}");
    s
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

/// Writes `data` on one thread and reads the echo on this one, `read_size` bytes at a time with
/// `pause` between reads.
fn echo(stream: UnixStream, data: Vec<u8>, read_size: usize, pause: Duration) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let len = data.len();
    let w = std::thread::spawn(move || writer.write_all(&data).unwrap());
    // A slow reader also starts late: however fast the guest echoes, its bytes fill the
    // socket before the first read, so the device has to hold some back.
    std::thread::sleep(pause * 1000);
    let mut reader = stream;
    let mut got = Vec::with_capacity(len);
    let mut buf = vec![0u8; read_size];
    while got.len() < len {
        let want = read_size.min(len - got.len());
        let n = reader.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "the echo ended after {} of {len} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    w.join().unwrap();
    got
}

fn start(dir: &Path, extra_cmdline: &str, conns: u32) -> (Running, std::path::PathBuf) {
    // The device's counters are logged when petrel stops.
    std::env::set_var("PETREL_LOG", "petrel::metrics=info");
    let uds = dir.join("v.sock");
    let vsock = format!("cid={CID},uds={}", uds.display());
    let cmdline_tail =
        format!("petrel.vsock.listen={GUEST_PORT} petrel.vsock.conns={conns} {extra_cmdline}");
    let mut vm = Running::scenario_with_cmdline("vsock", &cmdline_tail, &["--vsock", &vsock]);
    assert_eq!(
        vm.wait_line("VSOCK cid=", Duration::from_secs(60)),
        format!("VSOCK cid={CID}")
    );
    vm.wait_line("VSOCK listening", Duration::from_secs(60));
    (vm, uds)
}

#[test]
fn host_and_guest_connections_echo_several_at_once() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join(format!("v.sock_{HOST_PORT}"))).unwrap();
    let (mut vm, uds) = start(dir.path(), &format!("petrel.vsock.connect={HOST_PORT}"), 4);

    // Guest to host: the guest connected to host port 5000.
    let (from_guest, _) = listener.accept().unwrap();
    from_guest
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    vm.wait_line("VSOCK connected peer=2:5000", Duration::from_secs(60));
    let data = pattern(1, 10_000);
    assert_eq!(echo(from_guest, data.clone(), 4096, Duration::ZERO), data);

    // Host to guest: three connections at once.
    let started = Instant::now();
    let workers: Vec<_> = (0..3u8)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let s = connect_guest(&uds, GUEST_PORT);
                let data = pattern(10 + i, 20_000 + usize::from(i) * 3_000);
                let got = echo(s, data.clone(), 4096, Duration::ZERO);
                assert!(got == data, "connection {i}: the echo differs");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    eprintln!("three concurrent echoes took {:?}", started.elapsed());

    let out = vm.finish(Duration::from_secs(120));
    out.assert_pass("vsock");
    let closed = out.lines_with("VSOCK closed");
    assert_eq!(closed.len(), 4, "{out}");
    assert!(closed.iter().any(|l| l.ends_with("bytes=10000")), "{out}");
    assert_eq!(out.lines_with("VSOCK accepted").len(), 3);
}

#[test]
fn one_mib_through_a_slow_host_reader_arrives_intact() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (vm, uds) = start(dir.path(), "", 1);
    let s = connect_guest(&uds, GUEST_PORT);
    let data = pattern(7, 1 << 20);
    let started = Instant::now();
    // Small reads with pauses: the guest's echo backs up into the device, which must keep
    // every byte in order without stalling anything else.
    let got = echo(s, data.clone(), 2048, Duration::from_millis(1));
    eprintln!("1 MiB echoed in {:?}", started.elapsed());
    assert_eq!(got.len(), data.len());
    let first_diff = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "echo differs");
    let out = vm.finish(Duration::from_secs(120));
    out.assert_pass("vsock");
    let closed = out.lines_with("VSOCK closed");
    assert_eq!(closed.len(), 1, "{out}");
    assert!(
        closed[0].ends_with(&format!("local_port={GUEST_PORT} bytes={}", 1 << 20)),
        "{out}"
    );
    let m = device_metrics(&out, "vsock0");
    eprintln!("device metrics: {m}");
    assert_eq!(
        (m["tx_bytes"].as_u64(), m["rx_bytes"].as_u64()),
        (Some(1 << 20), Some(1 << 20))
    );
    assert_eq!(m["malformed"], 0);
    assert_eq!(m["credit_violations"], 0);
    // The slow reader did make the device hold guest bytes back.
    assert!(m["host_write_blocked"].as_u64() > Some(0), "{m}");
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens at <uds>_5000: the guest's request is answered with RST.
    let (vm, _uds) = start(dir.path(), &format!("petrel.vsock.connect={HOST_PORT}"), 1);
    let out = vm.finish(Duration::from_secs(60));
    out.assert_pass("vsock");
    assert_eq!(
        out.lines_with("VSOCK refused"),
        vec![format!("VSOCK refused host_port={HOST_PORT}").as_str()]
    );
    let m = device_metrics(&out, "vsock0");
    assert_eq!(m["connect_failures"], 1, "{m}");
}

#[test]
fn put_vsock_configures_the_device_before_start_and_is_refused_after() {
    use serde_json::json;
    use tests::api_vm::ApiVm;

    let mut vm = ApiVm::spawn(&[]);
    let uds = vm.path("api-v.sock");
    let uds_str = uds.to_str().unwrap().to_string();
    for (body, what) in [
        (
            json!({ "guest_cid": 2, "uds_path": uds_str }),
            "guest cid 2",
        ),
        (
            json!({ "guest_cid": 4294967295u64, "uds_path": uds_str }),
            "guest cid 4294967295",
        ),
        (
            json!({ "guest_cid": 4294967296u64, "uds_path": uds_str }),
            "guest_cid",
        ),
        (
            json!({ "guest_cid": 3, "uds_path": "" }),
            "uds path is empty",
        ),
        (json!({ "guest_cid": 3 }), "uds_path"),
        (
            json!({ "guest_cid": 3, "uds_path": "/".repeat(200) }),
            "longer than 107 bytes",
        ),
        (
            json!({ "guest_cid": 3, "uds_path": uds_str, "vsock_id": "a b" }),
            "invalid id",
        ),
        (
            json!({ "guest_cid": 3, "uds_path": uds_str, "port": 1 }),
            "unknown field",
        ),
    ] {
        let msg = vm.fails("PUT", "/vsock", Some(body.clone()), 400);
        assert!(msg.contains(what), "{body}: {msg}");
    }
    assert!(vm.get("/vm/config").get("vsock").is_none());
    vm.ok(
        "PUT",
        "/vsock",
        json!({ "guest_cid": CID, "uds_path": uds_str, "vsock_id": "v0" }),
    );
    let config = vm.get("/vm/config");
    assert_eq!(
        config["vsock"],
        json!({ "id": "v0", "guest_cid": CID, "uds_path": uds_str })
    );
    if !kvm_available() {
        return;
    }
    vm.ok(
        "PUT",
        "/boot-source",
        json!({
            "kernel_image_path": tests::test_guest().to_str().unwrap(),
            "boot_args": format!("petrel.test=vsock petrel.vsock.listen={GUEST_PORT}"),
        }),
    );
    vm.ok("PUT", "/actions", json!({ "action_type": "InstanceStart" }));
    let msg = vm.fails(
        "PUT",
        "/vsock",
        Some(json!({ "guest_cid": 9, "uds_path": uds_str })),
        400,
    );
    assert!(msg.contains("Running"), "{msg}");
    vm.wait_serial(Duration::from_secs(60), |s| {
        s.contains("VSOCK listening").then_some(())
    });
    let s = connect_guest(&uds, GUEST_PORT);
    let data = pattern(3, 5000);
    assert_eq!(echo(s, data.clone(), 4096, Duration::ZERO), data);
    let out = vm.finish(Duration::from_secs(60));
    assert!(vm.serial().contains("PASS vsock"), "{out}\n{}", vm.serial());
}
