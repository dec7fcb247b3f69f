//! The `snapshot` scenario's devices: the first virtio block, console, vsock, gpu and network
//! device and every input device on the command line, each set up once at start, and the
//! commands that use them (`r`, `w`, `p`, `s`, `g`, `i`, `n`, `m`; see `snapshot_proto`). A command
//! for a device that is absent answers `NODEV <byte>`.
//!
//! Every command does a little work and answers with one line; the counters behind the
//! answers (one per command kind, the first use answers 1) live in guest memory, so a
//! restored guest goes on counting where the snapshot left it.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::device::socket::{
    VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEventType, VMADDR_CID_HOST,
};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::Transport;

use super::gpu::{self, Frame};
use super::input::{self, Input};
use super::net::{self, Net};
use super::snapshot_proto::{
    disk_sector, fnv1a64, net_frame, screen_pixel, vsock_ping, Command, DISK_READ_SECTORS,
    DISK_WRITE_SECTOR, NET_ETHERTYPE, SECTOR_SIZE, VSOCK_HOST_PORT, VSOCK_LOCAL_PORT_BASE,
};
use crate::rt::bootparams::BootParams;
use crate::rt::deadline::Deadline;
use crate::virtio::blk::{self, Blk};
use crate::virtio::{self, DeviceType, PetrelHal};

type Console = VirtIOConsole<PetrelHal, MmioTransport<'static>>;
/// Each vsock rx buffer: the 44-byte header and 4 KiB of payload.
const VSOCK_RX_BUFFER: usize = 44 + 4096;
type Vsock = VsockConnectionManager<PetrelHal, MmioTransport<'static>, VSOCK_RX_BUFFER>;

/// The kinds of device the scenario drives.
const KINDS: [DeviceType; 6] = [
    DeviceType::Block,
    DeviceType::Console,
    DeviceType::Socket,
    DeviceType::GPU,
    DeviceType::Input,
    DeviceType::Network,
];
/// Generous: a block request takes about a millisecond here.
const BLK_TIMEOUT_MS: u64 = 10_000;
/// How long `s` waits for the host to accept and to echo.
const VSOCK_TIMEOUT_MS: u64 = 10_000;
/// The credit the guest gives the host per connection.
const VSOCK_CONN_BUFFER: u32 = 4096;
/// Events `i` takes at most per device in one go.
const MAX_EVENTS: usize = 64;
const EV_SYN: u16 = 0;

/// The devices found, and the counters of their commands.
pub struct Devices {
    blk: Option<Blk>,
    console: Option<Console>,
    vsock: Option<Vsock>,
    gpu: Option<Frame>,
    inputs: Vec<Input>,
    net: Option<NetDev>,
    disk_writes: u64,
    console_lines: u64,
    vsock_pings: u64,
    frames: u64,
    net_frames: u64,
}

impl Devices {
    /// Probes the command line's devices and sets up those the scenario drives (the first of
    /// each kind; every input device). Prints `SNAPSHOT devices=<kinds>` (`none` if there are
    /// none) once they are ready; the gpu shows [`screen_pixel`]`(x, y, 0)`.
    pub fn open(boot: &BootParams) -> Result<Devices, String> {
        let mut devices = Devices {
            blk: None,
            console: None,
            vsock: None,
            gpu: None,
            inputs: Vec::new(),
            net: None,
            disk_writes: 0,
            console_lines: 0,
            vsock_pings: 0,
            frames: 0,
            net_frames: 0,
        };
        let mut inputs = Vec::new();
        for device in virtio::take_kinds(boot, &KINDS)? {
            let window = device.window;
            let failed = |what: &str, e: &dyn core::fmt::Display| {
                format!("{what} device ({window}): initialisation failed: {e}")
            };
            match device.transport.device_type() {
                DeviceType::Block if devices.blk.is_none() => {
                    let blk = Blk::new(device.transport).map_err(|e| failed("block", &e))?;
                    devices.blk = Some(blk);
                }
                DeviceType::Console if devices.console.is_none() => {
                    let console =
                        Console::new(device.transport).map_err(|e| failed("console", &e))?;
                    devices.console = Some(console);
                }
                DeviceType::Socket if devices.vsock.is_none() => {
                    let driver =
                        VirtIOSocket::<PetrelHal, _, VSOCK_RX_BUFFER>::new(device.transport)
                            .map_err(|e| failed("vsock", &e))?;
                    devices.vsock = Some(Vsock::new_with_capacity(driver, VSOCK_CONN_BUFFER));
                }
                DeviceType::GPU if devices.gpu.is_none() => {
                    let mut frame = gpu::first_frame(device, false)?;
                    frame.paint(|x, y| screen_pixel(x, y, 0))?;
                    devices.gpu = Some(frame);
                }
                DeviceType::Input => inputs.push(device),
                DeviceType::Network if devices.net.is_none() => {
                    let net = Net::new(device.transport).map_err(|e| failed("network", &e))?;
                    devices.net = Some(NetDev::new(net)?);
                }
                // A second device of a kind: left alone (dropping its transport would reset it).
                _ => core::mem::forget(device),
            }
        }
        if !inputs.is_empty() {
            devices.inputs = input::open(inputs)?;
        }
        println!("SNAPSHOT devices={}", devices.names());
        Ok(devices)
    }

