//! The disk's I/O thread. It receives validated requests from the VMM thread, does the I/O
//! directly against guest memory (through vm-memory, so the dirty bitmap sees every byte
//! it writes), writes each request's status byte, and reports the completion back on a
//! channel plus an eventfd. It never touches the queue.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::metrics::{add, worth_logging, Counters};
use super::request::{Op, Request, Segment, ID_BYTES, STATUS_IOERR, STATUS_OK};

/// A finished request: the chain's head and the bytes the device wrote into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Completion {
    pub head: u16,
    pub used_len: u32,
}

/// What the I/O thread works with.
pub(super) struct WorkerEnv {
    pub disk: Arc<Disk>,
    pub mem: GuestMemoryMmap,
    /// What GET_ID returns.
    pub id: [u8; ID_BYTES],
    pub counters: Arc<Counters>,
    /// Written when completions are waiting (once per batch).
    pub done_evt: EventFd,
}

/// The VMM thread's handle on the I/O thread.
pub(super) struct Worker {
    jobs: Option<Sender<Request>>,
    done: Receiver<Completion>,
    thread: Option<JoinHandle<()>>,
    /// Asks long operations (write-zeroes written out by hand) to give up, for a reset.
    cancel: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the thread `name`.
    pub(super) fn spawn(name: String, env: WorkerEnv) -> io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(env, job_rx, done_tx, thread_cancel))?;
        Ok(Worker {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            cancel,
        })
    }

    /// Queues a request; gives it back if the thread is gone.
    pub(super) fn submit(&self, request: Request) -> Result<(), Request> {
        match &self.jobs {
            Some(jobs) => jobs.send(request).map_err(|e| e.0),
            None => Err(request),
        }
    }

    /// A finished request, if there is one.
    pub(super) fn try_completion(&self) -> Result<Completion, TryRecvError> {
        self.done.try_recv()
    }

    /// Waits for the next finished request; `None` if the thread is gone.
    pub(super) fn wait_completion(&self) -> Option<Completion> {
        self.done.recv().ok()
    }

    /// Lets the thread finish what it was given (long write-zeroes give up early and fail)
    /// and waits for it to exit. Completions not yet collected are dropped.
    pub(super) fn stop(&mut self) {
        self.cancel.store(true, Ordering::Release);
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("a disk I/O thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Completions reported before the VMM thread is woken even if more requests are queued,
/// so the guest sees early results of a long batch.
const SIGNAL_EVERY: u32 = 16;

fn run(env: WorkerEnv, jobs: Receiver<Request>, done: Sender<Completion>, cancel: Arc<AtomicBool>) {
    let mut next = jobs.recv().ok();
    let mut unsignalled = 0;
    while let Some(request) = next.take() {
        if cancel.load(Ordering::Acquire) {
            // A reset: the device drops the queue, so queued requests are not carried out.
            next = jobs.recv().ok();
            continue;
        }
        let used_len = serve(&env, &request, &cancel);
        let completion = Completion {
            head: request.head,
            used_len,
        };
        if done.send(completion).is_err() {
            // The device is gone; nobody waits for completions.
            return;
        }
        unsignalled += 1;
        // One wake-up per batch: while more requests are queued, the VMM thread is told
        // only every SIGNAL_EVERY completions; it is always told before this thread waits.
        next = jobs.try_recv().ok();
        if next.is_none() || unsignalled >= SIGNAL_EVERY {
            if let Err(e) = env.done_evt.write(1) {
                tracing::error!(%e, "cannot signal a disk completion");
            }
            unsignalled = 0;
        }
        if next.is_none() {
            next = jobs.recv().ok();
        }
    }
}

/// Runs one request and writes its status; returns the used length.
fn serve(env: &WorkerEnv, request: &Request, cancel: &AtomicBool) -> u32 {
    let (status, written) = match execute(env, &request.op, cancel) {
        Ok(written) => (STATUS_OK, written),
        Err(e) => {
            let count = add(&env.counters.io_errors, 1);
            if worth_logging(count) {
                tracing::warn!(
                    %e,
                    path = %env.disk.path().display(),
                    op = request.op.name(),
                    io_errors = count,
                    "disk I/O failed"
                );
            }
            (STATUS_IOERR, 0)
        }
    };
    if let Err(e) = env.mem.write_obj(status, request.status) {
        // The address was checked when the request was parsed; guest memory does not shrink.
        tracing::error!(%e, "cannot write a disk request's status");
        return 0;
    }
    written.saturating_add(1)
}

/// Does the I/O; returns the bytes written into guest memory.
fn execute(env: &WorkerEnv, op: &Op, cancel: &AtomicBool) -> io::Result<u32> {
    let c = &env.counters;
    match op {
        Op::Read { offset, data } => {
            let bytes = transfer(env, data, *offset, Direction::ToGuest)?;
            add(&c.read_ops, 1);
            add(&c.read_bytes, bytes);
            Ok(u32::try_from(bytes).unwrap_or(u32::MAX))
        }
        Op::Write { offset, data } => {
            let bytes = transfer(env, data, *offset, Direction::FromGuest)?;
            add(&c.write_ops, 1);
            add(&c.write_bytes, bytes);
            Ok(0)
        }
        Op::Flush => {
            env.disk.flush()?;
            add(&c.flush_ops, 1);
            Ok(0)
        }
        Op::GetId { data } => {
            let mut done = 0;
            for seg in data {
                let n = (seg.len as usize).min(ID_BYTES - done);
                env.mem
                    .write_slice(&env.id[done..done + n], seg.addr)
                    .map_err(io::Error::other)?;
                done += n;
            }
            add(&c.get_id_ops, 1);
            Ok(done as u32)
        }
        Op::Discard { offset, len } => {
            if *len > 0 {
                env.disk.discard(*offset, *len)?;
            }
            add(&c.discard_ops, 1);
            Ok(0)
        }
        Op::WriteZeroes { offset, len, unmap } => {
            if *len > 0 {
                env.disk.write_zeroes(*offset, *len, *unmap, cancel)?;
            }
            add(&c.write_zeroes_ops, 1);
            Ok(0)
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    ToGuest,
    FromGuest,
}

/// Moves `segs` between guest memory and the disk at `offset`; returns the bytes moved.
fn transfer(env: &WorkerEnv, segs: &[Segment], offset: u64, dir: Direction) -> io::Result<u64> {
    let mut pos = offset;
    for seg in segs {
        // A segment may span guest memory regions: one slice per region.
        for slice in GuestMemoryBackend::get_slices(&env.mem, seg.addr, seg.len as usize) {
            let slice = slice.map_err(io::Error::other)?;
            match dir {
                Direction::ToGuest => env.disk.read_into(pos, &slice)?,
                Direction::FromGuest => env.disk.write_from(pos, &slice)?,
            }
            pos += slice.len() as u64;
        }
    }
    Ok(pos - offset)
}
