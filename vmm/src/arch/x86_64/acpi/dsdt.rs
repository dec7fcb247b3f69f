//! The DSDT: in `\_SB_`, the COM1 serial port (`PNP0501`), the i8042 (`PNP0303`), the RTC
//! (`PNP0B00`), the power button (`PNP0C0C`),
//! the Generic Event Device that presses it (see [`super::ged`]), and each virtio-mmio device
//! (`LNRO0005`, `V000`, `V001`, ... in the order the guest sees them on the MMIO bus), and at
//! the root the `\_S5_` package that `devices::legacy::PowerManagement` acts on.
//!
//! Interrupts are what the devices signal: petrel's irqfds are not resampled, so every line
//! is an edge, active high, like ISA interrupts (the MP table's "conforming" lines).

use acpi_tables::aml::{
    Device, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO, ONE, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};
use devices::legacy::{
    I8042_IRQ, I8042_PORT, RTC_PORT, RTC_PORT_LEN, S5_SLP_TYP, SERIAL_IRQ, SERIAL_PORT,
    SERIAL_PORT_LEN,
};

use super::{AcpiError, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::device_manager::allocator::DeviceSlot;

/// DSDT revision 2: integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// The ACPI id Linux's virtio-mmio driver binds (`drivers/virtio/virtio_mmio.c`).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// AML already serialised, to nest in a scope.
pub(super) struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

pub(super) fn serialise(aml: &dyn Aml) -> Raw {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    Raw(bytes)
}

/// An interrupt as petrel's devices raise it: edge, active high, exclusive.
pub(super) fn edge_interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

fn serial_port() -> Raw {
    let port = SERIAL_PORT as u16;
    let io = IO::new(port, port, 1, SERIAL_PORT_LEN as u8);
    let irq = edge_interrupt(SERIAL_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    serialise(&Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(
                Path::new("_HID"),
                &acpi_tables::aml::EISAName::new("PNP0501"),
            ),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

/// The i8042's keyboard port (`PNP0303`): its data (0x60) and command/status (0x64) ports
/// and IRQ 1. A hardware-reduced Linux has no legacy PIC, so ISA IRQs are routed only where
/// a device's `_CRS` (or an override) names them: without this its i8042 driver could not
/// take IRQ 1, and Ctrl+Alt+Del would go nowhere.
fn keyboard_controller() -> Raw {
    let data = I8042_PORT as u16;
    let command = data + 4;
    let data_io = IO::new(data, data, 1, 1);
    let command_io = IO::new(command, command, 1, 1);
    let irq = edge_interrupt(I8042_IRQ);
    let crs = ResourceTemplate::new(vec![&data_io, &command_io, &irq]);
    serialise(&Device::new(
        Path::new("PS2K"),
        vec![
            &Name::new(
                Path::new("_HID"),
                &acpi_tables::aml::EISAName::new("PNP0303"),
            ),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

/// The RTC/CMOS (`PNP0B00`) at ports 0x70 and 0x71. petrel's RTC raises no interrupt, so its
/// `_CRS` names none: a guest's driver then runs it without alarms rather than waiting for
/// an IRQ 8 that never comes.
fn rtc() -> Raw {
    let port = RTC_PORT as u16;
    let io = IO::new(port, port, 1, RTC_PORT_LEN as u8);
    let crs = ResourceTemplate::new(vec![&io]);
    serialise(&Device::new(
        Path::new("RTC_"),
        vec![
            &Name::new(
                Path::new("_HID"),
                &acpi_tables::aml::EISAName::new("PNP0B00"),
            ),
            &Name::new(Path::new("_UID"), &ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

fn power_button() -> Raw {
    serialise(&Device::new(
        Path::new("PWRB"),
        vec![
            &Name::new(
                Path::new("_HID"),
                &acpi_tables::aml::EISAName::new("PNP0C0C"),
            ),
            &Name::new(Path::new("_UID"), &ZERO),
        ],
    ))
}

/// `slot`'s MMIO window as a `Memory32Fixed` describes it (base, length): below 4 GiB, or
/// `AcpiError::Window`.
pub(super) fn window_32(slot: &DeviceSlot) -> Result<(u32, u32), AcpiError> {
    let outside = || AcpiError::Window {
        base: slot.base,
        len: slot.len,
    };
    let base = u32::try_from(slot.base).map_err(|_| outside())?;
    let len = u32::try_from(slot.len).map_err(|_| outside())?;
    base.checked_add(len).ok_or_else(outside)?;
    Ok((base, len))
}

/// `Device(Vnnn)` for the `index`th virtio-mmio device.
fn virtio_device(index: usize, slot: &DeviceSlot) -> Result<Raw, AcpiError> {
    let (base, len) = window_32(slot)?;
    if index > 0xfff {
        return Err(AcpiError::TooManyDevices(index + 1));
    }
    let name = format!("V{index:03X}");
    let uid = index as u32;
    let window = Memory32Fixed::new(true, base, len);
    let irq = edge_interrupt(slot.irq);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    Ok(serialise(&Device::new(
        Path::new(&name),
        vec![
            &Name::new(Path::new("_HID"), &VIRTIO_MMIO_HID),
            &Name::new(Path::new("_UID"), &uid),
            // Device DMA is cache-coherent.
            &Name::new(Path::new("_CCA"), &ONE),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )))
}

/// The DSDT describing `virtio` devices besides the serial port and the power button, and
/// the Generic Event Device at `ged` if the machine has one.
pub fn build(virtio: &[DeviceSlot], ged: Option<&DeviceSlot>) -> Result<Sdt, AcpiError> {
    let mut devices = vec![serial_port(), keyboard_controller(), rtc(), power_button()];
    if let Some(slot) = ged {
        devices.extend(super::ged::devices(slot)?);
    }
    for (index, slot) in virtio.iter().enumerate() {
        devices.push(virtio_device(index, slot)?);
    }
    let children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    // \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved. A hardware-reduced machine uses SLP_TYPa.
    let s5 = Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &ZERO, &ZERO]),
    );
    let mut aml = Vec::new();
    Scope::new(Path::new("\\_SB_"), children).to_aml_bytes(&mut aml);
    s5.to_aml_bytes(&mut aml);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    Ok(dsdt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::acpi::tests::checksum_ok;

    fn slot(i: u64) -> DeviceSlot {
        DeviceSlot {
            base: 0xc000_0000 + i * 0x1000,
            len: 0x1000,
            irq: 5 + i as u32,
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// The bytes of `Device(<name>)` up to the next device.
    fn device<'a>(t: &'a [u8], name: &str) -> &'a [u8] {
        let at = find(t, name.as_bytes()).unwrap_or_else(|| panic!("no {name}"));
        let end = find(&t[at..], &[0x5b, 0x82]).map_or(t.len(), |e| at + e);
        &t[at..end]
    }

    #[test]
    fn each_virtio_device_has_its_hid_uid_window_and_edge_interrupt() {
        let dsdt = build(&[slot(0), slot(1), slot(2)], None).unwrap();
        let t = dsdt.as_slice();
        assert!(checksum_ok(t));
        assert_eq!(&t[..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        for i in 0..3u8 {
            let d = device(t, &format!("V00{i}"));
            assert!(find(d, b"\x0dLNRO0005\0").is_some(), "_HID string");
            let mut uid = b"_UID".to_vec();
            u32::from(i).to_aml_bytes(&mut uid);
            assert!(find(d, &uid).is_some(), "_UID {i}");
            assert!(find(d, b"_CCA\x01").is_some());
            let s = slot(u64::from(i));
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend((s.base as u32).to_le_bytes());
            mem.extend((s.len as u32).to_le_bytes());
            assert!(find(d, &mem).is_some(), "Memory32Fixed of V00{i}");
            let mut irq = vec![0x89, 6, 0, 0b0011, 1];
            irq.extend(s.irq.to_le_bytes());
            assert!(
                find(d, &irq).is_some(),
                "edge, active-high interrupt of V00{i}"
            );
        }
        assert!(find(t, b"V003").is_none());
    }

    #[test]
    fn serial_power_button_and_s5() {
        let dsdt = build(&[], None).unwrap();
        let t = dsdt.as_slice();
        assert!(checksum_ok(t));
        assert!(find(t, b"\\_SB_").is_some());
        let com1 = device(t, "COM1");
        // EISAID("PNP0501") is 0x0105d041 as a DWord.
        assert!(find(com1, &[0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some());
        assert!(
            find(com1, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]).is_some(),
            "IO 0x3f8"
        );
        assert!(
            find(com1, &[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]).is_some(),
            "IRQ 4"
        );
        let ps2k = device(t, "PS2K");
        // EISAID("PNP0303") is 0x0303d041.
        assert!(find(ps2k, &[0x0c, 0x41, 0xd0, 0x03, 0x03]).is_some());
        assert!(
            find(ps2k, &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]).is_some(),
            "IO 0x60"
        );
        assert!(
            find(ps2k, &[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]).is_some(),
            "IO 0x64"
        );
        assert!(
            find(ps2k, &[0x89, 6, 0, 0b0011, 1, 1, 0, 0, 0]).is_some(),
            "IRQ 1"
        );
        let rtc = device(t, "RTC_");
        // EISAID("PNP0B00") is 0x000bd041.
        assert!(find(rtc, &[0x0c, 0x41, 0xd0, 0x0b, 0x00]).is_some());
        assert!(
            find(rtc, &[0x47, 1, 0x70, 0, 0x70, 0, 1, 2]).is_some(),
            "IO 0x70"
        );
        assert!(find(rtc, &[0x89]).is_none(), "no interrupt");
        let pwrb = device(t, "PWRB");
        // EISAID("PNP0C0C") is 0x0c0cd041.
        assert!(find(pwrb, &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]).is_some());
        // Name(\_S5_, Package(4) {5, 5, 0, 0}) at the root.
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 8, 4, 0x0a, 5, 0x0a, 5, 0, 0,
        ];
        assert!(find(t, &s5).is_some());
        assert_eq!(S5_SLP_TYP, 5);
    }

    #[test]
    fn with_a_ged_the_dsdt_has_ged0_whose_evt_notifies_pwrb() {
        let ged = slot(1);
        let dsdt = build(&[slot(0)], Some(&ged)).unwrap();
        let t = dsdt.as_slice();
        assert!(checksum_ok(t));
        let ged0 = device(t, "GED0");
        assert!(find(ged0, b"_HID\x0dACPI0013\0").is_some());
        assert!(find(ged0, b"_EVT\x09").is_some(), "Method (_EVT, 1)");
        assert!(find(ged0, b"\x86\\\x2e_SB_PWRB\x0a\x80").is_some());
        let mut irq = vec![0x89, 6, 0, 0b0011, 1];
        irq.extend(ged.irq.to_le_bytes());
        assert!(find(ged0, &irq).is_some());
        let gedr = device(t, "GEDR");
        let mut mem = vec![0x86, 9, 0, 1];
        mem.extend((ged.base as u32).to_le_bytes());
        assert!(find(gedr, &mem).is_some());
        // The button it notifies is in the same table.
        assert!(find(t, b"PWRB").unwrap() < find(t, b"GED0").unwrap());

        let without = build(&[slot(0)], None).unwrap();
        assert!(find(without.as_slice(), b"GED0").is_none());
        assert!(find(without.as_slice(), b"_EVT").is_none());
    }

    #[test]
    fn a_window_above_4g_is_refused() {
        let high = DeviceSlot {
            base: 1 << 32,
            len: 0x1000,
            irq: 5,
        };
        assert!(matches!(
            build(&[high], None),
            Err(AcpiError::Window { .. })
        ));
    }
}
