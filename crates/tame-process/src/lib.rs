//! Process-wide policy for binaries only: the allocator's settings, closed pipes and the
//! thread pool. Libraries never call it; a binary calls [`reuse_freed_memory`] and
//! [`end_quietly_on_closed_pipe`] first thing in `main`, then runs each command through
//! [`on_worker`].

mod allocator;
mod pipe;
mod threads;

pub use allocator::reuse_freed_memory;
pub use pipe::end_quietly_on_closed_pipe;
pub use threads::on_worker;
