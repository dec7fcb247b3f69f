//! The ACPI tables the VMM provides, read the way an OS does: the RSDP from the zero page's
//! `acpi_rsdp_addr` or by scanning 0xe0000..0x100000 on 16-byte boundaries, then the XSDT (or
//! RSDT) and the tables it lists, every checksum verified; `madt`, `fadt` and `aml` decode
//! what this guest needs.
//!
//! Every address comes from the VMM's tables: a range is only read when it lies inside the
//! identity map and is of a sane length, so a broken table is an error, not a wild read.

pub mod aml;
pub mod fadt;
pub mod madt;
pub mod srat;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use super::bootparams::BootParams;

/// Where legacy scans search for the RSDP (besides the EBDA, which petrel leaves empty).
pub const SCAN_AREA: Range<u64> = 0xe_0000..0x10_0000;
const IDENTITY_MAPPED_END: u64 = 4 << 30;
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;
const HEADER_LEN: usize = 36;
/// No table of a VM is anywhere near this long; a longer length is an error.
const MAX_TABLE_LEN: usize = 1 << 20;

/// `len` bytes of guest-physical memory at `addr`, if the range lies in the identity map.
fn phys(addr: u64, len: usize) -> Option<&'static [u8]> {
    let end = addr.checked_add(len as u64)?;
    if addr == 0 || end > IDENTITY_MAPPED_END {
        return None;
    }
    // SAFETY: the range is identity-mapped (checked) and, per the VMM contract, guest memory
    // the guest never writes: the BIOS area and the ACPI tables the VMM placed there. A range
    // with no RAM behind it reads as all ones, which is a valid `u8` slice too.
    Some(unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) })
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The signature as text, for messages.
pub fn sig(signature: &[u8]) -> String {
    signature.iter().map(|&b| b as char).collect()
}

/// The Root System Description Pointer.
pub struct Rsdp {
    pub addr: u64,
    pub revision: u8,
    pub oem_id: [u8; 6],
    /// The XSDT (revision 2 and up), else 0.
    pub xsdt: u64,
    /// The RSDT.
    pub rsdt: u32,
}

/// Reads and verifies an RSDP at `addr`: signature, the ACPI 1.0 checksum and, from
/// revision 2, the length and the extended checksum.
pub fn rsdp_at(addr: u64) -> Result<Rsdp, String> {
    let v1 = phys(addr, RSDP_V1_LEN).ok_or_else(|| format!("RSDP at {addr:#x} is not mapped"))?;
    if &v1[..8] != b"RSD PTR " {
        return Err(format!("no RSDP signature at {addr:#x}"));
    }
    if !checksum_ok(v1) {
        return Err(format!("bad RSDP checksum at {addr:#x}"));
    }
    let revision = v1[15];
    let mut oem_id = [0; 6];
    oem_id.copy_from_slice(&v1[9..15]);
    let rsdt = u32_at(v1, 16).unwrap_or(0);
    let mut xsdt = 0;
    if revision >= 2 {
        let head = phys(addr, RSDP_V2_LEN).ok_or("RSDP 2.0 is not mapped")?;
        let len = u32_at(head, 20).unwrap_or(0) as usize;
        if !(RSDP_V2_LEN..=4096).contains(&len) {
            return Err(format!("RSDP length {len} is not valid"));
        }
        let whole = phys(addr, len).ok_or("RSDP is not mapped")?;
        if !checksum_ok(whole) {
            return Err(format!("bad RSDP extended checksum at {addr:#x}"));
        }
        xsdt = u64_at(head, 24).unwrap_or(0);
    }
    Ok(Rsdp {
        addr,
        revision,
        oem_id,
        xsdt,
        rsdt,
    })
}

/// The first 16-byte boundary in `SCAN_AREA` holding a valid RSDP.
pub fn scan_for_rsdp() -> Option<u64> {
    let area = phys(SCAN_AREA.start, (SCAN_AREA.end - SCAN_AREA.start) as usize)?;
    // One 8-byte compare per boundary: this guest runs at about a million instructions a
    // second, and the area has 8192 boundaries.
    let signature = u64::from_le_bytes(*b"RSD PTR ");
    (0..area.len())
        .step_by(16)
        .filter(|&at| u64_at(area, at) == Some(signature))
        .map(|at| SCAN_AREA.start + at as u64)
        .find(|&addr| rsdp_at(addr).is_ok())
}

/// A system description table, its checksum verified.
#[derive(Clone, Copy)]
pub struct Table {
    pub addr: u64,
    pub bytes: &'static [u8],
}

