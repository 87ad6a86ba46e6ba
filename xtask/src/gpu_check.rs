//! `cargo xtask gpu-check`: one command that proves the CUDA path on a GPU. On synthetic weights
//! it compares the device with the CPU's native kernels (explanation maps, a training step,
//! AD/IC), times the same work as PyTorch on the same device (xtask/bench/gpu_check_pytorch.py),
//! samples the device memory, and writes one Markdown report. With `--device cpu` the device
//! side runs the portable kernels, the code a GPU runs, so that the whole command also runs (in
//! CI) without a GPU. `--prepare DIR` builds what a GPU host without network or Rust needs
//! ([`prepare`]).

mod prepare;
mod pytorch;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use clap::Args;
use tame_am::{AmConfig, AttentionMechanism};
use tame_backbones::synthetic::{synthetic_uniform, SyntheticWeights};
use tame_backbones::weights::{load_backbone, WeightsSpec};
use tame_backbones::{Backbone, BackboneKind, Mode, Precision};
use tame_metrics::{normalize_maps, EvalConfig, Evaluator, Explainer, ImageScores, TameExplainer};
use tame_ops::{with_kernels, Kernels};
use tame_train::{BackboneMode, RunInputs, TrainConfig, Trainer};

use crate::bench::{input_side, mechanism, timed, Timing};
use pytorch::{run_pytorch, PyTorchSide};
use report::{machine, Report};
use tame_process::one_line;

#[derive(Args)]
pub struct GpuCheck {
    /// Where the checked work runs: cuda, cuda:N, or cpu (then the device side runs the
    /// portable kernels, the code a GPU runs, against the native ones: the dry run).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// The Markdown report.
    #[arg(long, value_name = "FILE", default_value = "gpu-check-report.md")]
    out: PathBuf,
    /// Small batches (explain at 1 and 2, training and AD/IC at 2) and one timed run each:
    /// the dry run on a CPU.
    #[arg(long)]
    quick: bool,
    /// Leave the PyTorch side out. Without it, a missing python3, torch or torchvision is
    /// said in the report, and fails the command when CI is set.
    #[arg(long)]
    no_pytorch: bool,
    /// The PyTorch half [default: xtask/bench/gpu_check_pytorch.py of this checkout].
    #[arg(long, value_name = "FILE")]
    pytorch_script: Option<PathBuf>,
    /// Check nothing; build into DIR what a GPU host without network or Rust toolchain needs
    /// to run the check (this xtask built with CUDA 13.0, the PyTorch script, run.sh), at most
    /// 64 MiB.
    #[arg(long, value_name = "DIR")]
    prepare: Option<PathBuf>,
    /// With --prepare: build without CUDA, to try the bundle where there is no GPU.
    #[arg(long, requires = "prepare", hide = true)]
    without_cuda: bool,
}

/// The backbones checked.
const MODELS: [BackboneKind; 2] = [BackboneKind::Vgg16, BackboneKind::ResNet50];
/// Images of the parity checks.
const PARITY_BATCH: usize = 2;

/// Tolerances of the parity checks. In f32 a GPU's results differ from the CPU's in the order
/// of their sums (cuBLAS' blocking, no Winograd, other reductions) by 1e-7..1e-6 relative per
/// layer, which grows along 16 or 50 layers; the f32 bounds leave one to two orders of
/// magnitude over that and still catch a wrong kernel, which is off by far more. Gradients are
/// compared in f64: through a backbone whose synthetic logits are in the thousands (a
/// saturated softmax) and, for ResNet-50 in train mode, batch statistics of 2 images, f32
/// rounding alone moves them by up to 20 % (native against portable kernels on the CPU), so
/// an f32 bound would test nothing; in f64 the two CPU paths agree to 1e-11 or better.
mod tolerance {
    /// Logits: max |Δ| over the largest |logit|.
    pub const LOGITS: f64 = 1e-4;
    /// Normalised maps in [0, 1] (224x224): max |Δ|.
    pub const MAPS: f64 = 1e-3;
    /// AD/IC: Y and the three O, |Δ| / value. A map difference can move a pixel across a keep
    /// level's threshold, which changes O by a little more than the maps' own differences.
    pub const AD_IC: f64 = 1e-2;
    /// The training loss in f32: |Δ| / loss.
    pub const LOSS: f64 = 1e-3;
    /// The training step in f64: the loss, the mechanism's gradients (the optimizer's first
    /// momentum buffers) and its state after the step, per tensor max |Δ| over its largest
    /// |value| (the worst tensor counts).
    pub const LOSS_F64: f64 = 1e-8;
    pub const GRADIENTS_F64: f64 = 1e-6;
    pub const STATE_F64: f64 = 1e-8;
    /// A tensor's scale is at least this fraction of the largest of all: the convolutions'
    /// biases before a train-mode batch norm get no gradient (the norm subtracts them), only
    /// rounding noise.
    pub const FLOOR: f64 = 1e-3;
}

