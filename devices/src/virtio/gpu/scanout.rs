//! The one scanout: which resource it shows, and the front buffer — the picture a person
//! (or a screenshot) sees. The front buffer changes only on SET_SCANOUT (the whole
//! picture) and RESOURCE_FLUSH (the flushed rectangle), each time with a new generation.
//! The cursor is kept beside it.

use serde::{Deserialize, Serialize};

use super::protocol::Rect;
use super::resources::Resource;

/// What the scanout shows: `rect` of resource `resource_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scanout {
    pub resource_id: u32,
    pub rect: Rect,
}

/// A copy of the screen: `width * height` RGBA8 pixels, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
    /// Increments with every change of the picture; 0 before the first.
    pub generation: u64,
}

/// The front buffer, sized as the scanout's rectangle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Front {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

impl Front {
    /// A copy of the picture, as the `generation`th change of the screen.
    pub fn frame(&self, generation: u64) -> Frame {
        Frame {
            width: self.width,
            height: self.height,
            rgba: self.rgba.clone(),
            generation,
        }
    }

    /// The whole of `scanout.rect` of `resource`; None if its memory cannot be had.
    pub fn of(scanout: &Scanout, resource: &Resource) -> Option<Front> {
        let r = scanout.rect;
        let len = r.width as usize * r.height as usize * 4;
        let mut rgba = Vec::new();
        rgba.try_reserve_exact(len).ok()?;
        rgba.resize(len, 0);
        resource.copy_rgba(&r, &mut rgba, r.width as usize * 4, 0, 0);
        Some(Front {
            width: r.width,
            height: r.height,
            rgba,
        })
    }

    /// Copies the part of `flushed` (resource coordinates) the scanout shows; returns
    /// whether anything changed place.
    pub fn update(&mut self, scanout: &Scanout, resource: &Resource, flushed: &Rect) -> bool {
        let Some(part) = flushed.intersect(&scanout.rect) else {
            return false;
        };
        let stride = self.width as usize * 4;
        let (dx, dy) = (part.x - scanout.rect.x, part.y - scanout.rect.y);
        resource.copy_rgba(&part, &mut self.rgba, stride, dx, dy);
        true
    }
}

/// The cursor (cursor queue): where it is, its hot spot, and the resource it shows
/// (0: hidden).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub resource_id: u32,
    pub x: u32,
    pub y: u32,
    pub hot_x: u32,
    pub hot_y: u32,
}
