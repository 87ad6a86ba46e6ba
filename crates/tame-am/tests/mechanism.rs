//! Behaviour of the mechanism beyond parity: selected class maps, gradients, initialisation,
//! parameter groups, checkpoints and errors.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use tame_am::{
    AmError, AttentionMechanism, CheckpointMeta, Mismatch, Storage, Version, NUM_CLASSES,
};

const SMALL: [(usize, usize, usize); 2] = [(6, 9, 9), (10, 5, 5)];

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn selected_class_maps_equal_slices_of_the_full_output() {
    for v in Version::ALL {
        let config = common::config(v, &SMALL);
        let am = common::synthetic_am(&config, DType::F32);
        let taps = common::synthetic_taps(&config, 3, DType::F32);
        // The reference's order: resize, concatenate, the whole fuser.
        let full = am.forward(&taps, false).unwrap();
        let fused = am.fused_features(&taps, false).unwrap();
        assert_eq!(fused.dims(), [3, config.fused_channels(), 9, 9]);
        let branches = am.branches(&taps, false).unwrap();
        let sizes: Vec<_> = branches.maps().iter().map(|m| m.dims()[2]).collect();
        assert_eq!(sizes, [9, 5], "{v}: branches keep their tap's resolution");

        // One list for the whole batch, with a repeat: the reference's a[:, y].
        let classes = [7u32, 999, 7];
        let shared = am.class_logits(&branches, &classes).unwrap();
        assert_eq!(shared.dims(), [3, 3, 9, 9]);
        for (j, &c) in classes.iter().enumerate() {
            let d = max_abs_diff(
                &shared.i((.., j)).unwrap(),
                &full.i((.., c as usize)).unwrap(),
            );
            assert!(d < 1e-5, "{v}: shared class {c}: {d}");
        }

        // One list per sample.
        let lists = vec![vec![0u32, 5], vec![999, 0], vec![42, 42]];
        let per = am.per_sample_class_logits(&branches, &lists).unwrap();
        assert_eq!(per.dims(), [3, 2, 9, 9]);
        for (b, list) in lists.iter().enumerate() {
            for (j, &c) in list.iter().enumerate() {
                let d = max_abs_diff(&per.i((b, j)).unwrap(), &full.i((b, c as usize)).unwrap());
                assert!(d < 1e-5, "{v}: sample {b} class {c}: {d}");
            }
        }
    }
}

