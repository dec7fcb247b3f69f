//! `PUT /snapshot/load` and `petrel run --restore`: a machine from a state file and its
//! memory file (or chain of layers).
//!
//! Everything is checked before anything is built: the state file's format, version and
//! checksum, the memory chain's headers and sizes, and that the memory is the one the state
//! was taken with. The base memory file is mapped `MAP_PRIVATE` (no copy: pages load on
//! first touch, and the guest's writes never reach the file); the pages of incremental
//! layers are then copied over it.

use std::path::PathBuf;
use std::time::Instant;

use api::types::SnapshotLoadParams;
use api::ApiResponse;
use kvm_ioctls::VmFd;
use snapshot::hex;

use super::{MachineState, Saved, SnapshotBook};
use crate::builder::{assemble, BuildError, Parts};
use crate::config::VmConfig;
use crate::device_manager::DeviceManager;
use crate::machine::Machine;
use crate::vstate::vcpu::{self, Vcpu};
use crate::vstate::vm;
use crate::vstate::vm_state::restore_vm_state;

/// What to restore, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The state file.
    pub state: PathBuf,
    /// The memory file or top layer; the one the state names when `None`.
    pub mem: Option<PathBuf>,
    /// Run the vCPUs at once; otherwise the machine starts Paused.
    pub resume: bool,
    /// Log dirty pages from now on (for Diff snapshots of the restored machine).
    pub track_dirty: bool,
}

fn bad(message: impl Into<String>) -> ApiResponse {
    ApiResponse::bad_request(message)
}

impl RestoreRequest {
    /// The request `PUT /snapshot/load` describes.
    pub fn from_api(params: &SnapshotLoadParams) -> Result<Self, ApiResponse> {
        if params.snapshot_path.is_empty() {
            return Err(bad("snapshot_path: empty path"));
        }
        let mem = match (&params.mem_backend, &params.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "mem_backend and mem_file_path both given: use mem_backend only",
                ))
            }
            (Some(backend), None) if backend.backend_type == "File" => {
                Some(&backend.backend_path)
            }
            (Some(backend), None) => {
                return Err(bad(format!(
                    "mem_backend.backend_type: {:?} is not supported: petrel loads guest memory from a File",
                    backend.backend_type
                )))
            }
            (None, path) => path.as_ref(),
        };
        if mem.is_some_and(|p| p.is_empty()) {
            return Err(bad("mem_backend.backend_path: empty path"));
        }
        Ok(Self {
            state: PathBuf::from(&params.snapshot_path),
            mem: mem.map(PathBuf::from),
            resume: params.resume_vm.unwrap_or(false),
            track_dirty: params.enable_diff_snapshots.unwrap_or(false),
        })
    }
}

/// The machine of the snapshot `request` names, ready to run. `host` gives the host-side
/// settings of this process: where the serial console writes, and dirty page tracking.
pub fn restore(request: &RestoreRequest, host: &VmConfig) -> Result<Machine, BuildError> {
    let started = Instant::now();
    let mismatch = BuildError::SnapshotMismatch;
    let state: MachineState = snapshot::read_state(&request.state)?;
    let what = request.state.display().to_string();
    let (config, layout) = restored_config(&state, host, request.track_dirty, &what)?;

    let mem_path = request
        .mem
        .clone()
        .unwrap_or_else(|| state.memory.resolve(&request.state));
    let chain = snapshot::resolve_chain(&mem_path)?;
    if chain.guest_size() != layout.size() {
        return Err(mismatch(format!(
            "memory file {} holds {} bytes of guest RAM, but the snapshot's machine has {}",
            mem_path.display(),
            chain.guest_size(),
            layout.size()
        )));
    }
    let top = hex(&chain.identity());
    if top != state.memory.content_hash {
        return Err(mismatch(format!(
            "memory file {} (content hash {top}) is not the one {what} was taken with (content hash {})",
            mem_path.display(),
            state.memory.content_hash
        )));
    }
    let mem = if config.needs_shared_memory() {
        // Memory shared with another process (a vhost-user back end maps it from its file)
        // cannot be a private mapping of the snapshot: the back end would see the file, not
        // petrel's pages, and write into the snapshot. The saved pages go into a new memfd.
        let mem = crate::builder::allocate_memory(&config, &layout)?;
        // SAFETY: the memory was just allocated and nothing else (no vCPU, no device)
        // exists yet to touch it; the slices are dropped at the end of this statement.
        chain.copy_base_into(&mut unsafe { memory::ram_slices_mut(&mem) })?;
        mem
    } else {
        let (base, data_offset) = chain.base();
        let mem = layout.map_file(base, data_offset)?;
        bind_restored(&config, &layout, &mem)?;
        mem
    };
    // SAFETY: the memory was just mapped and nothing else (no vCPU, no device) exists yet
    // to touch it; the slices are dropped at the end of this statement.
    chain.apply_layers(&mut unsafe { memory::ram_slices_mut(&mem) })?;
    let book = SnapshotBook {
        last: Some((mem_path.clone(), chain.top_hash())),
        pending_dirty: Vec::new(),
    };
    let vm = restored_vm(&config, &mem)?;
    let machine = build_restored(
        state.saved(),
        vm,
        config,
        layout,
        mem,
        book,
        !request.resume,
    )?;
    tracing::info!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        layers = chain.files().len(),
        "restored {what} with {}",
        mem_path.display()
    );
    Ok(machine)
}

