//! The command line of `petrel ctl`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Subcommand};
use devices::rate_limiter::{RateLimitConfig, RateLimitSpecError};

/// Options of `petrel ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API socket of a running `petrel run --api-sock PATH` (required).
    #[arg(long, value_name = "PATH", global = true)]
    pub api_sock: Option<PathBuf>,
    /// Print the server's JSON body as it is (`{}` for none), for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands of `petrel ctl`.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum CtlCommand {
    /// Show the instance's id, state and version (GET /).
    Status,
    /// Pause the vCPUs (PATCH /vm).
    Pause,
    /// Run paused vCPUs again (PATCH /vm).
    Resume,
    /// Boot the configured guest (PUT /actions InstanceStart).
    Start,
    /// Ask the guest to shut down (PUT /actions Shutdown).
    Shutdown,
    /// Stop the VM at once (PUT /actions Kill).
    Kill,
    /// Send Ctrl+Alt+Del to the guest (PUT /actions SendCtrlAltDel).
    CtrlAltDel,
    /// Press the ACPI power button: the guest is asked to shut down (PUT /actions
    /// PowerButton).
    PowerButton,
    /// Print the whole machine configuration as JSON (GET /vm/config).
    Config,
    /// Print the metrics in Prometheus text format (GET /metrics). With --json, an object
    /// from each series (name and labels, as written) to its value.
    Metrics,
    /// Change a drive of the running VM.
    #[command(subcommand)]
    Drive(DriveCommand),
    /// Change a network interface of the running VM.
    #[command(subcommand)]
    Net(NetCommand),
    /// Save the GPU's screen as a PNG file (GET /display/screenshot).
    Screenshot {
        /// Where to write the PNG (replaced if it exists).
        file: PathBuf,
    },
    /// Write or load a snapshot (PUT /snapshot/create, PUT /snapshot/load).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Move the running VM to another petrel, or receive one (PUT /migration/send, PUT
    /// /migration/receive, GET /migration).
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Send events to a virtio-input device (PUT /input/ID).
    Input {
        /// The input device's id.
        id: String,
        /// What to send.
        #[command(subcommand)]
        event: InputCommand,
    },
}

/// `petrel ctl input ID ...`.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum InputCommand {
    /// Tap a key (press, then release) on a keyboard: a Linux key name such as a, enter,
    /// leftshift or f1.
    Key {
        /// The key's name.
        name: String,
    },
    /// Move a tablet's pointer to X, Y (each 0 to 32767).
    Move { x: u32, y: u32 },
    /// Click a tablet button (press, then release).
    Click {
        /// left, right or middle.
        #[arg(default_value = "left", value_parser = ["left", "right", "middle"])]
        button: String,
    },
    /// Turn a tablet's wheel by N notches (positive: away from the user).
    Wheel {
        #[arg(allow_negative_numbers = true)]
        delta: i32,
    },
}

/// `petrel ctl snapshot ...`. Relative paths are made absolute against the current
/// directory.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum SnapshotCommand {
    /// Write a snapshot of the paused VM: a state file and a memory file.
    Create {
        /// The state file to write.
        state: PathBuf,
        /// The memory file to write: a sparse image of the guest's memory, or with --diff a
        /// layer of the pages written since the previous snapshot.
        mem: PathBuf,
        /// Write an incremental (Diff) snapshot; needs dirty page tracking.
        #[arg(long)]
        diff: bool,
        /// With --diff: the memory file the layer goes over [default: the VM's last].
        #[arg(long, value_name = "MEM_FILE", requires = "diff")]
        parent: Option<PathBuf>,
    },
    /// Load a snapshot into a petrel waiting to be configured.
    Load {
        /// The state file.
        state: PathBuf,
        /// The memory file or top layer [default: the one the state file names].
        mem: Option<PathBuf>,
        /// Run the VM once loaded (otherwise it waits, paused).
        #[arg(long)]
        resume: bool,
        /// Track dirty pages from now on, for Diff snapshots of the loaded VM.
        #[arg(long)]
        track_dirty_pages: bool,
    },
}