    /// The kinds present, comma-separated, in a fixed order.
    fn names(&self) -> String {
        let present = [
            ("blk", self.blk.is_some()),
            ("console", self.console.is_some()),
            ("vsock", self.vsock.is_some()),
            ("gpu", self.gpu.is_some()),
            ("input", !self.inputs.is_empty()),
            ("net", self.net.is_some()),
        ];
        let names: Vec<&str> = present
            .iter()
            .filter(|(_, there)| *there)
            .map(|(name, _)| *name)
            .collect();
        if names.is_empty() {
            String::from("none")
        } else {
            names.join(",")
        }
    }

    /// Runs a device command and prints its answer; `Err` ends the scenario.
    pub fn handle(&mut self, command: Command) -> Result<(), String> {
        let answer = match command {
            Command::DiskRead => self.blk.as_mut().map(disk_read),
            Command::DiskWrite => self.blk.as_mut().map(|blk| {
                self.disk_writes += 1;
                disk_write(blk, self.disk_writes)
            }),
            Command::Console => self.console.as_mut().map(|console| {
                self.console_lines += 1;
                console_line(console, self.console_lines)
            }),
            Command::Vsock => self.vsock.as_mut().map(|vsock| {
                self.vsock_pings += 1;
                Ok(ping(vsock, self.vsock_pings))
            }),
            Command::Gpu => self.gpu.as_mut().map(|frame| {
                self.frames += 1;
                let n = self.frames;
                frame
                    .paint(|x, y| screen_pixel(x, y, n))
                    .map(|()| format!("GPU drew {n}"))
            }),
            Command::Keys if !self.inputs.is_empty() => Some(Ok(keys(&mut self.inputs))),
            Command::Keys => None,
            Command::Net => self.net.as_mut().map(|dev| {
                self.net_frames += 1;
                let n = self.net_frames;
                net::transmit(&mut dev.net, &net_frame(dev.mac, n))
                    .map(|()| format!("NET sent {n}"))
            }),
            Command::NetRecv => self.net.as_mut().map(NetDev::receive),
            other => return Err(format!("{other:?} is not a device command")),
        };
        match answer {
            Some(answer) => println!("{}", answer?),
            None => println!("NODEV {}", char::from(command.byte().unwrap_or(b'?'))),
        }
        Ok(())
    }
}

/// The network device and its receive buffers, always posted but while one is looked at.
struct NetDev {
    /// Declared first so that it is dropped first: dropping the driver resets the device,
    /// which then no longer writes into the buffers still posted.
    net: Net,
    mac: [u8; 6],
    rx: Vec<Box<[u8]>>,
    /// The buffer (index into `rx`) each descriptor chain holds.
    tokens: [Option<usize>; net::QUEUE_SIZE],
}

impl NetDev {
    fn new(net: Net) -> Result<NetDev, String> {
        let mac = net.mac_address();
        let mut dev = NetDev {
            net,
            mac,
            rx: (0..net::RX_BUFFERS)
                .map(|_| vec![0u8; net::RX_BUFFER_LEN].into_boxed_slice())
                .collect(),
            tokens: [None; net::QUEUE_SIZE],
        };
        for slot in 0..dev.rx.len() {
            // SAFETY: the buffers are heap allocations only `receive` touches, after the device
            // returned them, and they outlive the driver (field order).
            unsafe { net::post(&mut dev.net, &mut dev.tokens, slot, &mut dev.rx[slot])? };
        }
        Ok(dev)
    }

    /// `m`: takes received frames until one has our ethertype; posts every buffer again.
    fn receive(&mut self) -> Result<String, String> {
        while let Some(token) = self.net.poll_receive() {
            let Some(slot) = self
                .tokens
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                crate::scenarios::fail_now(format_args!(
                    "the network device returned receive chain {token}, which holds no buffer"
                ));
            };
            let buf = &mut self.rx[slot];
            // SAFETY: `buf` is the buffer `receive_begin` was given for `token`.
            let (header, len) = unsafe { self.net.receive_complete(token, buf) }
                .map_err(|e| format!("receive: {e}"))?;
            let frame = buf.get(header..header + len).ok_or_else(|| {
                format!(
                    "the device reports a {len}-byte frame in a {}-byte buffer",
                    buf.len()
                )
            })?;
            let ours = (frame.get(12..14) == Some(&NET_ETHERTYPE[..]))
                .then(|| format!("NET got {len} {:016x}", fnv1a64(frame)));
            // SAFETY: as in `new`: the device returned `buf`, which outlives the driver.
            unsafe { net::post(&mut self.net, &mut self.tokens, slot, buf)? };
            if let Some(answer) = ours {
                return Ok(answer);
            }
        }
        Ok(String::from("NET got none"))
    }
}

