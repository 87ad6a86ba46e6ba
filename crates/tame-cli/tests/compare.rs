//! `tame compare` as a user runs it, on two committed photos with synthetic backbone weights.

mod support;

use support::{samples, tame, Run};

#[test]
fn writes_one_row_per_method_as_markdown_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("two.txt");
    std::fs::write(&list, "coffee.jpg 967\nrocket.jpg 812\n").unwrap();
    let out = dir.path().join("table.md");
    let Run { ok, stdout, stderr } = tame(&[
        "compare",
        "--weights",
        "synthetic",
        "--methods",
        "tame,gradcam,rise",
        "--rise-masks",
        "8",
        "--val-dir",
        samples().to_str().unwrap(),
        "--test-list",
        list.to_str().unwrap(),
        "--metrics",
        "ad-ic,insdel",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let csv = std::fs::read_to_string(dir.path().join("table.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "Method,AD(100%),IC(100%),AD(50%),IC(50%),AD(15%),IC(15%),Insertion AUC,Deletion AUC,s/image"
    );
    assert_eq!(lines.len(), 4, "{csv}");
    for (line, method) in lines[1..].iter().zip(["TAME", "Grad-CAM", "RISE"]) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[0], method);
        assert_eq!(cells.len(), 10);
        for cell in &cells[1..] {
            let v: f64 = cell.parse().unwrap();
            assert!(v.is_finite() && v >= 0.0, "{line}");
        }
    }
    let markdown = std::fs::read_to_string(&out).unwrap();
    assert!(markdown.contains("| Grad-CAM |"), "{markdown}");
    assert_eq!(stdout, markdown);
    // The grid: a row per image, the crop then one overlay per method.
    let grid = image::open(dir.path().join("table_grid.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (4 * 224 + 3 * 4, 2 * 224 + 4)
    );
    assert!(
        stderr.contains("columns: image, TAME, Grad-CAM, RISE"),
        "{stderr}"
    );

    // A list line naming a missing image is reported with its line before any work.
    std::fs::write(&list, "coffee.jpg 967\nnope.JPEG 1\n").unwrap();
    let Run { ok, stderr, .. } = tame(&[
        "compare",
        "--weights",
        "synthetic",
        "--val-dir",
        samples().to_str().unwrap(),
        "--test-list",
        list.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("two.txt:2") && stderr.contains("nope.JPEG"),
        "{stderr}"
    );
}
