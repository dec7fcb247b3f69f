//! The destination of a live migration: `PUT /migration/receive`.
//!
//! A thread listens; the first source to connect says what its machine is, and is refused
//! unless it is the machine this petrel was configured as (vCPUs, memory layout, devices,
//! and a CPUID this host gives too) — before any memory moves. Then its configuration (the
//! machine is built from it, with this process's serial console), memory rounds written
//! straight into new guest RAM, and the state. The machine built from them goes to the VMM
//! thread, which starts it as it starts a booted one; once its vCPUs run, the source is
//! told `Running`. On any failure everything received is dropped and this petrel waits to be
//! configured, or to receive again.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::types::MigrationReceiveParams;
use api::ApiResponse;
use migration::{Compat, Connection, Incoming as Received, Listener, Message, MigrationError};
use migration::{MigrationUrl, PROTOCOL_VERSION};
use vmm_sys_util::eventfd::EventFd;

use super::progress::{self, Progress};
use super::{compat, reason, FinalState};
use crate::builder::BuildError;
use crate::config::{check_same_guest_topology, VmConfig};
use crate::machine::Machine;
use crate::persist::restore::{build_restored, restored_vm};
use crate::persist::SnapshotBook;

/// How often the listening thread looks whether it should stop.
const ACCEPT_POLL: Duration = Duration::from_millis(200);
/// How long one read or write on the connection may block (the source's rounds may be
/// far apart with a slow link).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A migration being received, as the VMM thread holds it.
pub struct Incoming {
    arrival: Receiver<Arrival>,
    /// Tells the listening thread to give up (this petrel is going away).
    cancel: Arc<AtomicBool>,
}

/// A received machine, ready to run, and where to say whether it started.
pub struct Arrival {
    pub machine: Box<Machine>,
    pub started: Sender<ApiResponse>,
}

impl Incoming {
    /// The received machine, once it is built.
    pub fn take_arrival(&mut self) -> Option<Arrival> {
        self.arrival.try_recv().ok()
    }
}

#[cfg(test)]
impl Incoming {
    /// An `Incoming` with no listening thread behind it.
    pub fn for_test(arrival: Receiver<Arrival>) -> Incoming {
        Incoming {
            arrival,
            cancel: Arc::default(),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Listens where `params` says for a machine like `config`; `wake` tells the VMM thread when
/// the machine has arrived.
pub fn start(
    config: &VmConfig,
    params: &MigrationReceiveParams,
    wake: Arc<EventFd>,
) -> Result<(Progress, Incoming), ApiResponse> {
    let url = MigrationUrl::from_str(&params.url)
        .map_err(|e| ApiResponse::bad_request(format!("url: {e}")))?;
    let kvm = kvm_ioctls::Kvm::new()
        .map_err(|e| ApiResponse::error(500, format!("cannot open /dev/kvm: {e}")))?;
    let ours = compat::of(&kvm, config).map_err(|e| ApiResponse::bad_request(e.to_string()))?;
    let listener = Listener::bind(&url)
        .map_err(|e| ApiResponse::bad_request(format!("url: cannot listen on {url}: {e}")))?;
    let progress = Progress::new(
        "receive",
        progress::LISTENING,
        listener.local_url().to_string(),
    );
    progress.update(|i| {
        i.total_pages = ours.memory.iter().map(|r| r.1).sum::<u64>() / memory::PAGE_SIZE as u64
    });
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, arrival) = mpsc::channel();
    let receiver = Receiving {
        host: config.clone(),
        ours,
        kvm,
        progress: progress.clone(),
        cancel: cancel.clone(),
    };
    std::thread::Builder::new()
        .name("petrel-receive".into())
        .spawn(move || {
            if let Err(e) = receiver.run(listener, &tx, &wake) {
                receiver.progress.fail(e);
            }
        })
        .map_err(|e| ApiResponse::error(500, format!("cannot start the migration thread: {e}")))?;
    Ok((progress, Incoming { arrival, cancel }))
}

/// The listening thread's work.
struct Receiving {
    /// This petrel's configuration: what the source must match, and what is built.
    host: VmConfig,
    ours: Compat,
    kvm: kvm_ioctls::Kvm,
    progress: Progress,
    cancel: Arc<AtomicBool>,
}

impl Receiving {
    fn run(&self, listener: Listener, tx: &Sender<Arrival>, wake: &EventFd) -> Result<(), String> {
        let mut conn = loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err("cancelled: this petrel is stopping".into());
            }
            match listener.accept(ACCEPT_POLL) {
                Ok(conn) => break conn,
                Err(MigrationError::AcceptTimeout(_)) => continue,
                Err(e) => return Err(format!("accepting the source: {e}")),
            }
        };
        // The socket file goes; one source at a time.
        drop(listener);
        conn.set_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let result = self.receive(&mut conn, tx, wake);
        if let Err(e) = &result {
            // The source resumes its VM and reports this.
            let _ = conn.send(&Message::Abort { reason: e.clone() });
        }
        result
    }

