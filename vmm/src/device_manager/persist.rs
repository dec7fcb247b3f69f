//! Saving every device of a machine and building them again from what was saved: the
//! legacy devices' registers, the Generic Event Device's place and status and, per virtio
//! device, its place on the bus, the transport's registers and queues, and the device's own
//! state.

use devices::legacy::{I8042State, RtcState, SerialState};
use devices::virtio::block::{Block, BlockState};
use devices::virtio::console::{Console, ConsoleState};
use devices::virtio::gpu::{Gpu, GpuState};
use devices::virtio::input::{Input, InputState};
use devices::virtio::mmio::{MmioState, MmioTransport};
use devices::virtio::net::{Net, NetState};
use devices::virtio::vhost_user::{
    VhostUserBlk, VhostUserBlkConfig, VhostUserDevice, VhostUserError, VhostUserKind, VhostUserNet,
    VhostUserNetKind, VhostUserState,
};
use devices::virtio::vsock::{Vsock, VsockState};
use devices::virtio::VirtioDevice;
use serde::{Deserialize, Serialize};

use super::allocator::DeviceSlot;
use super::virtio::VirtioHandle;
use super::DeviceError;
use crate::config::VmConfig;

/// A virtio device's own state, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Block(BlockState),
    Net(NetState),
    Console(ConsoleState),
    Vsock(VsockState),
    Input(InputState),
    Gpu(GpuState),
    VhostUserBlk(VhostUserState<VhostUserBlkConfig>),
    VhostUserNet(VhostUserState<VhostUserNetKind>),
}

impl DeviceState {
    /// The device's kind, as errors name it.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "disk",
            DeviceState::Net(_) => "net",
            DeviceState::Console(_) => "console",
            DeviceState::Vsock(_) => "vsock",
            DeviceState::Input(_) => "input",
            DeviceState::Gpu(_) => "gpu",
            DeviceState::VhostUserBlk(_) => "vhost-user-blk",
            DeviceState::VhostUserNet(_) => "vhost-user-net",
        }
    }
}

/// One virtio device as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioState {
    /// The device's id from the configuration.
    pub id: String,
    /// Its MMIO window and interrupt.
    pub base: u64,
    pub len: u64,
    pub irq: u32,
    /// The transport's registers and queues.
    pub transport: MmioState,
    /// The device's own state.
    pub device: DeviceState,
}

impl VirtioState {
    /// Where the device sat.
    pub fn slot(&self) -> DeviceSlot {
        DeviceSlot {
            base: self.base,
            len: self.len,
            irq: self.irq,
        }
    }
}

/// Every device of a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesState {
    pub serial: SerialState,
    pub i8042: I8042State,
    pub rtc: RtcState,
    /// In the order the guest sees them.
    pub virtio: Vec<VirtioState>,
    /// The power button's Generic Event Device, which machines with ACPI have. Snapshots of
    /// petrel before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ged: Option<super::ged::GedSaved>,
}

impl DevicesState {
    /// Puts this host's side of every virtio device into the saved states: the disk image,
    /// TAP device, console output and vsock socket that `config` (the machine as configured
    /// here) gives the device of the same id. What the guest sees stays as saved (a disk's
    /// read-only flag and serial, a MAC, a CID). A live migration's destination opens its own
    /// files this way, never paths its peer named; a saved device that `config` lacks, or
    /// has as another kind, is refused.
    pub fn use_host_side(&mut self, config: &VmConfig) -> Result<(), String> {
        for v in &mut self.virtio {
            let (id, kind) = (v.id.as_str(), v.device.kind());
            let missing = || format!("device {id} ({kind}) is not configured here");
            match &mut v.device {
                DeviceState::Block(s) => {
                    let here = config
                        .disks
                        .iter()
                        .find(|d| d.id == id)
                        .ok_or_else(missing)?;
                    s.config.path = here.path.clone();
                    s.config.rate_limiter = here.rate_limiter;
                }
                DeviceState::Net(s) => {
                    let here = config
                        .nets
                        .iter()
                        .find(|n| n.id == id)
                        .ok_or_else(missing)?;
                    s.config.tap = here.tap.clone();
                    s.config.rx_rate_limiter = here.rx_rate_limiter;
                    s.config.tx_rate_limiter = here.tx_rate_limiter;
                }
                DeviceState::Console(s) => {
                    let here = config
                        .consoles
                        .iter()
                        .find(|c| c.id == id)
                        .ok_or_else(missing)?;
                    s.config.output = here.output.clone();
                }
                DeviceState::Vsock(s) => {
                    let here = config
                        .vsock
                        .iter()
                        .find(|c| c.id == id)
                        .ok_or_else(missing)?;
                    s.config.uds_path = here.uds_path.clone();
                }
                DeviceState::Input(_) => {
                    config
                        .inputs
                        .iter()
                        .find(|i| i.id == id)
                        .ok_or_else(missing)?;
                }
                DeviceState::Gpu(_) => {
                    config.gpu.iter().find(|g| g.id == id).ok_or_else(missing)?;
                }
                DeviceState::VhostUserBlk(s) => use_socket_here(config, id, kind, &mut s.config)?,
                DeviceState::VhostUserNet(s) => use_socket_here(config, id, kind, &mut s.config)?,
            }
        }
        Ok(())
    }
}

/// A saved vhost-user device takes the back-end socket `config` gives the device of the
/// same id and kind.
fn use_socket_here(
    config: &VmConfig,
    id: &str,
    kind: &str,
    saved: &mut impl VhostUserKind,
) -> Result<(), String> {
    let (_, _, socket) = config
        .vhost_user_devices()
        .find(|(k, i, _)| *k == kind && i.as_str() == id)
        .ok_or_else(|| format!("device {id} ({kind}) is not configured here"))?;
    saved.set_socket(socket.clone());
    Ok(())
}

