//! `petrel ctl migrate send|receive`: following a migration once the API has started it.
//!
//! [`Tracker`] turns each poll of `GET /migration` into whether to poll again and how the
//! migration ended; [`bar_line`], [`plain_line`] and [`finish`] are what is printed. All of
//! them are pure; [`follow`] is the loop around them.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use api::types::MigrationInfo;
use serde_json::Value;

use super::args::MigrateCommand;
use super::output::Output;
use super::request::MIGRATION;

/// How often `GET /migration` is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Consecutive answers about another migration (or none) before giving up: 5 s of polls.
const MAX_STRAY_POLLS: u32 = 50;
/// Cells of the progress bar.
const BAR_WIDTH: usize = 16;
/// Columns assumed when the terminal does not say.
const DEFAULT_COLUMNS: usize = 80;
const MIB: f64 = (1u64 << 20) as f64;

/// Which end of the migration the petrel asked is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `migrate send`: the source, which exits once the destination runs the VM.
    Send,
    /// `migrate receive`: the destination.
    Receive,
}

impl Side {
    /// The side `cmd` follows; `None` for `status`.
    pub fn of(cmd: &MigrateCommand) -> Option<Side> {
        match cmd {
            MigrateCommand::Send { .. } => Some(Side::Send),
            MigrateCommand::Receive { .. } => Some(Side::Receive),
            MigrateCommand::Status => None,
        }
    }

    /// The `role` of [`MigrationInfo`] for this side.
    fn role(self) -> &'static str {
        match self {
            Side::Send => "send",
            Side::Receive => "receive",
        }
    }
}

/// One poll of `GET /migration`.
#[derive(Clone, Debug, PartialEq)]
pub enum Poll {
    /// The migration's progress.
    Info(MigrationInfo),
    /// petrel did not answer (no socket, refused, connection closed) or its VMM thread has
    /// gone (503): what happened, for the message.
    Gone(String),
    /// Any other answer: an error, or a body that is not a `MigrationInfo`.
    Unexpected(String),
}

/// What a poll means for the command.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Under way: poll again.
    Continue,
    /// The VM runs on the destination. `info` is the last progress seen, in state
    /// `completed`; `reported` is false when the sender exited after its final pause before
    /// a poll saw `completed` (its figures are then those of the last poll).
    Completed { info: MigrationInfo, reported: bool },
    /// The migration failed (or the command lost sight of it); the last progress seen.
    Failed {
        message: String,
        info: Option<MigrationInfo>,
    },
}

/// Follows one migration through the polls of `GET /migration`.
#[derive(Clone, Debug)]
pub struct Tracker {
    side: Side,
    /// The last progress of our migration.
    last: Option<MigrationInfo>,
    /// The state and round of the last plain line printed.
    printed: Option<(String, u32)>,
    /// Consecutive answers about another migration.
    stray: u32,
}

impl Tracker {
    /// A tracker for a migration `side` has just started.
    pub fn new(side: Side) -> Self {
        Tracker {
            side,
            last: None,
            printed: None,
            stray: 0,
        }
    }

    /// Whether `info` deserves a new plain line: the first one, or a new state or round.
    pub fn news(&mut self, info: &MigrationInfo) -> bool {
        let key = (info.state.clone(), info.round);
        if self.printed.as_ref() == Some(&key) {
            return false;
        }
        self.printed = Some(key);
        true
    }

    /// What `poll` means. The sender exits once the destination runs the VM, so petrel
    /// going away after the final pause (`stopping`) or `completed` is success; at any
    /// other point it is a failure.
    pub fn observe(&mut self, poll: Poll) -> Step {
        match poll {
            Poll::Info(info) if info.role != self.side.role() => {
                self.stray += 1;
                if self.stray < MAX_STRAY_POLLS {
                    return Step::Continue;
                }
                Step::Failed {
                    message: format!(
                        "petrel reports no {} migration (role {}, state {})",
                        self.side.role(),
                        info.role,
                        info.state
                    ),
                    info: Some(info),
                }
            }
            Poll::Info(info) => {
                self.stray = 0;
                let step = match info.state.as_str() {
                    "completed" => Step::Completed {
                        info: info.clone(),
                        reported: true,
                    },
                    "failed" => Step::Failed {
                        message: match &info.error {
                            Some(e) => format!("migration failed: {e}"),
                            None => "migration failed".to_owned(),
                        },
                        info: Some(info.clone()),
                    },
                    _ => Step::Continue,
                };
                self.last = Some(info);
                step
            }
            Poll::Gone(why) => {
                let state = self.last.as_ref().map(|i| i.state.as_str());
                match (self.side, state) {
                    (Side::Send, Some("stopping" | "completed")) => {
                        let mut info = self.last.clone().unwrap_or_default();
                        info.state = "completed".to_owned();
                        Step::Completed {
                            info,
                            reported: false,
                        }
                    }
                    (side, state) => Step::Failed {
                        message: format!(
                            "the {} petrel stopped answering while the migration was {}: {why}",
                            match side {
                                Side::Send => "sending",
                                Side::Receive => "receiving",
                            },
                            state.unwrap_or("starting")
                        ),
                        info: self.last.clone(),
                    },
                }
            }
            Poll::Unexpected(why) => Step::Failed {
                message: why,
                info: self.last.clone(),
            },
        }
    }
}

