//! The `petrel` binary.

use std::process::ExitCode;

use clap::Parser;
use devices::VmExit;
use vmm::cli::{Cli, Command};

/// Exit status for bad input: flags, files, configuration, host setup.
const EXIT_USAGE: u8 = 2;
/// Exit status for a VMM failure or a crashed guest.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let log = vmm::logging::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap formats them; a bad flag is one line.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // The message up to the usage block, on one line: "the following required
            // arguments were not provided: --api-sock <PATH>".
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            return fail(EXIT_USAGE, &message.join(" ").trim_start_matches("error: "));
        }
    };
    match cli.command {
        Command::Run(args) => run(&args, log),
        Command::Ctl(args) => vmm::ctl::run(&args),
        Command::Snapshot(command) => vmm::snapshot_cli::run(&command),
    }
}

fn run(args: &vmm::cli::RunArgs, log: vmm::logging::LogHandle) -> ExitCode {
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let options = vmm::LaunchOptions {
        config,
        boot_now: args.boots_at_once(),
        api_sock: args.api_sock.clone(),
        id: args
            .id
            .clone()
            .unwrap_or_else(|| vmm::machine::DEFAULT_INSTANCE_ID.to_string()),
        log: Some(log),
        web_console: args.web_console,
        restore: args
            .restore
            .as_ref()
            .map(|state| vmm::persist::restore::RestoreRequest {
                state: state.clone(),
                mem: args.restore_mem.clone(),
                resume: true,
                track_dirty: args.track_dirty_pages,
            }),
    };
    match vmm::launch(options) {
        Ok(exit) => exit_status(&exit),
        Err(e) => {
            let code = if e.is_user_error() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
            fail(code, &e)
        }
    }
}

/// The process status for how the VM ended; a failure's reason goes to stderr.
fn exit_status(exit: &VmExit) -> ExitCode {
    tracing::info!(%exit, "VM stopped");
    let code = exit.exit_code();
    if code == EXIT_FAILURE {
        eprintln!("petrel: {exit}");
    }
    ExitCode::from(code)
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("petrel: error: {e}");
    ExitCode::from(code)
}
