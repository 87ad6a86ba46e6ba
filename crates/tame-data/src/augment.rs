//! The training augmentations a loader can apply: the reference's crop-and-flip, and a heavy
//! one for small training sets (random resized crops, flips, colour jitter, two-photo
//! collages) that keeps an attention mechanism from memorising a few pictures.

use std::fmt;
use std::str::FromStr;

use image::RgbImage;
use rand::Rng;

use crate::transform::{crop, hflip, resize, train_transform, CROP_SIZE};

/// Which transform a training loader applies to each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Augmentation {
    /// The loader's preprocessing (as at evaluation): no randomness.
    None,
    /// The reference's `Resize(256)`, `RandomCrop(224)`, `RandomHorizontalFlip`.
    #[default]
    Reference,
    /// [`heavy_transform`]: for training sets of a few photos.
    Heavy,
}

impl Augmentation {
    /// The names [`FromStr`] accepts, as `Display` writes them.
    pub const NAMES: [&'static str; 3] = ["none", "reference", "heavy"];

    /// Whether the transform needs a second, randomly drawn image of the list.
    pub fn needs_distractor(self) -> bool {
        self == Augmentation::Heavy
    }
}

impl fmt::Display for Augmentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Augmentation::None => "none",
            Augmentation::Reference => "reference",
            Augmentation::Heavy => "heavy",
        })
    }
}

impl FromStr for Augmentation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Augmentation::None),
            "reference" => Ok(Augmentation::Reference),
            "heavy" => Ok(Augmentation::Heavy),
            other => Err(format!(
                "unknown augmentation `{other}` (expected one of: {})",
                Augmentation::NAMES.join(", ")
            )),
        }
    }
}

/// Applies `augmentation` to `image` (`distractor` is only used by [`Augmentation::Heavy`]).
/// [`Augmentation::None`] is the loader's preprocessing and is not handled here.
pub fn augment(
    augmentation: Augmentation,
    image: &RgbImage,
    distractor: Option<&RgbImage>,
    rng: &mut impl Rng,
) -> RgbImage {
    match augmentation {
        Augmentation::Heavy => heavy_transform(image, distractor, rng),
        _ => train_transform(image, rng),
    }
}

/// Share of training images made into a collage by [`heavy_transform`].
pub const COLLAGE_PROBABILITY: f64 = 0.3;
/// Scale range of the random resized crops (fraction of the image's area).
pub const CROP_SCALE: (f64, f64) = (0.25, 1.0);
/// Aspect-ratio range of the random resized crops.
pub const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// Brightness, contrast and saturation factors are drawn from `1 ± JITTER`.
pub const JITTER: f64 = 0.4;

/// The heavy augmentation, a `224 x 224` result:
/// - with probability [`COLLAGE_PROBABILITY`] (and a `distractor`), a collage: `image`
///   fills a random 55–75 % of the canvas (left, right, top or bottom) and the distractor
///   the rest, so the map must find the labelled photo among other content;
/// - otherwise `image` alone;
///
/// each part a random resized crop (scale [`CROP_SCALE`], ratio [`CROP_RATIO`], as
/// torchvision's `RandomResizedCrop`) flipped with probability 0.5, then colour jitter of
/// the whole canvas.
pub fn heavy_transform(
    image: &RgbImage,
    distractor: Option<&RgbImage>,
    rng: &mut impl Rng,
) -> RgbImage {
    let collage = distractor.filter(|_| rng.random_bool(COLLAGE_PROBABILITY));
    let mut canvas = match collage {
        Some(other) => {
            let share = rng.random_range(0.55..0.75);
            let main_extent = (f64::from(CROP_SIZE) * share).round() as u32;
            let rest = CROP_SIZE - main_extent;
            let horizontal = rng.random_bool(0.5);
            let main_first = rng.random_bool(0.5);
            let (main_size, other_size) = if horizontal {
                ((main_extent, CROP_SIZE), (rest, CROP_SIZE))
            } else {
                ((CROP_SIZE, main_extent), (CROP_SIZE, rest))
            };
            let main = flipped_resized_crop(image, main_size, rng);
            let second = flipped_resized_crop(other, other_size, rng);
            let (first, second) = if main_first {
                (main, second)
            } else {
                (second, main)
            };
            join(&first, &second, horizontal)
        }
        None => flipped_resized_crop(image, (CROP_SIZE, CROP_SIZE), rng),
    };
    color_jitter(&mut canvas, rng);
    canvas
}

fn flipped_resized_crop(image: &RgbImage, size: (u32, u32), rng: &mut impl Rng) -> RgbImage {
    let out = random_resized_crop(image, size, CROP_SCALE, CROP_RATIO, rng);
    if rng.random_bool(0.5) {
        hflip(&out)
    } else {
        out
    }
}

