//! Bad lists and images given to `tame`: each refused with one line naming the file (and
//! the list line), or, in the long runs, skipped, named and counted.

mod support;

use std::path::Path;

use support::{tame, Run};

/// The first line of stderr that starts with `error:` (and checks that there is one).
fn error_line(run: &Run) -> &str {
    assert!(!run.ok, "{}", run.stderr);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    errors[0]
}

/// `tame compare` with Grad-CAM only on `list`, images under `val_dir`, and `extra` arguments.
fn compare(val_dir: &Path, list: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "compare",
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--methods",
        "gradcam",
        "--grid-images",
        "1",
        "--batch-size",
        "2",
        "--val-dir",
        val_dir.to_str().unwrap(),
        "--test-list",
        list.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    tame(&args)
}

/// Folders and devices given as lists or listed as images are refused before anything is
/// read from them (a FIFO or /dev/zero would be read without end).
#[cfg(unix)]
#[test]
fn lists_and_images_must_be_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("table.md");
    for list in [Path::new("/dev/null"), dir.path()] {
        let run = compare(dir.path(), list, &out, &[]);
        assert!(
            error_line(&run).ends_with(&format!("{}: not a regular file", list.display())),
            "{}",
            run.stderr
        );
    }
    let run = tame(&[
        "train",
        "--weights",
        "synthetic",
        "--img-dir",
        dir.path().to_str().unwrap(),
        "--train-list",
        "/dev/null",
    ]);
    assert!(
        error_line(&run).ends_with("/dev/null: not a regular file"),
        "{}",
        run.stderr
    );

    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.jpg")).unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "\nzero.jpg 3\n").unwrap();
    let run = compare(dir.path(), &list, &out, &[]);
    let expected = format!(
        "{}:2: {}: not a regular file",
        list.display(),
        dir.path().join("zero.jpg").display()
    );
    assert!(error_line(&run).ends_with(&expected), "{}", run.stderr);
}

/// A small JPEG made here, and the same cut in half.
fn jpegs() -> (Vec<u8>, Vec<u8>) {
    let image = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]));
    let mut whole = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut whole)
        .encode_image(&image)
        .unwrap();
    let half = whole[..whole.len() / 2].to_vec();
    (whole, half)
}

/// `tame explain` of a truncated JPEG is an error naming it (it explained a half-grey
/// image before).
#[test]
fn explaining_a_truncated_jpeg_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("cut.jpg");
    std::fs::write(&image, jpegs().1).unwrap();
    let out = dir.path().join("maps");
    let run = tame(&[
        "explain",
        image.to_str().unwrap(),
        "--model",
        "resnet50",
        "--weights",
        "synthetic",
        "--method",
        "gradcam",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        error_line(&run),
        format!(
            "error: cannot decode {}: the file is truncated",
            image.display()
        )
    );
    assert!(!out.exists(), "{}", run.stderr);
}

/// Images over `--max-image-side` (or `$TAME_MAX_IMAGE_SIDE`) pixels on a side are refused
/// before they are decoded: by `explain` as an error, by the long runs as a bad image.
#[test]
fn images_over_the_side_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("tall.png");
    image::GrayImage::new(30, 120).save(&image).unwrap();
    let explain = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "explain",
            image.to_str().unwrap(),
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
            "--method",
            "gradcam",
            "--out",
            dir.path().to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        support::tame_with_env(&args, env)
    };
    let refusal = format!(
        "error: cannot decode {}: 30x120 pixels, more than the 100 per side allowed",
        image.display()
    );
    assert_eq!(
        error_line(&explain(&[], &[("TAME_MAX_IMAGE_SIDE", "100")])),
        refusal
    );
    assert_eq!(
        error_line(&explain(&["--max-image-side", "100"], &[])),
        refusal
    );
    let run = explain(&["--max-image-side", "0"], &[]);
    assert!(error_line(&run).contains("at least 1"), "{}", run.stderr);
    let run = explain(&[], &[("TAME_MAX_IMAGE_SIDE", "120")]);
    assert!(run.ok, "{}", run.stderr);

    let list = dir.path().join("list.txt");
    std::fs::write(&list, "tall.png 1\n").unwrap();
    let out = dir.path().join("table.md");
    let run = compare(dir.path(), &list, &out, &["--max-image-side", "100"]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains(&format!("{}:1: {}", list.display(), &refusal[7..])),
        "{}",
        run.stderr
    );
}

/// List paths that leave the image folder (`..`, absolute paths) are refused, naming the
/// list and line, unless `--allow-outside` is given.
#[test]
fn list_paths_outside_the_image_folder_need_allow_outside() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let photo = dir.path().join("outside.jpg");
    std::fs::write(&photo, jpegs().0).unwrap();
    std::fs::copy(&photo, images.join("inside.jpg")).unwrap();
    let out = dir.path().join("table.md");
    for path in ["../outside.jpg", photo.to_str().unwrap()] {
        let list = dir.path().join("list.txt");
        std::fs::write(&list, format!("inside.jpg 1\n{path} 2\n")).unwrap();
        let run = compare(&images, &list, &out, &[]);
        assert_eq!(
            error_line(&run),
            format!(
                "error: {}:2: {path} is outside --val-dir (absolute, or through ..); \
                 --allow-outside reads it",
                list.display()
            )
        );
        let run = tame(&[
            "train",
            "--weights",
            "synthetic",
            "--img-dir",
            images.to_str().unwrap(),
            "--train-list",
            list.to_str().unwrap(),
        ]);
        assert!(
            error_line(&run).contains(&format!(
                "{}:2: {path} is outside --img-dir",
                list.display()
            )),
            "{}",
            run.stderr
        );
        let run = compare(&images, &list, &out, &["--allow-outside"]);
        assert!(run.ok, "{path}: {}", run.stderr);
    }
}

