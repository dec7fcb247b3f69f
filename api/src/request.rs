//! What the API thread hands to the VMM thread, and what comes back.
//!
//! The API thread parses and validates a request into an [`ApiRequest`] and sends it with a
//! fresh reply channel; the VMM thread carries it out and answers with an [`ApiResponse`].

use crate::image::RawImage;
use crate::types::InputEvents;
use crate::types::SerialInput;
use crate::types::{
    ActionType, BootSource, Console, Drive, DrivePatch, Logger, MachineConfig, MachineConfigPatch,
    Metrics, MigrationReceiveParams, MigrationSendParams, NetworkInterface, NetworkInterfacePatch,
    NumaConfig, SnapshotCreateParams, SnapshotLoadParams, VhostUserBlk, VhostUserFs, VhostUserNet,
    VmState, Vsock,
};

/// A validated request for the VMM thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /`: reply `Json(InstanceInfo)`.
    GetInstanceInfo,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `GET /machine-config`: reply `Json(MachineConfig)`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /drives/{drive_id}`; the id equals the path's.
    PutDrive(Drive),
    /// `PATCH /drives/{drive_id}`.
    PatchDrive(DrivePatch),
    /// `PUT /network-interfaces/{iface_id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{iface_id}`.
    PatchNetworkInterface(NetworkInterfacePatch),
    /// `PUT /consoles/{id}` (petrel's).
    PutConsole(Console),
    /// `PUT /vhost-user-blk/{id}` (petrel's).
    PutVhostUserBlk(VhostUserBlk),
    /// `PUT /vhost-user-net/{id}` (petrel's).
    PutVhostUserNet(VhostUserNet),
    /// `PUT /vhost-user-fs/{id}` (petrel's).
    PutVhostUserFs(VhostUserFs),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /numa` (petrel's).
    PutNuma(NumaConfig),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    PatchVm(VmState),
    /// `GET /vm/config`: reply `Json` of the whole configuration.
    GetVmConfig,
    /// `GET /metrics` (petrel's): reply `Text` in Prometheus format.
    GetMetrics,
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
    /// `PUT /migration/send` (petrel's).
    MigrationSend(MigrationSendParams),
    /// `PUT /migration/receive` (petrel's).
    MigrationReceive(MigrationReceiveParams),
    /// `GET /migration` (petrel's): reply `Json(MigrationInfo)`.
    GetMigration,
    /// `PUT /input/{id}` (petrel's): the device id and its events.
    PutInput(String, InputEvents),
    /// `GET /display/screenshot` (petrel's): reply `Image` of the GPU's scanout.
    GetScreenshot,
    /// `GET /serial?from=N` (petrel's): reply `Json(SerialLog)`.
    GetSerial {
        /// Absolute byte offset to read from.
        from: u64,
    },
    /// `PUT /serial` (petrel's): 1 to 64 bytes for the serial input.
    PutSerial(SerialInput),
}

impl ApiRequest {
    /// The route and, for actions and `PATCH /vm`, the variant: for messages that name a
    /// request (`PUT /boot-source`, `PUT /actions InstanceStart`).
    pub fn name(&self) -> String {
        use ApiRequest as R;
        let route = match self {
            R::GetInstanceInfo => "GET /",
            R::PutBootSource(_) => "PUT /boot-source",
            R::GetMachineConfig => "GET /machine-config",
            R::PutMachineConfig(_) => "PUT /machine-config",
            R::PatchMachineConfig(_) => "PATCH /machine-config",
            R::PutDrive(_) => "PUT /drives",
            R::PatchDrive(_) => "PATCH /drives",
            R::PutNetworkInterface(_) => "PUT /network-interfaces",
            R::PatchNetworkInterface(_) => "PATCH /network-interfaces",
            R::PutConsole(_) => "PUT /consoles",
            R::PutVhostUserBlk(_) => "PUT /vhost-user-blk",
            R::PutVhostUserNet(_) => "PUT /vhost-user-net",
            R::PutVhostUserFs(_) => "PUT /vhost-user-fs",
            R::PutVsock(_) => "PUT /vsock",
            R::PutNuma(_) => "PUT /numa",
            R::Action(a) => return format!("PUT /actions {a:?}"),
            R::PatchVm(s) => return format!("PATCH /vm {s:?}"),
            R::GetVmConfig => "GET /vm/config",
            R::GetMetrics => "GET /metrics",
            R::PutMetrics(_) => "PUT /metrics",
            R::PutLogger(_) => "PUT /logger",
            R::CreateSnapshot(_) => "PUT /snapshot/create",
            R::LoadSnapshot(_) => "PUT /snapshot/load",
            R::MigrationSend(_) => "PUT /migration/send",
            R::MigrationReceive(_) => "PUT /migration/receive",
            R::GetMigration => "GET /migration",
            R::PutInput(..) => "PUT /input",
            R::GetScreenshot => "GET /display/screenshot",
            R::GetSerial { .. } => "GET /serial",
            R::PutSerial(_) => "PUT /serial",
        };
        route.to_string()
    }
}

/// Every status an [`ApiResponse::Error`] goes out with: 400 (bad request or state), 404 (no
/// such route), 405 (method not allowed), 408 (body too slow), 413 (body too large), 500
/// (petrel failed) and 503 (VMM thread gone). Any other status is sent as 500. The OpenAPI
/// document lists each of them for every operation.
pub const ERROR_STATUSES: &[u16] = &[400, 404, 405, 408, 413, 500, 503];

/// The VMM thread's answer to an [`ApiRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum ApiResponse {
    /// 204 with no body.
    NoContent,
    /// 200 with a JSON body.
    Json(serde_json::Value),
    /// 200 with a `text/plain; version=0.0.4` body (Prometheus exposition format).
    Text(String),
    /// A copy of the screen, which the API thread encodes and sends as a 200 `Binary`
    /// PNG with the `x-petrel-generation` header.
    Image(RawImage),
    /// 200 with a binary body of `content_type`, and extra response headers.
    Binary {
        /// The `Content-Type` header.
        content_type: &'static str,
        /// The body.
        body: Vec<u8>,
        /// More headers, name (lower case) and value.
        headers: Vec<(&'static str, String)>,
    },
    /// 304 Not Modified for a conditional request (the client has this screenshot already),
    /// with these headers and no body.
    NotModified {
        /// Headers, name (lower case) and value.
        headers: Vec<(&'static str, String)>,
    },
    /// An error: `status` (one of [`ERROR_STATUSES`]) with `{"fault_message": ...}`.
    Error {
        /// HTTP status code.
        status: u16,
        /// What went wrong, naming the field or state at fault.
        fault_message: String,
    },
}

impl ApiResponse {
    /// A 400 reply.
    pub fn bad_request(fault_message: impl Into<String>) -> Self {
        Self::error(400, fault_message)
    }

    /// A 200 reply with `value` as JSON (a 500 if it cannot be serialized).
    pub fn json<T: serde::Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => ApiResponse::Json(v),
            Err(e) => Self::error(500, format!("cannot serialize the reply: {e}")),
        }
    }

    /// An error reply.
    pub fn error(status: u16, fault_message: impl Into<String>) -> Self {
        ApiResponse::Error {
            status,
            fault_message: fault_message.into(),
        }
    }
}