/// torchvision's `RandomResizedCrop`: up to ten draws of an area fraction in `scale` and a
/// log-uniform aspect ratio in `ratio` for a window that fits; failing that, the largest
/// centred window within the ratio range. The window is resized to `size` (width, height).
pub fn random_resized_crop(
    image: &RgbImage,
    size: (u32, u32),
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let area = f64::from(w) * f64::from(h);
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            let window = crop(image, i64::from(left), i64::from(top), cw, ch);
            return resize(&window, size.0, size.1);
        }
    }
    // Fallback: the whole image narrowed to the ratio range, centred.
    let in_ratio = f64::from(w) / f64::from(h.max(1));
    let (cw, ch) = if in_ratio < ratio.0 {
        (w, (f64::from(w) / ratio.0).round() as u32)
    } else if in_ratio > ratio.1 {
        ((f64::from(h) * ratio.1).round() as u32, h)
    } else {
        (w, h)
    };
    let window = crop(
        image,
        i64::from((w - cw.min(w)) / 2),
        i64::from((h - ch.min(h)) / 2),
        cw,
        ch,
    );
    resize(&window, size.0, size.1)
}

/// Places `second` after `first`: to its right (`horizontal`) or below it.
fn join(first: &RgbImage, second: &RgbImage, horizontal: bool) -> RgbImage {
    let (w, h) = if horizontal {
        (first.width() + second.width(), first.height())
    } else {
        (first.width(), first.height() + second.height())
    };
    let mut out = RgbImage::new(w, h);
    image::imageops::replace(&mut out, first, 0, 0);
    let (x, y) = if horizontal {
        (i64::from(first.width()), 0)
    } else {
        (0, i64::from(first.height()))
    };
    image::imageops::replace(&mut out, second, x, y);
    out
}

/// Brightness, contrast and saturation, each scaled by a factor drawn from `1 ± JITTER`
/// and applied in that order as torchvision's `ColorJitter` does (without its shuffling):
/// brightness scales the pixels, contrast blends with the mean grey level, saturation with
/// each pixel's grey value.
pub fn color_jitter(image: &mut RgbImage, rng: &mut impl Rng) {
    let mut draw = || rng.random_range(1.0 - JITTER..=1.0 + JITTER) as f32;
    let (brightness, contrast, saturation) = (draw(), draw(), draw());
    let grey = |p: &[f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mut pixels: Vec<[f32; 3]> = image
        .pixels()
        .map(|p| p.0.map(|v| (f32::from(v) * brightness).min(255.0)))
        .collect();
    let mean = pixels.iter().map(grey).sum::<f32>() / pixels.len().max(1) as f32;
    for p in &mut pixels {
        *p = p.map(|v| (mean + contrast * (v - mean)).clamp(0.0, 255.0));
        let g = grey(p);
        *p = p.map(|v| (g + saturation * (v - g)).clamp(0.0, 255.0));
    }
    for (out, p) in image.pixels_mut().zip(pixels) {
        out.0 = p.map(|v| v.round() as u8);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 77])
        })
    }

    #[test]
    fn names_round_trip() {
        for name in Augmentation::NAMES {
            assert_eq!(name.parse::<Augmentation>().unwrap().to_string(), name);
        }
        assert!("strong"
            .parse::<Augmentation>()
            .unwrap_err()
            .contains("heavy"));
    }

    #[test]
    fn heavy_gives_the_crop_size_and_repeats_under_a_seed() {
        let (a, b) = (gradient(300, 200), gradient(120, 400));
        for seed in 0..20 {
            let one = heavy_transform(&a, Some(&b), &mut StdRng::seed_from_u64(seed));
            let two = heavy_transform(&a, Some(&b), &mut StdRng::seed_from_u64(seed));
            assert_eq!(one.dimensions(), (CROP_SIZE, CROP_SIZE));
            assert_eq!(one, two);
        }
        let first = heavy_transform(&a, Some(&b), &mut StdRng::seed_from_u64(1));
        let second = heavy_transform(&a, Some(&b), &mut StdRng::seed_from_u64(2));
        assert_ne!(first, second);
    }

    #[test]
    fn collages_hold_both_images() {
        // A red and a blue photo: some seeds must give a canvas with both colours.
        let red = RgbImage::from_pixel(64, 64, image::Rgb([250, 0, 0]));
        let blue = RgbImage::from_pixel(64, 64, image::Rgb([0, 0, 250]));
        let mixed = (0..40)
            .map(|seed| heavy_transform(&red, Some(&blue), &mut StdRng::seed_from_u64(seed)))
            .filter(|out| {
                let reddish = out.pixels().filter(|p| p[0] > p[2]).count();
                reddish > 0 && reddish < out.pixels().len()
            })
            .count();
        assert!(mixed > 0 && mixed < 40, "{mixed} collages in 40");
    }

    #[test]
    fn resized_crop_falls_back_for_extreme_shapes() {
        let thin = gradient(1000, 3);
        let out = random_resized_crop(
            &thin,
            (50, 40),
            CROP_SCALE,
            CROP_RATIO,
            &mut StdRng::seed_from_u64(0),
        );
        assert_eq!(out.dimensions(), (50, 40));
    }

    #[test]
    fn jitter_keeps_grey_grey() {
        let mut grey = RgbImage::from_pixel(8, 8, image::Rgb([100, 100, 100]));
        color_jitter(&mut grey, &mut StdRng::seed_from_u64(3));
        assert!(grey.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    }
}
