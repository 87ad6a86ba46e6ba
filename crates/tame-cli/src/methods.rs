//! The explanation methods `tame explain` and `tame compare` offer, all behind
//! [`tame_metrics::Explainer`] so that every output and metric treats them alike.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use clap::Args;
use tame_backbones::Backbone;
use tame_cams::{
    GradCam, GradCamConfig, GradCamPlusPlus, Rise, RiseConfig, ScoreCam, ScoreCamConfig,
};
use tame_metrics::{Explainer, TameExplainer};

use crate::mechanism::LoadedMechanism;

/// One explanation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Tame,
    GradCam,
    GradCamPlusPlus,
    ScoreCam,
    Rise,
}

impl Method {
    /// Every method, in the order of the comparison table.
    pub const ALL: [Method; 5] = [
        Method::Tame,
        Method::GradCam,
        Method::GradCamPlusPlus,
        Method::ScoreCam,
        Method::Rise,
    ];

    /// The command-line name, also used in output file names.
    pub fn name(self) -> &'static str {
        match self {
            Method::Tame => "tame",
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcam++",
            Method::ScoreCam => "scorecam",
            Method::Rise => "rise",
        }
    }

    /// The name people know it by, for tables.
    pub fn title(self) -> &'static str {
        match self {
            Method::Tame => "TAME",
            Method::GradCam => "Grad-CAM",
            Method::GradCamPlusPlus => "Grad-CAM++",
            Method::ScoreCam => "Score-CAM",
            Method::Rise => "RISE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown method `{s}` (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// A method list as the command line gives it (see [`parse_methods`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Methods(pub Vec<Method>);

impl FromStr for Methods {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        parse_methods(s).map(Methods)
    }
}

/// A comma-separated method list, `all` meaning every method.
pub fn parse_methods(text: &str) -> std::result::Result<Vec<Method>, String> {
    if text.trim() == "all" {
        return Ok(Method::ALL.to_vec());
    }
    let mut methods = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let method: Method = part.parse()?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    if methods.is_empty() {
        return Err("no method named".into());
    }
    Ok(methods)
}

/// Settings of the comparison methods (TAME's come from its checkpoint).
#[derive(Args, Clone, Debug)]
pub struct MethodArgs {
    /// Tap explained by Grad-CAM, Grad-CAM++ and Score-CAM. Default: the last convolutional
    /// stage (features.29 for vgg16, layer4 for resnet50, head for efficientnet-lite0).
    #[arg(long)]
    pub cam_tap: Option<String>,

    /// Masked images per forward pass of Score-CAM and RISE.
    #[arg(long, default_value_t = 16, value_parser = crate::common::at_least_one::<usize>)]
    pub mask_batch_size: usize,

    /// Number of RISE masks (the RISE paper's 4000 by default).
    #[arg(long, default_value_t = 4000)]
    pub rise_masks: usize,

    /// Seed of the RISE masks.
    #[arg(long, default_value_t = 0)]
    pub rise_seed: u64,
}

impl MethodArgs {
    /// The explainer of each of `methods`, all set up before any runs so that a bad setting
    /// fails fast.
    pub fn build_all<'a>(
        &self,
        methods: &[Method],
        backbone: &'a dyn Backbone,
        mechanism: Option<&'a LoadedMechanism>,
    ) -> Result<Vec<(Method, Box<dyn Explainer + 'a>)>> {
        methods
            .iter()
            .map(|&m| Ok((m, self.build(m, backbone, mechanism)?)))
            .collect()
    }

    /// The explainer of `method` over `backbone` (`mechanism` is needed for TAME only).
    fn build<'a>(
        &self,
        method: Method,
        backbone: &'a dyn Backbone,
        mechanism: Option<&'a LoadedMechanism>,
    ) -> Result<Box<dyn Explainer + 'a>> {
        let cam = GradCamConfig {
            tap: self.cam_tap.clone(),
        };
        Ok(match method {
            Method::Tame => match mechanism {
                Some(m) => Box::new(TameExplainer::new(&m.am, m.taps.clone())?),
                None => bail!("TAME needs an attention mechanism (--am)"),
            },
            Method::GradCam => Box::new(GradCam::new(backbone, cam)?),
            Method::GradCamPlusPlus => Box::new(GradCamPlusPlus::new(backbone, cam)?),
            Method::ScoreCam => Box::new(ScoreCam::new(
                backbone,
                ScoreCamConfig {
                    tap: self.cam_tap.clone(),
                    batch_size: self.mask_batch_size,
                },
            )?),
            Method::Rise => Box::new(Rise::new(
                backbone,
                RiseConfig {
                    masks: self.rise_masks,
                    batch_size: self.mask_batch_size,
                    seed: self.rise_seed,
                    ..RiseConfig::default()
                },
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_lists_parse() {
        assert_eq!(parse_methods("all").unwrap(), Method::ALL.to_vec());
        assert_eq!(
            parse_methods("tame, gradcam++,tame").unwrap(),
            vec![Method::Tame, Method::GradCamPlusPlus]
        );
        assert!(parse_methods("gradcam,lime").unwrap_err().contains("lime"));
        assert!(parse_methods(" , ").is_err());
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
    }
}
