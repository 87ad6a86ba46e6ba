//! Recognising pickled tensors and copying their (possibly strided) data out of a storage.

use candle_core::{DType, Device, Tensor};

use crate::error::{short, ErrorKind};
use crate::pickle::Value;

/// A tensor may repeat its storage's elements (stride 0) at most this many times over;
/// beyond that a tiny corrupt file could ask for an enormous allocation.
const MAX_EXPANSION: usize = 64;
/// Real tensors have a handful of dimensions; copying a strided tensor costs time per
/// element and dimension, so thousands of size-1 dimensions would make it crawl.
const MAX_DIMS: usize = 64;

/// The element type of a typed PyTorch storage (`torch.FloatStorage` etc.).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageKind {
    Float,
    Double,
    Half,
    BFloat16,
    Long,
    Int,
    Short,
    Char,
    Byte,
    Bool,
}

impl StorageKind {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "DoubleStorage" => Self::Double,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "CharStorage" => Self::Char,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element in the file.
    pub(crate) fn elem_size(self) -> usize {
        match self {
            Self::Double | Self::Long => 8,
            Self::Float | Self::Int => 4,
            Self::Half | Self::BFloat16 | Self::Short => 2,
            Self::Char | Self::Byte | Self::Bool => 1,
        }
    }

    /// The candle dtype the tensor gets; int8 is widened since candle has no `I8`.
    fn dtype(self) -> DType {
        match self {
            Self::Float => DType::F32,
            Self::Double => DType::F64,
            Self::Half => DType::F16,
            Self::BFloat16 => DType::BF16,
            Self::Long => DType::I64,
            Self::Int => DType::I32,
            Self::Short | Self::Char => DType::I16,
            Self::Byte | Self::Bool => DType::U8,
        }
    }
}

/// A storage as named by a persistent id:
/// `('storage', torch.XStorage, key, location, numel[, view_metadata])`.
#[derive(Clone, Debug)]
pub(crate) struct StorageRef {
    pub key: String,
    pub kind: StorageKind,
    pub numel: usize,
    /// Legacy storage views: `(offset, numel)` within the storage `key`.
    view: Option<(usize, usize)>,
}

impl StorageRef {
    /// The storage's size in bytes, as declared.
    pub(crate) fn byte_len(&self) -> Result<usize, ErrorKind> {
        self.numel
            .checked_mul(self.kind.elem_size())
            .ok_or_else(|| malformed(&self.key, "storage size overflows"))
    }

    pub(crate) fn from_pid(pid: &Value) -> Result<Self, ErrorKind> {
        let bad = || ErrorKind::Malformed(format!("bad storage id: {}", pid.describe()));
        let items = pid.as_tuple().ok_or_else(bad)?;
        let (class, key, numel, view) = match items {
            [tag, class, key, _location, numel, rest @ ..]
                if tag.as_str() == Some("storage") && rest.len() <= 1 =>
            {
                (class, key, numel, rest.first())
            }
            _ => return Err(bad()),
        };
        let class = class.as_global().ok_or_else(bad)?;
        let kind = StorageKind::from_name(&class.name)
            .filter(|_| class.module == "torch")
            .ok_or_else(|| {
                ErrorKind::UnsupportedStorage(format!(
                    "{}.{}",
                    short(&class.module),
                    short(&class.name)
                ))
            })?;
        let key = key.as_str().ok_or_else(bad)?.to_string();
        let numel = to_usize(numel).ok_or_else(bad)?;
        let view = match view {
            None | Some(Value::None) => None,
            // (view_key, offset, view_numel) into the storage `key`.
            Some(v) => match v.as_tuple() {
                Some([_, offset, size]) => Some((
                    to_usize(offset).ok_or_else(bad)?,
                    to_usize(size).ok_or_else(bad)?,
                )),
                _ => return Err(bad()),
            },
        };
        Ok(Self {
            key,
            kind,
            numel,
            view,
        })
    }
}

