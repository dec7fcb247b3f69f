//! Request and response bodies of the control API.
//!
//! Field names follow Firecracker's API so that tools written for it work unchanged; the few
//! petrel additions are marked. Every body that a client sends rejects unknown fields.

use serde::{Deserialize, Deserializer, Serialize};

/// Reads an enum from its variant's name only: serde_json would also take
/// `{"Name": null}`, which the document does not allow.
pub(crate) fn by_name<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let name = String::deserialize(deserializer)?;
    T::deserialize(serde::de::value::StringDeserializer::<D::Error>::new(name))
}

/// `PUT /boot-source`: the guest kernel, its command line and an optional initrd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image.
    pub kernel_image_path: String,
    /// Kernel command line.
    #[serde(default)]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default)]
    pub initrd_path: Option<String>,
}

/// `PUT /machine-config` and the reply of `GET /machine-config`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Guest memory size in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading.
    #[serde(default)]
    pub smt: Option<bool>,
    /// Name of a CPU template.
    #[serde(default)]
    pub cpu_template: Option<String>,
    /// Whether to track dirty pages (needed for diff snapshots).
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// petrel: guest RAM in a memfd mapped shared (for local live migration).
    #[serde(default)]
    pub shared_memory: Option<bool>,
    /// petrel: ACPI tables for the guest (default true).
    #[serde(default)]
    pub acpi: Option<bool>,
}

/// `PATCH /machine-config`: only the fields given change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// Number of vCPUs.
    #[serde(default)]
    pub vcpu_count: Option<u32>,
    /// Guest memory size in MiB.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// Simultaneous multithreading.
    #[serde(default)]
    pub smt: Option<bool>,
    /// Name of a CPU template.
    #[serde(default)]
    pub cpu_template: Option<String>,
    /// Whether to track dirty pages.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// petrel: guest RAM in a memfd mapped shared.
    #[serde(default)]
    pub shared_memory: Option<bool>,
    /// petrel: ACPI tables for the guest.
    #[serde(default)]
    pub acpi: Option<bool>,
}

/// `PUT /numa` (petrel's): the guest's NUMA nodes, replacing those set before; an empty
/// list removes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaConfig {
    /// The nodes, numbered 0 to n-1 in order.
    pub nodes: Vec<NumaNode>,
}

/// One guest NUMA node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaNode {
    /// The node's id: its position in `nodes`.
    pub node_id: u32,
    /// Its vCPUs (none: a memory-only node).
    #[serde(default)]
    pub cpus: Option<Vec<u32>>,
    /// Its memory in MiB.
    pub mem_size_mib: u64,
    /// The host NUMA node its memory is bound to and its vCPU threads pinned to.
    #[serde(default)]
    pub host_node: Option<u32>,
    /// Distances to other nodes (20 when not given).
    #[serde(default)]
    pub distances: Option<Vec<NumaDistance>>,
    /// Back its memory with 2 MiB huge pages.
    #[serde(default)]
    pub hugepages: Option<bool>,
}

/// The distance from a node to another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaDistance {
    /// The other node.
    pub node_id: u32,
    /// 11 to 254 (10 is the local distance).
    pub distance: u8,
}

/// A token bucket: `size` tokens refilled every `refill_time` milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Bucket size in tokens (bytes or operations).
    pub size: u64,
    /// Initial extra tokens that are not refilled.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the whole bucket.
    pub refill_time: u64,
}

/// A rate limiter on bandwidth and on operations; a missing bucket means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes per refill period.
    #[serde(default)]
    pub bandwidth: Option<TokenBucket>,
    /// Operations per refill period.
    #[serde(default)]
    pub ops: Option<TokenBucket>,
}

/// `PUT /drives/{drive_id}`: a block device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Id of the drive; equals the path's.
    pub drive_id: String,
    /// Host path of the backing file.
    pub path_on_host: String,
    /// Whether the guest boots from this drive.
    pub is_root_device: bool,
    /// Read-only to the guest.
    #[serde(default)]
    pub is_read_only: Option<bool>,
    /// Partition UUID of the root partition.
    #[serde(default)]
    pub partuuid: Option<String>,
    /// `Unsafe` or `Writeback`.
    #[serde(default)]
    pub cache_type: Option<String>,
    /// `Sync` or `Async`.
    #[serde(default)]
    pub io_engine: Option<String>,
    /// Rate limiter of the drive.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
    /// Serial number shown to the guest (petrel addition).
    #[serde(default)]
    pub serial: Option<String>,
}

