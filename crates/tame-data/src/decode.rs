//! Image files to 8-bit RGB, the way Pillow's `Image.open(path).convert("RGB")` does it.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::{DynamicImage, ImageReader, RgbImage};

use crate::error::DecodeError;

/// Decodes an image file to 8-bit RGB; only a regular file is read.
///
/// The format is guessed from the content, not the extension (ILSVRC has PNG files named
/// `.JPEG`). Conversion follows Pillow's `convert("RGB")`: alpha is dropped (not blended),
/// grey is replicated, CMYK JPEGs are converted as Pillow converts Adobe (inverted) CMYK,
/// within one level, and EXIF orientation is ignored. JPEG pixels may differ from
/// libjpeg-turbo's by a few levels (chroma upsampling and colour conversion rounding).
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, DecodeError> {
    let path = path.as_ref();
    let read = |source| DecodeError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A FIFO would block and a device such as /dev/zero would be read without end.
    if !std::fs::metadata(path).map_err(read)?.is_file() {
        return Err(DecodeError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let file = std::fs::File::open(path).map_err(read)?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(read)?;
    let image = reader.decode().map_err(|source| DecodeError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(to_rgb(image))
}

/// Decodes an in-memory image (any supported format) to 8-bit RGB, as [`load_rgb`] does.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, image::ImageError> {
    let image = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()?
        .decode()?;
    Ok(to_rgb(image))
}

/// Pillow's `convert("RGB")` on what Pillow would have opened.
///
/// The image crate rounds 16-bit samples to 8 bits; Pillow opens 16-bit RGB(A) and
/// grey+alpha PNGs by keeping the high byte, and 16-bit grey PNGs as mode `I;16`, whose
/// conversion to RGB saturates at 255. Everything else (8-bit, palette, CMYK JPEG, which
/// the decoder already turns into RGB) is what `into_rgb8` gives.
fn to_rgb(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let from_u16 = |samples: &[u16], channels: usize, map: fn(u16) -> u8| {
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for px in samples.chunks_exact(channels) {
            if channels >= 3 {
                rgb.extend(px[..3].iter().map(|&v| map(v)));
            } else {
                let v = map(px[0]);
                rgb.extend([v, v, v]);
            }
        }
        RgbImage::from_raw(w, h, rgb)
    };
    let high_byte = |v: u16| (v >> 8) as u8;
    let saturate = |v: u16| v.min(255) as u8;
    let converted = match &image {
        DynamicImage::ImageRgb16(im) => from_u16(im.as_raw(), 3, high_byte),
        DynamicImage::ImageRgba16(im) => from_u16(im.as_raw(), 4, high_byte),
        DynamicImage::ImageLumaA16(im) => from_u16(im.as_raw(), 2, high_byte),
        DynamicImage::ImageLuma16(im) => from_u16(im.as_raw(), 1, saturate),
        _ => None,
    };
    // `from_raw` only fails on a length mismatch, which the chunking above rules out.
    converted.unwrap_or_else(|| image.into_rgb8())
}
