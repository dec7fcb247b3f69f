//! Carrying out one control or cursor command: parse it, check it, apply it, and build the
//! response. 2D commands complete synchronously, so a fenced command's response (with
//! `VIRTIO_GPU_FLAG_FENCE` and its fence id) is its fence signalling.

use memory::GuestMemoryMmap;

use super::device::Gpu;
use super::edid;
use super::protocol::*;
use super::resources::{ResourceError, MAX_BACKING_ENTRIES};
use super::scanout::{Front, Scanout};

/// What a command answers: a response type with no payload, or a whole response.
enum Reply {
    Status(u32),
    Body(Vec<u8>),
}

impl From<ResourceError> for Reply {
    fn from(e: ResourceError) -> Self {
        tracing::debug!(%e, "gpu command refused");
        Reply::Status(match e {
            ResourceError::UnknownId(_) | ResourceError::BadNewId(_) => {
                RESP_ERR_INVALID_RESOURCE_ID
            }
            ResourceError::OutOfMemory { .. } => RESP_ERR_OUT_OF_MEMORY,
            ResourceError::HasBacking | ResourceError::NoBacking => RESP_ERR_UNSPEC,
            _ => RESP_ERR_INVALID_PARAMETER,
        })
    }
}

impl From<Short> for Reply {
    fn from(_: Short) -> Self {
        Reply::Status(RESP_ERR_INVALID_PARAMETER)
    }
}

type Result<T = ()> = std::result::Result<T, Reply>;

fn ok() -> Result<Reply> {
    Ok(Reply::Status(RESP_OK_NODATA))
}

impl Gpu {
    /// Carries out the control-queue request `request`; returns the response bytes.
    pub fn control_command(&mut self, mem: &GuestMemoryMmap, request: &[u8]) -> Vec<u8> {
        let mut r = Reader::new(request);
        let Ok(hdr) = CtrlHdr::parse(&mut r) else {
            self.metrics.errors += 1;
            return CtrlHdr::default().response(RESP_ERR_UNSPEC).to_vec();
        };
        self.metrics.commands += 1;
        let reply = self
            .dispatch(mem, &hdr, &mut r)
            .unwrap_or_else(|reply| reply);
        match reply {
            Reply::Body(body) => body,
            Reply::Status(kind) => {
                if kind >= RESP_ERR_UNSPEC {
                    self.metrics.errors += 1;
                }
                hdr.response(kind).to_vec()
            }
        }
    }

    fn dispatch(&mut self, mem: &GuestMemoryMmap, hdr: &CtrlHdr, r: &mut Reader) -> Result<Reply> {
        match hdr.kind {
            CMD_GET_DISPLAY_INFO => Ok(Reply::Body(display_info(
                hdr,
                self.config.width,
                self.config.height,
            ))),
            CMD_GET_EDID => {
                let scanout = r.u32()?;
                check_scanout(scanout)?;
                let e = edid::build(self.config.width, self.config.height);
                Ok(Reply::Body(edid_response(hdr, &e)))
            }
            CMD_RESOURCE_CREATE_2D => {
                let (id, format, width, height) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                self.resources.create(id, format, width, height)?;
                ok()
            }
            CMD_RESOURCE_UNREF => {
                let id = r.u32()?;
                self.resources.unref(id)?;
                if self.scanout.is_some_and(|s| s.resource_id == id) {
                    self.disable_scanout();
                }
                if self.cursor.resource_id == id {
                    self.cursor.resource_id = 0;
                }
                ok()
            }
            CMD_SET_SCANOUT => {
                let rect = r.rect()?;
                let (scanout, id) = (r.u32()?, r.u32()?);
                self.set_scanout(scanout, id, rect)?;
                ok()
            }
            CMD_RESOURCE_FLUSH => {
                let rect = r.rect()?;
                let id = r.u32()?;
                self.flush(id, &rect)?;
                ok()
            }
            CMD_TRANSFER_TO_HOST_2D => {
                let rect = r.rect()?;
                let offset = r.u64()?;
                let id = r.u32()?;
                let bytes = self.resources.get_mut(id)?.transfer(mem, &rect, offset)?;
                self.metrics.transfer_bytes += bytes;
                ok()
            }
            CMD_RESOURCE_ATTACH_BACKING => {
                let (id, count) = (r.u32()?, r.u32()?);
                let entries = mem_entries(r, count)?;
                self.resources.attach(mem, id, entries)?;
                ok()
            }
            CMD_RESOURCE_DETACH_BACKING => {
                self.resources.detach(r.u32()?)?;
                ok()
            }
            other => {
                tracing::debug!(command = other, "unknown gpu control command");
                Err(Reply::Status(RESP_ERR_UNSPEC))
            }
        }
    }