/// How much work the benchmarks do.
struct Plan {
    explain_batches: Vec<usize>,
    batch: usize,
    runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                explain_batches: vec![1, 2],
                batch: 2,
                runs: 1,
            }
        } else {
            Plan {
                explain_batches: vec![1, 32],
                batch: 32,
                runs: 5,
            }
        }
    }
}

/// Progress lines, each with the seconds since the start.
#[derive(Clone, Copy)]
struct Progress(Instant);

impl Progress {
    fn say(&self, message: impl std::fmt::Display) {
        println!("[{:>7.1} s] {message}", self.0.elapsed().as_secs_f64());
    }
}

pub fn run(args: GpuCheck) -> Result<()> {
    if let Some(dir) = &args.prepare {
        return prepare::run(dir, !args.without_cuda);
    }
    let progress = Progress(Instant::now());
    let (device, spec) = open(&args.device)?;
    let gauge = MemoryGauge::new(&device);
    let plan = Plan::new(args.quick);
    let script = args.pytorch_script.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gpu_check_pytorch.py")
    });
    let machine = machine(&device, &spec);
    progress.say(format!(
        "gpu-check on {}{}",
        machine.device,
        if args.quick { " (quick)" } else { "" }
    ));
    let start_memory = gauge.as_ref().map(MemoryGauge::used).transpose()?;

    let mut checks = Vec::new();
    let mut ours = Vec::new();
    let mut memory = Vec::new();
    for kind in MODELS {
        match parity(kind, &device, gauge.as_ref(), &progress) {
            Ok((model_checks, peak)) => {
                checks.extend(model_checks);
                memory.push((kind.name(), "parity (device side)".to_string(), peak));
            }
            Err(e) => {
                let e = one_line(&e);
                progress.say(format!("{}: parity: error: {e}", kind.name()));
                checks.push(Check {
                    model: kind.name(),
                    what: "parity",
                    measure: "error",
                    value: f64::NAN,
                    tolerance: 0.0,
                    error: Some(e),
                });
            }
        }
        ours.extend(benchmarks(kind, &device, gauge.as_ref(), &plan, &progress));
    }
    let pytorch = if args.no_pytorch {
        PyTorchSide::Skipped
    } else {
        run_pytorch(&script, &spec, &plan, &progress)
    };
    if let PyTorchSide::Unavailable(why) = &pytorch {
        progress.say(format!("PyTorch side not run: {why}"));
    }

    let report = Report {
        command: std::iter::once("xtask".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        spec,
        machine,
        quick: args.quick,
        plan,
        checks,
        ours,
        memory,
        start_memory,
        pytorch,
        seconds: progress.0.elapsed().as_secs_f64(),
    };
    tame_atomic::write(&args.out, report.markdown().as_bytes())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    progress.say(format!("report written to {}", args.out.display()));
    match verdict(&report, in_ci(), args.no_pytorch) {
        Some(failure) => bail!("{failure} (report: {})", args.out.display()),
        None => {
            let passed = report.checks.len();
            progress.say(format!("all {passed} parity checks passed"));
            Ok(())
        }
    }
}

/// Why the command fails, if it does: a parity check out of tolerance, a benchmark that
/// failed, or a PyTorch side that could not run in CI without `--no-pytorch`.
fn verdict(report: &Report, ci: bool, no_pytorch: bool) -> Option<String> {
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} {}", c.model, c.what))
        .collect();
    if !failed.is_empty() {
        return Some(format!(
            "{} of {} parity checks failed: {}",
            failed.len(),
            report.checks.len(),
            failed.join("; ")
        ));
    }
    let broken: Vec<String> = report
        .ours
        .iter()
        .filter(|m| m.timing.is_err())
        .map(|m| format!("{} {} at batch {}", m.model, m.work.name(), m.batch))
        .collect();
    if !broken.is_empty() {
        return Some(format!("benchmarks failed: {}", broken.join("; ")));
    }
    match &report.pytorch {
        PyTorchSide::Unavailable(why) if ci && !no_pytorch => Some(format!(
            "the PyTorch side did not run ({why}); CI is set, so this fails \
             (--no-pytorch leaves it out)"
        )),
        _ => None,
    }
}

