//! The source of a live migration: `PUT /migration/send`.
//!
//! A thread connects, shakes hands, and sends memory while the guest runs: round 0 every page
//! the guest has touched, each later round the pages written during the one before (KVM's
//! dirty log joined with the VMM's own writes). When the pages left would go over the link
//! within `downtime_ms` at the measured bandwidth, or after `max_rounds`, it hands the
//! connection to the VMM thread ([`finish`]): the machine is paused, its devices, vCPUs and
//! VM saved, the last dirty pages and the state sent, and once the destination answers
//! `Running` this petrel exits. A guest that dirties memory faster than the link takes it is
//! slowed (auto-converge: its vCPUs are paused for a growing share of every 20 ms) or, without
//! auto-converge, the migration gives up at `timeout_s`. On any failure the machine runs on
//! here as before.

use std::str::FromStr;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use api::types::MigrationSendParams;
use api::ApiResponse;
use migration::{Connection, Message, MigrationUrl, PagesSent, PROTOCOL_VERSION};
use vmm_sys_util::eventfd::EventFd;

use super::compat;
use super::link::Link;
use super::progress::{self, Progress};
use super::throttle::Throttle;
use crate::config::VmConfig;
use crate::control::runtime::Runtime;
use crate::device_manager::virtio;
use crate::vstate::vm;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or write on the connection may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages per `send_pages` call: between two, progress is reported, the bandwidth limit
/// applied and the deadline checked.
const CHUNK_PAGES: usize = 512;

/// `PUT /migration/send`'s parameters, checked.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub url: MigrationUrl,
    pub downtime: Duration,
    pub timeout: Duration,
    pub auto_converge: bool,
    pub max_bandwidth: Option<u64>,
    pub max_rounds: u32,
    /// Hand the memory over as its memfd instead of copying it.
    pub local: bool,
}

fn bad(message: impl Into<String>) -> ApiResponse {
    ApiResponse::bad_request(message)
}

impl SendOptions {
    /// The options `params` asks for, with petrel's defaults.
    pub fn from_api(params: &MigrationSendParams) -> Result<SendOptions, ApiResponse> {
        let url = MigrationUrl::from_str(&params.url).map_err(|e| bad(format!("url: {e}")))?;
        let downtime_ms = params.downtime_ms.unwrap_or(300);
        if downtime_ms > 60_000 {
            return Err(bad(format!(
                "downtime_ms: {downtime_ms} is more than a minute (60000)"
            )));
        }
        let timeout_s = params.timeout_s.unwrap_or(60);
        if !(1..=86_400).contains(&timeout_s) {
            return Err(bad(format!(
                "timeout_s: {timeout_s} is not between 1 and 86400 (a day)"
            )));
        }
        if let Some(bw) = params.max_bandwidth {
            if bw < 1 << 16 {
                return Err(bad(format!(
                    "max_bandwidth: {bw} bytes a second is less than the least, 65536"
                )));
            }
        }
        let max_rounds = params.max_rounds.unwrap_or(30);
        if !(1..=10_000).contains(&max_rounds) {
            return Err(bad(format!(
                "max_rounds: {max_rounds} is not between 1 and 10000"
            )));
        }
        Ok(SendOptions {
            url,
            downtime: Duration::from_millis(downtime_ms),
            timeout: Duration::from_secs(timeout_s),
            auto_converge: params.auto_converge.unwrap_or(true),
            max_bandwidth: params.max_bandwidth,
            max_rounds,
            local: params.local.unwrap_or(false),
        })
    }
}

/// A migration being sent, as the VMM thread holds it.
pub struct Outgoing {
    /// The pre-copy thread's outcome: the connection to finish on, or why it failed (already
    /// reported in the progress).
    handover: Receiver<Result<Handover, String>>,
    thread: Option<JoinHandle<()>>,
}

