//! What a machine looks like to the other side of a migration ([`migration::Compat`]).

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};
use migration::Compat;

use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::config::VmConfig;

/// Why a machine's compatibility could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error("cannot read the CPUID KVM supports: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("cannot build the CPUID of a vCPU: {0}")]
    Cpuid(String),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
}

/// The machine `config` describes on this host: the CPUID petrel gives vCPU 0 here (what a
/// restored vCPU needs the host to support), the RAM layout, the vCPUs and the devices.
pub fn of(kvm: &Kvm, config: &VmConfig) -> Result<Compat, CompatError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CompatError::Kvm)?;
    let topo = VcpuTopology {
        apic_id: 0,
        vcpus: config.machine.vcpus,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
    };
    let cpuid = cpuid::vcpu_cpuid(&supported, topo, config.machine.cpu_template)
        .map_err(|e| CompatError::Cpuid(format!("{e:?}")))?;
    let mut hasher = blake3::Hasher::new();
    for e in cpuid.as_slice() {
        for word in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            hasher.update(&word.to_le_bytes());
        }
    }
    let layout = config.memory_layout()?;
    Ok(Compat {
        cpuid_hash: *hasher.finalize().as_bytes(),
        memory: layout.ram.iter().map(|r| (r.start, r.len)).collect(),
        vcpus: config.machine.vcpus,
        devices: devices(config),
    })
}

/// The devices `config` attaches, as (id, kind), in the order the VMM builds them.
fn devices(config: &VmConfig) -> Vec<(String, String)> {
    let kind = |id: &str, kind: &str| (id.to_string(), kind.to_string());
    let mut list = Vec::new();
    list.extend(config.disks.iter().map(|d| kind(&d.id, "virtio-blk")));
    list.extend(config.nets.iter().map(|n| kind(&n.id, "virtio-net")));
    list.extend(
        config
            .consoles
            .iter()
            .map(|c| kind(&c.id, "virtio-console")),
    );
    list.extend(config.vsock.iter().map(|v| kind(&v.id, "virtio-vsock")));
    list.extend(config.inputs.iter().map(|i| {
        let what = match i.kind {
            devices::virtio::input::InputKind::Keyboard => "virtio-input keyboard",
            devices::virtio::input::InputKind::Tablet => "virtio-input tablet",
        };
        kind(&i.id, what)
    }));
    list.extend(config.gpu.iter().map(|g| kind(&g.id, "virtio-gpu")));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm() -> Option<Kvm> {
        match Kvm::new() {
            Ok(k) => Some(k),
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "KVM needed in CI: {e}");
                None
            }
        }
    }

    fn config(json: &str) -> VmConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_same_machine_is_compatible_and_differences_are_named() {
        let Some(kvm) = kvm() else { return };
        let base = r#"{"machine": {"vcpus": 2, "memory": "256M"},
            "disks": [{"id": "root", "path": "/x"}]}"#;
        let a = of(&kvm, &config(base)).unwrap();
        assert_eq!(a.check(&of(&kvm, &config(base)).unwrap()), Ok(()));
        assert_eq!(
            a.devices,
            vec![("root".to_string(), "virtio-blk".to_string())]
        );

        let small = config(
            r#"{"machine": {"vcpus": 2, "memory": "128M"},
            "disks": [{"id": "root", "path": "/x"}]}"#,
        );
        let err = a.check(&of(&kvm, &small).unwrap()).unwrap_err();
        assert_eq!(err, "memory size 128 MiB here, 256 MiB from the source");

        let no_disk = config(r#"{"machine": {"vcpus": 2, "memory": "256M"}}"#);
        let err = a.check(&of(&kvm, &no_disk).unwrap()).unwrap_err();
        assert!(err.contains("device root (virtio-blk)"), "{err}");

        // The vCPU count is in the CPUID too (topology leaves), but named first.
        let one = config(
            r#"{"machine": {"vcpus": 1, "memory": "256M"},
            "disks": [{"id": "root", "path": "/x"}]}"#,
        );
        let err = a.check(&of(&kvm, &one).unwrap()).unwrap_err();
        assert_eq!(err, "1 vCPUs here, 2 from the source");
    }

    #[test]
    fn a_different_cpu_template_changes_the_cpuid() {
        let Some(kvm) = kvm() else { return };
        let host = of(&kvm, &config(r#"{"machine": {"cpu_template": "host"}}"#)).unwrap();
        let minimal = of(&kvm, &config(r#"{"machine": {"cpu_template": "minimal"}}"#)).unwrap();
        assert!(host.check(&minimal).unwrap_err().contains("CPUID"));
    }
}
