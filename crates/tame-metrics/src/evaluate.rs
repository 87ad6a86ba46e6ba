//! One evaluation pass over a batch: the unmasked forward pass once, then every selected
//! metric.

use std::str::FromStr;

use candle_core::Tensor;
use tame_backbones::{Backbone, Mode, TapRequest};
use tame_ops::Kernels;

use crate::ad_ic::{ad_ic_scores, ad_ic_scores_on_device, AdIcReport, AdIcScores, AdIcTotals};
use crate::classify::{logit_rows, outcome, Classify};
use crate::explainer::{normalize_maps, Explainer};
use crate::insdel::{insertion_deletion, InsDelConfig, InsDelReport, InsDelScores, InsDelTotals};
use crate::road::{road_scores, RoadConfig, RoadReport, RoadScores, RoadTotals};
use crate::{MetricsError, Result};

/// Which metrics to compute; parsed from `ad-ic,road,insdel` (any non-empty subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricSet {
    /// Average Drop / Increase in Confidence at 100/50/15 %.
    pub ad_ic: bool,
    /// ROAD, MoRF and LeRF.
    pub road: bool,
    /// Insertion and deletion AUC.
    pub insdel: bool,
}

impl Default for MetricSet {
    /// AD/IC only, the published protocol.
    fn default() -> Self {
        Self {
            ad_ic: true,
            road: false,
            insdel: false,
        }
    }
}

impl FromStr for MetricSet {
    type Err = MetricsError;

    fn from_str(s: &str) -> Result<Self> {
        let mut set = MetricSet {
            ad_ic: false,
            road: false,
            insdel: false,
        };
        for name in s.split(',').map(str::trim) {
            match name {
                "ad-ic" => set.ad_ic = true,
                "road" => set.road = true,
                "insdel" => set.insdel = true,
                other => return Err(MetricsError::UnknownMetric(other.to_string())),
            }
        }
        Ok(set)
    }
}

/// What [`Evaluator`] computes and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalConfig {
    /// The metrics.
    pub metrics: MetricSet,
    /// ROAD settings.
    pub road: RoadConfig,
    /// Insertion/deletion settings.
    pub insdel: InsDelConfig,
    /// Images per forward pass of modified images (0: the batch size of the input).
    pub chunk: usize,
}

/// Everything measured on one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageScores {
    /// The backbone's top-1 class on the unmasked image, the class explained.
    pub class: u32,
    /// Its probability Y.
    pub y: f64,
    /// AD/IC confidences, when selected.
    pub ad_ic: Option<AdIcScores>,
    /// ROAD outcomes, when selected.
    pub road: Option<RoadScores>,
    /// Insertion/deletion AUCs, when selected.
    pub insdel: Option<InsDelScores>,
}

/// Scores batches of images: one backbone, one explainer, one configuration.
pub struct Evaluator<'a> {
    backbone: &'a dyn Backbone,
    explainer: &'a dyn Explainer,
    request: TapRequest,
    logits_only: TapRequest,
    config: EvalConfig,
}

