//! The NUMA topology a guest sees: the test guest reads the SRAT and SLIT (`numa` scenario)
//! and reports each node's memory ranges, its vCPUs' APIC ids and the distances; they must
//! match the `--numa` configuration, and the e820 map must agree with the SRAT. A snapshot
//! restored in a new process, and a migrated guest, read the same topology.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use resources::snapshot_proto::Command;
use serde_json::json;
use tests::api_vm::ApiVm;
use tests::snapshot_guest::SnapshotGuest;
use tests::{kvm_available, run_scenario, Output};

const MIB: u64 = 1 << 20;

/// What the guest reported.
#[derive(Debug, Default, PartialEq)]
struct Topology {
    /// Node of each APIC id.
    cpus: BTreeMap<u32, u32>,
    /// `(node, base, len)` of each memory affinity structure, in table order.
    memory: Vec<(u32, u64, u64)>,
    /// The SLIT's rows.
    slit: Vec<Vec<u8>>,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("{s:?}"))
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// Reads the `SRAT ...` and `SLIT ...` lines (one per line, or `|`-separated in a
/// `TOPOLOGY` answer).
fn topology<'a>(lines: impl IntoIterator<Item = &'a str>) -> Topology {
    let mut t = Topology::default();
    for line in lines {
        let line = line.trim();
        if let Some(cpu) = line.strip_prefix("SRAT cpu ") {
            assert!(cpu.contains("enabled=1"), "{line}");
            let apic = field(cpu, "apic=").parse().unwrap();
            let node = field(cpu, "node=").parse().unwrap();
            assert_eq!(t.cpus.insert(apic, node), None, "APIC id twice: {line}");
        } else if let Some(mem) = line.strip_prefix("SRAT mem ") {
            assert_eq!(
                field(mem, "flags="),
                "0x1",
                "enabled, not hot-pluggable: {line}"
            );
            t.memory.push((
                field(mem, "node=").parse().unwrap(),
                hex(field(mem, "base=")),
                hex(field(mem, "len=")),
            ));
        } else if let Some(row) = line.strip_prefix("SLIT row=") {
            let cells: Vec<u8> = row.split(' ').skip(1).map(|d| d.parse().unwrap()).collect();
            t.slit.push(cells);
        }
    }
    t
}

/// Runs the `numa` scenario with `vcpus` vCPUs, `memory` and `--numa` flags.
fn run_numa(vcpus: u32, memory: &str, nodes: &[&str]) -> Output {
    let vcpus = vcpus.to_string();
    let mut args = vec!["--vcpus", &vcpus, "--memory", memory];
    for node in nodes {
        args.extend(["--numa", node]);
    }
    let out = run_scenario("numa", &args);
    out.assert_pass("numa");
    out
}

/// The e820 RAM ranges the guest printed.
fn e820_ram(out: &Output) -> Vec<Range<u64>> {
    out.lines_with("E820 ")
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (addr, size) = (hex(f[1]), hex(f[2]));
            (f[3] == "1").then_some(addr..addr + size)
        })
        .collect()
}

/// Every byte of e820 RAM is in one SRAT range, and every SRAT range holds e820 RAM up to its
/// end (the legacy holes below 1 MiB aside).
fn assert_e820_agrees(out: &Output, t: &Topology) {
    let ram = e820_ram(out);
    assert!(!ram.is_empty(), "{out}");
    for r in &ram {
        let holders = t
            .memory
            .iter()
            .filter(|(_, base, len)| *base <= r.start && r.end <= base + len)
            .count();
        assert_eq!(
            holders, 1,
            "e820 RAM {r:x?} is not in one SRAT range: {:x?}",
            t.memory
        );
    }
    for (node, base, len) in &t.memory {
        let end = base + len;
        assert!(
            ram.iter().any(|r| r.end == end),
            "node {node}'s range ends at {end:#x}, where no e820 RAM does: {ram:x?}"
        );
    }
}

#[test]
fn two_nodes_of_different_sizes_and_cpus() {
    if !kvm_available() {
        return;
    }
    let out = run_numa(
        3,
        "384M",
        &[
            "node=0,cpus=0-1,memory=128M",
            "node=1,cpus=2,memory=256M,distance=0:17",
        ],
    );
    let t = topology(out.stdout.lines());
    assert_eq!(t.cpus, BTreeMap::from([(0, 0), (1, 0), (2, 1)]), "{out}");
    assert_eq!(t.memory, [(0, 0, 128 * MIB), (1, 128 * MIB, 256 * MIB)]);
    assert_eq!(t.slit, [vec![10, 17], vec![17, 10]]);
    assert_e820_agrees(&out, &t);
}

