//! `vsock`: an echo server and client on the first virtio-vsock device, with `virtio-drivers`'
//! `VsockConnectionManager`.
//!
//! Command line:
//! - `petrel.vsock.listen=PORT`: the guest port host processes connect to (default 1234);
//! - `petrel.vsock.connect=PORT`: also connect out to this host port (optional);
//! - `petrel.vsock.conns=N`: pass once N connections (both kinds) have closed (default 1).
//!
//! Every byte received on any connection is sent back on it. Output:
//!
//! ```text
//! VSOCK cid=<cid>
//! VSOCK listening port=<port>
//! VSOCK connecting host_port=<port> local_port=<port>
//! VSOCK connected peer=<cid>:<port> local_port=<port>      (an outgoing connection is up)
//! VSOCK accepted peer=<cid>:<port> local_port=<port>       (a host process connected)
//! VSOCK closed peer=<cid>:<port> local_port=<port> bytes=<echoed>
//! VSOCK refused host_port=<port>                           (the outgoing connection got RST;
//!                                                           it counts as closed)
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::device::socket::{
    SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEventType, VMADDR_CID_HOST,
};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::Error;

use crate::rt::bootparams::BootParams;
use crate::rt::deadline::Deadline;
use crate::virtio::{self, DeviceType, PetrelHal};

/// Each rx buffer: the 44-byte header and 4 KiB of payload.
const RX_BUFFER: usize = 44 + 4096;
/// The receive buffer per connection (the credit the guest gives the host).
const CONN_BUFFER: u32 = 16 << 10;
/// Bytes taken from a connection and echoed at once.
const CHUNK: usize = 4096;
/// The local port of the outgoing connection.
const LOCAL_PORT: u32 = 40000;
const TIMEOUT_MS: u64 = 300_000;

type Manager = VsockConnectionManager<PetrelHal, MmioTransport<'static>, RX_BUFFER>;

/// An open connection and the bytes received but not yet echoed.
struct Conn {
    peer: VsockAddr,
    local: u32,
    buf: Vec<u8>,
    len: usize,
    echoed: u64,
    /// The peer disconnected; the connection ends once its buffer is drained.
    closing: bool,
}

fn param(boot: &BootParams, key: &str, default: u32) -> Result<u32, String> {
    match boot.cmdline().get(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{key}={v} is not a port number")),
    }
}

pub fn run(boot: &BootParams) -> Result<(), String> {
    let listen = param(boot, "petrel.vsock.listen", 1234)?;
    let connect = match boot.cmdline().get("petrel.vsock.connect") {
        Some(_) => Some(param(boot, "petrel.vsock.connect", 0)?),
        None => None,
    };
    let wanted = param(boot, "petrel.vsock.conns", 1)?;
    let device = virtio::take(boot, DeviceType::Socket)?
        .into_iter()
        .next()
        .ok_or("no virtio vsock device")?;
    let window = device.window;
    let driver = VirtIOSocket::<PetrelHal, _, RX_BUFFER>::new(device.transport)
        .map_err(|e| format!("vsock device ({window}): initialisation failed: {e}"))?;
    let mut mgr = Manager::new_with_capacity(driver, CONN_BUFFER);
    println!("VSOCK cid={}", mgr.guest_cid());
    mgr.listen(listen);
    println!("VSOCK listening port={listen}");
    if let Some(port) = connect {
        let peer = VsockAddr {
            cid: VMADDR_CID_HOST,
            port,
        };
        mgr.connect(peer, LOCAL_PORT)
            .map_err(|e| format!("connecting to host port {port}: {e}"))?;
        println!("VSOCK connecting host_port={port} local_port={LOCAL_PORT}");
    }
    let deadline = Deadline::after_ms(TIMEOUT_MS);
    let mut conns: Vec<Conn> = Vec::new();
    let mut closed = 0;
    while closed < wanted {
        if deadline.expired() {
            return Err(format!(
                "{closed} of {wanted} connections closed within {TIMEOUT_MS} ms"
            ));
        }
        if poll_once(&mut mgr, &mut conns)? {
            closed += 1;
        }
        for c in conns.iter_mut() {
            pump(&mut mgr, c)?;
        }
        let before = conns.len();
        conns.retain(|c| {
            let gone = c.closing
                && c.len == 0
                && mgr.recv_buffer_available_bytes(c.peer, c.local).is_err();
            if gone {
                println!(
                    "VSOCK closed peer={}:{} local_port={} bytes={}",
                    c.peer.cid, c.peer.port, c.local, c.echoed
                );
            }
            !gone
        });
        closed += (before - conns.len()) as u32;
    }
    Ok(())
}

fn find(conns: &mut [Conn], peer: VsockAddr, local: u32) -> Option<&mut Conn> {
    conns
        .iter_mut()
        .find(|c| c.peer == peer && c.local == local)
}

/// Handles at most one event from the device; whether the outgoing connection was refused.
fn poll_once(mgr: &mut Manager, conns: &mut Vec<Conn>) -> Result<bool, String> {
    let event = match mgr.poll() {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(false),
        Err(e) => return Err(format!("vsock poll: {e}")),
    };
    let (peer, local) = (event.source, event.destination.port);
    let new = |peer, local| Conn {
        peer,
        local,
        buf: vec![0u8; CHUNK],
        len: 0,
        echoed: 0,
        closing: false,
    };
    match event.event_type {
        VsockEventType::ConnectionRequest => {
            println!(
                "VSOCK accepted peer={}:{} local_port={local}",
                peer.cid, peer.port
            );
            conns.push(new(peer, local));
        }
        VsockEventType::Connected => {
            println!(
                "VSOCK connected peer={}:{} local_port={local}",
                peer.cid, peer.port
            );
            conns.push(new(peer, local));
        }
        VsockEventType::Disconnected { .. } => match find(conns, peer, local) {
            Some(c) => c.closing = true,
            None if local == LOCAL_PORT && peer.cid == VMADDR_CID_HOST => {
                println!("VSOCK refused host_port={}", peer.port);
                return Ok(true);
            }
            None => {
                return Err(format!(
                    "disconnected from unknown {}:{}",
                    peer.cid, peer.port
                ))
            }
        },
        _ => {}
    }
    Ok(false)
}

/// Moves received bytes of `c` back to its peer, as far as the peer's credit allows.
fn pump(mgr: &mut Manager, c: &mut Conn) -> Result<(), String> {
    if c.len == 0 {
        match mgr.recv(c.peer, c.local, &mut c.buf) {
            Ok(n) => c.len = n,
            Err(Error::SocketDeviceError(SocketError::NotConnected)) => {
                c.closing = true;
                return Ok(());
            }
            Err(e) => return Err(format!("vsock recv: {e}")),
        }
    }
    if c.len == 0 {
        return Ok(());
    }
    match mgr.send(c.peer, c.local, &c.buf[..c.len]) {
        Ok(()) => {
            c.echoed += c.len as u64;
            c.len = 0;
            Ok(())
        }
        Err(Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => Ok(()),
        Err(Error::SocketDeviceError(SocketError::NotConnected)) => {
            // The peer went before taking its echo.
            c.len = 0;
            c.closing = true;
            Ok(())
        }
        Err(e) => Err(format!("vsock send: {e}")),
    }
}
