//! [`VhostUserGpu`]: a virtio-gpu device whose queues a vhost-user back end (such as QEMU's
//! `vhost-user-gpu`) serves; petrel shows what the back end renders.
//!
//! - Queues: control (0) and cursor (1). The driver is offered the back end's features
//!   among `VERSION_1` (required), `RING_EVENT_IDX`, `RING_INDIRECT_DESC`,
//!   `VIRTIO_GPU_F_VIRGL` (a back end started with `--virgl`) and `VIRTIO_GPU_F_EDID`.
//! - Config space: `num_capsets` from the back end's (GET_CONFIG, when it answers it);
//!   `num_scanouts` = 1 and `events_read` = 0 are petrel's, as in QEMU's front end.
//! - On every connection petrel hands the back end a display channel
//!   (`VHOST_USER_GPU_SET_SOCKET`, see [`channel`]) and serves its requests on the VMM
//!   thread: GET_PROTOCOL_FEATURES (petrel offers `EDID`), GET_DISPLAY_INFO (one scanout of
//!   the configured size), GET_EDID (petrel's EDID for that size), SCANOUT and UPDATE
//!   (scanout 0's picture, which the screenshot and the web console show), the cursor
//!   messages, and DMABUF_SCANOUT(2)/DMABUF_UPDATE (a linear buffer, mapped read-only and
//!   copied from on each update, see [`dmabuf`]; the update is acknowledged either way).
//! - Anything the back end sends is checked: a payload larger than petrel keeps is
//!   discarded, a rectangle outside the screen or a scanout other than 0 is ignored and
//!   logged; a broken channel is dropped (the device goes on without a picture).
//! - Not savable: the back end holds the guest's resources.

pub mod channel;
pub mod dmabuf;
pub mod screen;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use channel::{Channel, ChannelError, Message};
use dmabuf::{DmabufScanout, ScanoutInfo};
use screen::{Pointer, Screen};

use super::connection::Connection;
use super::device::{VhostUserDevice, VhostUserKind};
use super::VhostUserError;
use crate::virtio::gpu::protocol::RESP_ERR_INVALID_SCANOUT_ID;
use crate::virtio::gpu::protocol::{display_info, edid_response, CtrlHdr, Rect};
use crate::virtio::gpu::{edid, Frame, GpuConfig, VIRTIO_GPU_F_EDID};
use crate::virtio::{features, ids};

/// `VIRTIO_GPU_F_VIRGL`: 3D commands (a back end with virgl rendering).
pub const VIRTIO_GPU_F_VIRGL: u64 = 1 << 0;
/// The display-channel protocol feature petrel has: GET_EDID.
pub const PROTOCOL_F_EDID: u64 = 1 << 0;
/// `struct virtio_gpu_config`: events_read, events_clear, num_scanouts, num_capsets.
const CONFIG_LEN: u32 = 16;

/// A GPU whose queues a vhost-user back end serves: its configuration, the back end's
/// display channel and what it shows.
pub struct VhostUserGpuKind {
    config: GpuConfig,
    channel: Option<Channel>,
    retired: Vec<OwnedFd>,
    screen: Screen,
    /// Scanout 0's buffer while the back end shows it as a DMABUF.
    dmabuf: Option<DmabufScanout>,
    /// Display channels handed to back ends, and messages served on them.
    channels: u64,
    messages: u64,
    /// Messages not applied (bad, misplaced, unknown or too large).
    ignored: u64,
}

impl From<GpuConfig> for VhostUserGpuKind {
    fn from(config: GpuConfig) -> Self {
        VhostUserGpuKind {
            config,
            channel: None,
            retired: Vec::new(),
            screen: Screen::default(),
            dmabuf: None,
            channels: 0,
            messages: 0,
            ignored: 0,
        }
    }
}

/// A virtio-gpu device whose queues a vhost-user back end serves.
pub type VhostUserGpu = VhostUserDevice<VhostUserGpuKind>;

impl VhostUserGpu {
    /// A copy of what the screen shows, None while no scanout is set.
    pub fn frame(&self) -> Option<Frame> {
        self.config().screen.frame()
    }

    /// The cursor as the back end last placed it.
    pub fn pointer(&self) -> Pointer {
        self.config().screen.pointer()
    }

