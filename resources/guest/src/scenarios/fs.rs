//! `fs`: reads a file through the first virtio-fs device (device id 26) with FUSE requests on
//! its request queue (queue 1). The high-priority queue 0 is set up too, as Linux does, but
//! unused; with `petrel.fs.hiprio=off` it is left not ready, which a driver may do.
//!
//! ```text
//! FS tag=<tag> request_queues=<n> hiprio=<on|off>   (the config space; queue 0 set up?)
//! FS init major=<7> minor=<n>               (FUSE_INIT's reply)
//! FS lookup nodeid=<n> size=<bytes>         (FUSE_LOOKUP of petrel.fs.file under the root)
//! FS read size=<bytes> fnv=<16 hex digits> head=<up to 16 bytes, printable ASCII else '.'>
//! FS release=ok
//! FS ERROR op=<LOOKUP|...> error=<negative errno>   (then FAIL)
//! ```
//!
//! The file name comes from `petrel.fs.file=NAME` on the command line (default `hello.txt`);
//! files of more than `MAX_FILE` bytes are refused.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::rt::bootparams::BootParams;
use crate::rt::fnv::fnv1a64;
use crate::virtio;
use crate::virtio::fuse::{self, fields, le32, le64, FuseError, Session};
use crate::virtio::raw::{RawMmio, SplitQueue, VERSION_1};

const FS_DEVICE_ID: u32 = 26;
const TAG_LEN: u64 = 36;
const HIPRIO_QUEUE: u16 = 0;
const REQUEST_QUEUE: u16 = 1;
/// Generous: a request takes well under a second even on this project's slowest KVM.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
const MAX_FILE: u64 = 256 << 10;
/// The most one FUSE_READ asks for.
const READ_CHUNK: u64 = 16 << 10;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let name = boot.cmdline().get("petrel.fs.file").unwrap_or("hello.txt");
    let hiprio = boot.cmdline().get("petrel.fs.hiprio") != Some("off");
    let mut devices = virtio::take_raw(boot, FS_DEVICE_ID)?;
    if devices.is_empty() {
        return Err("no virtio-fs device".into());
    }
    let dev = &mut devices[0];
    dev.negotiate(VERSION_1)?;
    let (tag, queues) = read_config(dev)?;
    let on_off = if hiprio { "on" } else { "off" };
    println!("FS tag={tag} request_queues={queues} hiprio={on_off}");
    if hiprio {
        // Never used: the device just gets a ready, empty queue.
        dev.set_queue(HIPRIO_QUEUE, &SplitQueue::new()?)?;
    }
    let queue = SplitQueue::new()?;
    dev.set_queue(REQUEST_QUEUE, &queue)?;
    dev.driver_ok();
    let mut session = Session::new(dev, queue, REQUEST_QUEUE, REQUEST_TIMEOUT_MS);
    read_file(&mut session, name).map_err(|e| match e {
        FuseError::Errno { op, error } => {
            println!("FS ERROR op={op} error={error}");
            format!("{op} failed with error {error}")
        }
        FuseError::Other(why) => why,
    })
}

/// The tag (up to its first NUL) and `num_request_queues`.
fn read_config(dev: &RawMmio) -> Result<(String, u32), String> {
    let byte = |at: u64| dev.config_byte(at).ok_or("the config space is too small");
    let mut tag = Vec::new();
    for at in 0..TAG_LEN {
        tag.push(byte(at)?);
    }
    let end = tag.iter().position(|&b| b == 0).unwrap_or(tag.len());
    let tag = String::from_utf8_lossy(&tag[..end]).into_owned();
    let mut queues = [0u8; 4];
    for (i, b) in queues.iter_mut().enumerate() {
        *b = byte(TAG_LEN + i as u64)?;
    }
    Ok((tag, u32::from_le_bytes(queues)))
}

fn read_file(s: &mut Session, name: &str) -> Result<(), FuseError> {
    // major, minor, max_readahead, flags.
    let args = fields(&[
        (fuse::KERNEL_VERSION.into(), 4),
        (fuse::KERNEL_MINOR_VERSION.into(), 4),
        (0, 4),
        (0, 4),
    ]);
    let init = s.request("INIT", fuse::FUSE_INIT, 0, &args, fuse::INIT_OUT_LEN)?;
    println!("FS init major={} minor={}", le32(&init, 0), le32(&init, 4));

    let mut args = Vec::from(name.as_bytes());
    args.push(0);
    let entry = s.request(
        "LOOKUP",
        fuse::FUSE_LOOKUP,
        fuse::ROOT_ID,
        &args,
        fuse::ENTRY_OUT_LEN,
    )?;
    // nodeid at 0; the attributes from 40, their size at 8.
    let (nodeid, size) = (le64(&entry, 0), le64(&entry, 48));
    println!("FS lookup nodeid={nodeid} size={size}");
    if size > MAX_FILE {
        return Err(
            format!("{name} has {size} bytes, the scenario reads at most {MAX_FILE}").into(),
        );
    }

    // flags (O_RDONLY), open_flags.
    let open = s.request("OPEN", fuse::FUSE_OPEN, nodeid, &[0; 8], fuse::OPEN_OUT_LEN)?;
    let fh = le64(&open, 0);
    let data = read_all(s, nodeid, fh, size)?;
    let head: String = data
        .iter()
        .take(16)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    println!(
        "FS read size={} fnv={:016x} head={head}",
        data.len(),
        fnv1a64(&data)
    );

    // fh, flags, release_flags, lock_owner.
    let args = fields(&[(fh, 8), (0, 4), (0, 4), (0, 8)]);
    s.request("RELEASE", fuse::FUSE_RELEASE, nodeid, &args, 0)?;
    println!("FS release=ok");
    if data.len() as u64 != size {
        return Err(format!("read {} bytes of a {size}-byte file", data.len()).into());
    }
    Ok(())
}

/// Reads `size` bytes from the start of open file `fh`, stopping early at end of file.
fn read_all(s: &mut Session, nodeid: u64, fh: u64, size: u64) -> Result<Vec<u8>, FuseError> {
    let mut data = Vec::new();
    while (data.len() as u64) < size {
        let offset = data.len() as u64;
        let chunk = (size - offset).min(READ_CHUNK);
        // fh, offset, size, read_flags, lock_owner, flags, padding.
        let args = fields(&[
            (fh, 8),
            (offset, 8),
            (chunk, 4),
            (0, 4),
            (0, 8),
            (0, 4),
            (0, 4),
        ]);
        let got = s.request("READ", fuse::FUSE_READ, nodeid, &args, chunk as usize)?;
        if got.is_empty() {
            break;
        }
        data.extend_from_slice(&got);
    }
    Ok(data)
}
