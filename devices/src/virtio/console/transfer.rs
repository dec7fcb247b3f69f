//! Moving bytes: guest output from transmitq to the backend, host input from the backend to
//! receiveq. Nothing here blocks on a pty or a socket, and nothing here trusts the guest:
//! every descriptor is checked before any byte moves.

use memory::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::backend::{Read, Write};
use super::device::{Console, RX_QUEUE, TX_QUEUE};
use super::{INPUT_BUFFER_SIZE, OUTPUT_BUFFER_SIZE};
use crate::virtio::queue::{self, ChainError};
use crate::virtio::{DeviceEnv, CHAINS_PER_PASS};

/// Bytes copied per step between guest memory and the backend.
const CHUNK: usize = 4096;

/// Why a descriptor chain was refused.
#[derive(Debug, thiserror::Error)]
enum Malformed {
    #[error(transparent)]
    Chain(ChainError),
    #[error("the chain has no descriptors")]
    Empty,
    #[error("write-only descriptor on transmitq")]
    WriteOnly,
    #[error("read-only descriptor on receiveq")]
    ReadOnly,
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("transmit chain of {0} bytes is over the {MAX_TX_CHAIN} byte limit")]
    TooLong(u64),
}

/// The most bytes one transmit chain may carry. Linux sends at most 32 KiB per buffer; a
/// chain that repeats the same guest memory up to 4 GiB would make the VMM thread copy
/// (and a file backend store) gigabytes per notification.
const MAX_TX_CHAIN: u64 = 1 << 20;

/// Passes over an available ring that popped nothing before the device stops looking: an
/// index the queue cannot serve must not spin the event loop.
const EMPTY_ROUNDS: u32 = 2;

impl From<ChainError> for Malformed {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Empty => Malformed::Empty,
            ChainError::ReadOnly => Malformed::ReadOnly,
            ChainError::WriteOnly => Malformed::WriteOnly,
            ChainError::OutOfRange { addr, len } => Malformed::OutOfRange { addr, len },
            other => Malformed::Chain(other),
        }
    }
}

/// The buffers of `chain`, checked (see [`queue::chain_buffers`]).
fn buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<Vec<(GuestAddress, u32)>, Malformed> {
    Ok(queue::chain_buffers(mem, chain, writable)?)
}

/// Raises the queue's interrupt unless EVENT_IDX says the driver does not want it.
fn signal_used(queue: &mut Queue, env: &DeviceEnv) {
    queue::signal_used(queue, &env.mem, &env.interrupt);
}

/// After a pass over the available ring: re-enables notifications and says whether to go
/// round again (buffers arrived meanwhile). `empty_rounds` counts passes that popped
/// nothing; after [`EMPTY_ROUNDS`] of them an available index the queue cannot serve ends
/// the pass instead of spinning.
fn go_again(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    popped: bool,
    empty_rounds: &mut u32,
    id: &str,
) -> bool {
    if !popped {
        *empty_rounds += 1;
    }
    match queue.enable_notification(mem) {
        Ok(true) if *empty_rounds < EMPTY_ROUNDS => true,
        Ok(true) => {
            tracing::debug!(id, "console queue has an invalid available index");
            false
        }
        Ok(false) => false,
        Err(e) => {
            tracing::debug!(%e, id, "console queue ring is unreadable");
            false
        }
    }
}

/// Puts a chain on the used ring (see [`queue::add_used`]).
fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32, id: &str) {
    if let Err(e) = queue::add_used(queue, mem, head, len) {
        tracing::debug!(%e, id, head, "console used ring");
    }
}

impl Console {
    /// Reads what host input is there (up to the pending-input bound) and delivers pending
    /// input into the buffers the driver posted. Stops reading, without losing anything,
    /// while the pending buffer is full; a receiveq notification calls this again.
    pub fn process_input(&mut self) {
        self.deliver_input();
        let mut budget = INPUT_BUFFER_SIZE;
        let mut closed = false;
        let mut buf = [0u8; CHUNK];
        while self.backend.reads_input() && budget > 0 {
            let room = INPUT_BUFFER_SIZE.saturating_sub(self.input.len());
            let want = room.min(budget).min(CHUNK);
            if want == 0 {
                break;
            }
            match self.backend.read(&mut buf[..want]) {
                Read::Data(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    budget -= n;
                    self.deliver_input();
                }
                Read::WouldBlock => break,
                Read::Closed => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            // Output still waiting was for whoever left: drop it now rather than later.
            self.flush_output();
        }
        self.refresh_size();
        self.sync();
    }

    /// Writes waiting guest output to the backend, as much as it takes without blocking.
    pub fn flush_output(&mut self) {
        while !self.output.is_empty() {
            match self.backend.write(&self.output) {
                Write::Wrote(0) | Write::WouldBlock => break,
                Write::Wrote(n) => {
                    self.output.drain(..n.min(self.output.len()));
                }
                Write::Lost => {
                    let n = self.output.len();
                    self.output.clear();
                    self.lost(n);
                }
            }
        }
        self.sync();
    }

    /// Serves transmitq: every chain's bytes go to the backend (or the output buffer) and
    /// the chain is used at once, so the guest never waits on the host side.
    pub(super) fn process_tx(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used = false;
        let mut budget = CHAINS_PER_PASS;
        let mut empty_rounds = 0;
        'pass: loop {
            let mut popped = false;
            while let Some(chain) = active.tx.pop_descriptor_chain(&active.env.mem) {
                if budget == 0 {
                    // The rest waits for the next pass, after the event loop served others.
                    active.tx.go_to_previous_position();
                    active.env.kicks.kick(TX_QUEUE);
                    break 'pass;
                }
                budget -= 1;
                popped = true;
                let head = chain.head_index();
                if let Err(why) = self.transmit(&active.env.mem, chain) {
                    self.malformed(TX_QUEUE, &why);
                }
                add_used(&mut active.tx, &active.env.mem, head, 0, &self.config.id);
                used = true;
            }
            if !go_again(
                &mut active.tx,
                &active.env.mem,
                popped,
                &mut empty_rounds,
                &self.config.id,
            ) {
                break;
            }
        }
        if used {
            signal_used(&mut active.tx, &active.env);
        }
        self.active = Some(active);
        self.sync();
    }