    /// Whether the back end's display channel is open.
    pub fn has_display_channel(&self) -> bool {
        self.config().channel.is_some()
    }
}

impl VhostUserGpuKind {
    /// The configuration.
    pub fn gpu_config(&self) -> &GpuConfig {
        &self.config
    }

    /// Drops the display channel (to be unwatched first).
    fn retire_channel(&mut self) {
        if let Some(old) = self.channel.take() {
            self.retired.push(old.into_socket().into());
        }
    }

    /// The largest payload kept for `request`: an UPDATE of the whole screen, else the
    /// largest fixed-size request.
    fn max_payload(&self, request: u32) -> usize {
        let screen = self
            .screen
            .size()
            .map_or(0, |(w, h)| w as usize * h as usize * 4);
        match request {
            channel::UPDATE => channel::UPDATE_HEADER_LEN + screen,
            _ => channel::MAX_SMALL_PAYLOAD,
        }
    }

    /// Serves one message; Err when the channel must be dropped.
    fn handle(&mut self, msg: Message) -> Result<(), ChannelError> {
        self.messages += 1;
        if msg.discarded > 0 {
            self.ignore(
                msg.request,
                "a message larger than petrel accepts was discarded",
            );
            return self.reply_if_waited_for(msg.request);
        }
        let words: Vec<u32> = msg
            .payload
            .chunks_exact(4)
            .take(5)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (w, h) = (self.config.width, self.config.height);
        match msg.request {
            channel::GET_PROTOCOL_FEATURES => {
                self.reply(msg.request, &PROTOCOL_F_EDID.to_le_bytes())?
            }
            channel::SET_PROTOCOL_FEATURES => {
                tracing::debug!(id = %self.config.id, payload = ?msg.payload, "vhost-user-gpu protocol features set");
            }
            channel::GET_DISPLAY_INFO => {
                self.reply(msg.request, &display_info(&CtrlHdr::default(), w, h))?
            }
            channel::GET_EDID => {
                self.reply(msg.request, &edid_reply(words.first().copied(), w, h))?
            }
            channel::SCANOUT => self.scanout(&words),
            channel::UPDATE => self.update(&words, &msg.payload),
            channel::CURSOR_POS | channel::CURSOR_POS_HIDE | channel::CURSOR_UPDATE => {
                self.cursor(msg.request, &words)
            }
            channel::DMABUF_SCANOUT | channel::DMABUF_SCANOUT2 => {
                self.dmabuf_scanout(msg.request, &msg.payload, msg.fd)
            }
            channel::DMABUF_UPDATE => {
                self.dmabuf_update(&words);
                self.reply(msg.request, &[])?
            }
            other => self.ignore(other, "an unknown request was ignored"),
        }
        Ok(())
    }

    /// SCANOUT: scanout id, width, height.
    fn scanout(&mut self, words: &[u32]) {
        match *words {
            [0, width, height, ..] => {
                self.dmabuf = None;
                if let Err(e) = self.screen.set_mode(width, height) {
                    // The old picture is no longer what the guest shows.
                    self.screen.disable();
                    self.ignore(channel::SCANOUT, &e.to_string());
                }
            }
            [_, _, _, ..] => {}
            _ => self.ignore(channel::SCANOUT, SHORT),
        }
    }

    /// UPDATE: scanout id, x, y, width, height, then the pixels.
    fn update(&mut self, words: &[u32], payload: &[u8]) {
        match *words {
            [0, x, y, width, height] => {
                let rect = Rect {
                    x,
                    y,
                    width,
                    height,
                };
                let pixels = &payload[channel::UPDATE_HEADER_LEN..];
                if let Err(e) = self.screen.update(rect, pixels) {
                    self.ignore(channel::UPDATE, &e.to_string());
                }
            }
            [_, _, _, _, _] => {}
            _ => self.ignore(channel::UPDATE, SHORT),
        }
    }

    /// CURSOR_POS, CURSOR_POS_HIDE: scanout id, x, y; CURSOR_UPDATE: then the hot spot and
    /// the image (not kept).
    fn cursor(&mut self, request: u32, words: &[u32]) {
        let visible = request != channel::CURSOR_POS_HIDE;
        let hot = match (request, words) {
            (channel::CURSOR_UPDATE, [_, _, _, hot_x, hot_y, ..]) => Some((*hot_x, *hot_y)),
            _ => None,
        };
        match *words {
            [0, x, y, ..] => self.screen.move_pointer(x, y, visible, hot),
            [_, _, _, ..] => {}
            _ => self.ignore(request, SHORT),
        }
    }

