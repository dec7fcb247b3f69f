//! Registers, segments and page tables for the 64-bit entry of the Linux boot protocol:
//! long mode with paging, an identity map, a GDT with `__BOOT_CS` (0x10) and `__BOOT_DS`
//! (0x18) as 4 GiB flat segments, interrupts off, and `rsi` pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    BOOT_STACK_POINTER, GDT_ADDR, IDENTITY_MAP_GIB, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR,
    ZERO_PAGE_ADDR,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Selectors the Linux boot protocol names.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`.
pub const BOOT_DS: u16 = 0x18;
/// The task register's selector.
pub const BOOT_TSS: u16 = 0x20;

/// Errors setting up a vCPU's boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A KVM register ioctl failed.
    #[error("cannot set the vCPU's {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A GDT entry from flags, base and limit (the layout of the segment descriptor).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, null, 64-bit code, data, TSS.
const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // __BOOT_CS: present, DPL 0, code, execute/read, L, G
    gdt_entry(0xc093, 0, 0xfffff), // __BOOT_DS: present, DPL 0, data, read/write, D/B, G
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS, G
];

/// The `kvm_segment` a GDT entry describes, loaded with `selector`.
fn segment(selector: u16) -> kvm_segment {
    let entry = GDT[(selector >> 3) as usize];
    let field = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let g = field(55, 1);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: field(40, 0xf),
        present: field(47, 1),
        dpl: field(45, 3),
        db: field(54, 1),
        s: field(44, 1),
        l: field(53, 1),
        g,
        avl: field(52, 1),
        unusable: 0,
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::Memory { what, source })
}

/// Writes the GDT, IDT and identity-map page tables into guest memory. Done once per VM.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        write(mem, *entry, GDT_ADDR + 8 * i as u64, "the GDT")?;
    }
    write(mem, 0u64, IDT_ADDR, "the IDT")?;
    // PML4[0] -> PDPT; PDPT[i] -> PD i; PD i maps GiB i with 2 MiB pages.
    const PRESENT_RW: u64 = 0b11;
    const PAGE_SIZE_2M: u64 = 1 << 7;
    write(mem, PDPT_ADDR | PRESENT_RW, PML4_ADDR, "the PML4")?;
    for gib in 0..IDENTITY_MAP_GIB {
        let pd = PD_ADDR + gib * 0x1000;
        write(mem, pd | PRESENT_RW, PDPT_ADDR + gib * 8, "the PDPT")?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) | (i << 21)) | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))
            .map_err(|source| RegsError::Memory {
                what: "a page directory",
                source,
            })?;
    }
    Ok(())
}

/// Puts the boot vCPU in long mode at `entry` with `rsi` at the zero page.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment(BOOT_CS);
    let data = segment(BOOT_DS);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_TSS);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("general registers"))
}

/// The FPU's reset state: x87 control word 0x37f, MXCSR 0x1f80 (all exceptions masked).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "FPU state",
        source,
    })
}

/// Local APIC: LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as firmware leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DM_EXTINT: u32 = 0x7;
    const DM_NMI: u32 = 0x4;
    let kvm = |source| RegsError::Kvm {
        what: "local APIC",
        source,
    };
    let mut lapic = vcpu.get_lapic().map_err(kvm)?;
    for (reg, mode) in [(APIC_LVT0, DM_EXTINT), (APIC_LVT1, DM_NMI)] {
        let bytes = &mut lapic.regs[reg..reg + 4];
        let mut v = [0u8; 4];
        for (d, s) in v.iter_mut().zip(bytes.iter()) {
            *d = *s as u8;
        }
        let value = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
        for (d, s) in bytes.iter_mut().zip(value.to_le_bytes()) {
            *d = s as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_code_segment_is_flat_64_bit_execute_read() {
        let cs = segment(BOOT_CS);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!(
            (cs.type_, cs.present, cs.dpl, cs.s, cs.l, cs.db, cs.g),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
    }

    #[test]
    fn boot_data_segment_is_flat_read_write() {
        let ds = segment(BOOT_DS);
        assert_eq!((ds.base, ds.limit, ds.selector), (0, 0xffff_ffff, 0x18));
        assert_eq!(
            (ds.type_, ds.present, ds.s, ds.l, ds.db, ds.g),
            (0x3, 1, 1, 0, 1, 1)
        );
    }

    #[test]
    fn tss_is_a_busy_system_segment() {
        let tr = segment(BOOT_TSS);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
    }

    #[test]
    fn page_tables_identity_map_the_first_4g() {
        let mem = memory::MemoryLayout::new(64 << 20)
            .unwrap()
            .allocate()
            .unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 3 * 8)).unwrap();
        assert_eq!(pdpt3, (PD_ADDR + 0x3000) | 3);
        // The last 2 MiB page below 4 GiB maps to itself.
        let last: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
        let gdt2: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 16)).unwrap();
        assert_eq!(gdt2, 0x00af_9b00_0000_ffff);
    }
}
