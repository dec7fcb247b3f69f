//! `petrel ctl`: a client of a running petrel's API socket.
//!
//! A command maps to one API request ([`request()`]), the answer maps to what is printed and
//! the exit status ([`render`]); both are pure. [`run`] connects the two through
//! [`api::Client`]. `migrate send` and `migrate receive` then follow the migration by polling
//! `GET /migration` (`migrate.rs`).

mod args;
mod migrate;
mod output;
mod request;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

pub use args::{
    CtlArgs, CtlCommand, DriveCommand, InputCommand, MigrateCommand, NetCommand, RateSpec,
};
pub use output::{metrics_to_json, render, Output};
pub use request::{request, ApiCall};

/// Exit status when the API answers with an error, or the exchange fails half-way.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for bad input: an id, a path, a socket nobody listens on.
pub const EXIT_USAGE: u8 = 2;

/// Why a command could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No `--api-sock`.
    #[error("petrel ctl needs --api-sock PATH: the socket of `petrel run --api-sock PATH`")]
    NoSocket,
    /// `net set-rate` with neither direction.
    #[error("net set-rate {0}: give --rx SPEC, --tx SPEC or both")]
    NoDirection(String),
    /// An id the API would refuse, or that would change the request's path.
    #[error(
        "invalid {kind} id {id:?}: it must be 1 to {} characters of A-Z, a-z, 0-9, `_` and `-`",
        api::router::MAX_ID_LEN
    )]
    InvalidId { kind: &'static str, id: String },
    /// A relative path, and no current directory to resolve it against.
    #[error("cannot make {} absolute: the current directory cannot be read", .0.display())]
    NoCurrentDir(PathBuf),
    /// A path that JSON cannot carry.
    #[error("path {} is not valid UTF-8", .0.display())]
    NonUtf8Path(PathBuf),
    /// Nobody answers on the socket.
    #[error(
        "cannot connect to API socket {}: {} (is petrel running with --api-sock?)",
        .path.display(),
        os_message(.source)
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The exchange failed after connecting.
    #[error("{0}")]
    Client(#[source] api::ClientError),
}

impl CtlError {
    /// The exit status this error gives.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Client(_) => EXIT_FAILURE,
            _ => EXIT_USAGE,
        }
    }
}

impl From<api::ClientError> for CtlError {
    fn from(e: api::ClientError) -> Self {
        match e {
            api::ClientError::Connect(path, source) => CtlError::Connect { path, source },
            other => CtlError::Client(other),
        }
    }
}

/// An OS error's text without the ` (os error N)` suffix.
fn os_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" (os error ") {
        Some((message, _)) => message.to_owned(),
        None => text,
    }
}

/// Runs `petrel ctl`: sends the command's request, prints the answer and returns the exit
/// status (0; 1 for an error answer; 2 for bad input or no server on the socket).
pub fn run(args: &CtlArgs) -> ExitCode {
    let out = match exchange(args) {
        Ok(out) => out,
        Err(e) => {
            let message = e.to_string();
            let body = serde_json::json!({ "fault_message": message }).to_string();
            Output {
                code: e.exit_code(),
                ..Output::failure(&message, args.json, body)
            }
        }
    };
    // A closed stdout or stderr (`petrel ctl ... | head -0`) is not worth a panic.
    let _ = io::stdout().lock().write_all(out.stdout.as_bytes());
    let _ = io::stderr().lock().write_all(out.stderr.as_bytes());
    ExitCode::from(out.code)
}

fn exchange(args: &CtlArgs) -> Result<Output, CtlError> {
    let sock = args.api_sock.as_ref().ok_or(CtlError::NoSocket)?;
    let cwd = std::env::current_dir().ok();
    let call = request(&args.command, cwd.as_deref())?;
    let client = api::Client::new(sock);
    if let CtlCommand::Screenshot { file } = &args.command {
        return screenshot(&client, &call.path, file, args);
    }
    let (status, body) = client.request(call.method, &call.path, call.body)?;
    if let CtlCommand::Migrate(migrate) = &args.command {
        if (200..300).contains(&status) && migrate.follows() {
            return Ok(migrate::follow(&client, migrate, args.json));
        }
    }
    Ok(render(&args.command, status, &body, args.json))
}

/// `petrel ctl screenshot FILE`: the PNG goes to `FILE`; an error answer is rendered as any
/// other command's.
fn screenshot(
    client: &api::Client,
    path: &str,
    file: &std::path::Path,
    args: &CtlArgs,
) -> Result<Output, CtlError> {
    let response = client.get_bytes(path)?;
    if response.status != 200 {
        return Ok(render(
            &args.command,
            response.status,
            &response.text(),
            args.json,
        ));
    }
    if let Err(e) = std::fs::write(file, &response.body) {
        let message = format!("cannot write {}: {}", file.display(), os_message(&e));
        let body = serde_json::json!({ "fault_message": message }).to_string();
        return Ok(Output::failure(&message, args.json, body));
    }
    let generation = response.header(api::image::GENERATION_HEADER).unwrap_or("");
    let body = serde_json::json!({
        "file": file.display().to_string(),
        "bytes": response.body.len(),
        "generation": generation,
    });
    Ok(render(&args.command, 200, &body.to_string(), args.json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_name_the_socket_and_suggest_the_flag() {
        let e = CtlError::from(api::ClientError::Connect(
            "/run/p.sock".into(),
            io::Error::from_raw_os_error(libc::ENOENT),
        ));
        assert_eq!(
            e.to_string(),
            "cannot connect to API socket /run/p.sock: No such file or directory \
             (is petrel running with --api-sock?)"
        );
        assert_eq!(e.exit_code(), EXIT_USAGE);
    }

    #[test]
    fn other_client_errors_are_failures() {
        let e = CtlError::from(api::ClientError::InvalidRequest("x".into()));
        assert!(matches!(e, CtlError::Client(_)));
        assert_eq!(e.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn os_message_drops_the_errno() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(os_message(&e), "Connection refused");
        let e = io::Error::other("plain");
        assert_eq!(os_message(&e), "plain");
    }
}
