//! `cargo xtask cuda-env`: a CUDA toolkit for building `--features cuda` on a machine with
//! neither a GPU nor a system toolkit, made of NVIDIA's PyPI wheels; prints the shell exports
//! that point the build at it (`eval "$(cargo xtask cuda-env)"`).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct CudaEnv {
    /// Where the toolkit goes [default: target/cuda-env/<version> in the workspace].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// 13.4, the newest that candle's cudarc 0.19 knows, or 13.0, whose PTX a driver of the
    /// 580 series (CUDA 13.0) also loads.
    #[arg(long, value_enum, default_value_t = Version::V13_4)]
    cuda: Version,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Version {
    #[value(name = "13.4")]
    V13_4,
    #[value(name = "13.0")]
    V13_0,
}

impl Version {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Version::V13_4 => "13.4",
            Version::V13_0 => "13.0",
        }
    }

    /// `CUDARC_CUDA_VERSION`: which of its bindings cudarc compiles.
    fn cudarc(self) -> &'static str {
        match self {
            Version::V13_4 => "13040",
            Version::V13_0 => "13000",
        }
    }

    /// The versions NVIDIA's `cuda-toolkit` meta-package (13.4.3, 13.0.3.0) pins for these
    /// parts: the compiler, the headers and the libraries candle links.
    fn wheels(self) -> &'static [&'static str] {
        match self {
            Version::V13_4 => &[
                "nvidia-cuda-nvcc==13.4.92",
                "nvidia-cuda-crt==13.4.92",
                "nvidia-nvvm==13.4.92",
                "nvidia-cuda-runtime==13.4.92",
                "nvidia-cuda-nvrtc==13.4.92",
                "nvidia-cuda-cccl==13.3.4.3.1",
                "nvidia-cublas==13.8.0.4",
                "nvidia-curand==10.4.4.72",
            ],
            Version::V13_0 => &[
                "nvidia-cuda-nvcc==13.0.88",
                "nvidia-cuda-crt==13.0.88",
                "nvidia-nvvm==13.0.88",
                "nvidia-cuda-runtime==13.0.96",
                "nvidia-cuda-nvrtc==13.0.88",
                "nvidia-cuda-cccl==13.0.85",
                "nvidia-cublas==13.1.1.3",
                "nvidia-curand==10.4.0.35",
            ],
        }
    }
}

/// Compute capability of candle's kernels: 9.0 (H100, H200). cudaforge compiles them for
/// `sm_90a`, which only GPUs of that capability load.
const COMPUTE_CAP: &str = "90";

pub fn run(args: CudaEnv) -> Result<()> {
    let toolkit = toolkit(args.dir, args.cuda)?;
    let root = quote(&toolkit.root);
    println!("export CUDA_HOME={root} CUDA_PATH={root}");
    println!("export PATH={}:\"$PATH\"", quote(&toolkit.root.join("bin")));
    println!("export CUDA_COMPUTE_CAP={COMPUTE_CAP}");
    println!("export CUDARC_CUDA_VERSION={}", args.cuda.cudarc());
    Ok(())
}

/// A complete toolkit.
pub(crate) struct Toolkit {
    pub(crate) root: PathBuf,
    pub(crate) version: Version,
}

impl Toolkit {
    /// The variables that point a build at it, but `PATH`, which needs `root/bin` in front.
    pub(crate) fn vars(&self) -> Vec<(&'static str, String)> {
        let root = self.root.display().to_string();
        vec![
            ("CUDA_HOME", root.clone()),
            ("CUDA_PATH", root),
            ("CUDA_COMPUTE_CAP", COMPUTE_CAP.into()),
            ("CUDARC_CUDA_VERSION", self.version.cudarc().into()),
        ]
    }
}

/// The toolkit of `cuda` in `dir` [default: target/cuda-env/<version> in the workspace], made
/// first unless it is there.
pub(crate) fn toolkit(dir: Option<PathBuf>, cuda: Version) -> Result<Toolkit> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = dir.unwrap_or_else(|| workspace.join("target/cuda-env").join(cuda.name()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    // Written last: its presence with the same pins means the toolkit is complete.
    let stamp = dir.join("wheels.txt");
    let pins = cuda.wheels().join("\n");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(pins.as_str()) {
        install(&dir, cuda, &workspace)?;
        fs::write(&stamp, &pins)?;
    }
    Ok(Toolkit {
        root: dir,
        version: cuda,
    })
}

fn install(dir: &Path, version: Version, workspace: &Path) -> Result<()> {
    let wheels = dir.join("wheels");
    eprintln!(
        "downloading the CUDA {} wheels into {}",
        version.name(),
        wheels.display()
    );
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", "-d"])
        .arg(&wheels)
        .args(version.wheels())
        .status()
        .context("could not run python3 -m pip")?;
    if !status.success() {
        bail!(
            "pip could not download the CUDA {} wheels ({status})",
            version.name()
        );
    }
    for entry in fs::read_dir(&wheels)? {
        unpack(&entry?.path(), dir)?;
    }
    fs::remove_dir_all(&wheels)?;

    // The layout of a system toolkit: cudaforge looks for lib64, and the linker needs the
    // unversioned names (`-lcublas`).
    let lib = dir.join("lib");
    link_if_absent(Path::new("lib"), &dir.join("lib64"))?;
    for entry in fs::read_dir(&lib)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((stem, _)) = name.split_once(".so.") {
            link_if_absent(Path::new(&name), &lib.join(format!("{stem}.so")))?;
        }
    }
    link_stub(&lib.join("stubs"), workspace)
}