impl<'a> Evaluator<'a> {
    /// Checks the explainer's tap names against the backbone.
    pub fn new(
        backbone: &'a dyn Backbone,
        explainer: &'a dyn Explainer,
        config: EvalConfig,
    ) -> Result<Self> {
        Ok(Self {
            request: backbone.tap_request(explainer.taps(), true)?,
            logits_only: backbone.tap_request(&[], true)?,
            backbone,
            explainer,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EvalConfig {
        &self.config
    }

    /// Scores a batch `images` (B, 3, H, W) in [0, 1]; `first_index` is the run-wide index
    /// of its first image (ROAD's noise streams depend on it, not on the batching).
    pub fn evaluate(&self, images: &Tensor, first_index: u64) -> Result<Vec<ImageScores>> {
        let (b, c, h, w) = images.dims4().map_err(|_| {
            MetricsError::BadInput(format!("images must be (B, 3, H, W), got {images:?}"))
        })?;
        let out = self.backbone.forward(images, &self.request, Mode::Eval)?;
        let logits = out
            .logits
            .ok_or_else(|| MetricsError::BadInput("the backbone returned no logits".into()))?;
        let mut classes = Vec::with_capacity(b);
        let mut y = Vec::with_capacity(b);
        for row in logit_rows(&logits, b)? {
            let top = outcome(&row, 0)?.top;
            classes.push(top);
            y.push(outcome(&row, top)?.prob);
        }
        let raw = self.explainer.explain(images, &out.taps, &classes)?;
        if raw.dims().first() != Some(&b) {
            return Err(MetricsError::BadInput(format!(
                "the explainer returned maps of shape {:?} for {b} images",
                raw.dims()
            )));
        }
        let maps = normalize_maps(&raw, h, w)?;
        // A NaN map would score as a result (AD 0 looks perfect).
        if !tame_ops::all_finite(&maps)? {
            return Err(MetricsError::BadInput(
                "the explanation maps hold NaN or infinite values".into(),
            ));
        }
        let chunk = if self.config.chunk == 0 {
            b
        } else {
            self.config.chunk
        };
        let device = images.device();
        let (backbone, logits_only) = (self.backbone, &self.logits_only);
        let classify = |x: &Tensor| -> Result<Tensor> {
            backbone
                .forward(x, logits_only, Mode::Eval)?
                .logits
                .ok_or_else(|| MetricsError::BadInput("the backbone returned no logits".into()))
        };
        let classify: &Classify = &classify;
        let cfg = &self.config;
        // Off the native CPU path, AD/IC's masks are made where the images are; the other
        // metrics make theirs on the host, from one copy of the maps and pixels.
        let on_device = Kernels::for_tensor(images) == Kernels::Portable;
        let on_host = (cfg.metrics.ad_ic && !on_device) || cfg.metrics.road || cfg.metrics.insdel;
        let (host_maps, pixels) = match on_host {
            true => (
                tame_ops::host::download::<f32>(&maps)?,
                tame_ops::host::download::<f32>(images)?,
            ),
            false => (Vec::new(), Vec::new()),
        };
        let dims = [c, h, w];
        let ad_ic = match (cfg.metrics.ad_ic, on_device) {
            (false, _) => None,
            (true, true) => Some(ad_ic_scores_on_device(
                classify, images, &maps, &classes, &y, chunk,
            )?),
            (true, false) => Some(ad_ic_scores(
                classify, &pixels, dims, &host_maps, &classes, &y, chunk, device,
            )?),
        };
        let maps = host_maps;
        let road = match cfg.metrics.road {
            true => Some(road_scores(
                classify,
                &pixels,
                dims,
                &maps,
                &classes,
                &y,
                first_index,
                &cfg.road,
                chunk,
                device,
            )?),
            false => None,
        };
        let insdel = match cfg.metrics.insdel {
            true => Some(insertion_deletion(
                classify,
                &pixels,
                dims,
                &maps,
                &classes,
                &cfg.insdel,
                chunk,
                device,
            )?),
            false => None,
        };
        Ok((0..b)
            .map(|i| ImageScores {
                class: classes[i],
                y: y[i],
                ad_ic: ad_ic.as_ref().map(|s| s[i]),
                road: road.as_ref().map(|s| s[i].clone()),
                insdel: insdel.as_ref().map(|s| s[i]),
            })
            .collect())
    }
}

/// Running totals of every metric over the images of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    ad_ic: Option<AdIcTotals>,
    road: Option<RoadTotals>,
    insdel: Option<InsDelTotals>,
}

impl Totals {
    /// Adds one image's scores.
    pub fn add(&mut self, s: &ImageScores) {
        if let Some(v) = &s.ad_ic {
            self.ad_ic.get_or_insert_with(Default::default).add(v);
        }
        if let Some(v) = &s.road {
            self.road.get_or_insert_with(Default::default).add(v);
        }
        if let Some(v) = &s.insdel {
            self.insdel.get_or_insert_with(Default::default).add(v);
        }
    }

    /// The report of the metrics seen so far; `road_fractions` labels the ROAD curves.
    pub fn report_with(&self, road_fractions: &[f64]) -> Report {
        Report {
            ad_ic: self.ad_ic.as_ref().map(AdIcTotals::report),
            road: self.road.as_ref().map(|t| t.report(road_fractions)),
            insdel: self.insdel.as_ref().map(InsDelTotals::report),
        }
    }

    /// [`report_with`](Self::report_with) the default ROAD fractions.
    pub fn report(&self) -> Report {
        self.report_with(&RoadConfig::default().fractions)
    }
}

/// Every metric's summary over a run; a metric not computed is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// AD and IC per keep level.
    pub ad_ic: Option<AdIcReport>,
    /// ROAD curves.
    pub road: Option<RoadReport>,
    /// Insertion/deletion AUCs.
    pub insdel: Option<InsDelReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metric_lists() {
        let all: MetricSet = "ad-ic,road,insdel".parse().unwrap();
        assert!(all.ad_ic && all.road && all.insdel);
        let one: MetricSet = "road".parse().unwrap();
        assert!(!one.ad_ic && one.road && !one.insdel);
        assert!(matches!(
            "ad-ic,roads".parse::<MetricSet>(),
            Err(MetricsError::UnknownMetric(m)) if m == "roads"
        ));
    }
}
