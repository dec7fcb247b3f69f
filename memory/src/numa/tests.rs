use std::io::Write;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::host::fake;
use super::*;

const MIB: u64 = 1 << 20;

/// The policy mode and node mask (first word) of the page at `addr`.
fn policy_at(addr: *mut u8) -> (i32, u64) {
    let mut mode: libc::c_int = -1;
    let mut mask = [0 as libc::c_ulong; MAX_HOST_NODES as usize / 64];
    // SAFETY: `mode` and `mask` are valid for writes for the call and `mask` holds
    // MAX_HOST_NODES bits; MPOL_F_ADDR only reads the policy of the VMA at `addr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            MAX_HOST_NODES as libc::c_ulong,
            addr,
            2 as libc::c_ulong, // MPOL_F_ADDR
        )
    };
    assert_eq!(ret, 0, "get_mempolicy: {}", std::io::Error::last_os_error());
    (mode, mask[0])
}

fn has_node_0() -> bool {
    let ok = HostTopology::default().check_node(0).is_ok();
    if !ok {
        eprintln!("skipped: this kernel shows no NUMA node 0 in sysfs");
    }
    ok
}

fn bound(host_node: u32) -> NodePlacement {
    NodePlacement {
        host_node: Some(host_node),
        hugepages: false,
    }
}

fn huge(host_node: Option<u32>) -> NodePlacement {
    NodePlacement {
        host_node,
        hugepages: true,
    }
}

fn placement(nodes: &[NodePlacement]) -> Placement {
    Placement {
        nodes: nodes.to_vec(),
    }
}

#[test]
fn a_bound_node_has_the_bind_policy_and_the_other_node_none() {
    if !has_node_0() {
        return;
    }
    // Node 1 crosses the gap: both of its ranges are bound.
    let layout = MemoryLayout::with_nodes(&[2 << 30, 2 << 30]).unwrap();
    let mem = layout
        .allocate_placed(&placement(&[NodePlacement::default(), bound(0)]))
        .unwrap();
    let regions: Vec<_> = mem.iter().collect();
    assert_eq!(regions.len(), 3);
    assert_eq!(policy_at(regions[0].as_ptr()).0, libc::MPOL_DEFAULT);
    for r in &regions[1..] {
        assert_eq!(policy_at(r.as_ptr()), (libc::MPOL_BIND, 1));
    }
    // The memory works, and binding did not touch it.
    assert_eq!(crate::count_pages(&crate::resident_pages(&mem).unwrap()), 0);
    mem.write_obj(7u64, GuestAddress((5 << 30) - 8)).unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress((5 << 30) - 8)).unwrap(), 7);
}

#[test]
fn shared_and_file_mapped_memory_is_bound_too() {
    if !has_node_0() {
        return;
    }
    let layout = MemoryLayout::with_nodes(&[16 * MIB, 16 * MIB]).unwrap();
    let p = placement(&[bound(0), bound(0)]);
    let shared = layout.allocate_shared_placed(&p).unwrap();
    assert!(crate::shared_file(&shared).is_some());
    for r in shared.iter() {
        assert_eq!(policy_at(r.as_ptr()), (libc::MPOL_BIND, 1));
    }

    let mut file = tempfile::tempfile().unwrap();
    file.write_all(b"restored").unwrap();
    file.set_len(32 * MIB).unwrap();
    let mem = layout.map_file(&file, 0).unwrap();
    layout.bind(&mem, &p).unwrap();
    for r in mem.iter() {
        assert_eq!(policy_at(r.as_ptr()), (libc::MPOL_BIND, 1));
    }
    let mut got = [0u8; 8];
    mem.read_slice(&mut got, GuestAddress(0)).unwrap();
    assert_eq!(&got, b"restored");
}

#[test]
fn binding_memory_of_another_layout_is_refused() {
    let mem = MemoryLayout::new(32 * MIB).unwrap().allocate().unwrap();
    let two = MemoryLayout::with_nodes(&[16 * MIB, 16 * MIB]).unwrap();
    assert!(matches!(
        two.bind(&mem, &placement(&[bound(0)])),
        Err(MemoryError::RegionsDiffer {
            regions: 1,
            ranges: 2
        })
    ));
}

