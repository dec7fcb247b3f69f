//! The `petrel` command line. Flags fill a `VmConfig`; `--config FILE` reads one from JSON
//! and flags given beside it override its fields, so flags and file make identical machines.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::parse_input;
use crate::config::parse_numa;
use crate::config::parse_vsock;
use crate::config::{
    parse_console, parse_disk, parse_gpu, parse_net, parse_vhost_user_blk, parse_vhost_user_fs,
    parse_vhost_user_net, ByteSize, ConfigError, CpuTemplate, SerialOutput, VmConfig,
};
use crate::ctl::CtlArgs;

/// petrel: a virtual machine monitor on KVM.
#[derive(Debug, Parser)]
#[command(name = "petrel", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// petrel's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest and run it until it powers off or resets. With no --kernel, boots the
    /// bundled demo guest, or, with --api-sock, waits to be configured through the API.
    Run(Box<RunArgs>),
    /// Control a running petrel through its API socket (`petrel run --api-sock PATH`).
    Ctl(CtlArgs),
    /// Inspect and flatten snapshot files (no VM needed).
    #[command(subcommand)]
    Snapshot(crate::snapshot_cli::SnapshotCommand),
}

/// Options of `petrel run`.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Kernel to boot: an ELF vmlinux or a bzImage with a 64-bit entry point. Without it,
    /// petrel boots its bundled demo guest.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk, loaded at the top of RAM below 3 GiB.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1", or the demo's].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Number of vCPUs, 1 to 254 [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Guest RAM: a number with a K, M, G or T suffix; a bare number is MiB [default: 128M].
    /// RAM beyond 3 GiB is placed above 4 GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<ByteSize>,
    /// Serial console (COM1) output: stdout, none, or file:PATH [default: stdout]. With
    /// stdout and a terminal on standard input, what you type goes to the guest.
    #[arg(long, value_name = "OUT", value_parser = parse_serial)]
    pub serial: Option<SerialOutput>,
    /// CPUID template: host (all KVM supports) or minimal (hides CMPXCHG16B, XSAVE and AVX)
    /// [default: host].
    #[arg(long, value_name = "NAME", value_parser = parse_template)]
    pub cpu_template: Option<CpuTemplate>,
    /// ACPI tables for the guest: on or off [default: on]. With them the DSDT describes the
    /// virtio devices; without them the MP table describes the vCPUs and the command line
    /// the virtio devices (`virtio_mmio.device=`).
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub acpi: Option<bool>,
    /// A virtio-blk disk: path=FILE[,id=ID][,readonly=on][,serial=STR][,rate=bw=BYTES/s,
    /// ops=N/s,bw_burst=BYTES,ops_burst=N]. A raw image file or a host block device;
    /// repeatable.
    #[arg(long = "disk", value_name = "OPTS")]
    pub disks: Vec<String>,
    /// A vhost-user-blk disk served by a back end (such as qemu-storage-daemon) listening
    /// on a Unix socket: socket=PATH[,id=ID]. Makes guest memory shared; repeatable.
    #[arg(long = "vhost-user-blk", value_name = "OPTS")]
    pub vhost_user_blks: Vec<String>,
    /// A vhost-user-net interface served by a back end listening on a Unix socket:
    /// socket=PATH[,id=ID][,mac=MAC]. Makes guest memory shared; repeatable.
    #[arg(long = "vhost-user-net", value_name = "OPTS")]
    pub vhost_user_nets: Vec<String>,
    /// A vhost-user-fs shared directory (virtio-fs) served by a back end (such as virtiofsd)
    /// listening on a Unix socket: socket=PATH,tag=TAG[,id=ID]. The guest mounts it by TAG
    /// (1 to 36 bytes). Makes guest memory shared; repeatable.
    #[arg(long = "vhost-user-fs", value_name = "OPTS")]
    pub vhost_user_fs: Vec<String>,
    /// A virtio-net interface on a TAP: tap=NAME[,id=ID][,mac=MAC][,rate=...]. The TAP is
    /// created if it does not exist; repeatable.
    #[arg(long = "net", value_name = "OPTS")]
    pub nets: Vec<String>,
    /// A virtio console: [id=ID,]output=stdout|file:PATH|pty|socket:PATH|none; repeatable.
    #[arg(long = "console", value_name = "OPTS")]
    pub consoles: Vec<String>,
    /// The virtio-vsock device: cid=N,uds=PATH[,id=ID]. Host processes connect to PATH and
    /// write `CONNECT <port>`; guest connections to host port P reach PATH_P.
    #[arg(long = "vsock", value_name = "OPTS")]
    pub vsock: Option<String>,
    /// A virtio-input device: kind=keyboard|tablet[,id=ID]; events come from the API
    /// (PUT /input/{id}); repeatable.
    #[arg(long = "input", value_name = "OPTS")]
    pub inputs: Vec<String>,
    /// A virtio-gpu (one scanout): [width=W,height=H][,max_memory=SIZE][,id=ID]
    /// [,backend=builtin|vhost-user][,socket=PATH] (1280x800, 256M, petrel's own 2D GPU);
    /// `--gpu` alone for the defaults; backend=vhost-user,socket=PATH for a vhost-user-gpu
    /// back end (such as QEMU's) on that socket.
    #[arg(long = "gpu", value_name = "OPTS", num_args = 0..=1, default_missing_value = "")]
    pub gpu: Option<String>,
    /// A guest NUMA node: node=N,cpus=LIST,memory=SIZE[,host_node=N][,distance=N:D;N:D...]
    /// [,hugepages=on]. Repeat for nodes 0, 1, ... in order; every vCPU in one node, the
    /// sizes adding up to --memory. host_node binds the node's memory and pins its vCPU
    /// threads to that host node; distances default to 20 (10 is local) and are symmetric.
    #[arg(long = "numa", value_name = "OPTS")]
    pub numa: Vec<String>,
    /// Read the machine from a JSON VmConfig file; other flags override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve the REST API on this Unix socket (mode 0600). Without --kernel or --config,
    /// petrel then waits for the API to configure the VM and send InstanceStart.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// The instance id the API reports [default: anonymous-instance].
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub id: Option<String>,
    /// Serve the web console on this loopback address (127.0.0.1:PORT or [::1]:PORT; port 0
    /// picks one), protected by a random token: petrel prints the URL to open at start.
    #[arg(long, value_name = "ADDR", value_parser = parse_web_console)]
    pub web_console: Option<std::net::SocketAddr>,
    /// Log the pages the guest and petrel write, so that incremental (Diff) snapshots can be
    /// taken.
    #[arg(long)]
    pub track_dirty_pages: bool,
    /// Put guest RAM in a memfd mapped shared, so that a live migration to a petrel on the
    /// same host can hand the memory over (`"local": true`) instead of copying it.
    #[arg(long)]
    pub shared_memory: bool,
    /// Restore the VM of this snapshot state file and run it, instead of booting. The
    /// machine and its devices come from the snapshot; --serial, --api-sock, --id and
    /// --web-console still apply.
    #[arg(long, value_name = "STATE_FILE", conflicts_with_all = RESTORE_CONFLICTS)]
    pub restore: Option<PathBuf>,
    /// The memory file (or top incremental layer) to restore with --restore [default: the
    /// memory file the snapshot was written with].
    #[arg(long, value_name = "MEM_FILE", requires = "restore")]
    pub restore_mem: Option<PathBuf>,
}

