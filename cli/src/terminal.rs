//! Where the command's output goes: logs on stderr, coloured only for a person at a terminal; data
//! on stdout, whose reader may leave early.

use std::io::{IsTerminal as _, Write as _};

/// Whether the log may use ANSI colour: stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>). A log redirected to a file or a pipe gets plain text.
pub(crate) fn log_colour() -> bool {
    colour_for(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Logs to stderr at `RUST_LOG`'s level (default `info`), in colour only when [`log_colour`].
pub(crate) fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(log_colour())
        .init();
}

/// Whether `e` is, or was caused by, a write to a pipe whose reader has gone (`EPIPE`).
pub(crate) fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints `error: ...` with its causes on stderr; a closed stderr is not an error of its own.
pub(crate) fn error_line(e: &anyhow::Error) {
    let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_for(true, None));
        assert!(
            colour_for(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour_for(true, Some(OsStr::new("1"))));
        assert!(!colour_for(false, None));
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_its_context() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let e = anyhow::Error::from(io).context("writing the status");
        assert!(is_closed_pipe(&e));
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!is_closed_pipe(&other));
    }
}