#[test]
fn every_parameter_receives_a_gradient_in_train_mode() {
    for v in Version::ALL {
        let config = common::config(v, &[(4, 6, 6), (5, 3, 3), (3, 2, 2)]);
        let am = AttentionMechanism::new(&config, 1, DType::F64, &Device::Cpu).unwrap();
        let taps = common::synthetic_taps(&config, 2, DType::F64);
        let branches = am.branches(&taps, true).unwrap();
        let labels = [3u32, 800];
        let a = candle_nn::ops::sigmoid(&am.class_logits(&branches, &labels).unwrap()).unwrap();
        let grads = a.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in am.parameters() {
            let g = grads
                .get(&var)
                .unwrap_or_else(|| panic!("{v}: no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            if name == "attn.fuser.weight" || name == "attn.fuser.bias" {
                // Only the rows of the selected classes are used.
                let unused = g
                    .i(0)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert_eq!(unused, 0.0, "{name}: row of an unselected class");
            }
            assert!(norm > 0.0, "{v}: zero gradient for {name}");
        }
    }
}

#[test]
fn seeded_initialisation_is_reproducible_and_follows_pytorch_defaults() {
    let config = common::config(Version::Tame, &SMALL);
    let a = AttentionMechanism::new(&config, 7, DType::F32, &Device::Cpu).unwrap();
    let b = AttentionMechanism::new(&config, 7, DType::F32, &Device::Cpu).unwrap();
    let c = AttentionMechanism::new(&config, 8, DType::F32, &Device::Cpu).unwrap();
    let (sa, sb, sc) = (
        a.state_dict().unwrap(),
        b.state_dict().unwrap(),
        c.state_dict().unwrap(),
    );
    for ((name, ta), ((_, tb), (_, tc))) in sa.iter().zip(sb.iter().zip(&sc)) {
        let ta = ta
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let tb = tb
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let tc = tc
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(ta, tb, "{name}");
        if name.contains("convs") || name.contains("fuser") {
            assert_ne!(ta, tc, "{name}: another seed should give other values");
            let fan_in = if name.contains("fuser") {
                16.0
            } else if name.contains("convs.0") {
                6.0
            } else {
                10.0
            };
            let bound = 1.0 / f64::sqrt(fan_in);
            assert!(
                ta.iter().all(|x| x.abs() < bound),
                "{name} exceeds 1/sqrt(fan_in)"
            );
            // Uniform on [-bound, bound]: variance bound^2 / 3.
            let var = ta.iter().map(|x| x * x).sum::<f64>() / ta.len() as f64;
            if ta.len() >= 1000 {
                assert!(
                    (var / (bound * bound / 3.0) - 1.0).abs() < 0.1,
                    "{name}: variance {var}"
                );
            }
        } else {
            let expected = if name.ends_with("bns.0.weight")
                || name.ends_with("bns.1.weight")
                || name.ends_with("running_var")
            {
                1.0
            } else {
                0.0
            };
            assert!(ta.iter().all(|&x| x == expected), "{name}");
        }
    }
}

#[test]
fn parameter_groups_follow_the_reference_names() {
    let config = common::config(Version::Tame, &SMALL);
    let am = AttentionMechanism::new(&config, 0, DType::F32, &Device::Cpu).unwrap();
    let names =
        |v: Vec<(String, candle_core::Var)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(
        names(am.weight_parameters()),
        [
            "attn.convs.0.weight",
            "attn.convs.1.weight",
            "attn.bns.0.weight",
            "attn.bns.1.weight",
            "attn.fuser.weight"
        ]
    );
    assert_eq!(
        names(am.bias_parameters()),
        [
            "attn.convs.0.bias",
            "attn.convs.1.bias",
            "attn.bns.0.bias",
            "attn.bns.1.bias",
            "attn.fuser.bias"
        ]
    );
    let mut in_map: Vec<String> = am
        .var_map()
        .data()
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    in_map.sort();
    let mut params = names(am.parameters());
    params.sort();
    assert_eq!(
        in_map, params,
        "the VarMap holds exactly the trainable parameters"
    );
}

fn meta(version: Version) -> CheckpointMeta {
    CheckpointMeta {
        backbone: "vgg16".into(),
        taps: vec!["features.16".into(), "features.23".into()],
        tap_shapes: common::config(version, &SMALL).taps().to_vec(),
        version,
        epoch: 3,
        global_step: 1234,
        config: serde_json::json!({ "max_lr": 1e-3 }),
        tensors_sha256: None,
    }
}

/// The sidecar records its tensor file's hash: tensors it was not written for (the state a
/// kill between the two renames of a rewrite leaves) are refused, not loaded.
#[test]
fn a_tensor_file_its_sidecar_was_not_written_for_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    let am = common::synthetic_am(&config, DType::F32);
    let (path, other) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    am.save(&path, &meta(Version::Tame)).unwrap();
    am.forward(&common::synthetic_taps(&config, 2, DType::F32), true)
        .unwrap();
    am.save(&other, &meta(Version::Tame)).unwrap();
    std::fs::copy(&other, &path).unwrap();
    let err = AttentionMechanism::load(&path, &config, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, tame_am::AmError::HalfWritten { .. }), "{err}");
    assert!(err.to_string().contains("half-written"), "{err}");
}

#[test]
fn save_then_load_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    let am = common::synthetic_am(&config, DType::F32);
    // A train pass moves the running statistics and num_batches_tracked.
    am.forward(&common::synthetic_taps(&config, 2, DType::F32), true)
        .unwrap();
    let path = dir.path().join("epoch_3.safetensors");
    am.save(&path, &meta(Version::Tame)).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left behind: {names:?}");
    // The checkpoint and its sidecar get a new file's permissions (0666 less the umask), as
    // the sidecar always did; a writer's owner-only temporary file renamed over the
    // checkpoint used to leave it 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let sidecar = tame_am::sidecar_path(&path);
        assert_eq!(mode(&path), mode(&sidecar), "{path:?}");
        assert_ne!(mode(&path) & 0o044, 0, "{:o}", mode(&path));
    }

    let loaded = AttentionMechanism::load(&path, &config, DType::F32, &Device::Cpu).unwrap();
    let saved_meta = loaded.meta.clone().unwrap();
    assert!(saved_meta.tensors_sha256.is_some());
    let unhashed = tame_am::CheckpointMeta {
        tensors_sha256: None,
        ..saved_meta
    };
    assert_eq!(unhashed, meta(Version::Tame));
    assert_eq!((loaded.epoch, loaded.global_step), (Some(3), Some(1234)));
    let (before, after) = (am.state_dict().unwrap(), loaded.am.state_dict().unwrap());
    assert_eq!(before.len(), after.len());
    for ((n1, t1), (n2, t2)) in before.iter().zip(&after) {
        assert_eq!(n1, n2);
        assert_eq!(t1.dtype(), t2.dtype(), "{n1}");
        let (v1, v2) = (
            t1.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            t2.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        );
        assert_eq!(v1, v2, "{n1}");
    }
    let tracked = after
        .iter()
        .find(|(n, _)| n == "attn.bns.0.num_batches_tracked")
        .unwrap();
    assert_eq!(tracked.1.to_scalar::<i64>().unwrap(), 1);
}

