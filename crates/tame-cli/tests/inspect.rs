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