/// `r`: the FNV-1a 64 of sectors 0..8.
fn disk_read(blk: &mut Blk) -> Result<String, String> {
    let mut data = [0u8; (DISK_READ_SECTORS.end - DISK_READ_SECTORS.start) as usize * SECTOR_SIZE];
    blk::read(blk, DISK_READ_SECTORS.start, &mut data, BLK_TIMEOUT_MS)
        .map_err(|e| format!("reading sectors {DISK_READ_SECTORS:?}: {e}"))?;
    Ok(format!("DISK {:016x}", fnv1a64(&data)))
}

/// `w`: writes the counter's sector and flushes.
fn disk_write(blk: &mut Blk, n: u64) -> Result<String, String> {
    let sector = disk_sector(n);
    blk::write(blk, DISK_WRITE_SECTOR, &sector, BLK_TIMEOUT_MS)
        .map_err(|e| format!("writing sector {DISK_WRITE_SECTOR}: {e}"))?;
    // `flush` has no non-blocking form; the device answers it like a write.
    blk.flush().map_err(|e| format!("flush: {e}"))?;
    Ok(format!("DISK wrote {n}"))
}

/// `p`: the line on the virtio console, then the same on the serial port.
fn console_line(console: &mut Console, n: u64) -> Result<String, String> {
    let line = format!("CONSOLE {n}");
    // `send_bytes` waits (without a timeout) for the device to take the bytes.
    console
        .send_bytes(format!("{line}\n").as_bytes())
        .map_err(|e| format!("writing to the console: {e}"))?;
    Ok(line)
}

/// `s`: a connection to the host's port, one ping echoed, closed. Never fails the scenario:
/// what went wrong is the answer.
fn ping(vsock: &mut Vsock, n: u64) -> String {
    let peer = VsockAddr {
        cid: VMADDR_CID_HOST,
        port: VSOCK_HOST_PORT,
    };
    let local = VSOCK_LOCAL_PORT_BASE + n as u32;
    let result = echo(vsock, peer, local, n);
    // Closed with RST whatever happened (the connection may be gone already: no matter).
    let _ = vsock.force_close(peer, local);
    match result {
        Ok(()) => format!("VSOCK ok {n}"),
        Err(None) => format!("VSOCK refused {n}"),
        Err(Some(why)) => format!("VSOCK bad {n} {why}"),
    }
}

/// Connects, sends the ping and waits for it to come back. `Err(None)`: refused.
fn echo(vsock: &mut Vsock, peer: VsockAddr, local: u32, n: u64) -> Result<(), Option<String>> {
    let deadline = Deadline::after_ms(VSOCK_TIMEOUT_MS);
    vsock
        .connect(peer, local)
        .map_err(|e| Some(format!("connect: {e}")))?;
    loop {
        let event = vsock.poll().map_err(|e| Some(format!("poll: {e}")))?;
        match event {
            Some(e) if e.source == peer && e.destination.port == local => match e.event_type {
                VsockEventType::Connected => break,
                VsockEventType::Disconnected { .. } => return Err(None),
                _ => {}
            },
            _ if deadline.expired() => return Err(Some("timed out connecting".into())),
            _ => core::hint::spin_loop(),
        }
    }
    let mut ping = [0u8; 32];
    let len = vsock_ping(n, &mut ping);
    vsock
        .send(peer, local, &ping[..len])
        .map_err(|e| Some(format!("send: {e}")))?;
    let mut got = [0u8; 32];
    let mut have = 0;
    while have < len {
        if let Some(e) = vsock.poll().map_err(|e| Some(format!("poll: {e}")))? {
            if matches!(e.event_type, VsockEventType::Disconnected { .. })
                && e.source == peer
                && e.destination.port == local
                && vsock.recv_buffer_available_bytes(peer, local).is_err()
            {
                return Err(Some(format!("closed after {have} of {len} bytes")));
            }
        }
        match vsock.recv(peer, local, &mut got[have..len]) {
            Ok(read) => have += read,
            Err(e) => return Err(Some(format!("recv after {have} of {len} bytes: {e}"))),
        }
        if have < len && deadline.expired() {
            return Err(Some(format!("timed out after {have} of {len} bytes")));
        }
    }
    if got[..len] != ping[..len] {
        return Err(Some(format!(
            "echo {:?}",
            String::from_utf8_lossy(&got[..len])
        )));
    }
    Ok(())
}

/// `i`: the pending events of every input device but EV_SYN, as `KEYS <code>:<value>,...`.
fn keys(inputs: &mut [Input]) -> String {
    let mut events = Vec::new();
    for input in inputs.iter_mut() {
        for _ in 0..MAX_EVENTS {
            let Some(e) = input.pop_pending_event() else {
                break;
            };
            if e.event_type != EV_SYN {
                events.push(format!("{}:{}", e.code, e.value));
            }
        }
    }
    if events.is_empty() {
        String::from("KEYS none")
    } else {
        format!("KEYS {}", events.join(","))
    }
}