/// What pre-copy hands the VMM thread for the final phase.
pub struct Handover {
    pub(super) conn: Connection,
    /// Pages dirtied in the last round, not sent yet; `None` when the memory itself was
    /// handed over (`local`).
    pub(super) dirty: Option<Vec<u64>>,
    /// The round the final pages go in.
    pub(super) round: u32,
    /// What the link carried in pre-copy.
    pub(super) link: Link,
    /// Turns KVM's dirty log off again if the migration turned it on.
    pub(super) _log: Option<DirtyLog>,
}

/// Starts sending the machine behind `rt` (configured as `config`) as `params` asks; `wake`
/// tells the VMM thread when pre-copy is done.
pub fn start(
    rt: Arc<Runtime>,
    config: &VmConfig,
    params: &MigrationSendParams,
    wake: Arc<EventFd>,
) -> Result<(Progress, Outgoing), ApiResponse> {
    let options = SendOptions::from_api(params)?;
    virtio::check_savable(&rt.virtio)
        .map_err(|e| bad(format!("a live migration is not possible: {e}")))?;
    if options.local {
        if !matches!(options.url, MigrationUrl::Unix(_)) {
            return Err(bad(
                "local: the memory can be handed over only on the same host: use a unix: URL",
            ));
        }
        if memory::shared_file(&rt.memory).is_none() {
            return Err(bad(
                "local: this VM's memory is not shared: start it with --shared-memory (machine-config shared_memory) to hand the memory over",
            ));
        }
    } else {
        // Pre-copy needs every page a vhost-user back end writes.
        virtio::can_log_dirty(&rt.virtio).map_err(|e| {
            bad(format!(
                "{e}, so it cannot take part in a live migration (a local one with shared memory needs no log)"
            ))
        })?;
    }
    let config_json = serde_json::to_vec(config)
        .map_err(|e| ApiResponse::error(500, format!("cannot encode the configuration: {e}")))?;
    let config = config.clone();
    let progress = Progress::new("send", progress::CONNECTING, options.url.to_string());
    progress.update(|i| i.total_pages = rt.layout.size() / memory::PAGE_SIZE as u64);
    let (tx, handover) = mpsc::channel();
    let thread_progress = progress.clone();
    let thread = std::thread::Builder::new()
        .name("petrel-migrate".into())
        .spawn(move || {
            let precopy = Precopy {
                rt,
                options,
                progress: thread_progress,
            };
            // A panic must still end the migration (and resume nothing it did not pause).
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                precopy.run(&config, config_json)
            }))
            .unwrap_or_else(|_| Err("the migration thread panicked (a bug in petrel)".into()));
            if let Err(e) = &outcome {
                precopy.progress.fail(e.clone());
            }
            let _ = tx.send(outcome);
            let _ = wake.write(1);
        })
        .map_err(|e| ApiResponse::error(500, format!("cannot start the migration thread: {e}")))?;
    Ok((
        progress,
        Outgoing {
            handover,
            thread: Some(thread),
        },
    ))
}

