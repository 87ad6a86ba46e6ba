//! Reads a safetensors file one tensor at a time, straight into each tensor's storage.
//!
//! candle's loader maps the whole file and copies every tensor out of the mapping, so while a
//! model loads its weights sit in the process twice (VGG-16: a 1.1 GB peak for 553 MB of
//! weights). Reading each tensor's bytes from the file instead keeps one copy plus a small
//! conversion buffer.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

/// Bytes converted at a time on the f32 path.
const CHUNK_BYTES: usize = 1 << 22;

/// Headers larger than this are refused before allocating (safetensors' own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Every tensor of the safetensors file `path`, on `device`, in file order. Errors are
/// one-line messages without the path (callers name the file).
pub fn read(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| "shorter than a safetensors header".to_string())?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
        return Err(format!(
            "the header claims {header_len} bytes, the file has {file_len}"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| format!("unreadable header: {e}"))?;
    let data_start = 8 + header_len;

    let mut infos: Vec<(String, &TensorInfo)> = metadata.tensors().into_iter().collect();
    infos.sort_by_key(|(_, info)| info.data_offsets.0);
    infos
        .into_iter()
        .map(|(name, info)| {
            let tensor = read_tensor(&mut file, data_start, file_len, info, device)
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            Ok((name, tensor))
        })
        .collect()
}

fn read_tensor(
    file: &mut File,
    data_start: u64,
    file_len: u64,
    info: &TensorInfo,
    device: &Device,
) -> Result<Tensor, String> {
    let dtype = candle_dtype(info.dtype)?;
    let (start, end) = info.data_offsets;
    let elements: usize = info.shape.iter().product();
    if end.checked_sub(start) != Some(elements * dtype.size_in_bytes()) {
        return Err(format!(
            "bytes {start}..{end} do not hold a {:?} {dtype:?} tensor",
            info.shape
        ));
    }
    if data_start + end as u64 > file_len {
        return Err(format!(
            "its data ends at byte {} of a {file_len}-byte file (truncated?)",
            data_start + end as u64
        ));
    }
    file.seek(SeekFrom::Start(data_start + start as u64))
        .map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    let shape = info.shape.as_slice();
    let tensor = if dtype == DType::F32 {
        let mut values = Vec::with_capacity(elements);
        let mut chunk = vec![0u8; CHUNK_BYTES.min(end - start)];
        let mut left = end - start;
        while left > 0 {
            let bytes = &mut chunk[..left.min(CHUNK_BYTES)];
            file.read_exact(bytes).map_err(io)?;
            values.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            left -= bytes.len();
        }
        Tensor::from_vec(values, shape, device)
    } else {
        let mut bytes = vec![0u8; end - start];
        file.read_exact(&mut bytes).map_err(io)?;
        Tensor::from_raw_buffer(&bytes, dtype, shape, device)
    };
    tensor.map_err(|e| e.to_string())
}

fn candle_dtype(dtype: Dtype) -> Result<DType, String> {
    Ok(match dtype {
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        other => return Err(format!("element type {other:?} is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Tensor)> {
        let dev = Device::Cpu;
        let big = Tensor::arange(0f32, (CHUNK_BYTES / 4 * 2 + 3) as f32, &dev)
            .unwrap()
            .affine(0.37, -1.5)
            .unwrap();
        vec![
            ("a.weight".into(), big),
            (
                "b.half".into(),
                Tensor::new(&[1.5f32, -2.25, 3.0], &dev)
                    .unwrap()
                    .to_dtype(DType::F16)
                    .unwrap(),
            ),
            (
                "c.stats".into(),
                Tensor::new(&[[0.1f64, 0.2], [0.3, 0.4]], &dev).unwrap(),
            ),
            ("d.count".into(), Tensor::new(&[7i64], &dev).unwrap()),
        ]
    }

    fn save(tensors: &[(String, Tensor)], path: &Path) {
        let map: std::collections::HashMap<_, _> = tensors.iter().cloned().collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn reads_what_candle_reads_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save(&sample(), &path);
        let ours = read(&path, &Device::Cpu).unwrap();
        let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (name, t) in &ours {
            let expected = &theirs[name];
            assert_eq!(t.dtype(), expected.dtype(), "{name}");
            assert_eq!(t.dims(), expected.dims(), "{name}");
            let (a, b) = (
                t.flatten_all().unwrap().to_dtype(DType::F64).unwrap(),
                expected
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap(),
            );
            assert_eq!(a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
        }
    }

    #[test]
    fn truncated_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save(&sample(), &path);
        let bytes = std::fs::read(&path).unwrap();

        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let e = read(&path, &Device::Cpu).unwrap_err();
        assert!(e.contains("truncated"), "{e}");

        std::fs::write(&path, &bytes[..5]).unwrap();
        let e = read(&path, &Device::Cpu).unwrap_err();
        assert!(e.contains("shorter than a safetensors header"), "{e}");

        let mut bad = bytes.clone();
        bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let e = read(&path, &Device::Cpu).unwrap_err();
        assert!(e.contains("header claims"), "{e}");

        let mut bad = bytes;
        bad[8] = b'[';
        std::fs::write(&path, &bad).unwrap();
        let e = read(&path, &Device::Cpu).unwrap_err();
        assert!(e.contains("unreadable header"), "{e}");
    }
}