/// `petrel ctl migrate ...`. A relative `unix:PATH` is made absolute against the current
/// directory.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum MigrateCommand {
    /// Send the running or paused VM to a petrel that receives, and follow the migration
    /// until it ends. On success the sending petrel exits; on failure its VM keeps running.
    Send {
        /// Where the destination listens: unix:PATH or tcp:HOST:PORT.
        url: String,
        /// The longest final pause to aim for, in milliseconds [default: 300].
        #[arg(long, value_name = "N")]
        downtime_ms: Option<u64>,
        /// Give up after N seconds; the VM keeps running here [default: 60].
        #[arg(long, value_name = "N")]
        timeout_s: Option<u64>,
        /// Never slow the guest's vCPUs: a guest that dirties memory faster than it can be
        /// sent makes the migration time out.
        #[arg(long)]
        no_auto_converge: bool,
        /// At most BYTES a second on the link, e.g. 100M (K, M, G: powers of 1024)
        /// [default: no limit].
        #[arg(long, value_name = "BYTES", value_parser = parse_bandwidth)]
        max_bandwidth: Option<u64>,
        /// Pre-copy rounds before the final pause, whatever the estimate [default: 30].
        #[arg(long, value_name = "N")]
        max_rounds: Option<u32>,
        /// Same host: hand the memory over (the VM needs --shared-memory) instead of
        /// copying it; only the state is sent, with the VM paused.
        #[arg(long)]
        local: bool,
        /// Return once the migration has started instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Wait for a VM from a sending petrel (before start; this petrel must have the same
    /// memory, vCPUs and devices), and follow the migration until the VM runs here.
    Receive {
        /// Where to listen: unix:PATH or tcp:HOST:PORT (port 0 picks a free port).
        url: String,
        /// Return once listening instead of following the migration.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the current or last migration as JSON (GET /migration).
    Status,
}

impl MigrateCommand {
    /// Whether the command follows the migration after starting it.
    pub fn follows(&self) -> bool {
        match self {
            MigrateCommand::Send { no_wait, .. } | MigrateCommand::Receive { no_wait, .. } => {
                !no_wait
            }
            MigrateCommand::Status => false,
        }
    }

    /// `migrate send URL` with no option: what the tests start from.
    #[cfg(test)]
    pub fn send_to(url: &str) -> MigrateCommand {
        MigrateCommand::Send {
            url: url.into(),
            downtime_ms: None,
            timeout_s: None,
            no_auto_converge: false,
            max_bandwidth: None,
            max_rounds: None,
            local: false,
            no_wait: false,
        }
    }
}

/// A byte count: digits, then optionally K, M or G (powers of 1024; `B`/`iB` allowed).
fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => {
            return Err(format!(
                "{s:?}: expected a number of bytes, e.g. 1048576 or 100M"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?}: expected a number of bytes from 1 to 2^64-1"))
}

/// `petrel ctl drive ...`.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum DriveCommand {
    /// Swap the drive's backing file (PATCH /drives/ID). A relative FILE is made absolute
    /// against the current directory.
    SetPath {
        /// The drive's id.
        id: String,
        /// The new backing file.
        file: PathBuf,
    },
    /// Replace the drive's rate limit (PATCH /drives/ID).
    SetRate {
        /// The drive's id.
        id: String,
        /// `bw=BYTES,ops=N,bw_burst=BYTES,ops_burst=N` (per second, as `--disk ...,rate=`);
        /// a resource left out is unlimited; `none` removes the limit.
        spec: RateSpec,
    },
}

/// `petrel ctl net ...`.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum NetCommand {
    /// Replace the rate limits of an interface (PATCH /network-interfaces/ID); a direction
    /// not given keeps its limit. At least one of --rx and --tx.
    SetRate {
        /// The interface's id.
        id: String,
        /// Receive limit: a rate spec as `drive set-rate`'s, or `none`.
        #[arg(long, value_name = "SPEC")]
        rx: Option<RateSpec>,
        /// Transmit limit: a rate spec as `drive set-rate`'s, or `none`.
        #[arg(long, value_name = "SPEC")]
        tx: Option<RateSpec>,
    },
}

