//! `VmConfig`: the one description of a machine. The CLI flags build it, `--config FILE`
//! reads it as JSON, and (in a later issue) the REST API fills it piece by piece.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod device_options;
mod numa;
mod options;
pub use device_options::parse_gpu;
pub use device_options::parse_input;
pub use device_options::{
    parse_console, parse_disk, parse_net, parse_vhost_user_blk, parse_vhost_user_fs,
    parse_vhost_user_net, parse_vsock,
};
pub use numa::{
    check_same_guest_topology, distance_matrix, parse_numa, CpuList, NodeDistance, NumaError,
    NumaNode, MAX_NUMA_NODES,
};
pub use options::Options;

/// The most vCPUs petrel starts: every APIC id must fit the MP table's 8-bit field, and
/// 255 is the broadcast id (the IOAPIC takes the id after the last vCPU).
pub const MAX_VCPUS: u32 = 254;

/// Errors in a configuration, each naming the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `vcpus` is out of range.
    #[error("vcpus must be between 1 and {max}, got {got}")]
    Vcpus { got: u32, max: u32 },
    /// A size could not be parsed.
    #[error("invalid size {0:?}: expected a number with an optional K, M, G or T suffix (bare numbers are MiB)")]
    Size(String),
    /// The memory size is outside what the machine supports.
    #[error("memory: {0}")]
    Memory(String),
    /// The serial option is not one of the accepted forms.
    #[error(transparent)]
    Serial(#[from] devices::legacy::SerialOutputError),
    /// The CPU template name is unknown.
    #[error("invalid cpu template {0:?}: expected host or minimal")]
    CpuTemplate(String),
    /// A device flag (`--disk`, `--net`, `--console`) is malformed.
    #[error("--{flag}: {reason}")]
    Option { flag: &'static str, reason: String },
    /// Two devices conflict (same id, same backend).
    #[error("conflicting devices: {0}")]
    Conflict(String),
    /// The NUMA topology is inconsistent.
    #[error(transparent)]
    Numa(#[from] NumaError),
    /// The config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// A size in bytes, written as `256M`, `1G`, `512` (MiB) and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for ByteSize {
    type Error = ConfigError;
    fn try_from(r: SizeRepr) -> Result<Self, ConfigError> {
        match r {
            SizeRepr::Bytes(b) => Ok(ByteSize(b)),
            SizeRepr::Text(s) => s.parse(),
        }
    }
}

impl FromStr for ByteSize {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let err = || ConfigError::Size(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let shift = match unit.trim().to_ascii_uppercase().as_str() {
            "B" => 0,
            "K" | "KB" | "KIB" => 10,
            "" | "M" | "MB" | "MIB" => 20,
            "G" | "GB" | "GIB" => 30,
            "T" | "TB" | "TIB" => 40,
            _ => return Err(err()),
        };
        n.checked_mul(1 << shift).map(ByteSize).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl From<ByteSize> for String {
    fn from(s: ByteSize) -> String {
        s.to_string()
    }
}

pub use devices::legacy::SerialOutput;

/// Which CPUID the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CpuTemplate {
    /// Everything KVM supports on this host.
    #[default]
    Host,
    /// The host's CPUID without features a guest must not rely on: CMPXCHG16B, XSAVE and
    /// the AVX family (see `arch::x86_64::cpuid`).
    Minimal,
}

impl FromStr for CpuTemplate {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "host" => Ok(Self::Host),
            "minimal" => Ok(Self::Minimal),
            _ => Err(ConfigError::CpuTemplate(s.to_string())),
        }
    }
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// An ELF `vmlinux` or a `bzImage`. None boots the bundled demo guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// An initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line. None uses [`DEFAULT_CMDLINE`] (or the demo's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The disk Linux mounts as its root file system (Firecracker's `is_root_device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootDisk>,
}

/// The root disk: it must be the first disk (the guest's `/dev/vda`), and petrel appends
/// `root=/dev/vda` (or `root=PARTUUID=...`) and `rw` or `ro` to the command line, as
/// Firecracker does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDisk {
    /// The id of the disk.
    pub disk: String,
    /// The root partition's UUID, when the disk is partitioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
}

/// The command line a Linux guest gets when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// The command line of the bundled demo guest.
pub const DEMO_CMDLINE: &str = "petrel.test=demo";

/// The machine's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest RAM.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// The CPUID template.
    #[serde(default)]
    pub cpu_template: CpuTemplate,
    /// Log the pages the guest and the VMM write, for incremental (Diff) snapshots.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_dirty_pages: bool,
    /// Guest RAM in a memfd mapped shared (another process may map it: a live migration on
    /// the same host hands it over instead of copying it); else anonymous private memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_memory: bool,
    /// Give the guest ACPI tables (RSDP, XSDT, FADT, MADT, DSDT). Without them the guest finds
    /// vCPUs in the MP table and virtio devices on the command line.
    #[serde(default = "default_acpi")]
    pub acpi: bool,
}

