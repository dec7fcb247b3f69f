//! The guest's NUMA topology: `--numa node=0,cpus=0-3,memory=512M[,host_node=0]
//! [,distance=1:20;2:30][,hugepages=on]`, repeatable, and `VmConfig::numa` in JSON.
//!
//! Rules (checked by [`validate`], without touching the host):
//! - nodes are numbered 0 to n-1 and given in that order; at most [`MAX_NUMA_NODES`];
//! - every vCPU is in exactly one node; a node may have no vCPUs (a memory-only node);
//! - every node has memory, in whole 4 KiB pages (2 MiB with `hugepages=on`, and then the
//!   node must also start on a 2 MiB boundary of guest RAM), and the nodes' memory adds up
//!   to `machine.memory` exactly: a mismatch is refused, not corrected;
//! - distances: a node's distance to itself is 10 ([`LOCAL_DISTANCE`]); to another node 11
//!   to 254, [`DEFAULT_REMOTE_DISTANCE`] (20) when not given. The matrix (ACPI SLIT) is
//!   symmetric: a distance given on one side applies both ways (mirrored); given on both
//!   sides, the two must agree.
//! - `host_node` is only checked for range here; whether the host has that node is checked
//!   when the machine is built (the configuration may be written for another host).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ByteSize, ConfigError, Options, VmConfig, MAX_VCPUS};
use memory::numa::{format_cpu_list, parse_cpu_list, HUGE_PAGE_SIZE, MAX_HOST_NODES};

/// The most guest NUMA nodes.
pub const MAX_NUMA_NODES: usize = 64;
/// A node's distance to itself (ACPI SLIT).
pub const LOCAL_DISTANCE: u8 = 10;
/// The distance between two nodes when none is given.
pub const DEFAULT_REMOTE_DISTANCE: u8 = 20;
/// The largest remote distance (255 means "unreachable" in a SLIT).
pub const MAX_DISTANCE: u8 = 254;

/// vCPU ids, written `0-3,6` (JSON: that string, or an array of numbers).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "CpusRepr", into = "String")]
pub struct CpuList(pub Vec<u32>);

#[derive(Deserialize)]
#[serde(untagged)]
enum CpusRepr {
    List(Vec<u32>),
    Text(String),
}

impl TryFrom<CpusRepr> for CpuList {
    type Error = String;
    fn try_from(r: CpusRepr) -> Result<Self, String> {
        let cpus = match r {
            CpusRepr::List(mut cpus) => {
                cpus.sort_unstable();
                cpus.dedup();
                cpus
            }
            CpusRepr::Text(s) => parse_cpu_list(&s, MAX_VCPUS).map_err(|e| e.to_string())?,
        };
        Ok(CpuList(cpus))
    }
}

impl From<CpuList> for String {
    fn from(c: CpuList) -> String {
        format_cpu_list(&c.0)
    }
}

impl CpuList {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A distance from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDistance {
    /// The other node.
    pub node: u32,
    /// The relative distance (10 is local).
    pub distance: u8,
}

/// One guest NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaNode {
    /// The node's id (proximity domain): 0 to n-1, in order.
    pub node: u32,
    /// The vCPUs in this node.
    #[serde(default, skip_serializing_if = "CpuList::is_empty")]
    pub cpus: CpuList,
    /// Its RAM.
    pub memory: ByteSize,
    /// The host NUMA node its memory is bound to and its vCPU threads pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_node: Option<u32>,
    /// Distances to other nodes (the rest are 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distances: Vec<NodeDistance>,
    /// Back its memory with 2 MiB huge pages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hugepages: bool,
}