/// Folder `images` under `dir` with `good.jpg` and a truncated `cut.jpg`, and a list of both
/// (the truncated one on line 2).
fn good_and_cut(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    let (whole, half) = jpegs();
    std::fs::write(images.join("good.jpg"), whole).unwrap();
    std::fs::write(images.join("cut.jpg"), half).unwrap();
    let list = dir.join("list.txt");
    std::fs::write(&list, "good.jpg 1\ncut.jpg 2\n").unwrap();
    (images, list)
}

/// Checks that a run skipped `cut` (named as it was skipped and counted at the end), and
/// failed for it unless `skip_bad`.
fn skipped_the_cut_image(run: &Run, cut: &str, skip_bad: bool) {
    let named = format!("skipped: {cut}: the file is truncated");
    assert!(run.stderr.contains(&named), "{}", run.stderr);
    assert!(
        run.stderr.contains("1 unreadable image skipped:"),
        "{}",
        run.stderr
    );
    if skip_bad {
        assert!(run.ok, "{}", run.stderr);
    } else {
        assert_eq!(
            error_line(run),
            "error: 1 unreadable image skipped (listed above); --skip-bad accepts skipped images"
        );
    }
}

/// `tame datalist` labels what it can read, names and counts what it skipped, and fails
/// for it unless `--skip-bad` is given (a truncated JPEG was labelled before).
#[test]
fn datalist_skips_a_truncated_image_and_fails_without_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (images, _) = good_and_cut(dir.path());
    let out = dir.path().join("labels.txt");
    for skip_bad in [false, true] {
        let mut args = vec![
            "datalist",
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
            "--img-dir",
            images.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if skip_bad {
            args.push("--skip-bad");
        }
        let run = tame(&args);
        let cut = format!("cannot decode {}", images.join("cut.jpg").display());
        skipped_the_cut_image(&run, &cut, skip_bad);
        let labels = std::fs::read_to_string(&out).unwrap();
        assert_eq!(labels.lines().count(), 1, "{labels}");
        assert!(labels.starts_with("good.jpg "), "{labels}");
    }
}

/// `tame compare` (and so `tame eval`, which evaluates the same way) goes on past a bad
/// image, writes its table, and fails for the image unless `--skip-bad` is given.
#[test]
fn compare_skips_a_truncated_image_and_fails_without_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (images, list) = good_and_cut(dir.path());
    let out = dir.path().join("table.md");
    for skip_bad in [false, true] {
        let extra: &[&str] = if skip_bad { &["--skip-bad"] } else { &[] };
        let run = compare(&images, &list, &out, extra);
        let cut = format!(
            "{}:2: cannot decode {}",
            list.display(),
            images.join("cut.jpg").display()
        );
        skipped_the_cut_image(&run, &cut, skip_bad);
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .contains("(1 images)"));
        std::fs::remove_file(&out).unwrap();
    }
}

/// `tame train` names and counts a bad image, writes its checkpoints, and fails for the
/// image unless `--skip-bad` is given.
#[test]
fn train_skips_a_truncated_image_and_fails_without_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (images, list) = good_and_cut(dir.path());
    for skip_bad in [false, true] {
        let snap = dir.path().join(format!("snap_{skip_bad}"));
        let mut args = vec![
            "train",
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
            "--img-dir",
            images.to_str().unwrap(),
            "--train-list",
            list.to_str().unwrap(),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--backbone-mode",
            "eval",
            "--snapshot-dir",
            snap.to_str().unwrap(),
        ];
        if skip_bad {
            args.push("--skip-bad");
        }
        let run = tame(&args);
        let cut = format!(
            "{}:2: cannot decode {}",
            list.display(),
            images.join("cut.jpg").display()
        );
        skipped_the_cut_image(&run, &cut, skip_bad);
        assert!(snap.join("epoch_1.safetensors").is_file(), "{}", run.stderr);
    }
}

/// `tame lr-test` names and counts a bad image, writes its curve, and fails for the image
/// unless `--skip-bad` is given (it skipped it silently before).
#[test]
fn lr_test_skips_a_truncated_image_and_fails_without_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (images, list) = good_and_cut(dir.path());
    for skip_bad in [false, true] {
        let out = dir.path().join(format!("lr_{skip_bad}"));
        let mut args = vec![
            "lr-test",
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
            "--img-dir",
            images.to_str().unwrap(),
            "--train-list",
            list.to_str().unwrap(),
            "--batch-size",
            "1",
            "--no-shuffle",
            "--backbone-mode",
            "eval",
            "--out-dir",
            out.to_str().unwrap(),
        ];
        if skip_bad {
            args.push("--skip-bad");
        }
        let run = tame(&args);
        let cut = format!(
            "{}:2: cannot decode {}",
            list.display(),
            images.join("cut.jpg").display()
        );
        skipped_the_cut_image(&run, &cut, skip_bad);
        assert!(out.join("resnet50_TAME_1.json").is_file(), "{}", run.stderr);
    }
}
