//! What the `snapshot` scenario and the host share: where its memory region lies, what each of
//! its pages holds, and its command bytes.
//!
//! Plain `core` code with no unsafe and no I/O: the `resources` crate compiles this same file
//! for the host (`resources::snapshot_proto`), so the host side can recompute the pattern (for
//! instance to check a snapshot's memory file) and send commands without restating them.

/// Guest-physical start of the region: 64 MiB. The guest image (linked at 2 MiB, about 2 MiB
/// long with its stacks and heap), the VMM's boot structures (below 1 MiB) and the page
/// allocator's first pages (right after the image) all lie below it; the scenario checks at
/// run time that the region is usable RAM clear of the image, command line and initrd.
pub const REGION_START: u64 = 0x400_0000;
/// Sub-regions, each with its own generation.
pub const SUBREGIONS: usize = 16;
/// Bytes per sub-region: 1 MiB.
pub const SUBREGION_SIZE: u64 = 1 << 20;
/// Bytes of the whole region: 16 MiB.
pub const REGION_SIZE: u64 = SUBREGION_SIZE * SUBREGIONS as u64;
pub const PAGE_SIZE: u64 = 4096;
/// Pages per sub-region: 256.
pub const PAGES_PER_SUBREGION: u64 = SUBREGION_SIZE / PAGE_SIZE;
/// Offset in a page of its second word (the first is at 0).
pub const LAST_WORD_OFFSET: u64 = PAGE_SIZE - 8;

/// Guest-physical address of page `page` (0..256) of sub-region `k` (0..16).
pub const fn page_addr(k: usize, page: u64) -> u64 {
    REGION_START + k as u64 * SUBREGION_SIZE + page * PAGE_SIZE
}

/// The words page `page` of sub-region `k` holds at generation `g`: at offset 0 and at
/// [`LAST_WORD_OFFSET`]. Both are never zero (fresh RAM reads zero) and differ for every
/// `(k, g, page)` in practice (a splitmix64 finaliser over the three).
pub const fn page_words(k: usize, g: u64, page: u64) -> (u64, u64) {
    let seed = (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ g.wrapping_mul(0xd1b5_4a32_d192_ed03)
        ^ page.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7);
    let first = nonzero(mix(seed));
    let last = nonzero(mix(seed ^ 0x5851_f42d_4c95_7f2d));
    (first, last)
}

/// splitmix64's output function.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const fn nonzero(z: u64) -> u64 {
    if z == 0 {
        1
    } else {
        z
    }
}

/// A command byte the guest reads from COM1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `0`-`9`, `a`-`f`: bump sub-region k's generation and rewrite it; answer
    /// `WROTE <k> <g>` (k and g in decimal).
    Write(usize),
    /// `A`: bump every generation and rewrite the whole region; answer `WROTE all`.
    WriteAll,
    /// `v`: check every page; answer `VERIFY ok <g0>,...,<g15>` or
    /// `VERIFY bad <k> <page> expected <x> found <y>` (x and y as 0x-prefixed hex).
    Verify,
    /// `q`: end the scenario (`PASS snapshot`, power off).
    Quit,
    /// `\r`, `\n`, space: nothing.
    Ignore,
    /// Anything else: answer `UNKNOWN <byte>` (the byte as 0x-prefixed hex).
    Unknown(u8),
}

impl Command {
    pub const fn parse(byte: u8) -> Command {
        match byte {
            b'0'..=b'9' => Command::Write((byte - b'0') as usize),
            b'a'..=b'f' => Command::Write((byte - b'a') as usize + 10),
            b'A' => Command::WriteAll,
            b'v' => Command::Verify,
            b'q' => Command::Quit,
            b'\r' | b'\n' | b' ' => Command::Ignore,
            other => Command::Unknown(other),
        }
    }

    /// The byte that means this command (`None` for `Ignore`, and for `Write(k)` with
    /// k >= 16).
    #[allow(
        dead_code,
        reason = "the host sends commands; the guest only parses them"
    )]
    pub const fn byte(self) -> Option<u8> {
        match self {
            Command::Write(k) if k < 10 => Some(b'0' + k as u8),
            Command::Write(k) if k < SUBREGIONS => Some(b'a' + (k - 10) as u8),
            Command::Write(_) | Command::Ignore => None,
            Command::WriteAll => Some(b'A'),
            Command::Verify => Some(b'v'),
            Command::Quit => Some(b'q'),
            Command::Unknown(byte) => Some(byte),
        }
    }
}
