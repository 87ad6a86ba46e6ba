//! `cargo xtask gpu-check --prepare DIR`: what a GPU host with neither network nor Rust needs
//! to run the check as one command, at most 64 MiB:
//!
//! - `xtask.gz`: this xtask, release, built with CUDA 13.0 (NVIDIA's wheels, `cuda-env`), whose
//!   PTX a driver of the 580 series loads; gzipped (candle's PTX and kernels make it large);
//! - `bench/gpu_check_pytorch.py` and the two `fixtures/` modules it imports;
//! - `stubs/libcurand.so.10`, for hosts without cuRAND (a CUDA 13 PyTorch does not bring it);
//! - `run.sh`, which finds the CUDA libraries, unpacks the binary and runs the check.
//!
//! The binary is built for the x86-64-v3 instruction set (AVX2), not this CPU, unless
//! RUSTFLAGS says otherwise, into its own `--target` folder so that it leaves the usual build
//! alone.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::commit;
use crate::cuda_env::{self, Version};

/// What the bundle may weigh.
const LIMIT: u64 = 64 << 20;
/// For a binary that runs on other machines (`.cargo/config.toml` builds for this CPU).
const PORTABLE_RUSTFLAGS: &str = "-C target-cpu=x86-64-v3";
/// The PyTorch half and the modules it imports, relative to `xtask/`.
const SCRIPTS: [&str; 3] = [
    "bench/gpu_check_pytorch.py",
    "fixtures/make_am_fixtures.py",
    "fixtures/synthetic.py",
];

pub fn run(dir: &Path, cuda: bool) -> Result<()> {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = xtask.join("..");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;

    let toolkit = if cuda {
        Some(cuda_env::toolkit(None, Version::V13_0)?)
    } else {
        None
    };
    let (rustc, triple) = rustc()?;
    let rustflags = std::env::var("RUSTFLAGS").unwrap_or_else(|_| PORTABLE_RUSTFLAGS.into());
    let what = match &toolkit {
        Some(t) => format!("CUDA {} (NVIDIA's wheels)", t.version.name()),
        None => "without CUDA".into(),
    };
    let description = format!(
        "{}, {rustc}, {triple}, RUSTFLAGS \"{rustflags}\", {what}",
        commit(&workspace)
    );
    println!("building the xtask ({what}, {triple}, RUSTFLAGS \"{rustflags}\")");
    let binary = build(
        &workspace,
        &triple,
        &rustflags,
        &description,
        toolkit.as_ref(),
    )?;
    let glibc = glibc_needed(&binary)?;

    let packed = dir.join("xtask.gz");
    gzip(&binary, &packed)?;
    let stubs = dir.join("stubs");
    fs::create_dir_all(&stubs)?;
    curand_stub(&workspace, &stubs)?;
    for script in SCRIPTS {
        let to = dir.join(script);
        fs::create_dir_all(to.parent().expect("a file in a folder"))?;
        fs::copy(xtask.join(script), &to).with_context(|| format!("cannot copy xtask/{script}"))?;
    }
    let run_sh = dir.join("run.sh");
    fs::write(&run_sh, run_script(&description, &glibc))?;
    fs::set_permissions(&run_sh, fs::Permissions::from_mode(0o755))?;

    // All of DIR travels, whatever else it holds.
    let total = size(&dir)?;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let binary_size = fs::metadata(&binary)?.len();
    println!(
        "{}: {:.1} MiB in all (xtask {:.1} MiB, gzipped {:.1} MiB; needs glibc {glibc})",
        dir.display(),
        mib(total),
        mib(binary_size),
        mib(fs::metadata(&packed)?.len())
    );
    if total > LIMIT {
        bail!(
            "the bundle in {} is {:.1} MiB, over the limit of {:.0} MiB",
            dir.display(),
            mib(total),
            mib(LIMIT)
        );
    }
    println!(
        "on the GPU host: {}/run.sh [--out REPORT.md] [other gpu-check options]",
        dir.display()
    );
    Ok(())
}

/// The bytes of the files under `path`.
fn size(path: &Path) -> Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(path)? {
        total += size(&entry?.path())?;
    }
    Ok(total)
}

/// rustc's version line and host triple.
fn rustc() -> Result<(String, String)> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("could not run rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    match (field("release:"), field("host:")) {
        (Some(release), Some(host)) => Ok((format!("rustc {release}"), host)),
        _ => bail!("rustc -vV said neither its release nor its host"),
    }
}

/// Builds the xtask in release for `triple` and returns the binary's path.
fn build(
    workspace: &Path,
    triple: &str,
    rustflags: &str,
    description: &str,
    toolkit: Option<&cuda_env::Toolkit>,
) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "-p", "xtask", "--target", triple])
        .arg("--message-format=json-render-diagnostics")
        .env("RUSTFLAGS", rustflags)
        // No debug information: the binary must fit the bundle.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("TAME_GPU_CHECK_BUILD", description)
        .stdout(Stdio::piped());
    if let Some(toolkit) = toolkit {
        command.arg("--features").arg("cuda");
        command.envs(toolkit.vars());
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(toolkit.root.join("bin")).chain(std::env::split_paths(&path));
        command.env("PATH", std::env::join_paths(paths)?);
    }
    let mut child = command.spawn().context("could not run cargo build")?;
    let stdout = child.stdout.take().context("cargo's output")?;
    // cargo's JSON messages: the last artifact of the xtask binary names its file.
    let mut binary = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_xtask = message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "xtask"
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if let (true, Some(path)) = (is_xtask, message["executable"].as_str()) {
            binary = Some(PathBuf::from(path));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build of the xtask failed ({status})");
    }
    binary.context("cargo build named no xtask binary")
}