/// What is wrong with a NUMA configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumaError {
    #[error("{count} NUMA nodes; petrel supports at most {max}")]
    TooManyNodes { count: usize, max: usize },
    #[error("NUMA node {0} is given twice")]
    DuplicateNode(u32),
    #[error(
        "NUMA nodes must be numbered 0, 1, 2, ... in the order given: node {node} is given where \
         node {expected} belongs"
    )]
    NotContiguous { node: u32, expected: u32 },
    #[error("vCPU {cpu} is in NUMA node {first} and in node {second}")]
    CpuTwice { cpu: u32, first: u32, second: u32 },
    #[error("NUMA node {node} lists CPU {cpu}, but the machine's vCPUs are 0 to {}", vcpus - 1)]
    CpuOutOfRange { node: u32, cpu: u32, vcpus: u32 },
    #[error("vCPUs {cpus} are in no NUMA node: every vCPU must be in one")]
    CpusUnassigned { cpus: String },
    #[error(
        "the NUMA nodes' memory adds up to {nodes}, but the machine has {machine}: make them \
         equal (--memory, machine.memory or mem_size_mib)"
    )]
    MemorySum { nodes: String, machine: ByteSize },
    #[error("NUMA node {node}: memory {size} is invalid: {reason}")]
    NodeMemory {
        node: u32,
        size: ByteSize,
        reason: &'static str,
    },
    #[error(
        "NUMA node {node} uses huge pages, so it must start on a 2 MiB boundary of guest RAM; \
         the nodes before it add up to {start}"
    )]
    HugeStart { node: u32, start: ByteSize },
    #[error("NUMA node {node} gives a distance to node {to}, which does not exist")]
    UnknownDistanceNode { node: u32, to: u32 },
    #[error("NUMA node {node}: the distance to itself is always 10, not {distance}")]
    LocalDistance { node: u32, distance: u8 },
    #[error(
        "NUMA node {node}: the distance to node {to} must be 11 to 254 (10 is local), not \
         {distance}"
    )]
    RemoteDistance { node: u32, to: u32, distance: u8 },
    #[error("NUMA node {node} gives its distance to node {to} twice")]
    DistanceTwice { node: u32, to: u32 },
    #[error(
        "NUMA distances are symmetric, but node {a} gives {ab} to node {b} and node {b} gives \
         {ba} to node {a}"
    )]
    AsymmetricDistance { a: u32, b: u32, ab: u8, ba: u8 },
    #[error(
        "NUMA node {node}: host_node {host_node} is out of range (host nodes are below {max})"
    )]
    HostNode { node: u32, host_node: u32, max: u32 },
    #[error(
        "NUMA node {node} uses huge pages, which shared memory (a memfd) cannot have: turn off \
         shared_memory or hugepages (vhost-user devices need shared memory)"
    )]
    SharedHugePages { node: u32 },
    #[error(
        "NUMA nodes are described to the guest in ACPI tables (SRAT, SLIT), which --acpi off \
         leaves out: turn ACPI on or remove the nodes"
    )]
    NeedsAcpi,
}

/// `--numa node=N,cpus=LIST,memory=SIZE[,host_node=N][,distance=N:D;N:D...][,hugepages=on]`.
pub fn parse_numa(text: &str) -> Result<NumaNode, ConfigError> {
    let mut o = Options::parse_with_lists("numa", text, &["cpus"])?;
    let node = o.take_parsed("node", |s| s.parse::<u32>())?;
    let node = node.ok_or_else(|| o.invalid("node", "", "node=N is required"))?;
    let cpus = o
        .take_parsed("cpus", |s| parse_cpu_list(s, MAX_VCPUS))?
        .unwrap_or_default();
    let memory = o.take_parsed("memory", |s| s.parse::<ByteSize>())?;
    let memory = memory.ok_or_else(|| o.invalid("memory", "", "memory=SIZE is required"))?;
    let host_node = o.take_parsed("host_node", |s| s.parse::<u32>())?;
    let distances = o
        .take_parsed("distance", parse_distances)?
        .unwrap_or_default();
    let hugepages = o.take_bool("hugepages")?;
    o.finish()?;
    Ok(NumaNode {
        node,
        cpus: CpuList(cpus),
        memory,
        host_node,
        distances,
        hugepages,
    })
}

/// `1:20;2:30`: node and distance pairs.
fn parse_distances(text: &str) -> Result<Vec<NodeDistance>, String> {
    text.split(';')
        .map(|pair| {
            let (node, distance) = pair
                .split_once(':')
                .ok_or_else(|| format!("{pair:?} is not NODE:DISTANCE"))?;
            Ok(NodeDistance {
                node: node
                    .trim()
                    .parse()
                    .map_err(|e| format!("node {node:?}: {e}"))?,
                distance: distance
                    .trim()
                    .parse()
                    .map_err(|e| format!("distance {distance:?}: {e}"))?,
            })
        })
        .collect()
}

