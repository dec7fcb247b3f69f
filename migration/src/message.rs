//! Messages and their payload encodings.
//!
//! Payloads (all integers little-endian):
//! - Hello: version u32 ‖ Compat as JSON. A version other than [`PROTOCOL_VERSION`] is refused
//!   before the JSON is read, since a later version may encode Compat differently.
//! - HelloAck, Running: empty.
//! - Refuse, Abort: the reason, UTF-8.
//! - Config, State: the opaque JSON bytes.
//! - RoundEnd: round u32 ‖ pages u64.
//! - MemoryFd: size u64; one more byte follows the frame, carrying the descriptor.
//! - Pages: round u32 ‖ record count u32 ‖ records; a record is
//!   tag u8 (0 zero run, 1 data run) ‖ first page u64 ‖ page count u32 ‖ (data run only)
//!   count × 4096 bytes.

use std::io::Read;

use crate::compat::Compat;
use crate::error::MigrationError;
use crate::frame::{Kind, PayloadReader};
use crate::PROTOCOL_VERSION;

pub const PAGE_SIZE: usize = 4096;
/// Most records one Pages frame may hold (bounds what a frame of zero runs can make us
/// allocate: about 32 MiB of records).
pub const MAX_RECORDS: u32 = 1 << 20;
/// Bytes of a record before its data.
pub const RECORD_HEADER_LEN: usize = 13;
/// Bytes of a Pages payload before its records.
pub const PAGES_HEADER_LEN: usize = 8;

pub(crate) const TAG_ZERO: u8 = 0;
pub(crate) const TAG_DATA: u8 = 1;

/// One message of the protocol. See the crate documentation for the order they come in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message from the source: the destination checks it before any memory moves.
    Hello { version: u32, compat: Compat },
    /// The destination accepts the source's Hello.
    HelloAck,
    /// The destination refuses the source's Hello, with the reason (the source reports it).
    Refuse { reason: String },
    /// Opaque configuration (the VMM's VmConfig as JSON bytes).
    Config { json: Vec<u8> },
    /// A batch of guest pages of one round.
    Pages { round: u32, pages: Vec<PageRecord> },
    /// End of a round, with the count of pages sent in it.
    RoundEnd { round: u32, pages: u64 },
    /// The final machine state (the VMM's MachineState as JSON bytes), vCPUs paused.
    State { json: Vec<u8> },
    /// Destination: the VM runs. Source: may now exit.
    Running,
    /// Either side gives up, with the reason.
    Abort { reason: String },
    /// Same host only: the guest's memory, `size` bytes, is handed over as a file descriptor
    /// sent with the frame's last byte (`SCM_RIGHTS`); see [`crate::Connection::send_memory_fd`].
    MemoryFd { size: u64 },
}

/// A run of contiguous guest pages; page indices count 4 KiB pages across the RAM regions
/// laid end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageRecord {
    /// `count` all-zero pages from `first`: only this record travels.
    Zero { first: u64, count: u32 },
    /// Pages from `first` with their contents; `data.len()` is a non-zero multiple of 4096.
    Data { first: u64, data: Vec<u8> },
}

impl PageRecord {
    pub fn first(&self) -> u64 {
        match self {
            PageRecord::Zero { first, .. } | PageRecord::Data { first, .. } => *first,
        }
    }

    pub fn count(&self) -> u64 {
        match self {
            PageRecord::Zero { count, .. } => u64::from(*count),
            PageRecord::Data { data, .. } => (data.len() / PAGE_SIZE) as u64,
        }
    }

    fn wire_len(&self) -> usize {
        RECORD_HEADER_LEN
            + match self {
                PageRecord::Zero { .. } => 0,
                PageRecord::Data { data, .. } => data.len(),
            }
    }
}

pub(crate) fn record_header(zero: bool, first: u64, count: u32) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0] = if zero { TAG_ZERO } else { TAG_DATA };
    h[1..9].copy_from_slice(&first.to_le_bytes());
    h[9..13].copy_from_slice(&count.to_le_bytes());
    h
}

