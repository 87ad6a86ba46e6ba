//! The PyTorch half of the benchmarks: xtask/bench/gpu_check_pytorch.py run with `python3`,
//! its progress echoed, its JSON read.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::{Plan, Progress, MODELS};

/// What became of the PyTorch side.
pub(super) enum PyTorchSide {
    Ran(PyTorchRun),
    Unavailable(String),
    Skipped,
}

pub(super) struct PyTorchRun {
    pub(super) torch: String,
    pub(super) torchvision: String,
    pub(super) device: String,
    pub(super) threads: u64,
    pub(super) results: Vec<PyMeasured>,
}

pub(super) struct PyMeasured {
    pub(super) model: String,
    pub(super) work: String,
    pub(super) batch: usize,
    pub(super) median: f64,
    pub(super) best: f64,
    pub(super) peak_allocated: Option<u64>,
    pub(super) peak_reserved: Option<u64>,
}

/// Threads for PyTorch on the CPU: tame's (`RAYON_NUM_THREADS`, else every CPU).
fn cpu_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs the PyTorch half with `python3`, its progress echoed, and reads its JSON.
pub(super) fn run_pytorch(
    script: &Path,
    spec: &str,
    plan: &Plan,
    progress: &Progress,
) -> PyTorchSide {
    if !script.is_file() {
        return PyTorchSide::Unavailable(format!("no PyTorch script at {}", script.display()));
    }
    progress.say(format!("PyTorch side: python3 {}", script.display()));
    let batches: Vec<String> = plan.explain_batches.iter().map(usize::to_string).collect();
    let models: Vec<&str> = MODELS.iter().map(|k| k.name()).collect();
    let child = Command::new("python3")
        .arg(script)
        .args(["--device", spec, "--models", &models.join(",")])
        .args(["--explain-batches", &batches.join(",")])
        .args(["--batch", &plan.batch.to_string()])
        .args(["--runs", &plan.runs.to_string()])
        .args(["--threads", &cpu_threads().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return PyTorchSide::Unavailable("python3 not found".into())
        }
        Err(e) => return PyTorchSide::Unavailable(format!("cannot run python3 ({e})")),
    };
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return PyTorchSide::Unavailable("python3's output could not be read".into());
    };
    let progress = *progress;
    let echo = std::thread::spawn(move || {
        let mut last = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            progress.say(&line);
            if !line.trim().is_empty() {
                last = line;
            }
        }
        last
    });
    let mut text = String::new();
    let read = stdout.read_to_string(&mut text);
    let status = child.wait();
    let last_error = echo.join().unwrap_or_default();
    let json = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match (parse_pytorch(json), status, read) {
        (Ok(side), _, _) => side,
        (Err(_), Ok(status), Ok(_)) if !status.success() => PyTorchSide::Unavailable(format!(
            "python3 {} failed ({status}): {last_error}",
            script.display()
        )),
        (Err(e), _, _) => PyTorchSide::Unavailable(format!("unreadable PyTorch output ({e})")),
    }
}

/// The script's JSON: `{"error": ...}` or its measurements.
pub(super) fn parse_pytorch(json: &str) -> Result<PyTorchSide> {
    let v: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    if let Some(error) = v.get("error").and_then(|e| e.as_str()) {
        return Ok(PyTorchSide::Unavailable(error.to_string()));
    }
    let text = |key: &str| -> Result<String> {
        Ok(v.get(key)
            .and_then(|x| x.as_str())
            .with_context(|| format!("no `{key}`"))?
            .to_string())
    };
    let mut results = Vec::new();
    for r in v
        .get("results")
        .and_then(|r| r.as_array())
        .context("no `results`")?
    {
        let field = |key: &str| {
            r.get(key)
                .with_context(|| format!("a result without `{key}`"))
        };
        let number = |key: &str| -> Result<f64> {
            field(key)?
                .as_f64()
                .with_context(|| format!("`{key}` is not a number"))
        };
        results.push(PyMeasured {
            model: field("model")?
                .as_str()
                .context("`model` is not text")?
                .into(),
            work: field("work")?
                .as_str()
                .context("`work` is not text")?
                .into(),
            batch: field("batch")?.as_u64().context("`batch` is not a count")? as usize,
            median: number("median_s")?,
            best: number("best_s")?,
            peak_allocated: r.get("peak_allocated_bytes").and_then(|x| x.as_u64()),
            peak_reserved: r.get("peak_reserved_bytes").and_then(|x| x.as_u64()),
        });
    }
    Ok(PyTorchSide::Ran(PyTorchRun {
        torch: text("torch")?,
        torchvision: text("torchvision")?,
        device: text("device")?,
        threads: v.get("threads").and_then(|t| t.as_u64()).unwrap_or(0),
        results,
    }))
}
