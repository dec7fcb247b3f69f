//! What the destination compares before any memory moves.

use serde::{Deserialize, Serialize};

/// The parts of a machine that must match on both sides of a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compat {
    /// blake3 of the CPUID the guest sees.
    pub cpuid_hash: [u8; 32],
    /// Guest RAM regions: (guest-physical start, length in bytes), in order.
    pub memory: Vec<(u64, u64)>,
    pub vcpus: u32,
    /// Attached devices: (id, kind), in the order the VMM lists them.
    pub devices: Vec<(String, String)>,
}

fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

impl Compat {
    /// Checks the source's `self` against `ours` (the destination's); the error names the
    /// first difference, "here" being the destination.
    pub fn check(&self, ours: &Compat) -> Result<(), String> {
        if self.vcpus != ours.vcpus {
            return Err(format!(
                "{} vCPUs here, {} from the source",
                ours.vcpus, self.vcpus
            ));
        }
        let total = |c: &Compat| c.memory.iter().map(|r| r.1).fold(0u64, u64::saturating_add);
        if total(self) != total(ours) {
            return Err(format!(
                "memory size {} here, {} from the source",
                mib(total(ours)),
                mib(total(self))
            ));
        }
        if self.memory.len() != ours.memory.len() {
            return Err(format!(
                "{} memory regions here, {} from the source",
                ours.memory.len(),
                self.memory.len()
            ));
        }
        for (i, (theirs, mine)) in self.memory.iter().zip(&ours.memory).enumerate() {
            if theirs != mine {
                return Err(format!(
                    "memory region {i} is {} at {:#x} here, {} at {:#x} from the source",
                    mib(mine.1),
                    mine.0,
                    mib(theirs.1),
                    theirs.0
                ));
            }
        }
        if self.cpuid_hash != ours.cpuid_hash {
            return Err("the CPUID the guest sees differs from the source's".to_string());
        }
        for (id, kind) in &self.devices {
            match ours.devices.iter().find(|(i, _)| i == id) {
                None => {
                    return Err(format!(
                        "device {id} ({kind}) of the source is missing here"
                    ))
                }
                Some((_, k)) if k != kind => {
                    return Err(format!(
                        "device {id} is a {k} here, a {kind} from the source"
                    ))
                }
                Some(_) => {}
            }
        }
        for (id, kind) in &ours.devices {
            if !self.devices.iter().any(|(i, _)| i == id) {
                return Err(format!(
                    "device {id} ({kind}) here is missing from the source"
                ));
            }
        }
        if self.devices != ours.devices {
            return Err("the devices are listed in a different order than on the source".into());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Compat {
        Compat {
            cpuid_hash: [7; 32],
            memory: vec![(0, 256 << 20)],
            vcpus: 2,
            devices: vec![
                ("serial0".into(), "uart".into()),
                ("disk0".into(), "virtio-blk".into()),
            ],
        }
    }

    #[test]
    fn identical_machines_are_compatible() {
        assert_eq!(sample().check(&sample()), Ok(()));
    }

    #[test]
    fn memory_size_difference_is_named_in_words() {
        let source = Compat {
            memory: vec![(0, 512 << 20)],
            ..sample()
        };
        assert_eq!(
            source.check(&sample()).unwrap_err(),
            "memory size 256 MiB here, 512 MiB from the source"
        );
    }

    #[test]
    fn each_difference_is_named() {
        let vcpus = Compat {
            vcpus: 4,
            ..sample()
        };
        assert_eq!(
            vcpus.check(&sample()).unwrap_err(),
            "2 vCPUs here, 4 from the source"
        );

        let layout = Compat {
            memory: vec![(0, 128 << 20), (1 << 32, 128 << 20)],
            ..sample()
        };
        assert_eq!(
            layout.check(&sample()).unwrap_err(),
            "1 memory regions here, 2 from the source"
        );

        let moved = Compat {
            memory: vec![(1 << 20, 256 << 20)],
            ..sample()
        };
        assert_eq!(
            moved.check(&sample()).unwrap_err(),
            "memory region 0 is 256 MiB at 0x0 here, 256 MiB at 0x100000 from the source"
        );

        let cpuid = Compat {
            cpuid_hash: [8; 32],
            ..sample()
        };
        assert!(cpuid.check(&sample()).unwrap_err().contains("CPUID"));

        let mut extra = sample();
        extra.devices.push(("net0".into(), "virtio-net".into()));
        assert_eq!(
            extra.check(&sample()).unwrap_err(),
            "device net0 (virtio-net) of the source is missing here"
        );
        assert_eq!(
            sample().check(&extra).unwrap_err(),
            "device net0 (virtio-net) here is missing from the source"
        );

        let mut kind = sample();
        kind.devices[1].1 = "virtio-net".into();
        assert_eq!(
            kind.check(&sample()).unwrap_err(),
            "device disk0 is a virtio-blk here, a virtio-net from the source"
        );

        let mut order = sample();
        order.devices.reverse();
        assert!(order.check(&sample()).unwrap_err().contains("order"));
    }

    #[test]
    fn only_the_first_difference_is_reported() {
        let source = Compat {
            vcpus: 1,
            memory: vec![(0, 1 << 30)],
            ..sample()
        };
        assert_eq!(
            source.check(&sample()).unwrap_err(),
            "2 vCPUs here, 1 from the source"
        );
    }
}