/// A rate limit as typed: the `rate=` syntax of `--disk` and `--net`, or `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSpec {
    text: String,
    config: Option<RateLimitConfig>,
}

/// The word that removes a limit.
pub const NO_LIMIT: &str = "none";

impl RateSpec {
    /// The limit; `None` for no limit at all.
    pub fn config(&self) -> Option<&RateLimitConfig> {
        self.config.as_ref()
    }
}

impl FromStr for RateSpec {
    type Err = RateLimitSpecError;
    fn from_str(s: &str) -> Result<Self, RateLimitSpecError> {
        let config = if s == NO_LIMIT {
            None
        } else {
            Some(RateLimitConfig::parse(s)?)
        };
        Ok(RateSpec {
            text: s.to_owned(),
            config,
        })
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.config {
            None => f.write_str("unlimited"),
            Some(_) => f.write_str(&self.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn ctl(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        let mut argv = vec!["petrel", "ctl"];
        argv.extend(args);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Ctl(a) => a,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn socket_json_and_command_are_read() {
        let a = ctl(&["--api-sock", "/run/p.sock", "--json", "status"]).unwrap();
        assert_eq!(a.api_sock, Some(PathBuf::from("/run/p.sock")));
        assert!(a.json);
        assert_eq!(a.command, CtlCommand::Status);
        // Both options are global: they may follow the command.
        let a = ctl(&["ctrl-alt-del", "--json", "--api-sock", "/s"]).unwrap();
        assert!(a.json);
        assert_eq!(a.api_sock, Some(PathBuf::from("/s")));
        assert_eq!(a.command, CtlCommand::CtrlAltDel);
        let a = ctl(&["power-button", "--api-sock", "/s"]).unwrap();
        assert_eq!(a.command, CtlCommand::PowerButton);
        // Its absence is found later, to say so in one line.
        assert_eq!(ctl(&["status"]).unwrap().api_sock, None);
    }

    #[test]
    fn rate_specs_take_the_disk_flag_syntax_or_none() {
        let a = ctl(&[
            "--api-sock",
            "/s",
            "drive",
            "set-rate",
            "root",
            "bw=1M,ops=10",
        ])
        .unwrap();
        let CtlCommand::Drive(DriveCommand::SetRate { id, spec }) = a.command else {
            panic!("{:?}", a.command);
        };
        assert_eq!(id, "root");
        assert_eq!(
            spec.config(),
            Some(&RateLimitConfig::parse("bw=1M,ops=10").unwrap())
        );
        assert_eq!(spec.to_string(), "bw=1M,ops=10");
        let none: RateSpec = "none".parse().unwrap();
        assert_eq!(none.config(), None);
        assert_eq!(none.to_string(), "unlimited");
    }

    #[test]
    fn input_commands_are_read() {
        let a = ctl(&["--api-sock", "/s", "input", "tab", "wheel", "-2"]).unwrap();
        assert_eq!(
            a.command,
            CtlCommand::Input {
                id: "tab".into(),
                event: InputCommand::Wheel { delta: -2 }
            }
        );
        let a = ctl(&["--api-sock", "/s", "input", "tab", "click"]).unwrap();
        assert_eq!(
            a.command,
            CtlCommand::Input {
                id: "tab".into(),
                event: InputCommand::Click {
                    button: "left".into()
                }
            }
        );
    }

    #[test]
    fn migrate_send_reads_every_option() {
        let a = ctl(&[
            "--api-sock",
            "/s",
            "migrate",
            "send",
            "tcp:10.0.0.2:4444",
            "--downtime-ms",
            "50",
            "--timeout-s",
            "120",
            "--no-auto-converge",
            "--max-bandwidth",
            "100M",
            "--max-rounds",
            "5",
            "--local",
            "--no-wait",
        ])
        .unwrap();
        assert_eq!(
            a.command,
            CtlCommand::Migrate(MigrateCommand::Send {
                url: "tcp:10.0.0.2:4444".into(),
                downtime_ms: Some(50),
                timeout_s: Some(120),
                no_auto_converge: true,
                max_bandwidth: Some(100 << 20),
                max_rounds: Some(5),
                local: true,
                no_wait: true,
            })
        );
        assert!(!MigrateCommand::Status.follows());
        let CtlCommand::Migrate(send) = a.command else {
            panic!()
        };
        assert!(!send.follows());
    }

    #[test]
    fn migrate_send_and_receive_follow_by_default() {
        let a = ctl(&["--api-sock", "/s", "migrate", "send", "unix:m.sock"]).unwrap();
        let expected = MigrateCommand::send_to("unix:m.sock");
        assert_eq!(a.command, CtlCommand::Migrate(expected.clone()));
        assert!(expected.follows());
        let a = ctl(&["migrate", "receive", "tcp:0.0.0.0:0", "--api-sock", "/d"]).unwrap();
        let receive = MigrateCommand::Receive {
            url: "tcp:0.0.0.0:0".into(),
            no_wait: false,
        };
        assert_eq!(a.command, CtlCommand::Migrate(receive.clone()));
        assert!(receive.follows());
        let a = ctl(&["--api-sock", "/s", "migrate", "status"]).unwrap();
        assert_eq!(a.command, CtlCommand::Migrate(MigrateCommand::Status));
    }

    #[test]
    fn bandwidths_are_bytes_with_binary_suffixes() {
        assert_eq!(parse_bandwidth("1048576"), Ok(1 << 20));
        assert_eq!(parse_bandwidth("512K"), Ok(512 << 10));
        assert_eq!(parse_bandwidth("100MiB"), Ok(100 << 20));
        assert_eq!(parse_bandwidth("2g"), Ok(2 << 30));
        for bad in [
            "",
            "0",
            "M",
            "1.5G",
            "10T",
            "-1",
            "99999999999999999999",
            "17179869184G",
        ] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_invocations_are_refused() {
        for bad in [
            &["--api-sock", "/s"][..],
            &["--api-sock", "/s", "reboot"],
            &["--api-sock", "/s", "drive", "set-rate", "root", "bw=0"],
            &["--api-sock", "/s", "drive", "set-rate", "root", "iops=5"],
            &["--api-sock", "/s", "drive", "set-path", "root"],
            &["--api-sock", "/s", "net", "set-rate", "eth0", "--rx", "bw"],
            &["--api-sock", "/s", "input", "kbd"],
            &["--api-sock", "/s", "input", "kbd", "key"],
            &["--api-sock", "/s", "input", "tab", "move", "1"],
            &["--api-sock", "/s", "input", "tab", "move", "-1", "2"],
            &["--api-sock", "/s", "input", "tab", "click", "back"],
            &["--api-sock", "/s", "input", "tab", "wheel", "x"],
            &["--api-sock", "/s", "migrate"],
            &["--api-sock", "/s", "migrate", "send"],
            &[
                "--api-sock",
                "/s",
                "migrate",
                "send",
                "unix:/m",
                "--max-rounds",
                "-1",
            ],
            &[
                "--api-sock",
                "/s",
                "migrate",
                "send",
                "unix:/m",
                "--downtime-ms",
                "x",
            ],
            &[
                "--api-sock",
                "/s",
                "migrate",
                "send",
                "unix:/m",
                "--max-bandwidth",
                "0",
            ],
            &["--api-sock", "/s", "migrate", "receive"],
            &[
                "--api-sock",
                "/s",
                "migrate",
                "receive",
                "unix:/m",
                "--downtime-ms",
                "5",
            ],
            &["--api-sock", "/s", "migrate", "status", "unix:/m"],
        ] {
            assert!(ctl(bad).is_err(), "{bad:?}");
        }
    }
}
