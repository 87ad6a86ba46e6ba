//! `cargo xtask gpu-check` as a user runs it. The whole dry run (`--device cpu --quick`) takes
//! minutes and runs as its own CI step; these are its quick refusals.

use std::process::Command;

fn gpu_check(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("gpu-check")
        .args(args)
        .output()
        .expect("the xtask runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_device_is_a_one_line_error_and_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.md");
    let (ok, stderr) = gpu_check(&["--device", "tpu", "--out", report.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: unknown device `tpu`"),
        "{stderr}"
    );
    assert!(!report.exists());
}

#[test]
fn cuda_without_the_feature_says_how_to_build_it() {
    if cfg!(feature = "cuda") {
        return;
    }
    let (ok, stderr) = gpu_check(&["--device", "cuda:0"]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features cuda"), "{stderr}");
}

#[test]
fn without_cuda_is_only_for_prepare() {
    let (ok, stderr) = gpu_check(&["--without-cuda"]);
    assert!(!ok);
    assert!(stderr.contains("--prepare"), "{stderr}");
}
