//! The `server` role: serves `echo`, `slow` and `steps` until SIGTERM or the end of stdin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use shm_runtime::{ModelConfig, Server, ServerConfig};

use crate::soak::lines::{say, watch_stdin};

fn server_config(service: &str) -> ServerConfig {
    let mut slow = ModelConfig::new("slow", "sleep");
    slow.options.insert(
        "step_ms".into(),
        shm_runtime::config::OptionValue::Float(1.0),
    );
    let mut steps = ModelConfig::new("steps", "sleep");
    steps.options.insert(
        "step_ms".into(),
        shm_runtime::config::OptionValue::Float(2.0),
    );
    steps
        .options
        .insert("slots".into(), shm_runtime::config::OptionValue::Integer(2));
    steps.workers = Some(2);
    let mut config =
        ServerConfig::new(service, vec![ModelConfig::new("echo", "echo"), slow, steps]);
    config.trusted_clients = std::env::var_os(crate::soak::TRUSTED_CLIENTS_VAR).is_some();
    config
}

/// Serves until SIGTERM or the end of stdin, then drains for a second and stops.
pub(crate) fn role_server(service: &str) -> Result<()> {
    // The runtime's warnings (a ring it could not attach to, an answer with no chunk), on stderr
    // beside the supervisor's findings.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let server = Server::start(server_config(service))?;
    watch_stdin(stop.clone(), None, true);
    say("READY");
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.shutdown(Duration::from_secs(1));
    Ok(())
}
