//! The one allocator of device resources: MMIO windows in the 32-bit gap and interrupt
//! lines of the IOAPIC.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive};

use crate::arch::x86_64::layout::{IOAPIC_ADDR, IOAPIC_PINS};

/// The first GSI a device may get: 0-4 are the timer, keyboard, cascade and COM ports.
const FIRST_IRQ: u32 = 5;
/// GSIs that stay free for legacy devices even though nothing drives them yet: the RTC
/// (8) and the PS/2 mouse (12), which Linux probes.
const RESERVED_IRQS: [u32; 2] = [devices::legacy::RTC_IRQ, 12];

/// Where one device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot {
    /// Base of the MMIO window.
    pub base: u64,
    /// Length of the MMIO window.
    pub len: u64,
    /// The GSI of its interrupt.
    pub irq: u32,
}

impl DeviceSlot {
    /// The `virtio_mmio.device=` kernel parameter that tells Linux about the device
    /// (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
    pub fn virtio_cmdline_param(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.len >> 10,
            self.base,
            self.irq
        )
    }
}

/// Errors allocating resources.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    /// No interrupt line is left.
    #[error("too many devices: no interrupt line left (at most {max} devices)")]
    OutOfIrqs { max: usize },
    /// No interrupt line is left for the Generic Event Device that ACPI's power button needs.
    #[error("too many devices: with ACPI the power button's event device takes an interrupt line too, which leaves room for at most {max_virtio} virtio devices (or run with --acpi off)")]
    NoIrqForGed { max_virtio: usize },
    /// No MMIO space is left.
    #[error("too many devices: no MMIO space left")]
    OutOfMmio,
}

/// Hands out MMIO windows and GSIs; nothing else in petrel picks addresses or IRQs for
/// devices.
pub struct ResourceAllocator {
    mmio: AddressAllocator,
    irqs: IdAllocator,
}

impl ResourceAllocator {
    /// An allocator for MMIO in `[mmio_start, IOAPIC)` and every free IOAPIC pin.
    pub fn new(mmio_start: u64) -> Self {
        // The window and pins are constants known to be valid, so neither call can fail.
        let mmio = AddressAllocator::new(mmio_start, IOAPIC_ADDR - mmio_start)
            .expect("the device MMIO window is a valid range");
        let irqs = IdAllocator::new(FIRST_IRQ, u32::from(IOAPIC_PINS) - 1)
            .expect("the IOAPIC pin range is valid");
        ResourceAllocator { mmio, irqs }
    }

    /// How many devices can get an interrupt line.
    pub fn max_devices() -> usize {
        (u32::from(IOAPIC_PINS) - FIRST_IRQ) as usize - RESERVED_IRQS.len()
    }

    /// A GSI nobody else has.
    pub fn allocate_irq(&mut self) -> Result<u32, AllocError> {
        loop {
            let irq = self.irqs.allocate_id().map_err(|_| AllocError::OutOfIrqs {
                max: Self::max_devices(),
            })?;
            if !RESERVED_IRQS.contains(&irq) {
                return Ok(irq);
            }
        }
    }

    /// A page-aligned MMIO window of `len` bytes.
    pub fn allocate_mmio(&mut self, len: u64) -> Result<RangeInclusive, AllocError> {
        self.mmio
            .allocate(len, 0x1000, AllocPolicy::FirstMatch)
            .map_err(|_| AllocError::OutOfMmio)
    }

    /// A window of `len` bytes and an interrupt line for one device.
    pub fn allocate_slot(&mut self, len: u64) -> Result<DeviceSlot, AllocError> {
        let irq = self.allocate_irq()?;
        let range = self.allocate_mmio(len)?;
        Ok(DeviceSlot {
            base: range.start(),
            len,
            irq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_skip_reserved_irqs() {
        let mut a = ResourceAllocator::new(memory::MMIO32_START);
        let slots: Vec<_> = (0..ResourceAllocator::max_devices())
            .map(|_| a.allocate_slot(0x1000).unwrap())
            .collect();
        assert_eq!(slots[0].base, memory::MMIO32_START);
        assert_eq!(slots[0].irq, 5);
        assert_eq!(slots[1].base, memory::MMIO32_START + 0x1000);
        for (i, s) in slots.iter().enumerate() {
            assert!(!RESERVED_IRQS.contains(&s.irq));
            assert!(s.irq < 24);
            assert!(slots[..i]
                .iter()
                .all(|o| o.irq != s.irq && o.base != s.base));
        }
        assert_eq!(
            a.allocate_slot(0x1000),
            Err(AllocError::OutOfIrqs { max: 17 })
        );
    }

    #[test]
    fn cmdline_param_uses_linux_syntax() {
        let slot = DeviceSlot {
            base: 0xc000_1000,
            len: 0x1000,
            irq: 6,
        };
        assert_eq!(
            slot.virtio_cmdline_param(),
            "virtio_mmio.device=4K@0xc0001000:6"
        );
    }
}
