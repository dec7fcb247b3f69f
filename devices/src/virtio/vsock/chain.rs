//! Descriptor chains as byte buffers: every descriptor checked for direction and range
//! before a byte moves.

use memory::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use super::{HEADER_LEN, MAX_PAYLOAD};
use crate::virtio::queue::{self, ChainError};

/// Why a descriptor chain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error(transparent)]
    Chain(ChainError),
    #[error("the chain has no descriptors")]
    Empty,
    #[error("write-only descriptor on tx")]
    WriteOnly,
    #[error("read-only descriptor on rx or event queue")]
    ReadOnly,
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("the chain holds {0} bytes, less than a {HEADER_LEN} byte header")]
    Short(u64),
    #[error("packet len {len} is past the {avail} bytes after the header")]
    LenPastBuffer { len: u32, avail: u64 },
    #[error("packet len {0} is over the {MAX_PAYLOAD} byte limit")]
    TooLong(u32),
    #[error("cannot read guest memory: {0}")]
    Memory(String),
}

impl From<ChainError> for Malformed {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Empty => Malformed::Empty,
            ChainError::ReadOnly => Malformed::ReadOnly,
            ChainError::WriteOnly => Malformed::WriteOnly,
            ChainError::OutOfRange { addr, len } => Malformed::OutOfRange { addr, len },
            other => Malformed::Chain(other),
        }
    }
}

/// The buffers of `chain`, checked (see [`queue::chain_buffers`]).
pub fn buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<Vec<(GuestAddress, u32)>, Malformed> {
    Ok(queue::chain_buffers(mem, chain, writable)?)
}

/// The total length of `bufs`.
pub fn total(bufs: &[(GuestAddress, u32)]) -> u64 {
    bufs.iter().map(|&(_, len)| u64::from(len)).sum()
}

/// Reads `out.len()` bytes from `bufs` starting `skip` bytes in; `bufs` must hold them.
fn read_at(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    mut skip: u64,
    out: &mut [u8],
) -> Result<(), Malformed> {
    let mut done = 0usize;
    for &(addr, len) in bufs {
        if done == out.len() {
            break;
        }
        let len = u64::from(len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let avail = (len - skip) as usize;
        let n = avail.min(out.len() - done);
        let at = addr.0 + skip;
        mem.read_slice(&mut out[done..done + n], GuestAddress(at))
            .map_err(|e| Malformed::Memory(e.to_string()))?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Reads the header and the `len` payload bytes of the transmit packet in `bufs`.
pub fn read_packet(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
) -> Result<(super::Header, Vec<u8>), Malformed> {
    let size = total(bufs);
    if size < HEADER_LEN as u64 {
        return Err(Malformed::Short(size));
    }
    let mut raw = [0u8; HEADER_LEN];
    read_at(mem, bufs, 0, &mut raw)?;
    let header = super::Header::parse(&raw).ok_or(Malformed::Short(size))?;
    if header.len as usize > MAX_PAYLOAD {
        return Err(Malformed::TooLong(header.len));
    }
    let avail = size - HEADER_LEN as u64;
    if u64::from(header.len) > avail {
        return Err(Malformed::LenPastBuffer {
            len: header.len,
            avail,
        });
    }
    let mut body = vec![0u8; header.len as usize];
    read_at(mem, bufs, HEADER_LEN as u64, &mut body)?;
    Ok((header, body))
}

/// Writes `parts` one after the other into `bufs` (which must have room); returns the bytes
/// written.
pub fn write_parts(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    parts: &[&[u8]],
) -> Result<u32, Malformed> {
    let mut written = 0u32;
    let mut bufs = bufs.iter().map(|&(a, l)| (a.0, u64::from(l)));
    let mut cur = bufs.next();
    for part in parts {
        let mut part: &[u8] = part;
        while !part.is_empty() {
            let Some((addr, room)) = cur.as_mut() else {
                return Err(Malformed::Short(u64::from(written)));
            };
            if *room == 0 {
                cur = bufs.next();
                continue;
            }
            let n = (*room).min(part.len() as u64) as usize;
            mem.write_slice(&part[..n], GuestAddress(*addr))
                .map_err(|e| Malformed::Memory(e.to_string()))?;
            *addr += n as u64;
            *room -= n as u64;
            part = &part[n..];
            written += n as u32;
        }
    }
    Ok(written)
}
