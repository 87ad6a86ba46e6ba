//! The ILSVRC list files parse completely: the two shipped in `datalist/`, and the 50 000-line
//! `val.txt` of the original TAME project (not shipped) from `$TAME_ILSVRC_LISTS`.

use std::collections::HashSet;
use std::path::PathBuf;

use tame_data::ImageList;

fn list(name: &str) -> ImageList {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../datalist"));
    ImageList::read(dir.join(name)).unwrap()
}

/// Checks `count` lines, distinct paths, no blank lines, ILSVRC validation file names.
fn check(l: ImageList, name: &str, count: usize) -> ImageList {
    assert_eq!(l.len(), count, "{name}");
    let paths: HashSet<_> = l.entries().iter().map(|e| &e.path).collect();
    assert_eq!(paths.len(), count, "{name}: duplicate paths");
    for (i, e) in l.entries().iter().enumerate() {
        assert_eq!(e.line, i + 1, "{name}: no blank lines in these files");
        let p = e.path.to_str().unwrap();
        assert!(
            p.starts_with("ILSVRC2012_val_") && p.ends_with(".JPEG"),
            "{p}"
        );
    }
    l
}

#[test]
fn evaluation_2000_parses() {
    let l = check(list("Evaluation_2000.txt"), "Evaluation_2000.txt", 2000);
    // First line: `ILSVRC2012_val_00010011.JPEG 248 ` (note the trailing space).
    assert_eq!(
        l.entries()[0].path,
        PathBuf::from("ILSVRC2012_val_00010011.JPEG")
    );
    assert_eq!(l.entries()[0].label, 248);
}

#[test]
fn validation_2000_parses() {
    let l = check(list("Validation_2000.txt"), "Validation_2000.txt", 2000);
    assert_eq!(l.entries()[1].label, 19);
}

#[test]
fn val_parses_with_every_class_fifty_times() {
    let Some(dir) = tame_testdata::external_dir(
        "TAME_ILSVRC_LISTS",
        "the folder holding the original TAME project's val.txt",
        "see datalist/README.md",
    ) else {
        return;
    };
    let l = check(
        ImageList::read(dir.join("val.txt")).unwrap(),
        "val.txt",
        50_000,
    );
    let mut per_class = vec![0usize; 1000];
    for e in l.entries() {
        per_class[e.label as usize] += 1;
    }
    assert!(per_class.iter().all(|&n| n == 50));
    assert_eq!(
        l.entries()[0].path,
        PathBuf::from("ILSVRC2012_val_00000001.JPEG")
    );
    assert_eq!(l.entries()[0].label, 65);
}

#[test]
fn evaluation_and_validation_sets_are_disjoint() {
    let a: HashSet<_> = list("Evaluation_2000.txt")
        .entries()
        .iter()
        .map(|e| e.path.clone())
        .collect();
    let b = list("Validation_2000.txt");
    assert!(b.entries().iter().all(|e| !a.contains(&e.path)));
}