    /// DMABUF_SCANOUT(2): scanout 0 shows a buffer petrel maps (0x0 blanks it). A buffer
    /// petrel cannot read blanks the screen.
    fn dmabuf_scanout(&mut self, request: u32, payload: &[u8], fd: Option<File>) {
        if payload.get(..4) != Some(&[0; 4][..]) {
            if payload.len() < 4 {
                self.ignore(request, SHORT);
            }
            return;
        }
        let Some(info) = ScanoutInfo::parse(payload, request == channel::DMABUF_SCANOUT2) else {
            return self.ignore(request, SHORT);
        };
        self.dmabuf = None;
        self.screen.disable();
        if info.rect.width == 0 || info.rect.height == 0 {
            return;
        }
        let mapped = fd
            .ok_or(dmabuf::DmabufError::NoFd)
            .and_then(|f| DmabufScanout::map(f, info));
        match mapped {
            Ok(d) => {
                let (width, height) = d.size();
                match self.screen.set_mode(width, height) {
                    Ok(()) => self.dmabuf = Some(d),
                    Err(e) => self.ignore(request, &e.to_string()),
                }
            }
            Err(e) => self.ignore(request, &e.to_string()),
        }
    }

    /// DMABUF_UPDATE: scanout id, then the rectangle (in the buffer) to copy to the screen.
    fn dmabuf_update(&mut self, words: &[u32]) {
        let [0, x, y, width, height] = *words else {
            if words.len() < 5 {
                self.ignore(channel::DMABUF_UPDATE, SHORT);
            }
            return;
        };
        let Some(d) = &self.dmabuf else {
            return self.ignore(channel::DMABUF_UPDATE, "no DMABUF scanout is shown");
        };
        let rect = Rect {
            x,
            y,
            width,
            height,
        };
        let screen = &mut self.screen;
        let done = d.read(&rect, |on_screen, bytes, stride, layout| {
            screen.blit(on_screen, bytes, stride, layout)
        });
        match done {
            Some(Ok(())) => {}
            Some(Err(e)) => self.ignore(channel::DMABUF_UPDATE, &e.to_string()),
            None => self.ignore(channel::DMABUF_UPDATE, "the update is outside the scanout"),
        }
    }

    /// A message petrel did not apply: counted, and logged (the first few as warnings, so
    /// a misbehaving back end cannot flood the log).
    fn ignore(&mut self, request: u32, why: &str) {
        self.ignored += 1;
        if self.ignored <= LOUD_IGNORED {
            tracing::warn!(id = %self.config.id, request, why, "vhost-user-gpu: message not applied");
        } else {
            tracing::debug!(id = %self.config.id, request, why, "vhost-user-gpu: message not applied");
        }
    }

    /// A back end waits for the reply to these requests even when petrel discarded them.
    fn reply_if_waited_for(&mut self, request: u32) -> Result<(), ChannelError> {
        match request {
            channel::GET_PROTOCOL_FEATURES => self.reply(request, &0u64.to_le_bytes()),
            channel::GET_DISPLAY_INFO => {
                let info = display_info(&CtrlHdr::default(), self.config.width, self.config.height);
                self.reply(request, &info)
            }
            channel::GET_EDID => self.reply(request, &edid_reply(None, 0, 0)),
            channel::DMABUF_UPDATE => self.reply(request, &[]),
            _ => Ok(()),
        }
    }

    fn reply(&mut self, request: u32, payload: &[u8]) -> Result<(), ChannelError> {
        match self.channel.as_mut() {
            Some(c) => c.reply(request, payload),
            None => Ok(()),
        }
    }
}

/// Why a request too short for its fields was not applied.
const SHORT: &str = "the request is too short for its fields";
/// Ignored messages logged as warnings; later ones are logged at debug level.
const LOUD_IGNORED: u64 = 16;

/// The reply to GET_EDID for `scanout`: petrel's EDID for scanout 0, an error otherwise (a
/// back end waits for the reply either way).
fn edid_reply(scanout: Option<u32>, width: u32, height: u32) -> Vec<u8> {
    if scanout == Some(0) {
        edid_response(&CtrlHdr::default(), &edid::build(width, height))
    } else {
        let mut reply = edid_response(&CtrlHdr::default(), &[]);
        reply[..4].copy_from_slice(&RESP_ERR_INVALID_SCANOUT_ID.to_le_bytes());
        reply
    }
}