/// `PATCH /drives/{drive_id}`: swap the backing file and/or update the rate limiter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    /// Id of the drive; equals the path's.
    pub drive_id: String,
    /// New backing file.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// New rate limiter.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device backed by a TAP device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Id of the interface; equals the path's.
    pub iface_id: String,
    /// Name of the host TAP device.
    pub host_dev_name: String,
    /// MAC address of the guest side, `xx:xx:xx:xx:xx:xx`.
    #[serde(default)]
    pub guest_mac: Option<String>,
    /// Rate limiter on receive.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Rate limiter on transmit.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PATCH /network-interfaces/{iface_id}`: update the rate limiters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfacePatch {
    /// Id of the interface; equals the path's.
    pub iface_id: String,
    /// New receive rate limiter.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit rate limiter.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /consoles/{id}` (petrel's): where a console's output goes, e.g. `socket:/path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    /// Id of the console; equals the path's.
    pub id: String,
    /// Output specification, e.g. `socket:/run/console.sock`.
    pub output: String,
}

/// `PUT /vhost-user-blk/{id}` (petrel's): a virtio-blk disk served by a vhost-user back end
/// listening on a Unix socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserBlk {
    /// Id of the device; equals the path's.
    pub id: String,
    /// The back end's Unix socket.
    pub socket: String,
}

/// `PUT /vhost-user-net/{id}` (petrel's): a virtio-net interface served by a vhost-user back
/// end listening on a Unix socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserNet {
    /// Id of the device; equals the path's.
    pub id: String,
    /// The back end's Unix socket.
    pub socket: String,
    /// The guest's MAC address; without it, the back end's or a generated one.
    #[serde(default)]
    pub mac: Option<String>,
}

/// `PUT /vhost-user-fs/{id}` (petrel's): a virtio-fs shared directory served by a vhost-user
/// back end (such as virtiofsd) listening on a Unix socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostUserFs {
    /// Id of the device; equals the path's.
    pub id: String,
    /// The back end's Unix socket.
    pub socket: String,
    /// The tag the guest mounts the file system by: 1 to 36 bytes of UTF-8, no NUL.
    pub tag: String,
}

/// `PUT /vsock`: a virtio-vsock device proxied to a host Unix socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Context id of the guest (3 to 4294967294).
    pub guest_cid: u32,
    /// Host Unix socket path.
    pub uds_path: String,
    /// The device id (default `vsock0`); deprecated in Firecracker, where it is ignored.
    #[serde(default)]
    pub vsock_id: Option<String>,
}

/// What `PUT /actions` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured guest.
    InstanceStart,
    /// Send Ctrl+Alt+Del to the guest.
    SendCtrlAltDel,
    /// Write the metrics to the metrics file now.
    FlushMetrics,
    /// Ask the guest to shut down (petrel's).
    Shutdown,
    /// Stop the VM at once (petrel's).
    Kill,
    /// Press the ACPI power button: a graceful shutdown request (petrel's; ACPI only).
    PowerButton,
}

/// `PUT /actions` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action.
    #[serde(deserialize_with = "by_name")]
    pub action_type: ActionType,
}

/// The state `PATCH /vm` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state wanted.
    #[serde(deserialize_with = "by_name")]
    pub state: VmState,
}

/// `GET /` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// Id of the instance.
    pub id: String,
    /// `Not started`, `Running` or `Paused`, as Firecracker, or `Stopped` once the guest
    /// ended and petrel is tearing down.
    pub state: String,
    /// Version of petrel.
    pub vmm_version: String,
    /// `petrel`.
    pub app_name: String,
}

/// `PUT /snapshot/create` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// `Full` or `Diff`.
    #[serde(default)]
    pub snapshot_type: Option<String>,
    /// Path of the state file to write.
    pub snapshot_path: String,
    /// Path of the memory file to write.
    pub mem_file_path: String,
    /// petrel: for `Diff`, the memory file the layer is relative to; it must be the last
    /// one this VM wrote or was loaded from (the default).
    #[serde(default)]
    pub parent_mem_file_path: Option<String>,
}

