//! The EDID (VESA E-EDID 1.4 base block, 128 bytes) GET_EDID returns: a digital display
//! named `petrel` whose preferred (first detailed) timing is the configured size.
//!
//! Detailed timings carry 12-bit sizes, which is why the configured size is at most
//! [`super::MAX_SIZE`]. The pixel clock is for 60 Hz with small blanking, lowered for
//! sizes whose 60 Hz clock would not fit the 16-bit field.

/// Length of an EDID base block.
pub const EDID_LEN: usize = 128;

const HBLANK: u32 = 160;
const VBLANK: u32 = 30;
/// Pixels per centimetre at 96 DPI, for the physical size fields.
const PX_PER_CM: u32 = 38;

/// The EDID of a `width` x `height` display (both in 1..=4095).
pub fn build(width: u32, height: u32) -> [u8; EDID_LEN] {
    let mut e = [0u8; EDID_LEN];
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "PTL": three 5-bit letters, big-endian.
    let id: u16 = (16 << 10) | (20 << 5) | 12;
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes());
    e[17] = 34; // 2024
    e[18] = 1;
    e[19] = 4;
    e[20] = 0x80; // digital input
    e[21] = (width / PX_PER_CM).clamp(1, 255) as u8;
    e[22] = (height / PX_PER_CM).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB, the preferred timing is the native mode
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    for slot in e[38..54].chunks_exact_mut(2) {
        slot.copy_from_slice(&[0x01, 0x01]); // unused standard timing
    }
    e[54..72].copy_from_slice(&detailed_timing(width, height));
    e[72..90].copy_from_slice(&name_descriptor(b"petrel"));
    e[90..108].copy_from_slice(&dummy_descriptor());
    e[108..126].copy_from_slice(&dummy_descriptor());
    e[126] = 0; // no extension blocks
    e[127] = checksum(&e[..127]);
    e
}

/// The byte that makes the block sum to 0 modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

fn detailed_timing(width: u32, height: u32) -> [u8; 18] {
    let (w, h) = (width.min(4095), height.min(4095));
    let total = u64::from(w + HBLANK) * u64::from(h + VBLANK);
    // 10 kHz units at 60 Hz, at most what 16 bits hold.
    let clock = (total * 60 / 10_000).clamp(1, u64::from(u16::MAX)) as u16;
    let (wmm, hmm) = (w * 10 / PX_PER_CM, h * 10 / PX_PER_CM);
    let mut d = [0u8; 18];
    d[0..2].copy_from_slice(&clock.to_le_bytes());
    d[2] = w as u8;
    d[3] = HBLANK as u8;
    d[4] = (((w >> 8) & 0xf) << 4) as u8 | ((HBLANK >> 8) & 0xf) as u8;
    d[5] = h as u8;
    d[6] = VBLANK as u8;
    d[7] = (((h >> 8) & 0xf) << 4) as u8 | ((VBLANK >> 8) & 0xf) as u8;
    d[8] = 48; // h sync offset
    d[9] = 32; // h sync width
    d[10] = (3 << 4) | 6; // v sync offset 3, width 6
    d[11] = 0;
    d[12] = wmm as u8;
    d[13] = hmm as u8;
    d[14] = (((wmm >> 8) & 0xf) << 4) as u8 | ((hmm >> 8) & 0xf) as u8;
    d[17] = 0x1e; // digital separate sync, +hsync, +vsync
    d
}

fn name_descriptor(name: &[u8]) -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = 0xfc;
    let text = &mut d[5..18];
    text.fill(b' ');
    let n = name.len().min(12);
    text[..n].copy_from_slice(&name[..n]);
    text[n] = b'\n';
    d
}

fn dummy_descriptor() -> [u8; 18] {
    let mut d = [0u8; 18];
    d[3] = 0x10;
    d
}

/// The preferred mode an EDID's first detailed timing gives, as a driver reads it.
#[cfg(test)]
pub fn preferred_mode(e: &[u8]) -> (u32, u32) {
    let d = &e[54..72];
    let w = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
    let h = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
    (w, h)
}
