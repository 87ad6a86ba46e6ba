//! Small crafted files that ask for huge amounts of memory or time: each must end in one
//! clear error, quickly and without allocating what it asks for.

use std::path::Path;
use std::time::{Duration, Instant};

use tame_pth::{read_checkpoint, ErrorKind, PthError};

/// The error of reading `path`, which must come within a few seconds, name the file and
/// contain `expected`.
fn refused(path: &Path, expected: &str) -> PthError {
    let started = Instant::now();
    let err = read_checkpoint(path).unwrap_err();
    let message = err.to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow: {message}"
    );
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(message.contains(expected), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    err
}

#[cfg(unix)]
#[test]
fn only_regular_files_are_read() {
    for path in ["/dev/zero", "/"] {
        let path = Path::new(path);
        if path.exists() {
            let err = refused(path, "not a regular file");
            assert!(matches!(err.kind(), ErrorKind::NotAFile), "{err}");
        }
    }
}