fn default_vcpus() -> u32 {
    1
}

fn default_acpi() -> bool {
    true
}

fn default_memory() -> ByteSize {
    ByteSize(128 << 20)
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpus: default_vcpus(),
            memory: default_memory(),
            cpu_template: CpuTemplate::default(),
            track_dirty_pages: false,
            shared_memory: false,
            acpi: default_acpi(),
        }
    }
}

/// The whole configuration of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// What to boot.
    #[serde(default)]
    pub boot: BootConfig,
    /// vCPUs, memory, CPU template.
    #[serde(default)]
    pub machine: MachineConfig,
    /// The guest's NUMA nodes, in order (none: one node, no host placement).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa: Vec<NumaNode>,
    /// The serial console's output.
    #[serde(default)]
    pub serial: SerialOutput,
    /// virtio-blk disks, in the order the guest sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<::devices::virtio::block::BlockConfig>,
    /// virtio-net interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<::devices::virtio::net::NetConfig>,
    /// virtio-console ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consoles: Vec<::devices::virtio::console::ConsoleConfig>,
    /// The virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<::devices::virtio::vsock::VsockConfig>,
    /// virtio-input keyboards and tablets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<::devices::virtio::input::InputConfig>,
    /// The virtio-gpu (one at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<::devices::virtio::gpu::GpuConfig>,
    /// vhost-user-blk disks, served by back-end processes; the guest sees them after the
    /// built-in disks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vhost_user_blks: Vec<::devices::virtio::vhost_user::VhostUserBlkConfig>,
    /// vhost-user-net interfaces, served by back-end processes; the guest sees them after
    /// the built-in network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vhost_user_nets: Vec<::devices::virtio::vhost_user::VhostUserNetConfig>,
    /// vhost-user-fs shared directories (virtio-fs), served by back-end processes such as
    /// virtiofsd; the guest sees them after the vhost-user-net interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vhost_user_fs: Vec<::devices::virtio::vhost_user::VhostUserFsConfig>,
}