impl Outgoing {
    /// Pre-copy's outcome, once its thread is done.
    pub fn take_handover(&mut self) -> Option<Result<Handover, String>> {
        let outcome = match self.handover.try_recv() {
            Ok(outcome) => outcome,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => Err("the migration thread ended".into()),
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Some(outcome)
    }
}

/// KVM's dirty log and the vhost-user back ends' logs, turned on for the migration if the
/// machine does not keep them on anyway (for Diff snapshots); off again when dropped. A
/// back end that cannot log refuses the migration before anything moves.
pub(super) struct DirtyLog {
    rt: Arc<Runtime>,
    turned_on: bool,
}

impl DirtyLog {
    fn start(rt: &Arc<Runtime>) -> Result<DirtyLog, String> {
        let turned_on = !rt.track_dirty;
        if turned_on {
            virtio::set_dirty_logging(&rt.virtio, true).map_err(|e| {
                format!("{e}: a live migration needs every page the back end writes")
            })?;
            if let Err(e) = vm::set_dirty_log(&rt.vm, &rt.memory, true) {
                let _ = virtio::set_dirty_logging(&rt.virtio, false);
                return Err(e.to_string());
            }
        }
        Ok(DirtyLog {
            rt: rt.clone(),
            turned_on,
        })
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        if self.turned_on {
            if let Err(e) = vm::set_dirty_log(&self.rt.vm, &self.rt.memory, false) {
                tracing::warn!(%e, "cannot turn the dirty log off after the migration");
            }
            if let Err(e) = virtio::set_dirty_logging(&self.rt.virtio, false) {
                tracing::warn!(%e, "cannot turn a back end's dirty log off after the migration");
            }
        }
    }
}

/// The pages written since the last call. When the machine logs dirty pages for Diff
/// snapshots, they are kept for the next snapshot too: a migration that fails must not
/// make it miss them.
pub(super) fn take_dirty(rt: &Runtime) -> Result<Vec<u64>, String> {
    let set = rt.take_dirty().map_err(|e| e.to_string())?;
    if rt.track_dirty {
        let mut book = rt.book();
        if book.pending_dirty.is_empty() {
            book.pending_dirty = set.clone();
        } else {
            memory::union_into(&mut book.pending_dirty, &set);
        }
    }
    Ok(set)
}

/// Sends the pages of `set` as one round's Pages frames and its RoundEnd, `CHUNK_PAGES` at a
/// time: between chunks the progress is updated, the bandwidth limit applied, and `check`
/// may stop the round.
pub(super) fn send_round(
    conn: &mut Connection,
    rt: &Runtime,
    round: u32,
    set: &[u64],
    link: &mut Link,
    progress: &Progress,
    check: &dyn Fn() -> Result<(), String>,
) -> Result<PagesSent, String> {
    // SAFETY: the regions are guest RAM, mapped for as long as `rt` holds the memory, which
    // outlives `ram` (a local of this function). The guest and device threads may write them
    // while they are sent: RamView reads them only with volatile reads and copies what it
    // reads; a page written meanwhile is in the next round's dirty set (the log was cleared
    // before this round read it), so the destination gets it whole in the end.
    let ram = unsafe { migration::RamView::from_raw(&memory::ram_regions(&rt.memory)) };
    let pages: Vec<u64> = memory::pages_in(set).map(|p| p as u64).collect();
    let mut total = PagesSent::default();
    for chunk in pages.chunks(CHUNK_PAGES) {
        check()?;
        let started = Instant::now();
        let sent = conn
            .send_pages(round, &ram, chunk.iter().copied())
            .map_err(|e| format!("sending memory: {e}"))?;
        link.sent(sent.bytes, started.elapsed());
        total.pages += sent.pages;
        total.zero_pages += sent.zero_pages;
        total.bytes += sent.bytes;
        total.frames += sent.frames;
        progress.update(|i| {
            i.pages += sent.pages;
            i.bytes += sent.bytes;
            i.bandwidth = link.bandwidth() as u64;
        });
    }
    let end = Message::RoundEnd {
        round,
        pages: total.pages,
    };
    let bytes = conn
        .send(&end)
        .map_err(|e| format!("sending memory: {e}"))?;
    progress.update(|i| i.bytes += bytes);
    Ok(total)
}

/// The pre-copy thread's work.
struct Precopy {
    rt: Arc<Runtime>,
    options: SendOptions,
    progress: Progress,
}

impl Precopy {
    fn run(&self, config: &VmConfig, config_json: Vec<u8>) -> Result<Handover, String> {
        let mut conn = self.connect(config)?;
        conn.send(&Message::Config { json: config_json })
            .map_err(|e| format!("sending the configuration: {e}"))?;
        if self.options.local {
            let mem = &self.rt.memory;
            let file = memory::shared_file(mem).ok_or("the VM's memory is not shared")?;
            let bytes = conn
                .send_memory_fd(file, self.rt.layout.size())
                .map_err(|e| format!("handing the memory over: {e}"))?;
            self.progress.update(|i| i.bytes += bytes);
            return Ok(Handover {
                conn,
                dirty: None,
                round: 0,
                link: Link::new(None),
                _log: None,
            });
        }
        self.progress.set_state(progress::PRECOPY);
        let log = DirtyLog::start(&self.rt)?;
        let mut throttle = Throttle::new(self.rt.clone());
        let mut link = Link::new(self.options.max_bandwidth);
        let result = self
            .rounds(&mut conn, &mut throttle, &mut link)
            .map_err(|e| peer_reason(&mut conn).unwrap_or(e));
        drop(throttle);
        let (dirty, round) = result?;
        Ok(Handover {
            conn,
            dirty: Some(dirty),
            round,
            link,
            _log: Some(log),
        })
    }