    fn set_scanout(&mut self, scanout: u32, id: u32, rect: Rect) -> Result {
        check_scanout(scanout)?;
        if id == 0 {
            self.disable_scanout();
            return Ok(());
        }
        let res = self.resources.get(id)?;
        if !rect.fits_in(res.width, res.height) {
            return Err(ResourceError::Rect(rect).into());
        }
        let s = Scanout {
            resource_id: id,
            rect,
        };
        let front = Front::of(&s, res).ok_or(Reply::Status(RESP_ERR_OUT_OF_MEMORY))?;
        self.scanout = Some(s);
        self.front = Some(front);
        self.generation += 1;
        Ok(())
    }

    fn flush(&mut self, id: u32, rect: &Rect) -> Result {
        let res = self.resources.get(id)?;
        if !rect.fits_in(res.width, res.height) {
            return Err(ResourceError::Rect(*rect).into());
        }
        self.metrics.flushes += 1;
        if let (Some(s), Some(front)) = (&self.scanout, &mut self.front) {
            if s.resource_id == id && front.update(s, res, rect) {
                self.generation += 1;
            }
        }
        Ok(())
    }

    /// The scanout shows nothing: the screen goes blank.
    pub(super) fn disable_scanout(&mut self) {
        if self.scanout.take().is_some() || self.front.is_some() {
            self.front = None;
            self.generation += 1;
        }
    }

    /// Carries out a cursor-queue request; returns the response bytes (OK_NODATA or an
    /// error, for a driver that posted room for one).
    pub fn cursor_command(&mut self, request: &[u8]) -> Vec<u8> {
        let mut r = Reader::new(request);
        let Ok(hdr) = CtrlHdr::parse(&mut r) else {
            self.metrics.errors += 1;
            return CtrlHdr::default().response(RESP_ERR_UNSPEC).to_vec();
        };
        self.metrics.cursor_commands += 1;
        let kind = match self.cursor_update(&hdr, &mut r) {
            Ok(()) => RESP_OK_NODATA,
            Err(Reply::Status(kind)) => kind,
            Err(Reply::Body(_)) => RESP_ERR_UNSPEC,
        };
        if kind != RESP_OK_NODATA {
            self.metrics.errors += 1;
        }
        hdr.response(kind).to_vec()
    }

    fn cursor_update(&mut self, hdr: &CtrlHdr, r: &mut Reader) -> Result {
        let (scanout, x, y, _pad) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let (id, hot_x, hot_y) = (r.u32()?, r.u32()?, r.u32()?);
        check_scanout(scanout)?;
        match hdr.kind {
            CMD_MOVE_CURSOR => {}
            CMD_UPDATE_CURSOR => {
                if id != 0 {
                    self.resources.get(id)?;
                }
                self.cursor.resource_id = id;
                self.cursor.hot_x = hot_x;
                self.cursor.hot_y = hot_y;
            }
            _ => return Err(Reply::Status(RESP_ERR_UNSPEC)),
        }
        self.cursor.x = x;
        self.cursor.y = y;
        Ok(())
    }
}

fn check_scanout(scanout: u32) -> Result {
    if scanout == 0 {
        Ok(())
    } else {
        Err(Reply::Status(RESP_ERR_INVALID_SCANOUT_ID))
    }
}

/// The `count` `virtio_gpu_mem_entry`s after an ATTACH_BACKING header.
fn mem_entries(r: &mut Reader, count: u32) -> Result<Vec<(u64, u32)>> {
    if count == 0 || count > MAX_BACKING_ENTRIES {
        return Err(ResourceError::BackingCount(count).into());
    }
    let need = count as usize * MEM_ENTRY_SIZE;
    if r.rest().len() < need {
        return Err(Short.into());
    }
    (0..count)
        .map(|_| {
            let addr = r.u64()?;
            let len = r.u32()?;
            let _pad = r.u32()?;
            Ok((addr, len))
        })
        .collect()
}
