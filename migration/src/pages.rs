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
use crate::ram::RamView;
use crate::transport::Connection;

/// Payload size of the Pages frames `send_pages` builds: small enough that the destination
/// applies one while the next is on the wire, large enough that the per-frame cost vanishes.
pub const DEFAULT_PAGES_FRAME: usize = 1 << 20;

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
pub(crate) struct Layout {
    pub(crate) starts: Vec<u64>,
    pub(crate) total: u64,
}

impl Layout {
    pub(crate) fn new(lens: impl Iterator<Item = usize>) -> Result<Layout, MigrationError> {
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
    pub(crate) fn locate(&self, index: u64) -> Result<(usize, u64, u64), MigrationError> {
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

/// Whether a page is all zeros: a whole 512-byte block is OR-ed at a time (the compiler
/// vectorises it), leaving early at the first block with a set bit. For memory this thread
/// owns (the receiving side); guest RAM being sent is tested with `RamView::is_zero_page`.
pub(crate) fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(512).all(|block| {
        block
            .chunks_exact(8)
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
    /// `ram` as Pages frames of `round`: an all-zero page travels as part of a zero-run
    /// record only, contiguous non-zero pages as one data record copied from `ram` into a
    /// 1 MiB staging buffer. Guest bytes are read only with volatile reads (see [`RamView`]),
    /// so the guest may keep running. Sends no RoundEnd.
    pub fn send_pages(
        &mut self,
        round: u32,
        ram: &RamView<'_>,
        pages: impl IntoIterator<Item = u64>,
    ) -> Result<PagesSent, MigrationError> {
        self.send_pages_framed(round, ram, pages, DEFAULT_PAGES_FRAME)
    }

    /// `send_pages` with frames of at most `max_payload` bytes (clamped to what one page
    /// needs and to the protocol's maximum).
    pub fn send_pages_framed(
        &mut self,
        round: u32,
        ram: &RamView<'_>,
        pages: impl IntoIterator<Item = u64>,
        max_payload: usize,
    ) -> Result<PagesSent, MigrationError> {
        let max = max_payload.clamp(
            PAGES_HEADER_LEN + RECORD_HEADER_LEN + PAGE_SIZE,
            MAX_BULK_PAYLOAD as usize,
        );
        let layout = Layout::new(ram.region_lens())?;
        let mut sent = PagesSent::default();
        let mut runs: Vec<Run> = Vec::new();
        let mut len = PAGES_HEADER_LEN;
        for index in pages {
            let (region, page, _) = layout.locate(index)?;
            let off = page as usize * PAGE_SIZE;
            // A running guest may write the page after this test: if it was zero here it is
            // sent as zero now and, being dirty, whole in a later round.
            let zero = ram.is_zero_page(region, off);
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
        ram: &RamView<'_>,
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
                // Volatile copies into the staging buffer; the checksum is computed over
                // the staged bytes, which are also the bytes written, so a page the guest
                // changes during the send cannot make the frame's checksum wrong.
                let off = r.page as usize * PAGE_SIZE;
                w.put_with(r.count as usize * PAGE_SIZE, |at, dst| {
                    ram.read_into(r.region, off + at, dst)
                })?;
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
                // Reading first leaves pages that are already zero untouched: on a fresh
                // destination they stay unallocated.
                PageRecord::Zero { .. } => dst
                    .chunks_exact_mut(PAGE_SIZE)
                    .filter(|p| !is_zero(p))
                    .for_each(|p| p.fill(0)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{CHECKSUM_LEN, HEADER_LEN};
    use crate::message::Message;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    fn pair() -> (Connection, Connection) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::from_unix(a), Connection::from_unix(b))
    }

    fn page_filled(byte: u8) -> Vec<u8> {
        vec![byte; PAGE_SIZE]
    }

    /// Sends `pages` of `ram` in a thread, receives frames until RoundEnd and applies them
    /// to `dest`. Returns what the sender reported.
    fn transfer(
        ram: Vec<Vec<u8>>,
        pages: Vec<u64>,
        max_payload: usize,
        dest: &mut [Vec<u8>],
    ) -> PagesSent {
        let (mut tx, mut rx) = pair();
        let sender = std::thread::spawn(move || {
            let regions: Vec<&[u8]> = ram.iter().map(|r| r.as_slice()).collect();
            let sent = tx
                .send_pages_framed(7, &RamView::from_slices(&regions), pages, max_payload)
                .unwrap();
            tx.send(&Message::RoundEnd {
                round: 7,
                pages: sent.pages,
            })
            .unwrap();
            sent
        });
        let mut dst: Vec<&mut [u8]> = dest.iter_mut().map(|r| r.as_mut_slice()).collect();
        let mut applied = 0;
        loop {
            match rx.recv().unwrap() {
                Message::Pages { round, pages } => {
                    assert_eq!(round, 7);
                    applied += apply_pages(&pages, &mut dst).unwrap();
                }
                Message::RoundEnd { round: 7, pages } => {
                    assert_eq!(pages, applied);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        sender.join().unwrap()
    }

    #[test]
    fn zero_and_data_pages_arrive_exactly_across_regions() {
        // Region 0: 3 pages, region 1: 4 pages. Page 2 and page 3 are contiguous indices in
        // different regions.
        let mut r0 = Vec::new();
        r0.extend(page_filled(1));
        r0.extend(page_filled(0));
        r0.extend(page_filled(3));
        let mut r1 = Vec::new();
        r1.extend(page_filled(4));
        r1.extend(page_filled(0));
        r1.extend(page_filled(0));
        let mut last = page_filled(0);
        last[4095] = 9; // non-zero only in its last byte
        r1.extend(last);
        let ram = vec![r0, r1];
        let mut dest = vec![vec![0xAAu8; 3 * PAGE_SIZE], vec![0xAAu8; 4 * PAGE_SIZE]];
        let sent = transfer(
            ram.clone(),
            (0..7).collect(),
            DEFAULT_PAGES_FRAME,
            &mut dest,
        );
        assert_eq!(
            dest, ram,
            "zero pages overwrite stale bytes, data pages arrive"
        );
        assert_eq!((sent.pages, sent.zero_pages, sent.frames), (7, 3, 1));
        // Records: [1] [0] [3] | [4] [0 0] [9]: 6 runs, 4 data pages.
        let frame = HEADER_LEN + PAGES_HEADER_LEN + 6 * RECORD_HEADER_LEN + 4 * PAGE_SIZE;
        assert_eq!(sent.bytes, (frame + CHECKSUM_LEN) as u64);
    }

    #[test]
    fn zero_pages_cost_only_the_flag() {
        let ram = vec![vec![0u8; 1024 * PAGE_SIZE]];
        let mut dest = vec![vec![0x55u8; 1024 * PAGE_SIZE]];
        let sent = transfer(
            ram.clone(),
            (0..1024).collect(),
            DEFAULT_PAGES_FRAME,
            &mut dest,
        );
        assert_eq!(dest, ram);
        assert_eq!((sent.pages, sent.zero_pages), (1024, 1024));
        // 4 MiB of zeros: one frame holding one zero-run record.
        let one_run = HEADER_LEN + PAGES_HEADER_LEN + RECORD_HEADER_LEN + CHECKSUM_LEN;
        assert_eq!(sent.bytes, one_run as u64);
    }

    #[test]
    fn sparse_and_unordered_indices_each_arrive() {
        let mut ram = vec![0u8; 64 * PAGE_SIZE];
        for (i, b) in ram.iter_mut().enumerate() {
            *b = (i / PAGE_SIZE) as u8 + 1;
        }
        let pages = vec![40, 3, 4, 5, 63, 0];
        let mut dest = vec![vec![0u8; 64 * PAGE_SIZE]];
        let sent = transfer(
            vec![ram.clone()],
            pages.clone(),
            DEFAULT_PAGES_FRAME,
            &mut dest,
        );
        assert_eq!(sent.pages, 6);
        for p in 0..64 {
            let got = &dest[0][p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
            let want = if pages.contains(&(p as u64)) {
                p as u8 + 1
            } else {
                0
            };
            assert!(got.iter().all(|&b| b == want), "page {p}");
        }
    }

    #[test]
    fn a_long_run_is_split_into_frames_of_the_requested_size() {
        let ram = vec![vec![0x11u8; 100 * PAGE_SIZE]];
        let mut dest = vec![vec![0u8; 100 * PAGE_SIZE]];
        let max = PAGES_HEADER_LEN + RECORD_HEADER_LEN + 10 * PAGE_SIZE;
        let sent = transfer(ram.clone(), (0..100).collect(), max, &mut dest);
        assert_eq!(dest, ram);
        assert_eq!(sent.frames, 10);
    }

    #[test]
    fn pages_written_while_they_are_sent_still_arrive_in_frames_that_check() {
        const PAGES: usize = 256;
        // u64 words: the region is 8-byte aligned, as guest RAM is.
        let mut ram = vec![1u64; PAGES * PAGE_SIZE / 8];
        let (base, words) = (ram.as_mut_ptr() as usize, ram.len());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = (n as usize * 509) % words;
                    // SAFETY: `at < words`: inside `ram`, which outlives this thread (joined
                    // below); the sender only reads it, with volatile reads.
                    unsafe { (base as *mut u64).add(at).write_volatile(n) };
                    n += 1;
                }
            })
        };
        let (mut tx, mut rx) = pair();
        // SAFETY: `ram` stays allocated until after the writer and this scope end; it is
        // written concurrently only by the writer thread, read only through the view.
        let view = unsafe { RamView::from_raw(&[(base as *const u8, words * 8)]) };
        let sender = std::thread::scope(|scope| {
            let sender = scope.spawn(|| {
                for round in 0..8 {
                    tx.send_pages_framed(round, &view, 0..PAGES as u64, 64 << 10)
                        .unwrap();
                }
                tx.send(&Message::Running).unwrap();
            });
            let mut frames = 0;
            loop {
                match rx.recv().unwrap() {
                    Message::Pages { .. } => frames += 1,
                    Message::Running => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(frames >= 8 * 16, "every frame's checksum matched: {frames}");
            sender.join()
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        sender.unwrap();
        drop(ram);
    }

    #[test]
    fn send_pages_refuses_an_index_past_ram() {
        let (mut tx, _rx) = pair();
        let ram = [0u8; 2 * PAGE_SIZE];
        assert!(matches!(
            tx.send_pages(0, &RamView::from_slices(&[&ram[..]]), [0, 2]),
            Err(MigrationError::PageOutOfRange { index: 2, pages: 2 })
        ));
    }

    #[test]
    fn apply_pages_refuses_out_of_range_and_writes_nothing() {
        let mut r0 = vec![0x77u8; 2 * PAGE_SIZE];
        let mut r1 = vec![0x77u8; PAGE_SIZE];
        let mut ram: Vec<&mut [u8]> = vec![&mut r0, &mut r1];
        let batch = [
            PageRecord::Zero { first: 0, count: 1 },
            PageRecord::Data {
                first: 2,
                data: vec![1; 2 * PAGE_SIZE], // pages 2 and 3 of 3
            },
        ];
        assert!(matches!(
            apply_pages(&batch, &mut ram),
            Err(MigrationError::PageOutOfRange { index: 3, pages: 3 })
        ));
        let past = [PageRecord::Zero {
            first: u64::MAX,
            count: 1,
        }];
        assert!(matches!(
            apply_pages(&past, &mut ram),
            Err(MigrationError::PageOutOfRange { pages: 3, .. })
        ));
        assert!(r0.iter().chain(&r1).all(|&b| b == 0x77), "nothing written");
    }

    #[test]
    fn apply_pages_writes_a_run_across_regions() {
        let mut r0 = vec![0u8; PAGE_SIZE];
        let mut r1 = vec![0u8; 2 * PAGE_SIZE];
        let mut ram: Vec<&mut [u8]> = vec![&mut r0, &mut r1];
        let mut data = vec![1u8; PAGE_SIZE];
        data.extend(vec![2u8; PAGE_SIZE]);
        let n = apply_pages(&[PageRecord::Data { first: 0, data }], &mut ram).unwrap();
        assert_eq!(n, 2);
        assert!(r0.iter().all(|&b| b == 1));
        assert!(r1[..PAGE_SIZE].iter().all(|&b| b == 2));
        assert!(r1[PAGE_SIZE..].iter().all(|&b| b == 0));
    }

    #[test]
    fn regions_that_are_not_whole_pages_are_refused() {
        let mut r = vec![0u8; PAGE_SIZE + 1];
        let mut ram: Vec<&mut [u8]> = vec![&mut r];
        assert!(matches!(
            apply_pages(&[], &mut ram),
            Err(MigrationError::UnalignedRegion {
                region: 0,
                len: 4097
            })
        ));
    }

    /// Throughput figure, not an assertion: `cargo test -p migration --release -- --ignored
    /// --nocapture throughput`.
    #[test]
    #[ignore]
    fn throughput_256_mib_of_data_pages_over_a_unix_socket() {
        const SIZE: usize = 256 << 20;
        let mut ram = vec![0u8; SIZE];
        for (i, b) in ram.iter_mut().enumerate() {
            *b = (i % 251) as u8 | 1;
        }
        let mut dest = vec![vec![0u8; SIZE]];
        dest[0].fill(0); // fault the destination in before timing
        let pages = (SIZE / PAGE_SIZE) as u64;
        let start = Instant::now();
        let sent = transfer(
            vec![ram],
            (0..pages).collect(),
            DEFAULT_PAGES_FRAME,
            &mut dest,
        );
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(sent.zero_pages, 0);
        println!(
            "256 MiB of non-zero pages over a Unix socket: {:.1} ms, {:.0} MB/s ({} bytes, {} frames)",
            secs * 1e3,
            sent.bytes as f64 / secs / 1e6,
            sent.bytes,
            sent.frames
        );
    }

    /// Same, for 256 MiB of touched but all-zero pages (the scan for zeros dominates).
    #[test]
    #[ignore]
    fn throughput_256_mib_of_zero_pages_over_a_unix_socket() {
        const SIZE: usize = 256 << 20;
        let mut ram = vec![1u8; SIZE];
        ram.fill(0);
        let scan = Instant::now();
        let view = RamView::from_slices(&[&ram[..]]);
        assert!((0..SIZE)
            .step_by(PAGE_SIZE)
            .all(|off| view.is_zero_page(0, off)));
        let scan = scan.elapsed();
        // A fresh destination, as in round 0: untouched (calloc'd) memory.
        let mut dest = vec![vec![0u8; SIZE]];
        let pages = (SIZE / PAGE_SIZE) as u64;
        let start = Instant::now();
        let sent = transfer(
            vec![ram],
            (0..pages).collect(),
            DEFAULT_PAGES_FRAME,
            &mut dest,
        );
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(sent.zero_pages, pages);
        println!(
            "256 MiB of zero pages over a Unix socket: {:.1} ms (scanning the source alone: {:.1} ms), \
             {} bytes on the wire, {} frames",
            secs * 1e3,
            scan.as_secs_f64() * 1e3,
            sent.bytes,
            sent.frames
        );
    }

    /// Same as the data figure, received with `recv_into` (straight into RAM).
    #[test]
    #[ignore]
    fn throughput_256_mib_of_data_pages_received_into_ram() {
        const SIZE: usize = 256 << 20;
        let mut pattern = vec![0u8; PAGE_SIZE];
        pattern
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 | 1);
        let ram: Vec<u8> = pattern.iter().copied().cycle().take(SIZE).collect();
        let mut dest = vec![0u8; SIZE];
        dest.fill(1);
        let (mut tx, mut rx) = pair();
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            let pages = (SIZE / PAGE_SIZE) as u64;
            let sent = tx
                .send_pages(0, &RamView::from_slices(&[&ram[..]]), 0..pages)
                .unwrap();
            tx.send(&Message::RoundEnd { round: 0, pages }).unwrap();
            sent
        });
        let mut dst: Vec<&mut [u8]> = vec![&mut dest];
        loop {
            match rx.recv_into(&mut dst).unwrap() {
                crate::Incoming::Pages { .. } => {}
                crate::Incoming::Message(Message::RoundEnd { .. }) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let sent = sender.join().unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(dest.chunks_exact(PAGE_SIZE).all(|p| p == &pattern[..]));
        println!(
            "256 MiB of non-zero pages received into RAM: {:.1} ms, {:.0} MB/s",
            secs * 1e3,
            sent.bytes as f64 / secs / 1e6
        );
    }
}