/// Whether CI is set (as tame-testdata reads it: to anything non-empty).
fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Parses `--device` and opens the device; also returns its canonical name (`cpu`, `cuda:N`).
fn open(spec: &str) -> Result<(Device, String)> {
    let device = tame_process::open_device(
        spec,
        "build it with `--features cuda` (see `cargo xtask gpu-check --prepare`), or pass \
         --device cpu",
    )?;
    let name = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        _ => "cpu".into(),
    };
    Ok((device, name))
}

/// `batch` deterministic images in [0, 1] of `side` x `side`, made on the CPU (the same values
/// for every device) and copied to `device`.
fn images(batch: usize, side: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = synthetic_uniform("gpu-check images", batch * 3 * side * side)
        .into_iter()
        .map(|u| u as f32)
        .collect();
    Ok(Tensor::from_vec(values, (batch, 3, side, side), &Device::Cpu)?.to_device(device)?)
}

fn labels(batch: usize) -> Vec<u32> {
    (0..batch).map(|i| ((100 * i + 7) % 1000) as u32).collect()
}

/// The training settings of `cargo xtask bench table` at `batch`, VGG-16 in eval mode: off
/// the CPU its dropout draws its masks with the device's own generator, which a CPU run
/// cannot repeat (and which a host without cuRAND lacks).
fn train_config(net: &dyn Backbone, batch: usize) -> TrainConfig {
    let backbone_mode = if net.name() == BackboneKind::Vgg16.name() {
        BackboneMode::Eval
    } else {
        BackboneMode::Reference
    };
    TrainConfig {
        backbone: net.name().to_string(),
        taps: net.default_taps(),
        epochs: 1,
        batch_size: batch,
        max_lr: 1e-4,
        weight_decay: 5e-4,
        seed: 0,
        per_sample_masks: false,
        backbone_mode,
        precision: Precision::F32,
        inputs: RunInputs::default(),
    }
}

/// The commit of the checkout at `dir`, and whether it has uncommitted changes.
fn commit(dir: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            let dirty = if dirty {
                " with uncommitted changes"
            } else {
                ""
            };
            format!("commit {commit}{dirty}")
        }
        None => "commit unknown".into(),
    }
}

fn host_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

// ---------------------------------------------------------------------------------------------
// Parity

/// What one side computes in f32, the precision tame runs in.
struct InF32 {
    top: Vec<u32>,
    logits: Vec<f64>,
    maps: Vec<f64>,
    scores: Vec<ImageScores>,
    loss: f64,
    /// The mechanism's layout, for the f64 step.
    config: AmConfig,
}

/// What one side computes in a training step in f64.
struct InF64 {
    loss: f64,
    gradients: Vec<(String, Vec<f64>)>,
    state: Vec<(String, Vec<f64>)>,
}

/// The f32 work of one side: an eval pass, the maps of `classes` (else of the predicted ones),
/// AD/IC, then one training step (last: in train mode the backbone's batch norms move their
/// running statistics).
fn in_f32(kind: BackboneKind, device: &Device, classes: Option<&[u32]>) -> Result<InF32> {
    let net = load_backbone(kind, &WeightsSpec::Synthetic, device)?;
    let net = net.as_ref();
    let side = input_side(net);
    let x = images(PARITY_BATCH, side, device)?;
    let taps = net.default_taps();
    let am = mechanism(net, device)?;
    let out = net.forward(&x, &net.tap_request(&taps, true)?, Mode::Eval)?;
    let logits = out.logits.context("the backbone returned no logits")?;
    let top = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let explainer = TameExplainer::new(&am, taps)?;
    let classes = classes.unwrap_or(top.as_slice());
    let maps = normalize_maps(&explainer.explain(&x, &out.taps, classes)?, side, side)?;
    let scores = Evaluator::new(net, &explainer, EvalConfig::default())?.evaluate(&x, 0)?;
    let config = train_config(net, PARITY_BATCH);
    let mut trainer = Trainer::new(net, mechanism(net, device)?, config, 1000)?;
    let loss = trainer.step(&x, &labels(PARITY_BATCH))?.loss;
    Ok(InF32 {
        logits: host_vec(&logits)?,
        maps: host_vec(&maps)?,
        top,
        scores,
        loss,
        config: am.config().clone(),
    })
}

