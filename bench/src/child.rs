//! Child processes of cross-process benchmarks: the parent re-executes its own binary with an
//! environment variable naming the role; [`dispatch`] runs that role and exits.
//!
//! The mechanism ([`ChildProcess`], [`pin_to`], [`online_cpus`]) lives in
//! [`shm_peers::process`], whose peer servers are children too; this module adds the roles of
//! this crate's workloads to the dispatcher.

use anyhow::Result;
pub use shm_peers::process::{online_cpus, pin_to, ChildProcess, Pinned};

/// If this process was started as a benchmark child, runs its role and exits the process;
/// otherwise returns. Call it first thing in `main`.
pub fn dispatch() {
    shm_peers::process::dispatch(run_child);
}

/// Runs the child `role` of any workload of this crate or of the peers; `Ok(false)` when no one
/// knows the role.
fn run_child(role: &str, arg: &str) -> Result<bool> {
    if crate::ring_work::run_child(role, arg)?
        || crate::runtime_work::run_child(role, arg)?
        || crate::gateway_work::run_child(role, arg)?
        || shm_peers::run_child(role, arg)?
    {
        return Ok(true);
    }
    #[cfg(feature = "onnx")]
    if crate::onnx_work::run_child(role, arg)? {
        return Ok(true);
    }
    #[cfg(feature = "gguf")]
    if crate::gguf_work::run_child(role, arg)? {
        return Ok(true);
    }
    Ok(false)
}

/// Runs a server with `cfg` until this process gets SIGTERM, then shuts it down (a benchmark
/// child's server role).
///
/// # Errors
///
/// When the signal handler cannot be set or the server does not start.
pub fn serve_until_sigterm(cfg: shm_runtime::ServerConfig) -> Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let server = shm_runtime::Server::start(cfg)?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.shutdown(std::time::Duration::from_secs(1));
    Ok(())
}
