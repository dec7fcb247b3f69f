//! Host to guest: control packets, host bytes within the guest's credit, and the event queue.

use std::io;

use virtio_queue::{QueueOwnedT, QueueT};

use super::chain;
use super::conn::State;
use super::device::{Vsock, RX_QUEUE};
use super::packet::{op, shutdown, Header, HEADER_LEN};
use super::{EVENT_TRANSPORT_RESET, MAX_PAYLOAD};
use crate::virtio::{queue, CHAINS_PER_PASS};

/// What goes into one rx buffer.
enum Next {
    Control(Header),
    /// A header and its `len` payload bytes, at the start of the device's scratch buffer.
    Data(Header),
}

impl Vsock {
    /// Fills the rx buffers the guest posted: control packets first, then host bytes from
    /// connections in turn, each within the guest's credit for it.
    pub fn process_rx(&mut self) {
        // A second pass only when buffers arrived while notifications were being re-enabled;
        // if more arrived even then, the driver may not kick again (EVENT_IDX): come back
        // through the event loop rather than loop here.
        if self.rx_pass() && self.rx_pass() {
            if let Some(active) = &self.active {
                active.env.kicks.kick(RX_QUEUE);
            }
        }
    }

    /// One pass over the posted rx buffers; whether the driver posted more meanwhile while
    /// packets still wait for them.
    fn rx_pass(&mut self) -> bool {
        let Some(active) = self.active.as_ref() else {
            return false;
        };
        let mem = active.env.mem.clone();
        let mut used_any = false;
        let mut served = 0;
        let mut starved = false;
        while served < CHAINS_PER_PASS {
            if self.control.is_empty() && !self.any_data_ready() {
                break;
            }
            let Some(active) = self.active.as_mut() else {
                return false;
            };
            let Some(chain) = active.rx.pop_descriptor_chain(&mem) else {
                starved = true;
                break;
            };
            served += 1;
            let head = chain.head_index();
            let bufs = match chain::buffers(&mem, chain, true) {
                Ok(b) if chain::total(&b) >= HEADER_LEN as u64 => b,
                Ok(b) => {
                    self.rx_malformed(head, &chain::Malformed::Short(chain::total(&b)));
                    used_any = true;
                    continue;
                }
                Err(e) => {
                    self.rx_malformed(head, &e);
                    used_any = true;
                    continue;
                }
            };
            let room = (chain::total(&bufs) - HEADER_LEN as u64).min(MAX_PAYLOAD as u64) as usize;
            let Some(next) = self.next_packet(room) else {
                if let Some(active) = self.active.as_mut() {
                    active.rx.go_to_previous_position();
                }
                break;
            };
            let written = match &next {
                Next::Control(h) => chain::write_parts(&mem, &bufs, &[&h.to_bytes()]),
                Next::Data(h) => {
                    let data = &self.scratch[..h.len as usize];
                    chain::write_parts(&mem, &bufs, &[&h.to_bytes(), data])
                }
            };
            let len = written.unwrap_or_else(|e| {
                tracing::debug!(%e, id = self.config.id, "vsock rx write");
                0
            });
            self.metrics.rx_packets += 1;
            if let Some(active) = self.active.as_mut() {
                if let Err(e) = queue::add_used(&mut active.rx, &mem, head, len) {
                    tracing::debug!(%e, "vsock rx used ring");
                }
            }
            used_any = true;
        }
        if served == CHAINS_PER_PASS {
            if let Some(active) = self.active.as_ref() {
                active.env.kicks.kick(RX_QUEUE);
            }
        }
        if let Some(active) = self.active.as_mut() {
            if used_any {
                queue::signal_used(&mut active.rx, &mem, &active.env.interrupt);
            }
            return starved && matches!(active.rx.enable_notification(&mem), Ok(true));
        }
        false
    }

    fn rx_malformed(&mut self, head: u16, e: &chain::Malformed) {
        self.metrics.malformed += 1;
        tracing::debug!(%e, id = self.config.id, "malformed vsock rx chain");
        if let Some(active) = self.active.as_mut() {
            let mem = active.env.mem.clone();
            let _ = queue::add_used(&mut active.rx, &mem, head, 0);
        }
    }

    /// Whether some connection may have bytes for the guest.
    fn any_data_ready(&self) -> bool {
        self.conns.values().any(|c| c.readable && c.reads_host())
    }

    /// The next packet for an rx buffer with `room` payload bytes, if there is one.
    fn next_packet(&mut self, room: usize) -> Option<Next> {
        if let Some(h) = self.control.pop_front() {
            return Some(Next::Control(h));
        }
        // Round-robin from the connection after the one served last.
        let keys: Vec<(u32, u32)> = match self.last_served {
            Some(last) => self
                .conns
                .range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .chain(self.conns.range(..=last))
                .filter(|(_, c)| c.readable && c.reads_host())
                .map(|(k, _)| *k)
                .collect(),
            None => self
                .conns
                .iter()
                .filter(|(_, c)| c.readable && c.reads_host())
                .map(|(k, _)| *k)
                .collect(),
        };
        for key in keys {
            if let Some(next) = self.read_conn(key, room) {
                self.last_served = Some(key);
                return Some(next);
            }
        }
        // Reading may have queued control packets (credit requests, resets).
        self.control.pop_front().map(Next::Control)
    }

    /// Reads host bytes of `key` for the guest, within its credit.
    fn read_conn(&mut self, key: (u32, u32), room: usize) -> Option<Next> {
        let conn = self.conns.get_mut(&key)?;
        let credit = conn.peer_credit() as usize;
        if credit == 0 {
            if !conn.credit_requested {
                conn.credit_requested = true;
                self.metrics.credit_requests += 1;
                let h = conn.header(op::CREDIT_REQUEST);
                return Some(Next::Control(h));
            }
            return None;
        }
        let want = room.min(credit).min(self.scratch.len());
        let buf = &mut self.scratch[..want];
        if buf.is_empty() {
            return None;
        }
        match conn.read_host(buf) {
            Ok(0) => {
                // The host will send no more.
                conn.host_eof = true;
                conn.readable = false;
                let mut h = conn.header(op::SHUTDOWN);
                h.flags = shutdown::SEND;
                Some(Next::Control(h))
            }
            Ok(n) => {
                conn.to_guest = conn.to_guest.wrapping_add(n as u32);
                let mut h = conn.header(op::RW);
                h.len = n as u32;
                self.metrics.rx_bytes += n as u64;
                Some(Next::Data(h))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.readable = false;
                None
            }
            Err(e) => {
                tracing::debug!(%e, id = self.config.id, ?key, "vsock host socket");
                debug_assert!(conn.state == State::Established);
                self.reset_conn(key);
                None
            }
        }
    }

    /// Puts a TRANSPORT_RESET event on the event queue if one is due and a buffer is there.
    pub(super) fn deliver_reset_event(&mut self) {
        if !self.reset_event_pending {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.env.mem.clone();
        let Some(chain) = active.event.pop_descriptor_chain(&mem) else {
            return;
        };
        let head = chain.head_index();
        let len = match chain::buffers(&mem, chain, true) {
            Ok(bufs) if chain::total(&bufs) >= 4 => {
                chain::write_parts(&mem, &bufs, &[&EVENT_TRANSPORT_RESET.to_le_bytes()])
                    .unwrap_or(0)
            }
            _ => 0,
        };
        if len == 0 {
            self.metrics.malformed += 1;
        } else {
            self.reset_event_pending = false;
        }
        let _ = queue::add_used(&mut active.event, &mem, head, len);
        queue::signal_used(&mut active.event, &mem, &active.env.interrupt);
    }
}
