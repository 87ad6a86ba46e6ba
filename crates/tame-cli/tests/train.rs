//! `tame train`, `tame lr-test` and `tame plot-lr` as a user runs them, on synthetic
//! ResNet-50 weights and the committed photos.

mod support;

use std::path::Path;

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/photos");

/// Runs `tame`; its stdout and stderr together.
fn tame(args: &[&str]) -> (bool, String) {
    let run = support::tame(args);
    (run.ok, run.stdout + &run.stderr)
}

/// A list of the first `count` photos. In this order the synthetic network's loss falls
/// between the range test's points, so that `lr-test` has a maximum LR to suggest.
fn write_list(dir: &Path, count: usize) -> String {
    let lines = [
        "astronaut.jpg 834",
        "coffee.jpg 967",
        "chelsea_small.jpg 285",
        "rocket.jpg 812",
    ];
    let path = dir.join("train.txt");
    std::fs::write(&path, lines[..count].join("\n") + "\n").unwrap();
    path.to_string_lossy().into_owned()
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn train_writes_checkpoints_log_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path(), 2);
    let snap = dir.path().join("snap");
    let snap_s = snap.to_string_lossy().into_owned();
    let args = [
        "train",
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--img-dir",
        SAMPLES,
        "--train-list",
        &list,
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--snapshot-dir",
        &snap_s,
        "--backbone-mode",
        "eval",
        "--workers",
        "2",
    ];
    let (ok, out) = tame(&args);
    assert!(ok, "{out}");

    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap.join("epoch_1.json")).unwrap()).unwrap();
    assert_eq!(meta["epoch"], 1);
    assert_eq!(meta["global_step"], 1);
    assert_eq!(meta["version"], "TAME");
    assert_eq!(meta["config"]["run"]["max_lr"], 1e-4);
    let tensors =
        candle_core::safetensors::load(snap.join("epoch_1.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(tensors.contains_key("attn.fuser.weight"));
    assert!(tensors.contains_key("optimizer.momentum_buffer.weights.attn.fuser.weight"));

    let log = std::fs::read_to_string(snap.join("train_log.csv")).unwrap();
    let mut lines = log.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,step,lr,loss,ce,area,smoothness,top1,top5")
    );
    let row: Vec<f64> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(row.len(), 9);
    assert_eq!((row[0], row[1]), (1.0, 1.0));
    // A one-step cycle is past PyTorch's phase boundary (0.3 * 1 - 1 < 0): the final rate.
    assert!((row[2] - 1e-4 / 25.0 / 1e4).abs() < 1e-18, "lr {}", row[2]);
    assert!((row[3] - (row[4] + row[5] + row[6])).abs() < 1e-4 * row[3].abs());
    assert!(lines.next().is_none());

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap.join("train_record.json")).unwrap())
            .unwrap();
    assert_eq!(record.as_array().unwrap().len(), 1);
    assert_eq!(record[0]["training"]["epochs"], 1);

    // A second run into the same folder must say how to continue instead of overwriting.
    let (ok, out) = tame(&args);
    assert!(!ok && out.contains("--resume"), "{out}");

    // Resuming a finished run trains nothing more and records the resumption.
    let mut resume = args.to_vec();
    resume.push("--resume");
    let (ok, out) = tame(&resume);
    assert!(ok, "{out}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap.join("train_record.json")).unwrap())
            .unwrap();
    assert_eq!(record.as_array().unwrap().len(), 2);

    // Other settings than the checkpoint's are refused.
    let mut other = resume.clone();
    other.extend(["--max-lr", "0.5"]);
    let (ok, out) = tame(&other);
    assert!(!ok && out.contains("other settings"), "{out}");
}

#[test]
fn lr_test_and_plot_lr_write_curve_plot_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path(), 4);
    let out_dir = dir.path().to_string_lossy().into_owned();
    let (ok, out) = tame(&[
        "lr-test",
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--img-dir",
        SAMPLES,
        "--train-list",
        &list,
        "--batch-size",
        "1",
        "--out-dir",
        &out_dir,
        "--backbone-mode",
        "eval",
        "--workers",
        "2",
    ]);
    assert!(ok, "{out}");
    let json = dir.path().join("resnet50_TAME_1.json");
    let curve: (Vec<f64>, Vec<f64>) =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(!curve.0.is_empty() && curve.0.len() == curve.1.len());
    assert!((curve.0[0] - 1e-8).abs() < 1e-20);
    assert!(is_png(&dir.path().join("resnet50_TAME_1.png")));
    assert!(out.contains("--max-lr"), "{out}");

    let png = dir.path().join("both.png");
    let json_s = json.to_string_lossy().into_owned();
    let (ok, out) = tame(&[
        "plot-lr",
        &json_s,
        &json_s,
        "--window",
        "2",
        "--out",
        &png.to_string_lossy(),
    ]);
    assert!(ok, "{out}");
    assert!(is_png(&png));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[[1, 2], [3]]").unwrap();
    let (ok, out) = tame(&["plot-lr", &bad.to_string_lossy()]);
    assert!(!ok && out.contains("bad.json"), "{out}");
}

