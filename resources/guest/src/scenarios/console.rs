//! `console`: a line each way through the first virtio console device (port 0), with
//! `virtio-drivers`' `VirtIOConsole`.
//!
//! ```text
//! CONSOLE size=<cols>x<rows>     (size=none if the device does not offer VIRTIO_CONSOLE_F_SIZE)
//! CONSOLE got=<line>             (the first line the host wrote, without its `\n`)
//! ```
//!
//! On the console itself the guest writes `hello from the virtio console\n`, reads a line, and
//! writes back `echo: <line>\n`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::rt::bootparams::BootParams;
use crate::rt::deadline::Deadline;
use crate::virtio::{self, DeviceType, PetrelHal};

type Console = VirtIOConsole<PetrelHal, MmioTransport<'static>>;

const GREETING: &[u8] = b"hello from the virtio console\n";
/// How long to wait for the host's line: it writes it once it has seen the greeting.
const LINE_TIMEOUT_MS: u64 = 30_000;
const MAX_LINE: usize = 1024;

pub fn run(boot: &BootParams) -> Result<(), String> {
    let device = virtio::take(boot, DeviceType::Console)?
        .into_iter()
        .next()
        .ok_or("no virtio console device")?;
    let window = device.window;
    let mut console = Console::new(device.transport)
        .map_err(|e| format!("console device ({window}): initialisation failed: {e}"))?;

    match console.size() {
        Ok(Some(size)) => println!("CONSOLE size={}x{}", size.columns, size.rows),
        Ok(None) => println!("CONSOLE size=none"),
        Err(e) => return Err(format!("reading the console size: {e}")),
    }

    // `send_bytes` has no non-blocking form: it waits (without a timeout) for the device to
    // take the bytes.
    console
        .send_bytes(GREETING)
        .map_err(|e| format!("writing to the console: {e}"))?;

    let line = read_line(&mut console)?;
    let line = String::from_utf8_lossy(&line);
    println!("CONSOLE got={line}");

    let echo = format!("echo: {line}\n");
    console
        .send_bytes(echo.as_bytes())
        .map_err(|e| format!("writing to the console: {e}"))?;
    Ok(())
}

/// Reads bytes until `\n`; returns the line without it.
fn read_line(console: &mut Console) -> Result<Vec<u8>, String> {
    let deadline = Deadline::after_ms(LINE_TIMEOUT_MS);
    let mut line = Vec::new();
    loop {
        match console.recv(true) {
            Ok(Some(b'\n')) => return Ok(line),
            Ok(Some(byte)) if line.len() < MAX_LINE => line.push(byte),
            Ok(Some(_)) => return Err(format!("no newline in the first {MAX_LINE} bytes")),
            Ok(None) if deadline.expired() => {
                // The driver's receive buffer is still posted: end here rather than drop it.
                crate::scenarios::fail_now(format_args!(
                    "no line from the console within {LINE_TIMEOUT_MS} ms (got {:?} so far)",
                    String::from_utf8_lossy(&line)
                ));
            }
            Ok(None) => core::hint::spin_loop(),
            Err(e) => return Err(format!("reading from the console: {e}")),
        }
    }
}
