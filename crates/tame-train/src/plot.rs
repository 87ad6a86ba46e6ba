//! Log-log plots of range-test curves. No text is drawn, so no font is needed: the grid
//! lines mark the powers of ten and the caller reports the axis ranges.

use std::path::Path;

use plotters::prelude::*;

use crate::lr_finder::moving_average;
use crate::{LrCurve, TrainError};

/// `((lr_min, lr_max), (loss_min, loss_max))` of a plot.
pub type AxisRanges = ((f64, f64), (f64, f64));

const WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 500;

/// Draws `curves` (loss against learning rate, both axes logarithmic, one colour per curve)
/// into a PNG at `out`; with `window`, a second panel below shows their moving averages.
/// Returns the axis ranges.
pub fn plot_lr_curves(
    curves: &[LrCurve],
    window: Option<usize>,
    out: &Path,
) -> Result<AxisRanges, TrainError> {
    let fail = |reason: String| TrainError::Plot {
        path: out.to_path_buf(),
        reason,
    };
    let points: Vec<(f64, f64)> = curves
        .iter()
        .flat_map(|c| c.lrs.iter().copied().zip(c.losses.iter().copied()))
        .filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite())
        .collect();
    if points.is_empty() {
        return Err(fail("no positive, finite point to draw".into()));
    }
    let range = |f: fn(&(f64, f64)) -> f64| {
        let lo = points.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if hi > lo {
            (lo, hi)
        } else {
            (lo / 2.0, hi * 2.0)
        }
    };
    let (x_range, y_range) = (range(|p| p.0), range(|p| p.1));

    let panels = if window.is_some() { 2 } else { 1 };
    let (w, h) = (WIDTH, PANEL_HEIGHT * panels);
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let areas = root.split_evenly((panels as usize, 1));
        let smoothed: Vec<LrCurve> = match window {
            Some(n) => curves
                .iter()
                .map(|c| LrCurve {
                    lrs: c.lrs.clone(),
                    losses: moving_average(&c.losses, n),
                })
                .collect(),
            None => Vec::new(),
        };
        let sets = [curves, smoothed.as_slice()];
        for (area, set) in areas.iter().zip(sets) {
            draw_panel(area, set, x_range, y_range).map_err(fail)?;
        }
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(w, h, buffer)
        .ok_or_else(|| fail("image buffer of the wrong size".into()))?;
    let tmp = tame_atomic::temp_beside(out).map_err(|e| fail(e.to_string()))?;
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| fail(e.to_string()))?;
    tame_atomic::persist(tmp, out).map_err(|e| fail(e.to_string()))?;
    Ok((x_range, y_range))
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    curves: &[LrCurve],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .margin(20)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| e.to_string())?;
    let grid = RGBColor(220, 220, 220);
    for p in decades(x0, x1) {
        chart
            .draw_series(LineSeries::new([(p, y0), (p, y1)], grid))
            .map_err(|e| e.to_string())?;
    }
    for p in decades(y0, y1) {
        chart
            .draw_series(LineSeries::new([(x0, p), (x1, p)], grid))
            .map_err(|e| e.to_string())?;
    }
    let frame = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)];
    chart
        .draw_series(LineSeries::new(frame, BLACK))
        .map_err(|e| e.to_string())?;
    for (i, c) in curves.iter().enumerate() {
        let line = c
            .lrs
            .iter()
            .copied()
            .zip(c.losses.iter().copied())
            .filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite());
        chart
            .draw_series(LineSeries::new(line, Palette99::pick(i).stroke_width(2)))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The powers of ten within [lo, hi].
fn decades(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
    (a..=b).map(|e| 10f64.powi(e)).collect()
}
