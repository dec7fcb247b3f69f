//! virtio-gpu (virtio 1.2, section 5.7), 2D only, with one scanout.
//!
//! - Queues: `controlq` (0) and `cursorq` (1), 256 entries each. Feature
//!   `VIRTIO_GPU_F_EDID`. Config space: `events_read`, `events_clear` (writable: clears
//!   bits of `events_read`), `num_scanouts` = 1, `num_capsets` = 0.
//! - Control queue: GET_DISPLAY_INFO, GET_EDID, RESOURCE_CREATE_2D (the eight 32-bit
//!   formats), RESOURCE_UNREF, SET_SCANOUT, RESOURCE_FLUSH, TRANSFER_TO_HOST_2D,
//!   RESOURCE_ATTACH_BACKING, RESOURCE_DETACH_BACKING. Cursor queue: UPDATE_CURSOR,
//!   MOVE_CURSOR. Every command completes before its response is written, so a fenced
//!   command's response (flag and fence id echoed) is its fence.
//! - Resources' pixels live in host memory, at most [`GpuConfig::max_memory`] bytes in
//!   all; a RESOURCE_CREATE_2D past that is answered ERR_OUT_OF_MEMORY.
//! - Errors per the spec: an unknown resource id gets ERR_INVALID_RESOURCE_ID, a scanout
//!   other than 0 ERR_INVALID_SCANOUT_ID, a rectangle outside its resource, an overflowing
//!   size, a bad format, backing outside guest memory or a request too short for its
//!   command ERR_INVALID_PARAMETER, an unknown command ERR_UNSPEC. A chain with buffers
//!   outside guest memory is used with length 0 and counted in
//!   [`GpuMetrics::malformed`].
//! - The front buffer (the picture a screenshot or the web console shows) changes only on
//!   SET_SCANOUT and RESOURCE_FLUSH; [`Gpu::frame`] copies it as RGBA8 with a generation
//!   that increments on each change.

mod commands;
mod device;
pub mod edid;
mod metrics;
mod persist;
pub mod protocol;
mod resources;
mod scanout;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use device::Gpu;
pub use metrics::GpuMetrics;
pub use persist::{GpuState, ResourceState};
pub(crate) use scanout::Front;
pub use scanout::{Cursor, Frame, Scanout};

/// Feature bit: GET_EDID is supported.
pub const VIRTIO_GPU_F_EDID: u64 = 1 << 1;
/// `events_read` bit: the display configuration changed.
pub const EVENT_DISPLAY: u32 = 1 << 0;
/// Entries in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Smallest width or height of the display.
pub const MIN_SIZE: u32 = 16;
/// Largest width or height: an EDID detailed timing holds 12 bits.
pub const MAX_SIZE: u32 = 4095;
/// The display size when none is given.
pub const DEFAULT_SIZE: (u32, u32) = (1280, 800);
/// Host memory for resources when none is given.
pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;
/// Smallest memory cap accepted (1 MiB).
pub const MIN_MAX_MEMORY: u64 = 1 << 20;

/// One GPU's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    /// A name for logs, metrics and the API.
    #[serde(default = "default_id")]
    pub id: String,
    /// The display's width in pixels.
    #[serde(default = "default_width")]
    pub width: u32,
    /// The display's height in pixels.
    #[serde(default = "default_height")]
    pub height: u32,
    /// The most host memory, in bytes, all resources' pixels may take (built-in GPU only).
    #[serde(default = "default_max_memory")]
    pub max_memory: u64,
    /// Who serves the device's queues: petrel itself, or a vhost-user back end.
    #[serde(default, skip_serializing_if = "GpuBackend::is_builtin")]
    pub backend: GpuBackend,
    /// The vhost-user back end's Unix socket (with `backend` `vhost-user` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// Who serves a GPU's queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuBackend {
    /// petrel's own 2D GPU.
    #[default]
    Builtin,
    /// A vhost-user-gpu back end (such as QEMU's `vhost-user-gpu`) at `socket`.
    VhostUser,
}

impl GpuBackend {
    fn is_builtin(&self) -> bool {
        *self == GpuBackend::Builtin
    }
}

impl std::str::FromStr for GpuBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "builtin" => Ok(GpuBackend::Builtin),
            "vhost-user" => Ok(GpuBackend::VhostUser),
            _ => Err("expected builtin or vhost-user".into()),
        }
    }
}

fn default_id() -> String {
    "gpu0".into()
}
fn default_width() -> u32 {
    DEFAULT_SIZE.0
}
fn default_height() -> u32 {
    DEFAULT_SIZE.1
}
fn default_max_memory() -> u64 {
    DEFAULT_MAX_MEMORY
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            id: default_id(),
            width: default_width(),
            height: default_height(),
            max_memory: default_max_memory(),
            backend: GpuBackend::Builtin,
            socket: None,
        }
    }
}

/// A GPU configuration or saved state that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The display size is out of range.
    #[error("gpu {id}: {width}x{height} is not a display size: each side must be {MIN_SIZE} to {MAX_SIZE}")]
    Size { id: String, width: u32, height: u32 },
    /// The memory cap is too small.
    #[error("gpu {id}: max_memory {max} is below the minimum of {MIN_MAX_MEMORY} bytes")]
    MaxMemory { id: String, max: u64 },
    /// `backend` `vhost-user` without a socket, or a socket for the built-in GPU.
    #[error("gpu {id}: {reason}")]
    Backend { id: String, reason: &'static str },
    /// A saved state does not hold together.
    #[error("gpu {id}: saved state: {reason}")]
    State { id: String, reason: String },
}

impl GpuConfig {
    /// Checks the size and the memory cap.
    pub fn validate(&self) -> Result<(), GpuError> {
        let side = MIN_SIZE..=MAX_SIZE;
        if !side.contains(&self.width) || !side.contains(&self.height) {
            return Err(GpuError::Size {
                id: self.id.clone(),
                width: self.width,
                height: self.height,
            });
        }
        match (self.backend, &self.socket) {
            (GpuBackend::VhostUser, None) => {
                return Err(GpuError::Backend {
                    id: self.id.clone(),
                    reason: "backend vhost-user needs socket=PATH (the back end's Unix socket)",
                })
            }
            (GpuBackend::Builtin, Some(_)) => {
                return Err(GpuError::Backend {
                    id: self.id.clone(),
                    reason: "socket= is for backend=vhost-user only",
                })
            }
            _ => {}
        }
        if self.max_memory < MIN_MAX_MEMORY {
            return Err(GpuError::MaxMemory {
                id: self.id.clone(),
                max: self.max_memory,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
