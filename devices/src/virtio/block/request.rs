//! Turning a descriptor chain into a block request (virtio 1.2, section 5.2.6), or into the
//! status the guest gets for a chain that is not one.
//!
//! The device makes no assumption about how the driver splits a request into descriptors
//! (virtio 1.2, 2.7.4): the device-readable bytes are the 16-byte header followed by the
//! data to write or the discard/write-zeroes segments; the device-writable bytes are the
//! data to read or the id, and their very last byte is the status.
//!
//! What `virtio-queue` checks on its own while iterating a chain: a chain is at most as long
//! as its table (so a `next` loop ends), an indirect table inside an indirect table, an
//! indirect table whose length is not a multiple of 16, a descriptor table entry outside
//! guest memory, a `next` past the table, a chain longer than 4 GiB in total. In every case
//! the iteration just stops early, so a cut-off chain is recognised here by its last
//! descriptor still having `VIRTQ_DESC_F_NEXT`. Buffer addresses, directions and lengths
//! are not checked by `virtio-queue` at all: that is done here.

use std::ops::Deref;

use memory::GuestMemoryMmap;
use smallvec::SmallVec;
use virtio_bindings::virtio_blk::*;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use super::{QUEUE_SIZE, SECTOR_SIZE};

pub(super) const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub(super) const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub(super) const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Data segments per request the device accepts (`seg_max`): a chain is a header, these
/// and a status.
pub(super) const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Descriptors per chain the device accepts. A longer chain (possible through an indirect
/// table) is refused, which bounds what one request costs the VMM.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Bytes of `struct virtio_blk_outhdr`.
const HEADER_LEN: u64 = 16;
/// Bytes of `struct virtio_blk_discard_write_zeroes`.
const DWZ_SEGMENT_LEN: u64 = 16;
/// Bytes of the id a GET_ID request returns.
pub(super) const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// A request's data segments: inline for the usual few, so a request costs no heap
/// allocation (it is built on the VMM thread and dropped on the I/O thread).
pub(super) type Segments = SmallVec<[Segment; 4]>;

/// A contiguous range of guest memory a request reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// What a valid request asks the disk to do. Offsets and lengths are in bytes and lie
/// within the disk.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Op {
    Read { offset: u64, data: Segments },
    Write { offset: u64, data: Segments },
    Flush,
    GetId { data: Segments },
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

impl Op {
    /// Bytes the request moves to or from the disk, for the bandwidth limit. Write-zeroes
    /// counts the range it may write out; discard and flush move no data.
    pub(super) fn data_len(&self) -> u64 {
        match self {
            Op::Read { data, .. } | Op::Write { data, .. } => {
                data.iter().map(|s| u64::from(s.len)).sum()
            }
            Op::WriteZeroes { len, .. } => *len,
            _ => 0,
        }
    }

    /// The request type's name, for logs.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Flush => "flush",
            Op::GetId { .. } => "get-id",
            Op::Discard { .. } => "discard",
            Op::WriteZeroes { .. } => "write-zeroes",
        }
    }
}

/// A validated request: what to do, and where its status byte goes.
#[derive(Debug)]
pub(super) struct Request {
    pub head: u16,
    pub op: Op,
    pub status: GuestAddress,
}

/// Why a chain is answered without I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    /// The chain is not a well-formed request.
    Malformed(&'static str),
    /// The request reaches past the end of the disk (or its sector arithmetic overflows).
    OutOfRange,
    /// A write, discard or write-zeroes on a read-only disk.
    ReadOnly,
    /// A request type, or discard/write-zeroes flags, the device does not implement.
    Unsupported(u32),
}

/// A chain answered without I/O: its status (if it has a writable status byte) and why.
#[derive(Debug)]
pub(super) struct Rejected {
    pub head: u16,
    pub status: Option<GuestAddress>,
    pub reason: Reason,
}

