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
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap formats them; a bad flag is one line.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            return fail(EXIT_USAGE, &first.trim_start_matches("error: "));
        }
    };
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Ctl(args) => vmm::ctl::run(&args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PETREL_LOG")
        // virtio-queue logs malformed rings through `log` at error level; the guest
        // controls those, so by default they stay off (petrel counts and logs them itself,
        // rate-limited).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,virtio_queue=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(args: &vmm::cli::RunArgs) -> ExitCode {
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
        log: None,
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