    fn receive(
        &self,
        conn: &mut Connection,
        tx: &Sender<Arrival>,
        wake: &EventFd,
    ) -> Result<(), String> {
        self.handshake(conn)?;
        let json = match conn.recv() {
            Ok(Message::Config { json }) => json,
            other => return Err(unexpected("Config", other)),
        };
        let source: VmConfig = serde_json::from_slice(&json)
            .map_err(|e| format!("the source's configuration does not parse: {e}"))?;
        source
            .validate()
            .map_err(|e| format!("the source's configuration is not valid: {e}"))?;
        // The machine is built from this petrel's own configuration (its disk images, TAP
        // devices and sockets: nothing on this host is opened because a peer named it), which
        // the source's must match as the handshake said.
        let theirs = compat::of(&self.kvm, &source).map_err(|e| e.to_string())?;
        theirs.check(&self.ours).map_err(|reason| {
            format!(
                "the source's configuration differs from the machine it shook hands as: {reason}"
            )
        })?;
        check_same_guest_topology(&source, &self.host).map_err(|reason| {
            format!("the source's NUMA topology differs from this machine's: {reason}")
        })?;
        let mut config = self.host.clone();
        let vcpus = config.machine.vcpus as usize;
        let layout = config.memory_layout().map_err(|e| e.to_string())?;
        // Untouched until pages come: a source that hands its memory over costs nothing here.
        let mut mem = crate::builder::allocate_memory(&config, &layout)
            .map_err(|e| format!("cannot allocate guest memory: {e}"))?;
        // The VM is made while memory arrives (so the final pause need not wait for it), once
        // it is known to be around this memory: at the first pages, or when the memory is
        // handed over. Not before: destroying a VM takes KVM milliseconds.
        let build_error = |e: BuildError| format!("cannot build the machine: {e}");
        let make_vm =
            |mem: &memory::GuestMemoryMmap| restored_vm(&config, mem).map_err(build_error);
        let mut vm = None;
        let mut handed_over = false;
        self.progress.set_state(progress::PRECOPY);
        let state = match self.memory(conn, &mem, &mut || {
            vm = Some(make_vm(&mem)?);
            Ok(())
        })? {
            Arrived::State(json) => json,
            Arrived::Memory { size } => {
                mem = self.handed_over(conn, &layout, size)?;
                vm = Some(make_vm(&mem)?);
                handed_over = true;
                match conn.recv() {
                    Ok(Message::State { json }) => json,
                    other => return Err(unexpected("State", other)),
                }
            }
        };
        let arrived = Instant::now();
        let state: FinalState = serde_json::from_slice(&state)
            .map_err(|e| format!("the source's machine state does not parse: {e}"))?;
        let mut captured = state.machine;
        captured
            .devices
            .use_host_side(&config)
            .map_err(|e| format!("the source's machine state: {e}"))?;
        if captured.vcpus.len() != vcpus {
            return Err(format!(
                "the source sent {} vCPU states for a machine of {vcpus} vCPUs",
                captured.vcpus.len()
            ));
        }
        let vm = match vm {
            Some(vm) => vm,
            None => make_vm(&mem)?,
        };
        // The source's memfd is shared memory, and can be handed on again.
        config.machine.shared_memory |= handed_over;
        let machine = build_restored(
            captured.saved(),
            vm,
            config,
            layout,
            mem,
            SnapshotBook::default(),
            false,
        )
        .map_err(build_error)?;
        tracing::debug!(
            ms = arrived.elapsed().as_secs_f64() * 1e3,
            "migration: machine built"
        );
        let (started, started_rx) = mpsc::channel();
        tx.send(Arrival {
            machine: Box::new(machine),
            started,
        })
        .map_err(|_| "this petrel stopped before the VM could start".to_string())?;
        wake.write(1)
            .map_err(|e| format!("cannot wake the VMM thread: {e}"))?;
        // No time limit: once the VMM thread has the machine, only it knows whether it ran,
        // and it always answers (or is gone, the machine with it).
        match started_rx.recv() {
            Ok(ApiResponse::NoContent) => {}
            Ok(other) => return Err(format!("the VM did not start here: {}", reason(other))),
            Err(_) => return Err("this petrel stopped before the VM could start".into()),
        }
        // The guest runs here now: from this point the source must stop.
        let sent = conn.send(&Message::Running);
        let here = arrived.elapsed().as_secs_f64() * 1e3;
        // The whole migration as the source measured it until the state, then this side.
        self.progress.complete(|i| {
            i.downtime_ms = Some(state.paused_ms + here);
            i.elapsed_ms = state.elapsed_ms + here;
        });
        if let Err(e) = sent {
            // The source stays paused when it hears nothing: stop it by hand.
            tracing::warn!(%e, "the VM runs here, but the source was not told: it stays paused there and must be killed");
        }
        Ok(())
    }

