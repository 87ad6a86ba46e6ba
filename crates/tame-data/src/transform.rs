//! torchvision's transforms on PIL images, for 8-bit RGB images.
//!
//! `Resize(256)` uses Pillow's antialiased bilinear filter through `fast_image_resize`,
//! whose convolution resizer reproduces Pillow's fixed-point arithmetic.

use fast_image_resize::images::{Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;

/// How an image becomes a backbone's input, the same for every command: an image already
/// `crop x crop` is used as is; any other has its shorter side resized to `resize_shorter`
/// (torchvision's `Resize`, Pillow's bilinear), then its central `crop x crop` square kept
/// (`CenterCrop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preprocessing {
    pub resize_shorter: u32,
    pub crop: u32,
}

/// What [`Preprocessing::apply`] did to an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The image was already `side x side`.
    AsIs { side: u32 },
    /// Resized from `from` to `resized` (width, height), then center-cropped to `crop x crop`.
    Resized {
        from: (u32, u32),
        resized: (u32, u32),
        crop: u32,
    },
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Applied::AsIs { side } => write!(f, "{side}x{side}, used as is"),
            Applied::Resized {
                from: (w, h),
                resized: (rw, rh),
                crop,
            } => write!(
                f,
                "{w}x{h} resized to {rw}x{rh}, center-cropped to {crop}x{crop}"
            ),
        }
    }
}

impl Preprocessing {
    /// The ImageNet classifiers' input: 224 x 224 crops of images resized to 256.
    pub const IMAGENET: Self = Self {
        resize_shorter: 256,
        crop: 224,
    };

    /// The backbone's input made from `image`, and what was done to it.
    pub fn apply(&self, image: &RgbImage) -> (RgbImage, Applied) {
        if image.dimensions() == (self.crop, self.crop) {
            return (image.clone(), Applied::AsIs { side: self.crop });
        }
        let resized = resize_shorter(image, self.resize_shorter);
        let applied = Applied::Resized {
            from: image.dimensions(),
            resized: resized.dimensions(),
            crop: self.crop,
        };
        (center_crop(&resized, self.crop), applied)
    }

    /// The side of the input as a tensor dimension.
    pub fn side(&self) -> usize {
        self.crop as usize
    }

    /// Floats in one input image (3 x side x side, CHW).
    pub fn image_len(&self) -> usize {
        3 * self.side() * self.side()
    }

    /// The (N, 3, H, W) shape of `images` inputs laid out one after the other.
    pub fn batch_shape(&self, images: usize) -> (usize, usize, usize, usize) {
        (images, 3, self.side(), self.side())
    }
}

/// The shorter side before the training crops (the reference's `Resize(256)`).
pub const RESIZE_SHORTER: u32 = Preprocessing::IMAGENET.resize_shorter;
/// The side of the square crop fed to the backbones.
pub const CROP_SIZE: u32 = Preprocessing::IMAGENET.crop;
/// [`CROP_SIZE`] as a tensor dimension.
pub const CROP_SIDE: usize = CROP_SIZE as usize;
/// Floats in one transformed image (`3 x CROP_SIZE x CROP_SIZE`, CHW).
pub const IMAGE_LEN: usize = 3 * CROP_SIDE * CROP_SIDE;

/// The (N, 3, H, W) shape of `images` transformed images laid out one after the other, as
/// a [`crate::Batch`] holds them.
pub fn batch_shape(images: usize) -> (usize, usize, usize, usize) {
    Preprocessing::IMAGENET.batch_shape(images)
}

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
    // Pillow resamples horizontally first, rounding to 8 bits in between; for 8-bit images
    // fast_image_resize does the vertical pass first, which moves a sample by one level
    // here and there. Two one-axis resizes reproduce Pillow's order.
    let rows_done = resize_axis(image.as_raw(), image.dimensions(), (width, image.height()));
    let done = resize_axis(&rows_done, (width, image.height()), (width, height));
    RgbImage::from_raw(width, height, done).expect("the resizer fills width * height * 3 bytes")
}

