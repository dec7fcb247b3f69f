use super::*;

const MIB: u64 = 1 << 20;

/// A machine of `vcpus` vCPUs with the nodes of `flags`, memory their sum.
fn machine(vcpus: u32, flags: &[&str]) -> VmConfig {
    let mut c = VmConfig::default();
    c.machine.vcpus = vcpus;
    c.numa = flags.iter().map(|f| parse_numa(f).unwrap()).collect();
    c.machine.memory = ByteSize(c.numa.iter().map(|n| n.memory.0).sum());
    c
}

fn refused(c: &VmConfig) -> NumaError {
    match c.validate() {
        Err(ConfigError::Numa(e)) => e,
        other => panic!("not refused for NUMA: {other:?}"),
    }
}

#[test]
fn the_flag_fills_a_node() {
    let n =
        parse_numa("node=1,cpus=0,2,4-5,memory=512M,host_node=0,distance=0:15;2:30,hugepages=on")
            .unwrap();
    assert_eq!(
        n,
        NumaNode {
            node: 1,
            cpus: CpuList(vec![0, 2, 4, 5]),
            memory: ByteSize(512 * MIB),
            host_node: Some(0),
            distances: vec![
                NodeDistance {
                    node: 0,
                    distance: 15
                },
                NodeDistance {
                    node: 2,
                    distance: 30
                }
            ],
            hugepages: true,
        }
    );
    let plain = parse_numa("memory=1G,node=0").unwrap();
    assert_eq!(plain.cpus, CpuList::default());
    assert_eq!((plain.host_node, plain.hugepages), (None, false));
    assert!(plain.distances.is_empty());
}

#[test]
fn bad_flags_are_refused_naming_the_option() {
    for (bad, says) in [
        ("cpus=0,memory=1G", "node=N is required"),
        ("node=0,cpus=0", "memory=SIZE is required"),
        ("node=x,memory=1G", "invalid node=x"),
        ("node=0,cpus=3-1,memory=1G", "ends before it starts"),
        ("node=0,cpus=a,memory=1G", "invalid cpus=a"),
        ("node=0,memory=lots", "invalid memory=lots"),
        ("node=0,memory=1G,distance=1-20", "is not NODE:DISTANCE"),
        ("node=0,memory=1G,distance=1:300", "invalid distance=1:300"),
        ("node=0,memory=1G,host_node=-1", "invalid host_node=-1"),
        ("node=0,memory=1G,hugepages=maybe", "expected on or off"),
        ("node=0,memory=1G,colour=blue", "unknown option colour"),
        ("node=0,node=1,memory=1G", "node is given twice"),
    ] {
        let err = parse_numa(bad).unwrap_err().to_string();
        assert!(
            err.starts_with("--numa: ") && err.contains(says),
            "{bad}: {err}"
        );
    }
}