    /// Copies pending input into posted receive buffers, as long as both last.
    fn deliver_input(&mut self) {
        if self.input.is_empty() {
            return;
        }
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used = false;
        let mut budget = CHAINS_PER_PASS;
        let mut empty_rounds = 0;
        'pass: loop {
            let mut popped = false;
            while !self.input.is_empty() {
                let Some(chain) = active.rx.pop_descriptor_chain(&active.env.mem) else {
                    break;
                };
                if budget == 0 {
                    active.rx.go_to_previous_position();
                    active.env.kicks.kick(RX_QUEUE);
                    break 'pass;
                }
                budget -= 1;
                popped = true;
                let head = chain.head_index();
                let len = self.receive(&active.env.mem, chain).unwrap_or_else(|why| {
                    self.malformed(RX_QUEUE, &why);
                    0
                });
                add_used(&mut active.rx, &active.env.mem, head, len, &self.config.id);
                used = true;
            }
            // Out of buffers with input left: ask the driver to tell us when it posts more.
            if self.input.is_empty()
                || !go_again(
                    &mut active.rx,
                    &active.env.mem,
                    popped,
                    &mut empty_rounds,
                    &self.config.id,
                )
            {
                break;
            }
        }
        if used {
            signal_used(&mut active.rx, &active.env);
        }
        self.active = Some(active);
    }

    /// Sends one transmit chain's bytes to the backend.
    fn transmit(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<(), Malformed> {
        let mut buf = [0u8; CHUNK];
        let bufs = buffers(mem, chain, false)?;
        let total: u64 = bufs.iter().map(|&(_, len)| u64::from(len)).sum();
        if total > MAX_TX_CHAIN {
            return Err(Malformed::TooLong(total));
        }
        for (addr, len) in bufs {
            let mut done = 0usize;
            while done < len as usize {
                let n = (len as usize - done).min(CHUNK);
                let at = addr
                    .checked_add(done as u64)
                    .ok_or(Malformed::OutOfRange { addr: addr.0, len })?;
                mem.read_slice(&mut buf[..n], at)
                    .map_err(|_| Malformed::OutOfRange { addr: addr.0, len })?;
                self.emit(&buf[..n]);
                done += n;
            }
        }
        Ok(())
    }

    /// Fills one receive chain from pending input; returns the bytes written.
    fn receive(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, Malformed> {
        let mut written = 0u32;
        for (addr, len) in buffers(mem, chain, true)? {
            if self.input.is_empty() {
                break;
            }
            let n = self.input.len().min(len as usize);
            mem.write_slice(&self.input[..n], addr)
                .map_err(|_| Malformed::OutOfRange { addr: addr.0, len })?;
            self.input.drain(..n);
            // n <= len, a u32, and the chain's total fits in a u32 (virtio-queue checks).
            written = written.saturating_add(n as u32);
        }
        self.metrics.rx_bytes += u64::from(written);
        Ok(written)
    }

    /// Hands guest output to the backend, keeping what it cannot take yet (in order, up to
    /// the output bound).
    fn emit(&mut self, mut data: &[u8]) {
        self.metrics.tx_bytes += data.len() as u64;
        if !self.output.is_empty() {
            self.flush_output();
        }
        while self.output.is_empty() && !data.is_empty() {
            match self.backend.write(data) {
                Write::Wrote(0) | Write::WouldBlock => break,
                Write::Wrote(n) => data = &data[n.min(data.len())..],
                Write::Lost => {
                    self.lost(data.len());
                    return;
                }
            }
        }
        let room = OUTPUT_BUFFER_SIZE.saturating_sub(self.output.len());
        let kept = room.min(data.len());
        self.output.extend_from_slice(&data[..kept]);
        if kept < data.len() {
            self.lost(data.len() - kept);
        }
    }

    /// Counts dropped output, logging the 1st, 2nd, 4th, 8th... time.
    fn lost(&mut self, bytes: usize) {
        self.metrics.tx_dropped_bytes += bytes as u64;
        self.drop_events += 1;
        if self.drop_events.is_power_of_two() {
            tracing::info!(
                id = self.config.id,
                dropped_bytes = self.metrics.tx_dropped_bytes,
                "console output dropped (no client, or the backend is full)"
            );
        }
    }

    /// Counts a refused chain, logging the 1st, 2nd, 4th, 8th... one.
    fn malformed(&mut self, queue: usize, why: &Malformed) {
        self.metrics.malformed += 1;
        if self.metrics.malformed.is_power_of_two() {
            tracing::warn!(
                id = self.config.id,
                queue,
                %why,
                count = self.metrics.malformed,
                "malformed console descriptor chain"
            );
        }
    }
}