/// Extracts a wheel's `nvidia/cu13/` (bin, include, lib, nvvm) into `dir`, keeping modes.
fn unpack(wheel: &Path, dir: &Path) -> Result<()> {
    let mut zip = zip::ZipArchive::new(File::open(wheel)?)
        .with_context(|| format!("{}: not a wheel", wheel.display()))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let Some(path) = entry.enclosed_name() else {
            continue;
        };
        let Ok(rel) = path.strip_prefix("nvidia/cu13") else {
            continue;
        };
        let out = dir.join(rel);
        if entry.is_dir() {
            fs::create_dir_all(&out)?;
            continue;
        }
        fs::create_dir_all(out.parent().expect("a file in dir"))?;
        io::copy(&mut entry, &mut File::create(&out)?)?;
        if let Some(mode) = entry.unix_mode() {
            fs::set_permissions(&out, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// `libcuda.so` comes with the driver, not in any wheel; linking needs one. This one has every
/// entry point of cudarc's driver bindings, each returning CUDA_ERROR_NO_DEVICE, and the
/// driver's soname, so that a binary linked against it loads the real driver at run time. It is
/// in `lib/stubs`, where cudarc looks at link time, as in a system toolkit; nothing should
/// load it at run time.
fn link_stub(stubs: &Path, workspace: &Path) -> Result<()> {
    let bindings = cudarc_sources(workspace)?.join("src/driver/sys/mod.rs");
    fs::create_dir_all(stubs)?;
    stub_library(
        &bindings,
        "libcuda.so.1",
        &stubs.join("libcuda.so.1"),
        |name| format!("int {name}(void) {{ return 100; }}\n"),
    )?;
    link_if_absent(Path::new("libcuda.so.1"), &stubs.join("libcuda.so"))
}

/// Compiles `out`, a shared library named `soname` with one C function per function that the
/// cudarc bindings `bindings` declare, each defined by `define(name)`.
pub(crate) fn stub_library(
    bindings: &Path,
    soname: &str,
    out: &Path,
    define: impl Fn(&str) -> String,
) -> Result<()> {
    let text = fs::read_to_string(bindings)
        .with_context(|| format!("cannot read {}", bindings.display()))?;
    // The dynamic-linking declarations: `fn cuInit(Flags: ::core::ffi::c_uint) -> CUresult;`.
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|line| {
            let declaration = line.trim().strip_prefix("fn ")?.strip_suffix(';')?;
            declaration.split_once('(')
        })
        .map(|(name, _)| name)
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        bail!("{}: no functions found", bindings.display());
    }
    let source = out.with_extension("c");
    let body: String = names.iter().map(|name| define(name)).collect();
    fs::write(&source, body)?;
    let status = Command::new("cc")
        .args(["-shared", "-fPIC"])
        .arg(format!("-Wl,-soname,{soname}"))
        .arg("-o")
        .arg(out)
        .arg(&source)
        .status()
        .context("could not run cc")?;
    if !status.success() {
        bail!("cc could not build the {soname} stub ({status})");
    }
    Ok(())
}

/// The sources of the cudarc of Cargo.lock, in cargo's registry (fetched if they are not there
/// yet).
pub(crate) fn cudarc_sources(workspace: &Path) -> Result<PathBuf> {
    let lock = fs::read_to_string(workspace.join("Cargo.lock"))?;
    let version = lock
        .split("[[package]]")
        .find_map(|package| {
            package
                .strip_prefix("\nname = \"cudarc\"\nversion = \"")?
                .split_once('"')
        })
        .map(|(version, _)| version)
        .context("no cudarc in Cargo.lock")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let find = || -> Result<Option<PathBuf>> {
        for index in fs::read_dir(cargo_home.join("registry/src"))? {
            let path = index?.path().join(format!("cudarc-{version}"));
            if path.join("Cargo.toml").is_file() {
                return Ok(Some(path));
            }
        }
        Ok(None)
    };
    if let Some(path) = find().unwrap_or(None) {
        return Ok(path);
    }
    let status = Command::new(env!("CARGO"))
        .arg("fetch")
        .current_dir(workspace)
        .status()
        .context("could not run cargo fetch")?;
    match find()? {
        Some(path) => Ok(path),
        None => {
            bail!("cudarc {version}'s sources are not in cargo's registry (cargo fetch: {status})")
        }
    }
}

fn link_if_absent(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_err() {
        symlink(target, link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(())
}

/// Single quotes for the shell (a path may hold spaces).
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
