//! NUMA host placement end to end, on this host's node 0: a guest node with `host_node=0` has
//! its memory bound there (`bind:0` in `/proc/<pid>/numa_maps`) and its vCPU thread pinned to
//! node 0's CPUs; a host node that does not exist is refused; huge pages when the host can
//! reserve some; and snapshots and migration keep the node layout.
//!
//! How a node's memory is found in petrel's address space: every guest node here has a size
//! no other mapping of petrel has, and each RAM range is a mapping of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tests::api_vm::ApiVm;
use tests::snapshot_guest::SnapshotGuest;
use tests::{kvm_available, test_guest};

const MIB: u64 = 1 << 20;

/// Node 0's CPUs on this host, as sysfs writes them (`0-1`).
fn host_node0_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/node/node0/cpulist")
        .expect("host node 0's cpulist")
        .trim()
        .to_string()
}

/// The CPUs of a `0-1,4` list.
fn cpus(list: &str) -> Vec<u32> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .flat_map(|item| match item.split_once('-') {
            Some((a, b)) => a.parse().unwrap()..=b.parse().unwrap(),
            None => item.parse().unwrap()..=item.parse().unwrap(),
        })
        .collect()
}

/// The `numa_maps` lines of petrel's mappings `len` bytes long, or at least `len` bytes long
/// with `at_least` (the kernel merges an anonymous mapping with a neighbour of the same
/// flags and policy, so an unbound node's memory may be part of a larger mapping).
fn mappings(pid: u32, len: u64, at_least: bool) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let numa_maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap();
    let policies: BTreeMap<u64, &str> = numa_maps
        .lines()
        .filter_map(|l| Some((u64::from_str_radix(l.split(' ').next()?, 16).ok()?, l)))
        .collect();
    maps.lines()
        .filter_map(|l| {
            let (start, end) = l.split(' ').next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let fits = end - start == len || (at_least && end - start > len);
            fits.then(|| policies.get(&start).map_or("", |p| *p).to_string())
        })
        .collect()
}

/// The `Cpus_allowed_list` of petrel's thread called `name`.
fn thread_cpus(pid: u32, name: &str) -> String {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        return status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_string();
    }
    panic!("petrel has no thread {name}");
}

/// The count scenario with two vCPUs and `numa` flags, started through `wrapper`.
fn counting(wrapper: &[&str], memory: &str, numa: &[&str]) -> ApiVm {
    let mut args = vec![
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        "petrel.test=count",
        "--vcpus",
        "2",
        "--memory",
        memory,
    ];
    for n in numa {
        args.extend(["--numa", n]);
    }
    let vm = ApiVm::spawn_wrapped(wrapper, &args);
    vm.wait_count_above(None);
    vm
}

#[test]
fn a_node_with_host_node_0_is_bound_there_and_its_vcpu_runs_on_node_0s_cpus() {
    if !kvm_available() {
        return;
    }
    let node0 = host_node0_cpus();
    let all = cpus(&node0);
    // petrel starts restricted to one CPU: its threads inherit that unless pinned, so the
    // pinned vCPU thread is told apart even on a host whose only node has every CPU.
    let first = all[0].to_string();
    let wrapper = ["taskset", "-c", &first];
    let vm = counting(
        &wrapper,
        "256M",
        &[
            "node=0,cpus=0,memory=160M",
            "node=1,cpus=1,memory=96M,host_node=0",
        ],
    );
    let pid = vm.pid();

    let bound = mappings(pid, 96 * MIB, false);
    assert_eq!(bound.len(), 1, "one 96 MiB mapping: {bound:?}");
    assert!(bound[0].split(' ').nth(1) == Some("bind:0"), "{}", bound[0]);
    let unbound = mappings(pid, 160 * MIB, true);
    assert!(
        unbound
            .iter()
            .any(|m| m.split(' ').nth(1) == Some("default")),
        "no unbound mapping of 160 MiB or more: {unbound:?}"
    );

    assert_eq!(thread_cpus(pid, "petrel_vcpu1"), node0);
    if all.len() > 1 {
        assert_eq!(thread_cpus(pid, "petrel_vcpu0"), first, "not pinned");
    } else {
        eprintln!("host node 0 has one CPU: the unpinned vCPU cannot be told apart");
    }
    // The whole configuration, as the API reports it.
    let config = vm.get("/vm/config");
    assert_eq!(config["numa"][1]["host_node"], json!(0), "{config}");
    assert_eq!(config["numa"][1]["cpus"], json!("1"), "{config}");
    vm.kill();
}