/// Checks `config.numa` against the rest of the machine (see the module's rules).
pub fn validate(config: &VmConfig) -> Result<(), NumaError> {
    let nodes = &config.numa;
    if nodes.is_empty() {
        return Ok(());
    }
    if nodes.len() > MAX_NUMA_NODES {
        return Err(NumaError::TooManyNodes {
            count: nodes.len(),
            max: MAX_NUMA_NODES,
        });
    }
    for (expected, n) in (0u32..).zip(nodes) {
        if nodes[..expected as usize].iter().any(|m| m.node == n.node) {
            return Err(NumaError::DuplicateNode(n.node));
        }
        if n.node != expected {
            return Err(NumaError::NotContiguous {
                node: n.node,
                expected,
            });
        }
    }
    if !config.machine.acpi {
        return Err(NumaError::NeedsAcpi);
    }
    check_cpus(nodes, config.machine.vcpus)?;
    check_memory(config)?;
    distance_matrix(nodes)?;
    for n in nodes {
        if let Some(host_node) = n.host_node.filter(|&h| h >= MAX_HOST_NODES) {
            return Err(NumaError::HostNode {
                node: n.node,
                host_node,
                max: MAX_HOST_NODES,
            });
        }
    }
    Ok(())
}

fn check_cpus(nodes: &[NumaNode], vcpus: u32) -> Result<(), NumaError> {
    let mut owner: BTreeMap<u32, u32> = BTreeMap::new();
    for n in nodes {
        for &cpu in &n.cpus.0 {
            if cpu >= vcpus {
                return Err(NumaError::CpuOutOfRange {
                    node: n.node,
                    cpu,
                    vcpus,
                });
            }
            if let Some(first) = owner.insert(cpu, n.node) {
                return Err(NumaError::CpuTwice {
                    cpu,
                    first,
                    second: n.node,
                });
            }
        }
    }
    let missing: Vec<u32> = (0..vcpus).filter(|c| !owner.contains_key(c)).collect();
    if !missing.is_empty() {
        return Err(NumaError::CpusUnassigned {
            cpus: format_cpu_list(&missing),
        });
    }
    Ok(())
}

fn check_memory(config: &VmConfig) -> Result<(), NumaError> {
    let mut start: u64 = 0;
    for n in &config.numa {
        let size = n.memory.0;
        let bad = |reason| NumaError::NodeMemory {
            node: n.node,
            size: n.memory,
            reason,
        };
        if size == 0 || !size.is_multiple_of(memory::PAGE_SIZE as u64) {
            return Err(bad("it must be a non-zero multiple of 4 KiB"));
        }
        if n.hugepages {
            if !size.is_multiple_of(HUGE_PAGE_SIZE) {
                return Err(bad("with huge pages it must be a multiple of 2 MiB"));
            }
            if !start.is_multiple_of(HUGE_PAGE_SIZE) {
                return Err(NumaError::HugeStart {
                    node: n.node,
                    start: ByteSize(start),
                });
            }
            if config.needs_shared_memory() {
                return Err(NumaError::SharedHugePages { node: n.node });
            }
        }
        start = start.saturating_add(size);
    }
    if start != config.machine.memory.0 {
        let nodes = if start == u64::MAX {
            "more than 16 EiB".to_string()
        } else {
            ByteSize(start).to_string()
        };
        return Err(NumaError::MemorySum {
            nodes,
            machine: config.machine.memory,
        });
    }
    Ok(())
}

