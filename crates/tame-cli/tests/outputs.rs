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