#[test]
fn half_precision_copies_load_from_memory_within_f16_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    let am = common::synthetic_am(&config, DType::F32);
    let path = dir.path().join("demo.safetensors");
    am.save_as(&path, &meta(Version::Tame), Storage::Half)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let loaded = AttentionMechanism::from_safetensors_bytes(
        &bytes,
        Some(meta(Version::Tame)),
        &path,
        &config,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    for ((name, a), (_, b)) in am
        .state_dict()
        .unwrap()
        .iter()
        .zip(&loaded.am.state_dict().unwrap())
    {
        assert_eq!(b.dtype(), a.dtype(), "{name}");
        if !a.dtype().is_float() {
            continue;
        }
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let err = max_abs_diff(a, b);
        assert!(
            err <= 1e-3 * scale.to_scalar::<f32>().unwrap().max(1.0),
            "{name}: {err}"
        );
    }
    // The same checks as a file: another layout is refused, naming the stand-in path.
    let other = common::config(Version::NoSkipNoBatchNorm, &SMALL);
    let err = AttentionMechanism::from_safetensors_bytes(
        &bytes,
        None,
        &path,
        &other,
        DType::F32,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("demo.safetensors"), "{err}");
}

#[test]
fn int8_copies_keep_each_weight_within_half_a_channel_scale() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    // One all-zero output channel: its scale must not divide by zero.
    let tensors = common::synthetic_am(&config, DType::F32)
        .state_dict()
        .unwrap()
        .into_iter()
        .map(|(name, t)| match name.as_str() {
            "attn.fuser.weight" => {
                let zero = t.narrow(0, 0, 1).unwrap().zeros_like().unwrap();
                let rest = t.narrow(0, 1, t.dim(0).unwrap() - 1).unwrap();
                (name, Tensor::cat(&[&zero, &rest], 0).unwrap())
            }
            _ => (name, t),
        });
    let am = AttentionMechanism::from_tensors(&config, tensors, DType::F32, &Device::Cpu).unwrap();
    let full = dir.path().join("full.safetensors");
    let small = dir.path().join("small.safetensors");
    am.save_as(&full, &meta(Version::Tame), Storage::Full)
        .unwrap();
    am.save_as(&small, &meta(Version::Tame), Storage::Int8)
        .unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len() as f64;
    assert!(
        size(&small) < 0.35 * size(&full),
        "{} vs {}",
        size(&small),
        size(&full)
    );

    let loaded = AttentionMechanism::load(&small, &config, DType::F32, &Device::Cpu).unwrap();
    for ((name, a), (_, b)) in am
        .state_dict()
        .unwrap()
        .iter()
        .zip(&loaded.am.state_dict().unwrap())
    {
        assert_eq!(b.dtype(), a.dtype(), "{name}");
        assert_eq!(b.dims(), a.dims(), "{name}");
        if !a.dtype().is_float() {
            assert_eq!(a.to_vec0::<i64>().unwrap(), b.to_vec0::<i64>().unwrap());
            continue;
        }
        if a.rank() < 2 {
            // Half precision: rounding 2^-11 relative, 2^-25 absolute below 2^-14 (subnormals).
            let (va, vb) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
            for (x, y) in va.iter().zip(&vb) {
                assert!(
                    (x - y).abs() <= x.abs() / 2048.0 + 3e-8,
                    "{name}: {x} vs {y}"
                );
            }
            continue;
        }
        let rows_a = a.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        let rows_b = b.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        for (ra, rb) in rows_a.iter().zip(&rows_b) {
            let scale = ra.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (x, y) in ra.iter().zip(rb) {
                assert!(
                    (x - y).abs() <= 0.5 * scale * (1.0 + 1e-5),
                    "{name}: {x} vs {y}"
                );
            }
        }
    }
    let zero_row = loaded.am.state_dict().unwrap();
    let fuser = &zero_row
        .iter()
        .find(|(n, _)| n == "attn.fuser.weight")
        .unwrap()
        .1;
    assert_eq!(
        max_abs_diff(
            &fuser.narrow(0, 0, 1).unwrap(),
            &fuser.narrow(0, 0, 1).unwrap().zeros_like().unwrap()
        ),
        0.0
    );

    // The maps move by a small fraction of their spread.
    let taps = common::synthetic_taps(&config, 2, DType::F32);
    let want = am.forward(&taps, false).unwrap();
    let got = loaded.am.forward(&taps, false).unwrap();
    let spread = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let err = max_abs_diff(&want, &got);
    assert!(err <= 0.02 * spread, "{err} vs {spread}");
}

