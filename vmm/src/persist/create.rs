//! `PUT /snapshot/create`: a paused machine to a state file and a memory file.
//!
//! Order: devices first (a disk finishes its requests in flight, so the queues saved next
//! hold them), then vCPUs and the VM, then memory, then the state file, which names the
//! memory file by content hash. Both files are written under temporary names and renamed,
//! so a failure leaves neither half-written, and the pages a failed incremental snapshot
//! took from the dirty log are kept for the next one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use api::types::SnapshotCreateParams;
use api::ApiResponse;
use snapshot::{hex, MemFileInfo, PageSet};

use super::{relative_to, MachineState, MemoryRef, SnapshotBook};
use crate::config::VmConfig;
use crate::control::runtime::Runtime;
use crate::device_manager::persist::DevicesState;
use crate::device_manager::DeviceManager;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::{save_vm_state, VmState};

/// Full or Diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Full,
    Diff,
}

fn bad(message: impl Into<String>) -> ApiResponse {
    ApiResponse::bad_request(message)
}

fn internal(message: impl Into<String>) -> ApiResponse {
    ApiResponse::error(500, message)
}

fn kind(params: &SnapshotCreateParams) -> Result<Kind, ApiResponse> {
    match params.snapshot_type.as_deref() {
        None | Some("Full") => Ok(Kind::Full),
        Some("Diff") => Ok(Kind::Diff),
        Some(other) => Err(bad(format!(
            "snapshot_type: {other:?} is not a snapshot type: use Full or Diff"
        ))),
    }
}

fn non_empty<'a>(field: &str, value: &'a str) -> Result<&'a Path, ApiResponse> {
    if value.is_empty() {
        return Err(bad(format!("{field}: empty path")));
    }
    Ok(Path::new(value))
}

/// Takes a snapshot of the paused machine behind `rt` as `params` asks.
pub fn create(
    rt: &Runtime,
    config: &VmConfig,
    params: &SnapshotCreateParams,
) -> Result<(), ApiResponse> {
    let started = Instant::now();
    let kind = kind(params)?;
    crate::device_manager::virtio::check_savable(&rt.virtio)
        .map_err(|e| bad(format!("a snapshot is not possible: {e}")))?;
    let state_path = non_empty("snapshot_path", &params.snapshot_path)?;
    let mem_path = non_empty("mem_file_path", &params.mem_file_path)?;
    if state_path == mem_path {
        return Err(bad(
            "snapshot_path and mem_file_path are the same file: a snapshot needs two",
        ));
    }
    let mut book = rt.book();
    let parent = match kind {
        Kind::Full if params.parent_mem_file_path.is_some() => {
            return Err(bad(
                "parent_mem_file_path is for Diff snapshots; a Full one has no parent",
            ))
        }
        Kind::Full => None,
        Kind::Diff => Some(diff_parent(rt, &book, params)?),
    };
    let Captured {
        devices,
        vcpus,
        vm: vm_state,
    } = capture(rt)?;

    // Pages written since the last snapshot, with those a failed one left behind.
    // (Both are page sets over the whole RAM, or the pending one is empty.)
    let pending = std::mem::take(&mut book.pending_dirty);
    let dirty = if rt.track_dirty {
        match rt.take_dirty() {
            Ok(mut now) => {
                memory::union_into(&mut now, &pending);
                now
            }
            Err(e) => {
                book.pending_dirty = pending;
                return Err(internal(format!("cannot read the dirty log: {e}")));
            }
        }
    } else {
        pending
    };
    let saved = started.elapsed();
    // Both files are written beside their final names first, and renamed only once both
    // are complete: a failure leaves an older snapshot at these paths whole.
    let (mem_new, state_new) = (staging(mem_path), staging(state_path));
    let written = match &parent {
        Some(parent) => snapshot::check_destination(mem_path, parent)
            .map_err(|e| file_error("mem_file_path", e)),
        None => Ok(()),
    }
    .and_then(|()| write_memory(rt, kind, &mem_new, &dirty, parent.as_deref()));
    tracing::debug!(
        saved_ms = saved.as_secs_f64() * 1e3,
        memory_ms = (started.elapsed() - saved).as_secs_f64() * 1e3,
        "snapshot: devices, vCPUs and VM saved, memory written"
    );
    let result = written.and_then(|info| {
        let state = MachineState {
            config: config.clone(),
            layout: rt.layout.clone(),
            memory: MemoryRef {
                path: relative_to(mem_path, state_path.parent()),
                kind: info.kind.name().into(),
                content_hash: hex(&info.content_hash),
            },
            vm: vm_state,
            vcpus,
            devices,
        };
        snapshot::write_state(&state_new, &state)
            .map_err(|e| file_error("cannot write the state file", e))?;
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to)
                .map_err(|e| bad(format!("cannot put the snapshot at {}: {e}", to.display())))
        };
        rename(&mem_new, mem_path)?;
        rename(&state_new, state_path)?;
        Ok(info)
    });
    match result {
        Ok(info) => {
            tracing::info!(
                kind = ?kind,
                pages = info.pages,
                bytes_on_disk = info.bytes_on_disk,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "snapshot written to {} and {}",
                state_path.display(),
                mem_path.display()
            );
            book.last = Some((mem_path.to_path_buf(), info.content_hash));
            Ok(())
        }
        Err(e) => {
            // Nothing was lost: the next snapshot writes these pages.
            book.pending_dirty = dirty;
            let _ = std::fs::remove_file(&mem_new);
            let _ = std::fs::remove_file(&state_new);
            Err(e)
        }
    }
}

