//! Creates the devices a configuration asks for and puts them on the buses, with their
//! interrupts wired to KVM as irqfds.

use std::sync::{Arc, Mutex};

pub mod allocator;
mod backends;
pub mod ged;
pub mod persist;
pub mod virtio;

use devices::legacy::{
    host_clock, PowerManagement, Rtc, Serial, I8042, I8042_IRQ, I8042_PORT, I8042_PORT_LEN,
    PM_PORT, PM_PORT_LEN, RTC_PORT, RTC_PORT_LEN, SERIAL_IRQ, SERIAL_PORT, SERIAL_PORT_LEN,
};
use devices::legacy::{LoggedOutput, SharedSerialLog};
use devices::{Bus, BusDevice, BusError, ExitSignal};
use kvm_ioctls::VmFd;
use memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::VmConfig;
use allocator::{DeviceSlot, ResourceAllocator};
use ged::GedHandle;

/// Errors creating devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The serial port's output could not be opened.
    #[error(transparent)]
    Serial(#[from] devices::legacy::SerialError),
    /// An interrupt could not be created or registered with KVM.
    #[error("cannot wire IRQ {irq}: {reason}")]
    Irq { irq: u32, reason: String },
    /// Two devices claim the same addresses.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// Device resources ran out.
    #[error(transparent)]
    Alloc(#[from] allocator::AllocError),
    /// The host side of a device (its disk image, TAP or socket) could not be opened.
    /// The device's own error names the path, TAP or socket at fault.
    #[error("{reason}")]
    Open {
        kind: &'static str,
        id: String,
        reason: String,
        /// Whether the user can fix it (a path, a name, a permission), or the host failed.
        user: bool,
    },
    /// A saved device could not be rebuilt.
    #[error("cannot restore {what}: {reason}")]
    Restore { what: &'static str, reason: String },
    /// A virtio device could not be put on the machine.
    #[error("virtio device {id}: {reason}")]
    Virtio { id: String, reason: String },
}

/// The devices of a machine, on their buses.
pub struct DeviceManager {
    /// The port-I/O bus.
    pub pio: Bus,
    /// The MMIO bus.
    pub mmio: Bus,
    /// The serial console, for host input.
    pub serial: Arc<Mutex<Serial>>,
    /// What the guest wrote to the serial console, for the API.
    pub serial_log: SharedSerialLog,
    /// The i8042, for Ctrl+Alt+Del.
    pub i8042: Arc<Mutex<I8042>>,
    /// The RTC/CMOS, for snapshots.
    pub rtc: Arc<Mutex<Rtc>>,
    /// The virtio devices, in the order the guest sees them.
    pub virtio: Vec<virtio::VirtioHandle>,
    /// The Generic Event Device of the power button (with ACPI).
    pub ged: Option<GedHandle>,
}

/// The devices a configuration asks for, opened on the host, each with its place in the
/// machine.
pub struct Plan {
    /// The virtio devices, in the order the guest will see them.
    pub virtio: Vec<virtio::PlannedDevice>,
    /// Where the power button's Generic Event Device goes (with ACPI).
    pub ged: Option<DeviceSlot>,
}

impl Plan {
    /// Opens every device `config` asks for and places it.
    pub fn new(config: &VmConfig, allocator: &mut ResourceAllocator) -> Result<Self, DeviceError> {
        let virtio = virtio::open_devices(config, allocator)?;
        let ged = match config.machine.acpi {
            true => Some(ged::allocate(allocator)?),
            false => None,
        };
        Ok(Plan { virtio, ged })
    }

    /// The virtio devices' slots, in order.
    pub fn virtio_slots(&self) -> Vec<DeviceSlot> {
        self.virtio.iter().map(|p| p.slot).collect()
    }
}

/// A device with its port range.
type PortDevice = (Arc<Mutex<dyn BusDevice>>, u64, u64);

/// An interrupt line: an `EventFd` registered with KVM for `irq`.
fn irq_line(vm: &VmFd, irq: u32) -> Result<EventFd, DeviceError> {
    let err = |reason: String| DeviceError::Irq { irq, reason };
    let evt = EventFd::new(EFD_NONBLOCK).map_err(|e| err(e.to_string()))?;
    vm.register_irqfd(&evt, irq)
        .map_err(|e| err(e.to_string()))?;
    Ok(evt)
}

/// The legacy devices, before they are put on the port bus.
struct Legacy {
    serial: Arc<Mutex<Serial>>,
    serial_log: SharedSerialLog,
    i8042: Arc<Mutex<I8042>>,
    rtc: Arc<Mutex<Rtc>>,
}

impl DeviceManager {
    /// Creates the legacy devices (COM1, the i8042, the RTC/CMOS and the power-management
    /// register), attaches the virtio devices opened before and, with ACPI, the Generic Event
    /// Device.
    pub fn new(
        vm: &VmFd,
        exit: &Arc<ExitSignal>,
        config: &VmConfig,
        mem: &GuestMemoryMmap,
        plan: Plan,
    ) -> Result<Self, DeviceError> {
        let serial_log = SharedSerialLog::default();
        let output = LoggedOutput::new(config.serial.open()?, serial_log.clone());
        let legacy = Legacy {
            serial: Arc::new(Mutex::new(Serial::new(
                irq_line(vm, SERIAL_IRQ)?,
                Box::new(output),
            ))),
            serial_log,
            i8042: Arc::new(Mutex::new(I8042::new(
                exit.clone(),
                irq_line(vm, I8042_IRQ)?,
            ))),
            rtc: Arc::new(Mutex::new(Rtc::new(config.machine.memory.0))),
        };
        let mut mmio = Bus::new();
        let virtio = plan
            .virtio
            .into_iter()
            .map(|p| virtio::attach(vm, mem, &mut mmio, p, config.machine.track_dirty_pages))
            .collect::<Result<_, _>>()?;
        let ged = plan
            .ged
            .map(|slot| ged::attach(vm, &mut mmio, slot))
            .transpose()?;
        Self::assemble(exit, legacy, mmio, virtio, ged)
    }

    /// Rebuilds every device of `state` as it was saved; the serial console writes where
    /// `config` says now.
    pub fn restore(
        vm: &VmFd,
        exit: &Arc<ExitSignal>,
        config: &VmConfig,
        mem: &GuestMemoryMmap,
        state: &persist::DevicesState,
    ) -> Result<Self, DeviceError> {
        let serial_log = SharedSerialLog::default();
        let output = LoggedOutput::new(config.serial.open()?, serial_log.clone());
        let serial = Serial::restore(&state.serial, irq_line(vm, SERIAL_IRQ)?, Box::new(output))?;
        let i8042 =
            I8042::restore(&state.i8042, exit.clone(), irq_line(vm, I8042_IRQ)?).map_err(|e| {
                DeviceError::Restore {
                    what: "the i8042",
                    reason: e.to_string(),
                }
            })?;
        let rtc = Rtc::restore(&state.rtc, host_clock).map_err(|e| DeviceError::Restore {
            what: "the RTC",
            reason: e.to_string(),
        })?;
        let legacy = Legacy {
            serial: Arc::new(Mutex::new(serial)),
            serial_log,
            i8042: Arc::new(Mutex::new(i8042)),
            rtc: Arc::new(Mutex::new(rtc)),
        };
        let mut mmio = Bus::new();
        let virtio = state
            .virtio
            .iter()
            .map(|s| virtio::restore(vm, mem, &mut mmio, s, config.machine.track_dirty_pages))
            .collect::<Result<_, _>>()?;
        let ged = state
            .ged
            .as_ref()
            .map(|saved| ged::restore(vm, &mut mmio, saved))
            .transpose()?;
        Self::assemble(exit, legacy, mmio, virtio, ged)
    }

    /// Puts the legacy devices on the port bus beside the virtio devices and the GED on
    /// `mmio`.
    fn assemble(
        exit: &Arc<ExitSignal>,
        legacy: Legacy,
        mmio: Bus,
        virtio: Vec<virtio::VirtioHandle>,
        ged: Option<GedHandle>,
    ) -> Result<Self, DeviceError> {
        let pm = Arc::new(Mutex::new(PowerManagement::new(exit.clone())));
        let mut pio = Bus::new();
        let devices: [PortDevice; 4] = [
            (legacy.serial.clone(), SERIAL_PORT, SERIAL_PORT_LEN),
            (legacy.i8042.clone(), I8042_PORT, I8042_PORT_LEN),
            (legacy.rtc.clone(), RTC_PORT, RTC_PORT_LEN),
            (pm, PM_PORT, PM_PORT_LEN),
        ];
        for (dev, base, len) in devices {
            pio.insert(dev, base, len)?;
        }
        Ok(Self {
            pio,
            mmio,
            virtio,
            ged,
            serial: legacy.serial,
            serial_log: legacy.serial_log,
            i8042: legacy.i8042,
            rtc: legacy.rtc,
        })
    }

    /// Every device's state. The vCPUs must be paused.
    pub fn save(
        serial: &Mutex<Serial>,
        i8042: &Mutex<I8042>,
        rtc: &Mutex<Rtc>,
        virtio: &[virtio::VirtioHandle],
        ged: Option<&GedHandle>,
    ) -> Result<persist::DevicesState, DeviceError> {
        Ok(persist::DevicesState {
            serial: serial.lock().unwrap_or_else(|p| p.into_inner()).save(),
            i8042: i8042.lock().unwrap_or_else(|p| p.into_inner()).save(),
            rtc: rtc.lock().unwrap_or_else(|p| p.into_inner()).save(),
            virtio: virtio
                .iter()
                .map(persist::save_virtio)
                .collect::<Result<_, _>>()?,
            ged: ged.map(ged::save),
        })
    }
}

impl DeviceError {
    /// Whether the user's input is at fault: an output file, a disk image, a TAP or a
    /// socket path that cannot be used, or more devices than the machine has room for.
    pub fn is_user_error(&self) -> bool {
        match self {
            DeviceError::Serial(_) | DeviceError::Alloc(_) => true,
            DeviceError::Open { user, .. } => *user,
            _ => false,
        }
    }
}