pub(crate) fn pages_header(round: u32, records: u32) -> [u8; PAGES_HEADER_LEN] {
    let mut h = [0u8; PAGES_HEADER_LEN];
    h[0..4].copy_from_slice(&round.to_le_bytes());
    h[4..8].copy_from_slice(&records.to_le_bytes());
    h
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello { .. } => Kind::Hello,
            Message::HelloAck => Kind::HelloAck,
            Message::Refuse { .. } => Kind::Refuse,
            Message::Config { .. } => Kind::Config,
            Message::Pages { .. } => Kind::Pages,
            Message::RoundEnd { .. } => Kind::RoundEnd,
            Message::State { .. } => Kind::State,
            Message::Running => Kind::Running,
            Message::Abort { .. } => Kind::Abort,
            Message::MemoryFd { .. } => Kind::MemoryFd,
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> MigrationError {
        MigrationError::InvalidMessage {
            kind: self.kind().name(),
            reason: reason.into(),
        }
    }

    /// The payload of this message's frame.
    pub(crate) fn encode_payload(&self) -> Result<Vec<u8>, MigrationError> {
        Ok(match self {
            Message::Hello { version, compat } => {
                let mut p = version.to_le_bytes().to_vec();
                serde_json::to_writer(&mut p, compat)
                    .map_err(|e| self.invalid(format!("Compat as JSON: {e}")))?;
                p
            }
            Message::HelloAck | Message::Running => Vec::new(),
            Message::Refuse { reason } | Message::Abort { reason } => reason.as_bytes().to_vec(),
            Message::Config { json } | Message::State { json } => json.clone(),
            Message::MemoryFd { size } => size.to_le_bytes().to_vec(),
            Message::RoundEnd { round, pages } => {
                let mut p = round.to_le_bytes().to_vec();
                p.extend_from_slice(&pages.to_le_bytes());
                p
            }
            Message::Pages { round, pages } => {
                if pages.len() > MAX_RECORDS as usize {
                    return Err(self.invalid(format!(
                        "{} records, at most {MAX_RECORDS} per frame",
                        pages.len()
                    )));
                }
                let len = PAGES_HEADER_LEN + pages.iter().map(PageRecord::wire_len).sum::<usize>();
                if len as u64 > Kind::Pages.max_payload() {
                    return Err(MigrationError::MessageTooLarge {
                        kind: "Pages",
                        len: len as u64,
                        max: Kind::Pages.max_payload(),
                    });
                }
                let mut p = Vec::with_capacity(len);
                p.extend_from_slice(&pages_header(*round, pages.len() as u32));
                for r in pages {
                    match r {
                        PageRecord::Zero { first, count } => {
                            if *count == 0 {
                                return Err(self.invalid(format!("empty zero run at page {first}")));
                            }
                            p.extend_from_slice(&record_header(true, *first, *count));
                        }
                        PageRecord::Data { first, data } => {
                            if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
                                return Err(self.invalid(format!(
                                    "data run at page {first} is {} bytes, not whole pages",
                                    data.len()
                                )));
                            }
                            let count = (data.len() / PAGE_SIZE) as u32;
                            p.extend_from_slice(&record_header(false, *first, count));
                            p.extend_from_slice(data);
                        }
                    }
                }
                p
            }
        })
    }

    /// Decodes a payload whose header was checked; the caller verifies the checksum after.
    pub(crate) fn decode<R: Read>(r: &mut PayloadReader<'_, R>) -> Result<Message, MigrationError> {
        Ok(match r.kind() {
            Kind::Hello => {
                let version = r.u32("version")?;
                if version != PROTOCOL_VERSION {
                    return Err(MigrationError::UnsupportedVersion {
                        theirs: version,
                        ours: PROTOCOL_VERSION,
                    });
                }
                let json = r.rest()?;
                let compat = serde_json::from_slice(&json)
                    .map_err(|e| r.malformed(format!("Compat: {e}")))?;
                Message::Hello { version, compat }
            }
            Kind::HelloAck => Message::HelloAck,
            Kind::Running => Message::Running,
            Kind::Refuse | Kind::Abort => {
                let bytes = r.rest()?;
                let reason =
                    String::from_utf8(bytes).map_err(|_| r.malformed("reason is not UTF-8"))?;
                if r.kind() == Kind::Refuse {
                    Message::Refuse { reason }
                } else {
                    Message::Abort { reason }
                }
            }
            Kind::Config => Message::Config { json: r.rest()? },
            Kind::State => Message::State { json: r.rest()? },
            Kind::MemoryFd => Message::MemoryFd {
                size: r.u64("memory size")?,
            },
            Kind::RoundEnd => Message::RoundEnd {
                round: r.u32("round")?,
                pages: r.u64("page count")?,
            },
            Kind::Pages => decode_pages(r)?,
        })
    }
}

