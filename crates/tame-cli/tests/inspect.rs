//! `tame inspect` as a user runs it.

mod support;

use support::{tame, Run};

#[test]
fn lists_taps_with_shapes_and_marks_the_defaults() {
    let Run { ok, stdout, stderr } = tame(&["inspect", "--model", "resnet50"]);
    assert!(ok, "{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == name))
            .unwrap_or_else(|| panic!("no `{name}` in\n{stdout}"))
            .to_string()
    };
    assert!(line("layer2").starts_with('*') && line("layer2").ends_with("[1, 512, 28, 28]"));
    assert!(line("layer3.5.conv2").ends_with("[1, 256, 14, 14]"));
    assert!(line("maxpool").ends_with("[1, 64, 56, 56]"));
    assert!(line("fc").ends_with("[1, 1000]"));
}

#[test]
fn bad_arguments_give_one_clear_error_and_a_failure_status() {
    let Run { ok, stderr, .. } = tame(&["inspect", "--model", "vgg19"]);
    assert!(
        !ok && stderr.contains("unknown model `vgg19` (valid: vgg16, resnet50"),
        "{stderr}"
    );

    let Run { ok, stderr, .. } = tame(&[
        "inspect",
        "--model",
        "vgg16",
        "--weights",
        "/nonexistent/w.safetensors",
    ]);
    assert!(
        !ok && stderr.contains("/nonexistent/w.safetensors: no such file"),
        "{stderr}"
    );

    let Run { ok, stderr, .. } = tame(&["inspect", "--model", "vgg16", "--device", "tpu"]);
    assert!(!ok && stderr.contains("unknown device `tpu`"), "{stderr}");
}

/// `tame inspect | head`: output into a closed pipe ends the process by SIGPIPE, as other
/// tools end, without a panic message (it used to exit 101 with one).
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_tame"))
        .args(["inspect", "--model", "vgg16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before anything is written: the first line meets a closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    const SIGPIPE: i32 = 13; // on Linux, the BSDs and macOS alike
    assert_eq!(out.status.signal(), Some(SIGPIPE), "{:?}", out.status);
}