fn to_usize(v: &Value) -> Option<usize> {
    v.as_int().and_then(|i| usize::try_from(i).ok())
}

fn to_dims(v: &Value) -> Option<Vec<usize>> {
    v.as_tuple()?.iter().map(to_usize).collect()
}

/// A tensor as pickled by `torch._utils._rebuild_tensor_v2`: a strided view of a storage.
#[derive(Clone, Debug)]
pub(crate) struct TensorSpec {
    pub storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorSpec {
    /// The tensor described by `v`, `None` if `v` is not a tensor at all.
    pub(crate) fn from_value(v: &Value) -> Result<Option<Self>, ErrorKind> {
        // A tensor with Python attributes is a BUILD around the tensor call.
        let v = v.as_build().map_or(v, |(obj, _)| obj);
        let Some((callable, args)) = v.as_call() else {
            return Ok(None);
        };
        let Some(g) = callable.as_global() else {
            return Ok(None);
        };
        let bad = || ErrorKind::Malformed(format!("bad arguments to {}.{}", g.module, g.name));
        match (g.module.as_str(), g.name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") => Self::from_rebuild_args(args).map(Some),
            // Parameters wrap a tensor: (data, requires_grad, hooks[, state]).
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let data = args.as_tuple().and_then(<[Value]>::first).ok_or_else(bad)?;
                Self::from_value(data)?.ok_or_else(bad).map(Some)
            }
            // Tensor subclasses: (func, type, args, state).
            ("torch._tensor", "_rebuild_from_type_v2") => match args.as_tuple() {
                Some([func, _, inner, _]) if is_rebuild_v2(func) => {
                    Self::from_rebuild_args(inner).map(Some)
                }
                _ => Err(bad()),
            },
            _ => Ok(None),
        }
    }

    /// `(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
    fn from_rebuild_args(args: &Value) -> Result<Self, ErrorKind> {
        let bad = || ErrorKind::Malformed("bad arguments to _rebuild_tensor_v2".into());
        let items = args.as_tuple().ok_or_else(bad)?;
        let [storage, offset, shape, stride, ..] = items else {
            return Err(bad());
        };
        let storage = match storage {
            Value::PersId(n) => match n.items() {
                [pid] => StorageRef::from_pid(pid)?,
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        let offset = to_usize(offset).ok_or_else(bad)?;
        let shape = to_dims(shape).ok_or_else(bad)?;
        let stride = to_dims(stride).ok_or_else(bad)?;
        if shape.len() != stride.len() {
            return Err(bad());
        }
        if shape.len() > MAX_DIMS {
            return Err(malformed(
                &storage.key,
                &format!(
                    "tensor with {} dimensions, more than {MAX_DIMS}",
                    shape.len()
                ),
            ));
        }
        Ok(Self {
            storage,
            offset,
            shape,
            stride,
        })
    }

    /// The tensor's size in bytes once built.
    pub(crate) fn byte_len(&self) -> Result<usize, ErrorKind> {
        self.numel()?
            .checked_mul(self.storage.kind.dtype().size_in_bytes())
            .ok_or_else(|| malformed(&self.storage.key, "shape overflows"))
    }

    fn numel(&self) -> Result<usize, ErrorKind> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| malformed(&self.storage.key, "shape overflows"))
    }

    /// Builds the tensor from its storage's raw little-endian bytes.
    pub(crate) fn materialize(&self, storage: &[u8]) -> Result<Tensor, ErrorKind> {
        let kind = self.storage.kind;
        let size = kind.elem_size();
        let storage = match self.storage.view {
            None => storage,
            Some((start, len)) => start
                .checked_add(len)
                .and_then(|end| storage.get(start.checked_mul(size)?..end.checked_mul(size)?))
                .ok_or_else(|| malformed(&self.storage.key, "storage view out of bounds"))?,
        };
        let bytes = self.gather(storage)?;
        let tensor = if kind == StorageKind::Char {
            let wide: Vec<i16> = bytes.iter().map(|&b| i16::from(b as i8)).collect();
            Tensor::from_vec(wide, self.shape.as_slice(), &Device::Cpu)?
        } else {
            Tensor::from_raw_buffer(&bytes, kind.dtype(), &self.shape, &Device::Cpu)?
        };
        Ok(tensor)
    }