impl Table {
    pub fn signature(&self) -> &[u8] {
        &self.bytes[..4]
    }

    pub fn revision(&self) -> u8 {
        self.bytes[8]
    }
}

/// Reads and verifies the table at `addr`: a sane length and a zero checksum.
pub fn table_at(addr: u64) -> Result<Table, String> {
    let head = phys(addr, HEADER_LEN).ok_or_else(|| format!("table at {addr:#x} is not mapped"))?;
    let len = u32_at(head, 4).unwrap_or(0) as usize;
    if !(HEADER_LEN..=MAX_TABLE_LEN).contains(&len) {
        return Err(format!(
            "{} at {addr:#x}: length {len} is not valid",
            sig(&head[..4])
        ));
    }
    let bytes = phys(addr, len).ok_or_else(|| format!("table at {addr:#x} is not mapped"))?;
    if !checksum_ok(bytes) {
        return Err(format!("{} at {addr:#x}: bad checksum", sig(&head[..4])));
    }
    Ok(Table { addr, bytes })
}

/// The tables an RSDP leads to.
pub struct Acpi {
    pub rsdp: Rsdp,
    /// The XSDT (or the RSDT, for an ACPI 1.0 RSDP).
    pub root: Table,
    /// Every table the root lists, in its order.
    pub tables: Vec<Table>,
}

impl Acpi {
    /// Walks the root table from `rsdp`, verifying every table it lists.
    pub fn from_rsdp(rsdp: Rsdp) -> Result<Self, String> {
        let (root, entry_len, want) = match rsdp.xsdt {
            0 => (table_at(u64::from(rsdp.rsdt))?, 4, b"RSDT"),
            xsdt => (table_at(xsdt)?, 8, b"XSDT"),
        };
        if root.signature() != want {
            return Err(format!(
                "the RSDP points at {}, not {}",
                sig(root.signature()),
                sig(want)
            ));
        }
        let tables = root.bytes[HEADER_LEN..]
            .chunks_exact(entry_len)
            .map(|e| match entry_len {
                4 => u64::from(u32_at(e, 0).unwrap_or(0)),
                _ => u64_at(e, 0).unwrap_or(0),
            })
            .map(table_at)
            .collect::<Result<_, _>>()?;
        Ok(Acpi { rsdp, root, tables })
    }

    /// The first table with `signature`.
    pub fn find(&self, signature: &[u8; 4]) -> Option<Table> {
        self.tables
            .iter()
            .find(|t| t.signature() == signature)
            .copied()
    }

    /// The FADT, decoded.
    pub fn fadt(&self) -> Result<fadt::Fadt, String> {
        fadt::parse(self.find(b"FACP").ok_or("no FADT")?)
    }

    /// The MADT, decoded.
    pub fn madt(&self) -> Result<madt::Madt, String> {
        madt::parse(self.find(b"APIC").ok_or("no MADT")?)
    }

    /// The DSDT the FADT points at, verified.
    pub fn dsdt(&self) -> Result<Table, String> {
        let dsdt = table_at(self.fadt()?.dsdt)?;
        if dsdt.signature() != b"DSDT" {
            return Err(format!(
                "the FADT points at {}, not a DSDT",
                sig(dsdt.signature())
            ));
        }
        Ok(dsdt)
    }
}

/// How the RSDP was found.
pub struct Found {
    pub zero_page: Option<u64>,
    pub scan: Option<u64>,
}

/// Looks for the RSDP both ways. A zero-page pointer that does not lead to a valid RSDP is an
/// error (the VMM said there is one).
pub fn find_rsdp(boot: &BootParams) -> Result<Found, String> {
    let zero_page = match boot.acpi_rsdp_addr() {
        Some(addr) => Some(
            rsdp_at(addr)
                .map_err(|e| format!("zero page acpi_rsdp_addr: {e}"))?
                .addr,
        ),
        None => None,
    };
    Ok(Found {
        zero_page,
        scan: scan_for_rsdp(),
    })
}

/// The tables, if the VMM provides any: the zero page's pointer first, else a scan.
pub fn load(boot: &BootParams) -> Result<Option<Acpi>, String> {
    let addr = match boot.acpi_rsdp_addr() {
        Some(addr) => addr,
        None => match scan_for_rsdp() {
            Some(addr) => addr,
            None => return Ok(None),
        },
    };
    Acpi::from_rsdp(rsdp_at(addr)?).map(Some)
}
