//! Process-wide policy for binaries only: the allocator's settings, closed pipes, the thread
//! pool, the `--device` argument and how an error is reported. Libraries never call it; a
//! binary calls [`reuse_freed_memory`] and [`end_quietly_on_closed_pipe`] first thing in
//! `main`, runs each command through [`on_worker`], and prints a failure with [`one_line`].

mod allocator;
mod device;
mod pipe;
mod report;
mod threads;

pub use allocator::reuse_freed_memory;
pub use device::open_device;
pub use pipe::end_quietly_on_closed_pipe;
pub use report::one_line;
pub use threads::on_worker;
