//! Frame layout shared by every message.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "PTMG"
//! 4       4     message type, u32 little-endian
//! 8       8     payload length, u64 little-endian (at most `max_payload(type)`)
//! 16      len   payload
//! 16+len  16    checksum: the first 16 bytes of blake3(type ‖ length ‖ payload)
//! ```
//!
//! The reader checks magic, type and length before allocating anything, and reads the payload
//! through a [`PayloadReader`] that never goes past the declared length.

use std::io::{self, Read, Write};

use crate::error::MigrationError;

pub const MAGIC: [u8; 4] = *b"PTMG";
pub const HEADER_LEN: usize = 16;
pub const CHECKSUM_LEN: usize = 16;
/// Largest payload of a Pages, Config or State frame.
pub const MAX_BULK_PAYLOAD: u64 = 64 << 20;
/// Largest payload of every other frame.
pub const MAX_SMALL_PAYLOAD: u64 = 64 << 10;

/// Message type codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Hello = 1,
    HelloAck = 2,
    Refuse = 3,
    Config = 4,
    Pages = 5,
    RoundEnd = 6,
    State = 7,
    Running = 8,
    Abort = 9,
    MemoryFd = 10,
}

impl Kind {
    pub fn from_code(code: u32) -> Result<Kind, MigrationError> {
        Ok(match code {
            1 => Kind::Hello,
            2 => Kind::HelloAck,
            3 => Kind::Refuse,
            4 => Kind::Config,
            5 => Kind::Pages,
            6 => Kind::RoundEnd,
            7 => Kind::State,
            8 => Kind::Running,
            9 => Kind::Abort,
            10 => Kind::MemoryFd,
            other => return Err(MigrationError::UnknownType(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "Hello",
            Kind::HelloAck => "HelloAck",
            Kind::Refuse => "Refuse",
            Kind::Config => "Config",
            Kind::Pages => "Pages",
            Kind::RoundEnd => "RoundEnd",
            Kind::State => "State",
            Kind::Running => "Running",
            Kind::Abort => "Abort",
            Kind::MemoryFd => "MemoryFd",
        }
    }

    pub fn max_payload(self) -> u64 {
        match self {
            Kind::Pages | Kind::Config | Kind::State => MAX_BULK_PAYLOAD,
            _ => MAX_SMALL_PAYLOAD,
        }
    }
}

fn header(kind: Kind, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h
}

fn hasher_for(header: &[u8; HEADER_LEN]) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&header[4..16]);
    hasher
}

fn checksum(hasher: &blake3::Hasher) -> [u8; CHECKSUM_LEN] {
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM_LEN]);
    out
}

/// A whole frame in one buffer, for messages whose payload is already built.
pub fn encode_frame(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, MigrationError> {
    let len = payload.len() as u64;
    if len > kind.max_payload() {
        return Err(MigrationError::MessageTooLarge {
            kind: kind.name(),
            len,
            max: kind.max_payload(),
        });
    }
    let h = header(kind, len);
    let mut hasher = hasher_for(&h);
    hasher.update(payload);
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN);
    frame.extend_from_slice(&h);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(&checksum(&hasher));
    Ok(frame)
}

/// Streams one frame of a known payload length: bytes are staged in a bounded buffer, hashed
/// from that buffer and written from it, so memory that changes meanwhile (a running guest)
/// cannot make the checksum disagree with what went out.
pub struct FrameWriter<'a, W: Write> {
    out: &'a mut W,
    /// The staging buffer, initialised to its full length once and reused: `used` bytes of
    /// it hold the frame's bytes not yet written.
    buf: &'a mut Vec<u8>,
    used: usize,
    hasher: blake3::Hasher,
    remaining: u64,
    written: u64,
}

impl<'a, W: Write> FrameWriter<'a, W> {
    /// Writes the header; `buf` is the staging buffer, grown to [`STAGING`] bytes the first
    /// time and kept between frames.
    pub fn begin(
        out: &'a mut W,
        buf: &'a mut Vec<u8>,
        kind: Kind,
        len: u64,
    ) -> Result<Self, MigrationError> {
        debug_assert!(len <= kind.max_payload());
        if buf.len() < STAGING {
            buf.resize(STAGING, 0);
        }
        let h = header(kind, len);
        buf[..HEADER_LEN].copy_from_slice(&h);
        Ok(FrameWriter {
            out,
            buf,
            used: HEADER_LEN,
            hasher: hasher_for(&h),
            remaining: len,
            written: 0,
        })
    }

    /// Hashes and writes the staged bytes.
    fn flush_buf(&mut self) -> Result<(), MigrationError> {
        // The header (first 16 bytes of the first chunk) is hashed separately.
        let from = self.header_in_buf();
        self.hasher.update(&self.buf[from..self.used]);
        self.out
            .write_all(&self.buf[..self.used])
            .map_err(MigrationError::from_io)?;
        self.written += self.used as u64;
        self.used = 0;
        Ok(())
    }