/// Saves one virtio device: the device first (a disk finishes its requests in flight and
/// puts them on the used ring), then the transport, so the saved queues hold everything.
/// The vCPUs must be paused.
pub fn save_virtio(handle: &VirtioHandle) -> Result<VirtioState, DeviceError> {
    let mut transport = handle
        .transport
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The transport quiesces the device first, so the device is saved at rest.
    let transport_state = transport.save();
    let device = save_device(transport.device_mut()).ok_or_else(|| DeviceError::Virtio {
        id: handle.id.clone(),
        reason: "this kind of device cannot be saved".into(),
    })?;
    Ok(VirtioState {
        id: handle.id.clone(),
        base: handle.slot.base,
        len: handle.slot.len,
        irq: handle.slot.irq,
        transport: transport_state,
        device,
    })
}

fn save_device(device: &mut dyn VirtioDevice) -> Option<DeviceState> {
    let any = device.as_any_mut();
    if let Some(d) = any.downcast_mut::<Block>() {
        return Some(DeviceState::Block(d.save()));
    }
    if let Some(d) = any.downcast_ref::<Net>() {
        return Some(DeviceState::Net(d.save()));
    }
    if let Some(d) = any.downcast_ref::<Console>() {
        return Some(DeviceState::Console(d.save()));
    }
    if let Some(d) = any.downcast_ref::<Vsock>() {
        return Some(DeviceState::Vsock(d.save()));
    }
    if let Some(d) = any.downcast_ref::<Input>() {
        return Some(DeviceState::Input(d.save()));
    }
    if let Some(d) = any.downcast_ref::<VhostUserBlk>() {
        return Some(DeviceState::VhostUserBlk(d.save()));
    }
    if let Some(d) = any.downcast_ref::<VhostUserNet>() {
        return Some(DeviceState::VhostUserNet(d.save()));
    }
    any.downcast_ref::<Gpu>()
        .map(|d| DeviceState::Gpu(d.save()))
}

/// Opens the host side of a saved device again (its disk, TAP, sockets) and rebuilds it.
pub fn restore_device(id: &str, state: &DeviceState) -> Result<Box<dyn VirtioDevice>, DeviceError> {
    let err = |reason: String, user: bool| DeviceError::Open {
        kind: state.kind(),
        id: id.to_string(),
        reason,
        user,
    };
    let vu = |e: VhostUserError| err(e.to_string(), e.is_user_error());
    Ok(match state {
        DeviceState::Block(s) => Box::new(Block::restore(s).map_err(|e| err(e.to_string(), true))?),
        DeviceState::Net(s) => {
            Box::new(Net::restore(s).map_err(|e| err(e.to_string(), e.is_user_error()))?)
        }
        DeviceState::Console(s) => {
            Box::new(Console::restore(s).map_err(|e| err(e.to_string(), true))?)
        }
        DeviceState::Vsock(s) => {
            Box::new(Vsock::restore(s).map_err(|e| err(e.to_string(), e.is_user_error()))?)
        }
        DeviceState::Input(s) => Box::new(Input::restore(s).map_err(|e| err(e.to_string(), true))?),
        DeviceState::Gpu(s) => Box::new(Gpu::restore(s).map_err(|e| err(e.to_string(), true))?),
        DeviceState::VhostUserBlk(s) => restore_vhost_user(s).map_err(vu)?,
        DeviceState::VhostUserNet(s) => restore_vhost_user(s).map_err(vu)?,
    })
}

fn restore_vhost_user<C: VhostUserKind + Clone>(
    state: &VhostUserState<C>,
) -> Result<Box<dyn VirtioDevice>, VhostUserError> {
    Ok(Box::new(VhostUserDevice::restore(state)?))
}

/// The transport of a restored device, as it was saved.
pub fn restore_transport(
    id: &str,
    device: Box<dyn VirtioDevice>,
    mem: memory::GuestMemoryMmap,
    irqfd: vmm_sys_util::eventfd::EventFd,
    state: &MmioState,
) -> Result<MmioTransport, DeviceError> {
    MmioTransport::restore(device, mem, irqfd, state).map_err(|e| DeviceError::Virtio {
        id: id.to_string(),
        reason: format!("cannot restore the transport: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::legacy::{GedState, Rtc, Serial, I8042};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn state(ged: Option<super::super::ged::GedSaved>) -> DevicesState {
        let irq = || EventFd::new(EFD_NONBLOCK).unwrap();
        let exit = std::sync::Arc::new(devices::ExitSignal::new().unwrap());
        DevicesState {
            serial: Serial::new(irq(), Box::new(std::io::sink())).save(),
            i8042: I8042::new(exit, irq()).save(),
            rtc: Rtc::new(128 << 20).save(),
            virtio: Vec::new(),
            ged,
        }
    }

    #[test]
    fn a_pending_power_button_press_is_saved_and_read_back() {
        let saved = state(Some(super::super::ged::GedSaved {
            base: 0xc000_0000,
            len: 0x1000,
            irq: 5,
            device: GedState { status: 1 },
        }));
        let json = serde_json::to_value(&saved).unwrap();
        assert_eq!(json["ged"]["device"]["status"], 1);
        assert_eq!(serde_json::from_value::<DevicesState>(json).unwrap(), saved);
    }

    #[test]
    fn a_snapshot_from_before_the_ged_loads_without_one() {
        let mut json = serde_json::to_value(state(None)).unwrap();
        assert!(
            json.get("ged").is_none(),
            "nothing is written without a GED"
        );
        json.as_object_mut().unwrap().remove("ged");
        let loaded: DevicesState = serde_json::from_value(json).unwrap();
        assert_eq!(loaded.ged, None);
    }
}