#[test]
fn a_host_node_that_does_not_exist_is_refused_before_the_guest_starts() {
    if !kvm_available() {
        return;
    }
    if Path::new("/sys/devices/system/node/node7").exists() {
        eprintln!("skipped: this host has a node 7");
        return;
    }
    let out = tests::run(
        &[
            "--memory",
            "128M",
            "--numa",
            "node=0,cpus=0,memory=128M,host_node=7",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(
        out.stderr
            .contains("host NUMA node 7 does not exist (no /sys/devices/system/node/node7)"),
        "{out}"
    );
    assert!(!out.stdout.contains("PASS"), "{out}");

    // Configured through the API, the refusal comes at InstanceStart.
    let vm = ApiVm::spawn(&[]);
    let kernel = test_guest().to_str().unwrap();
    vm.ok(
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": "petrel.test=count"}),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    vm.ok(
        "PUT",
        "/numa",
        json!({"nodes": [{"node_id": 0, "cpus": [0], "mem_size_mib": 128, "host_node": 7}]}),
    );
    let (status, body) = vm.request(
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    );
    assert!(
        (400..600).contains(&status) && body.contains("host NUMA node 7"),
        "{status} {body}"
    );
}

/// `/proc/sys/vm/nr_hugepages`, set back to what it was when dropped.
struct HugePages {
    before: u64,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    fn total() -> u64 {
        std::fs::read_to_string(NR_HUGEPAGES)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Asks the kernel for `more` huge pages than there are now.
    fn reserve(more: u64) -> HugePages {
        let before = HugePages::total();
        if let Err(e) = std::fs::write(NR_HUGEPAGES, (before + more).to_string()) {
            eprintln!("cannot write {NR_HUGEPAGES}: {e}");
        }
        HugePages { before }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

/// The host's free 2 MiB huge pages, less those reserved.
fn free_huge_pages() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    field("HugePages_Free:").saturating_sub(field("HugePages_Rsvd:"))
}

#[test]
fn a_huge_page_node_is_refused_without_free_huge_pages_and_bound_with_them() {
    if !kvm_available() {
        return;
    }
    // Node 1: 64 MiB of huge pages, 32 pages.
    let numa = [
        "node=0,cpus=0-1,memory=160M",
        "node=1,memory=64M,host_node=0,hugepages=on",
    ];
    if free_huge_pages() < 32 {
        let mut args = vec!["--vcpus", "2", "--memory", "224M"];
        for n in numa {
            args.extend(["--numa", n]);
        }
        let out = tests::run(&args, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(2), "{out}");
        assert!(
            out.stderr
                .contains("2 MiB huge pages needed on host node 0")
                && out.stderr.contains("nr_hugepages"),
            "{out}"
        );
    }
    let _reserved = HugePages::reserve(32);
    let free = free_huge_pages();
    if free < 32 {
        eprintln!(
            "skipped the huge-page guest: {free} free 2 MiB huge pages after asking for 32 more \
             (not root, or the host's memory is too fragmented)"
        );
        return;
    }
    let vm = counting(&[], "224M", &numa);
    let huge = mappings(vm.pid(), 64 * MIB, false);
    assert_eq!(huge.len(), 1, "one 64 MiB mapping: {huge:?}");
    let fields: Vec<&str> = huge[0].split(' ').collect();
    assert_eq!(fields[1], "bind:0", "{}", huge[0]);
    assert!(fields.contains(&"huge"), "{}", huge[0]);
    vm.kill();
}

/// The `numa node` and `ram` lines of `petrel snapshot info STATE`.
fn layout_lines(state: &Path) -> Vec<String> {
    let child = std::process::Command::new(tests::petrel())
        .args(["snapshot", "info"])
        .arg(state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tests::wait(child, Duration::from_secs(30));
    assert!(out.status.success(), "{out}");
    out.stdout
        .lines()
        .filter(|l| l.starts_with("numa node") || l.starts_with("ram "))
        .map(String::from)
        .collect()
}

/// Two nodes of the snapshot scenario (its region lies in node 0); node 1 is memory only,
/// bound to host node 0, and crosses nothing.
const SNAPSHOT_NUMA: [&str; 4] = [
    "--numa",
    "node=0,cpus=0,memory=192M",
    "--numa",
    "node=1,memory=64M,host_node=0",
];

#[test]
fn a_restored_machine_has_the_same_node_layout_and_binding() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm, mut guest) = SnapshotGuest::boot("256M", &SNAPSHOT_NUMA);
    guest.wait_counts(&vm, 1);
    guest.write(&vm, 5);
    vm.set_state("Paused");
    let at = guest.checkpoint(&vm);
    vm.create_snapshot("Full", &d.join("s0"), &d.join("m0"));
    vm.kill();
    let saved = layout_lines(&d.join("s0"));
    assert_eq!(
        saved,
        [
            "numa node 0: vCPUs 0, 192 MiB",
            "numa node 1: no vCPUs, 64 MiB, bound to host node 0",
            "ram 0x0-0xbffffff node 0",
            "ram 0xc000000-0xfffffff node 1",
        ],
    );

    let vm = ApiVm::spawn(&[]);
    vm.load_snapshot(&d.join("s0"), None);
    guest.restored(&at);
    guest.verify(&vm);
    guest.wait_counts(&vm, 1);
    assert_eq!(vm.get("/vm/config")["numa"][1]["memory"], json!("64M"));
    // The restored node 1 is the memory file's pages, mapped privately and bound.
    let bound = mappings(vm.pid(), 64 * MIB, false);
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert_eq!(bound[0].split(' ').nth(1), Some("bind:0"), "{}", bound[0]);
    // A snapshot of the restored machine has the same layout.
    vm.set_state("Paused");
    vm.create_snapshot("Full", &d.join("s1"), &d.join("m1"));
    assert_eq!(layout_lines(&d.join("s1")), saved);
    vm.set_state("Resumed");
    let mut vm = vm;
    guest.quit(&mut vm);
}

#[test]
fn a_migration_keeps_the_topology_and_refuses_a_destination_with_another() {
    if !kvm_available() {
        return;
    }
    let (mut src, mut guest) = SnapshotGuest::boot("256M", &SNAPSHOT_NUMA);
    guest.wait_counts(&src, 1);
    guest.write(&src, 3);

    // Same memory ranges, other distances: refused once the source's configuration comes.
    let mut other: Vec<&str> = vec!["--memory", "256M"];
    other.extend(["--numa", "node=0,cpus=0,memory=192M,distance=1:30"]);
    other.extend(["--numa", "node=1,memory=64M"]);
    let wrong = ApiVm::spawn(&other);
    let url = format!("unix:{}", wrong.path("m.sock").display());
    wrong.migrate_receive(&url);
    std::thread::sleep(Duration::from_millis(300));
    src.migrate_send(json!({ "url": url }));
    let failed = src.wait_migration(&["failed", "completed"], Duration::from_secs(60));
    assert_eq!(failed["state"], "failed", "{failed}");
    let why = wrong.wait_migration(&["failed", "completed"], Duration::from_secs(60));
    assert!(
        why["error"]
            .as_str()
            .is_some_and(|e| e.contains("NUMA distances differ")),
        "{why}"
    );
    assert_eq!(src.state(), "Running");

    // The same topology (host placement may differ): the guest moves and goes on.
    let mut args: Vec<&str> = vec!["--memory", "256M"];
    args.extend(SNAPSHOT_NUMA);
    let dst = ApiVm::spawn(&args);
    let url = format!("unix:{}", dst.path("m.sock").display());
    dst.migrate_receive(&url);
    std::thread::sleep(Duration::from_millis(300));
    src.migrate_send(json!({ "url": url }));
    let done: Value = dst.wait_migration(&["failed", "completed"], Duration::from_secs(120));
    assert_eq!(done["state"], "completed", "{done}");
    let out = src.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert_eq!(dst.get("/vm/config")["numa"][0]["memory"], json!("192M"));
    let bound = mappings(dst.pid(), 64 * MIB, false);
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert_eq!(bound[0].split(' ').nth(1), Some("bind:0"), "{}", bound[0]);
    guest.migrated(src.serial());
    guest.verify(&dst);
    guest.wait_counts(&dst, 1);
    let mut dst = dst;
    guest.quit(&mut dst);
}
