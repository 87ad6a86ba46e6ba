//! Reads the checkpoints written by `xtask/fixtures/make_pth_fixtures.py` in both
//! formats and compares every tensor with the values numpy saved beside them.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use tame_pth::{read_checkpoint, read_tensors, strip_prefix, ErrorKind, Scalar};

const FORMATS: [&str; 2] = ["zip", "legacy"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Vec<(String, Tensor)> {
    Tensor::read_npz(fixture(&format!("{name}.expected.npz"))).unwrap()
}

/// Exact comparison: every dtype here converts to f64 without rounding.
fn assert_same(name: &str, actual: &Tensor, expected: &Tensor) {
    // candle's npz reader loads 0-d arrays as shape [1]; the 0-d tensors are checked by name.
    let npz_scalar = actual.rank() == 0 && expected.dims() == [1];
    if !npz_scalar {
        assert_eq!(actual.dims(), expected.dims(), "{name}: shape");
    }
    let a = actual.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let e = expected
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap();
    assert_eq!(
        a.to_vec1::<f64>().unwrap(),
        e.to_vec1::<f64>().unwrap(),
        "{name}: values"
    );
}

fn assert_all_same(actual: &[(String, Tensor)], expected: &[(String, Tensor)]) {
    let names: Vec<_> = actual.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<_> = expected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want, "tensor names, in file order");
    for ((name, a), (_, e)) in actual.iter().zip(expected) {
        assert_same(name, a, e);
    }
}

fn tensor<'a>(tensors: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &tensors.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn plain_state_dict() {
    let want = expected("state_dict");
    for format in FORMATS {
        let got = read_tensors(fixture(&format!("state_dict.{format}.pth")), None).unwrap();
        assert_all_same(&got, &want);
        let tracked = tensor(&got, "bn.num_batches_tracked");
        assert_eq!(tracked.dtype(), DType::I64);
        assert_eq!(tracked.dims(), &[] as &[usize]);
        assert_eq!(tracked.to_scalar::<i64>().unwrap(), 1);
        assert_eq!(tensor(&got, "conv.weight").dtype(), DType::F32);
        assert_eq!(tensor(&got, "conv.weight").dims(), &[4, 3, 3, 3]);
    }
}

#[test]
fn tame_checkpoint() {
    let want = expected("checkpoint");
    for format in FORMATS {
        let path = fixture(&format!("checkpoint.{format}.pth"));
        let ckpt = read_checkpoint(&path).unwrap();
        assert_eq!(ckpt.int("epoch"), Some(3));
        assert_eq!(ckpt.int("global_counter"), Some(120));
        assert_eq!(ckpt.scalar("best_score"), Some(&Scalar::Float(0.5)));
        assert_eq!(ckpt.scalar("arch"), Some(&Scalar::Str("vgg16".into())));
        assert_eq!(ckpt.int("arch"), None);
        assert_eq!(ckpt.scalar("state_dict"), None);
        let names: Vec<_> = ckpt.scalars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["epoch", "global_counter", "best_score", "arch"]);
        assert_all_same(&ckpt.tensors, &want);

        // No key: the top level holds no tensors, so the `state_dict` entry is used.
        assert_all_same(&read_tensors(&path, None).unwrap(), &want);
        assert_all_same(&read_tensors(&path, Some("state_dict")).unwrap(), &want);

        let stripped = strip_prefix(ckpt.tensors, "module.");
        assert_eq!(stripped[0].0, "attn.convs.0.weight");
        assert!(stripped.iter().all(|(n, _)| n.starts_with("attn.")));
    }
}

#[test]
fn strided_views_and_shared_storages() {
    let want = expected("views");
    for format in FORMATS {
        let got = read_tensors(fixture(&format!("views.{format}.pth")), None).unwrap();
        assert_all_same(&got, &want);
        let base = tensor(&got, "base");
        let transposed = tensor(&got, "transposed");
        assert_same("transposed", transposed, &base.t().unwrap());
        assert_eq!(
            tensor(&got, "column").to_vec1::<f32>().unwrap(),
            [2.0, 8.0, 14.0, 20.0]
        );
    }
}

#[test]
fn dtypes_map_as_documented() {
    let want = expected("dtypes");
    let dtypes = [
        ("f64", DType::F64),
        ("f16", DType::F16),
        ("f16_t", DType::F16),
        ("bf16", DType::BF16),
        ("i64", DType::I64),
        ("i32", DType::I32),
        ("i16", DType::I16),
        ("i8", DType::I16),
        ("u8", DType::U8),
        ("bool", DType::U8),
        ("scalar", DType::F32),
        ("empty", DType::F32),
    ];
    for format in FORMATS {
        let got = read_tensors(fixture(&format!("dtypes.{format}.pth")), None).unwrap();
        assert_all_same(&got, &want);
        for (name, dtype) in dtypes {
            assert_eq!(tensor(&got, name).dtype(), dtype, "{format} {name}");
        }
        assert_eq!(tensor(&got, "empty").dims(), &[0, 3]);
        assert_eq!(tensor(&got, "scalar").to_scalar::<f32>().unwrap(), 2.5);
        assert_eq!(tensor(&got, "i8").to_vec1::<i16>().unwrap(), [-128, 0, 127]);
    }
}

