//! `tame explain` as a user runs it, on the sample images with synthetic backbone weights and
//! an untrained attention mechanism.

mod support;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use support::{samples, tame, Run};
use tame_am::{AmConfig, AttentionMechanism, CheckpointMeta, TapShape, Version};

/// A mechanism whose every tensor follows the synthetic formula (as the fixture script's).
fn synthetic_am(dir: &Path, backbone: &str, taps: [&str; 3], shapes: Vec<TapShape>) -> PathBuf {
    let config = AmConfig::new(Version::Tame, shapes.clone()).unwrap();
    let tensors = config.state_layout().into_iter().map(|(name, shape)| {
        let t = if name.ends_with("num_batches_tracked") {
            candle_core::Tensor::new(0i64, &Device::Cpu).unwrap()
        } else {
            let values = tame_backbones::synthetic::synthetic_values(&name, &shape);
            candle_core::Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        };
        (name, t)
    });
    let am = AttentionMechanism::from_tensors(&config, tensors, DType::F32, &Device::Cpu).unwrap();
    let path = dir.join(format!("{backbone}.safetensors"));
    let meta = CheckpointMeta {
        backbone: backbone.into(),
        taps: taps.map(String::from).to_vec(),
        tap_shapes: shapes,
        version: Version::Tame,
        epoch: 0,
        global_step: 0,
        config: serde_json::Value::Null,
        tensors_sha256: None,
    };
    am.save(&path, &meta).unwrap();
    path
}

/// A synthetic ResNet-50 mechanism on the default taps.
fn resnet_am(dir: &Path) -> PathBuf {
    let shapes = vec![
        TapShape::new(512, 28, 28),
        TapShape::new(1024, 14, 14),
        TapShape::new(2048, 7, 7),
    ];
    synthetic_am(dir, "resnet50", ["layer2", "layer3", "layer4"], shapes)
}

