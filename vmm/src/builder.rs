//! Turns a validated `VmConfig` into a machine ready to run, in one sequence: KVM, memory,
//! the VM, what boots, devices, vCPUs, the event loop.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use devices::virtio::mmio::VirtioSubscriber;
use devices::ExitSignal;
use event_manager::{EventManager, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VmFd};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use memory::{GuestMemoryMmap, MemoryLayout};
use vm_memory::GuestAddress;

use acpi_tables::Aml;

use crate::arch::x86_64::acpi::{self, AcpiError, AcpiInput};
use crate::arch::x86_64::{bootparams, layout, mptable, regs};
use crate::config::distance_matrix;
use crate::config::{ConfigError, SerialOutput, VmConfig};
use crate::control::ControlQueue;
use crate::device_manager::allocator::DeviceSlot;
use crate::device_manager::allocator::ResourceAllocator;
use crate::device_manager::{DeviceError, DeviceManager, Plan};
use crate::loader::{self, LoadError};
use crate::machine::{Machine, Subscriber};
use crate::persist::SnapshotBook;
use crate::signals::SignalWatcher;
use crate::stdin::{RawTerminal, SerialInput};
use crate::vstate::affinity::{self, AffinityError};
use crate::vstate::vcpu::{self, Vcpu, VcpuContext, VcpuError, VcpuSetup};
use crate::vstate::vm::{self, VmError};

/// Errors building a machine.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Affinity(#[from] AffinityError),
    #[error("cannot write boot structures: {0}")]
    Boot(String),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error("cannot read KVM's supported CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// A snapshot's file could not be read or is not valid.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// A snapshot's files do not belong together.
    #[error("{0}")]
    SnapshotMismatch(String),
}

