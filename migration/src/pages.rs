//! Guest pages: streaming them from RAM onto the wire, and applying them to RAM.
//!
//! A page index counts 4 KiB pages across the guest's RAM regions laid end to end, in the
//! order the VMM passes them (the order of `Compat::memory`).

use crate::error::MigrationError;
use crate::frame::{FrameWriter, Kind, MAX_BULK_PAYLOAD};
use crate::message::{
    pages_header, record_header, PageRecord, MAX_RECORDS, PAGES_HEADER_LEN, PAGE_SIZE,
    RECORD_HEADER_LEN,
};
use crate::transport::Connection;

/// Payload size of the Pages frames `send_pages` builds: small enough that the destination
/// applies one while the next is on the wire, large enough that the per-frame cost vanishes.
pub const DEFAULT_PAGES_FRAME: usize = 4 << 20;

/// What one `send_pages` call put on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagesSent {
    /// Pages sent, zero pages included.
    pub pages: u64,
    /// Of those, pages sent as a zero flag only.
    pub zero_pages: u64,
    /// Bytes on the wire, frame headers and checksums included.
    pub bytes: u64,
    /// Pages frames sent.
    pub frames: u64,
}

/// Where each RAM region starts, in pages.
struct Layout {
    starts: Vec<u64>,
    total: u64,
}

impl Layout {
    fn new(lens: impl Iterator<Item = usize>) -> Result<Layout, MigrationError> {
        let mut starts = Vec::new();
        let mut total = 0u64;
        for (region, len) in lens.enumerate() {
            if !len.is_multiple_of(PAGE_SIZE) {
                return Err(MigrationError::UnalignedRegion { region, len });
            }
            starts.push(total);
            total += (len / PAGE_SIZE) as u64;
        }
        Ok(Layout { starts, total })
    }

    /// (region, page within the region, pages left in the region from there).
    fn locate(&self, index: u64) -> Result<(usize, u64, u64), MigrationError> {
        if index >= self.total {
            return Err(MigrationError::PageOutOfRange {
                index,
                pages: self.total,
            });
        }
        // The last region starting at or before `index`; empty regions are skipped over
        // because a later region with the same start wins.
        let region = self.starts.partition_point(|&s| s <= index) - 1;
        let end = self.starts.get(region + 1).copied().unwrap_or(self.total);
        Ok((region, index - self.starts[region], end - index))
    }
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(64).all(|c| {
        c.chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
            .fold(0, |a, b| a | b)
            == 0
    })
}

struct Run {
    zero: bool,
    region: usize,
    page: u64,
    first: u64,
    count: u32,
}

impl Connection {
    /// Sends `pages` (page indices, best ascending so that neighbours join into runs) of
    /// `ram` as Pages frames of `round`, reading each page once: an all-zero page travels as
    /// part of a zero-run record only, contiguous non-zero pages as one data record copied
    /// straight from `ram` through a 1 MiB staging buffer. Sends no RoundEnd.
    pub fn send_pages(
        &mut self,
        round: u32,
        ram: &[&[u8]],
        pages: impl IntoIterator<Item = u64>,
    ) -> Result<PagesSent, MigrationError> {
        self.send_pages_framed(round, ram, pages, DEFAULT_PAGES_FRAME)
    }

    /// `send_pages` with frames of at most `max_payload` bytes (clamped to what one page
    /// needs and to the protocol's maximum).
    pub fn send_pages_framed(
        &mut self,
        round: u32,
        ram: &[&[u8]],
        pages: impl IntoIterator<Item = u64>,
        max_payload: usize,
    ) -> Result<PagesSent, MigrationError> {
        let max = max_payload.clamp(
            PAGES_HEADER_LEN + RECORD_HEADER_LEN + PAGE_SIZE,
            MAX_BULK_PAYLOAD as usize,
        );
        let layout = Layout::new(ram.iter().map(|r| r.len()))?;
        let mut sent = PagesSent::default();
        let mut runs: Vec<Run> = Vec::new();
        let mut len = PAGES_HEADER_LEN;
        for index in pages {
            let (region, page, _) = layout.locate(index)?;
            let off = page as usize * PAGE_SIZE;
            let zero = is_zero(&ram[region][off..off + PAGE_SIZE]);
            let data = if zero { 0 } else { PAGE_SIZE };
            let extends = runs.last().is_some_and(|r| {
                r.zero == zero
                    && r.region == region
                    && r.first + u64::from(r.count) == index
                    && r.count < u32::MAX
                    && len + data <= max
            });
            if extends {
                runs.last_mut().expect("checked").count += 1;
                len += data;
            } else {
                if len + RECORD_HEADER_LEN + data > max || runs.len() == MAX_RECORDS as usize {
                    self.write_pages_frame(round, ram, &runs, len, &mut sent)?;
                    runs.clear();
                    len = PAGES_HEADER_LEN;
                }
                runs.push(Run {
                    zero,
                    region,
                    page,
                    first: index,
                    count: 1,
                });
                len += RECORD_HEADER_LEN + data;
            }
            sent.pages += 1;
            sent.zero_pages += u64::from(zero);
        }
        if !runs.is_empty() {
            self.write_pages_frame(round, ram, &runs, len, &mut sent)?;
        }
        Ok(sent)
    }

    fn write_pages_frame(
        &mut self,
        round: u32,
        ram: &[&[u8]],
        runs: &[Run],
        len: usize,
        sent: &mut PagesSent,
    ) -> Result<(), MigrationError> {
        let (stream, staging) = self.staging();
        let mut w = FrameWriter::begin(stream, staging, Kind::Pages, len as u64)?;
        w.put(&pages_header(round, runs.len() as u32))?;
        for r in runs {
            w.put(&record_header(r.zero, r.first, r.count))?;
            if !r.zero {
                let off = r.page as usize * PAGE_SIZE;
                w.put(&ram[r.region][off..off + r.count as usize * PAGE_SIZE])?;
            }
        }
        sent.bytes += w.finish()?;
        sent.frames += 1;
        Ok(())
    }
}

/// Writes received pages into `ram` (the guest's RAM regions, in the source's order).
/// Every record is checked against the RAM's size before any page is written, so a batch
/// that does not fit changes nothing. Returns the number of pages written.
pub fn apply_pages(pages: &[PageRecord], ram: &mut [&mut [u8]]) -> Result<u64, MigrationError> {
    let layout = Layout::new(ram.iter().map(|r| r.len()))?;
    for r in pages {
        if let PageRecord::Data { first, data } = r {
            if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
                return Err(MigrationError::InvalidMessage {
                    kind: "Pages",
                    reason: format!("data run at page {first} is {} bytes", data.len()),
                });
            }
        }
        let end = r.first().saturating_add(r.count());
        if r.count() > 0 && end > layout.total {
            return Err(MigrationError::PageOutOfRange {
                index: r.first().max(layout.total),
                pages: layout.total,
            });
        }
    }
    let mut applied = 0;
    for r in pages {
        let (mut index, mut left, mut done) = (r.first(), r.count(), 0usize);
        while left > 0 {
            let (region, page, in_region) = layout.locate(index)?;
            let n = left.min(in_region);
            let off = page as usize * PAGE_SIZE;
            let bytes = n as usize * PAGE_SIZE;
            let dst = &mut ram[region][off..off + bytes];
            match r {
                PageRecord::Zero { .. } => dst.fill(0),
                PageRecord::Data { data, .. } => dst.copy_from_slice(&data[done..done + bytes]),
            }
            index += n;
            left -= n;
            done += bytes;
        }
        applied += r.count();
    }
    Ok(applied)
}
