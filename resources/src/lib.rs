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
