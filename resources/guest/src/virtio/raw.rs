//! A virtio-mmio (version 2) device driven register by register, for device types
//! `virtio-drivers` 0.13 has no `DeviceType` for (its `MmioTransport` refuses them, and its
//! `VirtQueue` needs a transport): the file system device (26).
//!
//! Only what a polled driver with one request in flight needs: reset and feature
//! negotiation, the config space, one split virtqueue ([`SplitQueue`]) per queue the driver
//! uses, notifications. Queues the driver does not set up stay not ready.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{fence, Ordering};

use super::cmdline::MmioWindow;
use crate::rt::pages;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
const CONFIG: u64 = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;

/// `VIRTIO_F_VERSION_1`.
pub const VERSION_1: u64 = 1 << 32;

/// The register block of one virtio-mmio device.
pub struct RawMmio {
    pub window: MmioWindow,
}

impl RawMmio {
    /// # Safety
    ///
    /// `window` must be a virtio-mmio register block, identity-mapped, 4-byte aligned, at least
    /// 0x100 bytes long, which nothing else accesses while this value lives.
    pub unsafe fn new(window: MmioWindow) -> Self {
        RawMmio { window }
    }

    fn read(&self, offset: u64) -> u32 {
        let ptr = (self.window.addr + offset) as usize as *const u32;
        // SAFETY: `new`'s contract: the window is this device's register block, identity-mapped
        // and aligned, and every offset used here is a 4-byte register inside the header or
        // the config space (`config_byte` checks the window size).
        unsafe { ptr.read_volatile() }
    }

    fn write(&mut self, offset: u64, value: u32) {
        let ptr = (self.window.addr + offset) as usize as *mut u32;
        // SAFETY: as in `read`; `&mut self` makes this the only access in flight.
        unsafe { ptr.write_volatile(value) }
    }

    /// Whether the block holds a version 2 device with device id `id`.
    pub fn is_modern(&self, id: u32) -> bool {
        self.read(MAGIC) == MAGIC_VALUE && self.read(VERSION) == 2 && self.read(DEVICE_ID) == id
    }

