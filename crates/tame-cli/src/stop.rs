//! Stopping a long run on SIGINT (Ctrl-C) or SIGTERM (what schedulers send before they
//! kill): the first raises a flag that the run checks before each step, so that it saves
//! where it is; a second ends the process at once. A stopped run then exits with 128 + the
//! signal's number (130, 143), as shells and schedulers expect of a stopped job.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The stop signals, watched by a thread of their own from [`StopSignals::watch`] on.
pub struct StopSignals {
    raised: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl StopSignals {
    pub fn watch() -> Result<Self> {
        let mut signals =
            Signals::new([SIGINT, SIGTERM]).context("cannot install the stop signals' handler")?;
        let raised = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicI32::new(0));
        let (r, s) = (Arc::clone(&raised), Arc::clone(&signal));
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if r.swap(true, Ordering::SeqCst) {
                    std::process::exit(128 + sig);
                }
                s.store(sig, Ordering::SeqCst);
                let name = if sig == SIGINT { "Ctrl-C" } else { "SIGTERM" };
                eprintln!("\n{name}: stopping after this step (again to quit at once)...");
            }
        });
        Ok(Self { raised, signal })
    }

    /// The flag the run checks before each step.
    pub fn flag(&self) -> &AtomicBool {
        &self.raised
    }

    /// The error that ends a stopped run with 128 + the signal's number.
    pub fn exit(&self) -> anyhow::Error {
        Exit(128 + self.signal.load(Ordering::SeqCst)).into()
    }
}

/// Ends the process with this status, the run having said why already.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}
