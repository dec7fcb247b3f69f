use std::io::Write;

use vm_memory::Bytes;

use super::*;

fn guest(size: u64) -> (GuestMemoryMmap, MemoryLayout) {
    let layout = MemoryLayout::new(size).unwrap();
    (layout.allocate().unwrap(), layout)
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// A minimal ELF64 x86-64 executable with one PT_LOAD of `code` at `paddr`.
fn elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
    let mut e = vec![0u8; 64 + 56];
    e[0..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = &mut e[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R X
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&paddr.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&paddr.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&memsz.to_le_bytes());
    e.extend_from_slice(code);
    e
}

/// A bzImage-shaped file: 5 sectors of setup with a header, then `payload`.
fn bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 5 * 512];
    b[0x1f1] = 4; // setup_sects
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    b[0x211] = 1; // LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes()); // code32_start
    b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    b[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    b[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes()); // init_size
    b.extend_from_slice(payload);
    b
}

#[test]
fn elf_kernel_loads_at_its_physical_address() {
    let (mem, layout) = guest(64 << 20);
    let f = file_with(&elf(0x200000, b"\xf4\xeb\xfd", 0x1000));
    let k = load_kernel(&mem, &layout, f.path()).unwrap();
    assert_eq!(k.entry, 0x200000);
    assert_eq!(k.end, 0x201000);
    assert!(k.setup_header.is_none());
    assert_eq!(k.cmdline_max(), 2047);
    let mut code = [0u8; 3];
    mem.read_slice(&mut code, GuestAddress(0x200000)).unwrap();
    assert_eq!(&code, b"\xf4\xeb\xfd");
}

#[test]
fn elf_kernel_beyond_guest_memory_is_refused() {
    let (mem, layout) = guest(16 << 20);
    let f = file_with(&elf(0x200000, b"\x90", 64 << 20));
    let err = load_kernel(&mem, &layout, f.path()).unwrap_err();
    assert!(matches!(err, LoadError::KernelTooBig { .. }), "{err}");
    let f = file_with(&elf(0x2000000, b"\x90", 1));
    assert!(load_kernel(&mem, &layout, f.path()).is_err());
}

#[test]
fn bzimage_enters_64_bit_code_at_load_plus_0x200() {
    let (mem, layout) = guest(64 << 20);
    let f = file_with(&bzimage(0x020f, 1, &[0xab; 4096]));
    let k = load_kernel(&mem, &layout, f.path()).unwrap();
    assert_eq!(k.entry, 0x100200);
    // It decompresses into init_size bytes from its preferred address.
    assert_eq!(k.end, 0x100_0000 + 0x80_0000);
    assert_eq!(k.cmdline_max(), 2047);
    let first: u8 = mem.read_obj(GuestAddress(0x100000)).unwrap();
    assert_eq!(first, 0xab);
}

#[test]
fn bzimage_without_64_bit_entry_or_too_old_is_refused() {
    let (mem, layout) = guest(64 << 20);
    let no64 = file_with(&bzimage(0x020f, 0, &[0; 512]));
    assert!(matches!(
        load_kernel(&mem, &layout, no64.path()),
        Err(LoadError::UnsupportedBzImage { .. })
    ));
    let old = file_with(&bzimage(0x020a, 1, &[0; 512]));
    let err = load_kernel(&mem, &layout, old.path()).unwrap_err();
    assert!(err.to_string().contains("2.10"), "{err}");
}

#[test]
fn neither_elf_nor_bzimage_is_refused() {
    let (mem, layout) = guest(16 << 20);
    for bytes in [&b""[..], b"hello world", &[0u8; 4096]] {
        let f = file_with(bytes);
        assert!(matches!(
            load_kernel(&mem, &layout, f.path()),
            Err(LoadError::UnknownFormat(_))
        ));
    }
}

#[test]
fn missing_or_directory_kernel_is_a_read_error() {
    let (mem, layout) = guest(16 << 20);
    let err = load_kernel(&mem, &layout, Path::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/vmlinux"));
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_kernel(&mem, &layout, dir.path()),
        Err(LoadError::Read { .. })
    ));
}

#[test]
fn initrd_sits_page_aligned_at_the_top_of_low_ram_intact() {
    let (mem, layout) = guest(64 << 20);
    let kernel = LoadedKernel {
        entry: 0x200000,
        end: 0x300000,
        setup_header: None,
    };
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let f = file_with(&data);
    let (addr, size) = load_initrd(&mem, &layout, &kernel, f.path()).unwrap();
    assert_eq!(size, 10_000);
    assert_eq!(addr % 4096, 0);
    assert!(addr + size <= 64 << 20 && addr + size > (64 << 20) - 8192);
    let mut back = vec![0u8; data.len()];
    mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn initrd_that_would_overlap_the_kernel_is_refused() {
    let (mem, layout) = guest(16 << 20);
    let kernel = LoadedKernel {
        entry: 0x200000,
        end: 0x80_0000,
        setup_header: None,
    };
    let f = file_with(&vec![1u8; 9 << 20]);
    assert!(matches!(
        load_initrd(&mem, &layout, &kernel, f.path()),
        Err(LoadError::InitrdTooBig { .. })
    ));
}

#[test]
fn command_line_is_written_nul_terminated_and_checked() {
    let (mem, _) = guest(16 << 20);
    let addr = load_cmdline(&mem, "console=ttyS0 petrel.test=boot", 2047).unwrap();
    let mut buf = [0u8; 31];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    assert_eq!(&buf, b"console=ttyS0 petrel.test=boot\0");
    let long = "x".repeat(2048);
    assert!(matches!(
        load_cmdline(&mem, &long, 2047),
        Err(LoadError::CmdlineTooLong {
            len: 2048,
            max: 2047
        })
    ));
    assert!(matches!(
        load_cmdline(&mem, "bad\u{7}bell", 2047),
        Err(LoadError::Cmdline(_))
    ));
}
