//! Round-trip latency percentiles and pipelined throughput of shm-runtime against an echo server:
//! a running one (`--service NAME`) or one it starts in a child process.
//!
//! ```text
//! cargo run --release -p shm-examples --bin microbench -- [--service NAME] [--n N] [--pipelined N]
//!     [--wait busy|park]
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shm_runtime::config::parse_wait;
use shm_runtime::protocol::{Input, Params, Request, Task};
use shm_runtime::{Client, ClientOptions, ModelConfig, Server, ServerConfig};

struct Args {
    service: Option<String>,
    n: usize,
    pipelined: Option<usize>,
    wait: String,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        service: None,
        n: 100_000,
        pipelined: None,
        wait: "busy".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--serve" => {
                // Internal: the child server.
                let name = it.next().context("--serve NAME WAIT")?;
                let wait = it.next().context("--serve NAME WAIT")?;
                serve(&name, &wait)?;
                std::process::exit(0);
            }
            "--service" => a.service = Some(it.next().context("--service NAME")?),
            "--n" => a.n = it.next().context("--n N")?.parse()?,
            "--pipelined" => a.pipelined = Some(it.next().context("--pipelined N")?.parse()?),
            "--wait" => a.wait = it.next().context("--wait busy|yield|park")?,
            "-h" | "--help" => {
                println!(
                    "usage: microbench [--service NAME] [--n N] [--pipelined N] [--wait busy|yield|park]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn serve(name: &str, wait: &str) -> Result<()> {
    let mut cfg = ServerConfig::new(name, vec![ModelConfig::new("echo", "echo")]);
    cfg.wait = parse_wait(wait).map_err(anyhow::Error::msg)?;
    cfg.cores = vec![1];
    let server = Server::start(cfg)?;
    // Serve until the parent closes our stdin.
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    server.shutdown(Duration::from_secs(1));
    Ok(())
}

fn main() -> Result<()> {
    let args = parse()?;
    let wait = parse_wait(&args.wait).map_err(anyhow::Error::msg)?;
    let mut child = None;
    let name = match &args.service {
        Some(s) => s.clone(),
        None => {
            let name = format!("microbench-{}", std::process::id());
            child = Some(
                std::process::Command::new(std::env::current_exe()?)
                    .args(["--serve", &name, &args.wait])
                    .stdin(std::process::Stdio::piped())
                    .spawn()?,
            );
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
    let mut rtts = Vec::with_capacity(args.n);
    for i in 0..args.n + args.n / 10 {
        let t = Instant::now();
        let v = client.infer(&req)?;
        let ns = t.elapsed().as_nanos() as u64;
        drop(v);
        if i >= args.n / 10 {
            rtts.push(ns);
        }
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    println!(
        "{} round trips (64-byte echo, wait {}): p50 {} ns, p99 {} ns, p99.9 {} ns",
        args.n,
        args.wait,
        pct(0.5),
        pct(0.99),
        pct(0.999)
    );
    let n = args.pipelined.unwrap_or(args.n).max(1000);
    let start = Instant::now();
    let mut open = VecDeque::new();
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while sent < n && open.len() < 64 {
            open.push_back(client.submit(&req)?);
            sent += 1;
        }
        let t = open.pop_front().expect("in flight");
        client.recv(t, Duration::from_secs(10))?;
        done += 1;
    }
    println!(
        "pipelined (64 in flight): {:.0} requests/s",
        n as f64 / start.elapsed().as_secs_f64()
    );
    drop(client);
    if let Some(mut c) = child {
        drop(c.stdin.take());
        c.wait()?;
    }
    Ok(())
}
