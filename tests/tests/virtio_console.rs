//! virtio-console end to end: guest output reaches a host Unix socket, host input reaches
//! the guest.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tests::{command, kvm_available, test_guest, wait};

#[test]
fn console_socket_carries_guest_output_and_host_input() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("console.sock");
    let child = command(&[
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        "petrel.test=console",
        "--console",
        &format!("id=con0,output=socket:{}", sock.display()),
    ])
    .spawn()
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("connect {}: {e}", sock.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "hello from the virtio console\n");
    (&stream).write_all(b"ping from the host\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "echo: ping from the host\n");

    let out = wait(child, Duration::from_secs(60));
    out.assert_pass("console");
    assert_eq!(
        out.lines_with("CONSOLE got="),
        vec!["CONSOLE got=ping from the host"]
    );
}