#[test]
fn four_nodes_one_without_cpus() {
    if !kvm_available() {
        return;
    }
    let out = run_numa(
        4,
        "256M",
        &[
            "node=0,cpus=0,memory=64M,distance=1:12;2:30;3:40",
            "node=1,cpus=1-2,memory=96M",
            "node=2,memory=32M,distance=3:25",
            "node=3,cpus=3,memory=64M",
        ],
    );
    let t = topology(out.stdout.lines());
    assert_eq!(
        t.cpus,
        BTreeMap::from([(0, 0), (1, 1), (2, 1), (3, 3)]),
        "{out}"
    );
    assert_eq!(
        t.memory,
        [
            (0, 0, 64 * MIB),
            (1, 64 * MIB, 96 * MIB),
            (2, 160 * MIB, 32 * MIB),
            (3, 192 * MIB, 64 * MIB),
        ]
    );
    assert_eq!(
        t.slit,
        [
            vec![10, 12, 30, 40],
            vec![12, 10, 20, 20],
            vec![30, 20, 10, 25],
            vec![40, 20, 25, 10],
        ]
    );
    assert_e820_agrees(&out, &t);
}

#[test]
fn without_numa_there_is_no_srat_or_slit() {
    if !kvm_available() {
        return;
    }
    let out = run_numa(2, "128M", &[]);
    assert_eq!(out.lines_with("NOSRAT").len(), 1, "{out}");
    assert_eq!(out.lines_with("NOSLIT").len(), 1, "{out}");
}

const SNAPSHOT_NODES: [&str; 4] = [
    "--numa",
    "node=0,cpus=0,memory=96M",
    "--numa",
    "node=1,cpus=1,memory=160M,distance=0:21",
];

fn expected_snapshot_topology() -> Topology {
    Topology {
        cpus: BTreeMap::from([(0, 0), (1, 1)]),
        memory: vec![(0, 0, 96 * MIB), (1, 96 * MIB, 160 * MIB)],
        slit: vec![vec![10, 21], vec![21, 10]],
    }
}

/// Asks the `snapshot` scenario for the topology it reads now.
fn asked(guest: &mut SnapshotGuest, vm: &ApiVm) -> Topology {
    let answer = guest.send(vm, Command::Topology).expect("an answer");
    let body = answer.strip_prefix("TOPOLOGY ").expect("a TOPOLOGY answer");
    topology(body.split('|'))
}

#[test]
fn a_restored_snapshot_sees_the_same_topology() {
    if !kvm_available() {
        return;
    }
    let args = [&["--vcpus", "2"][..], &SNAPSHOT_NODES].concat();
    let (vm, mut guest) = SnapshotGuest::boot("256M", &args);
    assert_eq!(asked(&mut guest, &vm), expected_snapshot_topology());
    let dir = tempfile::tempdir().unwrap();
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    vm.set_state("Paused");
    let at = guest.checkpoint(&vm);
    vm.create_snapshot("Full", &state, &mem);
    vm.kill();

    let mut restored = ApiVm::spawn(&[]);
    restored.load_snapshot(&state, Some(&mem));
    guest.restored(&at);
    assert_eq!(asked(&mut guest, &restored), expected_snapshot_topology());
    guest.verify(&restored);
    guest.quit(&mut restored);
}

#[test]
fn a_migrated_guest_sees_the_same_topology() {
    if !kvm_available() {
        return;
    }
    let args = [&["--vcpus", "2"][..], &SNAPSHOT_NODES].concat();
    let (mut src, mut guest) = SnapshotGuest::boot("256M", &args);
    assert_eq!(asked(&mut guest, &src), expected_snapshot_topology());
    let mut dst = ApiVm::spawn(&[&["--memory", "256M"][..], &args].concat());
    let url = format!("unix:{}", dst.path("m.sock").display());
    dst.migrate_receive(&url);
    src.migrate_send(json!({ "url": url }));
    let done = src.finish(Duration::from_secs(120));
    assert_eq!(
        done.status.code(),
        Some(0),
        "the source ends once moved: {done}"
    );
    let info = dst.wait_migration(&["completed", "failed"], Duration::from_secs(120));
    assert_eq!(info["state"], "completed", "{info}");
    guest.migrated(src.serial());
    assert_eq!(asked(&mut guest, &dst), expected_snapshot_topology());
    guest.verify(&dst);
    guest.quit(&mut dst);
}
