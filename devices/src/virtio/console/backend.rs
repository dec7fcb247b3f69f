//! The host side of a console, opened from its [`ConsoleOutput`]: what the device reads
//! host input from and writes guest output to. Pty and socket details are in `pty.rs` and
//! `socket.rs`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::RawFd;
use std::path::Path;

use super::pty::{terminal_size, Pty};
use super::socket::Socket;
use super::{ConsoleConfig, ConsoleError, ConsoleOutput, DEFAULT_SIZE};

/// The outcome of one read of host input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// This many bytes arrived.
    Data(usize),
    /// Nothing more for now.
    WouldBlock,
    /// There is no input, or no more: end of file, a gone client, a backend without input.
    Closed,
}

/// The outcome of one write of guest output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    /// This many bytes were taken (possibly fewer than offered).
    Wrote(usize),
    /// The backend is full; try again when it is writable.
    WouldBlock,
    /// The bytes cannot go anywhere: no client, a failed sink.
    Lost,
}

/// An open console backend.
pub(super) enum Backend {
    Stdout,
    File(File),
    Pty(Pty),
    Socket(Socket),
    None,
}

impl Backend {
    /// Opens what `config.output` names.
    pub(super) fn open(config: &ConsoleConfig) -> Result<Self, ConsoleError> {
        Ok(match &config.output {
            ConsoleOutput::Stdout => Backend::Stdout,
            ConsoleOutput::File(path) => Backend::File(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .map_err(|source| ConsoleError::OpenFile {
                        id: config.id.clone(),
                        path: path.clone(),
                        source,
                    })?,
            ),
            ConsoleOutput::Pty => Backend::Pty(Pty::open(&config.id)?),
            ConsoleOutput::Socket(path) => Backend::Socket(Socket::open(&config.id, path)?),
            ConsoleOutput::None => Backend::None,
        })
    }

    /// The descriptor the event loop watches for input and writability: a pty master or the
    /// attached socket client.
    pub(super) fn watch_fd(&self) -> Option<RawFd> {
        match self {
            Backend::Pty(pty) => Some(pty.fd()),
            Backend::Socket(socket) => socket.client_fd(),
            _ => None,
        }
    }

    /// Whether there is host input to read (now or later).
    pub(super) fn reads_input(&self) -> bool {
        match self {
            Backend::Pty(pty) => pty.reads_input(),
            Backend::Socket(socket) => socket.client_fd().is_some(),
            _ => false,
        }
    }

    /// The listening socket, if the backend has one.
    pub(super) fn listener_fd(&self) -> Option<RawFd> {
        match self {
            Backend::Socket(socket) => Some(socket.listener_fd()),
            _ => None,
        }
    }

    /// The pty's slave path.
    pub(super) fn pty_path(&self) -> Option<&Path> {
        match self {
            Backend::Pty(pty) => Some(pty.path()),
            _ => None,
        }
    }

    /// Reads host input without blocking.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> Read {
        match self {
            Backend::Pty(pty) => pty.read(buf),
            Backend::Socket(socket) => socket.read(buf),
            _ => Read::Closed,
        }
    }

    /// Writes guest output. Stdout and files take everything (ordinary writes, as the serial
    /// console does); a pty or a socket client take what fits without blocking.
    pub(super) fn write(&mut self, data: &[u8]) -> Write {
        let result = match self {
            Backend::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(data).and_then(|()| out.flush())
            }
            Backend::File(file) => file.write_all(data),
            Backend::Pty(pty) => return pty.write(data),
            Backend::Socket(socket) => return socket.write(data),
            Backend::None => Ok(()),
        };
        match result {
            Ok(()) => Write::Wrote(data.len()),
            Err(e) => {
                tracing::debug!(%e, "console output failed");
                Write::Lost
            }
        }
    }

    /// The console size (cols, rows): the pty's window, the terminal's for stdout,
    /// [`DEFAULT_SIZE`] otherwise.
    pub(super) fn size(&self) -> (u16, u16) {
        let size = match self {
            Backend::Pty(pty) => pty.size(),
            Backend::Stdout => terminal_size(libc::STDOUT_FILENO),
            _ => None,
        };
        size.unwrap_or(DEFAULT_SIZE)
    }

    /// Accepts waiting socket clients.
    pub(super) fn accept(&mut self) {
        if let Backend::Socket(socket) = self {
            socket.accept();
        }
    }

    /// Closes a socket client that has gone; the event loop must not be watching it.
    pub(super) fn close_gone_client(&mut self) {
        if let Backend::Socket(socket) = self {
            socket.close_gone_client();
        }
    }
}
