//! Where the tests find their data.
//!
//! - The photos committed under `tests/photos/` (free licences, see `tests/photos/SOURCES.md`):
//!   always there, in any clone.
//! - External data, which cannot be shipped (real network weights, photos under other terms):
//!   named by an environment variable. A test that lacks it prints why and passes without
//!   checking anything, except when `CI` is set: there a missing input is a failure, so that a
//!   green CI always means the test ran. `.ci/run` provides every input.

use std::path::{Path, PathBuf};

/// `n` deterministic values in [-1, 1) (a splitmix64 sequence from `seed`): the tensor tests'
/// inputs, the same in every crate.
pub fn seeded_values(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// `tests/photos/` at the top of the workspace.
pub fn photos_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/photos")
}

/// One of the committed photos.
pub fn photo(name: &str) -> PathBuf {
    let path = photos_dir().join(name);
    assert!(path.is_file(), "no committed photo {}", path.display());
    path
}

/// The committed photos with a class for each (arbitrary: the tests using them run
/// synthetic weights), in a fixed order.
pub const PHOTOS: [(&str, u32); 5] = [
    ("astronaut.jpg", 834),
    ("astronaut_224_rgba.png", 457),
    ("chelsea_small.jpg", 285),
    ("coffee.jpg", 967),
    ("rocket.jpg", 812),
];

/// The folder named by `$var`, holding `what` (`how` says how to get it), or `None` when the
/// test is to be skipped. Panics when `CI` is set and the folder is not there.
pub fn external_dir(var: &str, what: &str, how: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(dir) if Path::new(&dir).is_dir() => Some(PathBuf::from(dir)),
        Some(dir) => missing(
            what,
            &format!("${var} = {} is not a folder", Path::new(&dir).display()),
            how,
        ),
        None => missing(what, &format!("${var} is not set"), how),
    }
}

/// `found` if it is an existing file; otherwise as [`external_dir`] for a missing input.
pub fn external_file(found: Option<PathBuf>, what: &str, how: &str) -> Option<PathBuf> {
    match found {
        Some(path) if path.is_file() => Some(path),
        Some(path) => missing(what, &format!("no file {}", path.display()), how),
        None => missing(what, "no location for it", how),
    }
}

fn missing(what: &str, why: &str, how: &str) -> Option<PathBuf> {
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    skip_unless_ci(in_ci, what, why, how)
}

fn skip_unless_ci(in_ci: bool, what: &str, why: &str, how: &str) -> Option<PathBuf> {
    let message = format!("needs {what}: {why} ({how})");
    if in_ci {
        panic!("CI is set, so this test may not skip: it {message}");
    }
    println!("skipped: this test {message}");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_photo_is_committed_and_documented() {
        let sources = std::fs::read_to_string(photos_dir().join("SOURCES.md")).unwrap();
        for (name, _) in PHOTOS {
            assert!(photo(name).is_file());
            assert!(
                sources.contains(&format!("`{name}`")),
                "{name} in SOURCES.md"
            );
        }
    }

    #[test]
    fn a_missing_input_skips_outside_ci() {
        assert_eq!(skip_unless_ci(false, "x", "y", "z"), None);
    }

    #[test]
    #[should_panic(expected = "CI is set, so this test may not skip: it needs the weights")]
    fn a_missing_input_fails_in_ci() {
        skip_unless_ci(true, "the weights", "$W is not set", "fetch them");
    }
}
