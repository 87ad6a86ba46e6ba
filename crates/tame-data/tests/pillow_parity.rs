//! `Resize(256)` + `CenterCrop(224)` against torchvision on Pillow images, on the committed
//! photos: a downscale (coffee.jpg, 600x400), an upscale (chelsea_small.jpg, 150x100) and a
//! 224x224 image (astronaut_224_rgba.png, -> 256, alpha dropped). These are the resize and crop
//! operations themselves: `Preprocessing` would use the 224x224 image as is.
//! Fixtures made by `xtask/fixtures/make_data_fixtures.py`: `<name>.pil.png` is Pillow's
//! decode of the photo, `<name>.eval.png` torchvision's transform of it.

use std::path::PathBuf;

use tame_data::{center_crop, load_rgb, resize_shorter, RgbImage, CROP_SIZE, RESIZE_SHORTER};

fn sample(name: &str) -> PathBuf {
    tame_testdata::photo(name)
}

fn fixture(name: &str) -> RgbImage {
    load_rgb(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name))
        .unwrap()
}

/// torchvision's `Resize(256)` then `CenterCrop(224)`.
fn resize_and_crop(image: &RgbImage) -> RgbImage {
    center_crop(&resize_shorter(image, RESIZE_SHORTER), CROP_SIZE)
}

/// (max, mean) absolute difference in 8-bit levels.
fn diff(out: &RgbImage, want: &RgbImage) -> (u8, f64) {
    assert_eq!(out.dimensions(), (CROP_SIZE, CROP_SIZE));
    assert_eq!(want.dimensions(), (CROP_SIZE, CROP_SIZE));
    let d: Vec<u8> = out
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64;
    (d.iter().copied().max().unwrap_or(0), mean)
}

/// The transform alone, on Pillow's own decode. Bound: every sample within 1/255 of
/// torchvision, and off by one in at most 1% of samples (the passes are done in Pillow's
/// order and fixed-point arithmetic; doing them in the other order gives about 16%).
fn check_transform(name: &str) {
    let out = resize_and_crop(&fixture(&format!("{name}.pil.png")));
    let (max, mean) = diff(&out, &fixture(&format!("{name}.eval.png")));
    eprintln!("{name} transform: max |diff| {max}/255, mean {mean:.4}");
    assert!(max <= 1, "{name}: max |diff| {max}/255 > 1/255");
    assert!(mean <= 0.01, "{name}: mean |diff| {mean}/255 > 0.01/255");
}

/// From the JPEG file: the JPEG decoder (zune-jpeg) upsamples chroma and converts YCbCr
/// with a rounding of its own, a few levels off libjpeg-turbo here and there; bound: at
/// most 5/255 per sample and 0.5/255 on average.
fn check_end_to_end(name: &str) {
    let out = resize_and_crop(&load_rgb(sample(name)).unwrap());
    let (max, mean) = diff(&out, &fixture(&format!("{name}.eval.png")));
    eprintln!("{name} decode+transform: max |diff| {max}/255, mean {mean:.4}");
    assert!(max <= 5, "{name}: max |diff| {max}/255 > 5/255");
    assert!(mean <= 0.5, "{name}: mean |diff| {mean}/255 > 0.5/255");
}

#[test]
fn downscaled_photo_matches_torchvision() {
    check_transform("coffee.jpg");
    check_end_to_end("coffee.jpg");
}

#[test]
fn upscaled_photo_matches_torchvision() {
    check_transform("chelsea_small.jpg");
    check_end_to_end("chelsea_small.jpg");
}

#[test]
fn square_224_photo_matches_torchvision() {
    check_transform("astronaut_224_rgba.png");
    check_end_to_end("astronaut_224_rgba.png");
}
