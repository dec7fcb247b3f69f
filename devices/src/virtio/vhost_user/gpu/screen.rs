//! What a vhost-user-gpu back end shows: the front buffer of scanout 0 as the back end sends
//! it (SCANOUT sets its size, UPDATE its pixels), and the cursor.

use crate::virtio::gpu::protocol::{Layout, Rect};
use crate::virtio::gpu::{Frame, Front, MAX_SIZE};

/// What UPDATE carries: B, G, R, X bytes.
const X8R8G8B8: Layout = Layout {
    r: 2,
    g: 1,
    b: 0,
    a: None,
};

/// The cursor as the back end last placed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pointer {
    pub x: u32,
    pub y: u32,
    pub hot_x: u32,
    pub hot_y: u32,
    pub visible: bool,
}

/// Why a message about the screen was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScreenError {
    #[error("a {0}x{1} scanout is outside 1..={MAX_SIZE} on a side")]
    Size(u32, u32),
    #[error("no memory for a {0}x{1} screen")]
    NoMemory(u32, u32),
    #[error("an update arrived before any scanout was set")]
    NoScanout,
    #[error("update {0:?} has nothing inside the {1}x{2} screen")]
    Outside(Rect, u32, u32),
    #[error("update {0:?} carries {1} bytes of pixels, not 4 per pixel")]
    Pixels(Rect, usize),
}

/// Scanout 0's picture and the cursor.
#[derive(Default)]
pub struct Screen {
    front: Option<Front>,
    generation: u64,
    pointer: Pointer,
}

impl Screen {
    /// A copy of the picture, None while no scanout is set.
    pub fn frame(&self) -> Option<Frame> {
        self.front.as_ref().map(|f| f.frame(self.generation))
    }

    /// The cursor.
    pub fn pointer(&self) -> Pointer {
        self.pointer
    }

    /// The size of the screen (for bounding what the back end may send), if any.
    pub fn size(&self) -> Option<(u32, u32)> {
        self.front.as_ref().map(|f| (f.width, f.height))
    }

    /// SCANOUT: a new mode, black until updated; 0x0 disables the scanout.
    pub fn set_mode(&mut self, width: u32, height: u32) -> Result<(), ScreenError> {
        if width == 0 || height == 0 {
            self.disable();
            return Ok(());
        }
        if width > MAX_SIZE || height > MAX_SIZE {
            return Err(ScreenError::Size(width, height));
        }
        let len = width as usize * height as usize * 4;
        let mut rgba = Vec::new();
        rgba.try_reserve_exact(len)
            .map_err(|_| ScreenError::NoMemory(width, height))?;
        rgba.resize(len, 0);
        for pixel in rgba.chunks_exact_mut(4) {
            pixel[3] = 0xff;
        }
        self.front = Some(Front {
            width,
            height,
            rgba,
        });
        self.generation += 1;
        Ok(())
    }

    /// The scanout shows nothing (disabled, a reset, or a picture petrel cannot read).
    pub fn disable(&mut self) {
        if self.front.take().is_some() {
            self.generation += 1;
        }
    }

    /// UPDATE: `pixels` (x8r8g8b8, that is B, G, R, X bytes) for `rect`, clipped to the
    /// screen (a back end sends the flushed rectangle in the resource's coordinates, which
    /// can reach past a scanout smaller than its resource, as QEMU's front end clips too).
    pub fn update(&mut self, rect: Rect, pixels: &[u8]) -> Result<(), ScreenError> {
        let front = self.front.as_ref().ok_or(ScreenError::NoScanout)?;
        let row = rect.width as usize * 4;
        if pixels.len() != row * rect.height as usize {
            return Err(ScreenError::Pixels(rect, pixels.len()));
        }
        let right = (u64::from(rect.x) + u64::from(rect.width)).min(u64::from(front.width));
        let bottom = (u64::from(rect.y) + u64::from(rect.height)).min(u64::from(front.height));
        if right <= u64::from(rect.x) || bottom <= u64::from(rect.y) {
            return Err(ScreenError::Outside(rect, front.width, front.height));
        }
        let shown = Rect {
            width: right as u32 - rect.x,
            height: bottom as u32 - rect.y,
            ..rect
        };
        self.blit(shown, pixels, row, X8R8G8B8)
    }

