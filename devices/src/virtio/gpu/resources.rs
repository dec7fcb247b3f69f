//! 2D resources: the host copy of each resource's pixels, its backing (a scatter list of
//! guest memory), and the memory cap over all of them.

use std::collections::BTreeMap;

use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::protocol::{format_layout, Layout, Rect, BYTES_PER_PIXEL};

/// Most entries one RESOURCE_ATTACH_BACKING may carry (QEMU's limit).
pub const MAX_BACKING_ENTRIES: u32 = 16384;

/// Why a resource command failed; each maps to one response type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource id {0} is unknown")]
    UnknownId(u32),
    #[error("resource id {0} is 0 or already in use")]
    BadNewId(u32),
    #[error("format {0} is not a supported 32-bit format")]
    Format(u32),
    #[error("{width}x{height} is an empty or overflowing size")]
    Size { width: u32, height: u32 },
    #[error("{need} bytes more would pass the {max} byte cap ({used} in use)")]
    OutOfMemory { need: u64, used: u64, max: u64 },
    #[error("rectangle {0:?} is not inside the resource")]
    Rect(Rect),
    #[error("backing entry {addr:#x}+{len:#x} is outside guest memory")]
    BackingOutside { addr: u64, len: u32 },
    #[error("{0} backing entries: expected 1 to {MAX_BACKING_ENTRIES}")]
    BackingCount(u32),
    #[error("the resource already has backing")]
    HasBacking,
    #[error("the resource has no backing")]
    NoBacking,
    #[error("the transfer reads past the end of the backing")]
    BackingShort,
    #[error("guest memory read failed: {0}")]
    Memory(String),
}

/// One 2D resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub format: u32,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    /// `width * height * 4` bytes, in the resource's format.
    pub pixels: Vec<u8>,
    /// Guest (address, length) pairs; empty when detached.
    pub backing: Vec<(u64, u32)>,
}

impl Resource {
    /// Bytes per row.
    pub fn stride(&self) -> usize {
        self.width as usize * BYTES_PER_PIXEL as usize
    }

    /// Copies `rect` (inside the resource) to RGBA rows of `dst`, `dst_stride` bytes each,
    /// starting at `(dx, dy)` of `dst`.
    pub fn copy_rgba(&self, rect: &Rect, dst: &mut [u8], dst_stride: usize, dx: u32, dy: u32) {
        let l = self.layout;
        let bpp = BYTES_PER_PIXEL as usize;
        for row in 0..rect.height {
            let src_at = (rect.y + row) as usize * self.stride() + rect.x as usize * bpp;
            let dst_at = (dy + row) as usize * dst_stride + dx as usize * bpp;
            let len = rect.width as usize * bpp;
            let src = &self.pixels[src_at..src_at + len];
            let out = &mut dst[dst_at..dst_at + len];
            for (s, d) in src.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
                d[0] = s[l.r];
                d[1] = s[l.g];
                d[2] = s[l.b];
                d[3] = l.a.map_or(0xff, |a| s[a]);
            }
        }
    }

    /// TRANSFER_TO_HOST_2D: copies `rect` from the backing, whose rows start at `offset` and
    /// are `stride()` bytes apart (as QEMU and Linux read it).
    pub fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        rect: &Rect,
        offset: u64,
    ) -> Result<u64, ResourceError> {
        if !rect.fits_in(self.width, self.height) {
            return Err(ResourceError::Rect(*rect));
        }
        if self.backing.is_empty() {
            return Err(ResourceError::NoBacking);
        }
        let stride = self.stride();
        let bpp = BYTES_PER_PIXEL as usize;
        let row_len = rect.width as usize * bpp;
        let total: u64 = self.backing.iter().map(|&(_, l)| u64::from(l)).sum();
        let last = offset
            .checked_add(stride as u64 * u64::from(rect.height - 1))
            .and_then(|o| o.checked_add(row_len as u64));
        if last.is_none_or(|end| end > total) {
            return Err(ResourceError::BackingShort);
        }
        let full_rows = rect.x == 0 && rect.width == self.width;
        if full_rows {
            let dst_at = rect.y as usize * stride;
            let len = rect.height as usize * stride;
            read_scattered(
                mem,
                &self.backing,
                offset,
                &mut self.pixels[dst_at..dst_at + len],
            )?;
            return Ok(len as u64);
        }
        for row in 0..rect.height as usize {
            let src = offset + (stride * row) as u64;
            let dst_at = (rect.y as usize + row) * stride + rect.x as usize * bpp;
            read_scattered(
                mem,
                &self.backing,
                src,
                &mut self.pixels[dst_at..dst_at + row_len],
            )?;
        }
        Ok((row_len * rect.height as usize) as u64)
    }
}

