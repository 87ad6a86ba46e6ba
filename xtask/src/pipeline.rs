//! `cargo xtask lr-test|train-eval <preset>`: the reference's bash pipelines (`lr_finder_*.sh`,
//! `train_eval_*.sh`, `*_Generic.sh`) as one command each, running the release `tame` binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// The reference's per-backbone settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// VGG-16: taps features.16 features.23 features.30, 8 epochs, max LR 1e-3.
    Vgg16,
    /// ResNet-50: taps layer2 layer3 layer4, 4 epochs, max LR 1e-4.
    Resnet50,
    /// Any backbone: --model is required; taps default to the backbone's.
    Generic,
}

impl Preset {
    fn model(self) -> Option<&'static str> {
        match self {
            Preset::Vgg16 => Some("vgg16"),
            Preset::Resnet50 => Some("resnet50"),
            Preset::Generic => None,
        }
    }

    fn layers(self) -> Option<&'static str> {
        match self {
            Preset::Vgg16 => Some("features.16 features.23 features.30"),
            Preset::Resnet50 => Some("layer2 layer3 layer4"),
            Preset::Generic => None,
        }
    }

    /// The reference's training-list name (labels are the model's own predictions).
    fn train_list(self, model: &str) -> String {
        match self {
            Preset::Vgg16 => "VGG16_train.txt".into(),
            Preset::Resnet50 => "ResNet50_train.txt".into(),
            Preset::Generic => format!("{model}_train.txt"),
        }
    }
}

/// What both pipelines take; every value has the reference's default.
#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// vgg16, resnet50, or generic (any backbone `tame inspect` knows, with --model).
    preset: Preset,

    /// The backbone (required with `generic`).
    #[arg(long)]
    model: Option<String>,

    /// Backbone weights (default: tame's default for the model).
    #[arg(long)]
    weights: Option<String>,

    /// Tap names (default: the preset's, or the backbone's defaults for `generic`).
    #[arg(long)]
    layers: Option<String>,

    /// Training images (default: $IMGDIR, else dataset/ILSVRC2012_img_train).
    #[arg(long)]
    img_dir: Option<PathBuf>,

    /// Training list (default: datalist/<VGG16|ResNet50|model>_train.txt).
    #[arg(long)]
    train_list: Option<PathBuf>,

    /// Attention-mechanism version.
    #[arg(long, default_value = "TAME")]
    version: String,

    /// Weight decay.
    #[arg(long, default_value = "5e-4")]
    wd: String,

    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,

    /// Extra arguments passed to `tame train` / `tame lr-test` as they are (after `--`).
    #[arg(last = true)]
    extra: Vec<OsString>,
}

/// `train-eval`'s own settings.
#[derive(Args, Debug)]
pub struct TrainEvalArgs {
    #[command(flatten)]
    common: PipelineArgs,

    /// Peak learning rate, from the LR test (default: the preset's published value).
    #[arg(long)]
    max_lr: Option<String>,

    /// Epochs (default: the preset's).
    #[arg(long)]
    epochs: Option<u64>,

    /// Validation and evaluation images (default: $VALDIR, else dataset/ILSVRC2012_img_val).
    #[arg(long)]
    val_dir: Option<PathBuf>,

    /// Evaluation list, scored for every epoch.
    #[arg(long, default_value = "datalist/Evaluation_2000.txt")]
    test_list: PathBuf,

    /// Validation list on which the best epoch is chosen (skipped when the file is absent).
    #[arg(long, default_value = "datalist/Validation_2000.txt")]
    select_on: PathBuf,

    /// Checkpoint folder (default: snapshots/<model>_<version>/).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
}

/// Resolved settings shared by both pipelines.
struct Resolved {
    model: String,
    shared: Vec<OsString>,
}

impl PipelineArgs {
    fn resolve(&self) -> Result<Resolved> {
        let model = match (&self.model, self.preset.model()) {
            (Some(m), _) => m.clone(),
            (None, Some(m)) => m.to_string(),
            (None, None) => bail!("the generic pipeline needs --model (see `tame inspect --help`)"),
        };
        let img_dir = dir_or_env(&self.img_dir, "IMGDIR", "dataset/ILSVRC2012_img_train");
        let train_list = self
            .train_list
            .clone()
            .unwrap_or_else(|| Path::new("datalist").join(self.preset.train_list(&model)));
        if !train_list.is_file() {
            bail!(
                "{}: no training list; make one with `tame datalist --model {model} --img-dir {}` \
                 or pass --train-list",
                train_list.display(),
                img_dir.display()
            );
        }
        let mut shared: Vec<OsString> = vec![
            "--model".into(),
            model.clone().into(),
            "--img-dir".into(),
            img_dir.into(),
            "--train-list".into(),
            train_list.into(),
            "--version".into(),
            self.version.clone().into(),
            "--wd".into(),
            self.wd.clone().into(),
            "--batch-size".into(),
            self.batch_size.to_string().into(),
        ];
        if let Some(layers) = self.layers.as_deref().or(self.preset.layers()) {
            shared.extend(["--layers".into(), layers.into()]);
        }
        if let Some(weights) = &self.weights {
            shared.extend(["--weights".into(), weights.into()]);
        }
        shared.extend(self.extra.iter().cloned());
        Ok(Resolved { model, shared })
    }
}

