//! Shared by the end-to-end tests: running `tame` and finding the committed photos.

use std::path::PathBuf;
use std::process::Command;

/// What one run of `tame` did.
#[allow(dead_code)] // not every test binary reads every field
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `tame` binary with `args`.
pub fn tame<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    tame_with_env(args, &[])
}

/// Runs the `tame` binary with `args` and the environment variables `env` set.
#[allow(dead_code)] // not every test binary sets variables
pub fn tame_with_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tame"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the tame binary runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The committed test photos (`tests/photos/`).
#[allow(dead_code)] // not every test binary uses every helper
pub fn samples() -> PathBuf {
    tame_testdata::photos_dir()
}