impl VmConfig {
    /// Reads a configuration from a JSON file; unknown fields and wrong types are errors.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let file_err = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))
    }

    /// Whether guest memory must be a shared memfd: asked for, or needed by a vhost-user
    /// device (its back end maps the guest's memory).
    pub fn needs_shared_memory(&self) -> bool {
        self.machine.shared_memory || self.vhost_user_devices().next().is_some()
    }

    /// Every vhost-user device as (kind, id, socket): blk, then net, then fs, then a GPU
    /// with `backend=vhost-user`.
    pub fn vhost_user_devices(
        &self,
    ) -> impl Iterator<Item = (&'static str, &String, &std::path::PathBuf)> {
        let blks = self.vhost_user_blks.iter();
        let nets = self.vhost_user_nets.iter();
        let fs = self.vhost_user_fs.iter();
        let gpu = self.gpu.iter().filter_map(|g| match g.backend {
            ::devices::virtio::gpu::GpuBackend::VhostUser => {
                g.socket.as_ref().map(|s| ("vhost-user-gpu", &g.id, s))
            }
            ::devices::virtio::gpu::GpuBackend::Builtin => None,
        });
        blks.map(|v| ("vhost-user-blk", &v.id, &v.socket))
            .chain(nets.map(|v| ("vhost-user-net", &v.id, &v.socket)))
            .chain(fs.map(|v| ("vhost-user-fs", &v.id, &v.socket)))
            .chain(gpu)
    }

    /// Checks every field that can be checked without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let vcpus = self.machine.vcpus;
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus {
                got: vcpus,
                max: MAX_VCPUS,
            });
        }
        memory::MemoryLayout::new(self.machine.memory.0)
            .map_err(|e| ConfigError::Memory(e.to_string()))?;
        numa::validate(self)?;
        device_options::validate(self)
    }

    /// What petrel appends to the command line for the root disk, if there is one.
    pub fn root_param(&self) -> Option<String> {
        let root = self.boot.root.as_ref()?;
        let disk = self.disks.iter().find(|d| d.id == root.disk)?;
        let device = match &root.partuuid {
            Some(uuid) => format!("PARTUUID={uuid}"),
            None => "/dev/vda".to_string(),
        };
        let mode = if disk.readonly { "ro" } else { "rw" };
        Some(format!("root={device} {mode}"))
    }

    /// The command line the guest gets.
    pub fn cmdline(&self) -> &str {
        match (&self.boot.cmdline, &self.boot.kernel) {
            (Some(c), _) => c,
            (None, Some(_)) => DEFAULT_CMDLINE,
            (None, None) => DEMO_CMDLINE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_config_example_is_a_valid_config() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### Configuration file")
            .nth(1)
            .expect("the README's configuration section");
        let json = section
            .split("```json\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("its JSON example");
        let config: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.inputs.len(), 2);
        assert!(config.vsock.is_some() && config.gpu.is_some());
        assert_eq!(config.vhost_user_blks.len(), 1);
        assert_eq!(config.vhost_user_fs[0].tag.as_str(), "shared");
        assert!(config.needs_shared_memory());
    }

    #[test]
    fn sizes_parse_with_suffixes_and_bare_mib() {
        assert_eq!("256M".parse(), Ok(ByteSize(256 << 20)));
        assert_eq!("1G".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("5GiB".parse(), Ok(ByteSize(5 << 30)));
        assert_eq!("512".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("4096K".parse(), Ok(ByteSize(4 << 20)));
        assert_eq!("1048576B".parse(), Ok(ByteSize(1 << 20)));
    }

    #[test]
    fn unparseable_sizes_are_refused() {
        for bad in [
            "",
            "M",
            "12X",
            "-1G",
            "1.5G",
            "99999999999999999999G",
            "1G1",
        ] {
            assert_eq!(
                bad.parse::<ByteSize>(),
                Err(ConfigError::Size(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
        assert_eq!(ByteSize(3 << 30).to_string(), "3G");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn serial_forms() {
        assert_eq!("stdout".parse(), Ok(SerialOutput::Stdout));
        assert_eq!("none".parse(), Ok(SerialOutput::None));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(SerialOutput::File("/tmp/x".into()))
        );
        assert!("file:".parse::<SerialOutput>().is_err());
        assert_eq!(
            String::from(SerialOutput::File("/a b".into())),
            "file:/a b".to_string()
        );
        assert!("tty".parse::<SerialOutput>().is_err());
    }

    #[test]
    fn vcpus_out_of_range_are_refused() {
        let mut c = VmConfig::default();
        c.machine.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Vcpus { got: 0, max: 254 }));
        c.machine.vcpus = 255;
        assert!(c.validate().is_err());
        c.machine.vcpus = 64;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn memory_out_of_range_is_refused() {
        let mut c = VmConfig::default();
        c.machine.memory = ByteSize(1 << 20);
        assert!(matches!(c.validate(), Err(ConfigError::Memory(_))));
    }

    #[test]
    fn json_round_trips_and_rejects_unknown_fields_and_wrong_types() {
        let c: VmConfig = serde_json::from_str(
            r#"{"boot":{"kernel":"/k","cmdline":"x"},"machine":{"vcpus":2,"memory":"1G","cpu_template":"minimal"},"serial":"file:/s"}"#,
        )
        .unwrap();
        assert_eq!(c.machine.memory, ByteSize(1 << 30));
        assert_eq!(c.serial, SerialOutput::File("/s".into()));
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"machine":{"cpus":2}}"#).is_err());
        assert!(serde_json::from_str::<VmConfig>(r#"{"machine":{"vcpus":"two"}}"#).is_err());
        assert!(serde_json::from_str::<VmConfig>(r#"{"serial":"tty"}"#).is_err());
        assert!(serde_json::from_str::<VmConfig>(r#"{"extra":1}"#).is_err());
    }

    #[test]
    fn acpi_is_on_unless_the_config_turns_it_off() {
        assert!(VmConfig::default().machine.acpi);
        let c: VmConfig = serde_json::from_str(r#"{"machine":{"vcpus":2}}"#).unwrap();
        assert!(c.machine.acpi);
        let c: VmConfig = serde_json::from_str(r#"{"machine":{"acpi":false}}"#).unwrap();
        assert!(!c.machine.acpi);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"machine":{"acpi":"yes"}}"#).is_err());
    }

    #[test]
    fn gpu_in_json_takes_defaults_and_is_validated() {
        let c: VmConfig = serde_json::from_str(r#"{"gpu":{"width":64,"height":48}}"#).unwrap();
        let gpu = c.gpu.as_ref().unwrap();
        assert_eq!((gpu.id.as_str(), gpu.max_memory), ("gpu0", 256 << 20));
        assert_eq!(c.validate(), Ok(()));
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let none = serde_json::to_value(VmConfig::default()).unwrap();
        assert!(none.get("gpu").is_none());
        assert!(serde_json::from_str::<VmConfig>(r#"{"gpu":{"depth":24}}"#).is_err());
        let big: VmConfig = serde_json::from_str(r#"{"gpu":{"width":8192}}"#).unwrap();
        assert!(big.validate().is_err());
    }

    #[test]
    fn default_cmdline_depends_on_what_boots() {
        let mut c = VmConfig::default();
        assert_eq!(c.cmdline(), DEMO_CMDLINE);
        c.boot.kernel = Some("/k".into());
        assert_eq!(c.cmdline(), DEFAULT_CMDLINE);
        c.boot.cmdline = Some("quiet".into());
        assert_eq!(c.cmdline(), "quiet");
    }
}
