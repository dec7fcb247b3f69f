//! A small virtio-gpu command layer over `virtio-drivers`' `VirtQueue` and MMIO transport.
//!
//! `virtio-drivers`' own `VirtIOGpu` has a fixed flow (one framebuffer, whole-screen flushes
//! only, no fences), so the `gpu` scenario speaks the 2D protocol (virtio 1.2, 5.7.6) itself:
//! each command is one request buffer and one response buffer, sent on the control queue and
//! waited for with a timeout.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use bitflags::bitflags;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::Transport;

use super::{poll, PetrelHal};

bitflags! {
    /// The features this driver accepts.
    #[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
    struct Features: u64 {
        const EDID = 1 << 1;
        const VERSION_1 = 1 << 32;
    }
}

pub const CMD_GET_DISPLAY_INFO: u32 = 0x0100;
pub const CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
pub const CMD_SET_SCANOUT: u32 = 0x0103;
pub const CMD_RESOURCE_FLUSH: u32 = 0x0104;
pub const CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
pub const CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
pub const CMD_GET_EDID: u32 = 0x010a;
pub const CMD_MOVE_CURSOR: u32 = 0x0301;
pub const RESP_OK_NODATA: u32 = 0x1100;
pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
pub const RESP_OK_EDID: u32 = 0x1104;
pub const FLAG_FENCE: u32 = 1;
/// `VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM`: bytes B, G, R, A in memory.
pub const FORMAT_B8G8R8A8: u32 = 1;

const CONTROL: u16 = 0;
const CURSOR: u16 = 1;
const QUEUE_SIZE: usize = 4;
const HDR_SIZE: usize = 24;
/// Room for the longest response (GET_EDID: header, size, padding, 1024 bytes).
const RESP_SIZE: usize = HDR_SIZE + 8 + 1024;
const TIMEOUT_MS: u64 = 10_000;

/// A rectangle in pixels.
#[derive(Clone, Copy, Debug)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A response: its type, fence flag and id, and the bytes after the header.
pub struct Response {
    pub kind: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub body: Vec<u8>,
}

/// The driver: the transport and both queues.
pub struct Gpu {
    transport: MmioTransport<'static>,
    control: VirtQueue<PetrelHal, QUEUE_SIZE>,
    cursor: VirtQueue<PetrelHal, QUEUE_SIZE>,
    pub edid: bool,
}

/// A request: header (type, flags, fence id) then little-endian fields.
pub struct Request(Vec<u8>);

impl Request {
    pub fn new(kind: u32) -> Self {
        let mut v = vec![0u8; HDR_SIZE];
        v[0..4].copy_from_slice(&kind.to_le_bytes());
        Request(v)
    }

    pub fn fenced(mut self, fence_id: u64) -> Self {
        self.0[4..8].copy_from_slice(&FLAG_FENCE.to_le_bytes());
        self.0[8..16].copy_from_slice(&fence_id.to_le_bytes());
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn rect(self, r: Rect) -> Self {
        self.u32(r.x).u32(r.y).u32(r.width).u32(r.height)
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl Gpu {
    /// Negotiates features (VERSION_1, EDID if offered) and sets up both queues.
    pub fn new(mut transport: MmioTransport<'static>) -> Result<Self, String> {
        let features = transport.begin_init(Features::VERSION_1 | Features::EDID);
        let control = VirtQueue::new(&mut transport, CONTROL, false, false)
            .map_err(|e| format!("control queue: {e}"))?;
        let cursor = VirtQueue::new(&mut transport, CURSOR, false, false)
            .map_err(|e| format!("cursor queue: {e}"))?;
        transport.finish_init();
        Ok(Gpu {
            transport,
            control,
            cursor,
            edid: features.contains(Features::EDID),
        })
    }

    /// `num_scanouts` from the config space.
    pub fn num_scanouts(&self) -> Result<u32, String> {
        self.transport
            .read_config_space::<u32>(8)
            .map_err(|e| format!("config space: {e}"))
    }

    /// Sends `req` on the control queue and waits for the response.
    pub fn command(&mut self, req: Request) -> Result<Response, String> {
        Self::send(&mut self.transport, &mut self.control, CONTROL, &req.0, HDR_SIZE)
    }

    /// Sends `req` on the cursor queue and waits for the device to use it. A device may
    /// leave the response unwritten there (QEMU's devices and `vhost-user-gpu` use cursor
    /// buffers with length 0), so none is required.
    pub fn cursor_command(&mut self, req: Request) -> Result<(), String> {
        Self::send(&mut self.transport, &mut self.cursor, CURSOR, &req.0, 0).map(|_| ())
    }

    /// A command that must answer OK_NODATA.
    pub fn expect_ok(&mut self, what: &str, req: Request) -> Result<Response, String> {
        let resp = self.command(req)?;
        if resp.kind != RESP_OK_NODATA {
            return Err(format!("{what}: response {:#x}", resp.kind));
        }
        Ok(resp)
    }

    fn send(
        transport: &mut MmioTransport<'static>,
        queue: &mut VirtQueue<PetrelHal, QUEUE_SIZE>,
        index: u16,
        request: &[u8],
        min_len: usize,
    ) -> Result<Response, String> {
        let mut resp = vec![0u8; RESP_SIZE];
        let inputs = [request];
        let mut outputs = [resp.as_mut_slice()];
        // SAFETY: `request` and `resp` are neither touched nor dropped until `pop_used` below
        // returns them; if the device never answers, `poll::wait` ends the run without
        // returning, so they outlive the device's use.
        let token = unsafe { queue.add(&inputs, &mut outputs) }.map_err(|e| format!("add: {e}"))?;
        if queue.should_notify() {
            transport.notify(index);
        }
        poll::wait(TIMEOUT_MS, format_args!("a gpu command"), || {
            queue.can_pop()
        });
        // SAFETY: the same buffers `add` was given for `token`.
        let len = unsafe { queue.pop_used(token, &inputs, &mut outputs) }
            .map_err(|e| format!("pop: {e}"))? as usize;
        if len < min_len {
            return Err(format!("a {len}-byte response"));
        }
        let mut fence = [0u8; 8];
        fence.copy_from_slice(&resp[8..16]);
        Ok(Response {
            kind: le32(&resp, 0),
            flags: le32(&resp, 4),
            fence_id: u64::from_le_bytes(fence),
            body: resp[HDR_SIZE..len.max(HDR_SIZE)].to_vec(),
        })
    }

    /// GET_DISPLAY_INFO: scanout 0's size, if enabled.
    pub fn display_size(&mut self) -> Result<(u32, u32), String> {
        let resp = self.command(Request::new(CMD_GET_DISPLAY_INFO))?;
        if resp.kind != RESP_OK_DISPLAY_INFO || resp.body.len() < 24 {
            return Err(format!("GET_DISPLAY_INFO: response {:#x}", resp.kind));
        }
        if le32(&resp.body, 16) == 0 {
            return Err("scanout 0 is not enabled".into());
        }
        Ok((le32(&resp.body, 8), le32(&resp.body, 12)))
    }

    /// GET_EDID of scanout 0: the EDID bytes.
    pub fn edid(&mut self) -> Result<Vec<u8>, String> {
        let resp = self.command(Request::new(CMD_GET_EDID).u32(0).u32(0))?;
        if resp.kind != RESP_OK_EDID || resp.body.len() < 8 {
            return Err(format!("GET_EDID: response {:#x}", resp.kind));
        }
        let size = le32(&resp.body, 0) as usize;
        let blob = resp
            .body
            .get(8..8 + size)
            .ok_or("GET_EDID: size past the response")?;
        Ok(blob.to_vec())
    }
}
