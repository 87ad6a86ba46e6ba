//! `--precision` as a user runs it: EfficientNet-Lite0 (synthetic weights) in bf16 through
//! `train`, `eval`, `explain` and `compare` on two of the committed photos. How close its
//! numbers are to f32's is tested in tame-backbones and tame-train.

mod support;

use support::{samples, tame, Run};

const ANNOUNCED: &str = "precision bf16: efficientnet-lite0 in bf16; attention mechanism, \
                         loss, optimizer and scores in f32";

/// Runs `tame` with `args`, asserting success; its stderr.
fn succeeds(args: &[&str]) -> String {
    let Run { ok, stderr, .. } = tame(args);
    assert!(ok, "{args:?}: {stderr}");
    stderr
}

#[test]
fn bf16_trains_evaluates_explains_and_compares_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let list = path("two.txt");
    std::fs::write(&list, "coffee.jpg 967\nrocket.jpg 812\n").unwrap();
    let photos = samples().to_string_lossy().into_owned();
    let (snapshots, checkpoint) = (path("snap"), path("snap/epoch_1.safetensors"));
    let (csv, maps, table) = (path("eval.csv"), path("maps"), path("table.md"));
    let model = ["--weights", "synthetic", "--precision", "bf16"];

    let train = [
        &["train", "--img-dir", &photos, "--train-list", &list][..],
        &[
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--snapshot-dir",
            &snapshots,
        ],
        &model,
    ]
    .concat();
    assert!(succeeds(&train).contains(ANNOUNCED));
    let read_json = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.path().join("snap").join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    assert_eq!(
        read_json("epoch_1.json")["config"]["run"]["precision"],
        "bf16"
    );
    assert_eq!(
        read_json("train_record.json")[0]["training"]["precision"],
        "bf16"
    );
    let tensors = candle_core::safetensors::load(&checkpoint, &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        tensors["attn.fuser.weight"].dtype(),
        candle_core::DType::F32
    );
    // The run continues only in the precision it started in.
    let mut in_f32 = train.clone();
    *in_f32.last_mut().unwrap() = "f32";
    in_f32.push("--resume");
    let Run { ok, stderr, .. } = tame(&in_f32);
    assert!(!ok && stderr.contains("other settings"), "{stderr}");

    let eval = [
        &["eval", "--am", &checkpoint, "--val-dir", &photos][..],
        &["--test-list", &list, "--out", &csv],
        &model,
    ]
    .concat();
    assert!(succeeds(&eval).contains(ANNOUNCED));
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 2, "{rows}");

    let explain = [&["explain", "--label", "967", "--out", &maps][..], &model].concat();
    assert!(succeeds(&explain).contains(ANNOUNCED));
    assert!(dir.path().join("maps/chelsea_967.npy").is_file());

    let compare = [
        &["compare", "--methods", "tame,gradcam", "--val-dir", &photos][..],
        &["--test-list", &list, "--grid-images", "0", "--out", &table],
        &model,
    ]
    .concat();
    assert!(succeeds(&compare).contains(ANNOUNCED));
    let table = std::fs::read_to_string(path("table.md")).unwrap();
    assert!(
        table.contains("backbone efficientnet-lite0 (bf16)"),
        "{table}"
    );
}

#[test]
fn an_unknown_precision_is_refused_with_the_valid_ones() {
    let Run { ok, stderr, .. } = tame(&["explain", "--precision", "fp16"]);
    assert!(!ok);
    assert!(
        stderr.contains("[possible values: f32, bf16, f16]"),
        "{stderr}"
    );
}
