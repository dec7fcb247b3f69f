//! Creating the API socket: mode 0600 before anyone can connect, stale files replaced, a
//! live socket left alone.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::server::ServerError;

/// Connection backlog of the listening socket.
const BACKLOG: libc::c_int = 128;

/// Removes `path` if it is a socket nobody listens on; fails if somebody does or if it is
/// not a socket.
fn clear_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ServerError::Io(path.to_owned(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_owned())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            tracing::info!("replacing stale API socket {}", path.display());
            std::fs::remove_file(path).map_err(|e| ServerError::Io(path.to_owned(), e))
        }
        Err(e) => Err(ServerError::Io(path.to_owned(), e)),
    }
}

fn last_error(path: &Path) -> ServerError {
    ServerError::Io(path.to_owned(), io::Error::last_os_error())
}

/// Binds a listening Unix socket at `path` with mode 0600.
///
/// The file is chmod-ed between `bind()` and `listen()`: until `listen()` every connect is
/// refused, so no other user can connect through a wider mode left by the umask.
pub fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    clear_stale(path)?;

    // SAFETY: plain libc::sockaddr_un is valid when zeroed.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Keep one byte for the terminating NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ServerError::BadPath(path.to_owned()));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }

    // SAFETY: socket() takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_error(path));
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` is its size; `fd` is a valid
    // socket.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            return Err(ServerError::InUse(path.to_owned()));
        }
        return Err(ServerError::Io(path.to_owned(), e));
    }

    let cleanup = |e: ServerError| {
        let _ = std::fs::remove_file(path);
        e
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| cleanup(ServerError::Io(path.to_owned(), e)))?;

    // SAFETY: `fd` is a valid bound socket; listen() takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } < 0 {
        return Err(cleanup(last_error(path)));
    }
    Ok(UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_is_0600_and_live_socket_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let _listener = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind_private(&path), Err(ServerError::InUse(_))));
    }

    #[test]
    fn stale_socket_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = bind_private(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        drop(listener);
    }

    #[test]
    fn regular_file_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, b"keep me").unwrap();
        assert!(matches!(
            bind_private(&path),
            Err(ServerError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn too_long_path_rejected() {
        let path = Path::new("/tmp").join("x".repeat(200));
        assert!(matches!(bind_private(&path), Err(ServerError::BadPath(_))));
    }
}
