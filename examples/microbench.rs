//! Round-trip latency percentiles and pipelined throughput of shm-runtime against an echo server:
//! a running one (`--service NAME`) or one it starts in a child process, its worker pinned to the
//! second CPU (`--no-pin`: left to the OS scheduler, to compare).
//!
//! ```text
//! cargo run --release -p shm-examples --bin microbench -- [--service NAME] [--n N] [--pipelined N]
//!     [--wait busy|yield|park|park:MICROS] [--no-pin] [--json]
//! ```

#[path = "support.rs"]
mod support;

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::json;
use shm_runtime::config::parse_wait;
use shm_runtime::protocol::{Input, Params, Request, Task};
use shm_runtime::{Client, ClientOptions, ModelConfig, Server, ServerConfig};

/// Round-trip latency and pipelined throughput against an echo server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A running service with an `echo` model (default: start one in a child process).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Round trips to time (a tenth more are run first as a warm-up).
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    n: u64,
    /// Requests of the pipelined run, 64 in flight (default: --n, at least 1000).
    #[arg(long, value_name = "N")]
    pipelined: Option<u64>,
    /// Wait strategy of the client and of the server started here: busy, yield, park or
    /// park:MICROS.
    #[arg(long, default_value = "busy", value_parser = wait_name)]
    wait: String,
    /// Leave the worker of the server started here to the OS scheduler instead of pinning it to
    /// the second CPU.
    #[arg(long)]
    no_pin: bool,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// Internal: serve an echo model under this name until stdin closes (the child's role).
    #[arg(long, hide = true, value_name = "NAME")]
    serve: Option<String>,
}

/// A wait strategy's name, checked.
fn wait_name(text: &str) -> Result<String, String> {
    parse_wait(text).map(|_| text.to_owned())
}

fn serve(name: &str, args: &Args) -> Result<()> {
    let mut cfg = ServerConfig::new(name, vec![ModelConfig::new("echo", "echo")]);
    cfg.wait = parse_wait(&args.wait).map_err(anyhow::Error::msg)?;
    if args.no_pin {
        cfg.pin = false;
    } else {
        cfg.cores = vec![1];
    }
    let server = Server::start(cfg)?;
    // Serve until the parent closes our stdin.
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    server.shutdown(Duration::from_secs(1));
    Ok(())
}

fn main() -> ExitCode {
    support::main_with(run)
}

fn run(args: Args) -> Result<()> {
    if let Some(name) = &args.serve {
        return serve(name, &args);
    }
    let wait = parse_wait(&args.wait).map_err(anyhow::Error::msg)?;
    let mut child = None;
    let name = match &args.service {
        Some(s) => s.clone(),
        None => {
            let name = format!("microbench-{}", std::process::id());
            let mut cmd = std::process::Command::new(std::env::current_exe()?);
            cmd.args(["--serve", &name, "--wait", &args.wait]);
            if args.no_pin {
                cmd.arg("--no-pin");
            }
            child = Some(cmd.stdin(std::process::Stdio::piped()).spawn()?);
            name
        }
    };
    let end = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match Client::connect_with(
            &name,
            ClientOptions {
                wait,
                ..ClientOptions::default()
            },
        ) {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => bail!("cannot reach {name:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let req = Request {
        id: 0,
        model: "echo".into(),
        task: Task::Generate,
        input: Input::Text("x".repeat(64)),
        params: Params::default(),
    };
    let n = args.n as usize;
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let v = client.infer(&req)?;
        let ns = t.elapsed().as_nanos() as u64;
        drop(v);
        if i >= n / 10 {
            rtts.push(ns);
        }
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    let piped = args.pipelined.unwrap_or(args.n).max(1000);
    let start = Instant::now();
    let mut open = VecDeque::new();
    let (mut sent, mut done) = (0, 0);
    while done < piped {
        while sent < piped && open.len() < 64 {
            open.push_back(client.submit(&req)?);
            sent += 1;
        }
        let t = open.pop_front().expect("in flight");
        client.recv(t, Duration::from_secs(10))?;
        done += 1;
    }
    let rps = piped as f64 / start.elapsed().as_secs_f64();
    drop(client);
    if let Some(mut c) = child {
        drop(c.stdin.take());
        c.wait()?;
    }
    if args.json {
        let doc = json!({
            "round_trips": n,
            "wait": args.wait,
            "server_pinned": args.service.is_none() && !args.no_pin,
            "p50_ns": pct(0.5),
            "p99_ns": pct(0.99),
            "p999_ns": pct(0.999),
            "pipelined_rps": rps.round(),
        });
        println!("{doc}");
    } else {
        println!(
            "{n} round trips (64-byte echo, wait {}): p50 {} ns, p99 {} ns, p99.9 {} ns",
            args.wait,
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
        println!("pipelined (64 in flight): {rps:.0} requests/s");
    }
    Ok(())
}
