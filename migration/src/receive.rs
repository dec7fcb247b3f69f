//! Receiving pages straight into guest RAM, without building a `Message::Pages`.

use crate::error::MigrationError;
use crate::frame::{self, Kind, PayloadReader};
use crate::message::{Message, MAX_RECORDS, PAGE_SIZE, TAG_DATA, TAG_ZERO};
use crate::pages::{is_zero, Layout};
use crate::transport::Connection;

/// What [`Connection::recv_into`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A Pages frame, already written into RAM: its round, how many pages it held, and its
    /// bytes on the wire (frame header and checksum included).
    Pages { round: u32, pages: u64, bytes: u64 },
    /// Any other message.
    Message(Message),
}

impl Connection {
    /// Like [`Connection::recv`], but a Pages frame is written straight from the socket into
    /// `ram` (the guest's RAM regions, in the source's order): one copy, no allocation.
    ///
    /// Each record is bounds-checked before it is written; the frame's checksum can only be
    /// checked after its pages are in RAM, so on any error the RAM holds an unknown mix of
    /// old and new pages and the migration must be abandoned (the destination's guest has not
    /// run yet, nothing is lost).
    pub fn recv_into(&mut self, ram: &mut [&mut [u8]]) -> Result<Incoming, MigrationError> {
        let layout = Layout::new(ram.iter().map(|r| r.len()))?;
        let (kind, len) = frame::read_header(&mut self.stream)?.ok_or(MigrationError::Closed)?;
        let mut r = PayloadReader::new(&mut self.stream, kind, len);
        if kind != Kind::Pages {
            let msg = Message::decode(&mut r)?;
            r.finish()?;
            return Ok(Incoming::Message(msg));
        }
        let round = r.u32("round")?;
        let n = r.u32("record count")?;
        if n > MAX_RECORDS {
            return Err(r.malformed(format!("{n} records, at most {MAX_RECORDS} per frame")));
        }
        let mut pages = 0u64;
        for _ in 0..n {
            let tag = r.u8("record tag")?;
            let first = r.u64("first page")?;
            let count = u64::from(r.u32("page count")?);
            if count == 0 {
                return Err(r.malformed(format!("empty run at page {first}")));
            }
            if tag != TAG_ZERO && tag != TAG_DATA {
                return Err(r.malformed(format!("unknown record tag {tag}")));
            }
            let end = first.saturating_add(count);
            if end > layout.total {
                return Err(MigrationError::PageOutOfRange {
                    index: first.max(layout.total),
                    pages: layout.total,
                });
            }
            let (mut index, mut left) = (first, count);
            while left > 0 {
                let (region, page, in_region) = layout.locate(index)?;
                let n = left.min(in_region);
                let off = page as usize * PAGE_SIZE;
                let dst = &mut ram[region][off..off + n as usize * PAGE_SIZE];
                if tag == TAG_DATA {
                    r.read_exact(dst, "page data")?;
                } else {
                    dst.chunks_exact_mut(PAGE_SIZE)
                        .filter(|p| !is_zero(p))
                        .for_each(|p| p.fill(0));
                }
                index += n;
                left -= n;
            }
            pages += count;
        }
        r.finish()?;
        let bytes = (frame::HEADER_LEN + frame::CHECKSUM_LEN) as u64 + len;
        Ok(Incoming::Pages {
            round,
            pages,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use crate::message::PageRecord;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn reading(bytes: &[u8]) -> Connection {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(bytes).unwrap();
        drop(a);
        Connection::from_unix(b)
    }

    fn pages_frame(pages: Vec<PageRecord>) -> Vec<u8> {
        let msg = Message::Pages { round: 2, pages };
        encode_frame(Kind::Pages, &msg.encode_payload().unwrap()).unwrap()
    }

    #[test]
    fn pages_land_in_ram_across_regions_and_other_messages_pass_through() {
        let mut data = vec![1u8; PAGE_SIZE];
        data.extend(vec![2u8; PAGE_SIZE]);
        let mut bytes = pages_frame(vec![
            PageRecord::Data { first: 1, data },
            PageRecord::Zero { first: 0, count: 1 },
        ]);
        let frame_len = bytes.len() as u64;
        bytes.extend(encode_frame(Kind::Running, &[]).unwrap());
        let mut c = reading(&bytes);
        let mut r0 = vec![9u8; 2 * PAGE_SIZE];
        let mut r1 = vec![9u8; 2 * PAGE_SIZE];
        let mut ram: Vec<&mut [u8]> = vec![&mut r0, &mut r1];
        assert_eq!(
            c.recv_into(&mut ram).unwrap(),
            Incoming::Pages {
                round: 2,
                pages: 3,
                bytes: frame_len
            }
        );
        assert_eq!(
            c.recv_into(&mut ram).unwrap(),
            Incoming::Message(Message::Running)
        );
        assert!(r0[..PAGE_SIZE].iter().all(|&b| b == 0));
        assert!(r0[PAGE_SIZE..].iter().all(|&b| b == 1));
        assert!(r1[..PAGE_SIZE].iter().all(|&b| b == 2));
        assert!(r1[PAGE_SIZE..].iter().all(|&b| b == 9));
    }

    #[test]
    fn a_record_past_ram_is_refused_before_it_is_written() {
        let bytes = pages_frame(vec![PageRecord::Data {
            first: 1,
            data: vec![1u8; 2 * PAGE_SIZE],
        }]);
        let mut r0 = vec![9u8; 2 * PAGE_SIZE];
        let mut ram: Vec<&mut [u8]> = vec![&mut r0];
        assert!(matches!(
            reading(&bytes).recv_into(&mut ram),
            Err(MigrationError::PageOutOfRange { index: 2, pages: 2 })
        ));
        assert!(r0.iter().all(|&b| b == 9));
    }

    #[test]
    fn a_corrupted_pages_frame_is_refused() {
        let mut bytes = pages_frame(vec![PageRecord::Data {
            first: 0,
            data: vec![1u8; PAGE_SIZE],
        }]);
        let last = bytes.len() - 20;
        bytes[last] ^= 0x80;
        let mut r0 = vec![0u8; PAGE_SIZE];
        let mut ram: Vec<&mut [u8]> = vec![&mut r0];
        assert!(matches!(
            reading(&bytes).recv_into(&mut ram),
            Err(MigrationError::BadChecksum { kind: "Pages" })
        ));
    }
}
