//! FUSE requests over a virtio-fs request queue (virtio 1.2, 5.11.6): each request is one
//! descriptor chain, the device-readable `fuse_in_header` and arguments, then the
//! device-writable `fuse_out_header` and reply. One request in flight at a time, polled.
//!
//! The structures are those of the FUSE kernel interface 7.31 (`linux/fuse.h`), written and
//! read field by field in little-endian order.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::poll;
use super::raw::{RawMmio, SplitQueue};

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_INIT: u32 = 26;

pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// The root directory's node id.
pub const ROOT_ID: u64 = 1;

const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// `struct fuse_init_out` (7.23 and later).
pub const INIT_OUT_LEN: usize = 64;
/// `struct fuse_entry_out`: ids and validities (40 bytes), then `struct fuse_attr` (88).
pub const ENTRY_OUT_LEN: usize = 128;
/// `struct fuse_open_out`.
pub const OPEN_OUT_LEN: usize = 16;

/// Why a request failed.
pub enum FuseError {
    /// The reply's header carries a (negative) errno.
    Errno { op: &'static str, error: i32 },
    /// Anything else: the reply was malformed, the queue refused the chain.
    Other(String),
}

impl From<String> for FuseError {
    fn from(s: String) -> Self {
        FuseError::Other(s)
    }
}

/// A FUSE session on the request queue of a virtio-fs device.
pub struct Session<'a> {
    dev: &'a mut RawMmio,
    queue: SplitQueue,
    index: u16,
    unique: u64,
    timeout_ms: u64,
}

/// The little-endian `u32` at `at` (0 past the end).
pub fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// The little-endian `u64` at `at` (0 past the end).
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

/// Little-endian fields, in order.
pub fn fields(words: &[(u64, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(value, len) in words {
        out.extend_from_slice(&value.to_le_bytes()[..len]);
    }
    out
}

impl<'a> Session<'a> {
    /// A session on queue `index` of `dev` (which must have been negotiated, with the queue
    /// set up through `queue`, and be live).
    pub fn new(dev: &'a mut RawMmio, queue: SplitQueue, index: u16, timeout_ms: u64) -> Self {
        Session {
            dev,
            queue,
            index,
            unique: 0,
            timeout_ms,
        }
    }

    /// Sends `opcode` for `nodeid` with `args` and returns the reply's body, of at most
    /// `reply_len` bytes.
    pub fn request(
        &mut self,
        op: &'static str,
        opcode: u32,
        nodeid: u64,
        args: &[u8],
        reply_len: usize,
    ) -> Result<Vec<u8>, FuseError> {
        self.unique += 1;
        let unique = self.unique;
        let len = (IN_HEADER_LEN + args.len()) as u64;
        // len, opcode, unique, nodeid, uid, gid, pid, padding.
        let mut input = fields(&[(len, 4), (opcode.into(), 4), (unique, 8), (nodeid, 8)]);
        input.extend_from_slice(&[0; 16]);
        input.extend_from_slice(args);
        let mut reply = vec![0u8; OUT_HEADER_LEN + reply_len];
        {
            let readable: [&[u8]; 1] = [&input];
            let mut writable: [&mut [u8]; 1] = [&mut reply];
            // SAFETY: `input` and `reply` are not touched until `take_used` returns the chain;
            // if it never does, `poll::wait` ends the run without returning.
            unsafe { self.queue.submit(&readable, &mut writable)? };
        }
        self.dev.notify(self.index);
        let queue = &self.queue;
        poll::wait(self.timeout_ms, format_args!("the reply to {op}"), || {
            queue.has_used()
        });
        let used = self.queue.take_used().ok_or(format!("{op}: no reply"))?;
        if used.id != 0 {
            return Err(format!("{op}: the device returned chain {} instead of 0", used.id).into());
        }
        let got = (used.len as usize).min(reply.len());
        let (out_len, error) = (le32(&reply, 0) as usize, le32(&reply, 4) as i32);
        if got < OUT_HEADER_LEN || le64(&reply, 8) != unique {
            return Err(format!("{op}: a reply of {got} bytes without our header").into());
        }
        if error != 0 {
            return Err(FuseError::Errno { op, error });
        }
        if out_len < OUT_HEADER_LEN || out_len > got {
            return Err(
                format!("{op}: the header says {out_len} bytes, {got} were written").into(),
            );
        }
        reply.truncate(out_len);
        reply.drain(..OUT_HEADER_LEN);
        Ok(reply)
    }
}
