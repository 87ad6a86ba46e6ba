//! Arguments out of range are refused with one clear line each (they used to be accepted:
//! a batch of 0 images, a negative weight decay, a tap named twice).

mod support;

use support::{tame, Run};

#[test]
fn out_of_range_arguments_are_refused_with_one_line() {
    let photos = support::samples().to_string_lossy().into_owned();
    let train = [
        "train",
        "--img-dir",
        &photos,
        "--train-list",
        "/nonexistent/l.txt",
    ];
    let with = |base: &[&str], extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let cases = [
        (
            with(
                &["explain", &photos, "--weights", "synthetic"],
                &["--batch-size", "0"],
            ),
            "`0` is not a whole number of at least 1",
        ),
        (
            with(&["explain", &photos], &["--mask-batch-size", "0"]),
            "`0` is not a whole number of at least 1",
        ),
        (
            with(&["compare", "--val-dir", &photos], &["--batch-size", "0"]),
            "`0` is not a whole number of at least 1",
        ),
        (
            with(&["datalist", "--img-dir", &photos], &["--workers", "0"]),
            "`0` is not a whole number of at least 1",
        ),
        (
            with(&train, &["--wd", "-5"]),
            "`-5` is not a number of at least 0",
        ),
        (
            with(&train, &["--wd=-5"]),
            "`-5` is not a number of at least 0",
        ),
        (
            with(&train, &["--max-lr", "0"]),
            "`0` is not a number above 0",
        ),
        (
            with(&train, &["--max-lr", "inf"]),
            "`inf` is not a number above 0",
        ),
        (
            with(&train, &["--epochs", "0"]),
            "`0` is not a whole number of at least 1",
        ),
        (
            with(
                &[
                    "explain",
                    &photos,
                    "--model",
                    "resnet50",
                    "--weights",
                    "synthetic",
                ],
                &[
                    "--am",
                    "/nonexistent/am.safetensors",
                    "--layers",
                    "layer3,layer4,layer3",
                ],
            ),
            "--layers names `layer3` twice",
        ),
    ];
    for (args, expected) in cases {
        let Run { ok, stderr, .. } = tame(&args);
        assert!(!ok, "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(expected), "{args:?}: {stderr}");
    }
}

/// A device or a folder where a weights or mechanism file belongs is named as such (a
/// mechanism of /dev/zero was read until memory ran out; a weights folder was "no such file").
#[test]
fn files_that_are_not_regular_files_are_refused_as_such() {
    let photos = support::samples().to_string_lossy().into_owned();
    for (flag, path, expected) in [
        ("--am", "/dev/zero", "/dev/zero: not a regular file"),
        ("--weights", "/dev/zero", "/dev/zero: not a regular file"),
        ("--weights", "/", "/: not a regular file"),
        (
            "--weights",
            "/nonexistent/w.pth",
            "/nonexistent/w.pth: no such file",
        ),
    ] {
        let Run { ok, stderr, .. } = tame(&["explain", &photos, flag, path]);
        assert!(!ok, "{flag} {path}: {stderr}");
        assert!(stderr.contains(expected), "{flag} {path}: {stderr}");
    }
}

/// A tap that is not a feature map (the classifier's `fc`) is named in one line, with no
/// backtrace even when `RUST_BACKTRACE` is set (it was a rank error from candle with one).
#[test]
fn a_tap_that_is_not_a_feature_map_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("train.txt");
    std::fs::write(&list, "coffee.jpg 967\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tame"))
        .args(["train", "--model", "resnet50", "--weights", "synthetic"])
        .args(["--layers", "layer4,fc", "--img-dir"])
        .arg(support::samples())
        .arg("--train-list")
        .arg(&list)
        .arg("--snapshot-dir")
        .arg(dir.path().join("snap"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("tap `fc` gives [1, 1000], not a feature map"),
        "{stderr}"
    );
}
