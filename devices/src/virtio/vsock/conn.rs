//! One stream connection: its host socket, its state, and the credit counters of both
//! directions.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{shutdown, Header, TYPE_STREAM};
use super::{BUF_ALLOC, HOST_CID};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A host client asked for it; the device sent REQUEST and waits for the guest's
    /// RESPONSE until the deadline.
    Requested { deadline: Instant },
    /// Data flows.
    Established,
}

/// A connection, named by (guest port, host port).
pub struct Conn {
    pub stream: UnixStream,
    pub state: State,
    pub guest_cid: u64,
    pub guest_port: u32,
    pub host_port: u32,
    /// `OK <host_port>\n` (or nothing) still to write to a host client.
    pub ack: Vec<u8>,
    /// Guest bytes the host socket has not taken yet (at most [`BUF_ALLOC`]).
    pub pending: VecDeque<u8>,
    /// Payload bytes received from the guest.
    pub from_guest: u32,
    /// Payload bytes the host socket took (`fwd_cnt`).
    pub fwd_cnt: u32,
    /// The `fwd_cnt` last told to the guest.
    pub fwd_cnt_told: u32,
    /// The guest's receive buffer and how much of it it consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    pub to_guest: u32,
    /// A CREDIT_REQUEST is out and the guest's counters have not changed since.
    pub credit_requested: bool,
    /// SHUTDOWN flags the guest sent.
    pub guest_shutdown: u32,
    /// The host socket reached end of file (the device told the guest with SHUTDOWN).
    pub host_eof: bool,
    /// The host socket was shut down for writing (after the guest's SHUTDOWN SEND).
    pub host_write_shut: bool,
    /// The host socket reported readable and has not yet returned `WouldBlock`.
    pub readable: bool,
}

/// What writing to the host socket came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything buffered is written.
    Done,
    /// Bytes remain; the socket would block.
    Blocked,
    /// The socket failed (the peer is gone).
    Failed,
}

impl Conn {
    /// A connection in `state` over `stream` (made non-blocking).
    pub fn new(
        stream: UnixStream,
        state: State,
        guest_cid: u64,
        guest_port: u32,
        host_port: u32,
    ) -> io::Result<Conn> {
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            state,
            guest_cid,
            guest_port,
            host_port,
            ack: Vec::new(),
            pending: VecDeque::new(),
            from_guest: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            to_guest: 0,
            credit_requested: false,
            guest_shutdown: 0,
            host_eof: false,
            host_write_shut: false,
            readable: false,
        })
    }

    /// A header from the device (the host side) to the guest, carrying the credit counters.
    pub fn header(&mut self, op: u16) -> Header {
        self.fwd_cnt_told = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Takes the guest's credit counters from one of its headers.
    pub fn update_peer(&mut self, h: &Header) {
        if h.buf_alloc != self.peer_buf_alloc || h.fwd_cnt != self.peer_fwd_cnt {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.to_guest.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// How much of [`BUF_ALLOC`] the guest believes is free (from the counters it was told).
    pub fn credit_told(&self) -> u32 {
        BUF_ALLOC.saturating_sub(self.from_guest.wrapping_sub(self.fwd_cnt_told))
    }

    /// Whether the guest should be sent a CREDIT_UPDATE: what it was told leaves it less
    /// than half the buffer and the device has taken more since.
    pub fn wants_credit_update(&self) -> bool {
        self.fwd_cnt != self.fwd_cnt_told && self.credit_told() < BUF_ALLOC / 2
    }

    /// Whether the device should read the host socket for the guest (ignoring credit).
    pub fn reads_host(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.guest_shutdown & shutdown::RCV == 0
    }

    /// Accepts `data` from the guest: writes what the socket takes, buffers the rest. `false`
    /// if the guest sent past its credit.
    pub fn take_from_guest(&mut self, data: &[u8]) -> Result<Flush, ()> {
        if self.pending.len() + data.len() > BUF_ALLOC as usize {
            return Err(());
        }
        self.from_guest = self.from_guest.wrapping_add(data.len() as u32);
        self.pending.extend(data);
        Ok(self.flush())
    }

    /// Writes the acknowledgement and buffered guest bytes to the host socket.
    pub fn flush(&mut self) -> Flush {
        while !self.ack.is_empty() {
            match self.stream.write(&self.ack) {
                Ok(0) => return Flush::Failed,
                Ok(n) => {
                    self.ack.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flush::Failed,
            }
        }
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Flush::Failed,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flush::Failed,
            }
        }
        if self.guest_shutdown & shutdown::SEND != 0 && !self.host_write_shut {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.host_write_shut = true;
        }
        Flush::Done
    }

    /// Reads at most `max` bytes from the host socket.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Whether the connection has written everything the guest sent.
    pub fn drained(&self) -> bool {
        self.pending.is_empty() && self.ack.is_empty()
    }

    /// The connection's key in the device's table.
    pub fn key(&self) -> (u32, u32) {
        (self.guest_port, self.host_port)
    }
}