/// Flags that describe a new machine, which a restored one already is.
const RESTORE_CONFLICTS: [&str; 18] = [
    "config",
    "acpi",
    "kernel",
    "initrd",
    "cmdline",
    "vcpus",
    "memory",
    "cpu_template",
    "disks",
    "vhost_user_blks",
    "vhost_user_nets",
    "vhost_user_fs",
    "nets",
    "consoles",
    "vsock",
    "inputs",
    "gpu",
    "numa",
];

fn parse_web_console(s: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = s
        .parse()
        .map_err(|_| format!("invalid address {s:?}: expected 127.0.0.1:PORT or [::1]:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{s}: the web console listens on a loopback address only (127.0.0.1 or [::1])"
        ));
    }
    Ok(addr)
}

fn parse_id(s: &str) -> Result<String, String> {
    if api::router::is_valid_id(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid id {s:?}: use 1 to {} letters, digits, - or _",
            api::router::MAX_ID_LEN
        ))
    }
}

fn parse_size(s: &str) -> Result<ByteSize, ConfigError> {
    s.parse()
}

fn parse_serial(s: &str) -> Result<SerialOutput, ConfigError> {
    Ok(s.parse()?)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("invalid value {s:?}: expected on or off")),
    }
}

fn parse_template(s: &str) -> Result<CpuTemplate, ConfigError> {
    s.parse()
}

impl RunArgs {
    /// Whether the guest boots at once: always, except with an API socket and neither
    /// --kernel nor --config, when the API configures it first.
    pub fn boots_at_once(&self) -> bool {
        self.api_sock.is_none()
            || self.kernel.is_some()
            || self.config.is_some()
            || self.restore.is_some()
    }