/// One training step of one side in f64, the backbone's weights and the mechanism's
/// initialisation the same values as in f32.
fn in_f64(kind: BackboneKind, device: &Device, am: &AmConfig) -> Result<InF64> {
    let weights = VarBuilder::from_backend(Box::new(SyntheticWeights), DType::F64, device.clone());
    let net = kind.build(weights)?;
    let net = net.as_ref();
    let x = images(PARITY_BATCH, input_side(net), device)?.to_dtype(DType::F64)?;
    let am = AttentionMechanism::new(am, 0, DType::F64, device)?;
    let config = train_config(net, PARITY_BATCH);
    let mut trainer = Trainer::new(net, am, config, 1000)?;
    let loss = trainer.step(&x, &labels(PARITY_BATCH))?.loss;
    let named = |tensors: Vec<(String, Tensor)>| -> Result<Vec<(String, Vec<f64>)>> {
        tensors
            .into_iter()
            .map(|(name, t)| Ok((name, host_vec(&t)?)))
            .collect()
    };
    Ok(InF64 {
        loss,
        // After the first step a buffer holds its parameter's gradient (plus weight decay).
        gradients: named(trainer.optimizer().momentum_buffers())?,
        state: named(trainer.am().state_dict()?)?,
    })
}

/// One parity check: `value` of `measure` against `tolerance`, or the error that kept it
/// from being measured.
struct Check {
    model: &'static str,
    what: &'static str,
    measure: &'static str,
    value: f64,
    tolerance: f64,
    error: Option<String>,
}

impl Check {
    fn passed(&self) -> bool {
        self.error.is_none() && self.value <= self.tolerance // false for NaN
    }
}

/// max |a - b| (infinite when the lengths differ).
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0f64, |m, v| m.max(v.abs()))
}

/// max |a - b| over `scale` (0 when equal).
fn scaled(a: &[f64], b: &[f64], scale: f64) -> f64 {
    match max_abs_diff(a, b) {
        0.0 => 0.0,
        diff => diff / scale,
    }
}

/// The worst [`scaled`] difference of tensors matched by name, each over its largest |value|
/// or `floor` x the largest of all, whichever is larger (infinite if the names differ).
fn worst_tensor(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)], floor: f64) -> f64 {
    let b: BTreeMap<&str, &[f64]> = b.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let largest = b.values().fold(0f64, |m, v| m.max(max_abs(v)));
    a.iter()
        .fold(0f64, |worst, (name, v)| match b.get(name.as_str()) {
            Some(r) => worst.max(scaled(v, r, max_abs(r).max(floor * largest))),
            None => f64::INFINITY,
        })
}

fn relative(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / b.abs()
    }
}

