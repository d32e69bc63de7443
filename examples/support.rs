//! What every example's `main` does, in one place: a closed stdout ends it quietly, and a failure
//! is one `error:` line with its causes (no backtrace: a failed request is not a bug).

use std::process::ExitCode;

/// Parses the arguments `A` and runs `run` on them.
pub(crate) fn main_with<A: clap::Parser>(run: impl FnOnce(A) -> anyhow::Result<()>) -> ExitCode {
    // SAFETY: first thing in main, before any other thread exists; SIG_DFL is a valid disposition.
    // A closed stdout (`| head`) then ends the program quietly, as it does `cat`.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match run(A::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
