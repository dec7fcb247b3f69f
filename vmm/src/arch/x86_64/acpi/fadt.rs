//! The FADT ("FACP") of a hardware-reduced machine: no fixed-feature hardware, the power
//! button a control-method device, and one byte at port 0x600
//! (`devices::legacy::PowerManagement`) serving as the sleep control, sleep status and
//! reset register.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use devices::legacy::{PM_PORT, RESET_VALUE};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// IA-PC boot architecture flags (ACPI 6.5, 5.2.9.3).
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// The byte register at port 0x600.
fn pm_register() -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        PM_PORT,
    )
}

/// The FADT pointing at the DSDT at `dsdt_addr`.
pub fn build(dsdt_addr: u64) -> FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::HwReducedAcpi)
        // The power button is a control-method device (PNP0C0C in the DSDT); there is no
        // fixed-feature sleep button either.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.reset_reg = pm_register();
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = pm_register();
    fadt.sleep_status_reg = pm_register();
    // petrel emulates an i8042 (Ctrl+Alt+Del goes through it); without this bit Linux would
    // not drive it. There is no VGA.
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    fadt.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::acpi::tests::{aml, checksum_ok};

    fn u32_at(t: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(t[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn hardware_reduced_with_port_0x600_for_sleep_and_reset() {
        let t = aml(&build(0xe1234));
        assert!(checksum_ok(&t));
        assert_eq!(&t[..4], b"FACP");
        assert_eq!(u32_at(&t, 4) as usize, t.len());
        assert_eq!(t.len(), 276);
        let flags = u32_at(&t, 112);
        assert_eq!(flags, 1 << 20 | 1 << 10 | 1 << 5 | 1 << 4);
        // X_DSDT, and no 32-bit DSDT.
        assert_eq!(u64::from_le_bytes(t[140..148].try_into().unwrap()), 0xe1234);
        assert_eq!(u32_at(&t, 40), 0);
        let io_byte_0x600 = [1, 8, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0];
        assert_eq!(t[116..128], io_byte_0x600, "RESET_REG");
        assert_eq!(t[128], 1, "RESET_VALUE");
        assert_eq!(t[244..256], io_byte_0x600, "SLEEP_CONTROL_REG");
        assert_eq!(t[256..268], io_byte_0x600, "SLEEP_STATUS_REG");
        assert_eq!(
            u16::from_le_bytes([t[109], t[110]]),
            0b110,
            "IAPC_BOOT_ARCH"
        );
    }
}