/// Ctrl-C and SIGTERM (what schedulers send) both save where the run is and exit with 128 +
/// the signal's number, saying how to resume. SIGTERM used to end the run unsaved.
#[cfg(unix)]
#[test]
fn stop_signals_save_a_resumable_checkpoint_and_exit_non_zero() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    for (signal, status) in [("TERM", 143), ("INT", 130)] {
        let dir = tempfile::tempdir().unwrap();
        let list = write_list(dir.path(), 4);
        let snap = dir.path().join("snap");
        let child = Command::new(env!("CARGO_BIN_EXE_tame"))
            .args(["train", "--model", "resnet50", "--weights", "synthetic"])
            .args(["--img-dir", SAMPLES, "--train-list", &list])
            .args([
                "--epochs",
                "50",
                "--batch-size",
                "1",
                "--backbone-mode",
                "eval",
            ])
            .arg("--snapshot-dir")
            .arg(&snap)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Signalled once the first step is logged.
        let log = snap.join("train_log.csv");
        let start = Instant::now();
        while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 2 {
            assert!(start.elapsed() < Duration::from_secs(300), "no step logged");
            std::thread::sleep(Duration::from_millis(100));
        }
        let kill = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{signal}: {stderr}");
        assert!(stderr.contains("continue with --resume"), "{stderr}");
        assert!(snap.join("interrupted.safetensors").is_file(), "{stderr}");
        assert!(snap.join("interrupted.json").is_file(), "{stderr}");
    }
}

/// A list none of whose images can be read fails, naming each skipped image, instead of
/// writing an untrained checkpoint and exiting 0.
#[test]
fn training_on_no_readable_image_fails_naming_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("train.txt");
    std::fs::write(&list, "missing_a.jpg 1\nmissing_b.jpg 2\n").unwrap();
    let snap = dir.path().join("snap");
    let (ok, out) = tame(&[
        "train",
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--img-dir",
        SAMPLES,
        "--train-list",
        &list.to_string_lossy(),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--snapshot-dir",
        &snap.to_string_lossy(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("saw no image"), "{out}");
    assert!(
        out.contains("missing_a.jpg") && out.contains("missing_b.jpg"),
        "{out}"
    );
    assert!(!snap.join("epoch_1.safetensors").exists(), "{out}");
}

/// `--resume` continues the same run only: another list, order, augmentation or seed is
/// refused with each difference named. A pair a kill left half-written is passed over for
/// the newest complete checkpoint, and a killed write's temporary is cleaned up.
#[test]
fn resume_checks_the_run_and_passes_over_half_written_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path(), 2);
    let snap = dir.path().join("snap");
    let snap_s = snap.to_string_lossy().into_owned();
    let args = [
        "train",
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--img-dir",
        SAMPLES,
        "--train-list",
        &list,
        "--batch-size",
        "2",
        "--snapshot-dir",
        &snap_s,
        "--backbone-mode",
        "eval",
    ];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { [&args[..], &["--epochs", "2"], extra].concat() };
    let (ok, out) = tame(&with(&[]));
    assert!(ok, "{out}");
    // What a kill between the two renames of epoch 2's pair left, when the tensors were
    // renamed first: tensors without their sidecar.
    std::fs::remove_file(snap.join("epoch_2.json")).unwrap();

    let (ok, out) = tame(&with(&[
        "--resume",
        "--no-shuffle",
        "--augment",
        "none",
        "--seed",
        "3",
    ]));
    assert!(!ok, "{out}");
    for difference in [
        "shuffle: true then, false now",
        "augmentation: \"reference\" then, \"none\" now",
        "seed: 0 then, 3 now",
    ] {
        assert!(out.contains(difference), "{difference}: {out}");
    }
    std::fs::write(&list, "coffee.jpg 967\nastronaut.jpg 834\n").unwrap();
    let (ok, out) = tame(&with(&["--resume"]));
    assert!(!ok && out.contains("train_list_sha256"), "{out}");
    write_list(dir.path(), 2);

    // What a kill mid-write leaves: a temporary beside its target.
    let leftover = snap.join(".epoch_2.safetensors.a1B2c3.tmp");
    std::fs::write(&leftover, b"half").unwrap();
    let (ok, out) = tame(&with(&["--resume"]));
    assert!(ok, "{out}");
    assert!(
        out.contains("passing over") && out.contains("epoch_2.safetensors"),
        "{out}"
    );
    assert!(
        out.contains("resuming from") && out.contains("epoch_1.safetensors"),
        "{out}"
    );
    assert!(!leftover.exists(), "{out}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(snap.join("epoch_2.json")).unwrap()).unwrap();
    assert_eq!(meta["global_step"], 2);
}
