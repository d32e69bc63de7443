//! `shm-runtime ping`: health checks of a running service, each timed: every lane of the server
//! answers a ping itself (no model needed), and each model's state is read from the segment.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shm_runtime::Client;

use crate::args;

#[derive(clap::Args)]
pub(crate) struct PingArgs {
    /// Service name.
    name: String,
    /// Number of health checks.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// How long to wait for each check (5s, 250ms; a plain number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration)]
    timeout: Duration,
    /// Fail unless every model is ready.
    #[arg(long)]
    ready: bool,
    /// One JSON object per check, a line each: {"seq", "rtt_us", "server_pid", "uptime_s",
    /// "version", "models": [{"name", "state", "ping_us"}]}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn ping(args: &PingArgs) -> Result<()> {
    let client = Client::connect(&args.name)?;
    let mut out = std::io::stdout().lock();
    let mut ready = true;
    for seq in 0..args.count {
        let t = Instant::now();
        let h = client.health(args.timeout)?;
        let rtt_us = (t.elapsed().as_secs_f64() * 1e7).round() / 10.0;
        ready &= h.is_ready();
        if args.json {
            let models: Vec<_> = h
                .models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "name": m.name,
                        "state": m.state.to_string(),
                        "ping_us": (m.ping.as_secs_f64() * 1e7).round() / 10.0,
                    })
                })
                .collect();
            let line = serde_json::json!({
                "seq": seq,
                "rtt_us": rtt_us,
                "server_pid": h.server_pid,
                "uptime_s": h.uptime.as_secs_f64(),
                "version": h.version,
                "models": models,
            });
            writeln!(out, "{line}")?;
        } else {
            let models: Vec<String> = h
                .models
                .iter()
                .map(|m| format!("{} {}", m.name, m.state))
                .collect();
            writeln!(
                out,
                "pong {seq}: {rtt_us:.1} us, server {} (pid {}, up {:.0} s): {}",
                h.version,
                h.server_pid,
                h.uptime.as_secs_f64(),
                models.join(", ")
            )?;
        }
    }
    if args.ready && !ready {
        bail!("not every model of {} is ready", args.name);
    }
    Ok(())
}
