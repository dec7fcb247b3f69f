//! The source's final phase, on the VMM thread (which serves the devices, so none of them
//! moves while it runs): pause, save the machine, send the last dirty pages and the state,
//! and wait for the destination to say it runs the VM.
//!
//! What happens on a failure depends on how far it got. Before the state is sent the
//! destination cannot run the VM, and after an `Abort` from it, it does not: the VM resumes
//! here. Once the state is out, silence (a timeout, a dropped connection) may mean that the
//! destination runs the VM and only its `Running` was lost: the VM stays paused here, and the
//! error says how to find out which side should run it. Two copies of one guest never run.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use devices::VmExit;
use migration::{Connection, Message};

use super::progress::{self, Progress};
use super::send::{send_round, take_dirty, Handover};
use super::{reason, FinalState};
use crate::control::runtime::Runtime;
use crate::persist::create::capture;

/// The longest the final phase may take, from the pause until `Running`: past it the
/// connection is shut down.
const FINAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a final phase failed.
enum Failure {
    /// The destination cannot run the VM: the state was not sent, or it gave up.
    NotMoved(String),
    /// The state was sent and nothing came back: the destination may run the VM.
    Unknown(String),
}

/// Runs the final phase; on success this petrel exits with `VmExit::Migrated`.
pub fn finish(rt: &Runtime, handover: Handover, progress: &Progress) {
    let Handover {
        mut conn,
        dirty,
        round,
        mut link,
        _log,
    } = handover;
    progress.set_state(progress::STOPPING);
    let paused_before = rt.pause.is_paused();
    let stopped = Instant::now();
    let _watchdog = Watchdog::arm(&conn, FINAL_TIMEOUT);
    let result = match rt.pause() {
        Ok(()) => final_round(rt, &mut conn, dirty, round, &mut link, progress, stopped),
        Err(e) => Err(Failure::NotMoved(reason(e))),
    };
    match result {
        Ok(()) => {
            let downtime = stopped.elapsed().as_secs_f64() * 1e3;
            progress.complete(|i| i.downtime_ms = Some(downtime));
            let info = progress.info();
            tracing::info!(
                downtime_ms = downtime,
                total_ms = info.elapsed_ms,
                rounds = info.round + 1,
                bytes = info.bytes,
                "migration completed: the VM runs at {}",
                info.url.unwrap_or_default()
            );
            rt.exit.signal(VmExit::Migrated);
        }
        Err(Failure::NotMoved(e)) => {
            let _ = conn.send(&Message::Abort { reason: e.clone() });
            match relock_disks(rt) {
                Ok(()) => {
                    if !paused_before {
                        rt.resume();
                    }
                    progress.fail(e);
                }
                Err(locks) => progress.fail(format!(
                    "{e}; the VM stays paused here because {locks}: stop the petrel that holds them (the destination?), then resume here with PATCH /vm Resumed"
                )),
            }
        }
        Err(Failure::Unknown(e)) => progress.fail(format!(
            "{e}. The state was sent, so the destination may be running the VM: it stays paused here. Ask the destination (GET /migration): if it runs the VM, stop this petrel; if not, resume here with PATCH /vm Resumed"
        )),
    }
}

/// Takes the disk images' locks back, giving a destination that failed a second to let go
/// of them.
fn relock_disks(rt: &Runtime) -> Result<(), String> {
    let mut tries = 50;
    loop {
        match rt.take_disk_locks() {
            Err(e) if tries > 0 && e.held_elsewhere => {
                tries -= 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(|e| e.message),
        }
    }
}

fn final_round(
    rt: &Runtime,
    conn: &mut Connection,
    dirty: Option<Vec<u64>>,
    round: u32,
    link: &mut super::link::Link,
    progress: &Progress,
    stopped: Instant,
) -> Result<(), Failure> {
    let ms = || stopped.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(ms = ms(), "migration: paused");
    let captured = capture(rt).map_err(|e| Failure::NotMoved(reason(e)))?;
    tracing::debug!(ms = ms(), "migration: captured");
    // Handed-over memory is the destination's already.
    let mut pages = 0;
    let mut ack_due = dirty.is_some();
    if let Some(mut dirty) = dirty {
        let last = take_dirty(rt).map_err(Failure::NotMoved)?;
        memory::union_into(&mut dirty, &last);
        pages = memory::count_pages(&dirty);
        // The pause is no time to keep to a bandwidth limit.
        link.lift_limit();
        send_round(conn, rt, round, &dirty, link, progress, &|| Ok(()))
            .map_err(Failure::NotMoved)?;
    }
    // The destination opens and locks the disk images when it builds the machine.
    rt.release_disk_locks()
        .map_err(|e| Failure::NotMoved(format!("cannot hand the disk images over: {e}")))?;
    let state = FinalState {
        paused_ms: ms(),
        elapsed_ms: progress.elapsed().as_secs_f64() * 1e3,
        machine: captured,
    };
    let json = serde_json::to_vec(&state)
        .map_err(|e| Failure::NotMoved(format!("cannot encode the state: {e}")))?;
    tracing::debug!(
        ms = ms(),
        pages,
        state_bytes = json.len(),
        "migration: last pages sent"
    );
    // A write that fails may still have delivered the state.
    let bytes = conn
        .send(&Message::State { json })
        .map_err(|e| Failure::Unknown(format!("sending the state: {e}")))?;
    progress.update(|i| i.bytes += bytes);
    loop {
        match conn.recv() {
            Ok(Message::Running) => return Ok(()),
            // The last round's acknowledgement, once.
            Ok(Message::RoundEnd { round: r, .. }) if r == round && ack_due => ack_due = false,
            Ok(Message::Abort { reason }) => {
                return Err(Failure::NotMoved(format!(
                    "the destination gave up: {reason}"
                )))
            }
            Ok(other) => {
                return Err(Failure::Unknown(format!(
                    "the destination answered {} instead of Running",
                    other.kind().name()
                )))
            }
            Err(e) => {
                return Err(Failure::Unknown(format!(
                    "waiting for the destination to run the VM: {e}"
                )))
            }
        }
    }
}

/// Shuts the connection down when the final phase overruns, so that a peer that stalls
/// cannot keep the VM paused and the VMM thread blocked; disarmed when dropped.
struct Watchdog {
    _disarm: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    fn arm(conn: &Connection, timeout: Duration) -> Watchdog {
        let Ok(peer) = conn.try_clone() else {
            return Watchdog { _disarm: None };
        };
        let (tx, rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("petrel-mig-watch".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                    tracing::warn!(
                        ?timeout,
                        "migration: the final phase overran: closing the connection"
                    );
                    peer.shutdown();
                }
            });
        Watchdog {
            _disarm: spawned.ok().map(|_| tx),
        }
    }
}