    /// Copies the elements in row-major order, after checking every index is in bounds.
    fn gather(&self, storage: &[u8]) -> Result<Vec<u8>, ErrorKind> {
        let size = self.storage.kind.elem_size();
        let available = storage.len() / size;
        let numel = self.numel()?;
        if numel == 0 {
            return Ok(Vec::new());
        }
        let last = self
            .shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            });
        if last.is_none_or(|last| last >= available) {
            return Err(malformed(&self.storage.key, "tensor exceeds its storage"));
        }
        if numel > available.saturating_mul(MAX_EXPANSION) {
            return Err(malformed(
                &self.storage.key,
                "tensor repeats its storage implausibly often",
            ));
        }
        if self.is_contiguous() {
            return Ok(storage[self.offset * size..(self.offset + numel) * size].to_vec());
        }
        let mut out = Vec::with_capacity(numel * size);
        let mut index = vec![0usize; self.shape.len()];
        let mut pos = self.offset;
        for _ in 0..numel {
            out.extend_from_slice(&storage[pos * size..(pos + 1) * size]);
            // Odometer step; `pos` stays within `last` plus one stride, which cannot overflow.
            for d in (0..index.len()).rev() {
                index[d] += 1;
                pos += self.stride[d];
                if index[d] < self.shape[d] {
                    break;
                }
                pos -= self.stride[d] * self.shape[d];
                index[d] = 0;
            }
        }
        Ok(out)
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }
}

fn is_rebuild_v2(v: &Value) -> bool {
    v.as_global()
        .is_some_and(|g| g.module == "torch._utils" && g.name == "_rebuild_tensor_v2")
}

fn malformed(key: &str, msg: &str) -> ErrorKind {
    ErrorKind::Malformed(format!("storage {}: {msg}", short(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        view: Option<(usize, usize)>,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> TensorSpec {
        TensorSpec {
            storage: StorageRef {
                key: "0".into(),
                kind: StorageKind::Int,
                numel: 6,
                view,
            },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn storage() -> Vec<u8> {
        (0..6i32).flat_map(i32::to_le_bytes).collect()
    }

    fn values(spec: &TensorSpec) -> Result<Vec<i32>, ErrorKind> {
        let t = spec.materialize(&storage())?;
        Ok(t.flatten_all()?.to_vec1::<i32>()?)
    }

    #[test]
    fn legacy_storage_views_shift_the_offset() {
        assert_eq!(values(&spec(Some((2, 3)), 1, &[2], &[1])).unwrap(), [3, 4]);
        // The view holds 3 elements: a 4th is out of bounds even though the root has it.
        assert!(values(&spec(Some((2, 3)), 0, &[4], &[1])).is_err());
        assert!(values(&spec(Some((5, 3)), 0, &[1], &[1])).is_err());
    }

    #[test]
    fn strides_are_followed_and_bounded() {
        assert_eq!(
            values(&spec(None, 0, &[3, 2], &[1, 3])).unwrap(),
            [0, 3, 1, 4, 2, 5]
        );
        assert_eq!(values(&spec(None, 5, &[3], &[0])).unwrap(), [5, 5, 5]);
        assert!(values(&spec(None, 1, &[3, 2], &[1, 3])).is_err());
        assert!(values(&spec(None, 0, &[2, usize::MAX], &[1, 1])).is_err());
        // Broadcasting one element into a huge tensor is refused before allocating.
        assert!(values(&spec(None, 0, &[1 << 40], &[0])).is_err());
    }
}
