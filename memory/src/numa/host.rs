//! The host's NUMA nodes as sysfs shows them: which exist, their CPUs and their free huge
//! pages. Read at build time, never when a configuration is parsed (the configuration may be
//! meant for another host).

use std::path::PathBuf;

use super::cpulist::parse_cpu_list;
use crate::MemoryError;

/// The huge page size petrel uses.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;
/// Host node numbers petrel binds to are below this (the kernel's own limit: 2^10 nodes).
pub const MAX_HOST_NODES: u32 = 1024;
/// Host CPU numbers are below this (bounds what is read from sysfs).
pub const MAX_HOST_CPUS: u32 = 1 << 16;

/// The host's sysfs, normally `/sys`; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct HostTopology {
    sys: PathBuf,
}

impl Default for HostTopology {
    fn default() -> Self {
        Self::at("/sys")
    }
}

impl HostTopology {
    /// The topology sysfs mounted at `sys` describes.
    pub fn at(sys: impl Into<PathBuf>) -> Self {
        Self { sys: sys.into() }
    }

    fn node_dir(&self, node: u32) -> PathBuf {
        self.sys.join(format!("devices/system/node/node{node}"))
    }

    fn read(&self, path: PathBuf) -> Result<String, MemoryError> {
        std::fs::read_to_string(&path).map_err(|source| MemoryError::HostTopology { path, source })
    }

    /// The host's nodes, in ascending order (none on a kernel without NUMA).
    pub fn nodes(&self) -> Vec<u32> {
        let dir = self.sys.join("devices/system/node");
        let mut nodes: Vec<u32> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// `Ok` when host node `node` exists, else `NoHostNode` naming the nodes there are.
    pub fn check_node(&self, node: u32) -> Result<(), MemoryError> {
        if node < MAX_HOST_NODES && self.node_dir(node).is_dir() {
            Ok(())
        } else {
            Err(MemoryError::NoHostNode {
                node,
                present: self.nodes(),
            })
        }
    }

    /// The CPUs of host node `node` (its `cpulist`; empty for a node without CPUs).
    pub fn node_cpus(&self, node: u32) -> Result<Vec<u32>, MemoryError> {
        self.check_node(node)?;
        let path = self.node_dir(node).join("cpulist");
        let text = self.read(path.clone())?;
        parse_cpu_list(&text, MAX_HOST_CPUS).map_err(|e| MemoryError::HostTopology {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// The free 2 MiB huge pages of host node `node`, or of the whole host (less those
    /// already reserved by mappings) for `None`. A kernel without huge pages has none.
    pub fn free_huge_pages(&self, node: Option<u32>) -> Result<u64, MemoryError> {
        const KIND: &str = "hugepages/hugepages-2048kB";
        let dir = match node {
            Some(n) => {
                self.check_node(n)?;
                self.node_dir(n).join(KIND)
            }
            None => self.sys.join("kernel/mm").join(KIND),
        };
        if !dir.is_dir() {
            return Ok(0);
        }
        let count = |name: &str| -> Result<u64, MemoryError> {
            let path = dir.join(name);
            let text = self.read(path.clone())?;
            text.trim().parse().map_err(|e| MemoryError::HostTopology {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
        };
        let free = count("free_hugepages")?;
        // Reserved pages are counted free until faulted in; only the host-wide count has them.
        let reserved = match node {
            None => count("resv_hugepages")?,
            Some(_) => 0,
        };
        Ok(free.saturating_sub(reserved))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs tree for tests.

    use std::path::Path;

    /// Writes `text` to `root/path`, making directories.
    pub fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A host with nodes `0..cpus.len()`, node `i` having CPUs `cpus[i]` and `free[i]` free
    /// huge pages; `host_free` and `host_resv` for the whole host.
    pub fn host(cpus: &[&str], free: &[u64], host_free: u64, host_resv: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (n, (c, f)) in cpus.iter().zip(free).enumerate() {
            let node = format!("devices/system/node/node{n}");
            write(root, &format!("{node}/cpulist"), &format!("{c}\n"));
            write(
                root,
                &format!("{node}/hugepages/hugepages-2048kB/free_hugepages"),
                &format!("{f}\n"),
            );
        }
        let mm = "kernel/mm/hugepages/hugepages-2048kB";
        write(
            root,
            &format!("{mm}/free_hugepages"),
            &format!("{host_free}\n"),
        );
        write(
            root,
            &format!("{mm}/resv_hugepages"),
            &format!("{host_resv}\n"),
        );
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_cpus_and_huge_pages_are_read_from_sysfs() {
        let dir = fake::host(&["0-3", "4-5,8", ""], &[10, 0, 3], 13, 4);
        let host = HostTopology::at(dir.path());
        assert_eq!(host.nodes(), vec![0, 1, 2]);
        assert_eq!(host.node_cpus(0).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(host.node_cpus(1).unwrap(), vec![4, 5, 8]);
        assert_eq!(host.node_cpus(2).unwrap(), Vec::<u32>::new());
        assert_eq!(host.free_huge_pages(Some(0)).unwrap(), 10);
        assert_eq!(host.free_huge_pages(None).unwrap(), 9);
    }

    #[test]
    fn a_missing_node_is_refused_naming_the_present_ones() {
        let dir = fake::host(&["0-1"], &[0], 0, 0);
        let host = HostTopology::at(dir.path());
        let err = host.node_cpus(7).unwrap_err();
        assert!(
            matches!(&err, MemoryError::NoHostNode { node: 7, present } if present == &[0]),
            "{err}"
        );
        assert!(err.to_string().contains("host NUMA node 7"), "{err}");
        assert!(host.check_node(u32::MAX).is_err());
        assert!(host.free_huge_pages(Some(3)).is_err());
    }

    #[test]
    fn a_host_without_huge_page_support_has_none_free() {
        let dir = tempfile::tempdir().unwrap();
        fake::write(dir.path(), "devices/system/node/node0/cpulist", "0\n");
        let host = HostTopology::at(dir.path());
        assert_eq!(host.free_huge_pages(None).unwrap(), 0);
        assert_eq!(host.free_huge_pages(Some(0)).unwrap(), 0);
    }

    #[test]
    fn this_host_has_node_0_with_cpus() {
        let host = HostTopology::default();
        if host.check_node(0).is_err() {
            eprintln!("skipped: this kernel shows no NUMA nodes in sysfs");
            return;
        }
        assert!(!host.node_cpus(0).unwrap().is_empty());
        host.free_huge_pages(Some(0)).unwrap();
        host.free_huge_pages(None).unwrap();
    }
}