/// What the driver is offered of the back end's `offered` features.
pub fn offered_features(offered: u64) -> Result<u64, VhostUserError> {
    if offered & features::VERSION_1 == 0 {
        return Err(VhostUserError::MissingFeature("VIRTIO_F_VERSION_1"));
    }
    Ok(offered & (features::COMMON | VIRTIO_GPU_F_VIRGL | VIRTIO_GPU_F_EDID))
}

/// The config space: the back end's `num_capsets` (0 when it has no config space), one
/// scanout, no events.
pub fn config_space(backend: Option<&[u8]>) -> Vec<u8> {
    let mut space = vec![0u8; CONFIG_LEN as usize];
    space[8..12].copy_from_slice(&1u32.to_le_bytes());
    if let Some(capsets) = backend.and_then(|b| b.get(12..16)) {
        space[12..16].copy_from_slice(capsets);
    }
    space
}

impl VhostUserKind for VhostUserGpuKind {
    const DEVICE_TYPE: u32 = ids::GPU;
    /// The control queue, then the cursor queue.
    const QUEUE_SIZES: &'static [u16] = &[256, 256];

    /// The back end holds the guest's resources (their pixels, backing and ids), and
    /// nothing in the protocol moves them.
    const UNSAVABLE: Option<&'static str> =
        Some("its vhost-user back end holds the GPU's resources, which cannot be saved or moved");

    fn id(&self) -> &str {
        &self.config.id
    }

    fn socket(&self) -> &Path {
        self.config.socket.as_deref().unwrap_or(Path::new(""))
    }

    fn set_socket(&mut self, socket: PathBuf) {
        self.config.socket = Some(socket);
    }

    fn probe(&mut self, conn: &mut Connection) -> Result<(u64, Vec<u8>), VhostUserError> {
        let features = offered_features(conn.features())?;
        let backend_space = if conn.has_config() {
            Some(conn.config(CONFIG_LEN)?)
        } else {
            None
        };
        let os = |source| VhostUserError::Os {
            what: "the vhost-user-gpu display channel",
            source,
        };
        let (ours, theirs) = UnixStream::pair().map_err(os)?;
        conn.set_gpu_socket(&theirs)?;
        drop(theirs);
        self.retire_channel();
        self.channel = Some(Channel::new(ours).map_err(os)?);
        self.channels += 1;
        Ok((features, config_space(backend_space.as_deref())))
    }

    fn channel(&self) -> Option<RawFd> {
        self.channel.as_ref().map(|c| c.socket().as_raw_fd())
    }

    fn retired_channels(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.retired)
    }

    fn channel_ready(&mut self) {
        let mut budget = channel::BYTES_PER_PASS;
        for _ in 0..channel::MESSAGES_PER_PASS {
            let update_max = self.max_payload(channel::UPDATE);
            let limits = move |request| match request {
                channel::UPDATE => update_max,
                _ => channel::MAX_SMALL_PAYLOAD,
            };
            let Some(ch) = self.channel.as_mut() else {
                return;
            };
            let next = ch.next_message(limits, &mut budget);
            let result = match next {
                Ok(Some(msg)) => self.handle(msg),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                match e {
                    ChannelError::Closed => {
                        tracing::debug!(id = %self.config.id, "vhost-user-gpu display channel closed")
                    }
                    e => {
                        tracing::warn!(id = %self.config.id, %e, "vhost-user-gpu display channel dropped")
                    }
                }
                self.retire_channel();
                return;
            }
        }
    }

    fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert(
            "gpu_display_channel_open".into(),
            self.channel.is_some().into(),
        );
        m.insert("gpu_display_channels".into(), self.channels.into());
        m.insert("gpu_display_messages".into(), self.messages.into());
        m.insert("gpu_display_ignored".into(), self.ignored.into());
        m
    }

    fn reset(&mut self) {
        // The driver's resources are gone: the screen goes blank, as with the built-in GPU.
        self.dmabuf = None;
        self.screen.disable();
    }
}

#[cfg(test)]
mod tests;
