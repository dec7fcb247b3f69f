//! Saving and restoring a GPU: its configuration, every resource (format, size, backing
//! list and pixels), the scanout, the front buffer with its generation, the cursor and
//! `events_read`. The transport saves the queues and activates the restored device.

use serde::{Deserialize, Serialize};

use super::device::Gpu;
use super::protocol::format_layout;
use super::resources::{size_of, Resource, MAX_BACKING_ENTRIES};
use super::scanout::{Cursor, Front, Scanout};
use super::{GpuConfig, GpuError};

/// One resource's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceState {
    pub id: u32,
    pub format: u32,
    pub width: u32,
    pub height: u32,
    /// Guest (address, length) pairs.
    pub backing: Vec<(u64, u32)>,
    /// The host copy, `width * height * 4` bytes in the resource's format.
    pub pixels: Vec<u8>,
}

/// A GPU's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuState {
    pub config: GpuConfig,
    pub resources: Vec<ResourceState>,
    pub scanout: Option<Scanout>,
    /// The front buffer's RGBA pixels (the scanout rectangle's size); empty without one.
    pub front: Vec<u8>,
    pub generation: u64,
    pub cursor: Cursor,
    pub events_read: u32,
}

impl Gpu {
    /// The GPU's state. The device must be quiescent (vCPUs paused).
    pub fn save(&self) -> GpuState {
        GpuState {
            config: self.config.clone(),
            resources: self
                .resources
                .map
                .iter()
                .map(|(&id, r)| ResourceState {
                    id,
                    format: r.format,
                    width: r.width,
                    height: r.height,
                    backing: r.backing.clone(),
                    pixels: r.pixels.clone(),
                })
                .collect(),
            scanout: self.scanout,
            front: self
                .front
                .as_ref()
                .map(|f| f.rgba.clone())
                .unwrap_or_default(),
            generation: self.generation,
            cursor: self.cursor,
            events_read: self.events_read,
        }
    }

    /// A GPU rebuilt from `state`, not yet activated. Everything is checked as a driver's
    /// commands would be: a state that does not hold together is an error, never a panic.
    pub fn restore(state: &GpuState) -> Result<Self, GpuError> {
        let err = |reason: String| GpuError::State {
            id: state.config.id.clone(),
            reason,
        };
        state.config.validate()?;
        let mut gpu = Gpu::new(state.config.clone());
        for r in &state.resources {
            let layout = format_layout(r.format)
                .ok_or_else(|| err(format!("resource {}: format {}", r.id, r.format)))?;
            let size = size_of(r.width, r.height)
                .ok_or_else(|| err(format!("resource {}: bad size", r.id)))?;
            if r.id == 0 || gpu.resources.map.contains_key(&r.id) {
                return Err(err(format!("resource id {} is 0 or repeated", r.id)));
            }
            if r.pixels.len() as u64 != size {
                return Err(err(format!("resource {}: pixel data size", r.id)));
            }
            if r.backing.len() > MAX_BACKING_ENTRIES as usize {
                return Err(err(format!("resource {}: backing entries", r.id)));
            }
            let resource = Resource {
                format: r.format,
                layout,
                width: r.width,
                height: r.height,
                pixels: r.pixels.clone(),
                backing: r.backing.clone(),
            };
            if gpu.resources.reserve(resource.host_bytes()).is_err() {
                return Err(err("resources exceed max_memory".into()));
            }
            gpu.resources.insert(r.id, resource);
        }
        if let Some(s) = state.scanout {
            let res = gpu
                .resources
                .get(s.resource_id)
                .map_err(|e| err(format!("scanout: {e}")))?;
            if !s.rect.fits_in(res.width, res.height) {
                return Err(err("scanout rectangle outside its resource".into()));
            }
            let len = s.rect.width as usize * s.rect.height as usize * 4;
            if state.front.len() != len {
                return Err(err("front buffer size".into()));
            }
            gpu.front = Some(Front {
                width: s.rect.width,
                height: s.rect.height,
                rgba: state.front.clone(),
            });
        } else if !state.front.is_empty() {
            return Err(err("front buffer without a scanout".into()));
        }
        gpu.scanout = state.scanout;
        gpu.generation = state.generation;
        gpu.cursor = state.cursor;
        gpu.events_read = state.events_read;
        Ok(gpu)
    }
}