fn decode_pages<R: Read>(r: &mut PayloadReader<'_, R>) -> Result<Message, MigrationError> {
    let round = r.u32("round")?;
    let n = r.u32("record count")?;
    if n > MAX_RECORDS {
        return Err(r.malformed(format!("{n} records, at most {MAX_RECORDS} per frame")));
    }
    // Each record takes at least RECORD_HEADER_LEN bytes of the (bounded) payload.
    if u64::from(n) * RECORD_HEADER_LEN as u64 > r.remaining() {
        return Err(r.malformed(format!("{n} records cannot fit in {} bytes", r.remaining())));
    }
    let mut pages = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let tag = r.u8("record tag")?;
        let first = r.u64("first page")?;
        let count = r.u32("page count")?;
        if count == 0 {
            return Err(r.malformed(format!("empty run at page {first}")));
        }
        if first.checked_add(u64::from(count)).is_none() {
            return Err(r.malformed(format!("run of {count} pages at {first} overflows")));
        }
        match tag {
            TAG_ZERO => pages.push(PageRecord::Zero { first, count }),
            TAG_DATA => {
                let len = u64::from(count) * PAGE_SIZE as u64;
                if len > r.remaining() {
                    return Err(r.malformed(format!(
                        "data run of {count} pages at {first} needs {len} bytes, {} left",
                        r.remaining()
                    )));
                }
                let data = r.read_vec(len as usize, "page data")?;
                pages.push(PageRecord::Data { first, data });
            }
            other => return Err(r.malformed(format!("unknown record tag {other}"))),
        }
    }
    Ok(Message::Pages { round, pages })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One of every message, pages of both kinds included.
    pub(crate) fn every_message() -> Vec<Message> {
        let mut data = vec![0u8; 2 * PAGE_SIZE];
        data.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                compat: crate::compat::tests::sample(),
            },
            Message::HelloAck,
            Message::Refuse {
                reason: "memory size 256 MiB here, 512 MiB from the source".into(),
            },
            Message::Config {
                json: br#"{"vcpus":2}"#.to_vec(),
            },
            Message::Pages {
                round: 3,
                pages: vec![
                    PageRecord::Zero { first: 0, count: 5 },
                    PageRecord::Data { first: 9, data },
                ],
            },
            Message::Pages {
                round: 4,
                pages: vec![],
            },
            Message::RoundEnd { round: 3, pages: 7 },
            Message::State {
                json: br#"{"vcpus":[]}"#.to_vec(),
            },
            Message::Running,
            Message::Abort {
                reason: "downtime cannot be met".into(),
            },
            Message::MemoryFd { size: 256 << 20 },
        ]
    }

    #[test]
    fn pages_that_are_not_whole_pages_are_not_sent() {
        let msg = Message::Pages {
            round: 0,
            pages: vec![PageRecord::Data {
                first: 0,
                data: vec![1; 100],
            }],
        };
        assert!(matches!(
            msg.encode_payload(),
            Err(MigrationError::InvalidMessage { kind: "Pages", .. })
        ));
        let empty = Message::Pages {
            round: 0,
            pages: vec![PageRecord::Zero { first: 0, count: 0 }],
        };
        assert!(matches!(
            empty.encode_payload(),
            Err(MigrationError::InvalidMessage { kind: "Pages", .. })
        ));
    }

    #[test]
    fn oversized_config_is_refused_before_sending() {
        let msg = Message::Config {
            json: vec![b' '; (64 << 20) + 1],
        };
        let payload = msg.encode_payload().unwrap();
        assert!(matches!(
            crate::frame::encode_frame(msg.kind(), &payload),
            Err(MigrationError::MessageTooLarge { kind: "Config", .. })
        ));
    }
}
