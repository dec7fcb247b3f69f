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
