//! Where outputs go: an output that cannot be written is an error before any work (the
//! weights, named missing here, are never reached).

mod support;

use support::{tame, Run};

#[test]
fn an_unwritable_output_is_an_error_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the output's folder should be: no folder can be made there.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let under = |name: &str| blocker.join(name).to_string_lossy().into_owned();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "a.jpg 1\n").unwrap();
    let list = list.to_string_lossy().into_owned();
    let photos = support::samples().to_string_lossy().into_owned();
    let weights = ["--weights", "/nonexistent/w.safetensors"];
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "explain",
            vec![photos.clone(), "--out".into(), under("maps")],
        ),
        (
            "eval",
            vec!["--am".into(), "/nonexistent/am.safetensors".into()]
                .into_iter()
                .chain(["--val-dir".into(), photos.clone(), "--test-list".into()])
                .chain([list.clone(), "--out".into(), under("eval.csv")])
                .collect(),
        ),
        (
            "compare",
            ["--val-dir", &photos, "--test-list", &list, "--out"]
                .map(String::from)
                .into_iter()
                .chain([under("compare.md")])
                .collect(),
        ),
        (
            "datalist",
            vec![
                "--img-dir".into(),
                photos.clone(),
                "--out".into(),
                under("list.txt"),
            ],
        ),
        (
            "lr-test",
            ["--img-dir", &photos, "--train-list", &list, "--out-dir"]
                .map(String::from)
                .into_iter()
                .chain([under("lr")])
                .collect(),
        ),
    ];
    for (command, args) in runs {
        let mut all = vec![command.to_string()];
        all.extend(args);
        if command != "eval" {
            all.extend(weights.map(String::from));
        }
        let Run { ok, stderr, .. } = tame(&all);
        assert!(!ok, "{command}: {stderr}");
        assert!(
            stderr.contains("cannot") && stderr.contains(&*blocker.to_string_lossy()),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("nonexistent"), "{command}: {stderr}");
    }
}

/// Explaining a folder into itself keeps every input, and two inputs of one name (in two
/// folders) get outputs of their own: `x.png` was replaced by its crop, and `b/x.jpg`'s
/// outputs by `a/x.jpg`'s.
#[test]
fn outputs_never_replace_inputs_or_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let photo = support::samples().join("chelsea_small.jpg");
    let original = std::fs::read(&photo).unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::copy(&photo, dir.path().join(sub).join("x.jpg")).unwrap();
    }
    // A PNG input whose name is the crop's name of the JPEGs.
    let png = image::open(&photo).unwrap();
    png.save(dir.path().join("x.png")).unwrap();
    let png_bytes = std::fs::read(dir.path().join("x.png")).unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let Run { ok, stderr, .. } = tame(&["explain", &d, "--out", &d, "--label", "285"]);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("x.png")).unwrap(), png_bytes);
    for sub in ["a", "b"] {
        assert_eq!(
            std::fs::read(dir.path().join(sub).join("x.jpg")).unwrap(),
            original
        );
    }
    // Three inputs of stem `x`: three crops and three maps, none the input's name.
    for stem in ["x-2", "x-3", "x-4"] {
        assert!(dir.path().join(format!("{stem}.png")).is_file(), "{stem}");
        assert!(
            dir.path().join(format!("{stem}_285.npy")).is_file(),
            "{stem}"
        );
    }
}
