//! The Markdown report: machine, build, parity, benchmarks beside PyTorch, device memory.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;

use super::pytorch::{PyMeasured, PyTorchSide};
use super::{commit, gib, Check, Measured, MemoryGauge, Plan, PARITY_BATCH};

/// Where the check ran.
pub(super) struct Machine {
    pub(super) host: String,
    pub(super) cpu: String,
    pub(super) device: String,
    pub(super) notes: Vec<String>,
}

pub(super) fn machine(device: &Device, spec: &str) -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string());
    let host = format!(
        "{}, Linux {}",
        read("/proc/sys/kernel/hostname").unwrap_or_else(|_| "unknown host".into()),
        read("/proc/sys/kernel/osrelease").unwrap_or_else(|_| "?".into())
    );
    let model = read("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let cpu = format!("{model}, {cpus} logical CPUs, RAYON_NUM_THREADS {threads}");
    let mut notes = Vec::new();
    let device = match MemoryGauge::new(device) {
        None => format!("`{spec}`, the device side on the portable kernels (the code a GPU runs)"),
        Some(gauge) => {
            let driver = Command::new("nvidia-smi")
                .args(["--query-gpu=driver_version", "--format=csv,noheader"])
                .arg(format!("--id={}", spec.trim_start_matches("cuda:")))
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| format!("driver {}", String::from_utf8_lossy(&o.stdout).trim()))
                .unwrap_or_else(|| "driver version unknown (no nvidia-smi)".into());
            if std::env::var_os("TAME_GPU_CHECK_CURAND_STUB").is_some() {
                notes.push(
                    "This host has no libcurand.so.10: run.sh let the bundle's stub stand in \
                     for it. candle opens a cuRAND generator with each CUDA device, but \
                     gpu-check draws no random numbers on the device (its inputs and \
                     initialisations are made on the host)."
                        .into(),
                );
            }
            format!("`{spec}`: {}, {driver}", gauge.describe())
        }
    };
    Machine {
        host,
        cpu,
        device,
        notes,
    }
}

/// How this binary was built.
fn build() -> Vec<(&'static str, String)> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cuda = match option_env!("CUDARC_CUDA_VERSION") {
        _ if !cfg!(feature = "cuda") => "not built with CUDA (no `cuda` feature)".to_string(),
        Some(v) => format!("`cuda` feature, cudarc bindings of CUDA {v}"),
        None => "`cuda` feature, cudarc bindings of the build's nvcc".to_string(),
    };
    // Set by `--prepare`; a local build describes its checkout.
    let source = match option_env!("TAME_GPU_CHECK_BUILD") {
        Some(bundle) => format!("`--prepare` bundle: {bundle}"),
        None => format!(
            "checkout at {}",
            commit(Path::new(env!("CARGO_MANIFEST_DIR")))
        ),
    };
    vec![
        (
            "xtask",
            format!("{}, {profile} profile", env!("CARGO_PKG_VERSION")),
        ),
        ("CUDA", cuda),
        ("source", source),
    ]
}

