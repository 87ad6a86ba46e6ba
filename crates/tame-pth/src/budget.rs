//! How much data reading a file may produce, relative to its size.

use crate::error::ErrorKind;

/// Storages read plus tensors built may reach this many times the file's size: a real
/// checkpoint needs about twice (each storage read once, then copied into its tensors).
pub(crate) const RATIO: u64 = 8;
/// ... plus this much, so that small files may still hold broadcast (stride-0) tensors.
pub(crate) const SLACK: u64 = 64 << 20;

/// The bytes still allowed while one file's tensors are read.
pub(crate) struct DataBudget {
    file: u64,
    limit: u64,
    total: u64,
}

impl DataBudget {
    pub(crate) fn new(file_len: usize) -> Self {
        let file = file_len as u64;
        Self {
            file,
            limit: file.saturating_mul(RATIO).saturating_add(SLACK),
            total: 0,
        }
    }

    /// Counts `bytes` about to be allocated for `what` ("storage 3", "tensor fc.weight").
    pub(crate) fn charge(
        &mut self,
        what: impl FnOnce() -> String,
        bytes: u64,
    ) -> Result<(), ErrorKind> {
        let total = self.total.saturating_add(bytes);
        if total > self.limit {
            return Err(ErrorKind::TooMuchData {
                what: what(),
                total,
                limit: self.limit,
                file: self.file,
            });
        }
        self.total = total;
        Ok(())
    }
}
