//! `shm-runtime ping`: echo requests to a running service, each round trip timed.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use shm_runtime::protocol::{Input, Params, Request, Task};
use shm_runtime::Client;

use crate::args;

#[derive(clap::Args)]
pub(crate) struct PingArgs {
    /// Service name.
    name: String,
    /// Model to ping (an echo model).
    #[arg(long, default_value = "echo")]
    model: String,
    /// Number of requests.
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// How long to wait for each answer (5s, 250ms; a plain number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration)]
    timeout: Duration,
    /// One JSON object per answer, a line each: {"seq", "bytes", "rtt_us"}.
    #[arg(long)]
    json: bool,
}

pub(crate) fn ping(args: &PingArgs) -> Result<()> {
    let client = Client::connect(&args.name)?;
    let mut out = std::io::stdout().lock();
    for seq in 0..args.count {
        let t = Instant::now();
        let answer = client.infer_timeout(
            &Request {
                id: u64::from(seq),
                model: args.model.clone(),
                task: Task::Generate,
                input: Input::Text(format!("ping {seq}")),
                params: Params {
                    timeout_ms: args.timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
                    ..Params::default()
                },
            },
            args.timeout,
        )?;
        let rtt_us = t.elapsed().as_secs_f64() * 1e6;
        let bytes = answer.len();
        drop(answer);
        if args.json {
            let rtt_us = (rtt_us * 10.0).round() / 10.0;
            let line = serde_json::json!({ "seq": seq, "bytes": bytes, "rtt_us": rtt_us });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "answer {seq}: {bytes} bytes in {rtt_us:.1} us")?;
        }
    }
    Ok(())
}