/// Where the memory of a snapshot being loaded comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// `File` or `Uffd`.
    pub backend_type: String,
    /// Path of the file or of the userfaultfd socket.
    pub backend_path: String,
}

/// `PUT /snapshot/load` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// Path of the state file.
    pub snapshot_path: String,
    /// Memory backend (exclusive with `mem_file_path`).
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Memory file (deprecated in Firecracker in favour of `mem_backend`).
    #[serde(default)]
    pub mem_file_path: Option<String>,
    /// Whether to track dirty pages after loading.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume the VM once loaded.
    #[serde(default)]
    pub resume_vm: Option<bool>,
}

/// `PUT /migration/send` body (petrel's): move the running VM to a destination petrel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSendParams {
    /// Where the destination listens: `unix:PATH` or `tcp:HOST:PORT`.
    pub url: String,
    /// The longest final pause to aim for, in milliseconds (default 300).
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Give up (the VM keeps running here) when the migration has not finished after this
    /// many seconds (default 60).
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Slow the guest's vCPUs when it dirties memory faster than it can be sent (default
    /// true); without it, a guest that never converges makes the migration time out.
    #[serde(default)]
    pub auto_converge: Option<bool>,
    /// Same host only: hand the guest's memory over as its memfd on the Unix socket instead
    /// of copying it (the VM must have `shared_memory`); only the state is sent, with the VM
    /// paused (default false).
    #[serde(default)]
    pub local: Option<bool>,
    /// At most this many bytes a second on the link (default: no limit).
    #[serde(default)]
    pub max_bandwidth: Option<u64>,
    /// Pre-copy rounds before the final pause, whatever the estimate (default 30).
    #[serde(default)]
    pub max_rounds: Option<u32>,
}

/// `PUT /migration/receive` body (petrel's): wait for a VM from a source petrel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationReceiveParams {
    /// Where to listen: `unix:PATH` or `tcp:HOST:PORT`.
    pub url: String,
}

/// `GET /migration` (petrel's): the migration this petrel sends or receives, or the last one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationInfo {
    /// `none`, `send` or `receive`.
    pub role: String,
    /// `idle`, `listening`, `connecting`, `precopy`, `stopping`, `completed` or `failed`.
    pub state: String,
    /// The URL sent to or listened on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The pre-copy round under way (0: all touched memory).
    pub round: u32,
    /// Guest RAM, in pages of 4 KiB.
    pub total_pages: u64,
    /// Pages sent or received so far, all rounds (zero pages included).
    pub pages: u64,
    /// Bytes on the wire so far.
    pub bytes: u64,
    /// Pages the last round found dirty.
    pub dirty_pages: u64,
    /// Measured bandwidth, bytes a second.
    pub bandwidth: u64,
    /// The final pause the source expects from the last round, in milliseconds.
    pub expected_downtime_ms: f64,
    /// The final pause, measured on the source once the destination runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<f64>,
    /// How much auto-converge slows the vCPUs, in percent.
    pub throttle_percent: u32,
    /// Time since the migration started, in milliseconds.
    pub elapsed_ms: f64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `PUT /logger` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File or named pipe the log goes to.
    #[serde(default)]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug` or `Trace`.
    #[serde(default)]
    pub level: Option<String>,
    /// Print the level of each line.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Print file and line of each line.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Log only this module.
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics` body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File or named pipe the metrics go to.
    pub metrics_path: String,
}

/// Body of every 4xx/5xx reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What went wrong, naming the field or state at fault.
    pub fault_message: String,
}

pub use crate::input::{ButtonAction, ButtonName, InputEvent, InputEvents, KeyAction};
/// Reply of `GET /serial` (petrel's): the guest's serial output from absolute byte offset
/// `from` up to `next`, the offset to ask for next time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialLog {
    /// Where `data` starts: the offset asked for, or the oldest byte kept if that is later.
    pub from: u64,
    /// The offset after `data`: pass it as `from` in the next request.
    pub next: u64,
    /// The output as text (invalid UTF-8 replaced with U+FFFD).
    pub data: String,
}

/// `PUT /serial` body (petrel's): bytes for the guest's serial input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialInput {
    /// 1 to 64 bytes (as UTF-8) to put in the UART's receive FIFO.
    pub data: String,
}
