//! `snapshot`: a guest whose memory and progress a snapshot must preserve. It keeps a 16 MiB
//! region of RAM filled with a pattern the host can change and have checked, and counts like
//! `count`, so that after a pause, a snapshot and a restore the host sees whether memory came
//! back as it was and the guest went on from where it stopped.
//!
//! The region is [`REGION_SIZE`] bytes at the fixed guest-physical [`REGION_START`] (64 MiB:
//! it needs RAM up to 80 MiB, else the scenario fails; the tests boot it with 128M or more),
//! split into 16 sub-regions of 1 MiB with a generation each (0 at start). Writing sub-region
//! k at generation g stores, in each of its 256 pages, two words derived from (k, g, page)
//! ([`page_words`]) at offsets 0 and 4088. At start every sub-region is written at
//! generation 0 and the guest prints
//!
//! ```text
//! SNAPSHOT ready region=0x4000000..0x5000000
//! ```
//!
//! then loops: `COUNT <n>` (n from 0, +1 a line, paced like `count`), then a poll of COM1 for
//! received bytes (one LSR read, interrupts off), handling up to 16 bytes per poll:
//!
//! | byte | action | answer |
//! |------|--------|--------|
//! | `0`-`9`, `a`-`f` (k) | bump g[k], rewrite sub-region k | `WROTE <k> <g>` (decimal) |
//! | `A` | bump every g, rewrite all 16 MiB | `WROTE all` |
//! | `v` | check every page against g[] | `VERIFY ok <g0>,...,<g15>` or `VERIFY bad <k> <page> expected <x> found <y>` (first mismatch, hex) |
//! | `D` | toggle steady dirtying (below) | `DIRTY on` or `DIRTY off` |
//! | `q` | end: the dispatcher prints `PASS snapshot`, power off | - |
//! | `\r`, `\n`, space | nothing | - |
//! | other | nothing | `UNKNOWN <byte>` (0x-prefixed hex) |
//!
//! While steady dirtying is on (it starts off), right after each `COUNT n` line and before the
//! poll, the guest bumps g[n % 16], rewrites that sub-region and prints `WROTE <k> <g>` as the
//! `0`-`f` commands do: a live migration always has pages to send again. That is 256 pages per
//! count; measured here (the emulator's pace) about 7,300 pages, 28 MiB, per second (~29 counts).
//!
//! With virtio devices on the command line, the scenario sets them up after writing the region
//! and before `SNAPSHOT ready` (printing `SNAPSHOT devices=<kinds>`), and takes more commands,
//! each answered in one line (see `snapshot_devices` and `snapshot_proto::Command`):
//!
//! | byte | action | answer |
//! |------|--------|--------|
//! | `r` | read sectors 0..8 of the block device | `DISK <fnv1a64 as 16 hex digits>` |
//! | `w` | write sector 8 at the disk counter n, flush | `DISK wrote <n>` |
//! | `p` | `CONSOLE <n>` on the virtio console | `CONSOLE <n>` |
//! | `s` | connect to host port 5000, `ping <n>` echoed, close | `VSOCK ok <n>` (or `refused`, `bad`) |
//! | `g` | paint the screen at screen counter n, flush | `GPU drew <n>` |
//! | `i` | drain the input devices' events | `KEYS <code>:<value>,...` or `KEYS none` |
//! | `n` | send one frame on the network device | `NET sent <n>` |
//! | `m` | take received frames up to one of ours | `NET got <len> <fnv1a64>` or `NET got none` |
//!
//! A command for a device that is absent answers `NODEV <byte>`.
//!
//! The guest's own g[] lives in its memory and is restored with it, so `VERIFY ok` alone does
//! not prove a restore right: the host compares the generations in `VERIFY ok` with the ones
//! the guest printed before it (`WROTE` lines, each one generation up) and with the ones it
//! commanded. Every line is printed whole by the one CPU; a pause between two bytes of a line
//! leaves the rest to come after the resume (or in the restored process).

use alloc::format;
use alloc::string::String;
use core::fmt;

use super::snapshot_devices::Devices;
use super::snapshot_proto::{
    page_addr, page_words, Command, LAST_WORD_OFFSET, PAGES_PER_SUBREGION, REGION_SIZE,
    REGION_START, SUBREGIONS,
};
use crate::rt::bootparams::{BootParams, E820_RAM};
use crate::rt::cpu;
use crate::rt::layout;
use crate::rt::pages;
use crate::rt::serial::Serial;

