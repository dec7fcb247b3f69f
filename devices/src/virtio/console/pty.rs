//! A host pty as the console's other end.
//!
//! petrel keeps the master (raw mode, non-blocking) and also holds the slave open: with no
//! slave open a Linux pty master reports `EPOLLHUP` on every poll, which would spin the event
//! loop, and writes fail with `EIO`. Holding the slave keeps the master quiet until someone
//! attaches; guest output written meanwhile fills the pty's buffer (the newest bytes past it
//! are dropped), and whoever opens the slave later reads it.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::backend::{Read, Write};
use super::{ConsoleError, DEFAULT_SIZE};

/// The master side of a pty, with the slave held open.
pub(super) struct Pty {
    master: File,
    _slave: File,
    path: PathBuf,
    /// Reading the master failed for good; it is only written to from now on.
    input_closed: bool,
}

/// The result of a libc call that returns -1 and sets errno on failure.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Pty {
    /// Allocates a pty, sets it up and announces its path on stderr.
    pub(super) fn open(id: &str) -> Result<Self, ConsoleError> {
        let err = |step: &'static str| {
            let id = id.to_string();
            move |source: io::Error| ConsoleError::Pty { id, step, source }
        };
        // SAFETY: posix_openpt takes only flags and returns a new descriptor or -1.
        let fd =
            check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })
                .map_err(err("posix_openpt"))?;
        // SAFETY: `fd` was just returned by posix_openpt and nothing else owns it.
        let master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: grantpt only takes a descriptor; `master` keeps it open for the call.
        check(unsafe { libc::grantpt(master.as_raw_fd()) }).map_err(err("grantpt"))?;
        // SAFETY: as above, unlockpt only takes the open master descriptor.
        check(unsafe { libc::unlockpt(master.as_raw_fd()) }).map_err(err("unlockpt"))?;
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes at most `name.len()` bytes, NUL included, into `name`,
        // which is a writable buffer of that length. It returns an errno value, not -1.
        let ret = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        if ret != 0 {
            return Err(err("ptsname")(io::Error::from_raw_os_error(ret)));
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string within its
        // length, and `name` outlives the borrow (the path is copied out at once).
        let path = PathBuf::from(
            unsafe { CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        );
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .map_err(err("open slave"))?;
        make_raw(master.as_raw_fd()).map_err(err("raw mode"))?;
        let size = libc::winsize {
            ws_row: DEFAULT_SIZE.1,
            ws_col: DEFAULT_SIZE.0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize`, which `size` is, for the duration of the call.
        check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) })
            .map_err(err("window size"))?;
        set_nonblocking(master.as_raw_fd()).map_err(err("non-blocking"))?;
        eprintln!("petrel: console {id} on {}", path.display());
        tracing::info!(id, path = %path.display(), "console pty allocated");
        Ok(Pty {
            master,
            _slave: slave,
            path,
            input_closed: false,
        })
    }

    /// The slave's path (`/dev/pts/N`).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The master, for the event loop to watch.
    pub(super) fn fd(&self) -> RawFd {
        self.master.as_raw_fd()
    }

    /// Whether reading the master still makes sense.
    pub(super) fn reads_input(&self) -> bool {
        !self.input_closed
    }

    pub(super) fn read(&mut self, buf: &mut [u8]) -> Read {
        if self.input_closed {
            return Read::Closed;
        }
        match self.master.read(buf) {
            Ok(0) => {
                self.input_closed = true;
                Read::Closed
            }
            Ok(n) => Read::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Read::WouldBlock,
            Err(e) => {
                tracing::warn!(%e, path = %self.path.display(), "console pty input closed");
                self.input_closed = true;
                Read::Closed
            }
        }
    }

    pub(super) fn write(&mut self, data: &[u8]) -> Write {
        match self.master.write(data) {
            Ok(n) => Write::Wrote(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Write::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Write::WouldBlock,
            // EIO: no slave open (cannot happen while we hold one, but is not fatal).
            Err(_) => Write::Lost,
        }
    }

    /// The window size (cols, rows) whoever uses the slave set, if it is not 0x0.
    pub(super) fn size(&self) -> Option<(u16, u16)> {
        terminal_size(self.master.as_raw_fd())
    }
}

/// Puts the pty in raw mode (`cfmakeraw`): no echo, no line editing, no signals, no CR/NL
/// translation, so bytes pass unchanged both ways. On the master this sets the slave's modes.
fn make_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: termios is plain old data; an all-zero value is valid and tcgetattr overwrites it.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one `termios` into the valid, writable `termios`.
    check(unsafe { libc::tcgetattr(fd, &mut termios) })?;
    // SAFETY: cfmakeraw only modifies the `termios` it is given, which is valid.
    unsafe { libc::cfmakeraw(&mut termios) };
    // SAFETY: tcsetattr reads one `termios` from the valid `termios`.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) })?;
    Ok(())
}

/// Sets `O_NONBLOCK` on `fd`.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL takes no third argument and only reads the descriptor's flags.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: F_SETFL takes the int flags as its third argument and changes only `fd`'s
    // open file description, which belongs to the caller.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// The size of the terminal on `fd`, if it is one with a non-zero size.
pub(super) fn terminal_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: isatty only inspects the descriptor number.
    if unsafe { libc::isatty(fd) } != 1 {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which is valid and writable.
    check(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) }).ok()?;
    (size.ws_col != 0 && size.ws_row != 0).then_some((size.ws_col, size.ws_row))
}