#[test]
fn a_host_node_that_does_not_exist_is_refused_before_mapping() {
    let dir = fake::host(&["0-1"], &[0], 0, 0);
    let host = HostTopology::at(dir.path());
    let layout = MemoryLayout::with_nodes(&[16 * MIB, 16 * MIB]).unwrap();
    let err = layout
        .allocate_on(&placement(&[bound(0), bound(7)]), &host)
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(&err, MemoryError::NoHostNode { node: 7, present } if present == &[0]),
        "{err}"
    );
    // And on the real host, where node 7 does not exist either.
    if has_node_0() && HostTopology::default().check_node(7).is_err() {
        assert!(matches!(
            layout.allocate_placed(&placement(&[bound(7)])),
            Err(MemoryError::NoHostNode { node: 7, .. })
        ));
    }
}

#[test]
fn too_few_free_huge_pages_are_refused_with_the_counts() {
    // 32 MiB of huge pages is 16 pages; node 0 has 10 free, the host 40 (5 reserved).
    let dir = fake::host(&["0-1", "2-3"], &[10, 30], 40, 5);
    let host = HostTopology::at(dir.path());
    let layout = MemoryLayout::with_nodes(&[32 * MIB, 32 * MIB]).unwrap();
    let check = |p: &[NodePlacement]| placement(p).check(&layout, &host);
    assert!(matches!(
        check(&[huge(Some(0))]),
        Err(MemoryError::HugePages {
            host_node: Some(0),
            needed: 16,
            free: 10
        })
    ));
    assert_eq!(check(&[huge(Some(1))]).map_err(|e| e.to_string()), Ok(()));
    assert_eq!(
        check(&[huge(None), huge(None)]).map_err(|e| e.to_string()),
        Ok(())
    );
    // 16 + 16 + 16 pages host-wide, 35 free.
    let big = MemoryLayout::with_nodes(&[32 * MIB, 32 * MIB, 32 * MIB]).unwrap();
    let err = placement(&[huge(None), huge(Some(1)), huge(None)])
        .check(&big, &host)
        .unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::HugePages {
                host_node: None,
                needed: 48,
                free: 35
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nr_hugepages"), "{err}");
}

#[test]
fn a_huge_page_node_must_lie_on_2_mib_boundaries() {
    let dir = fake::host(&["0"], &[100], 100, 0);
    let host = HostTopology::at(dir.path());
    let layout = MemoryLayout::with_nodes(&[16 * MIB + 4096, 16 * MIB]).unwrap();
    assert!(matches!(
        placement(&[NodePlacement::default(), huge(None)]).check(&layout, &host),
        Err(MemoryError::UnalignedHugeRange { node: 1, .. })
    ));
}

#[test]
fn shared_memory_with_huge_pages_is_refused() {
    let layout = MemoryLayout::new(16 * MIB).unwrap();
    assert!(matches!(
        layout.allocate_shared_placed(&placement(&[huge(None)])),
        Err(MemoryError::SharedHugePages)
    ));
}

#[test]
fn huge_page_memory_when_the_host_has_some_free() {
    let host = HostTopology::default();
    let free = host.free_huge_pages(None).unwrap_or(0);
    if free < 8 {
        eprintln!(
            "skipped: the host has {free} free 2 MiB huge pages, 8 needed \
             (echo 8 > /proc/sys/vm/nr_hugepages)"
        );
        return;
    }
    let layout = MemoryLayout::with_nodes(&[16 * MIB, 16 * MIB]).unwrap();
    let node = if has_node_0() { Some(0) } else { None };
    let mem = layout
        .allocate_placed(&placement(&[NodePlacement::default(), huge(node)]))
        .unwrap();
    let region = mem.iter().nth(1).unwrap();
    assert_eq!(region.flags() & libc::MAP_HUGETLB, libc::MAP_HUGETLB);
    mem.write_obj(9u8, GuestAddress(20 * MIB)).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(20 * MIB)).unwrap(), 9);
}

#[test]
fn pages_of_a_node_that_starts_inside_a_bitmap_word_keep_their_ram_page_numbers() {
    // Node 1 starts at RAM page 4097: not on a 64-page boundary.
    let layout = MemoryLayout::with_nodes(&[16 * MIB + 4096, 16 * MIB - 4096]).unwrap();
    let mem = layout.allocate().unwrap();
    for page in [4096u64, 4097, 4160, 8191] {
        mem.write_obj(1u8, GuestAddress(page * 4096)).unwrap();
    }
    let dirty: Vec<usize> = crate::pages_in(&crate::take_vmm_dirty(&mem)).collect();
    assert_eq!(dirty, vec![4096, 4097, 4160, 8191]);
    let touched: Vec<usize> = crate::pages_in(&crate::resident_pages(&mem).unwrap()).collect();
    assert_eq!(touched, dirty);
}
