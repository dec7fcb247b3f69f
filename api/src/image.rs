//! Screenshots: the VMM thread hands over a copy of the screen as RGBA8 ([`RawImage`]); the
//! API thread encodes it as PNG ([`encode_png`]) so that the VMM thread never spends its
//! time compressing.

/// The response header carrying the frame's generation.
pub const GENERATION_HEADER: &str = "x-petrel-generation";
/// The content type of a screenshot.
pub const PNG_CONTENT_TYPE: &str = "image/png";

/// A copy of the screen for the API thread to encode. Its `Debug` leaves the pixels out
/// (the VMM thread logs answers).
#[derive(Clone, PartialEq, Eq)]
pub struct RawImage {
    pub width: u32,
    pub height: u32,
    /// `width * height` RGBA8 pixels, row by row.
    pub rgba: Vec<u8>,
    /// The frame's generation (increments with each change of the picture).
    pub generation: u64,
}

impl std::fmt::Debug for RawImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Why an image could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The pixel data does not match the size.
    #[error("{len} bytes of pixels for a {width}x{height} RGBA image")]
    Size { width: u32, height: u32, len: usize },
    /// The PNG encoder failed.
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// `image` as a PNG (8-bit RGBA, no interlacing) at `compression`.
pub fn encode_png(image: &RawImage, compression: png::Compression) -> Result<Vec<u8>, ImageError> {
    let expected = image.width as usize * image.height as usize * 4;
    if image.rgba.len() != expected || image.width == 0 || image.height == 0 {
        return Err(ImageError::Size {
            width: image.width,
            height: image.height,
            len: image.rgba.len(),
        });
    }
    let mut out = Vec::with_capacity(expected / 4 + 1024);
    {
        let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(compression);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&image.rgba)?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_the_pixels() {
        let rgba: Vec<u8> = (0..5 * 3 * 4).map(|i| (i * 7) as u8).collect();
        let image = RawImage {
            width: 5,
            height: 3,
            rgba: rgba.clone(),
            generation: 9,
        };
        for level in [
            png::Compression::Fast,
            png::Compression::Default,
            png::Compression::Best,
        ] {
            let bytes = encode_png(&image, level).unwrap();
            let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (5, 3));
            assert_eq!(info.color_type, png::ColorType::Rgba);
            assert_eq!(&buf[..info.buffer_size()], &rgba[..]);
        }
    }

    #[test]
    fn mismatched_sizes_are_errors() {
        let image = RawImage {
            width: 5,
            height: 3,
            rgba: vec![0; 10],
            generation: 0,
        };
        assert!(matches!(
            encode_png(&image, png::Compression::Fast),
            Err(ImageError::Size { .. })
        ));
    }
}