/// The .npy map equals the reference pipeline (PyTorch, synthetic weights on both sides)
/// within 1e-4 absolute. Expected values: `python xtask/fixtures/make_explain_fixtures.py`.
#[test]
fn maps_equal_the_pytorch_reference_pipeline() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/explain.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = samples().join("astronaut_224_rgba.png");
    let cases = [
        (
            "vgg16",
            ["features.16", "features.23", "features.30"],
            vec![
                TapShape::new(256, 28, 28),
                TapShape::new(512, 14, 14),
                TapShape::new(512, 7, 7),
            ],
        ),
        (
            "resnet50",
            ["layer2", "layer3", "layer4"],
            vec![
                TapShape::new(512, 28, 28),
                TapShape::new(1024, 14, 14),
                TapShape::new(2048, 7, 7),
            ],
        ),
    ];
    for (backbone, taps, shapes) in cases {
        let am = synthetic_am(dir.path(), backbone, taps, shapes);
        let out = dir.path().join(backbone);
        let Run { ok, stderr, .. } = tame(&[
            "explain",
            image.to_str().unwrap(),
            "--model",
            backbone,
            "--weights",
            "synthetic",
            "--am",
            am.to_str().unwrap(),
            "--label",
            "130",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        let map = read_npy(&out.join("astronaut_224_rgba_130.npy"));
        let expected = &fixture[backbone];
        let indices = expected["indices"].as_array().unwrap();
        let values = expected["values"].as_array().unwrap();
        let worst = indices.iter().zip(values).fold(0f64, |worst, (i, v)| {
            let ours = map[i.as_u64().unwrap() as usize] as f64;
            worst.max((ours - v.as_f64().unwrap()).abs())
        });
        assert!(worst <= 1e-4, "{backbone}: max abs difference {worst}");
    }
}

fn read_npy(path: &Path) -> Vec<f32> {
    let t = candle_core::Tensor::read_npy(path).unwrap();
    assert_eq!(t.dims(), &[224, 224]);
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn writes_crop_overlay_and_map_per_class() {
    let dir = tempfile::tempdir().unwrap();
    let am = resnet_am(dir.path());
    let out = dir.path().join("out");
    let image = samples().join("coffee.jpg");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "explain",
            image.to_str().unwrap(),
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
        ];
        a.extend(["--am", am.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        a.extend(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        tame(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let Run { ok, stdout, stderr } = run(&["--label", "162"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("top-5:") && stdout.contains("explained 162 (beagle)"),
        "{stdout}"
    );
    let crop = image::open(out.join("coffee.png")).unwrap();
    assert_eq!((crop.width(), crop.height()), (224, 224));
    let overlay = image::open(out.join("coffee_162_mask.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (224, 224));
    let map = read_npy(&out.join("coffee_162.npy"));
    let (min, max) = map
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(
        min >= 0.0 && max <= 1.0 && max - min > 0.5,
        "map range {min}..{max}"
    );
    // Outputs get the permissions of any new file (0o666 less the umask), not owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for name in ["coffee.png", "coffee_162_mask.png", "coffee_162.npy"] {
            assert_eq!(mode(&out.join(name)), mode(&plain), "{name}");
        }
    }

    let Run { ok, stdout, stderr } = run(&["--top-k", "3", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let explained = report[0]["explained"].as_array().unwrap();
    assert_eq!(explained.len(), 3);
    for e in explained {
        assert!(Path::new(e["overlay"].as_str().unwrap()).is_file());
        read_npy(Path::new(e["map"].as_str().unwrap()));
    }
    // The top-3 classes are the first three of the top-5 predictions.
    let top5: Vec<u64> = report[0]["top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["class"].as_u64().unwrap())
        .collect();
    let classes: Vec<u64> = explained
        .iter()
        .map(|e| e["class"].as_u64().unwrap())
        .collect();
    assert_eq!(classes, top5[..3]);
}

#[test]
fn bad_input_fails_cleanly_without_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let am = resnet_am(dir.path());
    let out = dir.path().join("out");
    let image = samples().join("coffee.jpg");
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff not really a jpeg").unwrap();
    let common = [
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--am",
        am.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];

    let Run { ok, stderr, .. } = tame(
        &[
            &["explain", image.to_str().unwrap(), "--label", "1000"][..],
            &common,
        ]
        .concat(),
    );
    assert!(
        !ok && stderr.contains("--label 1000: classes are 0..999"),
        "{stderr}"
    );

    let Run { ok, stderr, .. } = tame(
        &[
            &[
                "explain",
                image.to_str().unwrap(),
                corrupt.to_str().unwrap(),
            ][..],
            &common,
        ]
        .concat(),
    );
    assert!(!ok && stderr.contains("corrupt.jpg"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!out.exists(), "no output is written when an input is bad");

    // The mechanism was trained for ResNet-50's taps: VGG-16 is refused.
    let Run { ok, stderr, .. } = tame(&[
        "explain",
        image.to_str().unwrap(),
        "--model",
        "vgg16",
        "--weights",
        "synthetic",
        "--am",
        am.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("trained on resnet50, not vgg16"),
        "{stderr}"
    );
}

/// No image and no mechanism: the built-in photo with the built-in demo mechanism (the
/// backbone's values are synthetic here, so only the outputs' presence and form are checked).
#[test]
fn with_no_arguments_explains_the_built_in_photo() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let Run { ok, stdout, stderr } = tame(&[
        "explain",
        "--weights",
        "synthetic",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("chelsea.jpg: efficientnet-lite0 top-5:"),
        "{stdout}"
    );
    let overlays: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("chelsea_") && n.ends_with("_mask.png"))
        .collect();
    assert_eq!(overlays.len(), 1, "{overlays:?}");
    let overlay = image::open(out.join(&overlays[0])).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (224, 224));

    // Other backbones have no built-in mechanism: a clear error, no output.
    let Run { ok, stderr, .. } =
        tame(&["explain", "--model", "resnet50", "--weights", "synthetic"]);
    assert!(!ok);
    assert!(stderr.contains("--am is required for resnet50"), "{stderr}");
}

/// Every method on one image: an overlay and a map each, and the side-by-side picture.
#[test]
fn every_method_writes_its_map_and_the_side_by_side_picture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let image = samples().join("rocket.jpg");
    let Run { ok, stdout, stderr } = tame(&[
        "explain",
        image.to_str().unwrap(),
        "--weights",
        "synthetic",
        "--method",
        "all",
        // Few channels and masks: the forms are checked here, the numbers in tame-cams.
        "--cam-tap",
        "blocks.4",
        "--rise-masks",
        "8",
        "--label",
        "232",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for suffix in ["", "_gradcam", "_gradcam++", "_scorecam", "_rise"] {
        let map = read_npy(&out.join(format!("rocket_232{suffix}.npy")));
        assert_eq!(map.len(), 224 * 224, "{suffix}");
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)), "{suffix}");
        assert!(out.join(format!("rocket_232{suffix}_mask.png")).is_file());
    }
    assert!(stdout.contains("by gradcam++"), "{stdout}");
    let grid = image::open(out.join("rocket_232_methods.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (6 * 224 + 5 * 4, 224));

    let Run { ok, stderr, .. } = tame(&["explain", "--method", "lime"]);
    assert!(!ok);
    assert!(stderr.contains("unknown method `lime`"), "{stderr}");
}
