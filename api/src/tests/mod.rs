//! Tests over real HTTP: a server on a temporary socket, and a thread standing in for the
//! VMM thread that records each request and answers with canned responses.

mod errors;
mod robustness;
mod routing;
mod web;

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::request::{ApiRequest, ApiResponse};
use crate::server::ApiServer;
use crate::types::InstanceInfo;
use crate::Client;

/// The canned answer of the fake VMM thread.
fn canned(req: &ApiRequest) -> ApiResponse {
    match req {
        ApiRequest::GetInstanceInfo => ApiResponse::Json(
            serde_json::to_value(InstanceInfo {
                id: "test".into(),
                state: "Not started".into(),
                vmm_version: "0.1.0".into(),
                app_name: "petrel".into(),
            })
            .unwrap(),
        ),
        ApiRequest::GetMetrics => ApiResponse::Text("petrel_up 1\n".into()),
        ApiRequest::GetMachineConfig | ApiRequest::GetVmConfig => {
            ApiResponse::Json(serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128}))
        }
        ApiRequest::PutLogger(_) => ApiResponse::error(400, "logger: not supported yet"),
        _ => ApiResponse::NoContent,
    }
}

/// A server plus a fake VMM thread. Drops in the right order.
pub struct Harness {
    pub server: Option<ApiServer>,
    pub client: Client,
    /// Every request the fake VMM thread received.
    pub seen: mpsc::Receiver<ApiRequest>,
    wake: EventFd,
    vmm: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        Self::with_web(None)
    }

    /// A harness whose server also serves the web console's listener `web`.
    pub fn with_web(web: Option<crate::WebListener>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (tx, rx) = mpsc::channel::<(ApiRequest, mpsc::Sender<ApiResponse>)>();
        let wake = EventFd::new(0).unwrap();
        let vmm_wake = wake.try_clone().unwrap();
        let (seen_tx, seen) = mpsc::channel();
        // The VMM thread's pattern: wait for the eventfd, then drain the channel.
        let vmm = std::thread::spawn(move || loop {
            vmm_wake.read().unwrap();
            loop {
                match rx.try_recv() {
                    Ok((req, reply)) => {
                        let _ = reply.send(canned(&req));
                        let _ = seen_tx.send(req);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
        });
        let server =
            ApiServer::start_with(Some(&path), web, tx, wake.try_clone().unwrap()).unwrap();
        Harness {
            client: Client::new(&path),
            server: Some(server),
            seen,
            wake,
            vmm: Some(vmm),
            _dir: dir,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.client.path()
    }

    /// The last request the fake VMM received.
    pub fn last_seen(&self) -> ApiRequest {
        self.seen.recv_timeout(Duration::from_secs(5)).unwrap()
    }

    /// Whether the fake VMM received nothing.
    pub fn nothing_seen(&self) -> bool {
        self.seen.try_recv().is_err()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.take();
        let _ = self.wake.write(1);
        if let Some(vmm) = self.vmm.take() {
            let _ = vmm.join();
        }
    }
}

/// The `fault_message` of an error body.
pub fn fault(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["fault_message"].as_str().unwrap().to_owned()
}