    /// Connects and shakes hands: the destination checks this machine against its own.
    fn connect(&self, config: &VmConfig) -> Result<Connection, String> {
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        let compat = compat::of(&kvm, config).map_err(|e| e.to_string())?;
        let url = &self.options.url;
        let mut conn = Connection::connect(url, CONNECT_TIMEOUT)
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        conn.set_timeout(Some(IO_TIMEOUT))
            .map_err(|e| format!("{url}: {e}"))?;
        conn.send(&Message::Hello {
            version: PROTOCOL_VERSION,
            compat,
        })
        .map_err(|e| format!("handshake with {url}: {e}"))?;
        match conn.recv() {
            Ok(Message::HelloAck) => Ok(conn),
            Ok(Message::Refuse { reason }) => Err(format!("the destination refused: {reason}")),
            Ok(Message::Abort { reason }) => Err(format!("the destination gave up: {reason}")),
            Ok(other) => Err(format!(
                "handshake with {url}: the destination answered {} instead of HelloAck",
                other.kind().name()
            )),
            Err(e) => Err(format!("handshake with {url}: {e}")),
        }
    }

    /// The pre-copy rounds; returns the pages dirtied in the last one, unsent, and the round
    /// the final pages go in.
    fn rounds(
        &self,
        conn: &mut Connection,
        throttle: &mut Throttle,
        link: &mut Link,
    ) -> Result<(Vec<u64>, u32), String> {
        let rt = &self.rt;
        let deadline = Instant::now() + self.options.timeout;
        let check = || -> Result<(), String> {
            if let Some(exit) = rt.exit.reason() {
                return Err(format!("the VM stopped during the migration: {exit}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the migration did not finish within timeout_s ({} s): the guest dirties memory faster than it can be sent{}",
                    self.options.timeout.as_secs(),
                    if self.options.auto_converge { "" } else { " (auto_converge is off)" }
                ));
            }
            Ok(())
        };
        // From here on every write is in the log: round 0 sends what was touched before.
        take_dirty(rt)?;
        let touched = memory::resident_pages(&rt.memory)
            .map_err(|e| format!("cannot find the guest's pages: {e}"))?;
        send_round(conn, rt, 0, &touched, link, &self.progress, &check)?;
        await_ack(conn, 0, link)?;
        let mut round = 1;
        let mut last_dirty = usize::MAX;
        loop {
            let dirty = take_dirty(rt)?;
            let pages = memory::count_pages(&dirty);
            let expected = link.time_for(pages);
            self.progress.update(|i| {
                i.round = round;
                i.dirty_pages = pages as u64;
                i.expected_downtime_ms = expected.as_secs_f64() * 1e3;
            });
            tracing::debug!(round, pages, ?expected, "migration: pre-copy round");
            if expected <= self.options.downtime || round >= self.options.max_rounds {
                return Ok((dirty, round));
            }
            check()?;
            if self.options.auto_converge && round >= 2 && pages * 10 >= last_dirty * 9 {
                let percent = throttle.step_up();
                self.progress.update(|i| i.throttle_percent = percent);
            }
            last_dirty = pages;
            send_round(conn, rt, round, &dirty, link, &self.progress, &check)?;
            await_ack(conn, round, link)?;
            round += 1;
        }
    }
}

/// Why the destination gave up, if it said so: a write that failed because it closed the
/// connection is better reported with its reason.
fn peer_reason(conn: &mut Connection) -> Option<String> {
    conn.set_timeout(Some(Duration::from_millis(50))).ok()?;
    match conn.recv() {
        Ok(Message::Abort { reason }) | Ok(Message::Refuse { reason }) => {
            Some(format!("the destination gave up: {reason}"))
        }
        _ => None,
    }
}

/// Waits until the destination has taken in all of `round`: what is still in the sockets'
/// buffers counts as not sent yet, for the bandwidth and for what the final pause must carry.
fn await_ack(conn: &mut Connection, round: u32, link: &mut Link) -> Result<(), String> {
    let started = Instant::now();
    match conn.recv() {
        Ok(Message::RoundEnd { round: r, .. }) if r == round => {
            link.sent(0, started.elapsed());
            Ok(())
        }
        Ok(Message::Abort { reason }) => Err(format!("the destination gave up: {reason}")),
        Ok(other) => Err(format!(
            "the destination answered {} to the end of round {round}",
            other.kind().name()
        )),
        Err(e) => Err(format!(
            "waiting for the destination to take round {round}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> MigrationSendParams {
        serde_json::from_str(json).unwrap()
    }

    fn refused(json: &str) -> String {
        match SendOptions::from_api(&params(json)) {
            Err(ApiResponse::Error {
                status: 400,
                fault_message,
            }) => fault_message,
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_given_options() {
        let o = SendOptions::from_api(&params(r#"{"url": "unix:/tmp/m.sock"}"#)).unwrap();
        assert_eq!(o.downtime, Duration::from_millis(300));
        assert_eq!(o.timeout, Duration::from_secs(60));
        assert!(o.auto_converge);
        assert_eq!((o.max_bandwidth, o.max_rounds), (None, 30));
        let o = SendOptions::from_api(&params(
            r#"{"url": "tcp:127.0.0.1:7000", "downtime_ms": 0, "timeout_s": 5,
                "auto_converge": false, "max_bandwidth": 1048576, "max_rounds": 1}"#,
        ))
        .unwrap();
        assert_eq!(o.downtime, Duration::ZERO);
        assert!(!o.auto_converge);
        assert_eq!((o.max_bandwidth, o.max_rounds), (Some(1 << 20), 1));
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        assert!(refused(r#"{"url": "ftp://x"}"#).starts_with("url: "));
        assert!(refused(r#"{"url": "unix:/m", "timeout_s": 0}"#).starts_with("timeout_s: 0"));
        assert!(refused(r#"{"url": "unix:/m", "downtime_ms": 60001}"#).starts_with("downtime_ms"));
        assert!(refused(r#"{"url": "unix:/m", "max_bandwidth": 10}"#).starts_with("max_bandwidth"));
        assert!(refused(r#"{"url": "unix:/m", "max_rounds": 0}"#).starts_with("max_rounds: 0"));
    }

    #[test]
    fn the_link_measures_bandwidth_and_keeps_to_its_limit() {
        let mut link = Link::new(None);
        link.sent(1 << 20, Duration::from_millis(1));
        assert!((link.bandwidth() - (1 << 20) as f64 * 1000.0).abs() < 1.0);
        assert_eq!(link.time_for(256), Duration::from_micros(1000));

        let mut limited = Link::new(Some(10 << 20));
        let started = Instant::now();
        limited.sent(1 << 20, Duration::ZERO);
        // 1 MiB at 10 MiB/s: about 100 ms, which the link waits out.
        assert!(started.elapsed() >= Duration::from_millis(99));
        assert!(limited.bandwidth() <= (10 << 20) as f64 * 1.01);
    }
}
