//! vCPU thread affinity: the vCPUs of a guest NUMA node with a `host_node` run on that host
//! node's CPUs only (`sched_setaffinity`), set by each vCPU thread on itself before its
//! first `KVM_RUN`.

use memory::numa::{format_cpu_list, HostTopology};

use crate::config::VmConfig;

/// Errors working out where vCPU threads may run.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    /// The host's topology could not be read, or the host node does not exist.
    #[error(transparent)]
    Host(#[from] memory::MemoryError),
    /// The host node has no CPUs to run vCPUs on (a memory-only node).
    #[error("guest node {node}'s vCPUs cannot be pinned to host node {host_node}: it has no CPUs")]
    NoCpus { node: u32, host_node: u32 },
}

/// A set of host CPUs as the kernel's affinity mask: bit `c` of word `c / 64` is CPU `c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuMask {
    words: Vec<libc::c_ulong>,
}

const BITS: usize = libc::c_ulong::BITS as usize;

impl CpuMask {
    /// The mask of `cpus` (host CPU numbers, bounded by `memory::numa::MAX_HOST_CPUS` when
    /// read from sysfs).
    pub fn new(cpus: &[u32]) -> Self {
        let len = cpus.iter().max().map_or(0, |&m| m as usize / BITS + 1);
        let mut words = vec![0; len];
        for &c in cpus {
            words[c as usize / BITS] |= 1 << (c as usize % BITS);
        }
        Self { words }
    }

    /// The CPUs in the mask, ascending.
    pub fn cpus(&self) -> Vec<u32> {
        (0..self.words.len() * BITS)
            .filter(|&c| self.words[c / BITS] & (1 << (c % BITS)) != 0)
            .map(|c| c as u32)
            .collect()
    }

    /// Restricts the calling thread to these CPUs.
    pub fn apply_to_current_thread(&self) -> std::io::Result<()> {
        let bytes = self.words.len() * std::mem::size_of::<libc::c_ulong>();
        // SAFETY: `words` is `bytes` long and alive for the call; pid 0 is the calling
        // thread; sched_setaffinity only reads the mask.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_sched_setaffinity,
                0 as libc::pid_t,
                bytes,
                self.words.as_ptr(),
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The CPUs the calling thread may run on.
    pub fn of_current_thread() -> std::io::Result<Self> {
        let mut words: Vec<libc::c_ulong> = vec![0; memory::numa::MAX_HOST_CPUS as usize / BITS];
        let bytes = words.len() * std::mem::size_of::<libc::c_ulong>();
        // SAFETY: `words` is `bytes` long, writable and alive for the call; the kernel writes
        // at most `bytes` into it.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                0 as libc::pid_t,
                bytes,
                words.as_mut_ptr(),
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { words })
    }
}

impl std::fmt::Display for CpuMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_cpu_list(&self.cpus()))
    }
}

/// The host CPUs each vCPU of `config` must run on, by vCPU id: the CPUs of its node's
/// `host_node`, or `None` (anywhere) for a vCPU of a node without one or without NUMA.
pub fn vcpu_affinity(
    config: &VmConfig,
    host: &HostTopology,
) -> Result<Vec<Option<CpuMask>>, AffinityError> {
    let mut masks = vec![None; config.machine.vcpus as usize];
    for n in &config.numa {
        let Some(host_node) = n.host_node else {
            continue;
        };
        let cpus = host.node_cpus(host_node)?;
        if cpus.is_empty() {
            return Err(AffinityError::NoCpus {
                node: n.node,
                host_node,
            });
        }
        let mask = CpuMask::new(&cpus);
        for &cpu in &n.cpus.0 {
            if let Some(slot) = masks.get_mut(cpu as usize) {
                *slot = Some(mask.clone());
            }
        }
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_numa;

    #[test]
    fn masks_hold_their_cpus() {
        let m = CpuMask::new(&[0, 3, 64, 65]);
        assert_eq!(m.cpus(), vec![0, 3, 64, 65]);
        assert_eq!(m.to_string(), "0,3,64-65");
        assert!(CpuMask::new(&[]).cpus().is_empty());
    }

    #[test]
    fn a_thread_pinned_to_node_0_runs_on_node_0s_cpus_only() {
        let host = HostTopology::default();
        let Ok(cpus) = host.node_cpus(0) else {
            eprintln!("skipped: this kernel shows no NUMA node 0 in sysfs");
            return;
        };
        let mask = CpuMask::new(&cpus);
        let seen = std::thread::spawn(move || {
            mask.apply_to_current_thread().unwrap();
            CpuMask::of_current_thread().unwrap().cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, cpus);
    }

    fn config(vcpus: u32, nodes: &[&str]) -> VmConfig {
        let mut c = VmConfig::default();
        c.machine.vcpus = vcpus;
        c.numa = nodes.iter().map(|n| parse_numa(n).unwrap()).collect();
        c
    }

    #[test]
    fn vcpus_of_a_node_with_a_host_node_get_its_cpus() {
        let dir = tempfile::tempdir().unwrap();
        for (n, cpus) in [(0, "0-1\n"), (1, "2-3\n"), (2, "\n")] {
            let node = dir.path().join(format!("devices/system/node/node{n}"));
            std::fs::create_dir_all(&node).unwrap();
            std::fs::write(node.join("cpulist"), cpus).unwrap();
        }
        let host = HostTopology::at(dir.path());
        let c = config(
            4,
            &[
                "node=0,cpus=0,2,memory=64M,host_node=1",
                "node=1,cpus=1,3,memory=64M",
            ],
        );
        let masks = vcpu_affinity(&c, &host).unwrap();
        let cpus: Vec<Option<Vec<u32>>> = masks
            .iter()
            .map(|m| m.as_ref().map(CpuMask::cpus))
            .collect();
        assert_eq!(cpus, vec![Some(vec![2, 3]), None, Some(vec![2, 3]), None]);
        assert!(vcpu_affinity(&config(2, &[]), &host)
            .unwrap()
            .iter()
            .all(Option::is_none));

        let missing = config(1, &["node=0,cpus=0,memory=64M,host_node=7"]);
        assert!(matches!(
            vcpu_affinity(&missing, &host),
            Err(AffinityError::Host(memory::MemoryError::NoHostNode {
                node: 7,
                ..
            }))
        ));
        let cpuless = config(1, &["node=0,cpus=0,memory=64M,host_node=2"]);
        assert!(matches!(
            vcpu_affinity(&cpuless, &host),
            Err(AffinityError::NoCpus {
                node: 0,
                host_node: 2
            })
        ));
    }
}