/// Where `path` is written before it is renamed into place: `.NAME.petrel-new` beside it.
fn staging(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".petrel-new");
    path.with_file_name(name)
}

/// What a paused machine holds besides its memory: what a snapshot's state file and a
/// migration's final `State` carry.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Captured {
    pub devices: DevicesState,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
}

/// Saves the paused machine behind `rt`, devices first: a disk finishes its requests in
/// flight, so their completions are in the used rings, the vCPUs' LAPICs and the dirty set
/// read after this.
pub fn capture(rt: &Runtime) -> Result<Captured, ApiResponse> {
    let devices = DeviceManager::save(&rt.serial, &rt.i8042, &rt.rtc, &rt.virtio, rt.ged.as_ref())
        .map_err(|e| internal(format!("cannot save the devices: {e}")))?;
    let vcpus = rt.save_vcpus()?;
    let vm = save_vm_state(&rt.vm).map_err(|e| internal(format!("cannot save the VM: {e}")))?;
    Ok(Captured { devices, vcpus, vm })
}

/// The memory file a Diff is a layer over: the one the machine last wrote or came from.
fn diff_parent(
    rt: &Runtime,
    book: &SnapshotBook,
    params: &SnapshotCreateParams,
) -> Result<PathBuf, ApiResponse> {
    if !rt.track_dirty {
        return Err(bad(
            "snapshot_type Diff needs dirty page tracking, which this VM does not have: set track_dirty_pages in PUT /machine-config before start (or run with --track-dirty-pages), or load with enable_diff_snapshots",
        ));
    }
    let Some((last, last_hash)) = &book.last else {
        return Err(bad(
            "snapshot_type Diff: this VM has no previous snapshot to be a layer over: take a Full one first",
        ));
    };
    // The file at the path may have been replaced since: the layer must go over the very
    // memory the dirty log counts from.
    let (field, asked) = match &params.parent_mem_file_path {
        Some(asked) => ("parent_mem_file_path", Path::new(asked)),
        None => ("the last snapshot's memory file", last.as_path()),
    };
    let header = snapshot::read_header(asked).map_err(|e| file_error(field, e))?;
    if &header.content_hash != last_hash {
        return Err(bad(format!(
            "{field}: {} is not the memory file of this VM's last snapshot (content hash {}): a Diff holds only the pages written since that one",
            asked.display(),
            hex(last_hash)
        )));
    }
    Ok(asked.to_path_buf())
}

fn write_memory(
    rt: &Runtime,
    kind: Kind,
    path: &Path,
    dirty: &[u64],
    parent: Option<&Path>,
) -> Result<MemFileInfo, ApiResponse> {
    let pages = rt.layout.size() / memory::PAGE_SIZE as u64;
    // SAFETY: the vCPUs are paused (creating a snapshot is allowed only then) and the
    // devices were quiesced by saving them; nothing else writes guest memory while these
    // slices live, and they are dropped before this returns.
    let ram = unsafe { memory::ram_slices(&rt.memory) };
    let written = match (kind, parent) {
        (Kind::Diff, Some(parent)) => {
            let dirty = PageSet::from_words(dirty.to_vec(), pages);
            snapshot::write_diff(path, &ram, &dirty, parent)
        }
        _ => {
            // Resident pages of anonymous memory, and for a restored machine's file-backed
            // memory the file's data and the pages the guest has written since.
            let resident = memory::resident_pages(&rt.memory)
                .map_err(|e| internal(format!("cannot find the guest's pages: {e}")))?;
            snapshot::write_full(path, &ram, &PageSet::from_words(resident, pages))
        }
    };
    written.map_err(|e| file_error("cannot write the memory file", e))
}

/// A file error as the API reports it: the user's path is at fault (400).
fn file_error(what: &str, e: snapshot::SnapshotError) -> ApiResponse {
    bad(format!("{what}: {e}"))
}