/// Reads `dst.len()` bytes at logical `offset` of the scatter list `backing`.
fn read_scattered(
    mem: &GuestMemoryMmap,
    backing: &[(u64, u32)],
    mut offset: u64,
    mut dst: &mut [u8],
) -> Result<(), ResourceError> {
    for &(addr, len) in backing {
        if dst.is_empty() {
            break;
        }
        let len = u64::from(len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(dst.len() as u64) as usize;
        let (now, rest) = dst.split_at_mut(n);
        let at = addr
            .checked_add(offset)
            .ok_or(ResourceError::BackingShort)?;
        mem.read_slice(now, GuestAddress(at))
            .map_err(|e| ResourceError::Memory(e.to_string()))?;
        dst = rest;
        offset = 0;
    }
    if dst.is_empty() {
        Ok(())
    } else {
        Err(ResourceError::BackingShort)
    }
}

/// What a resource costs the host beside its pixels (its entry and bookkeeping), charged
/// against `max_memory` so that many tiny resources cannot take unbounded memory.
pub const RESOURCE_OVERHEAD: u64 = 256;
/// What one backing entry costs the host, charged against `max_memory` likewise.
pub const BACKING_ENTRY_COST: u64 = 16;

impl Resource {
    /// The host memory charged for this resource: pixels, overhead and backing list.
    pub fn host_bytes(&self) -> u64 {
        self.pixels.len() as u64
            + RESOURCE_OVERHEAD
            + self.backing.len() as u64 * BACKING_ENTRY_COST
    }
}

/// Every resource, by id, and the host memory they take (see [`Resource::host_bytes`]).
#[derive(Debug, Default)]
pub struct Resources {
    pub map: BTreeMap<u32, Resource>,
    pub used: u64,
    pub max: u64,
}

impl Resources {
    pub fn new(max: u64) -> Self {
        Resources {
            map: BTreeMap::new(),
            used: 0,
            max,
        }
    }

    pub fn get(&self, id: u32) -> Result<&Resource, ResourceError> {
        self.map.get(&id).ok_or(ResourceError::UnknownId(id))
    }

    pub fn get_mut(&mut self, id: u32) -> Result<&mut Resource, ResourceError> {
        self.map.get_mut(&id).ok_or(ResourceError::UnknownId(id))
    }

    /// RESOURCE_CREATE_2D: a zeroed resource, within the memory cap.
    pub fn create(
        &mut self,
        id: u32,
        format: u32,
        width: u32,
        height: u32,
    ) -> Result<(), ResourceError> {
        if id == 0 || self.map.contains_key(&id) {
            return Err(ResourceError::BadNewId(id));
        }
        let layout = format_layout(format).ok_or(ResourceError::Format(format))?;
        let size = size_of(width, height).ok_or(ResourceError::Size { width, height })?;
        self.reserve(size.saturating_add(RESOURCE_OVERHEAD))?;
        let mut pixels = Vec::new();
        pixels
            .try_reserve_exact(size as usize)
            .map_err(|_| self.out_of_memory(size))?;
        pixels.resize(size as usize, 0);
        self.insert(
            id,
            Resource {
                format,
                layout,
                width,
                height,
                pixels,
                backing: Vec::new(),
            },
        );
        Ok(())
    }

    fn out_of_memory(&self, need: u64) -> ResourceError {
        ResourceError::OutOfMemory {
            need,
            used: self.used,
            max: self.max,
        }
    }

    /// Checks that `need` more bytes fit under the cap.
    pub fn reserve(&self, need: u64) -> Result<(), ResourceError> {
        match self.used.checked_add(need) {
            Some(total) if total <= self.max => Ok(()),
            _ => Err(self.out_of_memory(need)),
        }
    }

    /// Adds a resource whose cost was reserved.
    pub fn insert(&mut self, id: u32, resource: Resource) {
        self.used += resource.host_bytes();
        self.map.insert(id, resource);
    }

    /// RESOURCE_UNREF.
    pub fn unref(&mut self, id: u32) -> Result<(), ResourceError> {
        let r = self.map.remove(&id).ok_or(ResourceError::UnknownId(id))?;
        self.used -= r.host_bytes();
        Ok(())
    }

    /// RESOURCE_DETACH_BACKING.
    pub fn detach(&mut self, id: u32) -> Result<(), ResourceError> {
        let r = self.map.get_mut(&id).ok_or(ResourceError::UnknownId(id))?;
        if r.backing.is_empty() {
            return Err(ResourceError::NoBacking);
        }
        let refund = r.backing.len() as u64 * BACKING_ENTRY_COST;
        r.backing = Vec::new();
        self.used -= refund;
        Ok(())
    }

    /// RESOURCE_ATTACH_BACKING with entries already parsed.
    pub fn attach(
        &mut self,
        mem: &GuestMemoryMmap,
        id: u32,
        entries: Vec<(u64, u32)>,
    ) -> Result<(), ResourceError> {
        if !self.get(id)?.backing.is_empty() {
            return Err(ResourceError::HasBacking);
        }
        check_backing(mem, &entries)?;
        let cost = entries.len() as u64 * BACKING_ENTRY_COST;
        self.reserve(cost)?;
        self.get_mut(id)?.backing = entries;
        self.used += cost;
        Ok(())
    }

    /// Drops every resource.
    pub fn clear(&mut self) {
        self.map.clear();
        self.used = 0;
    }
}

/// Checks each entry of a scatter list lies inside guest memory.
pub fn check_backing(mem: &GuestMemoryMmap, entries: &[(u64, u32)]) -> Result<(), ResourceError> {
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    if count == 0 || count > MAX_BACKING_ENTRIES {
        return Err(ResourceError::BackingCount(count));
    }
    for &(addr, len) in entries {
        if len == 0 || !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize) {
            return Err(ResourceError::BackingOutside { addr, len });
        }
    }
    Ok(())
}

/// `width * height * 4`, if both are non-zero and it does not overflow.
pub fn size_of(width: u32, height: u32) -> Option<u64> {
    if width == 0 || height == 0 {
        return None;
    }
    u64::from(width)
        .checked_mul(u64::from(height))?
        .checked_mul(u64::from(BYTES_PER_PIXEL))
        .filter(|&s| usize::try_from(s).is_ok())
}