/// The parity checks of one backbone, and the peak device memory of its device side.
fn parity(
    kind: BackboneKind,
    device: &Device,
    gauge: Option<&MemoryGauge>,
    progress: &Progress,
) -> Result<(Vec<Check>, Option<u64>)> {
    let name = kind.name();
    // Each side its own networks: a training step moves the batch norms' running statistics.
    // On a GPU every op takes the portable path anyway; on the CPU `Portable` chooses it.
    progress.say(format!(
        "{name}: parity in f32, reference side (CPU, native kernels)"
    ));
    let ours = with_kernels(Kernels::Native, || in_f32(kind, &Device::Cpu, None))?;
    progress.say(format!("{name}: parity in f32, device side"));
    let (theirs, peak) = peak_during(gauge, || {
        Ok(with_kernels(Kernels::Portable, || {
            in_f32(kind, device, Some(&ours.top)).map_err(|e| one_line(&e))
        }))
    })?;
    progress.say(format!("{name}: a training step in f64, reference side"));
    let ours64 = with_kernels(Kernels::Native, || in_f64(kind, &Device::Cpu, &ours.config))?;
    progress.say(format!("{name}: a training step in f64, device side"));
    let (theirs64, peak64) = peak_during(gauge, || {
        Ok(with_kernels(Kernels::Portable, || {
            in_f64(kind, device, &ours.config).map_err(|e| one_line(&e))
        }))
    })?;

    let check = |what, measure, value, tolerance| Check {
        model: name,
        what,
        measure,
        value,
        tolerance,
        error: None,
    };
    let failed = |what, error: &String| Check {
        model: name,
        what,
        measure: "error on the device side",
        value: f64::NAN,
        tolerance: 0.0,
        error: Some(error.clone()),
    };
    let mut checks = Vec::new();
    match &theirs {
        Ok(theirs) => {
            let (mut class_mismatches, mut ad_ic) = (0usize, 0f64);
            for (a, b) in theirs.scores.iter().zip(&ours.scores) {
                if a.class != b.class {
                    class_mismatches += 1;
                    continue;
                }
                ad_ic = ad_ic.max(relative(a.y, b.y));
                if let (Some(oa), Some(ob)) = (&a.ad_ic, &b.ad_ic) {
                    for (x, y) in oa.o.iter().zip(&ob.o) {
                        ad_ic = ad_ic.max(relative(*x, *y));
                    }
                }
            }
            if theirs.scores.len() != ours.scores.len() {
                class_mismatches = PARITY_BATCH;
            }
            checks.extend([
                check(
                    "logits (eval pass)",
                    "max |Δ| / max |logit|",
                    scaled(&theirs.logits, &ours.logits, max_abs(&ours.logits)),
                    tolerance::LOGITS,
                ),
                check(
                    "explanation maps (normalised, 224x224)",
                    "max |Δ|",
                    max_abs_diff(&theirs.maps, &ours.maps),
                    tolerance::MAPS,
                ),
                check(
                    "AD/IC: explained classes",
                    "images whose top class differs",
                    class_mismatches as f64,
                    0.0,
                ),
                check(
                    "AD/IC: Y and O at 100/50/15 %",
                    "max |Δ| / value",
                    ad_ic,
                    tolerance::AD_IC,
                ),
                check(
                    "training step in f32: loss",
                    "|Δ| / loss",
                    relative(theirs.loss, ours.loss),
                    tolerance::LOSS,
                ),
            ]);
        }
        Err(e) => checks.push(failed("f32: eval pass, maps, AD/IC, training step", e)),
    }
    match &theirs64 {
        Ok(theirs) => checks.extend([
            check(
                "training step in f64: loss",
                "|Δ| / loss",
                relative(theirs.loss, ours64.loss),
                tolerance::LOSS_F64,
            ),
            check(
                "training step in f64: AM gradients",
                "worst tensor: max |Δ| / max |g|",
                worst_tensor(&theirs.gradients, &ours64.gradients, tolerance::FLOOR),
                tolerance::GRADIENTS_F64,
            ),
            check(
                "training step in f64: AM after it",
                "worst tensor: max |Δ| / max |w|",
                worst_tensor(&theirs.state, &ours64.state, tolerance::FLOOR),
                tolerance::STATE_F64,
            ),
        ]),
        Err(e) => checks.push(failed("f64: training step", e)),
    }
    for c in &checks {
        match &c.error {
            Some(e) => progress.say(format!("{name}: {}: FAIL: {e}", c.what)),
            None => progress.say(format!(
                "{name}: {}: {:.2e} (tolerance {:.0e}) {}",
                c.what,
                c.value,
                c.tolerance,
                if c.passed() { "pass" } else { "FAIL" }
            )),
        }
    }
    Ok((checks, peak.max(peak64)))
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

/// The benchmarked work, named as the PyTorch script names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    Explain,
    Train,
    AdIc,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Explain => "explain",
            Work::Train => "train",
            Work::AdIc => "ad-ic",
        }
    }
}

/// One benchmark of tame: its timing, or the error that stopped it.
struct Measured {
    model: &'static str,
    work: Work,
    batch: usize,
    timing: Result<Timing, String>,
    peak_memory: Option<u64>,
}

/// Times `f` (`runs` runs after a warm-up, the device synchronised after each) and samples the
/// device memory meanwhile.
fn measure(
    device: &Device,
    gauge: Option<&MemoryGauge>,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Timing, Option<u64>)> {
    peak_during(gauge, || {
        timed(runs, || {
            f()?;
            Ok(device.synchronize()?)
        })
    })
}