    /// The configuration these flags describe.
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::default(),
        };
        if let Some(k) = &self.kernel {
            config.boot.kernel = Some(k.clone());
        }
        if let Some(i) = &self.initrd {
            config.boot.initrd = Some(i.clone());
        }
        if let Some(c) = &self.cmdline {
            config.boot.cmdline = Some(c.clone());
        }
        if let Some(v) = self.vcpus {
            config.machine.vcpus = v;
        }
        if let Some(m) = self.memory {
            config.machine.memory = m;
        }
        if let Some(t) = self.cpu_template {
            config.machine.cpu_template = t;
        }
        if let Some(acpi) = self.acpi {
            config.machine.acpi = acpi;
        }
        if self.track_dirty_pages {
            config.machine.track_dirty_pages = true;
        }
        if self.shared_memory {
            config.machine.shared_memory = true;
        }
        if let Some(s) = &self.serial {
            config.serial = s.clone();
        }
        // A topology is a whole: --numa flags replace the config file's nodes.
        if !self.numa.is_empty() {
            config.numa = self
                .numa
                .iter()
                .map(|text| parse_numa(text))
                .collect::<Result<_, _>>()?;
        }
        // Device flags add to the devices of the config file.
        for text in &self.disks {
            let index = config.disks.len();
            config.disks.push(parse_disk(text, index)?);
        }
        for text in &self.vhost_user_blks {
            let index = config.vhost_user_blks.len();
            config
                .vhost_user_blks
                .push(parse_vhost_user_blk(text, index)?);
        }
        for text in &self.vhost_user_nets {
            let index = config.vhost_user_nets.len();
            config
                .vhost_user_nets
                .push(parse_vhost_user_net(text, index)?);
        }
        for text in &self.vhost_user_fs {
            let index = config.vhost_user_fs.len();
            config.vhost_user_fs.push(parse_vhost_user_fs(text, index)?);
        }
        for text in &self.nets {
            let index = config.nets.len();
            config.nets.push(parse_net(text, index)?);
        }
        for text in &self.consoles {
            let index = config.consoles.len();
            config.consoles.push(parse_console(text, index)?);
        }
        if let Some(text) = &self.vsock {
            config.vsock = Some(parse_vsock(text)?);
        }
        for text in &self.inputs {
            let index = config.inputs.len();
            config.inputs.push(parse_input(text, index)?);
        }
        if let Some(text) = &self.gpu {
            config.gpu = Some(parse_gpu(text)?);
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["petrel", "run"];
        argv.extend(args);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Run(r) => *r,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn flags_fill_the_config() {
        let c = run_args(&[
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "a=b c",
            "--vcpus",
            "4",
            "--memory",
            "1G",
            "--serial",
            "none",
            "--cpu-template",
            "minimal",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(c.boot.kernel.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(c.boot.cmdline.as_deref(), Some("a=b c"));
        assert_eq!(c.machine.vcpus, 4);
        assert_eq!(c.machine.memory, ByteSize(1 << 30));
        assert_eq!(c.serial, SerialOutput::None);
        assert_eq!(c.machine.cpu_template, CpuTemplate::Minimal);
    }

    #[test]
    fn flags_and_file_make_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(
            &path,
            r#"{"boot":{"kernel":"/k","cmdline":"x"},"machine":{"vcpus":2,"memory":"256M"},"serial":"none"}"#,
        )
        .unwrap();
        let from_file = run_args(&["--config", path.to_str().unwrap()])
            .unwrap()
            .to_config()
            .unwrap();
        let from_flags = run_args(&[
            "--kernel",
            "/k",
            "--cmdline",
            "x",
            "--vcpus",
            "2",
            "--memory",
            "256M",
            "--serial",
            "none",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(from_file, from_flags);
        let overridden = run_args(&["--config", path.to_str().unwrap(), "--vcpus", "3"])
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(overridden.machine.vcpus, 3);
    }

    #[test]
    fn acpi_flag_is_on_or_off_and_overrides_the_file() {
        let acpi = |args: &[&str]| run_args(args).unwrap().to_config().unwrap().machine.acpi;
        assert!(acpi(&[]));
        assert!(acpi(&["--acpi", "on"]));
        assert!(!acpi(&["--acpi", "off"]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, r#"{"machine":{"acpi":false}}"#).unwrap();
        let path = path.to_str().unwrap();
        assert!(!acpi(&["--config", path]));
        assert!(acpi(&["--config", path, "--acpi", "on"]));
        assert!(run_args(&["--acpi", "yes"]).is_err());
        assert!(run_args(&["--acpi"]).is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(run_args(&["--memory", "lots"]).is_err());
        assert!(run_args(&["--serial", "tty"]).is_err());
        assert!(run_args(&["--cpu-template", "fast"]).is_err());
        assert!(run_args(&["--vcpus", "-1"]).is_err());
        assert!(run_args(&["--bogus"]).is_err());
        assert_eq!(
            run_args(&["--vcpus", "0"]).unwrap().to_config(),
            Err(ConfigError::Vcpus { got: 0, max: 254 })
        );
        assert!(run_args(&["--vcpus", "300"]).unwrap().to_config().is_err());
    }

    /// Writes `c` to a config file and checks `--config` reads back the same; returns the
    /// file (and the directory that holds it).
    fn same_through_a_config_file(c: &VmConfig) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, serde_json::to_string(c).unwrap()).unwrap();
        let from_file = run_args(&["--config", path.to_str().unwrap()])
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(&from_file, c);
        (dir, path)
    }

    #[test]
    fn vsock_flag_and_config_file_agree_and_one_device_only() {
        let c = run_args(&["--vsock", "cid=7,uds=/run/v.sock"])
            .unwrap()
            .to_config()
            .unwrap();
        let v = c.vsock.as_ref().unwrap();
        assert_eq!((v.guest_cid, v.id.as_str()), (7, "vsock0"));
        same_through_a_config_file(&c);
        assert!(run_args(&["--vsock", "cid=3,uds=/a", "--vsock", "cid=4,uds=/b"]).is_err());
        assert!(run_args(&["--vsock", "cid=1,uds=/a"])
            .unwrap()
            .to_config()
            .is_err());
    }

    #[test]
    fn vhost_user_blk_flags_and_config_file_agree() {
        let c = run_args(&[
            "--vhost-user-blk",
            "socket=/run/a.sock",
            "--vhost-user-blk",
            "socket=/run/b.sock,id=vb",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        let ids: Vec<&str> = c.vhost_user_blks.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["vublk0", "vb"]);
        same_through_a_config_file(&c);
        assert!(run_args(&["--vhost-user-blk", "path=/x"])
            .unwrap()
            .to_config()
            .is_err());
    }

    #[test]
    fn vhost_user_fs_flags_and_config_file_agree() {
        let c = run_args(&[
            "--vhost-user-fs",
            "socket=/run/fs.sock,tag=myfs",
            "--vhost-user-fs",
            "socket=/run/g.sock,tag=other,id=vf",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        let ids: Vec<&str> = c.vhost_user_fs.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["vufs0", "vf"]);
        assert_eq!(c.vhost_user_fs[1].tag.as_str(), "other");
        same_through_a_config_file(&c);
        let too_long = format!("socket=/s,tag={}", "x".repeat(40));
        for bad in ["socket=/s", "socket=/s,tag=", too_long.as_str()] {
            let args = run_args(&["--vhost-user-fs", bad]).unwrap();
            assert!(args.to_config().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_config_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        for bad in [
            r#"{"machine":{"cpus":1}}"#,
            r#"{"machine":{"vcpus":"x"}}"#,
            "not json",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = run_args(&["--config", path.to_str().unwrap()])
                .unwrap()
                .to_config()
                .unwrap_err();
            assert!(matches!(err, ConfigError::File { .. }), "{bad}: {err}");
        }
        let missing = run_args(&["--config", "/nonexistent/vm.json"])
            .unwrap()
            .to_config();
        assert!(matches!(missing, Err(ConfigError::File { .. })));
    }

    #[test]
    fn numa_flags_replace_the_files_nodes_and_are_validated() {
        let c = run_args(&[
            "--vcpus",
            "4",
            "--memory",
            "768M",
            "--numa",
            "node=0,cpus=0,2,memory=512M,host_node=0",
            "--numa",
            "node=1,cpus=1,3,memory=256M,distance=0:30",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(c.numa.len(), 2);
        assert_eq!(c.numa[0].cpus.0, vec![0, 2]);
        assert_eq!(c.numa[1].distances[0].distance, 30);

        let (_dir, path) = same_through_a_config_file(&c);
        let replaced = run_args(&[
            "--config",
            path.to_str().unwrap(),
            "--numa",
            "node=0,cpus=0-3,memory=768M",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(replaced.numa.len(), 1);

        // The default 128M of memory does not match: refused, naming --memory.
        let err = run_args(&["--numa", "node=0,cpus=0,memory=512M"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert!(err.to_string().contains("--memory"), "{err}");
        assert!(run_args(&["--numa", "node=0,memory=1G,cpus=0", "--restore", "/s"]).is_err());
    }

    #[test]
    fn web_console_takes_a_loopback_address_only() {
        let addr = |a: &str| run_args(&["--web-console", a]).map(|r| r.web_console);
        assert_eq!(
            addr("127.0.0.1:8080").unwrap(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(addr("[::1]:0").unwrap(), Some("[::1]:0".parse().unwrap()));
        for bad in [
            "0.0.0.0:8080",
            "192.168.1.2:80",
            "[::]:80",
            "localhost:80",
            "8080",
            "",
        ] {
            assert!(addr(bad).is_err(), "{bad}");
        }
    }
}
