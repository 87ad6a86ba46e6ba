//! The images a long run skipped as unreadable: each named as it is skipped, all counted at
//! the end, and the run failed for them unless `--skip-bad` accepts them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use tame_data::DataError;

/// `--skip-bad`.
#[derive(Args, Clone, Debug)]
pub struct SkipArgs {
    /// Accept unreadable images (truncated, corrupt, too large, not regular files): skip
    /// them and exit 0. Without it they are skipped too and the outputs written, but the
    /// run exits 1. Either way each is named when skipped and all are listed at the end.
    #[arg(long)]
    pub skip_bad: bool,
}

/// The distinct images skipped so far.
pub struct Skipped {
    /// Whether to name each image's list file and line (not for a list made from a folder).
    list_lines: bool,
    seen: HashSet<PathBuf>,
    problems: Vec<String>,
}

impl Skipped {
    pub fn new(list_lines: bool) -> Self {
        Self {
            list_lines,
            seen: HashSet::new(),
            problems: Vec::new(),
        }
    }

    /// Records a skipped image; the line that names it, the first time it is skipped (each
    /// epoch or method skips it again).
    pub fn add(&mut self, error: &DataError) -> Option<String> {
        let (file, problem) = match error {
            DataError::Image { source, .. } if !self.list_lines => {
                (source.path().to_path_buf(), source.to_string())
            }
            DataError::Image { source, .. } => (source.path().to_path_buf(), error.to_string()),
            other => (PathBuf::from(other.to_string()), other.to_string()),
        };
        if !self.seen.insert(file) {
            return None;
        }
        self.problems.push(problem.clone());
        Some(format!("skipped: {problem}"))
    }

    /// How many distinct images were skipped.
    pub fn count(&self) -> usize {
        self.problems.len()
    }

    /// Whether `file` (an image path as the loader resolved it) was skipped.
    pub fn contains(&self, file: &Path) -> bool {
        self.seen.contains(file)
    }

    /// Lists the skipped images; an error if there were any and `skip_bad` is not set.
    pub fn finish(&self, skip_bad: bool) -> Result<()> {
        let count = match self.problems.len() {
            0 => return Ok(()),
            1 => "1 unreadable image skipped".to_string(),
            n => format!("{n} unreadable images skipped"),
        };
        eprintln!("{count}:");
        for problem in &self.problems {
            eprintln!("  {problem}");
        }
        if !skip_bad {
            bail!("{count} (listed above); --skip-bad accepts skipped images");
        }
        Ok(())
    }
}
