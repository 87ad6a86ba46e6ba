//! Runs every row of `docs/BAD-INPUTS.md` against the binary: the table is what `tame`
//! does with each bad input, message and exit code.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};

const TABLE: &str = include_str!("../../../docs/BAD-INPUTS.md");
const DEMO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../snapshots/efficientnet-lite0_TAME/demo"
);

/// One row: the command's words, the message its error output must contain, the exit code.
struct Row {
    input: String,
    command: String,
    message: String,
    exit: i32,
}

/// The rows of every table whose header is `| Input | Command | ...`.
fn rows(markdown: &str) -> Vec<Row> {
    let code = |cell: &str| {
        let cell = cell.trim();
        let ticks = cell.len() - cell.trim_start_matches('`').len();
        cell[ticks..cell.len() - ticks].trim().to_string()
    };
    markdown
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Input |"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 4, "a row of four cells: {line}");
            Row {
                input: cells[0].trim().to_string(),
                command: code(cells[1]),
                message: code(cells[2]),
                exit: cells[3].trim().parse().expect("an exit code"),
            }
        })
        .collect()
}

/// The broken files the table's `$FIX` names.
fn make_fixtures(fix: &Path) {
    let cpu = Device::Cpu;
    let mut demo = candle_core::safetensors::load(format!("{DEMO}.safetensors"), &cpu)
        .expect("demo mechanism");
    let poisoned = Tensor::full(f32::NAN, 40, &cpu)
        .and_then(|t| t.to_dtype(DType::F16))
        .unwrap();
    demo.insert("attn.bns.0.bias".into(), poisoned);
    candle_core::safetensors::save(&demo, fix.join("nan_am.safetensors")).unwrap();

    // The demo's tensors under a sidecar that records another file's hash.
    std::fs::copy(format!("{DEMO}.safetensors"), fix.join("half.safetensors")).unwrap();
    let mut sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DEMO}.json")).unwrap()).unwrap();
    sidecar["tensors_sha256"] = "0".repeat(64).into();
    std::fs::write(fix.join("half.json"), sidecar.to_string()).unwrap();

    let stem = Tensor::zeros((64, 3, 7, 7), DType::F32, &cpu).unwrap();
    let partial = std::collections::HashMap::from([("conv1.weight".to_string(), stem)]);
    candle_core::safetensors::save(&partial, fix.join("partial.safetensors")).unwrap();
    std::fs::write(fix.join("weights.txt"), "not weights").unwrap();
    // A pickle of a million NONEs (protocol 2): each one a stack entry.
    let flood = [&b"\x80\x02"[..], &vec![b'N'; 1_100_000], b"."].concat();
    std::fs::write(fix.join("flood.pth"), flood).unwrap();
    let demo_bytes = std::fs::read(format!("{DEMO}.safetensors")).unwrap();
    std::fs::write(
        fix.join("cut.safetensors"),
        &demo_bytes[..demo_bytes.len() / 2],
    )
    .unwrap();

    std::fs::write(fix.join("train.txt"), "coffee.jpg 967\n").unwrap();
    std::fs::write(
        fix.join("bad_label.txt"),
        "coffee.jpg 967\nrocket.jpg espresso\n",
    )
    .unwrap();
    std::fs::write(
        fix.join("missing.txt"),
        "missing_a.jpg 1\nmissing_b.jpg 2\n",
    )
    .unwrap();

    // A JPEG cut in half, alone and in a folder; an image wider than the default limit.
    let coffee = std::fs::read(tame_testdata::photo("coffee.jpg")).unwrap();
    std::fs::write(fix.join("cut.jpg"), &coffee[..coffee.len() / 2]).unwrap();
    std::fs::create_dir(fix.join("cut")).unwrap();
    std::fs::copy(fix.join("cut.jpg"), fix.join("cut/cut.jpg")).unwrap();
    image::GrayImage::new(20_000, 1)
        .save(fix.join("wide.png"))
        .unwrap();
    std::fs::write(
        fix.join("outside.txt"),
        "coffee.jpg 967\n../coffee.jpg 967\n",
    )
    .unwrap();

    // A snapshot folder holding a complete checkpoint (the demo's pair: no hash to check).
    let snap = fix.join("snap");
    std::fs::create_dir(&snap).unwrap();
    std::fs::copy(
        format!("{DEMO}.safetensors"),
        snap.join("epoch_1.safetensors"),
    )
    .unwrap();
    std::fs::copy(format!("{DEMO}.json"), snap.join("epoch_1.json")).unwrap();
}

#[test]
fn every_row_of_the_bad_input_table_is_what_the_binary_does() {
    let rows = rows(TABLE);
    assert!(rows.len() >= 20, "the table has {} rows", rows.len());
    let fix = tempfile::tempdir().unwrap();
    make_fixtures(fix.path());
    let photos = tame_testdata::photos_dir();
    let mut failures = Vec::new();
    for row in &rows {
        let out_dir = tempfile::tempdir().unwrap();
        let words: Vec<String> = row
            .command
            .split_whitespace()
            .map(|w| {
                w.replace("$PHOTOS", &photos.to_string_lossy())
                    .replace("$FIX", &fix.path().to_string_lossy())
                    .replace("$OUT", &out_dir.path().to_string_lossy())
            })
            .collect();
        assert_eq!(
            words[0], "tame",
            "{}: a command starts with tame",
            row.input
        );
        let out = Command::new(env!("CARGO_BIN_EXE_tame"))
            .args(&words[1..])
            .current_dir(out_dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error_line = stderr.lines().find(|l| l.starts_with("error:"));
        let said = error_line.is_some_and(|l| l.contains(&row.message));
        if out.status.code() != Some(row.exit) || !said {
            failures.push(format!(
                "{}\n  ran:      {}\n  expected: exit {}, `{}`\n  got:      exit {:?}, {}",
                row.input,
                words.join(" "),
                row.exit,
                row.message,
                out.status.code(),
                stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn cells_are_read_as_the_table_shows_them() {
    let rows = rows(
        "| Input | Command | Message contains | Exit |\n|---|---|---|---|\n\
         | x | `tame a` | ``names `b` twice`` | 2 |\n",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].command, "tame a");
    assert_eq!(rows[0].message, "names `b` twice");
    assert_eq!(rows[0].exit, 2);
}
