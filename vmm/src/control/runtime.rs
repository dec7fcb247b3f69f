//! Requests on a started VM: pause and resume, keys for the guest, and runtime changes to
//! devices (a drive's backing file, rate limits). Everything here runs on the VMM thread.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api::image::RawImage;
use api::types::{DrivePatch, NetworkInterfacePatch, SerialLog};
use api::ApiResponse;
use devices::legacy::{Rtc, Serial, SharedSerialLog, I8042};
use devices::virtio::block::{Block, BlockError};
use devices::virtio::gpu::{Frame, Gpu};
use devices::virtio::net::Net;
use devices::virtio::vhost_user::VhostUserGpu;
use devices::ExitSignal;
use kvm_ioctls::VmFd;
use memory::{GuestMemoryMmap, MemoryLayout};

use super::configure::{self, no_such};
use super::state::Lifecycle;
use crate::config::VmConfig;
use crate::device_manager::ged::GedHandle;
use crate::device_manager::virtio::VirtioHandle;
use crate::persist::SnapshotBook;
use crate::vstate::pause::PauseGate;
use crate::vstate::vcpu::{ExitCounters, VcpuHandle};
use crate::vstate::vcpu_state::VcpuState;

/// How long a pause waits for the vCPUs to leave `KVM_RUN`.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why disk locks could not be taken back.
#[derive(Debug)]
pub struct DiskLockError {
    /// Another process holds at least one of the images.
    pub held_elsewhere: bool,
    /// Which disks failed, and why.
    pub message: String,
}

