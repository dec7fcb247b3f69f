//! Configuring the VM through the API before it starts: each request edits a copy of the
//! `VmConfig`, which replaces the current one only once it validates, so a bad request
//! changes nothing.

use std::path::{Path, PathBuf};

use api::types::{
    BootSource, Console, Drive, DrivePatch, MachineConfig, MachineConfigPatch, NetworkInterface,
    NetworkInterfacePatch, RateLimiter, TokenBucket,
};
use api::types::{NumaConfig, NumaNode};
use api::types::{VhostUserBlk, VhostUserFs, VhostUserNet, Vsock};
use api::ApiResponse;
use devices::rate_limiter::{RateLimitConfig, TokenBucketConfig};
use devices::virtio::block::BlockConfig;
use devices::virtio::console::ConsoleConfig;
use devices::virtio::net::{MacAddr, NetConfig};
use devices::virtio::vhost_user::{
    FsTag, VhostUserBlkConfig, VhostUserFsConfig, VhostUserNetConfig,
};
use devices::virtio::vsock::VsockConfig;

use crate::config::{ByteSize, CpuList, CpuTemplate, NodeDistance, RootDisk, VmConfig};

/// Longest TAP name Linux accepts (`IFNAMSIZ` less the NUL).
const MAX_TAP_NAME: usize = 15;

fn bad(msg: impl Into<String>) -> ApiResponse {
    ApiResponse::bad_request(msg)
}

/// Applies `change` to a copy of `config` and keeps the copy only if it validates.
fn edit(
    config: &mut VmConfig,
    change: impl FnOnce(&mut VmConfig) -> Result<(), ApiResponse>,
) -> Result<(), ApiResponse> {
    let mut next = config.clone();
    change(&mut next)?;
    next.validate().map_err(|e| bad(e.to_string()))?;
    *config = next;
    Ok(())
}

/// Checks that `path` names a regular file petrel can open, naming `field` if not.
fn readable_file(field: &str, path: &str) -> Result<PathBuf, ApiResponse> {
    let fail = |why: String| bad(format!("{field}: {path:?}: {why}"));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    Ok(PathBuf::from(path))
}

/// Checks that a disk image exists and is a regular file or a block device.
fn disk_image(field: &str, path: &str) -> Result<PathBuf, ApiResponse> {
    use std::os::unix::fs::FileTypeExt;
    let fail = |why: String| bad(format!("{field}: {path:?}: {why}"));
    let kind = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(fail("not a regular file or a block device".into()));
    }
    Ok(PathBuf::from(path))
}

/// `PUT /boot-source`.
pub fn put_boot_source(config: &mut VmConfig, boot: BootSource) -> Result<(), ApiResponse> {
    let kernel = readable_file("kernel_image_path", &boot.kernel_image_path)?;
    let initrd = boot
        .initrd_path
        .as_deref()
        .map(|p| readable_file("initrd_path", p))
        .transpose()?;
    edit(config, |c| {
        c.boot.kernel = Some(kernel);
        c.boot.initrd = initrd;
        c.boot.cmdline = boot.boot_args;
        Ok(())
    })
}

/// The reply of `GET /machine-config`.
pub fn machine_config(config: &VmConfig) -> MachineConfig {
    MachineConfig {
        vcpu_count: config.machine.vcpus,
        mem_size_mib: config.machine.memory.0 >> 20,
        smt: Some(false),
        cpu_template: Some(
            match config.machine.cpu_template {
                CpuTemplate::Host => "host",
                CpuTemplate::Minimal => "minimal",
            }
            .to_string(),
        ),
        track_dirty_pages: Some(config.machine.track_dirty_pages),
        shared_memory: Some(config.machine.shared_memory),
        acpi: Some(config.machine.acpi),
    }
}

fn cpu_template(name: &str) -> Result<CpuTemplate, ApiResponse> {
    match name.to_ascii_lowercase().as_str() {
        // Firecracker's name for "no template".
        "host" | "none" => Ok(CpuTemplate::Host),
        "minimal" => Ok(CpuTemplate::Minimal),
        _ => Err(bad(format!(
            "cpu_template: unknown template {name:?}: petrel has host (or None) and minimal"
        ))),
    }
}

