//! torchvision's transforms on PIL images, for 8-bit RGB images.
//!
//! `Resize(256)` uses Pillow's antialiased bilinear filter through `fast_image_resize`,
//! whose convolution resizer reproduces Pillow's fixed-point arithmetic.

use fast_image_resize::images::{Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;

/// The shorter side after `Resize(256)`.
pub const RESIZE_SHORTER: u32 = 256;
/// The side of the square crop fed to the backbones.
pub const CROP_SIZE: u32 = 224;
/// Floats in one transformed image (`3 x CROP_SIZE x CROP_SIZE`, CHW).
pub const IMAGE_LEN: usize = 3 * (CROP_SIZE as usize) * (CROP_SIZE as usize);

/// The size torchvision's `Resize(shorter)` gives a `width x height` image: the shorter
/// side becomes `shorter`, the longer `int(shorter * long / short)`.
pub fn resized_size(width: u32, height: u32, shorter: u32) -> (u32, u32) {
    let (short, long) = (width.min(height), width.max(height));
    if short == 0 {
        return (width, height);
    }
    // Python's `int(a * long / short)` is a float division truncated toward zero.
    let new_long = (f64::from(shorter) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (shorter, new_long)
    } else {
        (new_long, shorter)
    }
}

/// `Resize(shorter)` of torchvision on a PIL image: Pillow's antialiased bilinear resize of
/// the shorter side to `shorter`. An image whose size does not change is returned as is.
pub fn resize_shorter(image: &RgbImage, shorter: u32) -> RgbImage {
    let (w, h) = resized_size(image.width(), image.height(), shorter);
    resize(image, w, h)
}

/// Pillow's `Image.resize((width, height), BILINEAR)` (antialiased when shrinking).
/// A zero target side or an empty source gives a black image of the target size.
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if (width, height) == image.dimensions() {
        // Pillow returns a copy when the size does not change.
        return image.clone();
    }
    if width == 0 || height == 0 || image.width() == 0 || image.height() == 0 {
        return RgbImage::new(width, height);
    }
    let src = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .expect("an RgbImage buffer holds width * height * 3 bytes");
    let mut dst = FirImage::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel type on both sides of a non-empty resize");
    RgbImage::from_raw(width, height, dst.into_vec())
        .expect("the resizer fills width * height * 3 bytes")
}

/// Copies the `width x height` window whose top-left corner is at (`left`, `top`); pixels
/// outside the image are black (torchvision pads with zeros when cropping past the edge).
pub fn crop(image: &RgbImage, left: i64, top: i64, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (i64::from(image.width()), i64::from(image.height()));
    let mut out = RgbImage::new(width, height);
    for y in 0..height {
        let sy = top + i64::from(y);
        if !(0..ih).contains(&sy) {
            continue;
        }
        // Copy the in-bounds run of this row in one go.
        let x0 = (-left).clamp(0, i64::from(width));
        let x1 = (iw - left).clamp(x0, i64::from(width));
        if x0 == x1 {
            continue;
        }
        let src_start = ((sy * iw + left + x0) * 3) as usize;
        let dst_start = ((i64::from(y) * i64::from(width) + x0) * 3) as usize;
        let n = ((x1 - x0) * 3) as usize;
        out.as_mut()[dst_start..dst_start + n]
            .copy_from_slice(&image.as_raw()[src_start..src_start + n]);
    }
    out
}

/// torchvision's `CenterCrop(size)`: `top = int(round((h - size) / 2))` with Python's
/// round-half-to-even, likewise `left`; an image smaller than `size` is zero-padded first
/// (left/top padding `(size - w) // 2`), as torchvision does.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let offset = |extent: u32| -> i64 {
        if extent < size {
            -i64::from((size - extent) / 2)
        } else {
            (f64::from(extent - size) / 2.0).round_ties_even() as i64
        }
    };
    crop(
        image,
        offset(image.width()),
        offset(image.height()),
        size,
        size,
    )
}

/// torchvision's `RandomCrop(size)`: a uniformly drawn `size x size` window (top, then left,
/// drawn from `rng`). An image smaller than `size` along a side is zero-padded, centred.
pub fn random_crop(image: &RgbImage, size: u32, rng: &mut impl Rng) -> RgbImage {
    let mut offset = |extent: u32| -> i64 {
        if extent < size {
            -i64::from((size - extent) / 2)
        } else {
            i64::from(rng.random_range(0..=extent - size))
        }
    };
    let top = offset(image.height());
    let left = offset(image.width());
    crop(image, left, top, size, size)
}

/// Mirrors the image left to right.
pub fn hflip(image: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(image)
}

/// The evaluation transform: `Resize(256)` then `CenterCrop(224)`.
pub fn eval_transform(image: &RgbImage) -> RgbImage {
    center_crop(&resize_shorter(image, RESIZE_SHORTER), CROP_SIZE)
}

/// The training augmentation: `Resize(256)`, `RandomCrop(224)`, `RandomHorizontalFlip(0.5)`,
/// every draw taken from `rng` (crop top, crop left, then the flip).
pub fn train_transform(image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
    let cropped = random_crop(&resize_shorter(image, RESIZE_SHORTER), CROP_SIZE, rng);
    if rng.random_bool(0.5) {
        hflip(&cropped)
    } else {
        cropped
    }
}

/// The transform of an image to explain: an image already `224 x 224` is used as is, any
/// other goes through [`eval_transform`].
pub fn explain_transform(image: &RgbImage) -> RgbImage {
    if image.dimensions() == (CROP_SIZE, CROP_SIZE) {
        image.clone()
    } else {
        eval_transform(image)
    }
}

/// torchvision's `ToTensor()`: HWC bytes to CHW floats in `[0, 1]` (`x / 255`), written
/// to `out`, which must hold `3 * width * height` values.
///
/// # Panics
/// If `out` has the wrong length (a caller bug, not bad input).
pub fn to_chw_f32(image: &RgbImage, out: &mut [f32]) {
    let plane = image.width() as usize * image.height() as usize;
    assert_eq!(
        out.len(),
        3 * plane,
        "output must hold 3 * width * height floats"
    );
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in image.as_raw().chunks_exact(3).enumerate() {
        r[i] = f32::from(px[0]) / 255.0;
        g[i] = f32::from(px[1]) / 255.0;
        b[i] = f32::from(px[2]) / 255.0;
    }
}
