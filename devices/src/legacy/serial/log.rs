//! The serial log: the last [`SERIAL_LOG_SIZE`] bytes the guest wrote to COM1, kept beside the
//! serial output so the API (`GET /serial`) and the web console can show them.
//!
//! Bytes are numbered from the start of the run (absolute offsets). A reader asks for the
//! bytes from an offset on; when the ring has moved past it, the reply says where the data
//! really starts, so a reader that falls behind sees the gap instead of wrong text.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes the ring keeps.
pub const SERIAL_LOG_SIZE: usize = 64 * 1024;

/// A bounded ring of guest serial output.
#[derive(Debug, Clone)]
pub struct SerialLog {
    buf: Box<[u8]>,
    /// Bytes appended since the start (the absolute offset of the next byte).
    total: u64,
}

/// What a read returned: `data` holds the bytes from absolute offset `from` up to `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub from: u64,
    pub next: u64,
    pub data: Vec<u8>,
}

impl Default for SerialLog {
    fn default() -> Self {
        Self::new()
    }
}

impl SerialLog {
    /// An empty ring of [`SERIAL_LOG_SIZE`] bytes.
    pub fn new() -> Self {
        Self::with_capacity(SERIAL_LOG_SIZE)
    }

    /// An empty ring of `capacity` bytes (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            total: 0,
        }
    }

    /// Bytes the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The absolute offset of the next byte to be appended.
    pub fn end(&self) -> u64 {
        self.total
    }

    /// The absolute offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.total.saturating_sub(self.buf.len() as u64)
    }

    /// Appends `bytes`; the oldest bytes make room.
    pub fn append(&mut self, bytes: &[u8]) {
        let cap = self.buf.len();
        // Only the last `cap` bytes can survive.
        let skip = bytes.len().saturating_sub(cap);
        let bytes = &bytes[skip..];
        self.total += skip as u64;
        let mut pos = (self.total % cap as u64) as usize;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rest.len().min(cap - pos);
            self.buf[pos..pos + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            pos = (pos + n) % cap;
        }
        self.total += bytes.len() as u64;
    }

    /// The bytes from absolute offset `from` to the end. An offset older than the ring reads
    /// from the oldest byte kept; one past the end reads nothing from the end.
    pub fn read_from(&self, from: u64) -> LogChunk {
        let from = from.clamp(self.start(), self.total);
        let len = (self.total - from) as usize;
        let cap = self.buf.len();
        let mut data = Vec::with_capacity(len);
        let pos = (from % cap as u64) as usize;
        let first = len.min(cap - pos);
        data.extend_from_slice(&self.buf[pos..pos + first]);
        data.extend_from_slice(&self.buf[..len - first]);
        LogChunk {
            from,
            next: self.total,
            data,
        }
    }
}

impl LogChunk {
    /// Drops a UTF-8 sequence cut off at the end (its bytes come with the next read) and
    /// returns the data as text, invalid bytes replaced with U+FFFD.
    pub fn into_text(mut self) -> (u64, u64, String) {
        if let Err(e) = std::str::from_utf8(&self.data) {
            // `error_len() == None`: the data ends inside a sequence that may still complete.
            let cut = self.data.len() - e.valid_up_to();
            if e.error_len().is_none() && cut < 4 {
                self.data.truncate(e.valid_up_to());
                self.next -= cut as u64;
            }
        }
        let text = String::from_utf8_lossy(&self.data).into_owned();
        (self.from, self.next, text)
    }
}

/// The log shared between the serial port (writer) and the API (readers).
pub type SharedSerialLog = Arc<Mutex<SerialLog>>;

fn lock(log: &SharedSerialLog) -> MutexGuard<'_, SerialLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// A serial sink that copies every byte into a [`SerialLog`] before passing it on. The log
/// keeps the byte even when the sink fails.
pub struct LoggedOutput {
    inner: Box<dyn Write + Send>,
    log: SharedSerialLog,
}

impl LoggedOutput {
    /// Wraps `inner`, logging into `log`.
    pub fn new(inner: Box<dyn Write + Send>, log: SharedSerialLog) -> Self {
        Self { inner, log }
    }
}

impl Write for LoggedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.log).append(buf);
        // The log has all of `buf`; a short write to the sink must not log bytes twice.
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &LogChunk) -> &str {
        std::str::from_utf8(&c.data).unwrap()
    }

    #[test]
    fn reads_from_any_offset_and_reports_the_end() {
        let mut log = SerialLog::with_capacity(8);
        log.append(b"hello");
        let c = log.read_from(0);
        assert_eq!((c.from, c.next, text(&c)), (0, 5, "hello"));
        let c = log.read_from(3);
        assert_eq!((c.from, c.next, text(&c)), (3, 5, "lo"));
        let c = log.read_from(5);
        assert_eq!((c.from, c.next, text(&c)), (5, 5, ""));
    }

    #[test]
    fn wrapped_ring_keeps_the_newest_bytes_and_says_where_they_start() {
        let mut log = SerialLog::with_capacity(8);
        log.append(b"0123456");
        log.append(b"789ab");
        assert_eq!((log.start(), log.end()), (4, 12));
        let c = log.read_from(0);
        assert_eq!((c.from, c.next, text(&c)), (4, 12, "456789ab"));
        let c = log.read_from(10);
        assert_eq!((c.from, text(&c)), (10, "ab"));
    }

    #[test]
    fn an_append_larger_than_the_ring_keeps_its_tail() {
        let mut log = SerialLog::with_capacity(4);
        log.append(b"x");
        log.append(b"abcdefghij");
        let c = log.read_from(0);
        assert_eq!((c.from, c.next, text(&c)), (7, 11, "ghij"));
    }

    #[test]
    fn offsets_past_the_end_read_nothing() {
        let mut log = SerialLog::with_capacity(4);
        log.append(b"ab");
        let c = log.read_from(u64::MAX);
        assert_eq!((c.from, c.next, c.data.len()), (2, 2, 0));
    }

    #[test]
    fn every_split_of_a_long_stream_reads_back_byte_for_byte() {
        let stream: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in [1, 3, 7, 16, 17, 100] {
            let mut log = SerialLog::with_capacity(16);
            for part in stream.chunks(chunk) {
                log.append(part);
            }
            let c = log.read_from(0);
            assert_eq!(c.from, 1000 - 16);
            assert_eq!(c.data, &stream[1000 - 16..], "chunks of {chunk}");
        }
    }

    #[test]
    fn a_cut_utf8_sequence_waits_for_the_next_read() {
        let mut log = SerialLog::new();
        let snowman = "☃".as_bytes();
        log.append(b"a");
        log.append(&snowman[..2]);
        let (from, next, text) = log.read_from(0).into_text();
        assert_eq!((from, next, text.as_str()), (0, 1, "a"));
        log.append(&snowman[2..]);
        let (_, next, text) = log.read_from(next).into_text();
        assert_eq!((next, text.as_str()), (4, "☃"));
        // Invalid bytes in the middle are replaced, not held back.
        log.append(&[0xff, b'z']);
        let (_, next, text) = log.read_from(next).into_text();
        assert_eq!((next, text.as_str()), (6, "\u{fffd}z"));
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logged_output_keeps_bytes_even_when_the_sink_fails() {
        let log = SharedSerialLog::default();
        let mut out = LoggedOutput::new(Box::new(Broken), log.clone());
        assert!(out.write(b"hi").is_err());
        assert_eq!(lock(&log).read_from(0).data, b"hi");
    }
}