/// The error of a failed read, after checking that its message names the file.
fn error<T: std::fmt::Debug>(result: Result<T, tame_pth::PthError>) -> tame_pth::PthError {
    let err = result.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&err.path().display().to_string()),
        "message names the file: {message}"
    );
    err
}

#[test]
fn wrong_or_missing_keys_are_errors() {
    for format in FORMATS {
        let path = fixture(&format!("checkpoint.{format}.pth"));
        let err = error(read_tensors(&path, Some("nope")));
        assert!(
            matches!(err.kind(), ErrorKind::KeyNotFound { key, keys }
                if key == "nope" && keys.iter().any(|k| k == "state_dict")),
            "{err}"
        );
        let err = error(read_tensors(&path, Some("epoch")));
        assert!(
            matches!(err.kind(), ErrorKind::NotADict { found, .. } if found == "the int 3"),
            "{err}"
        );
        // The optimizer's tensors are keyed by parameter index, not by name.
        let err = error(read_tensors(&path, Some("optimizer")));
        assert!(
            matches!(err.kind(), ErrorKind::NoTensors { keys, .. }
                if keys == &["state", "param_groups"]),
            "{err}"
        );

        // A state dict under another key is not guessed, but named in the error.
        let path = fixture(&format!("model_entry.{format}.pth"));
        let err = error(read_tensors(&path, None));
        assert!(
            matches!(err.kind(), ErrorKind::NoTensors { keys, holding_tensors, .. }
                if keys == &["epoch", "model"] && holding_tensors == &["model"]),
            "{err}"
        );
        assert!(err.to_string().contains("entries holding tensors: model"));
        let got = read_tensors(&path, Some("model")).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.to_vec1::<f32>().unwrap(), [1.0, 1.0]);

        let state_dict = fixture(&format!("state_dict.{format}.pth"));
        let err = error(read_tensors(&state_dict, Some("state_dict")));
        assert!(matches!(err.kind(), ErrorKind::KeyNotFound { .. }), "{err}");
    }
}

#[test]
fn unsupported_storage_is_named() {
    for format in FORMATS {
        let err = error(read_tensors(
            fixture(&format!("complex.{format}.pth")),
            None,
        ));
        assert!(
            matches!(err.kind(), ErrorKind::UnsupportedStorage(s) if s == "torch.ComplexFloatStorage"),
            "{err}"
        );
    }
}

#[test]
fn damaged_files_name_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = std::fs::read(fixture("state_dict.legacy.pth")).unwrap();

    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &data[..data.len() - 10]).unwrap();
    let err = error(read_tensors(&truncated, None));
    assert!(matches!(err.kind(), ErrorKind::Truncated(_)), "{err}");
    assert_eq!(err.path(), truncated);

    let text = dir.path().join("text.pth");
    std::fs::write(&text, "hello").unwrap();
    let err = error(read_tensors(&text, None));
    assert!(matches!(err.kind(), ErrorKind::BadMagic(_)), "{err}");

    let opcode = dir.path().join("opcode.pth");
    std::fs::write(&opcode, b"\x80\x02\xff").unwrap();
    let err = error(read_tensors(&opcode, None));
    assert!(
        matches!(
            err.kind(),
            ErrorKind::UnknownOpcode {
                opcode: 0xff,
                offset: 2
            }
        ),
        "{err}"
    );

    // A safetensors file under a PyTorch name: its header length, then `{`.
    let safetensors = dir.path().join("safetensors.pth");
    std::fs::write(&safetensors, b"\x02\0\0\0\0\0\0\0{}").unwrap();
    let err = error(read_tensors(&safetensors, None));
    assert!(
        matches!(err.kind(), ErrorKind::BadMagic(m) if m == "it looks like a safetensors file"),
        "{err}"
    );

    // A pickle that is not the legacy magic number.
    let plain = dir.path().join("plain.pth");
    std::fs::write(&plain, b"\x80\x02K\x07.").unwrap();
    let err = error(read_tensors(&plain, None));
    assert!(matches!(err.kind(), ErrorKind::BadMagic(_)), "{err}");

    let missing = dir.path().join("missing.pth");
    let err = error(read_checkpoint(&missing));
    assert!(matches!(err.kind(), ErrorKind::Io(_)), "{err}");
}

#[test]
fn agrees_with_candles_zip_reader() {
    let path = fixture("state_dict.zip.pth");
    let ours = read_tensors(&path, None).unwrap();
    let theirs = candle_core::pickle::read_all(&path).unwrap();
    assert_eq!(theirs.len(), ours.len());
    for (name, t) in &theirs {
        assert_eq!(tensor(&ours, name).dtype(), t.dtype(), "{name}");
        assert_same(name, tensor(&ours, name), t);
    }
}