/// `PATCH /machine-config`; `PUT` is a patch with every required field.
pub fn patch_machine_config(
    config: &mut VmConfig,
    patch: MachineConfigPatch,
) -> Result<(), ApiResponse> {
    if patch.smt == Some(true) {
        return Err(bad(
            "smt: petrel gives every vCPU its own core; simultaneous multithreading cannot be enabled",
        ));
    }
    let template = patch
        .cpu_template
        .as_deref()
        .map(cpu_template)
        .transpose()?;
    let memory = patch
        .mem_size_mib
        .map(|mib| {
            mib.checked_mul(1 << 20)
                .map(ByteSize)
                .ok_or_else(|| bad(format!("mem_size_mib: {mib} MiB is too large")))
        })
        .transpose()?;
    edit(config, |c| {
        if let Some(v) = patch.vcpu_count {
            c.machine.vcpus = v;
        }
        if let Some(m) = memory {
            c.machine.memory = m;
        }
        if let Some(t) = template {
            c.machine.cpu_template = t;
        }
        if let Some(track) = patch.track_dirty_pages {
            c.machine.track_dirty_pages = track;
        }
        if let Some(shared) = patch.shared_memory {
            c.machine.shared_memory = shared;
        }
        if let Some(acpi) = patch.acpi {
            c.machine.acpi = acpi;
        }
        Ok(())
    })
    .map_err(|e| match e {
        // Name the API's fields rather than the config file's.
        ApiResponse::Error { fault_message, .. } => bad(fault_message
            .replace("vcpus must", "vcpu_count must")
            .replace("memory:", "mem_size_mib:")),
        other => other,
    })
}

/// `PUT /machine-config`.
pub fn put_machine_config(config: &mut VmConfig, m: MachineConfig) -> Result<(), ApiResponse> {
    patch_machine_config(
        config,
        MachineConfigPatch {
            vcpu_count: Some(m.vcpu_count),
            mem_size_mib: Some(m.mem_size_mib),
            smt: m.smt,
            cpu_template: Some(m.cpu_template.unwrap_or_else(|| "host".into())),
            track_dirty_pages: m.track_dirty_pages,
            shared_memory: m.shared_memory,
            acpi: m.acpi,
        },
    )
}

fn bucket(b: Option<TokenBucket>) -> Option<TokenBucketConfig> {
    b.map(|b| TokenBucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time: b.refill_time,
    })
}

/// An API rate limiter as a device's configuration, validated; `field` names it in errors.
pub fn rate_limit(
    field: &str,
    limiter: Option<RateLimiter>,
) -> Result<Option<RateLimitConfig>, ApiResponse> {
    let Some(l) = limiter else {
        return Ok(None);
    };
    let config = RateLimitConfig {
        bandwidth: bucket(l.bandwidth),
        ops: bucket(l.ops),
    };
    config
        .validate()
        .map_err(|e| bad(format!("{field}: {e}")))?;
    Ok(Some(config))
}

