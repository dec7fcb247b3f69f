//! A vhost-user back end run as a child process for a test: started on a socket path, waited
//! for until the socket exists, and killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a back end gets to make its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A running back end; killed (and reaped) when dropped.
pub struct BackendProcess(Child);

impl BackendProcess {
    /// Runs `command` (which serves `socket`; a stale file there is removed first), with
    /// standard input and output closed (standard error as `command` says), and waits until
    /// `socket` exists.
    pub fn start(mut command: Command, socket: &Path) -> BackendProcess {
        let _ = std::fs::remove_file(socket);
        let what = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let process = BackendProcess(child);
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        while !socket.exists() {
            assert!(Instant::now() < deadline, "{what} made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's `qemu-storage-daemon` (package qemu-utils), a vhost-user-blk back end.
pub const QEMU_STORAGE_DAEMON: &str = "/usr/bin/qemu-storage-daemon";

/// A `qemu-storage-daemon` exporting `image` writable as vhost-user-blk on `socket`. Without
/// `locking` it takes no lock on the image, so that a second daemon can serve the same image
/// (a live migration's destination on the same host).
pub fn qemu_storage_daemon(image: &Path, socket: &Path, locking: bool) -> BackendProcess {
    let mut qsd = Command::new(QEMU_STORAGE_DAEMON);
    let locking = if locking { "" } else { ",locking=off" };
    qsd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}{locking}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ));
    BackendProcess::start(qsd, socket)
}
