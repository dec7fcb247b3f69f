//! Guest to host: packets from the tx queue, and writing guest bytes to host sockets.

use std::path::PathBuf;

use virtio_queue::QueueT;

use super::chain;
use super::conn::{Conn, Flush, State};
use super::device::{Vsock, TX_QUEUE};
use super::packet::{op, shutdown, Header, TYPE_STREAM};
use super::{HOST_CID, MAX_CONNECTIONS};
use crate::virtio::{queue, CHAINS_PER_PASS};

impl Vsock {
    /// Takes every packet the guest made available on tx. Every chain is used at once: a
    /// connection whose host socket is slow keeps the bytes in its buffer, within the credit
    /// the guest was given, so no other connection waits for it.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.env.mem.clone();
        let mut packets = Vec::new();
        let mut used_any = false;
        let mut empty_rounds = 0;
        loop {
            let mut popped = 0;
            while popped < CHAINS_PER_PASS {
                let Some(chain) = active.tx.pop_descriptor_chain(&mem) else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                let parsed = chain::buffers(&mem, chain, false)
                    .and_then(|bufs| chain::read_packet(&mem, &bufs));
                if let Err(e) = queue::add_used(&mut active.tx, &mem, head, 0) {
                    tracing::debug!(%e, "vsock tx used ring");
                }
                used_any = true;
                packets.push(parsed);
            }
            if popped == CHAINS_PER_PASS {
                active.env.kicks.kick(TX_QUEUE);
                break;
            }
            if popped == 0 {
                // An available index the queue cannot serve must not spin the loop.
                empty_rounds += 1;
            }
            match active.tx.enable_notification(&mem) {
                Ok(true) if empty_rounds < 2 => continue,
                _ => break,
            }
        }
        if used_any {
            queue::signal_used(&mut active.tx, &mem, &active.env.interrupt);
        }
        for parsed in packets {
            self.metrics.tx_packets += 1;
            match parsed {
                Ok((header, body)) => self.handle_packet(header, &body),
                Err(e) => self.malformed(None, &e),
            }
        }
        self.process_rx();
    }

    /// Counts and logs a malformed packet; answers RST when there is a header to answer.
    fn malformed(&mut self, header: Option<&Header>, e: &dyn std::fmt::Display) {
        self.metrics.malformed += 1;
        if self.metrics.malformed <= 16 || self.metrics.malformed.is_power_of_two() {
            tracing::warn!(id = self.config.id, %e, count = self.metrics.malformed, "malformed vsock packet");
        }
        if let Some(h) = header {
            if h.op != op::RST {
                self.push_control(h.reply(op::RST));
            }
        }
    }

    /// Acts on one packet from the guest.
    pub(super) fn handle_packet(&mut self, h: Header, body: &[u8]) {
        if h.src_cid != self.config.guest_cid {
            // Not from this guest: there is nobody to answer.
            self.malformed(
                None,
                &format_args!("src_cid {} is not the guest's", h.src_cid),
            );
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.malformed(Some(&h), &format_args!("socket type {}", h.type_));
            return;
        }
        if h.dst_cid != HOST_CID {
            self.malformed(
                Some(&h),
                &format_args!("dst_cid {} is not the host", h.dst_cid),
            );
            return;
        }
        if h.op != op::RW && !body.is_empty() {
            self.malformed(
                Some(&h),
                &format_args!("op {} with {} payload bytes", h.op, body.len()),
            );
            return;
        }
        let key = (h.src_port, h.dst_port);
        if h.op == op::REQUEST {
            self.guest_connect(&h);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match h.op {
                op::RST => {}
                op::RW | op::RESPONSE | op::SHUTDOWN | op::CREDIT_UPDATE | op::CREDIT_REQUEST => {
                    self.push_control(h.reply(op::RST))
                }
                other => self.malformed(Some(&h), &format_args!("unknown op {other}")),
            }
            return;
        };
        conn.update_peer(&h);
        match h.op {
            op::RESPONSE => self.guest_accepted(key),
            op::RST => {
                self.remove_conn(key);
            }
            op::SHUTDOWN => self.guest_shutdown(key, h.flags),
            op::RW => self.guest_data(key, body),
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                let update = conn.header(op::CREDIT_UPDATE);
                self.push_control(update);
            }
            other => {
                self.malformed(Some(&h), &format_args!("unknown op {other}"));
                self.remove_conn(key);
            }
        }
        self.maybe_credit_update(key);
    }

    /// The guest asks to connect to host port `h.dst_port`: connects to `<uds>_<port>`.
    fn guest_connect(&mut self, h: &Header) {
        let key = (h.src_port, h.dst_port);
        if self.conns.contains_key(&key)
            || self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
        {
            self.push_control(h.reply(op::RST));
            return;
        }
        let mut path = PathBuf::from(&self.config.uds_path).into_os_string();
        path.push(format!("_{}", h.dst_port));
        let conn = super::host::connect_nonblocking(&path).and_then(|s| {
            Conn::new(
                s,
                State::Established,
                self.config.guest_cid,
                h.src_port,
                h.dst_port,
            )
        });
        match conn {
            Ok(mut conn) => {
                conn.update_peer(h);
                self.metrics.connections += 1;
                let response = conn.header(op::RESPONSE);
                self.insert_conn(conn);
                self.push_control(response);
            }
            Err(e) => {
                tracing::debug!(%e, id = self.config.id, port = h.dst_port, "guest connection to the host refused");
                self.metrics.connect_failures += 1;
                self.push_control(h.reply(op::RST));
            }
        }
    }

    /// The guest accepted a host-initiated connection: the host client gets its `OK` line.
    fn guest_accepted(&mut self, key: (u32, u32)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state == State::Established {
            // A RESPONSE on an established connection breaks the protocol.
            self.reset_conn(key);
            return;
        }
        conn.state = State::Established;
        conn.ack = format!("OK {}\n", conn.host_port).into_bytes();
        self.metrics.connections += 1;
        self.flush_conn(key);
    }

    /// The guest will send (`SEND`) and/or receive (`RCV`) no more.
    fn guest_shutdown(&mut self, key: (u32, u32), flags: u32) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.guest_shutdown |= flags & shutdown::BOTH;
        if conn.guest_shutdown == shutdown::BOTH && conn.drained() {
            // Clean disconnect: the device answers RST and closes the host socket.
            self.reset_conn(key);
            return;
        }
        self.flush_conn(key);
    }

    /// Payload from the guest for the host socket.
    fn guest_data(&mut self, key: (u32, u32), body: &[u8]) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state != State::Established || conn.guest_shutdown & shutdown::SEND != 0 {
            self.reset_conn(key);
            return;
        }
        let before = conn.fwd_cnt;
        match conn.take_from_guest(body) {
            Err(()) => {
                self.metrics.credit_violations += 1;
                tracing::debug!(id = self.config.id, ?key, "guest sent past its credit");
                self.reset_conn(key);
            }
            Ok(Flush::Failed) => self.reset_conn(key),
            Ok(flushed) => {
                self.metrics.tx_bytes += u64::from(conn.fwd_cnt.wrapping_sub(before));
                if flushed == Flush::Blocked {
                    self.metrics.host_write_blocked += 1;
                }
            }
        }
    }

    /// Writes what waits for the host socket of `key`; tells the guest about freed credit,
    /// finishes a clean disconnect, or resets on a failed socket.
    pub(super) fn flush_conn(&mut self, key: (u32, u32)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let before = conn.fwd_cnt;
        let flushed = conn.flush();
        self.metrics.tx_bytes += u64::from(conn.fwd_cnt.wrapping_sub(before));
        match flushed {
            Flush::Failed => self.reset_conn(key),
            Flush::Done if conn.guest_shutdown == shutdown::BOTH => self.reset_conn(key),
            _ => self.maybe_credit_update(key),
        }
    }

    /// Sends CREDIT_UPDATE when the guest's view of its credit has fallen behind.
    fn maybe_credit_update(&mut self, key: (u32, u32)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.state == State::Established && conn.wants_credit_update() {
            let update = conn.header(op::CREDIT_UPDATE);
            self.push_control(update);
        }
    }
}