/// Explain at each batch of the plan, a training step and AD/IC at its batch, on `device` (on
/// the CPU with the kernels it runs by default). An error (out of memory, say) is recorded and
/// the next benchmark runs.
fn benchmarks(
    kind: BackboneKind,
    device: &Device,
    gauge: Option<&MemoryGauge>,
    plan: &Plan,
    progress: &Progress,
) -> Vec<Measured> {
    let name = kind.name();
    let planned = plan
        .explain_batches
        .iter()
        .map(|&batch| (Work::Explain, batch))
        .chain([(Work::Train, plan.batch), (Work::AdIc, plan.batch)]);
    let bench = Bench::new(kind, device).map_err(|e| one_line(&e));
    planned
        .map(|(work, batch)| {
            progress.say(format!("{name}: timing {} at batch {batch}", work.name()));
            let result = match &bench {
                Ok(bench) => bench
                    .run(work, batch, gauge, plan.runs)
                    .map_err(|e| one_line(&e)),
                Err(e) => Err(e.clone()),
            };
            let (timing, peak_memory) = match result {
                Ok((timing, peak)) => {
                    progress.say(format!(
                        "{name}: {} at batch {batch}: {:.4} s median, {:.1} images/s",
                        work.name(),
                        timing.median,
                        batch as f64 / timing.median
                    ));
                    (Ok(timing), peak)
                }
                Err(e) => {
                    progress.say(format!(
                        "{name}: {} at batch {batch}: error: {e}",
                        work.name()
                    ));
                    (Err(e), None)
                }
            };
            Measured {
                model: name,
                work,
                batch,
                timing,
                peak_memory,
            }
        })
        .collect()
}

/// A backbone with a mechanism on a device, to time.
struct Bench {
    net: Box<dyn Backbone>,
    am: AttentionMechanism,
    device: Device,
}

impl Bench {
    fn new(kind: BackboneKind, device: &Device) -> Result<Self> {
        let net = load_backbone(kind, &WeightsSpec::Synthetic, device)?;
        let am = mechanism(net.as_ref(), device)?;
        Ok(Bench {
            net,
            am,
            device: device.clone(),
        })
    }