#[test]
fn int8_weights_without_their_scales_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    let am = common::synthetic_am(&config, DType::F32);
    let path = dir.path().join("small.safetensors");
    am.save_as(&path, &meta(Version::Tame), Storage::Int8)
        .unwrap();
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("attn.fuser.weight.q8_scale").unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = AttentionMechanism::load(&path, &config, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("small.safetensors"), "{err}");
    assert!(err.contains("attn.fuser.weight.q8_scale"), "{err}");
}

/// A damaged safetensors checkpoint is reported as a safetensors file, whatever its name,
/// and a file named `.safetensors` is read as one (both used to end in a pickle error).
#[test]
fn damaged_safetensors_checkpoints_are_reported_as_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    let am = AttentionMechanism::new(&config, 0, DType::F32, &Device::Cpu).unwrap();
    let path = dir.path().join("am.safetensors");
    am.save(&path, &meta(Version::Tame)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut huge_header = bytes.clone();
    huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut not_json = bytes.clone();
    not_json[8] = b'[';
    for (name, damaged) in [
        ("cut.safetensors", &bytes[..40]),
        ("cut.pth", &bytes[..40]),
        ("header.pth", &huge_header[..]),
        ("json.safetensors", &not_json[..]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, damaged).unwrap();
        let err = AttentionMechanism::load(&path, &config, DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: not a readable safetensors file: ",
                path.display()
            )),
            "{name}: {err}"
        );
    }
}

#[test]
fn checkpoints_that_do_not_fit_are_refused_with_the_file_and_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    let am = AttentionMechanism::new(&config, 0, DType::F32, &Device::Cpu).unwrap();
    let path = dir.path().join("am.safetensors");
    am.save(&path, &meta(Version::Tame)).unwrap();

    let other_taps = common::config(Version::Tame, &[(6, 9, 9), (12, 5, 5)]);
    std::fs::remove_file(dir.path().join("am.json")).unwrap();
    let err = AttentionMechanism::load(&path, &other_taps, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("am.safetensors") && msg.contains("attn.convs.1.weight"),
        "{msg}"
    );
    assert!(matches!(
        err,
        AmError::Mismatch {
            mismatch: Mismatch::Shape { .. },
            ..
        }
    ));

    let one_tap = common::config(Version::Tame, &SMALL[..1]);
    let err = AttentionMechanism::load(&path, &one_tap, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    // The first difference in the reference order: the fuser reads fewer channels.
    assert!(
        matches!(err, AmError::Mismatch { mismatch: Mismatch::Shape { ref name, .. }, .. } if name == "attn.fuser.weight"),
        "{err}"
    );

    let no_bn = common::config(Version::NoSkipNoBatchNorm, &SMALL);
    let err = AttentionMechanism::load(&path, &no_bn, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(err, AmError::Mismatch { mismatch: Mismatch::Unexpected(ref n), .. } if n.contains("bns")),
        "{err}"
    );

    let noskip = common::config(Version::NoSkipConnection, &SMALL);
    let err = AttentionMechanism::load(&path, &noskip, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            AmError::Mismatch {
                mismatch: Mismatch::Shape { .. },
                ..
            }
        ),
        "{err}"
    );

    // Same tensor shapes, but the sidecar says which version was trained.
    am.save(&path, &meta(Version::Tame)).unwrap();
    let sigmoid = common::config(Version::SigmoidInFeatureBranch, &SMALL);
    let err = AttentionMechanism::load(&path, &sigmoid, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            AmError::Mismatch {
                mismatch: Mismatch::Version { .. },
                ..
            }
        ),
        "{err}"
    );

    let missing = AttentionMechanism::load(
        dir.path().join("nope.safetensors"),
        &config,
        DType::F32,
        &Device::Cpu,
    );
    assert!(matches!(missing, Err(AmError::Io { .. })));
    let garbage = dir.path().join("garbage.pt");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    let err = AttentionMechanism::load(&garbage, &config, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("garbage.pt"), "{err}");
}

