//! The `shm-runtime` command: `serve`, `gateway`, `status`, `metrics`, `ping`, `cleanup`.
//!
//! | file | role |
//! |---|---|
//! | `main.rs` | the command line (clap) and the exit status |
//! | `serve.rs` | `serve`: a server until SIGINT or SIGTERM (with `--http`, its gateway too) |
//! | `gateway.rs` | `gateway`: the OpenAI-compatible HTTP gateway; `metrics`: Prometheus text |
//! | `status.rs` | `status`: a service's counters, as text or JSON |
//! | `ping.rs` | `ping`: echo round trips |
//! | `args.rs` | typed values of the command line (durations, `NAME=BACKEND`, wait strategies) |
//! | `terminal.rs` | where output goes: colour only on a terminal, a closed pipe ends quietly |
//!
//! Bad arguments are clap's errors (exit status 2, with a usage line); a failed command prints one
//! `error:` line with its causes (status 1). Output written to a pipe whose reader has gone
//! (`status --json | head -c1`) ends the command quietly with status 0: Rust ignores SIGPIPE, so
//! the write fails with `BrokenPipe`, which [`terminal::is_closed_pipe`] recognises. The command
//! does not restore SIGPIPE's default instead (the usual fix for a filter) because the same
//! binary is a long-running server: a log reader that goes away must not kill it.

mod args;
mod gateway;
mod ping;
mod serve;
mod status;
mod terminal;

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use shm_runtime::ring::Segment;

#[derive(Parser)]
#[command(
    name = "shm-runtime",
    version,
    about = "Zero-copy shared-memory model server",
    long_about = "Zero-copy shared-memory model server: serve models under a service name, \
                  inspect a running service, check its round trip, clean up after a dead one.\n\n\
                  Logs go to stderr (RUST_LOG sets the level, default info), in colour only on a \
                  terminal and without NO_COLOR set."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve models under a service name until SIGINT or SIGTERM (then drain and stop).
    Serve(serve::ServeArgs),
    /// Serve a running service over HTTP: the OpenAI API, health and Prometheus metrics.
    Gateway(gateway::GatewayArgs),
    /// Print a running service's state and counters (lanes, clients, pool).
    Status(status::StatusArgs),
    /// Print a running service's metrics in Prometheus' text format.
    Metrics(gateway::MetricsArgs),
    /// Send echo requests and print their round-trip times.
    Ping(ping::PingArgs),
    /// Remove a service segment whose server has died (never a live one).
    Cleanup {
        /// Service name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    terminal::init_logging();
    let result = match cli.cmd {
        Cmd::Serve(args) => serve::serve(args),
        Cmd::Gateway(args) => gateway::gateway(&args),
        Cmd::Status(args) => status::status(&args),
        Cmd::Metrics(args) => gateway::metrics(&args),
        Cmd::Ping(args) => ping::ping(&args),
        Cmd::Cleanup { name } => cleanup(&name),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away: nothing left to say, and no one to say it to.
        Err(e) if terminal::is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), no backtrace: these are user-facing errors.
            terminal::error_line(&e);
            ExitCode::FAILURE
        }
    }
}

fn cleanup(name: &str) -> Result<()> {
    match Segment::remove(name, std::path::Path::new("/dev/shm")) {
        Ok(()) => {
            use std::io::Write as _;
            writeln!(
                std::io::stdout().lock(),
                "removed the stale segment of {name:?}"
            )?;
            Ok(())
        }
        Err(e) => bail!("{e}"),
    }
}
