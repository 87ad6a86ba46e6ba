//! Process-wide policy for binaries only: the allocator's settings and the thread pool.
//! Libraries never call it; a binary calls [`reuse_freed_memory`] first thing in `main`, then
//! runs each command through [`on_worker`].

mod allocator;
mod threads;

pub use allocator::reuse_freed_memory;
pub use threads::on_worker;