/// One fast_image_resize convolution between two non-empty sizes of RGB8 pixels.
fn resize_axis(src: &[u8], (sw, sh): (u32, u32), (dw, dh): (u32, u32)) -> Vec<u8> {
    if (sw, sh) == (dw, dh) {
        return src.to_vec();
    }
    let src = ImageRef::new(sw, sh, src, PixelType::U8x3)
        .expect("an RGB8 buffer holds width * height * 3 bytes");
    let mut dst = FirImage::new(dw, dh, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel type on both sides of a non-empty resize");
    dst.into_vec()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Every pixel distinct: (x, y, x ^ y) modulo 256.
    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]))
    }

    #[test]
    fn resized_size_follows_torchvision() {
        assert_eq!(resized_size(500, 469, 256), (272, 256)); // int(256*500/469) = 272
        assert_eq!(resized_size(469, 500, 256), (256, 272));
        assert_eq!(resized_size(150, 138, 256), (278, 256)); // 278.26 -> 278
        assert_eq!(resized_size(224, 224, 256), (256, 256));
        assert_eq!(resized_size(300, 256, 256), (300, 256));
        assert_eq!(resized_size(1, 1000, 256), (256, 256000));
    }

    #[test]
    fn resize_to_the_same_size_is_identity() {
        let img = pattern(300, 256);
        assert_eq!(resize_shorter(&img, 256), img);
    }

    #[test]
    fn resize_of_a_flat_image_stays_flat() {
        let img = RgbImage::from_pixel(500, 375, image::Rgb([10, 200, 77]));
        let out = resize_shorter(&img, 256);
        assert_eq!(out.dimensions(), (341, 256));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 77]));
    }

    #[test]
    fn tiny_and_thin_images_still_give_a_full_crop() {
        for (w, h) in [(1, 1), (1, 3), (3, 1), (2, 255)] {
            let img = RgbImage::from_pixel(w, h, image::Rgb([50, 60, 70]));
            let (out, _) = Preprocessing::IMAGENET.apply(&img);
            assert_eq!(out.dimensions(), (224, 224));
            assert!(out.pixels().all(|p| p.0 == [50, 60, 70]), "{w}x{h}");
            let out = train_transform(&img, &mut StdRng::seed_from_u64(1));
            assert_eq!(out.dimensions(), (224, 224));
        }
    }

    #[test]
    fn center_crop_rounds_half_to_even_like_python() {
        // (257 - 224) / 2 = 16.5 -> 16; (259 - 224) / 2 = 17.5 -> 18.
        let img = pattern(259, 257);
        let out = center_crop(&img, 224);
        assert_eq!(out.get_pixel(0, 0).0, [18, 16, 18 ^ 16]);
        assert_eq!(
            out.get_pixel(223, 223).0,
            [18 + 223, 16 + 223, (18 + 223) ^ (16 + 223)]
        );
    }

    #[test]
    fn center_crop_pads_small_images_with_black() {
        // torchvision pads left (224 - 220) // 2 = 2 and top (224 - 221) // 2 = 1.
        let img = RgbImage::from_pixel(220, 221, image::Rgb([9, 9, 9]));
        let out = center_crop(&img, 224);
        assert_eq!(out.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(2, 1).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(2, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(221, 221).0, [9, 9, 9]);
        assert_eq!(out.get_pixel(222, 222).0, [0, 0, 0]);
    }

    #[test]
    fn random_crop_is_a_window_of_the_image_and_seeded() {
        let img = pattern(256, 300);
        let a = random_crop(&img, 224, &mut StdRng::seed_from_u64(7));
        let b = random_crop(&img, 224, &mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
        let [x0, y0, _] = a.get_pixel(0, 0).0;
        let [x1, y1, _] = a.get_pixel(223, 223).0;
        assert_eq!((x1.wrapping_sub(x0), y1.wrapping_sub(y0)), (223, 223));
        // Over many seeds, every allowed offset along x (0..=32) shows up, and no other.
        let mut seen = [false; 33];
        for seed in 0..2000 {
            let c = random_crop(&img, 224, &mut StdRng::seed_from_u64(seed));
            seen[usize::from(c.get_pixel(0, 0).0[0])] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn hflip_mirrors_rows() {
        let img = pattern(5, 2);
        let out = hflip(&img);
        assert_eq!(out.get_pixel(0, 1), img.get_pixel(4, 1));
        assert_eq!(out.get_pixel(4, 0), img.get_pixel(0, 0));
    }

    #[test]
    fn train_transform_flips_about_half_the_time() {
        let img = pattern(256, 256);
        let flips = (0..1000)
            .filter(|&seed| {
                let out = train_transform(&img, &mut StdRng::seed_from_u64(seed));
                assert_eq!(out.dimensions(), (224, 224));
                // x decreases to the right once flipped.
                out.get_pixel(0, 0).0[0] > out.get_pixel(1, 0).0[0]
            })
            .count();
        assert!((400..600).contains(&flips), "{flips} flips in 1000");
    }

    #[test]
    fn preprocessing_keeps_crop_size_images_and_resizes_others() {
        let img = pattern(224, 224);
        let (out, applied) = Preprocessing::IMAGENET.apply(&img);
        assert_eq!(out, img);
        assert_eq!(applied.to_string(), "224x224, used as is");
        // Any other size goes through resize + center crop, even a square one.
        for (w, h) in [(224, 230), (512, 384), (200, 200)] {
            let other = pattern(w, h);
            let (out, applied) = Preprocessing::IMAGENET.apply(&other);
            assert_eq!(out, center_crop(&resize_shorter(&other, 256), 224));
            let Applied::Resized {
                from,
                resized,
                crop,
            } = applied
            else {
                panic!("{w}x{h} {applied}");
            };
            assert_eq!(
                (from, resized, crop),
                ((w, h), resized_size(w, h, 256), 224)
            );
        }
        let (_, applied) = Preprocessing::IMAGENET.apply(&pattern(512, 384));
        assert_eq!(
            applied.to_string(),
            "512x384 resized to 341x256, center-cropped to 224x224"
        );
    }

    #[test]
    fn to_chw_splits_planes_and_scales() {
        let img = RgbImage::from_raw(2, 1, vec![0, 51, 255, 102, 153, 204]).unwrap();
        let mut out = [0.0; 6];
        to_chw_f32(&img, &mut out);
        let want = [0.0, 0.4, 0.2, 0.6, 1.0, 0.8];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }
}