#[test]
fn state_dict_names_are_accepted_with_or_without_prefixes() {
    let config = common::config(Version::Tame, &SMALL);
    let am = common::synthetic_am(&config, DType::F32);
    let state = am.state_dict().unwrap();
    for prefix in ["module.", "", "module.attn_mech."] {
        let renamed = state.iter().map(|(n, t)| {
            let bare = n.strip_prefix("attn.").unwrap();
            let name = if prefix.is_empty() {
                bare.to_string()
            } else {
                format!("{prefix}attn.{bare}")
            };
            (name, t.clone())
        });
        let again =
            AttentionMechanism::from_tensors(&config, renamed, DType::F32, &Device::Cpu).unwrap();
        let taps = common::synthetic_taps(&config, 2, DType::F32);
        let d = max_abs_diff(
            &am.forward(&taps, false).unwrap(),
            &again.forward(&taps, false).unwrap(),
        );
        assert_eq!(d, 0.0, "prefix {prefix:?}");
    }
    let mut partial = state.clone();
    partial.retain(|(n, _)| n != "attn.bns.1.running_var");
    let err = AttentionMechanism::from_tensors(&config, partial, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(err, AmError::State(Mismatch::Missing(ref n)) if n == "attn.bns.1.running_var"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let config = common::config(Version::Tame, &SMALL);
    let am = AttentionMechanism::new(&config, 0, DType::F32, &Device::Cpu).unwrap();
    let taps = common::synthetic_taps(&config, 2, DType::F32);
    assert!(matches!(
        am.forward(&taps[..1], false),
        Err(AmError::TapCount {
            expected: 2,
            got: 1
        })
    ));
    let wrong = vec![taps[0].clone(), taps[0].clone()];
    assert!(matches!(
        am.forward(&wrong, false),
        Err(AmError::TapShape { index: 1, .. })
    ));
    let one = common::synthetic_taps(
        &common::config(Version::Tame, &[(6, 1, 1), (10, 5, 5)]),
        1,
        DType::F32,
    );
    let tiny = AttentionMechanism::new(
        &common::config(Version::Tame, &[(6, 1, 1), (10, 5, 5)]),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(matches!(
        tiny.forward(&one, true),
        Err(AmError::BatchTooSmall(1))
    ));

    let branches = am.branches(&taps, false).unwrap();
    assert!(matches!(
        am.class_logits(&branches, &[NUM_CLASSES as u32]),
        Err(AmError::ClassIndex { .. })
    ));
    // Branches of a mechanism with other channel counts.
    let other = AttentionMechanism::new(
        &common::config(Version::Tame, &[(4, 9, 9), (10, 5, 5)]),
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(matches!(
        other.class_logits(&branches, &[1]),
        Err(AmError::BadInput(_))
    ));
    assert!(matches!(
        am.per_sample_class_logits(&branches, &[vec![1]]),
        Err(AmError::BadInput(_))
    ));
    assert!(matches!(
        am.per_sample_class_logits(&branches, &[vec![1], vec![1, 2]]),
        Err(AmError::BadInput(_))
    ));
    assert!(matches!(
        "V5".parse::<Version>(),
        Err(AmError::UnknownVersion(_))
    ));
}

/// NaN, infinities and integers where floats belong are refused naming the file and the
/// tensor (a NaN weight used to give NaN maps that scored as results).
#[test]
fn non_finite_or_integer_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(Version::Tame, &SMALL);
    let am = AttentionMechanism::new(&config, 0, DType::F32, &Device::Cpu).unwrap();
    let path = dir.path().join("bad.safetensors");
    let good: std::collections::HashMap<String, Tensor> =
        am.state_dict().unwrap().into_iter().collect();
    let weight = &good["attn.fuser.weight"];
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    for (value, expected) in [
        (Some(nan), "holds NaN or infinite values"),
        (Some(inf), "holds NaN or infinite values"),
        (None, "holds I64 integers, expected floating-point values"),
    ] {
        let mut tensors = good.clone();
        let bad = match value {
            Some(v) => {
                let mut values = weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                values[3] = v;
                Tensor::from_vec(values, weight.shape(), &Device::Cpu).unwrap()
            }
            None => weight.to_dtype(DType::I64).unwrap(),
        };
        tensors.insert("attn.fuser.weight".into(), bad);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let err = AttentionMechanism::load(&path, &config, DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("bad.safetensors"), "{err}");
        assert!(
            err.contains("`attn.fuser.weight` ") && err.contains(expected),
            "{err}"
        );
    }
}