impl Rejected {
    /// The status the guest reads.
    pub(super) fn code(&self) -> u8 {
        match self.reason {
            Reason::Unsupported(_) => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }
}

/// What parsing needs to know about the disk.
#[derive(Clone, Copy, Debug)]
pub(super) struct DiskInfo {
    /// Size in sectors.
    pub capacity: u64,
    pub readonly: bool,
}

/// Parses and validates the chain the driver made available.
pub(super) fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    disk: DiskInfo,
) -> Result<Request, Rejected>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let reject = |status, reason| Rejected {
        head,
        status,
        reason,
    };
    let mut descs: SmallVec<[_; 8]> = SmallVec::new();
    for desc in chain {
        if descs.len() == MAX_DESCRIPTORS {
            return Err(reject(None, Reason::Malformed("too many descriptors")));
        }
        descs.push(desc);
    }
    let Some(last) = descs.last() else {
        return Err(reject(None, Reason::Malformed("no descriptors")));
    };
    if last.has_next() {
        return Err(reject(
            None,
            Reason::Malformed("the chain breaks off (invalid next, indirect table or length)"),
        ));
    }
    if !last.is_write_only() {
        return Err(reject(
            None,
            Reason::Malformed("the last descriptor is not device-writable"),
        ));
    }
    let status = last
        .len()
        .checked_sub(1)
        .and_then(|end| last.addr().checked_add(u64::from(end)))
        .filter(|&addr| GuestMemoryBackend::check_range(mem, addr, 1));
    let Some(status) = status else {
        return Err(reject(
            None,
            Reason::Malformed("no status byte in guest memory"),
        ));
    };
    let fail = |reason| Err(reject(Some(status), reason));

    let mut readable = Segments::new();
    let mut writable = Segments::new();
    for desc in &descs {
        if desc.len() == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
            return fail(Reason::Malformed("a buffer is outside guest memory"));
        }
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            writable.push(segment);
        } else if writable.is_empty() {
            readable.push(segment);
        } else {
            return fail(Reason::Malformed(
                "a device-readable buffer follows a writable one",
            ));
        }
    }
    // The status byte is the last writable byte, not data.
    let (in_data, _) = split_at(&writable, total_len(&writable) - 1);

    if total_len(&readable) < HEADER_LEN {
        return fail(Reason::Malformed("no 16-byte device-readable header"));
    }
    let (header_segs, out_data) = split_at(&readable, HEADER_LEN);
    let mut header = [0u8; HEADER_LEN as usize];
    if !read_bytes(mem, &header_segs, &mut header) {
        return fail(Reason::Malformed("the header cannot be read"));
    }
    let request_type = le_u32(&header[0..4]);
    let sector = le_u64(&header[8..16]);

    let is_write = matches!(
        request_type,
        VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
    );
    if is_write && disk.readonly {
        return fail(Reason::ReadOnly);
    }
    let op = match request_type {
        VIRTIO_BLK_T_IN => {
            if !out_data.is_empty() {
                return fail(Reason::Malformed("a read carries device-readable data"));
            }
            let offset = data_range(sector, &in_data, disk).map_err(|r| reject(Some(status), r))?;
            Op::Read {
                offset,
                data: in_data,
            }
        }
        VIRTIO_BLK_T_OUT => {
            if !in_data.is_empty() {
                return fail(Reason::Malformed("a write carries device-writable data"));
            }
            let offset =
                data_range(sector, &out_data, disk).map_err(|r| reject(Some(status), r))?;
            Op::Write {
                offset,
                data: out_data,
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if !out_data.is_empty() || !in_data.is_empty() {
                return fail(Reason::Malformed("a flush carries data"));
            }
            Op::Flush
        }
        VIRTIO_BLK_T_GET_ID => {
            if !out_data.is_empty() || in_data.is_empty() {
                return fail(Reason::Malformed("GET_ID without a writable id buffer"));
            }
            let (data, _) = split_at(&in_data, ID_BYTES as u64);
            Op::GetId { data }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if !in_data.is_empty() {
                return fail(Reason::Malformed(
                    "a discard or write-zeroes carries writable data",
                ));
            }
            if total_len(&out_data) != DWZ_SEGMENT_LEN {
                return fail(Reason::Malformed(
                    "not exactly one 16-byte discard/write-zeroes segment",
                ));
            }
            let mut seg = [0u8; DWZ_SEGMENT_LEN as usize];
            if !read_bytes(mem, &out_data, &mut seg) {
                return fail(Reason::Malformed(
                    "the discard/write-zeroes segment cannot be read",
                ));
            }
            let (sector, sectors, flags) = (
                le_u64(&seg[0..8]),
                le_u32(&seg[8..12]),
                le_u32(&seg[12..16]),
            );
            let known_flags = if request_type == VIRTIO_BLK_T_DISCARD {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !known_flags != 0 {
                return fail(Reason::Unsupported(request_type));
            }
            let len = u64::from(sectors) * SECTOR_SIZE;
            let offset = disk_range(sector, len, disk).map_err(|r| reject(Some(status), r))?;
            if request_type == VIRTIO_BLK_T_DISCARD {
                Op::Discard { offset, len }
            } else {
                Op::WriteZeroes {
                    offset,
                    len,
                    unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
                }
            }
        }
        other => return fail(Reason::Unsupported(other)),
    };
    Ok(Request { head, op, status })
}

/// Total bytes of `segs`.
pub(super) fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// The first `at` bytes of `segs` and the rest.
fn split_at(segs: &[Segment], at: u64) -> (Segments, Segments) {
    let mut head = Segments::new();
    let mut tail = Segments::new();
    let mut left = at;
    for &seg in segs {
        let len = u64::from(seg.len);
        if left >= len {
            head.push(seg);
            left -= len;
        } else if left == 0 {
            tail.push(seg);
        } else {
            // `left < seg.len`, so it fits in u32, and the address was checked in memory.
            let cut = left as u32;
            head.push(Segment {
                addr: seg.addr,
                len: cut,
            });
            tail.push(Segment {
                addr: seg.addr.unchecked_add(u64::from(cut)),
                len: seg.len - cut,
            });
            left = 0;
        }
    }
    (head, tail)
}

/// Fills `buf` from the start of `segs`; false if guest memory could not be read.
fn read_bytes(mem: &GuestMemoryMmap, segs: &[Segment], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for seg in segs {
        if done == buf.len() {
            break;
        }
        let n = (seg.len as usize).min(buf.len() - done);
        if mem.read_slice(&mut buf[done..done + n], seg.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// The byte offset of a read or write of `data` at `sector`.
fn data_range(sector: u64, data: &[Segment], disk: DiskInfo) -> Result<u64, Reason> {
    let len = total_len(data);
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Reason::Malformed("data length is not a multiple of 512"));
    }
    disk_range(sector, len, disk)
}

/// The byte offset of `len` bytes (a multiple of 512) at `sector`, if they lie on the disk.
fn disk_range(sector: u64, len: u64, disk: DiskInfo) -> Result<u64, Reason> {
    let end = sector
        .checked_add(len / SECTOR_SIZE)
        .ok_or(Reason::OutOfRange)?;
    if end > disk.capacity {
        return Err(Reason::OutOfRange);
    }
    // sector <= capacity, and capacity * 512 is the image size, which fits in a u64.
    Ok(sector * SECTOR_SIZE)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_le_bytes(b)
}
