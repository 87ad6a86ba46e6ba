//! Files written whole or not at all.
//!
//! Every output of the workspace (maps, reports, checkpoints, plots) goes to a temporary
//! file in the target's folder and is renamed over the target once complete, so that a
//! crash, a full disk or Ctrl-C leaves the previous file (or none), never a partial one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use tempfile::TempPath;

/// A new, empty temporary file in `path`'s folder, hidden and named after `path`.
///
/// It is created with the permissions any new file gets (0o666 less the umask): tempfile's
/// own default, owner-only 0o600, would carry over to the renamed output and make maps and
/// checkpoints unreadable to the rest of a group.
pub fn temp_beside(path: &Path) -> io::Result<TempPath> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .suffix(".tmp")
        .rand_bytes(RANDOM_LEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    Ok(builder.tempfile_in(dir)?.into_temp_path())
}

/// Renames the finished `tmp` over `path` (which it replaces, if any).
pub fn persist(tmp: TempPath, path: &Path) -> io::Result<()> {
    tmp.persist(path).map_err(|e| e.error)
}

/// Writes `bytes` to `path` through [`temp_beside`], synced to disk before the rename.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_beside(path)?;
    let mut file = std::fs::OpenOptions::new().write(true).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    persist(tmp, path)
}

/// Removes the temporaries that writes into `dir` killed before their rename left behind
/// (named as [`temp_beside`] names them), and returns their paths. Only for a folder that no
/// other process is writing to at the time.
pub fn remove_leftovers(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if is_temporary_name(&name.to_string_lossy()) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}

/// `.<target>.<random>.tmp`, the random part as tempfile makes it.
fn is_temporary_name(name: &str) -> bool {
    let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    inner.rsplit_once('.').is_some_and(|(target, random)| {
        !target.is_empty()
            && random.len() == RANDOM_LEN
            && random.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// Characters of a temporary's random part: tempfile's default, set explicitly so that
/// [`remove_leftovers`] recognises what [`temp_beside`] makes.
const RANDOM_LEN: usize = 6;

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.npy");
        write(&path, b"first").unwrap();
        write(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(names_in(dir.path()), ["map.npy"]);
    }

    #[test]
    fn an_unfinished_temporary_is_removed_and_the_old_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        write(&path, b"old").unwrap();
        let tmp = temp_beside(&path).unwrap();
        std::fs::write(&tmp, b"half").unwrap();
        assert_eq!(names_in(dir.path()).len(), 2);
        drop(tmp); // the writer failed before persisting
        assert_eq!(names_in(dir.path()), ["ckpt.safetensors"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(&dir.path().join("no/such/out.png"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn leftovers_of_killed_writes_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch_1.safetensors");
        write(&path, b"whole").unwrap();
        // A kill between writing and renaming leaves the temporary: forget it as a kill would.
        let tmp = temp_beside(&path).unwrap();
        let left = tmp.to_path_buf();
        tmp.keep().unwrap();
        for other in [".hidden", "notes.tmp", ".x.toolong1.tmp", "epoch_1.json"] {
            std::fs::write(dir.path().join(other), b"keep").unwrap();
        }
        assert_eq!(remove_leftovers(dir.path()).unwrap(), [left]);
        assert_eq!(
            names_in(dir.path()),
            [
                ".hidden",
                ".x.toolong1.tmp",
                "epoch_1.json",
                "epoch_1.safetensors",
                "notes.tmp"
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn outputs_get_the_permissions_of_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let written = dir.path().join("written");
        write(&written, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&written), mode(&plain));
    }
}
