//! `tame datalist` as a user runs it.

mod support;

use support::{samples, tame, Run};

#[test]
fn labels_every_image_resumes_and_skips_unreadable_files() {
    let samples = samples();
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    for name in ["coffee.jpg", "rocket.jpg", "astronaut_224_rgba.png"] {
        std::fs::copy(samples.join(name), images.join("sub").join(name)).unwrap();
    }
    std::fs::copy(
        samples.join("chelsea_small.jpg"),
        images.join("chelsea_small.jpg"),
    )
    .unwrap();
    let list = dir.path().join("train.txt");
    let args = |resume: bool| {
        let mut a = vec![
            "datalist",
            "--model",
            "resnet50",
            "--weights",
            "synthetic",
            "--img-dir",
            images.to_str().unwrap(),
            "--out",
            list.to_str().unwrap(),
        ];
        if resume {
            a.push("--resume");
        }
        a
    };

    let Run { ok, stderr, .. } = tame(&args(false));
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&list).unwrap();
    let paths: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "chelsea_small.jpg",
            "sub/astronaut_224_rgba.png",
            "sub/coffee.jpg",
            "sub/rocket.jpg"
        ]
    );
    let parsed = tame_data::ImageList::read(&list).unwrap();
    assert!(parsed.entries().iter().all(|e| e.label < 1000));

    // A new image and a corrupt one: --resume keeps the listed lines, labels the new image,
    // skips the unreadable file naming it, and fails for it (--skip-bad would accept it).
    std::fs::copy(samples.join("astronaut.jpg"), images.join("sub/z.jpg")).unwrap();
    std::fs::write(images.join("broken.jpg"), b"not an image").unwrap();
    let Run { ok, stderr, .. } = tame(&args(true));
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("skipped: cannot decode") && stderr.contains("broken.jpg"),
        "{stderr}"
    );
    assert!(stderr.contains("1 unreadable image skipped"), "{stderr}");
    let resumed = std::fs::read_to_string(&list).unwrap();
    assert!(resumed.starts_with(&text));
    assert_eq!(resumed.lines().count(), 5);
    assert!(resumed.lines().last().unwrap().starts_with("sub/z.jpg "));
}

#[test]
fn an_empty_or_missing_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.txt");
    let Run { ok, stderr, .. } = tame(&[
        "datalist",
        "--model",
        "vgg16",
        "--weights",
        "synthetic",
        "--img-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("no .jpg, .jpeg or .png image found"),
        "{stderr}"
    );
    let missing = dir.path().join("nope");
    let Run { ok, stderr, .. } = tame(&[
        "datalist",
        "--model",
        "vgg16",
        "--weights",
        "synthetic",
        "--img-dir",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("not a folder"), "{stderr}");
    assert!(!out.exists());
}