impl BuildError {
    /// Whether the user's input is at fault (a bad flag, file or host setup) rather than
    /// petrel: those exit with status 2.
    pub fn is_user_error(&self) -> bool {
        match self {
            BuildError::Config(_)
            | BuildError::Load(_)
            | BuildError::Memory(_)
            | BuildError::Affinity(_)
            | BuildError::Snapshot(_)
            | BuildError::SnapshotMismatch(_) => true,
            BuildError::Devices(e) => e.is_user_error(),
            BuildError::Vm(e) => matches!(
                e,
                VmError::KvmMissing
                    | VmError::KvmPermission
                    | VmError::TooManyVcpus { .. }
                    | VmError::ApiVersion(_)
                    | VmError::MissingCap(_)
            ),
            _ => false,
        }
    }
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

/// Builds the machine `config` describes.
pub fn build(config: &VmConfig) -> Result<Machine, BuildError> {
    config.validate()?;
    let machine = &config.machine;
    // What boots is loaded before KVM is touched, so bad files are reported as such even on
    // a host without KVM.
    let layout = config.memory_layout()?;
    let mem = allocate_memory(config, &layout)?;
    let mut allocator = ResourceAllocator::new(memory::MMIO32_START);
    let plan = Plan::new(config, &mut allocator)?;
    let slots = plan.virtio_slots();
    let cmdline = guest_cmdline(config, &slots);
    tracing::debug!(%cmdline, "guest command line");
    let acpi_rsdp = match machine.acpi {
        true => Some(write_acpi_tables(&mem, &layout, config, &slots, plan.ged)?),
        false => None,
    };
    let entry = load_guest(&mem, &layout, config, &cmdline, acpi_rsdp)?;
    let kvm = vm::open_kvm(machine.vcpus)?;
    let vm = vm::create_vm(&kvm, &mem, machine.track_dirty_pages)?;

    let exit = Arc::new(ExitSignal::new().map_err(io_err("cannot create the exit event"))?);
    let devices = DeviceManager::new(&vm, &exit, config, &mem, plan)?;
    let mut vcpus = create_vcpus(&kvm, &vm, config, entry)?;
    pin_vcpus(&mut vcpus, config)?;
    assemble(Parts {
        config: config.clone(),
        exit,
        devices,
        vcpus,
        vm,
        layout,
        memory: mem,
        book: SnapshotBook::default(),
        start_paused: false,
    })
}

/// Fresh guest memory for `config`, laid out as `layout`: anonymous or shared (memfd), each
/// NUMA node's memory placed on the host as configured (bound before anything touches it).
pub(crate) fn allocate_memory(
    config: &VmConfig,
    layout: &MemoryLayout,
) -> Result<GuestMemoryMmap, memory::MemoryError> {
    let placement = config.memory_placement();
    if config.needs_shared_memory() {
        layout.allocate_shared_placed(&placement)
    } else {
        layout.allocate_placed(&placement)
    }
}

/// Pins each vCPU of a node with a `host_node` to that host node's CPUs (applied when its
/// thread starts).
pub(crate) fn pin_vcpus(vcpus: &mut [Vcpu], config: &VmConfig) -> Result<(), AffinityError> {
    let masks = affinity::vcpu_affinity(config, &memory::numa::HostTopology::default())?;
    for (vcpu, mask) in vcpus.iter_mut().zip(masks) {
        vcpu.set_affinity(mask);
    }
    Ok(())
}

/// What a machine is made of, built or restored.
pub(crate) struct Parts {
    pub config: VmConfig,
    pub exit: Arc<ExitSignal>,
    pub devices: DeviceManager,
    pub vcpus: Vec<Vcpu>,
    pub vm: VmFd,
    pub layout: MemoryLayout,
    pub memory: GuestMemoryMmap,
    pub book: SnapshotBook,
    pub start_paused: bool,
}

/// The machine of `parts`, with its event loop: signals, the virtio devices and, with the
/// serial console on a terminal, the keyboard.
pub(crate) fn assemble(parts: Parts) -> Result<Machine, BuildError> {
    let Parts {
        config,
        exit,
        devices,
        vcpus,
        vm,
        layout,
        memory,
        book,
        start_paused,
    } = parts;
    let mut event_manager: EventManager<Subscriber> =
        EventManager::new().map_err(BuildError::EventLoop)?;
    let signals = SignalWatcher::install(exit.clone()).map_err(io_err("cannot watch signals"))?;
    event_manager.add_subscriber(Arc::new(Mutex::new(signals)));
    for handle in &devices.virtio {
        let subscriber = VirtioSubscriber::new(handle.transport.clone());
        event_manager.add_subscriber(Arc::new(Mutex::new(subscriber)));
    }
    let terminal = match config.serial {
        SerialOutput::Stdout => RawTerminal::enter(),
        _ => None,
    };
    if terminal.is_some() {
        let input = SerialInput::new(devices.serial.clone())
            .map_err(io_err("cannot set up serial input"))?;
        event_manager.add_subscriber(Arc::new(Mutex::new(input)));
    }

    Ok(Machine {
        vcpus,
        ctx: VcpuContext {
            pio: Arc::new(devices.pio),
            mmio: Arc::new(devices.mmio),
            exit,
            stop: Arc::new(AtomicBool::new(false)),
            pause: Arc::default(),
            exits: (0..config.machine.vcpus)
                .map(|_| vcpu::ExitCounters::default())
                .collect(),
        },
        event_manager,
        terminal,
        virtio: devices.virtio,
        ged: devices.ged,
        i8042: devices.i8042,
        rtc: devices.rtc,
        serial: devices.serial,
        serial_log: devices.serial_log,
        config,
        control: Some(ControlQueue::new().map_err(io_err("cannot create the control queue"))?),
        book,
        start_paused,
        vm: Arc::new(vm),
        layout,
        memory,
    })
}

/// Writes the ACPI tables describing the machine (with a NUMA topology, its SRAT and SLIT
/// too): the virtio devices at `slots`, the Generic Event Device at `ged`. Returns the
/// RSDP's address.
fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    config: &VmConfig,
    slots: &[DeviceSlot],
    ged: Option<DeviceSlot>,
) -> Result<u64, BuildError> {
    let vcpus = config.machine.vcpus;
    let numa = match config.numa.is_empty() {
        true => None,
        false => {
            let matrix = distance_matrix(&config.numa).map_err(ConfigError::from)?;
            let srat = acpi::numa::srat(layout, vcpus, |cpu| config.vcpu_node(cpu));
            Some((srat, acpi::numa::slit(&matrix)))
        }
    };
    let extra: Vec<&dyn Aml> = match &numa {
        Some((srat, slit)) => vec![srat, slit],
        None => Vec::new(),
    };
    let input = AcpiInput {
        vcpus,
        virtio: slots,
        ged,
        extra: &extra,
    };
    Ok(acpi::setup(mem, &input)?)
}

