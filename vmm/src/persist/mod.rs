//! Snapshots of a whole machine: what the state file holds ([`MachineState`]), taking one
//! from a paused machine ([`create`]) and building a machine from one ([`restore`]).
//!
//! The state file (format, version and checksum: the `snapshot` crate) holds the machine's
//! configuration and memory layout, the VM's and every vCPU's KVM state, and every device's
//! `State`. Guest memory goes to a separate memory file: a full one (a sparse image of the
//! pages the guest touched) or an incremental layer over the previous snapshot's.

pub mod create;
pub mod restore;

use std::path::{Path, PathBuf};

use memory::MemoryLayout;
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::device_manager::persist::DevicesState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;

/// Everything a snapshot's state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineState {
    /// The machine and its devices as configured (kept current by runtime changes).
    pub config: VmConfig,
    /// Where the guest's RAM lives.
    pub layout: MemoryLayout,
    /// The memory file this state goes with.
    pub memory: MemoryRef,
    /// The irqchip, PIT and clock.
    pub vm: VmState,
    /// Every vCPU, by id.
    pub vcpus: Vec<VcpuState>,
    /// Every device.
    pub devices: DevicesState,
}

impl MachineState {
    /// The VM, vCPU and device states a machine is rebuilt from.
    pub fn saved(&self) -> Saved<'_> {
        Saved {
            vm: &self.vm,
            vcpus: &self.vcpus,
            devices: &self.devices,
        }
    }
}

/// The states a machine is rebuilt from, whether from a state file or a migration.
#[derive(Clone, Copy)]
pub struct Saved<'a> {
    pub vm: &'a VmState,
    pub vcpus: &'a [VcpuState],
    pub devices: &'a DevicesState,
}

impl create::Captured {
    /// The states, to rebuild the machine from.
    pub fn saved(&self) -> Saved<'_> {
        Saved {
            vm: &self.vm,
            vcpus: &self.vcpus,
            devices: &self.devices,
        }
    }
}

/// The memory file a state file goes with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRef {
    /// Where it was written (relative to the state file's directory when it is in the
    /// same directory, so the pair can be moved together).
    pub path: PathBuf,
    /// `full` or `diff`.
    pub kind: String,
    /// Its content hash, in hex: a load refuses any other memory file.
    pub content_hash: String,
}

impl MemoryRef {
    /// Where the memory file is, for a state file at `state_path`.
    pub fn resolve(&self, state_path: &Path) -> PathBuf {
        match state_path.parent() {
            Some(dir) if self.path.is_relative() => dir.join(&self.path),
            _ => self.path.clone(),
        }
    }
}

/// What a machine remembers between snapshots.
#[derive(Debug, Default)]
pub struct SnapshotBook {
    /// The memory file the next Diff is a layer over, with its content hash: the last one
    /// written, or the one the machine was restored from.
    pub last: Option<(PathBuf, [u8; 32])>,
    /// Dirty pages taken from KVM and the VMM's bitmap that no written snapshot holds yet
    /// (a snapshot failed after taking them); the next one adds them.
    pub pending_dirty: Vec<u64>,
}

/// `path` relative to `dir` when it lies directly in it, else absolute (a relative path
/// elsewhere would be read against the state file's directory).
fn relative_to(path: &Path, dir: Option<&Path>) -> PathBuf {
    match (path.parent(), path.file_name(), dir) {
        (Some(parent), Some(name), Some(dir)) if parent == dir => PathBuf::from(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}
