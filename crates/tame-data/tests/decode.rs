//! Every decode path against Pillow's `convert("RGB")`, from fixtures made by
//! `xtask/fixtures/make_data_fixtures.py`.

use std::path::PathBuf;

use tame_data::{decode_rgb, load_rgb, load_rgb_within, DecodeError, DEFAULT_MAX_IMAGE_SIDE};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// Largest per-sample difference from Pillow's decoded RGB (and the size must match).
fn max_diff_from_pillow(name: &str) -> u8 {
    let image = load_rgb(fixture(name)).unwrap();
    let expected = std::fs::read(fixture(&format!("{name}.rgb"))).unwrap();
    assert_eq!(image.dimensions(), (40, 30), "{name}");
    assert_eq!(image.as_raw().len(), expected.len(), "{name}");
    image
        .as_raw()
        .iter()
        .zip(&expected)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap()
}

// Lossless formats: exact.
#[test]
fn rgba_png_drops_alpha_without_blending() {
    assert_eq!(max_diff_from_pillow("rgba.png"), 0);
}

#[test]
fn gray_alpha_png_is_replicated_and_alpha_dropped() {
    assert_eq!(max_diff_from_pillow("gray_alpha.png"), 0);
}

#[test]
fn palette_png_with_transparency_uses_the_palette_colours() {
    assert_eq!(max_diff_from_pillow("palette.png"), 0);
}

#[test]
fn png_named_jpeg_is_decoded_by_content() {
    assert_eq!(max_diff_from_pillow("png_named.JPEG"), 0);
}

#[test]
fn sixteen_bit_pngs_follow_pillow() {
    // Pillow keeps the high byte of 16-bit RGB, and saturates 16-bit grey (mode I;16).
    assert_eq!(max_diff_from_pillow("rgb16.png"), 0);
    assert_eq!(max_diff_from_pillow("gray16.png"), 0);
}

// JPEG: a different IDCT from libjpeg-turbo's may move a sample by one level.
#[test]
fn gray_jpeg_is_replicated() {
    let image = load_rgb(fixture("gray.jpg")).unwrap();
    assert!(image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(max_diff_from_pillow("gray.jpg") <= 1);
}

#[test]
fn adobe_cmyk_jpeg_converts_as_pillow() {
    assert!(max_diff_from_pillow("cmyk.jpg") <= 1);
}

#[test]
fn in_memory_decoding_matches_file_decoding() {
    let bytes = std::fs::read(fixture("png_named.JPEG")).unwrap();
    let from_bytes = decode_rgb(&bytes).unwrap();
    assert_eq!(from_bytes, load_rgb(fixture("png_named.JPEG")).unwrap());
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = load_rgb(fixture("no-such-image.jpg")).unwrap_err();
    assert!(matches!(err, DecodeError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-image.jpg"), "{err}");
}

/// A folder or a device is no image (a FIFO or /dev/zero would be read without end).
#[test]
fn images_that_are_not_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = vec![dir.path().to_path_buf()];
    if cfg!(unix) {
        paths.push(PathBuf::from("/dev/zero"));
    }
    for path in paths {
        let err = load_rgb(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a regular file", path.display())
        );
    }
}

#[test]
fn garbage_and_truncated_files_are_decode_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.JPEG");
    std::fs::write(&garbage, b"this is not an image at all").unwrap();
    let err = load_rgb(&garbage).unwrap_err();
    assert!(matches!(err, DecodeError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.JPEG"), "{err}");

    let png = std::fs::read(fixture("rgba.png")).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    let err = load_rgb(&truncated).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot decode {}: the file is truncated",
            truncated.display()
        )
    );
}

/// A small baseline JPEG made here, ending with its end-of-image marker FF D9.
fn jpeg() -> Vec<u8> {
    let image = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&image)
        .unwrap();
    assert!(bytes.ends_with(&[0xFF, 0xD9]));
    bytes
}

/// `jpeg` with an APP1 segment after SOI holding `payload` (as an EXIF thumbnail would).
fn with_app1(jpeg: &[u8], payload: &[u8]) -> Vec<u8> {
    let length = u16::try_from(payload.len() + 2).unwrap().to_be_bytes();
    [&jpeg[..2], &[0xFF, 0xE1], &length, payload, &jpeg[2..]].concat()
}

/// Pillow (13.0) refuses a JPEG cut anywhere before its end-of-image marker, the marker
/// alone included, and accepts bytes after it; the decoder underneath would fill the
/// missing part with grey instead.
#[test]
fn truncated_jpegs_are_refused_as_pillow_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let whole = jpeg();
    let n = whole.len();
    let thumbnail = with_app1(&whole, &jpeg());
    let progressive = std::fs::read(fixture("gray.jpg")).unwrap();
    let cases: [(&str, Vec<u8>, bool); 9] = [
        ("whole", whole.clone(), true),
        ("half", whole[..n / 2].to_vec(), false),
        ("no_end_marker", whole[..n - 2].to_vec(), false),
        ("half_end_marker", whole[..n - 1].to_vec(), false),
        (
            "trailing_bytes",
            [&whole[..], b"\xff\xd9 trailing bytes"].concat(),
            true,
        ),
        (
            "end_marker_after_half",
            [&whole[..n / 2], &[0xFF, 0xD9]].concat(),
            true,
        ),
        (
            "thumbnail_then_half",
            thumbnail[..thumbnail.len() / 2].to_vec(),
            false,
        ),
        ("thumbnail", thumbnail.clone(), true),
        (
            "fixture_cut",
            progressive[..progressive.len() - 2].to_vec(),
            false,
        ),
    ];
    for (name, bytes, accepted) in cases {
        let path = dir.path().join(format!("{name}.jpg"));
        std::fs::write(&path, &bytes).unwrap();
        match load_rgb(&path) {
            Ok(image) => {
                assert!(accepted, "{name} was decoded");
                assert_eq!(image.dimensions(), (64, 48), "{name}");
            }
            Err(err) => {
                assert!(!accepted, "{name}: {err}");
                assert!(
                    matches!(err, DecodeError::Truncated { .. }),
                    "{name}: {err:?}"
                );
                assert!(decode_rgb(&bytes).is_err(), "{name} from memory");
            }
        }
    }
}

/// A grey PNG of `width` x `height` pixels (made here: a few hundred bytes).
fn grey_png(dir: &std::path::Path, width: u32, height: u32) -> PathBuf {
    let path = dir.join(format!("{width}x{height}.png"));
    image::GrayImage::new(width, height).save(&path).unwrap();
    path
}

/// A small file may declare a huge image (a 388 KB PNG of 20000x20000 pixels took 1.6 GB):
/// a side over the limit is refused before the pixels are allocated.
#[test]
fn images_over_the_side_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refusal = |path: &std::path::Path, max_side: u32| match load_rgb_within(path, max_side) {
        Ok(_) => panic!("{} was decoded within {max_side}", path.display()),
        Err(err) => err.to_string(),
    };
    let wide = grey_png(dir.path(), 20_000, 1);
    assert_eq!(
        refusal(&wide, DEFAULT_MAX_IMAGE_SIDE),
        format!(
            "cannot decode {}: 20000x1 pixels, more than the 16384 per side allowed",
            wide.display()
        )
    );
    assert!(matches!(load_rgb(&wide), Err(DecodeError::TooLarge { .. })));
    let tall = grey_png(dir.path(), 3, 101);
    assert!(refusal(&tall, 100).ends_with(": 3x101 pixels, more than the 100 per side allowed"));
    assert_eq!(load_rgb_within(&tall, 101).unwrap().dimensions(), (3, 101));
}
