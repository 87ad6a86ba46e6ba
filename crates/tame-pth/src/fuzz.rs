//! Corrupt input: every truncation of a fixture must fail, and no flipped byte may panic.

use super::{load_checkpoint, load_tensors};

const FILES: [&str; 12] = [
    "state_dict.zip.pth",
    "state_dict.legacy.pth",
    "checkpoint.zip.pth",
    "checkpoint.legacy.pth",
    "views.zip.pth",
    "views.legacy.pth",
    "dtypes.zip.pth",
    "dtypes.legacy.pth",
    "model_entry.zip.pth",
    "model_entry.legacy.pth",
    "complex.zip.pth",
    "complex.legacy.pth",
];

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(path).unwrap()
}

/// The key under which each fixture's tensors are found.
fn key_for(name: &str) -> Option<&'static str> {
    name.starts_with("model_entry").then_some("model")
}

#[test]
fn every_truncation_is_an_error() {
    // The complex fixtures fail whole, so they say nothing about truncation.
    for name in FILES.iter().filter(|n| !n.starts_with("complex")) {
        let data = fixture(name);
        let key = key_for(name);
        assert!(load_tensors(&data, key).is_ok(), "{name} reads whole");
        for cut in 0..data.len() {
            assert!(
                load_tensors(&data[..cut], key).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
    let data = fixture("checkpoint.legacy.pth");
    assert!(load_checkpoint(&data).is_ok());
    for cut in 0..data.len() {
        assert!(
            load_checkpoint(&data[..cut]).is_err(),
            "checkpoint cut at {cut}"
        );
    }
}

#[test]
fn flipped_bytes_never_panic() {
    for name in FILES {
        let mut data = fixture(name);
        for i in 0..data.len() {
            for mask in [0xff, 0x01, 0x80, 0x10] {
                data[i] ^= mask;
                // Either outcome is fine (a flipped data byte still reads); reaching here is the test.
                let _ = load_tensors(&data, key_for(name));
                data[i] ^= mask;
            }
        }
        // The loop restored every byte.
        assert_eq!(data, fixture(name));
    }
}

#[test]
fn absurd_legacy_element_count_is_rejected_before_allocating() {
    let data = fixture("views.legacy.pth");
    // views.legacy.pth ends with one storage of 24 f32: its count sits 8 + 96 bytes from the end.
    let at = data.len() - 96 - 8;
    assert_eq!(data[at..at + 8], 24i64.to_le_bytes());
    let mut corrupt = data.clone();
    corrupt[at..at + 8].copy_from_slice(&(i64::MAX / 2).to_le_bytes());
    assert!(matches!(
        load_tensors(&corrupt, None),
        Err(crate::ErrorKind::Truncated(_))
    ));
    corrupt[at..at + 8].copy_from_slice(&(-5i64).to_le_bytes());
    assert!(matches!(
        load_tensors(&corrupt, None),
        Err(crate::ErrorKind::Malformed(_))
    ));
}