#[test]
fn json_takes_cpus_as_a_list_or_a_string_and_writes_the_string() {
    let c: VmConfig = serde_json::from_str(
        r#"{"machine": {"vcpus": 4, "memory": "768M"}, "numa": [
            {"node": 0, "cpus": [0, 1], "memory": "512M", "host_node": 0},
            {"node": 1, "cpus": "2-3", "memory": 268435456,
             "distances": [{"node": 0, "distance": 31}], "hugepages": true}]}"#,
    )
    .unwrap();
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.numa[0].cpus, CpuList(vec![0, 1]));
    assert_eq!(c.numa[1].memory, ByteSize(256 * MIB));
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["numa"][0]["cpus"], "0-1");
    assert_eq!(json["numa"][1]["distances"][0]["distance"], 31);
    assert!(json["numa"][0].get("hugepages").is_none());
    assert_eq!(serde_json::from_value::<VmConfig>(json).unwrap(), c);
    assert!(serde_json::to_value(VmConfig::default())
        .unwrap()
        .get("numa")
        .is_none());
    for bad in [
        r#"{"numa": [{"node": 0, "memory": "1G", "colour": 1}]}"#,
        r#"{"numa": [{"node": 0}]}"#,
        r#"{"numa": [{"node": 0, "memory": "1G", "cpus": "0-"}]}"#,
        r#"{"numa": [{"node": 0, "memory": "1G", "distances": [{"node": 1}]}]}"#,
        r#"{"numa": [{"node": 0, "memory": "1G", "distances": [{"node": 1, "distance": 256}]}]}"#,
    ] {
        assert!(serde_json::from_str::<VmConfig>(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_consistent_topology_validates_and_lays_out_its_memory() {
    let c = machine(
        6,
        &[
            "node=0,cpus=0-1,memory=2G",
            "node=1,cpus=2,4-5,memory=2G,host_node=0",
            "node=2,cpus=3,memory=64M",
        ],
    );
    assert_eq!(c.validate(), Ok(()));
    let layout = c.memory_layout().unwrap();
    assert_eq!(layout.nodes(), 3);
    assert_eq!(layout.node_ranges(1).count(), 2, "node 1 crosses the gap");
    assert_eq!(layout.node_size(2), 64 * MIB);
    let placement = c.memory_placement();
    assert_eq!(placement.node(1).host_node, Some(0));
    assert_eq!(placement.node(0), memory::NodePlacement::default());
    assert_eq!((c.vcpu_node(3), c.vcpu_node(4), c.vcpu_node(0)), (2, 1, 0));
    // Without NUMA: the plain layout, everything node 0.
    let plain = VmConfig::default();
    assert_eq!(
        plain.memory_layout().unwrap(),
        memory::MemoryLayout::new(128 * MIB).unwrap()
    );
    assert_eq!(plain.memory_placement(), memory::Placement::default());
}

#[test]
fn a_node_without_cpus_is_a_memory_only_node() {
    let c = machine(2, &["node=0,cpus=0-1,memory=64M", "node=1,memory=64M"]);
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn node_ids_must_be_0_to_n_minus_1_in_order_and_unique() {
    let c = machine(2, &["node=0,cpus=0,memory=64M", "node=0,cpus=1,memory=64M"]);
    assert_eq!(refused(&c), NumaError::DuplicateNode(0));
    let c = machine(2, &["node=1,cpus=0,memory=64M", "node=0,cpus=1,memory=64M"]);
    assert_eq!(
        refused(&c),
        NumaError::NotContiguous {
            node: 1,
            expected: 0
        }
    );
    let c = machine(2, &["node=0,cpus=0,memory=64M", "node=2,cpus=1,memory=64M"]);
    assert!(matches!(
        refused(&c),
        NumaError::NotContiguous { node: 2, .. }
    ));
    let many: Vec<String> = (0..65)
        .map(|i| format!("node={i},memory=4M,cpus={}", if i == 0 { "0" } else { "" }))
        .map(|s| s.trim_end_matches(",cpus=").to_string())
        .collect();
    let flags: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        refused(&machine(1, &flags)),
        NumaError::TooManyNodes { count: 65, max: 64 }
    );
}

#[test]
fn every_vcpu_is_in_exactly_one_node() {
    let c = machine(
        4,
        &["node=0,cpus=0-2,memory=64M", "node=1,cpus=2-3,memory=64M"],
    );
    assert_eq!(
        refused(&c),
        NumaError::CpuTwice {
            cpu: 2,
            first: 0,
            second: 1
        }
    );
    let c = machine(
        4,
        &["node=0,cpus=0-1,memory=64M", "node=1,cpus=4,memory=64M"],
    );
    let err = refused(&c);
    assert_eq!(
        err,
        NumaError::CpuOutOfRange {
            node: 1,
            cpu: 4,
            vcpus: 4
        }
    );
    assert!(err.to_string().contains("vCPUs are 0 to 3"), "{err}");
    let c = machine(
        8,
        &["node=0,cpus=0-1,memory=64M", "node=1,cpus=3,memory=64M"],
    );
    let err = refused(&c);
    assert_eq!(
        err,
        NumaError::CpusUnassigned {
            cpus: "2,4-7".into()
        }
    );
}

#[test]
fn node_memory_must_add_up_to_the_machine_memory() {
    let mut c = machine(1, &["node=0,cpus=0,memory=64M", "node=1,memory=64M"]);
    c.machine.memory = ByteSize(256 * MIB);
    let err = refused(&c);
    assert_eq!(
        err,
        NumaError::MemorySum {
            nodes: "128M".into(),
            machine: ByteSize(256 * MIB)
        }
    );
    assert!(err.to_string().contains("--memory"), "{err}");
    // Sizes that overflow when added.
    c.numa[1].memory = ByteSize(u64::MAX - 4095);
    assert!(matches!(refused(&c), NumaError::MemorySum { .. }));
}

#[test]
fn node_memory_must_be_whole_pages_and_huge_pages_need_2_mib() {
    // 4 KiB pages in all, but not per node.
    let c = machine(1, &["node=0,cpus=0,memory=65538K", "node=1,memory=2K"]);
    assert!(matches!(refused(&c), NumaError::NodeMemory { node: 0, .. }));
    let c = machine(1, &["node=0,cpus=0,memory=64M", "node=1,memory=0"]);
    assert!(matches!(refused(&c), NumaError::NodeMemory { node: 1, .. }));
    let c = machine(
        1,
        &["node=0,cpus=0,memory=64M,hugepages=on", "node=1,memory=3M"],
    );
    assert_eq!(c.validate(), Ok(()), "huge pages are per node");
    let c = machine(
        1,
        &["node=0,cpus=0,memory=3M,hugepages=on", "node=1,memory=64M"],
    );
    let err = refused(&c);
    assert!(err.to_string().contains("multiple of 2 MiB"), "{err}");
    let c = machine(
        1,
        &["node=0,cpus=0,memory=65M", "node=1,memory=64M,hugepages=on"],
    );
    assert_eq!(
        refused(&c),
        NumaError::HugeStart {
            node: 1,
            start: ByteSize(65 * MIB)
        }
    );
    let mut c = machine(1, &["node=0,cpus=0,memory=64M,hugepages=on"]);
    c.machine.shared_memory = true;
    assert_eq!(refused(&c), NumaError::SharedHugePages { node: 0 });
}

#[test]
fn distances_are_checked_and_mirrored() {
    let nodes = |flags: &[&str]| machine(1, flags);
    let three = |d0: &str, d1: &str| {
        nodes(&[
            &format!("node=0,cpus=0,memory=64M{d0}"),
            &format!("node=1,memory=64M{d1}"),
            "node=2,memory=64M",
        ])
    };
    let c = three(",distance=1:15;2:40", ",distance=0:15");
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(
        distance_matrix(&c.numa).unwrap(),
        vec![vec![10, 15, 40], vec![15, 10, 20], vec![40, 20, 10]]
    );
    assert_eq!(distance_matrix(&[]).unwrap(), Vec::<Vec<u8>>::new());
    for (d0, d1, err) in [
        (
            ",distance=3:20",
            "",
            NumaError::UnknownDistanceNode { node: 0, to: 3 },
        ),
        (
            ",distance=0:12",
            "",
            NumaError::LocalDistance {
                node: 0,
                distance: 12,
            },
        ),
        (
            ",distance=1:9",
            "",
            NumaError::RemoteDistance {
                node: 0,
                to: 1,
                distance: 9,
            },
        ),
        (
            ",distance=1:10",
            "",
            NumaError::RemoteDistance {
                node: 0,
                to: 1,
                distance: 10,
            },
        ),
        (
            ",distance=1:255",
            "",
            NumaError::RemoteDistance {
                node: 0,
                to: 1,
                distance: 255,
            },
        ),
        (
            ",distance=1:20;1:20",
            "",
            NumaError::DistanceTwice { node: 0, to: 1 },
        ),
        (
            "",
            ",distance=0:30",
            NumaError::AsymmetricDistance {
                a: 0,
                b: 1,
                ab: 20,
                ba: 30,
            },
        ),
    ] {
        let mut c = three(d0, d1);
        if d1 == ",distance=0:30" {
            c.numa[0].distances = vec![NodeDistance {
                node: 1,
                distance: 20,
            }];
        }
        assert_eq!(refused(&c), err, "{d0} {d1}");
    }
    // A node's own distance may be given as 10.
    assert_eq!(three(",distance=0:10", "").validate(), Ok(()));
}

#[test]
fn host_node_is_range_checked_here_and_its_existence_at_build() {
    let c = machine(1, &["node=0,cpus=0,memory=64M,host_node=7"]);
    assert_eq!(c.validate(), Ok(()), "node 7 may exist where it runs");
    let c = machine(1, &["node=0,cpus=0,memory=64M,host_node=1024"]);
    assert_eq!(
        refused(&c),
        NumaError::HostNode {
            node: 0,
            host_node: 1024,
            max: 1024
        }
    );
}

#[test]
fn a_migration_needs_the_same_guest_topology_but_not_the_same_host_placement() {
    let ours = machine(
        2,
        &[
            "node=0,cpus=0,memory=64M,host_node=0",
            "node=1,cpus=1,memory=64M",
        ],
    );
    let mut theirs = machine(
        2,
        &[
            "node=0,cpus=0,memory=64M",
            "node=1,cpus=1,memory=64M,hugepages=on",
        ],
    );
    assert_eq!(check_same_guest_topology(&theirs, &ours), Ok(()));
    theirs.numa[0].distances = vec![NodeDistance {
        node: 1,
        distance: 40,
    }];
    assert!(check_same_guest_topology(&theirs, &ours)
        .unwrap_err()
        .contains("distances"));
    let swapped = machine(2, &["node=0,cpus=1,memory=64M", "node=1,cpus=0,memory=64M"]);
    let err = check_same_guest_topology(&swapped, &ours).unwrap_err();
    assert!(err.contains("NUMA node 0 has vCPUs \"0\""), "{err}");
    let err = check_same_guest_topology(&VmConfig::default(), &ours).unwrap_err();
    assert_eq!(err, "2 NUMA nodes here, 0 from the source");
}

#[test]
fn nodes_without_acpi_are_refused() {
    let mut c = machine(1, &["node=0,cpus=0,memory=64M"]);
    assert_eq!(c.validate(), Ok(()));
    c.machine.acpi = false;
    assert_eq!(refused(&c), NumaError::NeedsAcpi);
}

#[test]
fn a_huge_cpu_range_is_refused_without_building_it() {
    let err = parse_numa("node=0,cpus=0-4294967294,memory=64M").unwrap_err();
    assert!(err.to_string().contains("4294967294"), "{err}");
    let json = r#"{"node": 0, "cpus": "0-4294967294", "memory": "64M"}"#;
    assert!(serde_json::from_str::<NumaNode>(json).is_err());
    assert!(parse_numa("node=0,cpus=0-253,memory=64M").is_ok());
}

#[test]
fn a_distance_from_a_node_beyond_the_list_is_an_error_not_a_panic() {
    let mut c = machine(2, &["node=0,cpus=0,memory=64M", "node=1,cpus=1,memory=64M"]);
    c.numa[1].node = 5;
    c.numa[1].distances = vec![NodeDistance {
        node: 0,
        distance: 30,
    }];
    assert!(distance_matrix(&c.numa).is_err());
    assert!(check_same_guest_topology(&c, &machine(2, &["node=0,cpus=0-1,memory=128M"])).is_err());
}
