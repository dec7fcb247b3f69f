//! The DSDT's part of the power button: the Generic Event Device `\_SB_.GED0` (`ACPI0013`)
//! and `\_SB_.GEDR`, the motherboard resource (`PNP0C02`) that claims its register window.
//!
//! ```text
//! Device (\_SB_.GED0) {
//!     Name (_HID, "ACPI0013")
//!     Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } })
//!     OperationRegion (GDST, SystemMemory, base, 4)
//!     Field (GDST, DWordAcc, NoLock, Preserve) { GDAT, 32 }
//!     Method (_EVT, 1, Serialized) {
//!         Store (GDAT, Local0)               // one read: returns the events and clears them
//!         And (Local0, 1, Local1)
//!         If (LEqual (Local1, 1)) { Notify (\_SB_.PWRB, 0x80) }
//!     }
//! }
//! Device (\_SB_.GEDR) {
//!     Name (_HID, EisaId ("PNP0C02"))
//!     Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, base, 0x1000) })
//! }
//! ```
//!
//! The window is not in `GED0`'s `_CRS`: Linux's `drivers/acpi/evged.c` takes every
//! resource there for an interrupt and refuses the device if one is not. The OS finds the
//! register through the operation region, and `GEDR` keeps the window from being handed
//! to anything else (Cloud Hypervisor splits its GED the same way).

use acpi_tables::aml::{
    And, Device, EISAName, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, If, Local, Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Path,
    ResourceTemplate, Store, ZERO,
};
use devices::legacy::{GED_POWER_BUTTON, GED_STATUS_LEN, GED_STATUS_OFFSET};

use super::dsdt::{edge_interrupt, serialise, window_32, Raw};
use super::AcpiError;
use crate::device_manager::allocator::DeviceSlot;

/// The `_HID` of a Generic Event Device.
pub const GED_HID: &str = "ACPI0013";
/// What `Notify` tells a power button device: the button was pressed (ACPI 6.5, 5.6.6).
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// `GED0` and `GEDR` for the device at `slot`.
pub(super) fn devices(slot: &DeviceSlot) -> Result<[Raw; 2], AcpiError> {
    let (base, len) = window_32(slot)?;
    let status = u64::from(base) + GED_STATUS_OFFSET;

    let irq = edge_interrupt(slot.irq);
    let crs = ResourceTemplate::new(vec![&irq]);
    let region = OpRegion::new(
        Path::new("GDST"),
        OpRegionSpace::SystemMemory,
        &status,
        &GED_STATUS_LEN,
    );
    let field = Field::new(
        Path::new("GDST"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"GDAT", 8 * GED_STATUS_LEN as usize)],
    );
    let gdat = Path::new("GDAT");
    let read = Store::new(&Local(0), &gdat);
    let power_button = And::new(&Local(1), &Local(0), &GED_POWER_BUTTON);
    let pwrb = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&pwrb, &NOTIFY_BUTTON_PRESSED);
    let pressed = Equal::new(&Local(1), &GED_POWER_BUTTON);
    let if_pressed = If::new(&pressed, vec![&notify]);
    let evt = Method::new(
        Path::new("_EVT"),
        1,
        true,
        vec![&read, &power_button, &if_pressed],
    );
    let ged = serialise(&Device::new(
        Path::new("GED0"),
        vec![
            &Name::new(Path::new("_HID"), &GED_HID),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &crs),
            &region,
            &field,
            &evt,
        ],
    ));

    let window = Memory32Fixed::new(true, base, len);
    let resources = ResourceTemplate::new(vec![&window]);
    let claim = serialise(&Device::new(
        Path::new("GEDR"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C02")),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &resources),
        ],
    ));
    Ok([ged, claim])
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi_tables::Aml;

    const SLOT: DeviceSlot = DeviceSlot {
        base: 0xc000_3000,
        len: 0x1000,
        irq: 8 + 1,
    };

    fn bytes(raw: &Raw) -> Vec<u8> {
        let mut out = Vec::new();
        raw.to_aml_bytes(&mut out);
        out
    }

    fn has(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn ged0_has_its_hid_its_edge_interrupt_only_and_a_dword_field_over_the_status() {
        let [ged, _] = devices(&SLOT).unwrap();
        let ged = bytes(&ged);
        assert_eq!(&ged[..2], [0x5b, 0x82], "a Device");
        assert!(has(&ged, b"GED0"));
        assert!(has(&ged, b"_HID\x0dACPI0013\0"));
        // _CRS: one Extended Interrupt (consumer, edge, active high, exclusive) then the
        // end tag: nothing Linux's GED driver would refuse.
        let mut crs = vec![0x89, 6, 0, 0b0011, 1];
        crs.extend(SLOT.irq.to_le_bytes());
        crs.extend([0x79, 0]);
        assert!(has(&ged, &crs), "{ged:x?}");
        assert!(!has(&ged, &[0x86, 9, 0]), "no memory descriptor in GED0");
        // OperationRegion (GDST, SystemMemory, 0xc0003000, 4).
        let region = [
            &[0x5b, 0x80][..],
            b"GDST",
            &[0, 0x0c],
            &0xc000_3000u32.to_le_bytes(),
            &[0x0a, 4],
        ]
        .concat();
        assert!(has(&ged, &region));
        // Field (GDST, DWordAcc, NoLock, Preserve) { GDAT, 32 }.
        assert!(has(&ged, b"GDST\x03GDAT\x20"));
    }

    #[test]
    fn evt_reads_the_status_once_and_notifies_the_power_button() {
        let [ged, _] = devices(&SLOT).unwrap();
        let ged = bytes(&ged);
        let at = ged
            .windows(5)
            .position(|w| w == b"_EVT\x09")
            .expect("Method (_EVT, 1, Serialized)");
        assert_eq!(ged[at - 2], 0x14, "MethodOp");
        let body = &ged[at..];
        // Store (GDAT, Local0); And (Local0, 1, Local1); If (LEqual (Local1, 1)).
        assert!(has(body, b"\x70GDAT\x60\x7b\x60\x01\x61"));
        assert!(has(body, &[0x93, 0x61, 0x01]));
        // Notify (\_SB_.PWRB, 0x80).
        assert!(has(body, b"\x86\\\x2e_SB_PWRB\x0a\x80"));
        assert_eq!(body.windows(4).filter(|w| *w == b"GDAT").count(), 1);
    }

    #[test]
    fn gedr_claims_the_window_as_a_motherboard_resource() {
        let [_, claim] = devices(&SLOT).unwrap();
        let claim = bytes(&claim);
        assert!(has(&claim, b"GEDR"));
        // EISAID("PNP0C02") is 0x020cd041.
        assert!(has(&claim, &[0x0c, 0x41, 0xd0, 0x0c, 0x02]));
        let mut mem = vec![0x86, 9, 0, 1];
        mem.extend(0xc000_3000u32.to_le_bytes());
        mem.extend(0x1000u32.to_le_bytes());
        assert!(has(&claim, &mem));
    }

    #[test]
    fn a_window_above_4g_is_refused() {
        let high = DeviceSlot {
            base: 1 << 32,
            ..SLOT
        };
        assert!(matches!(devices(&high), Err(AcpiError::Window { .. })));
    }
}