    /// Appends payload bytes.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), MigrationError> {
        self.put_with(bytes.len(), |at, dst| {
            dst.copy_from_slice(&bytes[at..at + dst.len()])
        })
    }

    /// Appends `len` payload bytes that `fill` copies into the staging buffer piece by piece:
    /// `fill(at, dst)` writes bytes `at..at + dst.len()` of the `len` into `dst`. For sources
    /// that must not be borrowed as a slice (guest RAM read with volatile reads).
    pub fn put_with(
        &mut self,
        len: usize,
        mut fill: impl FnMut(usize, &mut [u8]),
    ) -> Result<(), MigrationError> {
        assert!(
            len as u64 <= self.remaining,
            "frame payload longer than declared"
        );
        self.remaining -= len as u64;
        let mut at = 0;
        while at < len {
            let take = (self.buf.len() - self.used).min(len - at);
            fill(at, &mut self.buf[self.used..self.used + take]);
            self.used += take;
            at += take;
            if self.used == self.buf.len() {
                self.flush_buf()?;
            }
        }
        Ok(())
    }

    fn header_in_buf(&self) -> usize {
        if self.written == 0 {
            HEADER_LEN
        } else {
            0
        }
    }

    /// Writes the rest of the staged bytes and the checksum; returns the frame's size.
    pub fn finish(mut self) -> Result<u64, MigrationError> {
        assert_eq!(self.remaining, 0, "frame payload shorter than declared");
        if self.used + CHECKSUM_LEN > self.buf.len() {
            self.flush_buf()?;
        }
        let from = self.header_in_buf();
        self.hasher.update(&self.buf[from..self.used]);
        let sum = checksum(&self.hasher);
        self.buf[self.used..self.used + CHECKSUM_LEN].copy_from_slice(&sum);
        self.used += CHECKSUM_LEN;
        self.out
            .write_all(&self.buf[..self.used])
            .map_err(MigrationError::from_io)?;
        self.written += self.used as u64;
        self.used = 0;
        Ok(self.written)
    }
}

/// Size of the staging buffer used to stream frames.
pub const STAGING: usize = 1 << 20;

/// Reads exactly `buf.len()` bytes; EOF before the first byte is `None`, after it `Truncated`.
fn read_full<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    part: &'static str,
) -> Result<bool, MigrationError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(MigrationError::Truncated {
                    part,
                    missing: (buf.len() - got) as u64,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(MigrationError::from_io(e)),
        }
    }
    Ok(true)
}

/// Reads a frame header and checks magic, type and length. `Ok(None)`: the peer closed the
/// connection cleanly between frames.
pub fn read_header<R: Read>(input: &mut R) -> Result<Option<(Kind, u64)>, MigrationError> {
    let mut h = [0u8; HEADER_LEN];
    if !read_full(input, &mut h, "frame header")? {
        return Ok(None);
    }
    let magic: [u8; 4] = h[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(MigrationError::BadMagic(magic));
    }
    let kind = Kind::from_code(u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")))?;
    let len = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if len > kind.max_payload() {
        return Err(MigrationError::FrameTooLong {
            kind: kind.name(),
            len,
            max: kind.max_payload(),
        });
    }
    Ok(Some((kind, len)))
}

/// Reads one frame's payload, hashing it, never past the declared length.
pub struct PayloadReader<'a, R: Read> {
    input: &'a mut R,
    hasher: blake3::Hasher,
    kind: Kind,
    remaining: u64,
}

impl<'a, R: Read> PayloadReader<'a, R> {
    pub fn new(input: &'a mut R, kind: Kind, len: u64) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(kind as u32).to_le_bytes());
        hasher.update(&len.to_le_bytes());
        PayloadReader {
            input,
            hasher,
            kind,
            remaining: len,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// A payload that does not hold what its type needs.
    pub fn malformed(&self, reason: impl Into<String>) -> MigrationError {
        MigrationError::Malformed {
            kind: self.kind.name(),
            reason: reason.into(),
        }
    }

    /// Fills `buf` from the payload; asking for more than is left is `Malformed`.
    pub fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), MigrationError> {
        if buf.len() as u64 > self.remaining {
            return Err(self.malformed(format!(
                "{what} needs {} bytes, only {} left in the frame",
                buf.len(),
                self.remaining
            )));
        }
        if !read_full(self.input, buf, "payload")? && !buf.is_empty() {
            return Err(MigrationError::Truncated {
                part: "payload",
                missing: self.remaining,
            });
        }
        self.hasher.update(buf);
        self.remaining -= buf.len() as u64;
        Ok(())
    }

    /// Reads `len` payload bytes into a new Vec without zeroing it first.
    pub fn read_vec(&mut self, len: usize, what: &str) -> Result<Vec<u8>, MigrationError> {
        if len as u64 > self.remaining {
            return Err(self.malformed(format!(
                "{what} needs {len} bytes, only {} left in the frame",
                self.remaining
            )));
        }
        let mut v = Vec::with_capacity(len);
        let got = loop {
            match (&mut *self.input).take(len as u64).read_to_end(&mut v) {
                Ok(_) => break v.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(MigrationError::from_io(e)),
            }
        };
        if got < len {
            return Err(MigrationError::Truncated {
                part: "payload",
                missing: self.remaining - got as u64,
            });
        }
        self.hasher.update(&v);
        self.remaining -= len as u64;
        Ok(v)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, MigrationError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, what)?;
        Ok(b[0])
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, MigrationError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64, MigrationError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The rest of the payload (bounded by the frame's maximum, checked in `read_header`).
    pub fn rest(&mut self) -> Result<Vec<u8>, MigrationError> {
        self.read_vec(self.remaining as usize, "payload")
    }

    /// Checks the payload was consumed whole and the checksum matches.
    pub fn finish(self) -> Result<(), MigrationError> {
        if self.remaining != 0 {
            return Err(self.malformed(format!("{} trailing bytes", self.remaining)));
        }
        let mut sum = [0u8; CHECKSUM_LEN];
        if !read_full(self.input, &mut sum, "checksum")? {
            return Err(MigrationError::Truncated {
                part: "checksum",
                missing: CHECKSUM_LEN as u64,
            });
        }
        if sum != checksum(&self.hasher) {
            return Err(MigrationError::BadChecksum {
                kind: self.kind.name(),
            });
        }
        Ok(())
    }
}
