//! What the `snapshot` scenario and the host share: where its memory region lies, what each of
//! its pages holds, its command bytes, and what its device commands read, write and draw.
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

/// The sectors `r` reads: 4 KiB from sector 0.
pub const DISK_READ_SECTORS: core::ops::Range<u64> = 0..8;
/// The sector `w` writes.
pub const DISK_WRITE_SECTOR: u64 = 8;
pub const SECTOR_SIZE: usize = 512;

/// FNV-1a, 64-bit: the hash `r` prints (the same function as the guest's `rt::fnv`).
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash = (hash ^ bytes[i] as u64).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The sector `w` writes at disk counter `n`: never the same for two counters below 2^56, and
/// never all zero.
pub const fn disk_sector(n: u64) -> [u8; SECTOR_SIZE] {
    let mut sector = [0u8; SECTOR_SIZE];
    let mut k = 0;
    while k < SECTOR_SIZE {
        sector[k] = match k {
            0..8 => n.to_le_bytes()[k],
            _ => (mix(n ^ (k as u64 / 8)) >> (8 * (k % 8))) as u8,
        };
        k += 1;
    }
    sector[8] |= 1;
    sector
}

/// The host port `s` connects to (the host listens at `<uds>_5000`).
pub const VSOCK_HOST_PORT: u32 = 5000;
/// `s` number n connects from local port `VSOCK_LOCAL_PORT_BASE + n`: a new port each time.
pub const VSOCK_LOCAL_PORT_BASE: u32 = 50_000;

/// What `s` number n sends (and expects back), without allocating: `ping <n>\n` in `buf`;
/// returns its length.
pub fn vsock_ping(n: u64, buf: &mut [u8; 32]) -> usize {
    let prefix = b"ping ";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut v = n;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut at = prefix.len();
    for i in (0..len).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    buf[at] = b'\n';
    at + 1
}

/// The RGBA pixel at (x, y) of the picture with screen counter `n` (0 at start, then one per
/// `g`). Alpha is always 255.
pub const fn screen_pixel(x: u32, y: u32, n: u64) -> [u8; 4] {
    let n = n as u32;
    [
        x.wrapping_mul(7).wrapping_add(n.wrapping_mul(37)) as u8,
        y.wrapping_mul(11).wrapping_add(n.wrapping_mul(59)) as u8,
        (x ^ y).wrapping_add(n.wrapping_mul(101)) as u8,
        0xff,
    ]
}

/// The ethertype of the frames `n` sends (local experimental).
pub const NET_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// What the payload of the frames `n` sends starts with; then the counter, 8 bytes
/// little-endian, then zeros up to 60 bytes of frame.
pub const NET_MAGIC: &[u8; 17] = b"petrel-snap-frame";
pub const NET_FRAME_LEN: usize = 60;

/// The frame `n` number `n` sends from `mac`: broadcast, [`NET_ETHERTYPE`], [`NET_MAGIC`], n.
pub fn net_frame(mac: [u8; 6], n: u64) -> [u8; NET_FRAME_LEN] {
    let mut f = [0u8; NET_FRAME_LEN];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&NET_ETHERTYPE);
    f[14..31].copy_from_slice(NET_MAGIC);
    f[31..39].copy_from_slice(&n.to_le_bytes());
    f
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
    /// `D`: toggle steady dirtying; answer `DIRTY on` or `DIRTY off`. While on, after each
    /// `COUNT n` line (before reading commands) the guest bumps the generation of sub-region
    /// `n % 16`, rewrites it and prints `WROTE <k> <g>` as [`Command::Write`] does.
    Dirty,
    /// `r`: read sectors [`DISK_READ_SECTORS`] of the first block device; answer
    /// `DISK <16 hex digits>`, their FNV-1a 64 ([`fnv1a64`]).
    DiskRead,
    /// `w`: bump the disk counter n and write [`disk_sector`]`(n)` to sector
    /// [`DISK_WRITE_SECTOR`], then flush; answer `DISK wrote <n>`.
    DiskWrite,
    /// `p`: bump the console counter n and print `CONSOLE <n>` on the first virtio console
    /// (with `\n`), then the same line on the serial port.
    Console,
    /// `s`: bump the vsock counter n, connect from local port [`VSOCK_LOCAL_PORT_BASE`] + n to
    /// host port [`VSOCK_HOST_PORT`], send [`vsock_ping`]`(n)`, wait for it to come back, close
    /// (RST); answer `VSOCK ok <n>`, `VSOCK refused <n>` or `VSOCK bad <n> <why>`.
    Vsock,
    /// `g`: bump the screen counter n, paint [`screen_pixel`]`(x, y, n)` over the whole first
    /// scanout and flush it; answer `GPU drew <n>`. (At start the screen shows n = 0.)
    Gpu,
    /// `i`: drain the pending events of every input device; answer `KEYS <code>:<value>,...`
    /// for events other than EV_SYN, in order, or `KEYS none`.
    Keys,
    /// `n`: bump the net counter n and send [`net_frame`]`(mac, n)` on the first network device;
    /// answer `NET sent <n>`.
    Net,
    /// `m`: take the frames the network device received, up to the first with
    /// [`NET_ETHERTYPE`]; answer `NET got <len> <fnv1a64 of the frame, 16 hex digits>` or
    /// `NET got none`. (Receive buffers are posted at start and again once taken.)
    NetRecv,
    /// `t`: read the NUMA topology from the ACPI tables again (`numa`'s topology lines);
    /// answer `TOPOLOGY <line> | <line> | ...`.
    Topology,
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
            b'D' => Command::Dirty,
            b'r' => Command::DiskRead,
            b'w' => Command::DiskWrite,
            b'p' => Command::Console,
            b's' => Command::Vsock,
            b'g' => Command::Gpu,
            b'i' => Command::Keys,
            b'n' => Command::Net,
            b'm' => Command::NetRecv,
            b't' => Command::Topology,
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
            Command::Dirty => Some(b'D'),
            Command::DiskRead => Some(b'r'),
            Command::DiskWrite => Some(b'w'),
            Command::Console => Some(b'p'),
            Command::Vsock => Some(b's'),
            Command::Gpu => Some(b'g'),
            Command::Keys => Some(b'i'),
            Command::Net => Some(b'n'),
            Command::NetRecv => Some(b'm'),
            Command::Topology => Some(b't'),
            Command::Unknown(byte) => Some(byte),
        }
    }
}
