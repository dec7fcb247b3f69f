//! The VM's lifecycle as the API sees it, and which requests each state allows
//! (ARCHITECTURE.md, "Lifecycle"): `Not started → Running ⇄ Paused → Stopped`.

use std::fmt;

use api::types::ActionType;
use api::{ApiRequest, ApiResponse};

/// Where the VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Being configured; no guest exists yet.
    NotStarted,
    /// The vCPUs run.
    Running,
    /// Every vCPU is out of `KVM_RUN` and waits.
    Paused,
    /// The guest ended; petrel is tearing down.
    Stopped,
}

impl Lifecycle {
    /// The name the API reports (Firecracker's spelling for the states both have).
    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::NotStarted => "Not started",
            Lifecycle::Running => "Running",
            Lifecycle::Paused => "Paused",
            Lifecycle::Stopped => "Stopped",
        }
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

use Lifecycle::{NotStarted, Paused, Running, Stopped};

const ANY: &[Lifecycle] = &[NotStarted, Running, Paused, Stopped];
const BEFORE_START: &[Lifecycle] = &[NotStarted];
const STARTED: &[Lifecycle] = &[Running, Paused];
const ALIVE: &[Lifecycle] = &[NotStarted, Running, Paused];

/// The states in which `request` may be carried out.
pub fn allowed_states(request: &ApiRequest) -> &'static [Lifecycle] {
    use ApiRequest as R;
    match request {
        R::GetInstanceInfo | R::GetVmConfig | R::GetMachineConfig | R::GetMetrics => ANY,
        R::PutMetrics(_) | R::PutLogger(_) => ALIVE,
        R::PutBootSource(_)
        | R::PutMachineConfig(_)
        | R::PatchMachineConfig(_)
        | R::PutDrive(_)
        | R::PutNetworkInterface(_)
        | R::PutConsole(_)
        | R::PutVhostUserBlk(_)
        | R::PutVhostUserNet(_)
        | R::PutVhostUserFs(_)
        | R::PutVsock(_)
        | R::PutNuma(_)
        | R::LoadSnapshot(_) => BEFORE_START,
        R::PatchDrive(_) | R::PatchNetworkInterface(_) => ALIVE,
        R::PatchVm(_) => STARTED,
        R::PutInput(..) => STARTED,
        R::GetSerial { .. } => ANY,
        R::PutSerial(_) => STARTED,
        R::CreateSnapshot(_) => &[Paused],
        R::MigrationSend(_) => STARTED,
        R::MigrationReceive(_) => BEFORE_START,
        R::GetMigration => ANY,
        R::GetScreenshot => STARTED,
        R::Action(action) => match action {
            ActionType::InstanceStart => BEFORE_START,
            ActionType::SendCtrlAltDel | ActionType::Shutdown | ActionType::PowerButton => {
                &[Running]
            }
            ActionType::FlushMetrics | ActionType::Kill => ALIVE,
        },
    }
}

/// `Err` with a 400 that names the request and the current state when `state` does not
/// allow `request`.
pub fn check(request: &ApiRequest, state: Lifecycle) -> Result<(), ApiResponse> {
    let allowed = allowed_states(request);
    if allowed.contains(&state) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|s| s.name()).collect();
    Err(ApiResponse::bad_request(format!(
        "{} is not allowed while the VM is {state}; it is allowed when the VM is {}",
        request.name(),
        names.join(" or ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::types::{BootSource, VmState};

    fn message(r: Result<(), ApiResponse>) -> String {
        match r {
            Err(ApiResponse::Error {
                status: 400,
                fault_message,
            }) => fault_message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn configuration_only_before_start() {
        let put = ApiRequest::PutBootSource(BootSource::default());
        assert_eq!(check(&put, NotStarted), Ok(()));
        let msg = message(check(&put, Running));
        assert_eq!(
            msg,
            "PUT /boot-source is not allowed while the VM is Running; it is allowed when the VM is Not started"
        );
    }

    #[test]
    fn pause_needs_a_started_vm_and_stopped_allows_only_reads() {
        let pause = ApiRequest::PatchVm(VmState::Paused);
        assert!(message(check(&pause, NotStarted)).contains("while the VM is Not started"));
        assert_eq!(check(&pause, Paused), Ok(()));
        assert!(check(&pause, Stopped).is_err());
        assert_eq!(check(&ApiRequest::GetInstanceInfo, Stopped), Ok(()));
        let start = ApiRequest::Action(ActionType::InstanceStart);
        assert!(message(check(&start, Running)).starts_with("PUT /actions InstanceStart"));
        assert!(check(&ApiRequest::Action(ActionType::Kill), Stopped).is_err());
    }

    #[test]
    fn the_power_button_is_pressed_only_on_a_running_vm() {
        let press = ApiRequest::Action(ActionType::PowerButton);
        assert_eq!(check(&press, Running), Ok(()));
        assert_eq!(
            message(check(&press, NotStarted)),
            "PUT /actions PowerButton is not allowed while the VM is Not started; it is allowed when the VM is Running"
        );
        assert!(check(&press, Paused).is_err());
        assert!(check(&press, Stopped).is_err());
    }

    #[test]
    fn input_events_need_a_started_vm() {
        let put =
            ApiRequest::PutInput("kbd".into(), api::types::InputEvents { events: Vec::new() });
        assert_eq!(check(&put, Running), Ok(()));
        assert_eq!(check(&put, Paused), Ok(()));
        assert_eq!(
            message(check(&put, NotStarted)),
            "PUT /input is not allowed while the VM is Not started; it is allowed when the VM is Running or Paused"
        );
        assert!(check(&put, Stopped).is_err());
    }
}
