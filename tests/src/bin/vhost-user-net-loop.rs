//! `vhost-user-net-loop --socket PATH [--mac MAC] [--backlog N] [--no-event-idx]`: a
//! vhost-user-net back end that sends every transmitted frame back to the guest (see
//! `tests::vhost_user_net_loop`). It serves front ends one after another until SIGINT or
//! SIGTERM, then prints its counters and removes the socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tests::vhost_user_net_loop::{parse_mac, Counters, LoopConfig, LoopServer};

const USAGE: &str =
    "usage: vhost-user-net-loop --socket PATH [--mac MAC] [--backlog N] [--no-event-idx]";

fn parse_args() -> Result<(PathBuf, LoopConfig), String> {
    let mut socket = None;
    let mut config = LoopConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--mac" => {
                let v = value()?;
                config.mac = parse_mac(&v).ok_or(format!("bad MAC {v:?}"))?;
            }
            "--backlog" => {
                let v = value()?;
                config.backlog = v.parse().map_err(|_| format!("bad backlog {v:?}"))?;
            }
            "--no-event-idx" => config.event_idx = false,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok((socket.ok_or("--socket is required")?, config))
}

/// Blocks SIGINT and SIGTERM in every thread (call before starting any) and returns the set.
fn block_exit_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned here; these calls only write to it and to this
    // thread's signal mask, which threads started later inherit.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Waits for SIGINT/SIGTERM, then prints the counters, removes the socket and exits.
fn exit_on_signal(set: libc::sigset_t, counters: Arc<Counters>, socket: PathBuf) {
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` and `sig` are valid for the call; the signals are blocked in every
        // thread, so sigwait is the only one to take them.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("vhost-user-net-loop: exiting: {counters}");
        let _ = std::fs::remove_file(&socket);
        std::process::exit(0);
    });
}

fn main() -> ExitCode {
    let (socket, config) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vhost-user-net-loop: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let signals = block_exit_signals();
    let mut server = match LoopServer::bind(&socket, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vhost-user-net-loop: {}: {e}", socket.display());
            return ExitCode::FAILURE;
        }
    };
    let counters = server.counters();
    exit_on_signal(signals, counters.clone(), socket.clone());
    eprintln!("vhost-user-net-loop: listening on {}", socket.display());
    let e = server.serve(|end| match end {
        Ok(()) => eprintln!("vhost-user-net-loop: front end disconnected: {counters}"),
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|c| c.to_string());
            let cause = cause.unwrap_or_default();
            eprintln!("vhost-user-net-loop: {e} ({cause}): {counters}");
        }
    });
    eprintln!("vhost-user-net-loop: {e}: {counters}");
    ExitCode::FAILURE
}
