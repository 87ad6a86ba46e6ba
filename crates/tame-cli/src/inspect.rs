//! `tame inspect`: the taps of a backbone and their shapes.

use anyhow::Result;
use clap::Args;
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::BackboneKind;

#[derive(Args)]
pub struct InspectArgs {
    /// The backbone: vgg16 or resnet50.
    #[arg(long, short)]
    model: BackboneKind,

    /// Weights: a .safetensors/.pth/.pt file, `hub:<owner>/<repo>`, or `synthetic`.
    /// Shapes do not depend on the weights, so the default is `synthetic` (no download).
    #[arg(long, default_value = "synthetic")]
    weights: WeightsSpec,

    /// Input size (square) the shapes are computed for.
    #[arg(long, default_value_t = tame_data::CROP_SIDE)]
    size: usize,

    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let device = tame_process::open_device(&args.device, crate::common::HOW_TO_BUILD_CUDA)?;
    let backbone = load_backbone(args.model, &args.weights, &device)?;
    let defaults = backbone.default_taps();
    let shapes = backbone.tap_shapes(args.size, &device)?;
    let width = shapes.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    println!(
        "{} taps for a 1x3x{size}x{size} input ({} in all; * = default TAME tap)",
        backbone.name(),
        shapes.len(),
        size = args.size
    );
    for (name, shape) in &shapes {
        let mark = if defaults.contains(name) { "*" } else { " " };
        println!("{mark} {name:width$}  {shape:?}");
    }
    println!("default taps: {}", defaults.join(" "));
    Ok(())
}
