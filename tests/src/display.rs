//! Screenshots: `GET /display/screenshot` fetched and decoded, for the GPU and snapshot tests.

use crate::api_vm::ApiVm;

/// A decoded screenshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    /// RGBA8, row by row.
    pub rgba: Vec<u8>,
    /// The display's generation (`x-petrel-generation`): how many times the picture changed.
    pub generation: u64,
}

impl Screenshot {
    /// The RGBA of pixel (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        let at = ((y * self.width + x) * 4) as usize;
        self.rgba[at..at + 4].try_into().expect("4 bytes")
    }

    /// The first pixel that differs from `want(x, y)`, as `(x, y, found, wanted)`.
    pub fn first_difference(
        &self,
        want: impl Fn(u32, u32) -> [u8; 4],
    ) -> Option<(u32, u32, [u8; 4], [u8; 4])> {
        (0..self.height)
            .flat_map(|y| (0..self.width).map(move |x| (x, y)))
            .map(|(x, y)| (x, y, self.pixel(x, y), want(x, y)))
            .find(|(_, _, found, wanted)| found != wanted)
    }
}

/// Decodes a PNG: (width, height, RGBA8 pixels). Panics unless it is 8-bit RGBA.
pub fn decode_png(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert_eq!(info.color_type, png::ColorType::Rgba);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// `petrel ctl screenshot FILE` on `vm`, asserting it succeeds: the PNG it wrote, decoded.
pub fn ctl_screenshot(vm: &ApiVm) -> (u32, u32, Vec<u8>) {
    let file = vm.path("screen.png");
    let out = std::process::Command::new(crate::petrel())
        .args(["ctl", "--api-sock"])
        .arg(vm.socket())
        .arg("screenshot")
        .arg(&file)
        .output()
        .expect("petrel ctl screenshot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    decode_png(&std::fs::read(&file).expect("the screenshot file"))
}

/// `GET /display/screenshot`, asserting a 200 with a PNG and a generation header.
pub fn screenshot(vm: &ApiVm) -> Screenshot {
    let r = api::Client::new(vm.socket())
        .get_bytes("/display/screenshot")
        .expect("screenshot request");
    assert_eq!(r.status, 200, "screenshot: {}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    let generation = r
        .header("x-petrel-generation")
        .and_then(|g| g.parse().ok())
        .expect("x-petrel-generation header");
    let (width, height, rgba) = decode_png(&r.body);
    Screenshot {
        width,
        height,
        rgba,
        generation,
    }
}

/// The picture the test guest's `gpu` scenario draws (resources/guest/src/scenarios/gpu.rs),
/// for any GPU that shows it.
pub mod gpu_pattern {
    /// What the guest XORs into red and blue inside the sub-rectangle of frame 2.
    pub const SALT: u8 = 0x5a;

    /// The pattern's RGBA at (x, y) with `salt`.
    pub fn pattern(x: u32, y: u32, salt: u8) -> [u8; 4] {
        [
            (x.wrapping_mul(3) as u8) ^ salt,
            y.wrapping_mul(5) as u8,
            (x.wrapping_add(y) as u8) ^ salt,
            0xff,
        ]
    }

    /// Whether (x, y) is in the sub-rectangle frame 2 changes, on a `w` x `h` screen.
    pub fn in_sub_rectangle(x: u32, y: u32, w: u32, h: u32) -> bool {
        (w / 4..w / 4 + w / 2).contains(&x) && (h / 4..h / 4 + h / 2).contains(&y)
    }

    /// Frame 1: the whole pattern.
    pub fn frame1(x: u32, y: u32) -> [u8; 4] {
        pattern(x, y, 0)
    }

    /// Frame 2 on a `w` x `h` screen: the sub-rectangle salted.
    pub fn frame2(w: u32, h: u32) -> impl Fn(u32, u32) -> [u8; 4] {
        move |x, y| {
            let salt = if in_sub_rectangle(x, y, w, h) {
                SALT
            } else {
                0
            };
            pattern(x, y, salt)
        }
    }
}