    fn run(
        &self,
        work: Work,
        batch: usize,
        gauge: Option<&MemoryGauge>,
        runs: usize,
    ) -> Result<(Timing, Option<u64>)> {
        let (net, device) = (self.net.as_ref(), &self.device);
        let side = input_side(net);
        let taps = net.default_taps();
        let x = images(batch, side, device)?;
        let explainer = TameExplainer::new(&self.am, taps.clone())?;
        match work {
            Work::Explain => {
                let with_taps = net.tap_request(&taps, true)?;
                // As `tame explain`: one pass for the taps and the prediction, each image's
                // top-class map normalised, upsampled to the input and copied to the host.
                measure(device, gauge, runs, || {
                    let pass = net.forward(&x, &with_taps, Mode::Eval)?;
                    let top = pass
                        .logits
                        .context("the backbone returned no logits")?
                        .argmax(D::Minus1)?
                        .to_vec1::<u32>()?;
                    let raw = explainer.explain(&x, &pass.taps, &top)?;
                    host_vec(&normalize_maps(&raw, side, side)?)?;
                    Ok(())
                })
            }
            Work::Train => {
                let config = train_config(net, batch);
                let mut trainer = Trainer::new(net, mechanism(net, device)?, config, 1000)?;
                let targets = labels(batch);
                measure(device, gauge, runs, || {
                    trainer.step(&x, &targets)?;
                    Ok(())
                })
            }
            Work::AdIc => {
                let evaluator = Evaluator::new(net, &explainer, EvalConfig::default())?;
                measure(device, gauge, runs, || {
                    evaluator.evaluate(&x, 0)?;
                    Ok(())
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Device memory

/// Reads how much of a CUDA device's memory is in use: total - free, as the driver reports it
/// (the CUDA context, memory pools and other processes included). Only exists for a CUDA device.
struct MemoryGauge {
    #[cfg(feature = "cuda")]
    context: std::sync::Arc<candle_core::cuda::cudarc::driver::CudaContext>,
    #[cfg(not(feature = "cuda"))]
    never: std::convert::Infallible,
}

impl MemoryGauge {
    fn new(device: &Device) -> Option<Self> {
        match device {
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => Some(Self {
                context: d.cuda_stream().context().clone(),
            }),
            _ => None,
        }
    }

    fn used(&self) -> Result<u64> {
        #[cfg(feature = "cuda")]
        {
            let (free, total) = self
                .context
                .mem_get_info()
                .map_err(|e| anyhow::anyhow!("cannot read the device's free memory ({e})"))?;
            Ok(total.saturating_sub(free) as u64)
        }
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }

    /// The device's name, compute capability and memory.
    fn describe(&self) -> String {
        #[cfg(feature = "cuda")]
        {
            let name = self
                .context
                .name()
                .unwrap_or_else(|e| format!("unnamed ({e})"));
            let cc = self
                .context
                .compute_capability()
                .map(|(major, minor)| format!("compute capability {major}.{minor}"))
                .unwrap_or_else(|e| format!("unknown compute capability ({e})"));
            let total = self
                .context
                .total_mem()
                .map(|b| gib(b as u64))
                .unwrap_or_else(|e| format!("unknown memory ({e})"));
            format!("{name}, {cc}, {total}")
        }
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }
}

/// Runs `f` while a thread samples the device memory every few milliseconds; returns its
/// result and the most memory seen in use (`None` without a gauge).
fn peak_during<R>(
    gauge: Option<&MemoryGauge>,
    f: impl FnOnce() -> Result<R>,
) -> Result<(R, Option<u64>)> {
    let Some(gauge) = gauge else {
        return Ok((f()?, None));
    };
    let peak = AtomicU64::new(gauge.used()?);
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(used) = gauge.used() {
                    peak.fetch_max(used, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let result = f();
        done.store(true, Ordering::Relaxed);
        result
    })?;
    peak.fetch_max(gauge.used()?, Ordering::Relaxed);
    Ok((result, Some(peak.into_inner())))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::pytorch::parse_pytorch;
    use super::report::Machine;
    use super::*;

    fn check(what: &'static str, value: f64, tolerance: f64) -> Check {
        Check {
            model: "vgg16",
            what,
            measure: "max |Δ|",
            value,
            tolerance,
            error: None,
        }
    }

    fn report(checks: Vec<Check>, pytorch: PyTorchSide) -> Report {
        Report {
            command: "xtask gpu-check --device cpu --quick".into(),
            spec: "cpu".into(),
            machine: Machine {
                host: "host".into(),
                cpu: "cpu".into(),
                device: "`cpu`".into(),
                notes: vec![],
            },
            quick: true,
            plan: Plan::new(true),
            checks,
            ours: vec![Measured {
                model: "vgg16",
                work: Work::Train,
                batch: 2,
                timing: Ok(Timing {
                    median: 2.0,
                    best: 1.5,
                }),
                peak_memory: None,
            }],
            memory: vec![],
            start_memory: None,
            pytorch,
            seconds: 125.0,
        }
    }

    fn pytorch_ran() -> PyTorchSide {
        parse_pytorch(
            r#"{"torch": "2.15.0", "torchvision": "0.29.2", "device": "cpu", "threads": 2,
                "results": [{"model": "vgg16", "work": "train", "batch": 2,
                             "median_s": 4.0, "best_s": 3.5}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_report_has_the_ratios_and_the_verdict() {
        let ok = report(vec![check("maps", 1e-6, 1e-3)], pytorch_ran());
        let text = ok.markdown();
        assert!(text.contains("**PASS**: all 1 parity checks"), "{text}");
        // tame 2 s, PyTorch 4 s a batch of 2.
        assert!(
            text.contains(
                "| vgg16 | train | 2 | 2.0000 (1.5000) | 1.0 | 4.0000 (3.5000) | 0.5 | 0.50x |"
            ),
            "{text}"
        );
        assert!(
            text.contains("n/a: a CPU run has no device memory"),
            "{text}"
        );
        assert!(text.contains("in 2 min 5 s (quick)"), "{text}");
        assert!(verdict(&ok, true, false).is_none());

        let bad = report(
            vec![check("maps", 2e-3, 1e-3), check("loss", f64::NAN, 1e-3)],
            pytorch_ran(),
        );
        assert!(bad.markdown().contains("**FAIL**: 2 of 2 parity checks"));
        let why = verdict(&bad, false, false).unwrap();
        assert!(why.contains("2 of 2 parity checks failed"), "{why}");
    }

    #[test]
    fn on_a_gpu_the_report_has_the_peak_memory() {
        let mut gpu = report(vec![check("maps", 0.0, 1e-3)], pytorch_ran());
        let gib = 1u64 << 30;
        gpu.start_memory = Some(gib / 2);
        gpu.memory = vec![("vgg16", "parity (device side)".into(), Some(2 * gib))];
        gpu.ours[0].peak_memory = Some(3 * gib);
        if let PyTorchSide::Ran(run) = &mut gpu.pytorch {
            run.results[0].peak_allocated = Some(gib);
        }
        let text = gpu.markdown();
        assert!(text.contains("0.50 GiB in use at the start"), "{text}");
        assert!(
            text.contains("| vgg16 | parity (device side) | 2 | 2.00 GiB | 1.50 GiB | | |"),
            "{text}"
        );
        assert!(
            text.contains("| vgg16 | train | 2 | 3.00 GiB | 2.50 GiB | 1.00 GiB | n/a |"),
            "{text}"
        );
        assert!(text.contains("Maximum over the run: 3.00 GiB."), "{text}");
    }

    #[test]
    fn a_missing_pytorch_fails_only_in_ci_unless_left_out() {
        let missing = report(
            vec![check("maps", 0.0, 1e-3)],
            PyTorchSide::Unavailable("python3 not found".into()),
        );
        let text = missing.markdown();
        assert!(
            text.contains("| PyTorch | not run: python3 not found |"),
            "{text}"
        );
        assert!(text.contains("| not run | not run | n/a |"), "{text}");
        assert!(verdict(&missing, false, false).is_none());
        assert!(verdict(&missing, true, true).is_none());
        let why = verdict(&missing, true, false).unwrap();
        assert!(
            why.contains("python3 not found") && why.contains("--no-pytorch"),
            "{why}"
        );
    }

    #[test]
    fn the_script_s_error_and_bad_output_are_unavailable() {
        match parse_pytorch(r#"{"error": "no torch"}"#).unwrap() {
            PyTorchSide::Unavailable(why) => assert_eq!(why, "no torch"),
            _ => panic!("an error should make the side unavailable"),
        }
        assert!(parse_pytorch("Traceback (most recent call last):").is_err());
        assert!(parse_pytorch(r#"{"torch": "2"}"#).is_err());
        let progress = Progress(Instant::now());
        let plan = Plan::new(true);
        match run_pytorch(Path::new("/nonexistent/script.py"), "cpu", &plan, &progress) {
            PyTorchSide::Unavailable(why) => assert!(why.contains("no PyTorch script"), "{why}"),
            _ => panic!("a missing script should make the side unavailable"),
        }
    }

    #[test]
    fn differences() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 2.0]), 0.5);
        assert_eq!(scaled(&[1.0, 2.0], &[1.5, 2.5], 4.0), 0.125);
        assert_eq!(scaled(&[0.0], &[0.0], 0.0), 0.0);
        assert!(max_abs_diff(&[1.0], &[1.0, 2.0]).is_infinite());
        let named = |name: &str, v: Vec<f64>| (name.to_string(), v);
        let a = vec![named("w", vec![1.0, 2.0]), named("b", vec![1e-9])];
        let b = vec![named("w", vec![1.0, 2.5]), named("b", vec![-1e-9])];
        // w: 0.5 / 2.5; b: noise of 2e-9 over 1e-3 x 2.5, not over its own 1e-9.
        assert!((worst_tensor(&a, &b, 1e-3) - 0.2).abs() < 1e-12);
        assert!((worst_tensor(&a[1..], &b[1..], 1e-3) - 2.0).abs() < 1e-12);
        let other = vec![named("v", vec![1.0, 2.0]), named("b", vec![0.0])];
        assert!(worst_tensor(&a, &other, 1e-3).is_infinite());
        assert!(!check("x", f64::INFINITY, 1.0).passed());
        let mut failed = check("x", 0.0, 1.0);
        failed.error = Some("out of memory".into());
        assert!(!failed.passed());
    }

    #[test]
    fn devices_are_parsed_with_one_line_errors() {
        let unknown = open("gpu").unwrap_err().to_string();
        assert!(
            unknown.contains("expected cpu, cuda or cuda:N"),
            "{unknown}"
        );
        if !candle_core::utils::cuda_is_available() {
            let unbuilt = open("cuda:1").unwrap_err().to_string();
            assert!(unbuilt.contains("--features cuda"), "{unbuilt}");
            assert!(!unbuilt.contains('\n'), "{unbuilt}");
        }
        assert_eq!(open("cpu").unwrap().1, "cpu");
    }
}