/// `bytes` in MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// A duration given in milliseconds: `12.3 ms` below a second, `4.56 s` above.
pub fn duration_text(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// `pages` of `total` as `[####----]` of `width` cells. Later rounds send pages again, so
/// the bar stops at full.
pub fn bar(pages: u64, total: u64, width: usize) -> String {
    // At most `width`: the quotient of a part by its whole.
    let filled = (u128::from(pages.min(total)) * width as u128)
        .checked_div(u128::from(total))
        .unwrap_or(0) as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Whether `state` moves memory (the figures mean something).
fn moves_memory(state: &str) -> bool {
    matches!(state, "precopy" | "stopping" | "completed")
}

/// The progress line a terminal redraws in place: state, round, pages of total as a bar,
/// MiB sent, bandwidth, dirty pages and throttle.
pub fn bar_line(info: &MigrationInfo) -> String {
    if !moves_memory(&info.state) {
        return waiting_text(info);
    }
    let percent = (u128::from(info.pages.min(info.total_pages)) * 100)
        .checked_div(u128::from(info.total_pages))
        .unwrap_or(0);
    format!(
        "{:<9} round {:>2} {} {:>3}% {} {:.1} MiB/s, {} dirty, throttle {}%",
        info.state,
        info.round,
        bar(info.pages, info.total_pages, BAR_WIDTH),
        percent,
        mib(info.bytes),
        info.bandwidth as f64 / MIB,
        info.dirty_pages,
        info.throttle_percent
    )
}

/// The line printed, when stderr is no terminal, for each new state or round.
pub fn plain_line(info: &MigrationInfo) -> String {
    if !moves_memory(&info.state) {
        return format!("migration: {}", waiting_text(info));
    }
    format!(
        "migration: {}, round {}: {}/{} pages, {} sent, {:.1} MiB/s, {} dirty pages, throttle {}%",
        info.state,
        info.round,
        info.pages,
        info.total_pages,
        mib(info.bytes),
        info.bandwidth as f64 / MIB,
        info.dirty_pages,
        info.throttle_percent
    )
}

/// `line` cut to fit `columns` (one column spare, so the cursor stays on the line): a
/// wrapped line would not be redrawn in place.
pub fn fit(line: &str, columns: usize) -> &str {
    match line.char_indices().nth(columns.saturating_sub(1)) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

/// The width of the terminal on stderr.
fn terminal_columns() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which is valid and writable; on
    // failure it writes nothing and the zero width below falls back to the default.
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    match size.ws_col {
        0 => DEFAULT_COLUMNS,
        _ if !ok => DEFAULT_COLUMNS,
        n => usize::from(n),
    }
}

/// A state without figures, with the URL while connecting: `listening on tcp:0.0.0.0:4444`.
fn waiting_text(info: &MigrationInfo) -> String {
    let preposition = match info.state.as_str() {
        "listening" => "on",
        "connecting" => "to",
        _ => return info.state.clone(),
    };
    match &info.url {
        Some(url) => format!("{} {preposition} {url}", info.state),
        None => info.state.clone(),
    }
}

/// What the command prints once the migration has ended, and its exit status.
/// `client_ms`, the time since the request, stands for the total time of a sender that
/// exited before reporting it. With `json`, stdout gets the last progress as JSON (state `completed`
/// or `failed`).
pub fn finish(side: Side, step: Step, client_ms: f64, json: bool) -> Output {
    match step {
        Step::Completed { mut info, reported } => {
            if !reported {
                info.elapsed_ms = client_ms;
            }
            let total = duration_text(info.elapsed_ms);
            let text = match side {
                Side::Send => format!(
                    "migration completed in {total}: downtime {}, {} sent",
                    info.downtime_ms
                        .map(duration_text)
                        .unwrap_or_else(|| "not reported".to_owned()),
                    mib(info.bytes)
                ),
                Side::Receive => format!(
                    "migration received in {total}: {}; the VM runs here",
                    mib(info.bytes)
                ),
            };
            let stdout = if json {
                serde_json::to_string(&info).unwrap_or_default()
            } else {
                text
            };
            Output {
                stdout: format!("{stdout}\n"),
                ..Output::default()
            }
        }
        Step::Failed { message, info } => {
            let body = match info.filter(|i| i.state == "failed") {
                Some(info) => serde_json::to_string(&info).unwrap_or_default(),
                None => serde_json::json!({ "fault_message": message }).to_string(),
            };
            Output::failure(&message, json, body)
        }
        Step::Continue => Output::default(),
    }
}

/// Polls `GET /migration` once.
fn poll(client: &api::Client) -> Poll {
    match client.request("GET", MIGRATION, None) {
        Ok((200, body)) => match serde_json::from_str(&body) {
            Ok(info) => Poll::Info(info),
            Err(e) => Poll::Unexpected(format!("unexpected answer to GET {MIGRATION}: {e}")),
        },
        Ok((503, body)) => Poll::Gone(fault_text(503, &body)),
        Ok((status, body)) => Poll::Unexpected(fault_text(status, &body)),
        Err(api::ClientError::Connect(_, e)) => Poll::Gone(super::os_message(&e)),
        Err(e) => Poll::Gone(e.to_string()),
    }
}

/// An error answer's `fault_message`, or its status.
fn fault_text(status: u16, body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("the API answered HTTP {status}"))
}

/// Follows the migration `cmd` has just started until it completes or fails, drawing its
/// progress on stderr: a bar redrawn in place on a terminal, otherwise a line per state or
/// round.
pub fn follow(client: &api::Client, cmd: &MigrateCommand, json: bool) -> Output {
    let Some(side) = Side::of(cmd) else {
        return Output::default();
    };
    let started = Instant::now();
    let tty = io::stderr().is_terminal();
    let mut tracker = Tracker::new(side);
    let mut drawn = false;
    let step = loop {
        let poll = poll(client);
        if let Poll::Info(info) = &poll {
            // A closed stderr is no reason to stop following.
            let mut err = io::stderr().lock();
            if tty {
                let line = bar_line(info);
                let _ = write!(err, "\r{}\x1b[K", fit(&line, terminal_columns()));
                let _ = err.flush();
                drawn = true;
            } else if tracker.news(info) {
                let _ = writeln!(err, "{}", plain_line(info));
            }
        }
        match tracker.observe(poll) {
            Step::Continue => std::thread::sleep(POLL_INTERVAL),
            done => break done,
        }
    };
    if drawn {
        let _ = writeln!(io::stderr());
    }
    finish(side, step, started.elapsed().as_secs_f64() * 1000.0, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(role: &str, state: &str, round: u32) -> MigrationInfo {
        MigrationInfo {
            role: role.into(),
            state: state.into(),
            url: Some("unix:/run/m.sock".into()),
            round,
            total_pages: 65536,
            pages: 16384,
            bytes: 64 << 20,
            dirty_pages: 120,
            bandwidth: 1536 << 20,
            expected_downtime_ms: 0.4,
            downtime_ms: None,
            throttle_percent: 0,
            elapsed_ms: 42.0,
            error: None,
        }
    }

    fn send(state: &str) -> Poll {
        Poll::Info(info("send", state, 1))
    }

    #[test]
    fn bar_fills_with_pages_and_stops_at_full() {
        assert_eq!(bar(0, 100, 10), "[----------]");
        assert_eq!(bar(55, 100, 10), "[#####-----]");
        assert_eq!(bar(100, 100, 4), "[####]");
        // Later rounds resend pages: more than the total is still a full bar.
        assert_eq!(bar(250, 100, 4), "[####]");
        assert_eq!(bar(5, 0, 4), "[----]");
    }

    #[test]
    fn bar_line_shows_state_round_bar_mib_bandwidth_dirty_and_throttle() {
        let mut i = info("send", "precopy", 3);
        i.throttle_percent = 20;
        assert_eq!(
            bar_line(&i),
            "precopy   round  3 [####------------]  25% 64.0 MiB 1536.0 MiB/s, 120 dirty, \
             throttle 20%"
        );
        // Before memory moves, the state and where.
        assert_eq!(
            bar_line(&info("receive", "listening", 0)),
            "listening on unix:/run/m.sock"
        );
        assert_eq!(
            bar_line(&info("send", "connecting", 0)),
            "connecting to unix:/run/m.sock"
        );
    }

    #[test]
    fn bar_lines_are_cut_to_the_terminal() {
        assert_eq!(fit("precopy round 1", 9), "precopy ");
        assert_eq!(fit("précopy", 4), "pré");
        assert_eq!(fit("short", 80), "short");
        assert_eq!(fit("short", 6), "short");
        assert_eq!(fit("xy", 1), "");
    }

    #[test]
    fn plain_line_has_the_same_figures_in_words() {
        assert_eq!(
            plain_line(&info("send", "stopping", 4)),
            "migration: stopping, round 4: 16384/65536 pages, 64.0 MiB sent, 1536.0 MiB/s, \
             120 dirty pages, throttle 0%"
        );
        assert_eq!(plain_line(&info("none", "idle", 0)), "migration: idle");
        // The error comes in the final message.
        assert_eq!(plain_line(&info("send", "failed", 0)), "migration: failed");
        let mut unknown = info("receive", "listening", 0);
        unknown.url = None;
        assert_eq!(plain_line(&unknown), "migration: listening");
    }

    #[test]
    fn plain_lines_are_printed_once_per_state_or_round() {
        let mut t = Tracker::new(Side::Send);
        assert!(t.news(&info("send", "connecting", 0)));
        assert!(t.news(&info("send", "precopy", 0)));
        let mut more = info("send", "precopy", 0);
        more.pages += 1000;
        assert!(!t.news(&more));
        assert!(t.news(&info("send", "precopy", 1)));
        assert!(!t.news(&info("send", "precopy", 1)));
        assert!(t.news(&info("send", "stopping", 1)));
    }

    #[test]
    fn progress_continues_until_completed_or_failed() {
        let mut t = Tracker::new(Side::Send);
        assert_eq!(t.observe(send("connecting")), Step::Continue);
        assert_eq!(t.observe(send("precopy")), Step::Continue);
        let mut done = info("send", "completed", 5);
        done.downtime_ms = Some(0.8);
        assert_eq!(
            t.observe(Poll::Info(done.clone())),
            Step::Completed {
                info: done,
                reported: true
            }
        );

        let mut t = Tracker::new(Side::Receive);
        let mut failed = info("receive", "failed", 0);
        failed.error = Some("incompatible source: 2 vCPUs, 1 here".into());
        assert_eq!(
            t.observe(Poll::Info(failed.clone())),
            Step::Failed {
                message: "migration failed: incompatible source: 2 vCPUs, 1 here".into(),
                info: Some(failed),
            }
        );
    }

    #[test]
    fn a_sender_gone_after_its_final_pause_has_completed() {
        for last in ["stopping", "completed"] {
            let mut t = Tracker::new(Side::Send);
            t.observe(send("precopy"));
            if last == "stopping" {
                t.observe(send("stopping"));
            } else {
                // `completed` ends the command at once; a tracker fed it anyway agrees.
                t.last = Some(info("send", "completed", 1));
            }
            let Step::Completed { info, reported } = t.observe(Poll::Gone("refused".into())) else {
                panic!("{last}");
            };
            assert_eq!((info.state.as_str(), reported), ("completed", false));
            assert_eq!(info.bytes, 64 << 20, "the last figures seen");
        }
    }

    #[test]
    fn a_sender_gone_before_its_final_pause_has_failed() {
        let mut t = Tracker::new(Side::Send);
        t.observe(send("precopy"));
        let Step::Failed { message, info } = t.observe(Poll::Gone("Connection refused".into()))
        else {
            panic!()
        };
        assert_eq!(
            message,
            "the sending petrel stopped answering while the migration was precopy: \
             Connection refused"
        );
        assert_eq!(info.unwrap().state, "precopy");
        // Before any progress at all.
        let step = Tracker::new(Side::Send).observe(Poll::Gone("x".into()));
        assert!(
            matches!(&step, Step::Failed { message, info: None } if message.contains("was starting")),
            "{step:?}"
        );
    }

    #[test]
    fn a_receiver_gone_has_failed_whatever_its_state() {
        for state in ["listening", "precopy", "stopping"] {
            let mut t = Tracker::new(Side::Receive);
            t.observe(Poll::Info(info("receive", state, 0)));
            assert!(
                matches!(t.observe(Poll::Gone("gone".into())), Step::Failed { .. }),
                "{state}"
            );
        }
    }

    #[test]
    fn error_answers_fail_at_once() {
        let mut t = Tracker::new(Side::Send);
        t.observe(send("precopy"));
        assert!(matches!(
            t.observe(Poll::Unexpected("migration: not wired yet".into())),
            Step::Failed { message, .. } if message == "migration: not wired yet"
        ));
        assert_eq!(
            fault_text(500, r#"{"fault_message":"migration: not wired yet"}"#),
            "migration: not wired yet"
        );
        assert_eq!(fault_text(502, "nope"), "the API answered HTTP 502");
    }

    #[test]
    fn reports_of_another_migration_are_waited_out_then_fail() {
        let mut t = Tracker::new(Side::Send);
        let other = Poll::Info(info("none", "idle", 0));
        for _ in 1..MAX_STRAY_POLLS {
            assert_eq!(t.observe(other.clone()), Step::Continue);
        }
        assert!(matches!(
            t.observe(other),
            Step::Failed { message, .. } if message == "petrel reports no send migration (role none, state idle)"
        ));
    }

    #[test]
    fn success_prints_total_time_downtime_and_bytes() {
        let mut done = info("send", "completed", 2);
        done.downtime_ms = Some(0.76);
        done.elapsed_ms = 1234.0;
        let out = finish(
            Side::Send,
            Step::Completed {
                info: done.clone(),
                reported: true,
            },
            9999.0,
            false,
        );
        assert_eq!(
            out,
            Output {
                stdout: "migration completed in 1.23 s: downtime 0.8 ms, 64.0 MiB sent\n".into(),
                ..Output::default()
            }
        );
        // A sender that exited first: the time the command measured, no downtime figure.
        let out = finish(
            Side::Send,
            Step::Completed {
                info: info("send", "completed", 2),
                reported: false,
            },
            10.5,
            false,
        );
        assert_eq!(
            out.stdout,
            "migration completed in 10.5 ms: downtime not reported, 64.0 MiB sent\n"
        );
        let out = finish(
            Side::Receive,
            Step::Completed {
                info: info("receive", "completed", 2),
                reported: true,
            },
            0.0,
            false,
        );
        assert_eq!(
            out.stdout,
            "migration received in 42.0 ms: 64.0 MiB; the VM runs here\n"
        );
        // With --json, the last progress.
        let out = finish(
            Side::Send,
            Step::Completed {
                info: done.clone(),
                reported: true,
            },
            0.0,
            true,
        );
        let back: MigrationInfo = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(back, done);
    }

    #[test]
    fn failure_prints_the_error_and_exits_1() {
        let mut failed = info("send", "failed", 1);
        failed.error = Some("timed out after 60 s".into());
        let step = Step::Failed {
            message: "migration failed: timed out after 60 s".into(),
            info: Some(failed.clone()),
        };
        let out = finish(Side::Send, step.clone(), 0.0, false);
        assert_eq!(
            out,
            Output {
                stdout: String::new(),
                stderr: "petrel: error: migration failed: timed out after 60 s\n".into(),
                code: 1,
            }
        );
        let out = finish(Side::Send, step, 0.0, true);
        let back: MigrationInfo = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(back, failed);
        // Without a failed progress to show, --json prints the fault.
        let step = Step::Failed {
            message: "gone".into(),
            info: Some(info("send", "precopy", 1)),
        };
        let out = finish(Side::Send, step, 0.0, true);
        assert_eq!(out.stdout, "{\"fault_message\":\"gone\"}\n");
    }

    #[test]
    fn durations_are_ms_below_a_second() {
        assert_eq!(duration_text(0.24), "0.2 ms");
        assert_eq!(duration_text(999.0), "999.0 ms");
        assert_eq!(duration_text(61_000.0), "61.00 s");
    }
}
