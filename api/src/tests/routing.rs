//! Every route reaches the VMM thread as the right [`ApiRequest`].

use serde_json::json;

use super::{fault, Harness};
use crate::openapi::OPENAPI_JSON;
use crate::request::ApiRequest as R;
use crate::types::*;

fn bucket() -> TokenBucket {
    TokenBucket {
        size: 1000,
        one_time_burst: Some(10),
        refill_time: 100,
    }
}

#[test]
fn every_route_reaches_the_vmm() {
    let h = Harness::new();
    let limiter = RateLimiter {
        bandwidth: Some(bucket()),
        ops: None,
    };
    let cases: Vec<(&str, &str, Option<serde_json::Value>, R)> = vec![
        ("GET", "/", None, R::GetInstanceInfo),
        (
            "PUT",
            "/boot-source",
            Some(json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"})),
            R::PutBootSource(BootSource {
                kernel_image_path: "/k".into(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None,
            }),
        ),
        ("GET", "/machine-config", None, R::GetMachineConfig),
        (
            "PUT",
            "/machine-config",
            Some(json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false})),
            R::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: Some(false),
                ..Default::default()
            }),
        ),
        (
            "PATCH",
            "/machine-config",
            Some(json!({"mem_size_mib": 512})),
            R::PatchMachineConfig(MachineConfigPatch {
                mem_size_mib: Some(512),
                ..Default::default()
            }),
        ),
        (
            "PUT",
            "/drives/rootfs",
            Some(
                json!({"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true,
                "rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 10, "refill_time": 100}}}),
            ),
            R::PutDrive(Drive {
                drive_id: "rootfs".into(),
                path_on_host: "/r.ext4".into(),
                is_root_device: true,
                rate_limiter: Some(limiter.clone()),
                ..Default::default()
            }),
        ),
        (
            "PATCH",
            "/drives/rootfs",
            Some(json!({"drive_id": "rootfs", "path_on_host": "/new.ext4"})),
            R::PatchDrive(DrivePatch {
                drive_id: "rootfs".into(),
                path_on_host: Some("/new.ext4".into()),
                rate_limiter: None,
            }),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(
                json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}),
            ),
            R::PutNetworkInterface(NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:00:00:00:01".into()),
                ..Default::default()
            }),
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            Some(
                json!({"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1000, "refill_time": 100}}}),
            ),
            R::PatchNetworkInterface(NetworkInterfacePatch {
                iface_id: "eth0".into(),
                rx_rate_limiter: None,
                tx_rate_limiter: Some(RateLimiter {
                    bandwidth: None,
                    ops: Some(TokenBucket {
                        one_time_burst: None,
                        ..bucket()
                    }),
                }),
            }),
        ),
        (
            "PUT",
            "/consoles/serial_0",
            Some(json!({"id": "serial_0", "output": "socket:/tmp/c.sock"})),
            R::PutConsole(Console {
                id: "serial_0".into(),
                output: "socket:/tmp/c.sock".into(),
            }),
        ),
        (
            "PUT",
            "/vhost-user-blk/vu0",
            Some(json!({"id": "vu0", "socket": "/run/vu.sock"})),
            R::PutVhostUserBlk(VhostUserBlk {
                id: "vu0".into(),
                socket: "/run/vu.sock".into(),
            }),
        ),
        (
            "PUT",
            "/vhost-user-net/vu1",
            Some(json!({"id": "vu1", "socket": "/run/vu.sock", "mac": "02:00:00:00:00:01"})),
            R::PutVhostUserNet(VhostUserNet {
                id: "vu1".into(),
                socket: "/run/vu.sock".into(),
                mac: Some("02:00:00:00:00:01".into()),
            }),
        ),
        (
            "PUT",
            "/vhost-user-fs/vf",
            Some(json!({"id": "vf", "socket": "/run/vf.sock", "tag": "myfs"})),
            R::PutVhostUserFs(VhostUserFs {
                id: "vf".into(),
                socket: "/run/vf.sock".into(),
                tag: "myfs".into(),
            }),
        ),
        (
            "PUT",
            "/numa",
            Some(json!({"nodes": [
                {"node_id": 0, "cpus": [0, 1], "mem_size_mib": 512, "host_node": 0},
                {"node_id": 1, "mem_size_mib": 256, "distances": [{"node_id": 0, "distance": 30}],
                 "hugepages": true}]})),
            R::PutNuma(NumaConfig {
                nodes: vec![
                    NumaNode {
                        node_id: 0,
                        cpus: Some(vec![0, 1]),
                        mem_size_mib: 512,
                        host_node: Some(0),
                        ..Default::default()
                    },
                    NumaNode {
                        node_id: 1,
                        mem_size_mib: 256,
                        distances: Some(vec![NumaDistance {
                            node_id: 0,
                            distance: 30,
                        }]),
                        hugepages: Some(true),
                        ..Default::default()
                    },
                ],
            }),
        ),
        (
            "PUT",
            "/vsock",
            Some(json!({"guest_cid": 3, "uds_path": "/tmp/v.sock"})),
            R::PutVsock(Vsock {
                guest_cid: 3,
                uds_path: "/tmp/v.sock".into(),
                vsock_id: None,
            }),
        ),
        (
            "PUT",
            "/actions",
            Some(json!({"action_type": "InstanceStart"})),
            R::Action(ActionType::InstanceStart),
        ),
        (
            "PUT",
            "/actions",
            Some(json!({"action_type": "SendCtrlAltDel"})),
            R::Action(ActionType::SendCtrlAltDel),
        ),
        (
            "PUT",
            "/actions",
            Some(json!({"action_type": "FlushMetrics"})),
            R::Action(ActionType::FlushMetrics),
        ),
        (
            "PUT",
            "/actions",
            Some(json!({"action_type": "Shutdown"})),
            R::Action(ActionType::Shutdown),
        ),
        (
            "PUT",
            "/actions",
            Some(json!({"action_type": "Kill"})),
            R::Action(ActionType::Kill),
        ),
        (
            "PUT",
            "/actions",
            Some(json!({"action_type": "PowerButton"})),
            R::Action(ActionType::PowerButton),
        ),
        (
            "PATCH",
            "/vm",
            Some(json!({"state": "Paused"})),
            R::PatchVm(VmState::Paused),
        ),
        (
            "PATCH",
            "/vm",
            Some(json!({"state": "Resumed"})),
            R::PatchVm(VmState::Resumed),
        ),
        ("GET", "/vm/config", None, R::GetVmConfig),
        (
            "PUT",
            "/snapshot/create",
            Some(json!({"snapshot_type": "Full", "snapshot_path": "/s", "mem_file_path": "/m"})),
            R::CreateSnapshot(SnapshotCreateParams {
                snapshot_type: Some("Full".into()),
                snapshot_path: "/s".into(),
                mem_file_path: "/m".into(),
                parent_mem_file_path: None,
            }),
        ),
        (
            "PUT",
            "/snapshot/load",
            Some(
                json!({"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true}),
            ),
            R::LoadSnapshot(SnapshotLoadParams {
                snapshot_path: "/s".into(),
                mem_backend: Some(MemBackend {
                    backend_type: "File".into(),
                    backend_path: "/m".into(),
                }),
                resume_vm: Some(true),
                ..Default::default()
            }),
        ),
        (
            "PUT",
            "/migration/send",
            Some(json!({"url": "tcp:10.0.0.2:4444", "downtime_ms": 50, "auto_converge": false})),
            R::MigrationSend(MigrationSendParams {
                url: "tcp:10.0.0.2:4444".into(),
                downtime_ms: Some(50),
                auto_converge: Some(false),
                ..Default::default()
            }),
        ),
        (
            "PUT",
            "/migration/receive",
            Some(json!({"url": "unix:/run/m.sock"})),
            R::MigrationReceive(MigrationReceiveParams {
                url: "unix:/run/m.sock".into(),
            }),
        ),
        ("GET", "/migration", None, R::GetMigration),
        ("GET", "/metrics", None, R::GetMetrics),
        (
            "PUT",
            "/metrics",
            Some(json!({"metrics_path": "/tmp/metrics"})),
            R::PutMetrics(Metrics {
                metrics_path: "/tmp/metrics".into(),
            }),
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, reply) = h.client.request(method, path, body).unwrap();
        assert!(
            status == 200 || status == 204,
            "{method} {path}: {status} {reply}"
        );
        assert_eq!(h.last_seen(), expected, "{method} {path}");
    }
}

#[test]
fn replies_carry_the_vmm_answer() {
    let h = Harness::new();
    let (status, body) = h.client.request("GET", "/", None).unwrap();
    assert_eq!(status, 200);
    let info: InstanceInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(info.state, "Not started");
    assert_eq!(info.app_name, "petrel");

    let (status, body) = h.client.request("GET", "/metrics", None).unwrap();
    assert_eq!((status, body.as_str()), (200, "petrel_up 1\n"));

    let (status, body) = h
        .client
        .request("PUT", "/logger", Some(json!({"level": "Info"})))
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(fault(&body), "logger: not supported yet");

    let (status, body) = h
        .client
        .request(
            "PUT",
            "/drives/rootfs",
            Some(json!({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": false})),
        )
        .unwrap();
    assert_eq!((status, body.as_str()), (204, ""));
}

#[test]
fn openapi_served_by_the_api_thread() {
    let h = Harness::new();
    let (status, body) = h.client.request("GET", "/openapi.json", None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, OPENAPI_JSON);
    assert!(h.nothing_seen());
}
