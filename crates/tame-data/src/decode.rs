//! Image files to 8-bit RGB, the way Pillow's `Image.open(path).convert("RGB")` does it.

use std::fs;
use std::io::{self, Cursor};
use std::path::Path;

use image::{DynamicImage, ImageError, ImageFormat, ImageReader, ImageResult, Limits, RgbImage};

use crate::error::DecodeError;

/// The largest width or height [`load_rgb`] decodes: a 388 KB PNG can declare 20000x20000
/// pixels, 1.6 GB once decoded.
pub const DEFAULT_MAX_IMAGE_SIDE: u32 = 16384;

/// Decodes an image file to 8-bit RGB; only a regular file is read.
///
/// The format is guessed from the content, not the extension (ILSVRC has PNG files named
/// `.JPEG`). Conversion follows Pillow's `convert("RGB")`: alpha is dropped (not blended),
/// grey is replicated, CMYK JPEGs are converted as Pillow converts Adobe (inverted) CMYK,
/// within one level, and EXIF orientation is ignored. JPEG pixels may differ from
/// libjpeg-turbo's by a few levels (chroma upsampling and colour conversion rounding).
///
/// A truncated file is [`DecodeError::Truncated`], as Pillow (13.0) refuses it: a JPEG cut
/// anywhere before its end-of-image marker (the marker alone included), which the decoder
/// underneath would fill with grey, and a PNG cut inside its image data. Bytes after a
/// JPEG's end-of-image marker are ignored, as Pillow ignores them. Unlike Pillow, a PNG
/// that lacks only its final (empty) IEND chunk is refused too.
///
/// Images wider or taller than [`DEFAULT_MAX_IMAGE_SIDE`] are refused before their pixels
/// are allocated (see [`load_rgb_within`]).
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, DecodeError> {
    load_rgb_within(path, DEFAULT_MAX_IMAGE_SIDE)
}

/// [`load_rgb`] with another limit on the width and height: a larger image is
/// [`DecodeError::TooLarge`], refused from its header before its pixels are allocated.
pub fn load_rgb_within(path: impl AsRef<Path>, max_side: u32) -> Result<RgbImage, DecodeError> {
    let path = path.as_ref();
    let read = |source| DecodeError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A FIFO would block and a device such as /dev/zero would be read without end.
    if !fs::metadata(path).map_err(read)?.is_file() {
        return Err(DecodeError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let bytes = fs::read(path).map_err(read)?;
    let image = decode(&bytes, max_side).map_err(|source| match source {
        ImageError::Limits(_) => match dimensions(&bytes) {
            Some((width, height)) if width.max(height) > max_side => DecodeError::TooLarge {
                path: path.to_path_buf(),
                width,
                height,
                max_side,
            },
            _ => DecodeError::Decode {
                path: path.to_path_buf(),
                source,
            },
        },
        ImageError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated {
                path: path.to_path_buf(),
            }
        }
        source => DecodeError::Decode {
            path: path.to_path_buf(),
            source,
        },
    })?;
    Ok(to_rgb(image))
}

/// Decodes an in-memory image (any supported format) to 8-bit RGB, as [`load_rgb`] does; a
/// truncated image is an I/O error of kind `UnexpectedEof`, one too large a limits error.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    decode(bytes, DEFAULT_MAX_IMAGE_SIDE).map(to_rgb)
}

fn decode(bytes: &[u8], max_side: u32) -> ImageResult<DynamicImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    // What the largest image within the sides takes (16-bit RGBA): the default of 512 MiB
    // would refuse some of them, saying only that memory ran short.
    limits.max_alloc = Some(u64::from(max_side).pow(2).saturating_mul(8));
    reader.limits(limits);
    // The image crate turns zune-jpeg's strict mode off, so a cut JPEG would decode.
    if reader.format() == Some(ImageFormat::Jpeg) && !reaches_jpeg_end(bytes) {
        return Err(ImageError::IoError(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the JPEG data ends before its end-of-image marker",
        )));
    }
    reader.decode()
}

/// The width and height an image's header declares.
fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Whether JPEG data (starting with its SOI marker) reaches an end-of-image marker.
///
/// Marker segments are skipped by their length, so the markers of an embedded thumbnail do
/// not count; in entropy-coded data a 0xFF byte is followed only by a stuffed 0x00 or a
/// restart marker, so the first other marker there ends the scan. Stray bytes before a
/// marker are skipped, as libjpeg skips them.
fn reaches_jpeg_end(data: &[u8]) -> bool {
    let mut i = 2;
    loop {
        while data.get(i).is_some_and(|&b| b != 0xFF) {
            i += 1;
        }
        // 0xFF may repeat before a marker as fill.
        while data.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = data.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // No segment follows: a stuffed byte, TEM, restart markers, SOI.
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(&[high, low]) = data.get(i..i + 2) else {
                    return false;
                };
                i += usize::from(u16::from_be_bytes([high, low]));
            }
        }
    }
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