fn disk_errors<E: std::fmt::Display>(failed: &[(String, E)]) -> String {
    failed
        .iter()
        .map(|(id, e)| format!("disk {id}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the control handler holds of a started machine: shared handles, never the
/// machine itself.
pub struct Runtime {
    pub pause: Arc<PauseGate>,
    pub vcpus: Arc<Mutex<Vec<VcpuHandle>>>,
    pub exits: Arc<[ExitCounters]>,
    /// The virtio devices, in the order the guest sees them.
    pub virtio: Vec<VirtioHandle>,
    /// The power button's Generic Event Device (with ACPI).
    pub ged: Option<GedHandle>,
    pub i8042: Arc<Mutex<I8042>>,
    pub rtc: Arc<Mutex<Rtc>>,
    /// COM1 and what the guest wrote to it.
    pub serial: Arc<Mutex<Serial>>,
    pub serial_log: SharedSerialLog,
    pub exit: Arc<ExitSignal>,
    pub started: Instant,
    /// The KVM VM and the guest's memory, for snapshots.
    pub vm: Arc<VmFd>,
    pub memory: GuestMemoryMmap,
    pub layout: MemoryLayout,
    /// Whether KVM logs the guest's writes (Diff snapshots).
    pub track_dirty: bool,
    /// What the machine remembers between snapshots.
    pub book: Mutex<SnapshotBook>,
}

impl Runtime {
    /// Running, Paused, or Stopped once an exit is signalled.
    pub fn state(&self) -> Lifecycle {
        if self.exit.reason().is_some() {
            Lifecycle::Stopped
        } else if self.pause.is_paused() {
            Lifecycle::Paused
        } else {
            Lifecycle::Running
        }
    }

    /// Stops every vCPU; returns once none is in `KVM_RUN`.
    pub fn pause(&self) -> Result<(), ApiResponse> {
        if self.pause.is_paused() {
            return Ok(());
        }
        self.pause.request();
        let vcpus = lock(&self.vcpus);
        for vcpu in vcpus.iter() {
            vcpu.kick();
        }
        let running = || vcpus.iter().filter(|v| !v.is_finished()).count();
        if self.pause.wait_parked(running, PAUSE_TIMEOUT) {
            Ok(())
        } else {
            self.pause.release();
            Err(ApiResponse::error(
                500,
                format!(
                    "the vCPUs did not stop within {} ms; the VM keeps running",
                    PAUSE_TIMEOUT.as_millis()
                ),
            ))
        }
    }

    /// What the machine remembers between snapshots.
    pub fn book(&self) -> MutexGuard<'_, SnapshotBook> {
        lock(&self.book)
    }

    /// Every vCPU's state, by id. The VM must be paused.
    pub fn save_vcpus(&self) -> Result<Vec<VcpuState>, ApiResponse> {
        let vcpus = lock(&self.vcpus);
        if vcpus.iter().any(VcpuHandle::is_finished) {
            return Err(ApiResponse::error(
                500,
                "a vCPU thread has ended: the VM cannot be saved",
            ));
        }
        vcpus
            .iter()
            .map(|v| {
                v.save_state()
                    .map_err(|e| ApiResponse::error(500, format!("cannot save a vCPU: {e}")))
            })
            .collect()
    }

    /// Lets the vCPUs run again, after the devices start what a save stopped.
    pub fn resume(&self) {
        crate::device_manager::virtio::resume(&self.virtio);
        self.pause.release();
    }

    /// The pages written since the last call, as one RAM-order page set: by the guest
    /// (KVM's dirty log), by petrel, and by vhost-user back ends (their shared logs).
    pub fn take_dirty(&self) -> Result<Vec<u64>, crate::vstate::vm::VmError> {
        let mut set = crate::vstate::vm::take_dirty(&self.vm, &self.memory)?;
        crate::device_manager::virtio::take_dirty(&self.virtio, &mut set);
        Ok(set)
    }

    /// Presses Ctrl+Alt+Del on the i8042 keyboard.
    pub fn ctrl_alt_del(&self) -> Result<(), ApiResponse> {
        lock(&self.i8042)
            .trigger_ctrl_alt_del()
            .map_err(|e| ApiResponse::bad_request(format!("cannot send Ctrl+Alt+Del: {e}")))
    }

    /// Presses the ACPI power button. `acpi` is whether the machine has ACPI, to say why
    /// there is no button when there is none.
    pub fn power_button(&self, acpi: bool) -> Result<(), ApiResponse> {
        let Some(ged) = &self.ged else {
            let why = match acpi {
                false => "the VM runs without ACPI (--acpi off, machine.acpi false), so it has no power button",
                true => "the VM was restored from a snapshot of a petrel without the ACPI power button's event device",
            };
            return Err(ApiResponse::bad_request(format!(
                "PUT /actions PowerButton: {why}; SendCtrlAltDel asks the guest to shut down through the i8042 instead"
            )));
        };
        lock(&ged.device)
            .press_power_button()
            .map_err(|e| ApiResponse::error(500, format!("PUT /actions PowerButton: {e}")))
    }

    /// Runs `f` on the virtio device `id` if it is a `T`.
    pub(super) fn with_device<T: 'static, R>(
        &self,
        kind: &str,
        id: &str,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, ApiResponse> {
        let transport = self
            .virtio
            .iter()
            .find(|h| h.id == id)
            .map(|h| &h.transport)
            .ok_or_else(|| no_such(kind, id))?;
        let mut transport = lock(transport);
        let device = transport
            .device_mut()
            .as_any_mut()
            .downcast_mut::<T>()
            .ok_or_else(|| no_such(kind, id))?;
        Ok(f(device))
    }

    /// Runs `f` on every disk; the error names the disks it failed on.
    fn each_disk<E: std::fmt::Display>(
        &self,
        mut f: impl FnMut(&Block) -> Result<(), E>,
    ) -> Result<(), Vec<(String, E)>> {
        let mut failed = Vec::new();
        for handle in &self.virtio {
            let transport = lock(&handle.transport);
            if let Some(disk) = transport.device().as_any().downcast_ref::<Block>() {
                if let Err(e) = f(disk) {
                    failed.push((handle.id.clone(), e));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Gives up every disk image's lock: live migration hands the images to the
    /// destination in its final phase, with the VM paused.
    pub fn release_disk_locks(&self) -> Result<(), String> {
        self.each_disk(Block::release_image_lock)
            .map_err(|failed| disk_errors(&failed))
    }

    /// Takes every disk image's lock back (a migration that failed).
    pub fn take_disk_locks(&self) -> Result<(), DiskLockError> {
        self.each_disk(Block::take_image_lock)
            .map_err(|failed| DiskLockError {
                held_elsewhere: failed
                    .iter()
                    .any(|(_, e)| matches!(e, BlockError::Locked { .. })),
                message: disk_errors(&failed),
            })
    }

    /// `GET /display/screenshot`: a copy of the GPU's front buffer (built in, or what its
    /// vhost-user back end sent), for the API thread to encode. A 400 when the VM has no GPU
    /// or the guest has set no scanout yet.
    pub fn screenshot(&self) -> ApiResponse {
        let frame = self
            .virtio
            .iter()
            .find_map(|h| gpu_frame(lock(&h.transport).device().as_any()));
        let Some(frame) = frame else {
            return ApiResponse::bad_request(
                "GET /display/screenshot: the VM has no GPU (start petrel with --gpu)",
            );
        };
        match frame {
            Some(f) => ApiResponse::Image(RawImage {
                width: f.width,
                height: f.height,
                rgba: f.rgba,
                generation: f.generation,
            }),
            None => ApiResponse::bad_request(
                "GET /display/screenshot: the guest has not set a scanout yet: nothing is on the screen",
            ),
        }
    }

    /// `PATCH /drives/{id}` on a running disk: a new backing file (the guest sees the new
    /// size through a config change), then the new rate limit. A new file that cannot be
    /// used leaves the disk as it was.
    pub fn patch_drive(&self, config: &mut VmConfig, patch: DrivePatch) -> Result<(), ApiResponse> {
        let limiter = configure::rate_limit("rate_limiter", patch.rate_limiter)?;
        let id = patch.drive_id.as_str();
        self.with_device::<Block, _>("drive", id, |disk| {
            if let Some(path) = &patch.path_on_host {
                disk.update_backing(std::path::Path::new(path))
                    .map_err(|e| ApiResponse::bad_request(format!("path_on_host: {e}")))?;
            }
            if let Some(l) = limiter {
                disk.update_rate_limiter(l);
            }
            // The device's configuration is the truth now; the VM's follows it.
            if let Some(entry) = config.disks.iter_mut().find(|d| d.id == id) {
                *entry = disk.config().clone();
            }
            Ok(())
        })?
    }

    /// `PATCH /network-interfaces/{id}` on a running interface: new rate limits.
    pub fn patch_net(
        &self,
        config: &mut VmConfig,
        patch: NetworkInterfacePatch,
    ) -> Result<(), ApiResponse> {
        let rx = configure::rate_limit("rx_rate_limiter", patch.rx_rate_limiter)?;
        let tx = configure::rate_limit("tx_rate_limiter", patch.tx_rate_limiter)?;
        let id = patch.iface_id.as_str();
        self.with_device::<Net, _>("network interface", id, |net| {
            let current = net.config().clone();
            net.update_rate_limiters(
                rx.or(current.rx_rate_limiter).unwrap_or_default(),
                tx.or(current.tx_rate_limiter).unwrap_or_default(),
            );
            if let Some(entry) = config.nets.iter_mut().find(|n| n.id == id) {
                *entry = net.config().clone();
            }
        })
    }

    /// `GET /serial`: the logged output from `from` on.
    pub fn serial_log(&self, from: u64) -> SerialLog {
        let (from, next, data) = lock(&self.serial_log).read_from(from).into_text();
        SerialLog { from, next, data }
    }

    /// `PUT /serial`: puts `data` into COM1's receive FIFO, all of it or none.
    pub fn serial_input(&self, data: &[u8]) -> Result<(), ApiResponse> {
        let mut serial = lock(&self.serial);
        let room = serial.fifo_capacity_left();
        if data.len() > room {
            return Err(ApiResponse::bad_request(format!(
                "PUT /serial: the serial receive FIFO has room for {room} of the {} bytes (the guest has not read what came before); nothing was sent",
                data.len()
            )));
        }
        match serial.enqueue_input(data) {
            n if n == data.len() => Ok(()),
            0 => Err(ApiResponse::bad_request(
                "PUT /serial: the guest has the UART in loopback mode; nothing was sent",
            )),
            n => Err(ApiResponse::error(
                500,
                format!("PUT /serial: only {n} of {} bytes were queued", data.len()),
            )),
        }
    }
}

/// The picture of `device` if it is a GPU (None inside: no scanout yet); None if it is not.
fn gpu_frame(device: &dyn std::any::Any) -> Option<Option<Frame>> {
    if let Some(gpu) = device.downcast_ref::<Gpu>() {
        return Some(gpu.frame());
    }
    device
        .downcast_ref::<VhostUserGpu>()
        .map(VhostUserGpu::frame)
}
