use api::types::{
    BootSource, Console, Drive, DrivePatch, MachineConfig, MachineConfigPatch, NetworkInterface,
    NetworkInterfacePatch, RateLimiter, TokenBucket,
};
use api::types::{NumaConfig, NumaDistance, NumaNode};
use api::ApiResponse;

use super::*;
use crate::config::{ByteSize, CpuTemplate, VmConfig};

fn message(r: Result<(), ApiResponse>) -> String {
    match r {
        Err(ApiResponse::Error {
            status: 400,
            fault_message,
        }) => fault_message,
        other => panic!("expected a 400, got {other:?}"),
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for name in ["kernel", "initrd", "a.img", "b.img"] {
            std::fs::write(dir.path().join(name), [0u8; 512]).unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn drive(&self, id: &str, file: &str, root: bool) -> Drive {
        Drive {
            drive_id: id.into(),
            path_on_host: self.path(file),
            is_root_device: root,
            ..Drive::default()
        }
    }
}

#[test]
fn boot_source_needs_readable_files_and_sets_the_boot_config() {
    let f = Files::new();
    let mut c = VmConfig::default();
    let msg = message(put_boot_source(
        &mut c,
        BootSource {
            kernel_image_path: f.path("missing"),
            ..BootSource::default()
        },
    ));
    assert!(msg.starts_with("kernel_image_path: "), "{msg}");
    assert!(message(put_boot_source(
        &mut c,
        BootSource {
            kernel_image_path: f.dir.path().to_str().unwrap().into(),
            ..BootSource::default()
        },
    ))
    .contains("not a regular file"));
    assert_eq!(c, VmConfig::default(), "a refused request changes nothing");
    put_boot_source(
        &mut c,
        BootSource {
            kernel_image_path: f.path("kernel"),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: Some(f.path("initrd")),
        },
    )
    .unwrap();
    assert_eq!(
        c.boot.kernel.as_deref().unwrap().to_str(),
        Some(&*f.path("kernel"))
    );
    assert_eq!(c.boot.cmdline.as_deref(), Some("console=ttyS0"));
    assert!(check_bootable(&c).is_ok());
    assert!(check_bootable(&VmConfig::default()).is_err());
}

#[test]
fn machine_config_put_patch_get_and_bad_values() {
    let mut c = VmConfig::default();
    put_machine_config(
        &mut c,
        MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            cpu_template: Some("Minimal".into()),
            ..MachineConfig::default()
        },
    )
    .unwrap();
    assert_eq!(c.machine.vcpus, 2);
    assert_eq!(c.machine.memory, ByteSize(256 << 20));
    assert_eq!(c.machine.cpu_template, CpuTemplate::Minimal);
    patch_machine_config(
        &mut c,
        MachineConfigPatch {
            vcpu_count: Some(4),
            ..MachineConfigPatch::default()
        },
    )
    .unwrap();
    let got = machine_config(&c);
    assert_eq!((got.vcpu_count, got.mem_size_mib), (4, 256));
    assert_eq!(got.acpi, Some(true));
    let mut no_acpi = c.clone();
    patch_machine_config(
        &mut no_acpi,
        MachineConfigPatch {
            acpi: Some(false),
            ..MachineConfigPatch::default()
        },
    )
    .unwrap();
    assert!(!no_acpi.machine.acpi);
    assert_eq!(machine_config(&no_acpi).acpi, Some(false));
    let before = c.clone();
    let bad = |p: MachineConfigPatch| message(patch_machine_config(&mut c.clone(), p));
    assert!(bad(MachineConfigPatch {
        vcpu_count: Some(0),
        ..Default::default()
    })
    .starts_with("vcpu_count must be between 1 and 254"));
    assert!(bad(MachineConfigPatch {
        mem_size_mib: Some(1),
        ..Default::default()
    })
    .starts_with("mem_size_mib:"));
    assert!(bad(MachineConfigPatch {
        mem_size_mib: Some(u64::MAX),
        ..Default::default()
    })
    .contains("too large"));
    assert!(bad(MachineConfigPatch {
        cpu_template: Some("T2".into()),
        ..Default::default()
    })
    .starts_with("cpu_template:"));
    assert!(bad(MachineConfigPatch {
        smt: Some(true),
        ..Default::default()
    })
    .starts_with("smt:"));
    assert_eq!(c, before);
}

#[test]
fn drives_are_added_replaced_and_the_root_goes_first() {
    let f = Files::new();
    let mut c = VmConfig::default();
    put_drive(&mut c, f.drive("data", "a.img", false)).unwrap();
    put_drive(&mut c, f.drive("rootfs", "b.img", true)).unwrap();
    assert_eq!(c.disks[0].id, "rootfs");
    assert_eq!(c.root_param().as_deref(), Some("root=/dev/vda rw"));
    // A second root is refused; replacing the root keeps it root.
    let msg = message(put_drive(&mut c, f.drive("data", "a.img", true)));
    assert!(msg.starts_with("is_root_device:"), "{msg}");
    let mut ro = f.drive("rootfs", "b.img", true);
    ro.is_read_only = Some(true);
    ro.partuuid = Some("0eaa91a0-01".into());
    put_drive(&mut c, ro).unwrap();
    assert_eq!(
        c.root_param().as_deref(),
        Some("root=PARTUUID=0eaa91a0-01 ro")
    );
    // Replacing the root with a non-root drive drops the root.
    put_drive(&mut c, f.drive("rootfs", "b.img", false)).unwrap();
    assert_eq!(c.root_param(), None);
    assert_eq!(c.disks.len(), 2);
}

#[test]
fn bad_drives_change_nothing() {
    let f = Files::new();
    let mut c = VmConfig::default();
    put_drive(&mut c, f.drive("data", "a.img", false)).unwrap();
    let before = c.clone();
    let mut bad = |d: Drive| message(put_drive(&mut c, d));
    assert!(bad(f.drive("x", "missing.img", false)).starts_with("path_on_host:"));
    // The same image twice.
    assert!(bad(f.drive("other", "a.img", false)).contains("used twice"));
    let mut d = f.drive("x", "b.img", false);
    d.io_engine = Some("Async".into());
    assert!(bad(d).starts_with("io_engine:"));
    let mut d = f.drive("x", "b.img", false);
    d.cache_type = Some("Fast".into());
    assert!(bad(d).starts_with("cache_type:"));
    let mut d = f.drive("x", "b.img", false);
    d.partuuid = Some("u".into());
    assert!(bad(d).starts_with("partuuid:"));
    let mut d = f.drive("x", "b.img", false);
    d.rate_limiter = Some(RateLimiter {
        bandwidth: Some(TokenBucket {
            size: 0,
            one_time_burst: None,
            refill_time: 100,
        }),
        ops: None,
    });
    assert!(bad(d).starts_with("rate_limiter:"));
    assert_eq!(c, before);
}

#[test]
fn drive_patch_before_start() {
    let f = Files::new();
    let mut c = VmConfig::default();
    put_drive(&mut c, f.drive("data", "a.img", false)).unwrap();
    let limit = RateLimiter {
        bandwidth: None,
        ops: Some(TokenBucket {
            size: 100,
            one_time_burst: Some(5),
            refill_time: 1000,
        }),
    };
    patch_drive(
        &mut c,
        DrivePatch {
            drive_id: "data".into(),
            path_on_host: Some(f.path("b.img")),
            rate_limiter: Some(limit),
        },
    )
    .unwrap();
    assert_eq!(c.disks[0].path.to_str(), Some(&*f.path("b.img")));
    let ops = c.disks[0].rate_limiter.unwrap().ops.unwrap();
    assert_eq!(
        (ops.size, ops.one_time_burst, ops.refill_time),
        (100, 5, 1000)
    );
    // An empty limiter removes the limit.
    patch_drive(
        &mut c,
        DrivePatch {
            drive_id: "data".into(),
            rate_limiter: Some(RateLimiter::default()),
            ..DrivePatch::default()
        },
    )
    .unwrap();
    assert_eq!(c.disks[0].rate_limiter, None);
    let msg = message(patch_drive(
        &mut c,
        DrivePatch {
            drive_id: "nope".into(),
            ..DrivePatch::default()
        },
    ));
    assert_eq!(msg, "no drive with id \"nope\" is configured");
}

#[test]
fn network_interfaces_and_consoles() {
    let mut c = VmConfig::default();
    let iface = |id: &str, tap: &str, mac: Option<&str>| NetworkInterface {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        guest_mac: mac.map(Into::into),
        ..NetworkInterface::default()
    };
    put_net(&mut c, iface("eth0", "tap0", Some("06:00:ac:10:00:02"))).unwrap();
    assert_eq!(c.nets[0].mac.unwrap().to_string(), "06:00:ac:10:00:02");
    assert!(message(put_net(&mut c, iface("eth1", "tap0", None))).contains("used twice"));
    assert!(message(put_net(&mut c, iface("eth1", "a/b", None))).starts_with("host_dev_name:"));
    assert!(
        message(put_net(&mut c, iface("eth1", "tap-with-a-long-name", None)))
            .starts_with("host_dev_name:")
    );
    assert!(message(put_net(&mut c, iface("eth1", "tap1", Some("zz")))).starts_with("guest_mac:"));
    patch_net(
        &mut c,
        NetworkInterfacePatch {
            iface_id: "eth0".into(),
            rx_rate_limiter: Some(RateLimiter {
                bandwidth: Some(TokenBucket {
                    size: 1 << 20,
                    one_time_burst: None,
                    refill_time: 1000,
                }),
                ops: None,
            }),
            tx_rate_limiter: None,
        },
    )
    .unwrap();
    assert!(c.nets[0].rx_rate_limiter.is_some());
    assert!(c.nets[0].tx_rate_limiter.is_none());

    put_console(
        &mut c,
        Console {
            id: "c0".into(),
            output: "socket:/tmp/c0.sock".into(),
        },
    )
    .unwrap();
    assert!(message(put_console(
        &mut c,
        Console {
            id: "c1".into(),
            output: "tty".into(),
        },
    ))
    .starts_with("output:"));
    // Device ids are unique across kinds.
    assert!(message(put_console(
        &mut c,
        Console {
            id: "eth0".into(),
            output: "none".into(),
        },
    ))
    .contains("used twice"));
    assert_eq!(c.consoles.len(), 1);
}

fn numa_node(id: u32, cpus: &[u32], mib: u64) -> NumaNode {
    NumaNode {
        node_id: id,
        cpus: Some(cpus.to_vec()),
        mem_size_mib: mib,
        ..NumaNode::default()
    }
}

#[test]
fn numa_nodes_are_put_whole_checked_against_the_machine_and_removed_with_an_empty_list() {
    let mut c = VmConfig::default();
    put_machine_config(
        &mut c,
        MachineConfig {
            vcpu_count: 4,
            mem_size_mib: 768,
            ..MachineConfig::default()
        },
    )
    .unwrap();
    let mut second = numa_node(1, &[2, 3], 256);
    second.host_node = Some(0);
    second.hugepages = Some(true);
    second.distances = Some(vec![NumaDistance {
        node_id: 0,
        distance: 30,
    }]);
    put_numa(
        &mut c,
        NumaConfig {
            nodes: vec![numa_node(0, &[1, 0], 512), second],
        },
    )
    .unwrap();
    assert_eq!(c.numa.len(), 2);
    assert_eq!(c.numa[0].cpus.0, vec![0, 1]);
    assert_eq!(c.numa[1].memory, ByteSize(256 << 20));
    assert_eq!(c.numa[1].host_node, Some(0));
    assert!(c.numa[1].hugepages);
    assert_eq!(c.numa[1].distances[0].distance, 30);
    let before = c.clone();

    // Refusals change nothing.
    for (nodes, says) in [
        (
            vec![numa_node(0, &[0, 1], 512), numa_node(1, &[1, 2, 3], 256)],
            "vCPU 1 is in NUMA node 0 and in node 1",
        ),
        (
            vec![numa_node(0, &[0, 1], 512), numa_node(1, &[2], 256)],
            "vCPUs 3 are in no NUMA node",
        ),
        (
            vec![numa_node(0, &[0, 1], 512), numa_node(1, &[2, 3], 128)],
            "mem_size_mib",
        ),
        (
            vec![numa_node(1, &[0, 1], 512), numa_node(0, &[2, 3], 256)],
            "numbered 0, 1, 2",
        ),
        (
            vec![numa_node(0, &[0, 1, 2, 3], u64::MAX)],
            "nodes[0].mem_size_mib",
        ),
    ] {
        let msg = message(put_numa(&mut c, NumaConfig { nodes }));
        assert!(msg.contains(says), "{msg}");
        assert_eq!(c, before);
    }

    // The machine cannot change under the nodes; without them it can.
    let msg = message(patch_machine_config(
        &mut c,
        MachineConfigPatch {
            mem_size_mib: Some(1024),
            ..MachineConfigPatch::default()
        },
    ));
    assert!(msg.contains("adds up to 768M"), "{msg}");
    put_numa(&mut c, NumaConfig { nodes: vec![] }).unwrap();
    assert!(c.numa.is_empty());
    patch_machine_config(
        &mut c,
        MachineConfigPatch {
            mem_size_mib: Some(1024),
            ..MachineConfigPatch::default()
        },
    )
    .unwrap();
}

#[test]
fn vhost_user_fs_checks_the_tag_and_shares_ids_and_sockets() {
    let mut c = VmConfig::default();
    let fs = |id: &str, socket: &str, tag: &str| api::types::VhostUserFs {
        id: id.into(),
        socket: socket.into(),
        tag: tag.into(),
    };
    put_vhost_user_fs(&mut c, fs("vf", "/run/vf.sock", "myfs")).unwrap();
    assert_eq!(c.vhost_user_fs[0].tag.as_str(), "myfs");
    assert!(c.needs_shared_memory());
    for tag in ["", &"t".repeat(37), "a\0b"] {
        let m = message(put_vhost_user_fs(&mut c, fs("vg", "/run/vg.sock", tag)));
        assert!(m.starts_with("tag:"), "{m}");
    }
    let m = message(put_vhost_user_fs(&mut c, fs("vg", "/run/vf.sock", "t")));
    assert!(m.contains("used twice"), "{m}");
    // Changing the device in place keeps one.
    put_vhost_user_fs(&mut c, fs("vf", "/run/vf.sock", "other")).unwrap();
    assert_eq!(c.vhost_user_fs.len(), 1);
    assert_eq!(c.vhost_user_fs[0].tag.as_str(), "other");
}