/// Spins between two counts: the pacing of `count`.
const COUNT_SPINS: u32 = 100_000;
/// Bytes handled per poll at most, so a stream of commands cannot stop the count.
const BYTES_PER_POLL: usize = 16;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let region = Region::claim(boot)?;
    let mut gens = [0u64; SUBREGIONS];
    for (k, &g) in gens.iter().enumerate() {
        region.write(k, g);
    }
    let mut devices = Devices::open(boot)?;
    // The devices' queues and buffers come from the page allocator, which starts right after
    // the image: they must not have reached the region.
    let free = pages::free();
    if free.start > REGION_START && free.start < free.end {
        return Err(format!(
            "the devices took memory up to {:#x}, inside the region",
            free.start
        ));
    }
    println!(
        "SNAPSHOT ready region={:#x}..{:#x}",
        REGION_START,
        REGION_START + REGION_SIZE
    );
    let mut n: u64 = 0;
    let mut dirtying = false;
    loop {
        println!("COUNT {n}");
        if dirtying {
            let k = (n % SUBREGIONS as u64) as usize;
            gens[k] += 1;
            region.write(k, gens[k]);
            println!("WROTE {k} {}", gens[k]);
        }
        n += 1;
        for _ in 0..BYTES_PER_POLL {
            let Some(byte) = Serial::try_read_byte() else {
                break;
            };
            match Command::parse(byte) {
                Command::Write(k) => {
                    gens[k] += 1;
                    region.write(k, gens[k]);
                    println!("WROTE {k} {}", gens[k]);
                }
                Command::WriteAll => {
                    for (k, g) in gens.iter_mut().enumerate() {
                        *g += 1;
                        region.write(k, *g);
                    }
                    println!("WROTE all");
                }
                Command::Verify => match region.verify(&gens) {
                    Ok(()) => println!("VERIFY ok {}", Generations(&gens)),
                    Err(bad) => println!(
                        "VERIFY bad {} {} expected {:#x} found {:#x}",
                        bad.k, bad.page, bad.expected, bad.found
                    ),
                },
                Command::Dirty => {
                    dirtying = !dirtying;
                    println!("DIRTY {}", if dirtying { "on" } else { "off" });
                }
                Command::Quit => return Ok(()),
                command @ (Command::DiskRead
                | Command::DiskWrite
                | Command::Console
                | Command::Vsock
                | Command::Gpu
                | Command::Keys
                | Command::Net
                | Command::NetRecv) => devices.handle(command)?,
                Command::Topology => {
                    println!("TOPOLOGY {}", super::numa::topology(boot)?.join(" | "))
                }
                Command::Ignore => {}
                Command::Unknown(byte) => println!("UNKNOWN {byte:#04x}"),
            }
        }
        cpu::spin(COUNT_SPINS);
    }
}

/// The region, once checked to be RAM that nothing else uses.
struct Region(());

/// The first page that does not hold what its generation says.
struct Mismatch {
    k: usize,
    page: u64,
    expected: u64,
    found: u64,
}

impl Region {
    /// Checks that the region lies in one e820 RAM entry, clear of the guest image, of what
    /// the zero page points at (command line, initrd) and of pages already allocated. The
    /// scenario allocates only the devices' few pages, checked in `run` to stay below it.
    fn claim(boot: &BootParams) -> Result<Region, String> {
        let region = REGION_START..REGION_START + REGION_SIZE;
        if !boot
            .e820()
            .any(|e| e.kind == E820_RAM && e.addr <= region.start && region.end <= e.range().end)
        {
            let ram_end = boot
                .e820()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.range().end)
                .max()
                .unwrap_or(0);
            return Err(format!(
                "RAM too small: the region {:#x}..{:#x} is not all RAM in the e820 map (RAM ends at {ram_end:#x}; boot with --memory 80M or more)",
                region.start, region.end
            ));
        }
        let image = layout::image();
        let [cmdline, initrd] = boot.referenced_ranges();
        for (what, used) in [
            ("the guest image", image),
            ("the command line", cmdline),
            ("the initrd", initrd),
        ] {
            if used.start < region.end && region.start < used.end {
                return Err(format!(
                    "the region {:#x}..{:#x} overlaps {what} at {:#x}..{:#x}",
                    region.start, region.end, used.start, used.end
                ));
            }
        }
        let free = pages::free();
        if free.start > region.start && free.start < free.end {
            return Err(format!(
                "the page allocator has handed out memory up to {:#x}, inside the region",
                free.start
            ));
        }
        Ok(Region(()))
    }

    /// Writes sub-region `k` at generation `g`: two words in each of its pages.
    fn write(&self, k: usize, g: u64) {
        for page in 0..PAGES_PER_SUBREGION {
            let (first, last) = page_words(k, g, page);
            let addr = page_addr(k, page);
            // SAFETY: `claim` checked that the region is identity-mapped RAM (below 4 GiB, in
            // an e820 RAM entry) that nothing else in this guest uses; both words lie inside
            // page `page` of sub-region `k`, within the region, and are 8-byte aligned.
            unsafe {
                (addr as *mut u64).write_volatile(first);
                ((addr + LAST_WORD_OFFSET) as *mut u64).write_volatile(last);
            }
        }
    }

    /// Checks every page of every sub-region against its generation.
    fn verify(&self, gens: &[u64; SUBREGIONS]) -> Result<(), Mismatch> {
        for (k, &g) in gens.iter().enumerate() {
            for page in 0..PAGES_PER_SUBREGION {
                let (first, last) = page_words(k, g, page);
                let addr = page_addr(k, page);
                // SAFETY: as in `write`: RAM of the region that only this scenario touches.
                let found = unsafe {
                    [
                        (first, (addr as *const u64).read_volatile()),
                        (
                            last,
                            ((addr + LAST_WORD_OFFSET) as *const u64).read_volatile(),
                        ),
                    ]
                };
                if let Some(&(expected, found)) = found.iter().find(|(e, f)| e != f) {
                    return Err(Mismatch {
                        k,
                        page,
                        expected,
                        found,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The generations, comma-separated, without allocating.
struct Generations<'a>(&'a [u64; SUBREGIONS]);

impl fmt::Display for Generations<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}
