//! Host input for the serial console: when standard input is a terminal, petrel puts it in
//! raw mode and feeds what the user types into the UART's receive FIFO.
//!
//! The FIFO holds 64 bytes. What does not fit waits in a small buffer, and while anything
//! waits petrel stops reading standard input and retries on a short timer, so a guest that
//! does not read its console never makes petrel buffer without bound.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::terminal::Terminal;
use vmm_sys_util::timerfd::TimerFd;

const RETRY: Duration = Duration::from_millis(10);
const PENDING_MAX: usize = 1024;

/// Restores the terminal's mode when dropped.
pub struct RawTerminal(());

impl RawTerminal {
    /// Puts standard input in raw mode if it is a terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !std::io::IsTerminal::is_terminal(&stdin) {
            return None;
        }
        match stdin.lock().set_raw_mode() {
            Ok(()) => Some(Self(())),
            Err(e) => {
                tracing::warn!(%e, "cannot put the terminal in raw mode; serial input is off");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = std::io::stdin().lock().set_canon_mode() {
            tracing::warn!(%e, "cannot restore the terminal mode");
        }
    }
}

/// Feeds standard input to the serial port.
pub struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    timer: TimerFd,
    pending: Vec<u8>,
    eof: bool,
}

impl SerialInput {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>) -> std::io::Result<Self> {
        Ok(Self {
            serial,
            timer: TimerFd::new()?,
            pending: Vec::with_capacity(PENDING_MAX),
            eof: false,
        })
    }

    /// Moves pending bytes into the FIFO; true when none are left.
    fn flush_pending(&mut self) -> bool {
        let taken = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(&self.pending);
        self.pending.drain(..taken);
        self.pending.is_empty()
    }

    fn read_stdin(&mut self) {
        let mut buf = [0u8; PENDING_MAX];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(%e, "reading standard input failed; serial input is off");
                self.eof = true;
            }
        }
    }

    /// Watches standard input when nothing waits, the timer otherwise.
    fn rearm(&mut self, ops: &mut EventOps) {
        let stdin = Events::with_data_raw(libc::STDIN_FILENO, 0, EventSet::IN);
        let timer = Events::new(&self.timer, EventSet::IN);
        let _ = ops.remove(stdin);
        let _ = ops.remove(timer);
        if !self.pending.is_empty() {
            if let Err(e) = self.timer.reset(RETRY, None) {
                tracing::warn!(%e, "serial input timer");
            }
            let _ = ops.add(timer);
        } else if !self.eof {
            let _ = ops.add(stdin);
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        self.rearm(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
        } else if events
            .event_set()
            .intersects(EventSet::IN | EventSet::HANG_UP)
        {
            self.read_stdin();
        }
        self.flush_pending();
        self.rearm(ops);
    }
}
