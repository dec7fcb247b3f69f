//! The virtio-gpu wire format (virtio 1.2, section 5.7.6): command and response types,
//! the structures the 2D commands carry, and their little-endian encoding. Every parser
//! takes a byte slice from the guest and checks its length; nothing here can panic on a
//! short or garbage request.

/// Control queue commands.
pub const CMD_GET_DISPLAY_INFO: u32 = 0x0100;
pub const CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
pub const CMD_RESOURCE_UNREF: u32 = 0x0102;
pub const CMD_SET_SCANOUT: u32 = 0x0103;
pub const CMD_RESOURCE_FLUSH: u32 = 0x0104;
pub const CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
pub const CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
pub const CMD_RESOURCE_DETACH_BACKING: u32 = 0x0107;
pub const CMD_GET_EDID: u32 = 0x010a;
/// Cursor queue commands.
pub const CMD_UPDATE_CURSOR: u32 = 0x0300;
pub const CMD_MOVE_CURSOR: u32 = 0x0301;

/// Success responses.
pub const RESP_OK_NODATA: u32 = 0x1100;
pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
pub const RESP_OK_EDID: u32 = 0x1104;
/// Error responses.
pub const RESP_ERR_UNSPEC: u32 = 0x1200;
pub const RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

/// `flags` bit: the driver wants a fence; the response echoes it and the fence id.
pub const FLAG_FENCE: u32 = 1 << 0;

/// Scanouts a driver may ask about in GET_DISPLAY_INFO (`VIRTIO_GPU_MAX_SCANOUTS`).
pub const MAX_SCANOUTS: usize = 16;
/// Size of `struct virtio_gpu_ctrl_hdr`.
pub const HDR_SIZE: usize = 24;
/// Size of `struct virtio_gpu_mem_entry`.
pub const MEM_ENTRY_SIZE: usize = 16;
/// Bytes of EDID data in a GET_EDID response.
pub const EDID_BLOB_SIZE: usize = 1024;

/// Little-endian fields read one after another from a guest buffer.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

/// The request ended before a field it must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request is too short")]
pub struct Short;

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(Short)?;
        self.bytes = rest;
        Ok(*head)
    }

    pub fn u32(&mut self) -> Result<u32, Short> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, Short> {
        self.take::<8>().map(u64::from_le_bytes)
    }

    pub fn rect(&mut self) -> Result<Rect, Short> {
        Ok(Rect {
            x: self.u32()?,
            y: self.u32()?,
            width: self.u32()?,
            height: self.u32()?,
        })
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

/// `struct virtio_gpu_ctrl_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtrlHdr {
    pub kind: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

impl CtrlHdr {
    pub fn parse(r: &mut Reader) -> Result<Self, Short> {
        let kind = r.u32()?;
        let flags = r.u32()?;
        let fence_id = r.u64()?;
        let ctx_id = r.u32()?;
        let tail = r.u32()?;
        Ok(CtrlHdr {
            kind,
            flags,
            fence_id,
            ctx_id,
            ring_idx: tail.to_le_bytes()[0],
        })
    }

    /// The response header to this request: `kind`, and the fence echoed if asked for.
    pub fn response(&self, kind: u32) -> [u8; HDR_SIZE] {
        let fenced = self.flags & FLAG_FENCE != 0;
        let mut out = [0u8; HDR_SIZE];
        out[0..4].copy_from_slice(&kind.to_le_bytes());
        if fenced {
            out[4..8].copy_from_slice(&FLAG_FENCE.to_le_bytes());
            out[8..16].copy_from_slice(&self.fence_id.to_le_bytes());
            out[16..20].copy_from_slice(&self.ctx_id.to_le_bytes());
        }
        out
    }
}

/// `struct virtio_gpu_rect`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// Whether the rectangle is non-empty and lies inside a `width` x `height` area, with
    /// no overflow in `x + width` or `y + height`.
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        self.width > 0
            && self.height > 0
            && self.x.checked_add(self.width).is_some_and(|r| r <= width)
            && self.y.checked_add(self.height).is_some_and(|b| b <= height)
    }

    /// The part of `self` inside `other` (None if they do not overlap). Both must fit in
    /// the same resource, so the sums do not overflow.
    pub fn intersect(&self, other: &Rect) -> Option<Rect> {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let right = (self.x + self.width).min(other.x + other.width);
        let bottom = (self.y + self.height).min(other.y + other.height);
        (right > x && bottom > y).then_some(Rect {
            x,
            y,
            width: right - x,
            height: bottom - y,
        })
    }
}

/// Where a pixel's red, green, blue and alpha bytes are in the resource's 4-byte pixel.
/// `alpha: None` is an `X` format: shown opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub r: usize,
    pub g: usize,
    pub b: usize,
    pub a: Option<usize>,
}

/// The 32-bit formats RESOURCE_CREATE_2D accepts (`enum virtio_gpu_formats`). Names give the
/// byte order in memory, as in QEMU and Linux.
pub fn format_layout(format: u32) -> Option<Layout> {
    let l = |r, g, b, a| Some(Layout { r, g, b, a });
    match format {
        1 => l(2, 1, 0, Some(3)),   // B8G8R8A8_UNORM
        2 => l(2, 1, 0, None),      // B8G8R8X8_UNORM
        3 => l(1, 2, 3, Some(0)),   // A8R8G8B8_UNORM
        4 => l(1, 2, 3, None),      // X8R8G8B8_UNORM
        67 => l(0, 1, 2, Some(3)),  // R8G8B8A8_UNORM
        68 => l(3, 2, 1, None),     // X8B8G8R8_UNORM
        121 => l(3, 2, 1, Some(0)), // A8B8G8R8_UNORM
        134 => l(0, 1, 2, None),    // R8G8B8X8_UNORM
        _ => None,
    }
}

/// Bytes per pixel of every accepted format.
pub const BYTES_PER_PIXEL: u32 = 4;

/// `struct virtio_gpu_resp_display_info` for one enabled scanout of `width` x `height`.
pub fn display_info(hdr: &CtrlHdr, width: u32, height: u32) -> Vec<u8> {
    let mut out = hdr.response(RESP_OK_DISPLAY_INFO).to_vec();
    for i in 0..MAX_SCANOUTS {
        let (w, h, enabled) = if i == 0 {
            (width, height, 1)
        } else {
            (0, 0, 0)
        };
        for v in [0, 0, w, h, enabled, 0] {
            out.extend_from_slice(&u32::to_le_bytes(v));
        }
    }
    out
}

/// `struct virtio_gpu_resp_edid` carrying `edid`.
pub fn edid_response(hdr: &CtrlHdr, edid: &[u8]) -> Vec<u8> {
    let mut out = hdr.response(RESP_OK_EDID).to_vec();
    let len = edid.len().min(EDID_BLOB_SIZE);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut blob = [0u8; EDID_BLOB_SIZE];
    blob[..len].copy_from_slice(&edid[..len]);
    out.extend_from_slice(&blob);
    out
}