/// The guest's command line: the configured one plus, without ACPI, a `virtio_mmio.device=`
/// entry per virtio device so Linux finds them. With ACPI the DSDT describes them, and
/// listing them on the command line too would make Linux register each twice.
fn guest_cmdline(config: &VmConfig, slots: &[DeviceSlot]) -> String {
    let mut cmdline = config.cmdline().to_string();
    if let Some(root) = config.root_param() {
        cmdline.push(' ');
        cmdline.push_str(&root);
    }
    // A kernel told `acpi=off` ignores the DSDT: it finds its devices on the command line.
    let guest_reads_acpi = !cmdline.split_whitespace().any(|t| t == "acpi=off");
    if config.machine.acpi && guest_reads_acpi {
        return cmdline;
    }
    for slot in slots {
        cmdline.push(' ');
        cmdline.push_str(&slot.virtio_cmdline_param());
    }
    cmdline
}

/// The bundled demo guest as a file the loader can read.
fn demo_guest() -> Result<File, BuildError> {
    // SAFETY: the name is a valid NUL-terminated string and flags are valid; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"petrel-demo-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io_err("cannot create the demo guest image")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(resources::TEST_GUEST)
        .map_err(io_err("cannot write the demo guest image"))?;
    Ok(file)
}

/// Loads the kernel (or the demo guest), initrd and command line, and writes the zero page
/// (pointing at the ACPI tables' `acpi_rsdp`, if any), boot page tables and MP table.
/// Returns the entry point.
fn load_guest(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    config: &VmConfig,
    cmdline: &str,
    acpi_rsdp: Option<u64>,
) -> Result<u64, BuildError> {
    let kernel = match &config.boot.kernel {
        Some(path) => loader::load_kernel(mem, layout, path)?,
        None => loader::load_kernel_file(
            mem,
            layout,
            &mut demo_guest()?,
            Path::new("<bundled demo guest>"),
        )?,
    };
    let initrd = match &config.boot.initrd {
        Some(path) => Some(loader::load_initrd(mem, layout, &kernel, path)?),
        None => None,
    };
    let cmdline_addr = loader::load_cmdline(mem, cmdline, kernel.cmdline_max())?;
    let e820 = bootparams::e820_map(layout);
    let params = bootparams::zero_page(&bootparams::ZeroPageInput {
        setup_header: kernel.setup_header,
        cmdline_addr,
        initrd,
        e820: &e820,
        acpi_rsdp,
    })
    .map_err(|e| BuildError::Boot(e.to_string()))?;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| BuildError::Boot(e.to_string()))?;
    regs::write_boot_tables(mem).map_err(|e| BuildError::Boot(e.to_string()))?;
    mptable::setup(mem, config.machine.vcpus).map_err(|e| BuildError::Boot(e.to_string()))?;
    Ok(kernel.entry)
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    entry: u64,
) -> Result<Vec<Vcpu>, BuildError> {
    vcpu::install_kick_handler()?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(BuildError::Cpuid)?;
    let tsc_deadline = vm.check_extension(Cap::TscDeadlineTimer);
    (0..config.machine.vcpus)
        .map(|id| {
            let setup = VcpuSetup {
                supported_cpuid: &supported,
                vcpus: config.machine.vcpus,
                template: config.machine.cpu_template,
                tsc_deadline,
                entry: (id == 0).then_some(entry),
            };
            Ok(Vcpu::new(vm, id, &setup)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> DeviceSlot {
        DeviceSlot {
            base: 0xc000_0000,
            len: 0x1000,
            irq: 5,
        }
    }

    #[test]
    fn with_acpi_devices_stay_off_the_command_line() {
        let config = VmConfig::default();
        assert!(config.machine.acpi);
        assert_eq!(guest_cmdline(&config, &[slot()]), config.cmdline());
    }

    #[test]
    fn without_acpi_each_device_is_on_the_command_line() {
        let mut config = VmConfig::default();
        config.machine.acpi = false;
        assert_eq!(
            guest_cmdline(&config, &[slot()]),
            format!("{} virtio_mmio.device=4K@0xc0000000:5", config.cmdline())
        );
    }

    #[test]
    fn a_guest_told_acpi_off_finds_its_devices_on_the_command_line() {
        let mut config = VmConfig::default();
        config.boot.cmdline = Some("console=ttyS0 acpi=off".into());
        assert_eq!(
            guest_cmdline(&config, &[slot()]),
            "console=ttyS0 acpi=off virtio_mmio.device=4K@0xc0000000:5"
        );
        config.boot.cmdline = Some("acpi=offline".into());
        assert_eq!(guest_cmdline(&config, &[slot()]), "acpi=offline");
    }
}