    /// Resets the device and negotiates: accepts the device's features among `wanted`, which
    /// must include `VERSION_1`. Returns the features accepted.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, String> {
        self.write(STATUS, 0);
        self.write(STATUS, ACKNOWLEDGE);
        self.write(STATUS, ACKNOWLEDGE | DRIVER);
        let mut offered = 0u64;
        for word in 0..2 {
            self.write(DEVICE_FEATURES_SEL, word);
            offered |= u64::from(self.read(DEVICE_FEATURES)) << (32 * word);
        }
        if offered & VERSION_1 == 0 {
            return Err(format!(
                "the device does not offer VERSION_1 ({offered:#x})"
            ));
        }
        let accepted = offered & wanted;
        for word in 0..2 {
            self.write(DRIVER_FEATURES_SEL, word);
            self.write(DRIVER_FEATURES, (accepted >> (32 * word)) as u32);
        }
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.read(STATUS) & FEATURES_OK == 0 {
            return Err(format!("the device refused the features {accepted:#x}"));
        }
        Ok(accepted)
    }

    /// Byte `offset` of the config space (read as the aligned 32-bit word holding it).
    pub fn config_byte(&self, offset: u64) -> Option<u8> {
        let word = offset & !3;
        if CONFIG + word + 4 > self.window.size {
            return None;
        }
        Some((self.read(CONFIG + word) >> (8 * (offset & 3))) as u8)
    }

    /// Hands queue `index` to the device.
    pub fn set_queue(&mut self, index: u16, queue: &SplitQueue) -> Result<(), String> {
        self.write(QUEUE_SEL, index.into());
        let max = self.read(QUEUE_NUM_MAX);
        if max < u32::from(QUEUE_SIZE) {
            return Err(format!(
                "queue {index} holds {max} entries, the driver needs {QUEUE_SIZE}"
            ));
        }
        self.write(QUEUE_NUM, QUEUE_SIZE.into());
        for (reg, addr) in [
            (QUEUE_DESC, queue.desc),
            (QUEUE_DRIVER, queue.avail),
            (QUEUE_DEVICE, queue.used),
        ] {
            self.write(reg, addr as u32);
            self.write(reg + 4, (addr >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
        Ok(())
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(&mut self) {
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }

    /// Tells the device queue `index` has new buffers.
    pub fn notify(&mut self, index: u16) {
        self.write(QUEUE_NOTIFY, index.into());
    }
}

/// The queue size the driver uses.
pub const QUEUE_SIZE: u16 = 16;
const DESC_LEN: u64 = 16;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// A split virtqueue in one page, with one descriptor chain in flight at a time (it always
/// starts at descriptor 0): descriptors at 0, the available ring at 256, the used ring at 512.
pub struct SplitQueue {
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    last_used: u16,
    in_flight: bool,
}

/// What the device returned for a chain: its head descriptor and the bytes it wrote.
pub struct Used {
    pub id: u32,
    pub len: u32,
}

impl SplitQueue {
    /// A queue in a fresh page (zeroed: both rings start empty).
    pub fn new() -> Result<Self, String> {
        let page = pages::alloc(1).ok_or("no page left for a virtqueue")?;
        // SAFETY: the allocator handed out this identity-mapped page to this call alone.
        unsafe { (page as usize as *mut u8).write_bytes(0, pages::PAGE_SIZE as usize) };
        Ok(SplitQueue {
            desc: page,
            avail: page + 256,
            used: page + 512,
            next_avail: 0,
            last_used: 0,
            in_flight: false,
        })
    }

    fn put<T>(addr: u64, value: T) {
        // SAFETY: every address passed is inside this queue's page (descriptors below 256,
        // the available ring below 512, the used ring below 4096 for QUEUE_SIZE 16), aligned
        // for `T` (offsets are multiples of the field sizes), and only this queue writes the
        // driver-owned parts.
        unsafe { (addr as usize as *mut T).write_volatile(value) }
    }

    fn get<T>(addr: u64) -> T {
        // SAFETY: as in `put`; the device writes the used ring, hence the volatile read.
        unsafe { (addr as usize as *const T).read_volatile() }
    }

    /// Makes one chain of `readable` then `writable` buffers available (at most `QUEUE_SIZE`
    /// in all, none empty).
    ///
    /// # Safety
    ///
    /// The buffers must stay valid, and not be accessed, until `take_used` returns this
    /// chain (if the device never returns it, for the rest of the run).
    pub unsafe fn submit(
        &mut self,
        readable: &[&[u8]],
        writable: &mut [&mut [u8]],
    ) -> Result<(), String> {
        let count = readable.len() + writable.len();
        if self.in_flight || count == 0 || count > usize::from(QUEUE_SIZE) {
            return Err(format!("cannot submit a chain of {count} buffers now"));
        }
        let bufs = readable
            .iter()
            .map(|b| (b.as_ptr() as u64, b.len(), 0))
            .chain(
                writable
                    .iter_mut()
                    .map(|b| (b.as_mut_ptr() as u64, b.len(), DESC_F_WRITE)),
            );
        for (i, (addr, len, flags)) in bufs.enumerate() {
            let at = self.desc + i as u64 * DESC_LEN;
            let next = if i + 1 < count { DESC_F_NEXT } else { 0 };
            Self::put(at, addr);
            Self::put(at + 8, len as u32);
            Self::put(at + 12, flags | next);
            Self::put(at + 14, (i + 1) as u16);
        }
        let slot = u64::from(self.next_avail % QUEUE_SIZE);
        Self::put::<u16>(self.avail + 4 + 2 * slot, 0);
        self.next_avail = self.next_avail.wrapping_add(1);
        // The descriptors and the ring entry before the index that publishes them.
        fence(Ordering::SeqCst);
        Self::put(self.avail + 2, self.next_avail);
        fence(Ordering::SeqCst);
        self.in_flight = true;
        Ok(())
    }

    /// Whether the device has returned the chain in flight.
    pub fn has_used(&self) -> bool {
        self.in_flight && Self::get::<u16>(self.used + 2) != self.last_used
    }

    /// The chain in flight, once the device returned it.
    pub fn take_used(&mut self) -> Option<Used> {
        if !self.has_used() {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % QUEUE_SIZE);
        let id = Self::get::<u32>(self.used + 4 + 8 * slot);
        let len = Self::get::<u32>(self.used + 4 + 8 * slot + 4);
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight = false;
        Some(Used { id, len })
    }
}
