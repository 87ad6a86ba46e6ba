//! `tame eval` as a user runs it: synthetic ResNet-50 weights, a random attention mechanism
//! saved as a snapshot folder, two of the committed photos.

mod support;

use std::path::Path;

use candle_core::{DType, Device};
use tame_am::{AmConfig, AttentionMechanism, CheckpointMeta, TapShape, Version};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/photos");
const HEADER: &str = "epoch,AD(100%),IC(100%),AD(50%),IC(50%),AD(15%),IC(15%)";

/// Runs `tame`; its stdout and stderr together.
fn tame(args: &[&str]) -> (bool, String) {
    let run = support::tame(args);
    (run.ok, run.stdout + &run.stderr)
}

/// A random TAME mechanism for ResNet-50's default taps, saved as `epoch_<epoch>`.
fn save_am(dir: &Path, epoch: u64, seed: u64) {
    let taps = vec![
        TapShape::new(512, 28, 28),
        TapShape::new(1024, 14, 14),
        TapShape::new(2048, 7, 7),
    ];
    let config = AmConfig::new(Version::Tame, taps.clone()).unwrap();
    let am = AttentionMechanism::new(&config, seed, DType::F32, &Device::Cpu).unwrap();
    let meta = CheckpointMeta {
        backbone: "resnet50".into(),
        taps: vec!["layer2".into(), "layer3".into(), "layer4".into()],
        tap_shapes: taps,
        version: Version::Tame,
        epoch,
        global_step: epoch * 10,
        config: serde_json::Value::Null,
        tensors_sha256: None,
    };
    am.save(dir.join(format!("epoch_{epoch}.safetensors")), &meta)
        .unwrap();
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn writes_one_row_per_epoch_and_the_per_image_values() {
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = tmp.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    for epoch in 1..=3 {
        save_am(&snapshots, epoch, epoch);
    }
    let list = write(
        &tmp.path().join("list.txt"),
        "coffee.jpg 967\nrocket.jpg 812\n",
    );
    let out = tmp.path().join("eval.csv");
    let per_image = tmp.path().join("images.csv");
    let (ok, text) = tame(&[
        "eval",
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--val-dir",
        SAMPLES,
        "--test-list",
        &list,
        "--am",
        snapshots.to_str().unwrap(),
        "--start-epoch",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--per-image",
        per_image.to_str().unwrap(),
        "--batch-size",
        "2",
    ]);
    assert!(ok, "{text}");
    let csv = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], HEADER);
    assert_eq!(lines.len(), 3, "epochs 2 and 3:\n{csv}");
    for (line, epoch) in lines[1..].iter().zip(["2", "3"]) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], epoch, "{csv}");
        assert_eq!(fields.len(), 7, "{csv}");
        for value in &fields[1..] {
            let v: f64 = value.parse().unwrap();
            assert!((0.0..=100.0).contains(&v), "{csv}");
        }
    }
    let images = std::fs::read_to_string(&per_image).unwrap();
    let rows: Vec<&str> = images.lines().collect();
    assert_eq!(rows.len(), 1 + 2 * 2, "{images}");
    assert!(rows[1].starts_with("2,coffee.jpg,967,"), "{images}");
    assert_eq!(rows[1].split(',').count(), 8, "{images}");
}

#[test]
fn malformed_list_missing_image_and_unfit_mechanism_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    save_am(tmp.path(), 1, 0);
    let am = tmp.path().join("epoch_1.safetensors");
    let out = tmp.path().join("eval.csv");
    let run = |list: &str, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
            "--val-dir",
            SAMPLES,
            "--test-list",
            list,
            "--am",
            am.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tame(&args)
    };

    let bad = write(
        &tmp.path().join("bad.txt"),
        "coffee.jpg 967\nrocket.jpg two hundred\n",
    );
    let (ok, text) = run(&bad, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("{bad}:2:")), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{text}"
    );

    let missing = write(
        &tmp.path().join("missing.txt"),
        "coffee.jpg 967\n\nno_such_image.JPEG 3\n",
    );
    let (ok, text) = run(&missing, &[]);
    assert!(!ok && text.contains(&format!("{missing}:3:")), "{text}");
    assert!(text.contains("no_such_image.JPEG"), "{text}");

    // layer1 has other shapes than the checkpoint was trained on.
    let good = write(&tmp.path().join("good.txt"), "coffee.jpg 967\n");
    let (ok, text) = run(&good, &["--layers", "layer1,layer3,layer4"]);
    assert!(!ok && text.contains("epoch_1.safetensors"), "{text}");
    assert!(!out.exists(), "no output after an error");
}

/// A truncated image is skipped and named, the CSV still written, and the run fails for it
/// unless `--skip-bad` is given (it was evaluated as a half-grey picture before).
#[test]
fn a_truncated_image_is_skipped_and_fails_the_run_without_skip_bad() {
    let tmp = tempfile::tempdir().unwrap();
    save_am(tmp.path(), 1, 0);
    let photo = std::fs::read(Path::new(SAMPLES).join("coffee.jpg")).unwrap();
    std::fs::write(tmp.path().join("coffee.jpg"), &photo).unwrap();
    std::fs::write(tmp.path().join("cut.jpg"), &photo[..photo.len() / 2]).unwrap();
    let list = write(&tmp.path().join("list.txt"), "coffee.jpg 967\ncut.jpg 1\n");
    let out = tmp.path().join("eval.csv");
    for skip_bad in [false, true] {
        let mut args = vec![
            "eval",
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
            "--val-dir",
            tmp.path().to_str().unwrap(),
            "--test-list",
            &list,
            "--am",
            tmp.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if skip_bad {
            args.push("--skip-bad");
        }
        let (ok, text) = tame(&args);
        assert_eq!(ok, skip_bad, "{text}");
        let skipped = format!(
            "skipped: {list}:2: cannot decode {}: the file is truncated",
            tmp.path().join("cut.jpg").display()
        );
        assert!(text.contains(&skipped), "{text}");
        assert!(text.contains("1 unreadable image skipped"), "{text}");
        let csv = std::fs::read_to_string(&out).unwrap();
        assert_eq!(csv.lines().count(), 2, "{csv}");
    }
}
