//! Guest images for petrel's end-to-end tests.
//!
//! The test guest is a small `no_std` Rust program (see `resources/guest`) built for the
//! `x86_64-unknown-none` target by this crate's build script and embedded here as an ELF
//! image. It is linked to load and run at guest-physical 0x200000, expects the Linux 64-bit
//! boot protocol entry (long mode, identity map, `rsi` = zero page), picks a scenario from the
//! `petrel.test=<name>` kernel command-line parameter and reports over the serial port at
//! 0x3f8 with lines such as `PASS <name>` or `FAIL <name>: <reason>`.

/// The test guest: an ELF64 executable whose entry point and `PT_LOAD` segments lie at
/// guest-physical 0x200000 and above (`p_paddr == p_vaddr`).
///
/// Boot it like a Linux `vmlinux` (64-bit entry, zero page in `rsi`) and select a scenario
/// with `petrel.test=<name>` on the command line (`boot`, `smp` or `demo`; `demo` when absent).
pub static TEST_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/petrel-guest"));

/// The test guest's Ctrl+Alt+Del decoder is plain `core` code: its tests run here, on the host
/// (the guest itself is built without a test harness).
#[cfg(test)]
#[path = "../guest/src/rt/scancode.rs"]
mod guest_scancode;

/// The `snapshot` scenario's region layout, page pattern and command bytes, compiled from the
/// guest's own source so host and guest cannot disagree.
#[path = "../guest/src/scenarios/snapshot_proto.rs"]
pub mod snapshot_proto;

#[cfg(test)]
mod snapshot_proto_tests {
    use super::snapshot_proto::*;

    #[test]
    fn the_pattern_is_never_zero_and_differs_across_regions_generations_and_pages() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..SUBREGIONS {
            for g in 0..4 {
                for page in 0..PAGES_PER_SUBREGION {
                    let (first, last) = page_words(k, g, page);
                    assert!(first != 0 && last != 0 && first != last);
                    assert!(seen.insert(first) && seen.insert(last), "{k} {g} {page}");
                }
            }
        }
    }

    #[test]
    fn the_region_fits_under_128_mib_above_the_guest_image() {
        assert_eq!(REGION_SIZE, 16 << 20);
        assert_eq!(PAGES_PER_SUBREGION, 256);
        assert_eq!(page_addr(0, 0), REGION_START);
        assert_eq!(page_addr(15, 255) + PAGE_SIZE, REGION_START + REGION_SIZE);
        const { assert!(REGION_START >= 8 << 20 && REGION_START + REGION_SIZE <= 128 << 20) };
    }

    #[test]
    fn device_command_data_is_what_the_docs_say() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let sectors: std::collections::HashSet<_> = (0..64).map(disk_sector).collect();
        assert_eq!(sectors.len(), 64);
        assert_eq!(disk_sector(0x0102)[..3], [0x02, 0x01, 0]);
        assert!(disk_sector(0).iter().any(|&b| b != 0));
        let mut buf = [0u8; 32];
        for (n, text) in [
            (0, "ping 0\n"),
            (7, "ping 7\n"),
            (u64::MAX, "ping 18446744073709551615\n"),
        ] {
            let len = vsock_ping(n, &mut buf);
            assert_eq!(&buf[..len], text.as_bytes());
        }
        assert_ne!(screen_pixel(5, 9, 0), screen_pixel(5, 9, 1));
        assert_eq!(screen_pixel(5, 9, 0)[3], 0xff);
        let frame = net_frame([2, 0, 0, 0, 0, 1], 3);
        assert_eq!(frame[..6], [0xff; 6]);
        assert_eq!(frame[14..31], NET_MAGIC[..]);
        assert_eq!(frame[31..39], 3u64.to_le_bytes());
        assert_eq!(Command::parse(b's'), Command::Vsock);
    }

    #[test]
    fn command_bytes_round_trip() {
        for byte in 0..=u8::MAX {
            let command = Command::parse(byte);
            match command {
                Command::Ignore => assert!(b"\r\n ".contains(&byte)),
                Command::Unknown(b) => assert_eq!(b, byte),
                _ => assert_eq!(command.byte(), Some(byte)),
            }
        }
        assert_eq!(Command::parse(b'f'), Command::Write(15));
        assert_eq!(Command::parse(b'F'), Command::Unknown(b'F'));
        assert_eq!(Command::Write(16).byte(), None);
    }
}
