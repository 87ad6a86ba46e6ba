//! Output into a closed pipe (`tame inspect | head`). Rust starts programs with SIGPIPE
//! ignored, so each write into a closed pipe fails with EPIPE and `println!` panics on it.
//! With the signal's default action restored the process ends as other command-line tools
//! do: at once, silently, by the signal (status 141 in a shell).

/// Restores SIGPIPE's default action. Sockets are unaffected: the standard library writes
/// to them with `MSG_NOSIGNAL`.
pub fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any thread starts; SIG_DFL is a valid
    // action for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