/// The newest `GLIBC_2.N` symbol version that `binary` asks for, e.g. `2.34`.
fn glibc_needed(binary: &Path) -> Result<String> {
    let bytes = fs::read(binary)?;
    let marker = b"GLIBC_2.";
    let mut newest: Option<(u32, String)> = None;
    for start in bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i + marker.len())
    {
        let digits: String = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        if let Ok(minor) = digits.parse::<u32>() {
            if newest.as_ref().is_none_or(|(m, _)| minor > *m) {
                newest = Some((minor, format!("2.{minor}")));
            }
        }
    }
    newest
        .map(|(_, v)| v)
        .with_context(|| format!("{}: no GLIBC symbol versions", binary.display()))
}

fn gzip(from: &Path, to: &Path) -> Result<()> {
    let part = to.with_extension("gz.part");
    let status = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(from)
        .stdout(File::create(&part)?)
        .status()
        .context("could not run gzip")?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    fs::rename(&part, to)?;
    Ok(())
}

/// `libcurand.so.10` that a `cuda` binary can start with where cuRAND is missing: creating,
/// seeding and destroying a generator succeed (candle opens one with each device), every
/// other call fails with CURAND_STATUS_NOT_INITIALIZED, so a random draw on the device is an
/// error, never made-up numbers.
fn curand_stub(workspace: &Path, stubs: &Path) -> Result<()> {
    let bindings = cuda_env::cudarc_sources(workspace)?.join("src/curand/sys/mod.rs");
    let out = stubs.join("libcurand.so.10");
    cuda_env::stub_library(&bindings, "libcurand.so.10", &out, |name| match name {
        "curandCreateGenerator" | "curandCreateGeneratorHost" => format!(
            "int {name}(void **generator, int kind) {{ static char one; *generator = &one; \
             return 0; }}\n"
        ),
        "curandSetStream"
        | "curandSetPseudoRandomGeneratorSeed"
        | "curandSetGeneratorOffset"
        | "curandDestroyGenerator" => format!("int {name}(void) {{ return 0; }}\n"),
        _ => format!("int {name}(void) {{ return 101; }}\n"),
    })?;
    fs::remove_file(out.with_extension("c"))?;
    Ok(())
}

/// The bundle's one command.
fn run_script(description: &str, glibc: &str) -> String {
    format!(
        r#"#!/bin/sh
# cargo xtask gpu-check on this host, from the bundle of `cargo xtask gpu-check --prepare`:
# {description}.
# It runs on CUDA device 0 unless told otherwise and writes gpu-check-report.md into the
# current folder; options go to gpu-check, e.g.
#   ./run.sh --out /some/where/report.md
#   ./run.sh --device cuda:1 --quick
set -eu
here=$(cd "$(dirname "$0")" && pwd)
say() {{ echo "run.sh: $*" >&2; }}

[ "$(uname -m)" = x86_64 ] || {{ say "this bundle is for x86_64, not $(uname -m)"; exit 1; }}
have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{{print $2}}') || have=
if [ -n "$have" ] && [ "$(printf '%s\n%s\n' {glibc} "$have" | sort -V | head -n 1)" != {glibc} ]; then
  say "the xtask needs glibc {glibc} or newer; this host has $have"
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=$tmp/xtask
gzip -dc "$here/xtask.gz" >"$bin"
chmod +x "$bin"

# The CUDA 13 libraries the xtask links (the driver's libcuda.so.1, cuBLAS, the runtime,
# cuRAND): from the system, the nvidia-* packages of a CUDA 13 PyTorch, or a CUDA toolkit.
libs=
add() {{ if [ -d "$1" ]; then libs=$libs${{libs:+:}}$1; fi; }}
for site in $(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
  add "$site/nvidia/cu13/lib"
done
add /usr/local/cuda/lib64
add /usr/local/cuda/targets/x86_64-linux/lib
export LD_LIBRARY_PATH="$libs${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"
missing() {{ ldd "$bin" 2>/dev/null | awk '/not found/ {{print $1}}' | tr '\n' ' '; }}
if command -v ldd >/dev/null 2>&1; then
  if [ "$(missing)" = "libcurand.so.10 " ]; then
    say "no libcurand.so.10 here: using the bundle's stub (gpu-check draws no random numbers on the device)"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$here/stubs" TAME_GPU_CHECK_CURAND_STUB=1
  fi
  if [ -n "$(missing)" ]; then
    say "not found: $(missing)(CUDA 13's libraries: a CUDA 13 PyTorch's nvidia-* packages or a CUDA 13 toolkit bring them; or set LD_LIBRARY_PATH)"
    exit 1
  fi
fi

"$bin" gpu-check --pytorch-script "$here/bench/gpu_check_pytorch.py" "$@"
"#
    )
}