fn dir_or_env(flag: &Option<PathBuf>, var: &str, default: &str) -> PathBuf {
    flag.clone()
        .or_else(|| std::env::var_os(var).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(default))
}

/// Builds the release `tame` binary and returns its path.
fn tame_binary() -> Result<PathBuf> {
    run(Command::new(env!("CARGO")).args(["build", "--release", "-q", "-p", "tame-cli"]))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask lives inside the workspace")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("tame"))
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("+ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("could not start {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", command.get_program());
    }
    Ok(())
}

/// The LR range test with the preset's settings; the curve and its plot go to
/// `lr_test/`.
pub fn lr_test(args: PipelineArgs) -> Result<()> {
    let resolved = args.resolve()?;
    let tame = tame_binary()?;
    run(Command::new(&tame)
        .arg("lr-test")
        .args(&resolved.shared)
        .args(["--out-dir", "lr_test"]))?;
    eprintln!(
        "next: pick the max LR from the plot (or the suggestion above) and run \
         `cargo xtask train-eval {} --max-lr <LR>`",
        resolved.model
    );
    Ok(())
}

/// Trains with the preset's published settings, then evaluates every epoch on the test list
/// (and selects the best epoch on the validation list when it exists).
pub fn train_eval(args: TrainEvalArgs) -> Result<()> {
    let resolved = args.common.resolve()?;
    let model = &resolved.model;
    let snapshots = args
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| Path::new("snapshots").join(format!("{model}_{}", args.common.version)));
    let tame = tame_binary()?;

    let mut train = Command::new(&tame);
    train
        .arg("train")
        .args(&resolved.shared)
        .arg("--snapshot-dir")
        .arg(&snapshots);
    if let Some(lr) = &args.max_lr {
        train.args(["--max-lr", lr]);
    }
    if let Some(epochs) = args.epochs {
        train.args(["--epochs", &epochs.to_string()]);
    }
    run(&mut train)?;

    let val_dir = dir_or_env(&args.val_dir, "VALDIR", "dataset/ILSVRC2012_img_val");
    let mut eval = Command::new(&tame);
    eval.arg("eval")
        .args(["--model", model])
        .arg("--val-dir")
        .arg(&val_dir)
        .arg("--test-list")
        .arg(&args.test_list)
        .arg("--am")
        .arg(&snapshots)
        .arg("--out")
        .arg(snapshots.join("eval.csv"));
    if let Some(layers) = args
        .common
        .layers
        .as_deref()
        .or(args.common.preset.layers())
    {
        eval.args(["--layers", layers]);
    }
    if let Some(weights) = &args.common.weights {
        eval.args(["--weights", weights]);
    }
    if args.select_on.is_file() {
        eval.arg("--select-on").arg(&args.select_on);
    } else {
        eprintln!(
            "{}: not found, so no epoch selection on a validation list",
            args.select_on.display()
        );
    }
    run(&mut eval)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PipelineArgs,
    }

    fn parse(args: &[&str]) -> PipelineArgs {
        Cli::parse_from(std::iter::once("xtask").chain(args.iter().copied())).args
    }

    #[test]
    fn generic_needs_a_model() {
        let err = parse(&["generic"]).resolve().err().unwrap().to_string();
        assert!(err.contains("--model"), "{err}");
    }

    #[test]
    fn a_missing_list_says_how_to_make_one() {
        let err = parse(&["vgg16", "--img-dir", "imgs"])
            .resolve()
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("datalist/VGG16_train.txt") && err.contains("tame datalist"),
            "{err}"
        );
    }

    #[test]
    fn presets_fill_the_reference_defaults() {
        let list = tempfile::NamedTempFile::new().unwrap();
        let path = list.path().to_str().unwrap();
        let resolved = parse(&["resnet50", "--train-list", path, "--", "--workers", "1"])
            .resolve()
            .unwrap();
        let words: Vec<String> = resolved
            .shared
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let joined = words.join(" ");
        assert_eq!(resolved.model, "resnet50");
        assert!(joined.contains("--layers layer2 layer3 layer4"), "{joined}");
        assert!(joined.contains("--batch-size 32 "), "{joined}");
        assert!(joined.ends_with("--workers 1"), "{joined}");
    }
}