/// Replaces the device with `id` in `list`, or adds it at the end.
fn upsert<T>(list: &mut Vec<T>, item: T, id: impl Fn(&T) -> &str) {
    let key = id(&item).to_string();
    match list.iter_mut().find(|d| id(d) == key) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

/// `PUT /drives/{drive_id}`: adds the drive, or replaces the one with that id.
pub fn put_drive(config: &mut VmConfig, drive: Drive) -> Result<(), ApiResponse> {
    let path = disk_image("path_on_host", &drive.path_on_host)?;
    match drive.cache_type.as_deref() {
        // petrel always offers FLUSH and carries it out, which both ask for at least.
        None | Some("Unsafe") | Some("Writeback") => {}
        Some(other) => {
            return Err(bad(format!(
                "cache_type: {other:?} is not Unsafe or Writeback"
            )))
        }
    }
    match drive.io_engine.as_deref() {
        None | Some("Sync") => {}
        Some("Async") => {
            return Err(bad(
                "io_engine: Async (io_uring) is not available: petrel serves each disk from its own I/O thread; use Sync",
            ))
        }
        Some(other) => return Err(bad(format!("io_engine: {other:?} is not Sync or Async"))),
    }
    if drive.partuuid.is_some() && !drive.is_root_device {
        return Err(bad("partuuid: only the root device has a partuuid"));
    }
    let rate_limiter = rate_limit("rate_limiter", drive.rate_limiter)?;
    let disk = BlockConfig {
        path,
        id: drive.drive_id.clone(),
        readonly: drive.is_read_only.unwrap_or(false),
        serial: drive.serial,
        rate_limiter,
    };
    edit(config, |c| {
        let was_root = c.boot.root.as_ref().is_some_and(|r| r.disk == disk.id);
        if drive.is_root_device {
            if let Some(other) = c.boot.root.as_ref().filter(|r| r.disk != disk.id) {
                return Err(bad(format!(
                    "is_root_device: drive {:?} is already the root device",
                    other.disk
                )));
            }
            c.disks.retain(|d| d.id != disk.id);
            c.disks.insert(0, disk);
            c.boot.root = Some(RootDisk {
                disk: drive.drive_id,
                partuuid: drive.partuuid,
            });
        } else {
            if was_root {
                c.boot.root = None;
            }
            upsert(&mut c.disks, disk, |d| &d.id);
        }
        Ok(())
    })
}

/// `PATCH /drives/{drive_id}` before start: a new backing file and/or rate limiter.
pub fn patch_drive(config: &mut VmConfig, patch: DrivePatch) -> Result<(), ApiResponse> {
    let path = patch
        .path_on_host
        .as_deref()
        .map(|p| disk_image("path_on_host", p))
        .transpose()?;
    let limiter = rate_limit("rate_limiter", patch.rate_limiter)?;
    edit(config, |c| {
        let disk = c
            .disks
            .iter_mut()
            .find(|d| d.id == patch.drive_id)
            .ok_or_else(|| no_such("drive", &patch.drive_id))?;
        if let Some(p) = path {
            disk.path = p;
        }
        if let Some(l) = limiter {
            disk.rate_limiter = l.is_limited().then_some(l);
        }
        Ok(())
    })
}

/// A 400 for a device id that is not configured.
pub fn no_such(kind: &str, id: &str) -> ApiResponse {
    bad(format!("no {kind} with id {id:?} is configured"))
}

/// `PUT /network-interfaces/{iface_id}`.
pub fn put_net(config: &mut VmConfig, iface: NetworkInterface) -> Result<(), ApiResponse> {
    let tap = &iface.host_dev_name;
    if tap.is_empty() || tap.len() > MAX_TAP_NAME || tap.contains(['/', '\0', ' ']) {
        return Err(bad(format!(
            "host_dev_name: {tap:?} is not a network interface name (1 to {MAX_TAP_NAME} characters, no '/', space or NUL)"
        )));
    }
    let mac = iface
        .guest_mac
        .as_deref()
        .map(|m| {
            m.parse::<MacAddr>()
                .map_err(|e| bad(format!("guest_mac: {e}")))
        })
        .transpose()?;
    let net = NetConfig {
        tap: tap.clone(),
        id: iface.iface_id,
        mac,
        rx_rate_limiter: rate_limit("rx_rate_limiter", iface.rx_rate_limiter)?,
        tx_rate_limiter: rate_limit("tx_rate_limiter", iface.tx_rate_limiter)?,
    };
    edit(config, |c| {
        upsert(&mut c.nets, net, |n| &n.id);
        Ok(())
    })
}

/// `PATCH /network-interfaces/{iface_id}` before start.
pub fn patch_net(config: &mut VmConfig, patch: NetworkInterfacePatch) -> Result<(), ApiResponse> {
    let rx = rate_limit("rx_rate_limiter", patch.rx_rate_limiter)?;
    let tx = rate_limit("tx_rate_limiter", patch.tx_rate_limiter)?;
    edit(config, |c| {
        let net = c
            .nets
            .iter_mut()
            .find(|n| n.id == patch.iface_id)
            .ok_or_else(|| no_such("network interface", &patch.iface_id))?;
        if let Some(rx) = rx {
            net.rx_rate_limiter = rx.is_limited().then_some(rx);
        }
        if let Some(tx) = tx {
            net.tx_rate_limiter = tx.is_limited().then_some(tx);
        }
        Ok(())
    })
}

/// `PUT /consoles/{id}`.
pub fn put_console(config: &mut VmConfig, console: Console) -> Result<(), ApiResponse> {
    let output = console
        .output
        .parse()
        .map_err(|e| bad(format!("output: {e}")))?;
    let console = ConsoleConfig {
        id: console.id,
        output,
    };
    edit(config, |c| {
        upsert(&mut c.consoles, console, |c| &c.id);
        Ok(())
    })
}

/// `PUT /vhost-user-blk/{id}`: adds a vhost-user-blk disk or changes its socket. The back
/// end is connected at start; a socket nobody serves then fails the start.
pub fn put_vhost_user_blk(config: &mut VmConfig, device: VhostUserBlk) -> Result<(), ApiResponse> {
    let device = VhostUserBlkConfig {
        id: device.id,
        socket: device.socket.into(),
    };
    edit(config, |c| {
        upsert(&mut c.vhost_user_blks, device, |v| &v.id);
        Ok(())
    })
}

/// `PUT /vhost-user-net/{id}`: adds a vhost-user-net interface or changes it. The back end
/// is connected at start; a socket nobody serves then fails the start.
pub fn put_vhost_user_net(config: &mut VmConfig, device: VhostUserNet) -> Result<(), ApiResponse> {
    let mac = device
        .mac
        .map(|m| m.parse::<MacAddr>())
        .transpose()
        .map_err(|e| bad(format!("mac: {e}")))?;
    let device = VhostUserNetConfig {
        id: device.id,
        socket: device.socket.into(),
        mac,
    };
    edit(config, |c| {
        upsert(&mut c.vhost_user_nets, device, |v| &v.id);
        Ok(())
    })
}

/// `PUT /vhost-user-fs/{id}`: adds a vhost-user-fs device or changes it. A bad tag is a 400;
/// the back end is connected at start, where a socket nobody serves fails the start.
pub fn put_vhost_user_fs(config: &mut VmConfig, device: VhostUserFs) -> Result<(), ApiResponse> {
    let tag = device
        .tag
        .parse::<FsTag>()
        .map_err(|e| bad(format!("tag: {e}")))?;
    let device = VhostUserFsConfig {
        id: device.id,
        socket: device.socket.into(),
        tag,
    };
    edit(config, |c| {
        upsert(&mut c.vhost_user_fs, device, |v| &v.id);
        Ok(())
    })
}

/// `PUT /vsock`: sets the vsock device (Firecracker's fields; `vsock_id` names it).
pub fn put_vsock(config: &mut VmConfig, vsock: Vsock) -> Result<(), ApiResponse> {
    let vsock = VsockConfig {
        id: vsock
            .vsock_id
            .unwrap_or_else(devices::virtio::vsock::default_id),
        guest_cid: u64::from(vsock.guest_cid),
        uds_path: vsock.uds_path.into(),
    };
    edit(config, |c| {
        c.vsock = Some(vsock);
        Ok(())
    })
}

/// `PUT /numa`: replaces the guest's NUMA nodes (an empty list removes them). The nodes
/// must fit the machine as configured (vCPUs, memory): set `/machine-config` first; to
/// change both, remove the nodes, change the machine, then put the new nodes.
pub fn put_numa(config: &mut VmConfig, numa: NumaConfig) -> Result<(), ApiResponse> {
    let nodes = numa
        .nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| numa_node(i, n))
        .collect::<Result<Vec<_>, _>>()?;
    edit(config, |c| {
        c.numa = nodes;
        Ok(())
    })
}

fn numa_node(index: usize, n: NumaNode) -> Result<crate::config::NumaNode, ApiResponse> {
    let mib = n.mem_size_mib;
    let memory = mib.checked_mul(1 << 20).map(ByteSize).ok_or_else(|| {
        bad(format!(
            "nodes[{index}].mem_size_mib: {mib} MiB is too large"
        ))
    })?;
    let mut cpus = n.cpus.unwrap_or_default();
    cpus.sort_unstable();
    cpus.dedup();
    Ok(crate::config::NumaNode {
        node: n.node_id,
        cpus: CpuList(cpus),
        memory,
        host_node: n.host_node,
        distances: n
            .distances
            .unwrap_or_default()
            .into_iter()
            .map(|d| NodeDistance {
                node: d.node_id,
                distance: d.distance,
            })
            .collect(),
        hugepages: n.hugepages.unwrap_or(false),
    })
}

/// Whether a kernel is configured, for `InstanceStart`.
pub fn check_bootable(config: &VmConfig) -> Result<&Path, ApiResponse> {
    config
        .boot
        .kernel
        .as_deref()
        .ok_or_else(|| bad("no kernel is configured: PUT /boot-source before InstanceStart"))
}

#[cfg(test)]
mod tests;
