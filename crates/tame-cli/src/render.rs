//! Pictures and arrays people can open: PNG encoding, the jet overlay, .npy files.

use anyhow::Result;
use tame_data::RgbImage;

/// PNG bytes of an RGB image.
pub fn png_bytes(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

/// The classic jet colour map (MATLAB's): dark blue at 0, through cyan, yellow, to dark red
/// at 1.
pub fn jet(value: f32) -> [f32; 3] {
    let v = value.clamp(0.0, 1.0);
    let channel = |centre: f32| (1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0);
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// The map (values in [0, 1], one per pixel, row-major) coloured with jet and blended 50/50
/// with the image.
pub fn jet_overlay(image: &RgbImage, map: &[f32]) -> RgbImage {
    let mut out = image.clone();
    for (pixel, &m) in out.pixels_mut().zip(map) {
        let colour = jet(m);
        for (c, channel) in pixel.0.iter_mut().enumerate() {
            *channel = (0.5 * *channel as f32 + 0.5 * 255.0 * colour[c]).round() as u8;
        }
    }
    out
}

/// White space between the panels of a picture grid, in pixels.
const GAP: u32 = 4;

/// Pictures of one height placed left to right with a white gap between them.
pub fn side_by_side(panels: &[RgbImage]) -> RgbImage {
    let height = panels.iter().map(|p| p.height()).max().unwrap_or(0);
    let width = panels.iter().map(|p| p.width()).sum::<u32>()
        + GAP * (panels.len() as u32).saturating_sub(1);
    let mut out = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut x = 0i64;
    for panel in panels {
        image::imageops::replace(&mut out, panel, x, 0);
        x += i64::from(panel.width() + GAP);
    }
    out
}

/// Rows of pictures (each row as [`side_by_side`]) stacked top to bottom with the same gap.
pub fn rows_of(rows: &[Vec<RgbImage>]) -> RgbImage {
    let strips: Vec<RgbImage> = rows.iter().map(|r| side_by_side(r)).collect();
    let width = strips.iter().map(|s| s.width()).max().unwrap_or(0);
    let height = strips.iter().map(|s| s.height()).sum::<u32>()
        + GAP * (strips.len() as u32).saturating_sub(1);
    let mut out = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let mut y = 0i64;
    for strip in &strips {
        image::imageops::replace(&mut out, strip, 0, y);
        y += i64::from(strip.height() + GAP);
    }
    out
}

/// A little-endian float32 .npy file (format version 1.0) holding `values` with `shape`.
pub fn npy_bytes(values: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * values.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_from_blue_to_red() {
        assert_eq!(jet(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(jet(0.5), [0.5, 1.0, 0.5]);
        assert_eq!(jet(1.0), [0.5, 0.0, 0.0]);
    }

    #[test]
    fn npy_files_are_read_back_by_candle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let values: Vec<f32> = (0..6).map(|i| i as f32 / 2.0).collect();
        std::fs::write(&path, npy_bytes(&values, &[2, 3])).unwrap();
        let t = candle_core::Tensor::read_npy(&path).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
    }

    #[test]
    fn rows_are_stacked_with_white_gaps() {
        let red = RgbImage::from_pixel(3, 2, image::Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(3, 2, image::Rgb([0, 0, 255]));
        let grid = rows_of(&[vec![red.clone(), blue.clone()], vec![blue, red]]);
        assert_eq!(grid.dimensions(), (3 + GAP + 3, 2 + GAP + 2));
        assert_eq!(grid.get_pixel(0, 0).0, [255, 0, 0]);
        assert_eq!(grid.get_pixel(3 + GAP, 0).0, [0, 0, 255]);
        assert_eq!(grid.get_pixel(3, 0).0, [255, 255, 255]);
        assert_eq!(grid.get_pixel(0, 2).0, [255, 255, 255]);
        assert_eq!(grid.get_pixel(0, 2 + GAP).0, [0, 0, 255]);
        assert_eq!(grid.get_pixel(3 + GAP, 2 + GAP).0, [255, 0, 0]);
    }
}
