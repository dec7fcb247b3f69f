//! Live migration: a running machine moves to another petrel process, over the `migration`
//! crate's wire protocol (see its documentation for the message order).
//!
//! - [`send`]: the source. A thread of its own connects, shakes hands and sends memory in
//!   pre-copy rounds while the guest runs, logging the pages it dirties; once the last
//!   round's pages would fit the allowed pause, it hands the connection to the VMM thread,
//!   which pauses the machine, sends the last pages and the machine's state, and waits for
//!   the destination to say it runs. Any failure resumes the machine here.
//! - [`receive`]: the destination. A thread listens, checks the source's machine against
//!   this one's configuration before any memory moves, receives memory straight into the new
//!   guest RAM, builds the machine from the state, and hands it to the VMM thread to run.
//! - [`compat`]: what the two sides compare.
//!
//! `GET /migration` reports either side's [`Progress`].

pub mod compat;
pub mod finish;
mod link;
pub mod progress;
pub mod receive;
pub mod send;
mod throttle;

use api::{ApiRequest, ApiResponse};

use crate::control::state::{allowed_states, Lifecycle};

pub use finish::finish;
pub use progress::Progress;

/// A migration this petrel sends or receives, or the last one.
pub struct Migration {
    pub progress: Progress,
    pub role: Role,
}

/// Which side this petrel is on.
pub enum Role {
    Send(send::Outgoing),
    Receive(receive::Incoming),
}

impl Migration {
    /// `Err` with a 400 when `request` cannot be carried out while this migration is under
    /// way: on the source, anything that changes the machine whose state is being sent; on
    /// the destination, anything that configures or starts the machine being received.
    pub fn check(&self, request: &ApiRequest) -> Result<(), ApiResponse> {
        if !self.progress.is_active() {
            return Ok(());
        }
        use ApiRequest as R;
        let (refused, side) = match self.role {
            Role::Send(_) => (
                matches!(
                    request,
                    R::PatchVm(_)
                        | R::CreateSnapshot(_)
                        | R::MigrationSend(_)
                        | R::PatchDrive(_)
                        | R::PatchNetworkInterface(_)
                ),
                "sent",
            ),
            Role::Receive(_) => (
                allowed_states(request) == [Lifecycle::NotStarted]
                    || matches!(request, R::PatchDrive(_) | R::PatchNetworkInterface(_)),
                "received",
            ),
        };
        if refused {
            return Err(ApiResponse::bad_request(format!(
                "{} is not allowed while the VM is being {side} by live migration (GET /migration shows how far it is)",
                request.name()
            )));
        }
        Ok(())
    }
}

/// What the source's `State` message carries: the machine, and the times that let the
/// destination report the whole migration's figures (the source exits once it is done).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalState {
    /// How long the source had been paused when it sent this, in milliseconds.
    pub paused_ms: f64,
    /// How long the migration had run on the source, in milliseconds.
    pub elapsed_ms: f64,
    /// The devices, vCPUs and VM.
    pub machine: crate::persist::create::Captured,
}

/// The reason in an error reply, for a migration's error message.
fn reason(response: ApiResponse) -> String {
    match response {
        ApiResponse::Error { fault_message, .. } => fault_message,
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::types::ActionType;

    fn message(r: Result<(), ApiResponse>) -> String {
        match r {
            Err(ApiResponse::Error { fault_message, .. }) => fault_message,
            Ok(()) => "allowed".into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_receiving_petrel_refuses_configuration_and_start_and_a_finished_one_allows_them() {
        let (_tx, arrival) = std::sync::mpsc::channel();
        let m = Migration {
            progress: Progress::new("receive", progress::LISTENING, "unix:/m".into()),
            role: Role::Receive(receive::Incoming::for_test(arrival)),
        };
        let start = ApiRequest::Action(ActionType::InstanceStart);
        assert_eq!(
            message(m.check(&start)),
            "PUT /actions InstanceStart is not allowed while the VM is being received by live migration (GET /migration shows how far it is)"
        );
        let put = ApiRequest::PutMachineConfig(Default::default());
        assert!(message(m.check(&put)).contains("being received"));
        assert_eq!(message(m.check(&ApiRequest::GetMigration)), "allowed");
        assert_eq!(
            message(m.check(&ApiRequest::Action(ActionType::Kill))),
            "allowed"
        );
        m.progress.fail("gone".into());
        assert_eq!(message(m.check(&start)), "allowed");
    }
}
