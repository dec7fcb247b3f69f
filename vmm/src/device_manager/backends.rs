//! Opens the host side of each configured virtio device: disk images, TAPs, console
//! backends. Everything here fails on the user's input (a path, a name, a permission), so
//! errors carry the device's id and read as one line.

use devices::virtio::block::{Block, BlockError};
use devices::virtio::console::{Console, ConsoleError};
use devices::virtio::gpu::{Gpu, GpuBackend};
use devices::virtio::input::Input;
use devices::virtio::net::Net;
use devices::virtio::vhost_user::{
    VhostUserBlkConfig, VhostUserDevice, VhostUserFsConfig, VhostUserGpuKind, VhostUserKind,
    VhostUserNetKind,
};
use devices::virtio::vsock::Vsock;
use devices::virtio::VirtioDevice;

use super::DeviceError;
use crate::config::VmConfig;

fn open_error(kind: &'static str, id: &str, e: impl std::fmt::Display, user: bool) -> DeviceError {
    DeviceError::Open {
        kind,
        id: id.to_string(),
        reason: e.to_string(),
        user,
    }
}

/// A device opened on the host, with its id.
pub type Opened = (String, Box<dyn VirtioDevice>);

/// Every virtio device of `config` with its id: disks, then vhost-user-blk disks, then
/// network interfaces, then vhost-user-net interfaces, then vhost-user-fs devices, then
/// consoles, each in the order given, then the vsock device, then input devices in the
/// order given, then the GPU (built in or served by a vhost-user back end).
pub fn open(config: &VmConfig) -> Result<Vec<Opened>, DeviceError> {
    let mut opened: Vec<Opened> = Vec::new();
    for disk in &config.disks {
        let block = Block::new(disk.clone()).map_err(|e| {
            let user = !matches!(e, BlockError::EventFd { .. } | BlockError::Thread { .. });
            open_error("disk", &disk.id, e, user)
        })?;
        opened.push((disk.id.clone(), Box::new(block)));
    }
    for v in &config.vhost_user_blks {
        opened.push(vhost_user::<VhostUserBlkConfig>(
            "vhost-user-blk",
            &v.id,
            v.clone(),
        )?);
    }
    for net in &config.nets {
        let device = Net::new(net.clone()).map_err(|e| {
            let user = e.is_user_error();
            open_error("net", &net.id, e, user)
        })?;
        opened.push((net.id.clone(), Box::new(device)));
    }
    for v in &config.vhost_user_nets {
        opened.push(vhost_user::<VhostUserNetKind>(
            "vhost-user-net",
            &v.id,
            v.clone(),
        )?);
    }
    for v in &config.vhost_user_fs {
        opened.push(vhost_user::<VhostUserFsConfig>(
            "vhost-user-fs",
            &v.id,
            v.clone(),
        )?);
    }
    for console in &config.consoles {
        let device = Console::new(console).map_err(|e| {
            let user = !matches!(e, ConsoleError::EventFd { .. });
            open_error("console", &console.id, e, user)
        })?;
        opened.push((console.id.clone(), Box::new(device)));
    }
    if let Some(vsock) = &config.vsock {
        let device =
            Vsock::new(vsock).map_err(|e| open_error("vsock", &vsock.id, &e, e.is_user_error()))?;
        opened.push((vsock.id.clone(), Box::new(device)));
    }
    for input in &config.inputs {
        opened.push((input.id.clone(), Box::new(Input::new(input))));
    }
    if let Some(gpu) = &config.gpu {
        opened.push(match gpu.backend {
            GpuBackend::Builtin => (gpu.id.clone(), Box::new(Gpu::new(gpu.clone()))),
            GpuBackend::VhostUser => {
                vhost_user::<VhostUserGpuKind>("vhost-user-gpu", &gpu.id, gpu.clone())?
            }
        });
    }
    Ok(opened)
}

/// A vhost-user device of kind `C` (`what` in errors), connected to its back end.
fn vhost_user<C: VhostUserKind>(
    what: &'static str,
    id: &str,
    config: impl Into<C>,
) -> Result<Opened, DeviceError> {
    let device = VhostUserDevice::<C>::new(config)
        .map_err(|e| open_error(what, id, &e, e.is_user_error()))?;
    Ok((id.to_string(), Box::new(device)))
}