/// The distance matrix of `nodes`, for the ACPI SLIT: row `i`, column `j` is the distance
/// from node `i` to node `j`; 10 on the diagonal, mirrored where only one side gives a
/// distance, 20 where neither does. Empty without NUMA. Checks every given distance (it
/// cannot fail for a validated configuration).
pub fn distance_matrix(nodes: &[NumaNode]) -> Result<Vec<Vec<u8>>, NumaError> {
    let count = nodes.len();
    let mut given: Vec<Vec<Option<u8>>> = vec![vec![None; count]; count];
    for n in nodes {
        for d in &n.distances {
            let (from, to) = (n.node, d.node);
            if from as usize >= count {
                // Only for a configuration `validate` has not seen (a migration peer's).
                return Err(NumaError::NotContiguous {
                    node: from,
                    expected: count.saturating_sub(1) as u32,
                });
            }
            if to as usize >= count {
                return Err(NumaError::UnknownDistanceNode { node: from, to });
            }
            if to == from && d.distance != LOCAL_DISTANCE {
                return Err(NumaError::LocalDistance {
                    node: from,
                    distance: d.distance,
                });
            }
            if to != from && !(LOCAL_DISTANCE + 1..=MAX_DISTANCE).contains(&d.distance) {
                return Err(NumaError::RemoteDistance {
                    node: from,
                    to,
                    distance: d.distance,
                });
            }
            let slot = &mut given[from as usize][to as usize];
            if slot.is_some() {
                return Err(NumaError::DistanceTwice { node: from, to });
            }
            *slot = Some(d.distance);
        }
    }
    let mut matrix = vec![vec![DEFAULT_REMOTE_DISTANCE; count]; count];
    for i in 0..count {
        for j in 0..count {
            matrix[i][j] = match (given[i][j], given[j][i]) {
                _ if i == j => LOCAL_DISTANCE,
                (Some(ab), Some(ba)) if ab != ba => {
                    let (a, b) = (i.min(j) as u32, i.max(j) as u32);
                    let (ab, ba) = if i < j { (ab, ba) } else { (ba, ab) };
                    return Err(NumaError::AsymmetricDistance { a, b, ab, ba });
                }
                (Some(d), _) | (None, Some(d)) => d,
                (None, None) => DEFAULT_REMOTE_DISTANCE,
            };
        }
    }
    Ok(matrix)
}

/// Checks that the guest sees the same NUMA topology in `theirs` (a migration's source) as
/// in `ours`: the same nodes with the same vCPUs and memory, and the same distances. Host
/// placement (`host_node`, `hugepages`) is each host's own. The error names the first
/// difference, "here" being `ours`.
pub fn check_same_guest_topology(theirs: &VmConfig, ours: &VmConfig) -> Result<(), String> {
    if theirs.numa.len() != ours.numa.len() {
        return Err(format!(
            "{} NUMA nodes here, {} from the source",
            ours.numa.len(),
            theirs.numa.len()
        ));
    }
    for (t, o) in theirs.numa.iter().zip(&ours.numa) {
        if t.cpus != o.cpus || t.memory != o.memory {
            return Err(format!(
                "NUMA node {} has vCPUs {:?} and {} here, vCPUs {:?} and {} from the source",
                o.node,
                format_cpu_list(&o.cpus.0),
                o.memory,
                format_cpu_list(&t.cpus.0),
                t.memory
            ));
        }
    }
    if distance_matrix(&theirs.numa).ok() != distance_matrix(&ours.numa).ok() {
        return Err("the NUMA distances differ from the source's".into());
    }
    Ok(())
}

impl VmConfig {
    /// Where the guest's RAM lives: one range per node (two for a node crossing the MMIO
    /// gap) with NUMA, else the plain layout of `machine.memory`.
    pub fn memory_layout(&self) -> Result<memory::MemoryLayout, memory::MemoryError> {
        if self.numa.is_empty() {
            memory::MemoryLayout::new(self.machine.memory.0)
        } else {
            let sizes: Vec<u64> = self.numa.iter().map(|n| n.memory.0).collect();
            memory::MemoryLayout::with_nodes(&sizes)
        }
    }

    /// Where each node's memory goes on the host.
    pub fn memory_placement(&self) -> memory::Placement {
        memory::Placement {
            nodes: self
                .numa
                .iter()
                .map(|n| memory::NodePlacement {
                    host_node: n.host_node,
                    hugepages: n.hugepages,
                })
                .collect(),
        }
    }

    /// The guest node of vCPU `cpu`: 0 without NUMA.
    pub fn vcpu_node(&self, cpu: u32) -> u32 {
        self.numa
            .iter()
            .find(|n| n.cpus.0.contains(&cpu))
            .map_or(0, |n| n.node)
    }
}

#[cfg(test)]
mod tests;