pub(super) struct Report {
    pub(super) command: String,
    pub(super) spec: String,
    pub(super) machine: Machine,
    pub(super) quick: bool,
    pub(super) plan: Plan,
    pub(super) checks: Vec<Check>,
    pub(super) ours: Vec<Measured>,
    /// (model, phase, peak) of the phases that are not benchmarks.
    pub(super) memory: Vec<(&'static str, String, Option<u64>)>,
    pub(super) start_memory: Option<u64>,
    pub(super) pytorch: PyTorchSide,
    pub(super) seconds: f64,
}

impl Report {
    pub(super) fn markdown(&self) -> String {
        let mut s = String::new();
        let failed = self.checks.iter().filter(|c| !c.passed()).count();
        let _ = writeln!(s, "# gpu-check report\n");
        if failed == 0 {
            let _ = writeln!(
                s,
                "**PASS**: all {} parity checks within tolerance.\n",
                self.checks.len()
            );
        } else {
            let _ = writeln!(
                s,
                "**FAIL**: {failed} of {} parity checks out of tolerance.\n",
                self.checks.len()
            );
        }
        let _ = writeln!(
            s,
            "Written {} by `{}` in {}{}.\n",
            utc_now(),
            self.command,
            duration(self.seconds),
            if self.quick { " (quick)" } else { "" }
        );

        let _ = writeln!(s, "## Machine\n\n| | |\n|---|---|");
        let _ = writeln!(s, "| host | {} |", self.machine.host);
        let _ = writeln!(s, "| CPU | {} |", self.machine.cpu);
        let _ = writeln!(s, "| device | {} |", self.machine.device);
        let torch = match &self.pytorch {
            PyTorchSide::Ran(r) => format!(
                "torch {}, torchvision {}, on {}, {} CPU threads, TF32 off",
                r.torch, r.torchvision, r.device, r.threads
            ),
            PyTorchSide::Unavailable(why) => format!("not run: {why}"),
            PyTorchSide::Skipped => "left out (--no-pytorch)".into(),
        };
        let _ = writeln!(s, "| PyTorch | {torch} |\n");

        let _ = writeln!(s, "## Build\n\n| | |\n|---|---|");
        for (key, value) in build() {
            let _ = writeln!(s, "| {key} | {value} |");
        }
        let _ = writeln!(s);

        self.parity_section(&mut s);
        self.benchmark_section(&mut s);
        self.memory_section(&mut s);

        let mut notes = self.machine.notes.clone();
        if let PyTorchSide::Unavailable(why) = &self.pytorch {
            notes.push(format!(
                "The PyTorch side did not run: {why}. It needs python3 with torch and \
                 torchvision (and numpy) on the same device."
            ));
        }
        if !notes.is_empty() {
            let _ = writeln!(s, "## Notes\n");
            for n in notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    fn parity_section(&self, s: &mut String) {
        let device_side = if self.spec == "cpu" {
            "the CPU with the portable kernels (candle compositions, the code a GPU runs)"
                .to_string()
        } else {
            format!("`{}` (every op on the portable path)", self.spec)
        };
        let _ = writeln!(
            s,
            "## Parity\n\n\
             Device side: {device_side}. Reference: the CPU with the native kernels \
             (tame-kernels). Both sides: synthetic weights, the same {PARITY_BATCH} \
             deterministic 224x224 images, a TAME mechanism initialised with seed 0 on the \
             default taps. In f32: the logits of an eval pass; the maps of the classes the \
             reference predicts, min-max normalised and upsampled; AD/IC (`Evaluator`, keep \
             levels 100, 50 and 15 %); the loss of one `Trainer::step` (labels 7 and 107, \
             ResNet-50 in train mode, VGG-16 in eval mode: off the CPU its dropout draws masks \
             with the device's own generator, which no CPU run repeats). In \
             f64, the same training step: its loss, the mechanism's gradients (the optimizer's \
             momentum buffers after its first step: gradient plus weight decay) and the \
             mechanism after the step.\n"
        );
        let _ = writeln!(
            s,
            "| model | check | measure | value | tolerance | result |\n\
             |---|---|---|---:|---:|:---:|"
        );
        for c in &self.checks {
            let value = match (&c.error, c.what.contains("classes")) {
                (Some(_), _) => "error".to_string(),
                (None, true) => format!("{}", c.value),
                (None, false) => format!("{:.2e}", c.value),
            };
            let tolerance = if c.tolerance == 0.0 {
                "0".to_string()
            } else {
                format!("{:.0e}", c.tolerance)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {value} | {tolerance} | {} |",
                c.model,
                c.what,
                // A bar would end the cell.
                c.measure.replace('|', "\\|"),
                if c.passed() { "pass" } else { "**FAIL**" }
            );
        }
        for c in self.checks.iter().filter(|c| c.error.is_some()) {
            let _ = writeln!(
                s,
                "\n{} {}: `{}`",
                c.model,
                c.what,
                c.error.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(
            s,
            "\nTolerances: in f32 a GPU's results differ from the CPU's in the order of their \
             sums (cuBLAS' blocking, no Winograd, other reductions) by 1e-7..1e-6 relative per \
             layer, growing along 16 or 50 layers; each f32 bound leaves one to two orders of \
             magnitude over that and still catches a wrong kernel. AD/IC may move a little \
             more than the maps: a pixel close to a keep level's threshold can fall on its \
             other side. Gradients are compared in f64: the synthetic backbones' logits are in \
             the thousands (a saturated softmax) and ResNet-50 trains on the batch statistics \
             of 2 images, so f32 rounding alone moves the gradients by up to 20 % (native \
             against portable kernels on the CPU), while in f64 the two CPU paths agree to \
             1e-11 or better. A tensor's differences are scaled by its largest value, or 1e-3 \
             of the largest gradient of all if that is larger (the biases of convolutions \
             before a train-mode batch norm get no gradient, only rounding noise).\n"
        );
    }

    fn benchmark_section(&self, s: &mut String) {
        let runs = self.plan.runs;
        let where_ = if self.spec == "cpu" {
            "on the CPU with its native kernels".to_string()
        } else {
            format!("on `{}`", self.spec)
        };
        let _ = writeln!(
            s,
            "## Benchmarks\n\n\
             tame {where_} with synthetic weights, PyTorch (`xtask/bench/gpu_check_pytorch.py`: \
             torchvision's models, randomly initialised, and the reference mechanism) on the \
             same device; the default taps. Seconds per batch: the median of {runs} timed \
             run{} after a warm-up (the best in brackets), the device synchronised after each. \
             **Ratio = tame time / PyTorch time** (below 1: tame is faster).{}\n",
            if runs == 1 { "" } else { "s" },
            if self.quick {
                " With `--quick` (small batches, one run) these figures test the command; they \
                 are no measurement."
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "| model | work | batch | tame s | tame images/s | PyTorch s | PyTorch images/s | ratio |\n\
             |---|---|---:|---:|---:|---:|---:|---:|"
        );
        for m in &self.ours {
            let theirs = self.pytorch_result(m);
            let (their_s, their_rate) = match theirs {
                Some(p) => (
                    format!("{:.4} ({:.4})", p.median, p.best),
                    format!("{:.1}", m.batch as f64 / p.median),
                ),
                None => (self.pytorch_absent().into(), self.pytorch_absent().into()),
            };
            let (ours_s, ours_rate, ratio) = match (&m.timing, theirs) {
                (Err(_), _) => ("error".into(), "error".into(), "n/a".into()),
                (Ok(t), theirs) => (
                    format!("{:.4} ({:.4})", t.median, t.best),
                    format!("{:.1}", m.batch as f64 / t.median),
                    theirs.map_or("n/a".into(), |p| format!("{:.2}x", t.median / p.median)),
                ),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {ours_s} | {ours_rate} | {their_s} | {their_rate} | {ratio} |",
                m.model,
                m.work.name(),
                m.batch,
            );
        }
        for m in &self.ours {
            if let Err(e) = &m.timing {
                let _ = writeln!(
                    s,
                    "\n{} {} at batch {}: `{e}`",
                    m.model,
                    m.work.name(),
                    m.batch
                );
            }
        }
        let _ = writeln!(
            s,
            "\nexplain: one pass with taps, each image's top-class map normalised, upsampled to \
             224x224 and copied to the host (tame applies only the explained class's row of the \
             mechanism's fuser, the reference mechanism all 1000). train: one optimizer step \
             of the reference loop (ResNet-50 in train mode, VGG-16 in eval mode as in the parity \
             checks, SGD with Nesterov momentum). ad-ic: \
             the unmasked pass with the maps, then the images masked at 100, 50 and 15 % (tame \
             builds the masks on the host, PyTorch on the device).\n"
        );
    }

    /// What the PyTorch columns say without a figure.
    fn pytorch_absent(&self) -> &'static str {
        match self.pytorch {
            PyTorchSide::Ran(_) => "n/a",
            PyTorchSide::Unavailable(_) => "not run",
            PyTorchSide::Skipped => "left out",
        }
    }

    fn pytorch_result(&self, m: &Measured) -> Option<&PyMeasured> {
        match &self.pytorch {
            PyTorchSide::Ran(run) => run
                .results
                .iter()
                .find(|p| p.model == m.model && p.work == m.work.name() && p.batch == m.batch),
            _ => None,
        }
    }

    fn memory_section(&self, s: &mut String) {
        let _ = writeln!(s, "## Peak device memory\n");
        let Some(start) = self.start_memory else {
            let _ = writeln!(s, "n/a: a CPU run has no device memory.\n");
            return;
        };
        let _ = writeln!(
            s,
            "tame: the device memory in use (total - free, from the driver), sampled every 5 \
             ms while a phase runs; it includes the CUDA context, memory pools and any other \
             process: {} in use at the start. PyTorch: its caching allocator's \
             `torch.cuda.max_memory_allocated` (and `max_memory_reserved`), which leave the \
             context out.\n",
            gib(start)
        );
        let _ = writeln!(
            s,
            "| model | phase | batch | tame peak in use | tame above start | PyTorch max allocated | PyTorch max reserved |\n\
             |---|---|---:|---:|---:|---:|---:|"
        );
        let show = |b: Option<u64>| b.map_or("n/a".to_string(), gib);
        let above = |b: Option<u64>| b.map(|b| b.saturating_sub(start));
        for (model, phase, peak) in &self.memory {
            let _ = writeln!(
                s,
                "| {model} | {phase} | {PARITY_BATCH} | {} | {} | | |",
                show(*peak),
                show(above(*peak))
            );
        }
        let mut overall = self.memory.iter().filter_map(|m| m.2).max();
        for m in &self.ours {
            let theirs = self.pytorch_result(m);
            overall = overall.max(m.peak_memory);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.model,
                m.work.name(),
                m.batch,
                show(m.peak_memory),
                show(above(m.peak_memory)),
                theirs.map_or(self.pytorch_absent().into(), |p| show(p.peak_allocated)),
                theirs.map_or(self.pytorch_absent().into(), |p| show(p.peak_reserved))
            );
        }
        let _ = writeln!(s, "\nMaximum over the run: {}.\n", show(overall));
    }
}

fn duration(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    if whole < 60 {
        format!("{seconds:.1} s")
    } else {
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

/// The current time in UTC, `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    utc(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

/// `secs` after the Unix epoch, `YYYY-MM-DD HH:MM UTC`.
fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_825_600), "2000-02-29 12:00 UTC");
        assert_eq!(utc(1_798_761_599), "2026-12-31 23:59 UTC");
    }
}