    /// Refuses a source whose machine differs from this one's, before any memory moves.
    fn handshake(&self, conn: &mut Connection) -> Result<(), String> {
        let refuse = |conn: &mut Connection, reason: String| {
            let _ = conn.send(&Message::Refuse {
                reason: reason.clone(),
            });
            Err(format!("refused the source: {reason}"))
        };
        match conn.recv() {
            Ok(Message::Hello { compat, .. }) => match compat.check(&self.ours) {
                Ok(()) => conn
                    .send(&Message::HelloAck)
                    .map(drop)
                    .map_err(|e| format!("handshake: {e}")),
                Err(reason) => refuse(conn, reason),
            },
            Err(MigrationError::UnsupportedVersion { theirs: v, .. }) => refuse(
                conn,
                format!("protocol version {v}; this petrel speaks version {PROTOCOL_VERSION}"),
            ),
            other => Err(unexpected("Hello", other)),
        }
    }

    /// The guest memory the source hands over (a memfd on the same host), mapped shared.
    fn handed_over(
        &self,
        conn: &mut Connection,
        layout: &memory::MemoryLayout,
        size: u64,
    ) -> Result<memory::GuestMemoryMmap, String> {
        let file = conn
            .recv_memory_fd()
            .map_err(|e| format!("receiving the memory: {e}"))?;
        if size != layout.size() {
            return Err(format!(
                "the source handed over {size} bytes of memory for a machine of {}",
                layout.size()
            ));
        }
        let mem = layout
            .map_shared(&file)
            .map_err(|e| format!("cannot map the memory the source handed over: {e}"))?;
        crate::persist::restore::bind_restored(&self.host, layout, &mem)
            .map_err(|e| format!("cannot bind the memory the source handed over: {e}"))?;
        self.progress.update(|i| i.pages = i.total_pages);
        Ok(mem)
    }

    /// Receives the memory rounds into `mem`, until the state, or the memory itself;
    /// `first_pages` runs when the first pages have come.
    fn memory(
        &self,
        conn: &mut Connection,
        mem: &memory::GuestMemoryMmap,
        first_pages: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<Arrived, String> {
        // SAFETY: `mem` was just allocated for the machine being received; no vCPU or device
        // exists yet to touch it (the KVM VM that `first_pages` may register it with has no
        // vCPU, and KVM itself does not write guest memory), so only these slices do, and
        // they are dropped when this returns.
        let mut ram = unsafe { memory::ram_slices_mut(mem) };
        let started = Instant::now();
        let mut received = 0;
        loop {
            match conn.recv_into(&mut ram) {
                Ok(Received::Pages { pages, bytes, .. }) => {
                    if received == 0 {
                        first_pages()?;
                    }
                    received += pages;
                    self.progress.update(|i| {
                        i.pages += pages;
                        i.bytes += bytes;
                        let secs = started.elapsed().as_secs_f64();
                        if secs > 0.0 {
                            i.bandwidth = (i.bytes as f64 / secs) as u64;
                        }
                    })
                }
                Ok(Received::Message(Message::RoundEnd { round, pages })) => {
                    self.progress.update(|i| i.round = round);
                    // Everything of the round is in RAM: the source may count it as sent.
                    conn.send(&Message::RoundEnd { round, pages })
                        .map_err(|e| format!("acknowledging round {round}: {e}"))?;
                }
                Ok(Received::Message(Message::State { json })) => return Ok(Arrived::State(json)),
                Ok(Received::Message(Message::MemoryFd { size })) if received == 0 => {
                    return Ok(Arrived::Memory { size })
                }
                Ok(Received::Message(Message::Abort { reason })) => {
                    return Err(format!("the source gave up: {reason}"))
                }
                Ok(Received::Message(other)) => {
                    return Err(unexpected("Pages or State", Ok(other)))
                }
                Err(e) => return Err(format!("receiving memory: {e}")),
            }
        }
    }
}

/// How the memory came.
enum Arrived {
    /// In rounds of pages, then the state.
    State(Vec<u8>),
    /// As a descriptor that follows: `size` bytes.
    Memory { size: u64 },
}

/// What to say when `got` came where `wanted` was due.
fn unexpected(wanted: &str, got: Result<Message, MigrationError>) -> String {
    match got {
        Ok(Message::Abort { reason }) => format!("the source gave up: {reason}"),
        Ok(other) => format!(
            "the source sent {} where {wanted} was due",
            other.kind().name()
        ),
        Err(e) => format!("waiting for {wanted}: {e}"),
    }
}