    /// Copies `rect` of the screen from `src`: rows `stride` bytes apart, each pixel 4 bytes
    /// in `layout`'s order (shown opaque).
    pub fn blit(
        &mut self,
        rect: Rect,
        src: &[u8],
        stride: usize,
        layout: Layout,
    ) -> Result<(), ScreenError> {
        let front = self.front.as_mut().ok_or(ScreenError::NoScanout)?;
        if !rect.fits_in(front.width, front.height) {
            return Err(ScreenError::Outside(rect, front.width, front.height));
        }
        let row = rect.width as usize * 4;
        let rows = rect.height as usize;
        if src.len() < (rows - 1) * stride + row {
            return Err(ScreenError::Pixels(rect, src.len()));
        }
        let dst_stride = front.width as usize * 4;
        for i in 0..rows {
            let from = &src[i * stride..i * stride + row];
            let at = (rect.y as usize + i) * dst_stride + rect.x as usize * 4;
            let to = &mut front.rgba[at..at + row];
            for (s, d) in from.chunks_exact(4).zip(to.chunks_exact_mut(4)) {
                d.copy_from_slice(&[s[layout.r], s[layout.g], s[layout.b], 0xff]);
            }
        }
        self.generation += 1;
        Ok(())
    }

    /// CURSOR_POS, CURSOR_POS_HIDE and CURSOR_UPDATE's position (and hot spot).
    pub fn move_pointer(&mut self, x: u32, y: u32, visible: bool, hot: Option<(u32, u32)>) {
        self.pointer.x = x;
        self.pointer.y = y;
        self.pointer.visible = visible;
        if let Some((hot_x, hot_y)) = hot {
            self.pointer.hot_x = hot_x;
            self.pointer.hot_y = hot_y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn a_mode_is_black_and_opaque_then_updates_land_as_rgba() {
        let mut s = Screen::default();
        assert!(s.frame().is_none());
        s.set_mode(4, 2).unwrap();
        let f = s.frame().unwrap();
        assert_eq!((f.width, f.height, f.generation), (4, 2, 1));
        assert!(f.rgba.chunks(4).all(|p| p == [0, 0, 0, 0xff]));
        // Two pixels at (1, 1): B, G, R, X each.
        s.update(rect(1, 1, 2, 1), &[1, 2, 3, 0, 4, 5, 6, 0])
            .unwrap();
        let f = s.frame().unwrap();
        assert_eq!(f.generation, 2);
        assert_eq!(
            &f.rgba[(4 + 1) * 4..(4 + 3) * 4],
            &[3, 2, 1, 0xff, 6, 5, 4, 0xff]
        );
        assert_eq!(&f.rgba[..4], &[0, 0, 0, 0xff]);
    }

    #[test]
    fn bad_updates_and_modes_are_refused_and_change_nothing() {
        let mut s = Screen::default();
        assert_eq!(
            s.update(rect(0, 0, 1, 1), &[0; 4]),
            Err(ScreenError::NoScanout)
        );
        assert!(matches!(
            s.set_mode(MAX_SIZE + 1, 1),
            Err(ScreenError::Size(..))
        ));
        s.set_mode(4, 4).unwrap();
        for r in [
            rect(4, 0, 2, 1),
            rect(0, 4, 1, 1),
            rect(u32::MAX, 0, 2, 1),
            rect(0, 0, 0, 1),
        ] {
            let len = r.width as usize * r.height as usize * 4;
            assert!(matches!(
                s.update(r, &vec![0; len.min(64)]),
                Err(ScreenError::Outside(..))
            ));
        }
        assert!(matches!(
            s.update(rect(0, 0, 2, 2), &[0; 15]),
            Err(ScreenError::Pixels(..))
        ));
        assert_eq!(s.frame().unwrap().generation, 1);
        s.set_mode(0, 0).unwrap();
        assert!(s.frame().is_none());
    }

    #[test]
    fn an_update_reaching_past_the_screen_is_clipped_to_it() {
        let mut s = Screen::default();
        s.set_mode(2, 2).unwrap();
        // 3x3 at (1, 1): only its top-left pixel, (1, 1), is on the screen.
        let pixels: Vec<u8> = (0..9u8).flat_map(|i| [i, i, i, 0]).collect();
        s.update(rect(1, 1, 3, 3), &pixels).unwrap();
        let f = s.frame().unwrap();
        assert_eq!(f.generation, 2);
        assert_eq!(&f.rgba[12..16], &[0, 0, 0, 0xff]);
        s.update(rect(0, 1, 3, 1), &pixels[..12]).unwrap();
        let f = s.frame().unwrap();
        assert_eq!(&f.rgba[8..16], &[0, 0, 0, 0xff, 1, 1, 1, 0xff]);
        assert_eq!(&f.rgba[..8], &[0, 0, 0, 0xff, 0, 0, 0, 0xff]);
    }
}