/// Binds restored memory (mapped from a file or handed over, not allocated here) to the
/// configured host nodes, before the saved pages are written into it. Huge pages cannot be
/// added to such memory: a node that asks for them gets small pages, with a warning.
pub fn bind_restored(
    config: &VmConfig,
    layout: &memory::MemoryLayout,
    mem: &memory::GuestMemoryMmap,
) -> Result<(), memory::MemoryError> {
    for n in config.numa.iter().filter(|n| n.hugepages) {
        tracing::warn!(
            node = n.node,
            "restored guest memory is mapped from a file: the node's hugepages=on is not applied"
        );
    }
    layout.bind(mem, &config.memory_placement())
}

/// The configuration of a restored machine: the saved one, with this process's host-side
/// settings (where the serial console writes; dirty page tracking if asked here), checked
/// against the saved state. `what` names the state's source in errors.
pub fn restored_config(
    state: &MachineState,
    host: &VmConfig,
    track_dirty: bool,
    what: &str,
) -> Result<(VmConfig, memory::MemoryLayout), BuildError> {
    let mismatch = BuildError::SnapshotMismatch;
    let mut config = state.config.clone();
    config.serial = host.serial.clone();
    config.machine.track_dirty_pages |= track_dirty || host.machine.track_dirty_pages;
    config.validate()?;
    let layout = config.memory_layout()?;
    if layout != state.layout {
        return Err(mismatch(format!(
            "{what}: the memory layout does not match the machine's memory size and NUMA nodes"
        )));
    }
    if state.vcpus.len() != config.machine.vcpus as usize {
        return Err(mismatch(format!(
            "{what}: {} vCPU states for a machine of {} vCPUs",
            state.vcpus.len(),
            config.machine.vcpus
        )));
    }
    Ok((config, layout))
}

/// The VM of a machine `config` describes, with `mem` registered and the irqchip and PIT
/// created: what a restore can make before it has the saved state (a migration's
/// destination makes it while memory arrives).
pub fn restored_vm(config: &VmConfig, mem: &memory::GuestMemoryMmap) -> Result<VmFd, BuildError> {
    let kvm = vm::open_kvm(config.machine.vcpus)?;
    Ok(vm::create_vm(&kvm, mem, config.machine.track_dirty_pages)?)
}

/// The machine `saved` describes, on `vm` (from [`restored_vm`]) around guest memory `mem`
/// that already holds the saved RAM: the irqchip's, PIT's and clock's state, the vCPUs,
/// then the devices.
pub fn build_restored(
    saved: Saved<'_>,
    vm: VmFd,
    config: VmConfig,
    layout: memory::MemoryLayout,
    mem: memory::GuestMemoryMmap,
    book: SnapshotBook,
    start_paused: bool,
) -> Result<Machine, BuildError> {
    restore_vm_state(&vm, saved.vm)?;
    let exit = std::sync::Arc::new(
        devices::ExitSignal::new()
            .map_err(crate::builder::io_err("cannot create the exit event"))?,
    );
    // vCPUs before devices: a restored device serves what the driver queued before the save
    // and may interrupt at once, and an interrupt with no local APIC to take it is lost.
    vcpu::install_kick_handler()?;
    let mut vcpus = saved
        .vcpus
        .iter()
        .enumerate()
        .map(|(id, s)| Vcpu::restore(&vm, id as u32, s))
        .collect::<Result<Vec<_>, _>>()?;
    crate::builder::pin_vcpus(&mut vcpus, &config)?;
    let devices = DeviceManager::restore(&vm, &exit, &config, &mem, saved.devices)?;
    assemble(Parts {
        config,
        exit,
        devices,
        vcpus,
        vm,
        layout,
        memory: mem,
        book,
        start_paused,
    })
}
