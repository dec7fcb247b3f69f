//! Loading what boots: an ELF `vmlinux` or a `bzImage` (64-bit entry, no real-mode setup
//! code), an initrd at the top of low RAM, and the command line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use memory::{GuestMemoryMmap, MemoryLayout, PAGE_SIZE};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::arch::x86_64::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START};

/// Linux's `COMMAND_LINE_SIZE` on x86, including the NUL: the limit for an ELF kernel, which
/// carries no setup header to state its own.
const ELF_CMDLINE_SIZE: usize = 2048;
/// Setup header: "HdrS" at 0x202.
const HDRS_OFFSET: u64 = 0x202;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// `xloadflags` bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Boot protocol 2.12 introduced `xloadflags`.
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Without a header to say otherwise, an initrd must sit below 2 GiB.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// Errors loading the kernel, initrd or command line. All are the user's input at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither an ELF nor a bzImage.
    #[error("kernel {0}: not an ELF vmlinux or a bzImage")]
    UnknownFormat(PathBuf),
    /// A bzImage too old or without a 64-bit entry point.
    #[error("kernel {path}: bzImage {reason}")]
    UnsupportedBzImage { path: PathBuf, reason: String },
    /// linux-loader refused the image or could not place it.
    #[error("kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel needs more memory than the guest has below the MMIO gap.
    #[error("kernel {path} needs memory up to {end:#x}, but the guest's low RAM ends at {ram_end:#x}: give it more --memory")]
    KernelTooBig {
        path: PathBuf,
        end: u64,
        ram_end: u64,
    },
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel: give it more --memory")]
    InitrdTooBig { path: PathBuf, size: u64 },
    /// The command line is too long for the kernel.
    #[error("the command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    /// The command line has a character the kernel cannot take.
    #[error("invalid command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing into guest memory failed.
    #[error("cannot write {what} into guest memory: {reason}")]
    Memory { what: &'static str, reason: String },
}

/// A loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: u64,
    /// One past the last byte the kernel may use as it starts.
    pub end: u64,
    /// A bzImage's setup header; None for ELF.
    pub setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// The longest command line (without the NUL) this kernel takes.
    pub fn cmdline_max(&self) -> usize {
        let kernel_max = match self.setup_header {
            Some(h) if { h.version } >= 0x0206 => h.cmdline_size as usize,
            Some(_) => 255,
            None => ELF_CMDLINE_SIZE - 1,
        };
        // A header may claim any size; the region petrel sets aside is the hard limit.
        kernel_max.min(CMDLINE_MAX_SIZE as usize - 1)
    }

    /// The highest address an initrd may end at.
    fn initrd_addr_max(&self) -> u64 {
        match self.setup_header {
            Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
            _ => DEFAULT_INITRD_ADDR_MAX,
        }
    }
}

fn open(what: &'static str, path: &Path) -> Result<File, LoadError> {
    let read_err = |source| LoadError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.is_dir() {
        return Err(read_err(std::io::Error::from_raw_os_error(libc::EISDIR)));
    }
    Ok(file)
}

/// The kinds of kernel image petrel boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
}

fn detect_format(file: &mut File) -> std::io::Result<Option<Format>> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0))?;
    if file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF" {
        return Ok(Some(Format::Elf));
    }
    file.seek(SeekFrom::Start(HDRS_OFFSET))?;
    if file.read_exact(&mut magic).is_ok() && magic == *HDRS_MAGIC {
        return Ok(Some(Format::BzImage));
    }
    Ok(None)
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    load_kernel_file(mem, layout, &mut open("kernel", path)?, path)
}

/// Loads the kernel image in `file`; `path` names it in errors.
pub fn load_kernel_file(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    file: &mut File,
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    let format = detect_format(file).map_err(|source| LoadError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    })?;
    let kernel_err = |source| LoadError::Kernel {
        path: path.to_path_buf(),
        source,
    };
    let loaded = match format {
        Some(Format::Elf) => {
            let r =
                Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(kernel_err)?;
            LoadedKernel {
                entry: r.kernel_load.0,
                end: r.kernel_end,
                setup_header: None,
            }
        }
        Some(Format::BzImage) => load_bzimage(mem, file, path)?,
        None => return Err(LoadError::UnknownFormat(path.to_path_buf())),
    };
    if loaded.end > layout.low_ram_end() {
        return Err(LoadError::KernelTooBig {
            path: path.to_path_buf(),
            end: loaded.end,
            ram_end: layout.low_ram_end(),
        });
    }
    Ok(loaded)
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    let unsupported = |reason: String| LoadError::UnsupportedBzImage {
        path: path.to_path_buf(),
        reason,
    };
    let r = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        LoadError::Kernel {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let hdr = r
        .setup_header
        .ok_or_else(|| unsupported("has no setup header".into()))?;
    let version = hdr.version;
    if version < MIN_BZIMAGE_PROTOCOL {
        return Err(unsupported(format!(
            "uses boot protocol {}.{:02}; 64-bit entry needs 2.12 or later",
            version >> 8,
            version & 0xff
        )));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported("has no 64-bit entry point".into()));
    }
    // The kernel decompresses itself into `init_size` bytes from where it was loaded, or
    // from its preferred address when it was loaded below it (a relocatable kernel moves up
    // to `LOAD_PHYSICAL_ADDR`, which `pref_address` states).
    let init_start = r.kernel_load.0.max(hdr.pref_address);
    let init_end = init_start + u64::from(hdr.init_size);
    Ok(LoadedKernel {
        entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        end: init_end.max(r.kernel_end),
        setup_header: Some(hdr),
    })
}

/// Loads the initrd at the top of low RAM (page-aligned, below the kernel's limit) and
/// returns its address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<(u64, u64), LoadError> {
    let read_err = |source| LoadError::Read {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let mut file = open("initrd", path)?;
    let size = file.metadata().map_err(read_err)?.len();
    let too_big = || LoadError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
    };
    let top = layout.low_ram_end().min(kernel.initrd_addr_max() + 1);
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE as u64 - 1);
    if addr < kernel.end.max(HIMEM_START) {
        return Err(too_big());
    }
    let region_err = |e: vm_memory::GuestMemoryError| LoadError::Memory {
        what: "the initrd",
        reason: e.to_string(),
    };
    let mut slice = mem
        .get_slice(GuestAddress(addr), size as usize)
        .map_err(region_err)?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

/// Writes the command line, checked against what the kernel accepts.
pub fn load_cmdline(mem: &GuestMemoryMmap, text: &str, max_len: usize) -> Result<u64, LoadError> {
    if text.len() > max_len {
        return Err(LoadError::CmdlineTooLong {
            len: text.len(),
            max: max_len,
        });
    }
    let mut cmdline = Cmdline::new(max_len + 1).map_err(LoadError::Cmdline)?;
    if !text.trim().is_empty() {
        cmdline.insert_str(text).map_err(LoadError::Cmdline)?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline).map_err(|e| {
        LoadError::Memory {
            what: "the command line",
            reason: e.to_string(),
        }
    })?;
    Ok(CMDLINE_ADDR)
}

#[cfg(test)]
mod tests;
