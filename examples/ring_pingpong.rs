//! Two processes ping-pong a descriptor over shared-memory SPSC rings and print round-trip
//! percentiles. Run: `cargo run --release -p shm-examples --bin ring-pingpong [-- ROUNDS] [--json]`.

#[path = "support.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use shm_ring::{spsc, CreateOptions, Region, Segment, WaitStrategy};

const RING_BYTES: usize = 64 << 10;

/// Round trips of a descriptor between two processes over shared-memory SPSC rings.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Round trips to time (1000 more are run first as a warm-up).
    #[arg(default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// Internal: the echoing process, on this segment.
    #[arg(long, hide = true, value_name = "SEGMENT")]
    echo: Option<String>,
}

fn rings(region: &Region) -> Result<(Region, Region)> {
    Ok((
        region.slice(0, RING_BYTES)?,
        region.slice(RING_BYTES, RING_BYTES)?,
    ))
}

fn main() -> ExitCode {
    support::main_with(run)
}

fn run(args: Args) -> Result<()> {
    if let Some(name) = &args.echo {
        return echo(name);
    }
    let rounds = args.rounds;
    let name = format!("pingpong-{}", std::process::id());
    let seg = Segment::create(&name, &CreateOptions::new(2 * RING_BYTES))?;
    let region = Region::new(Arc::new(seg));
    let (ping, pong) = rings(&region)?;
    spsc::init::<[u64; 2]>(&ping, 256)?;
    spsc::init::<[u64; 2]>(&pong, 256)?;
    let mut tx = spsc::Producer::<[u64; 2]>::attach(&ping)?;
    let mut rx = spsc::Consumer::<[u64; 2]>::attach(&pong)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--echo", &name])
        .spawn()?;
    let strategy = WaitStrategy::BusySpin;
    let mut rtts = Vec::with_capacity(rounds as usize);
    for i in 0..rounds + 1000 {
        let start = Instant::now();
        tx.push_blocking([i, 0], &strategy, start + Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let back = rx.pop_blocking(&strategy, start + Duration::from_secs(10))?;
        if back[0] != i {
            bail!("echo returned {} for {i}", back[0]);
        }
        if i >= 1000 {
            rtts.push(start.elapsed().as_nanos() as u64);
        }
    }
    tx.push([u64::MAX, 0]).map_err(|e| anyhow::anyhow!("{e}"))?;
    child.wait()?;
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    if args.json {
        let doc = serde_json::json!({
            "round_trips": rounds,
            "p50_ns": pct(0.5),
            "p99_ns": pct(0.99),
            "p999_ns": pct(0.999),
        });
        println!("{doc}");
    } else {
        println!(
            "{rounds} round trips between two processes (busy-spin): p50 {} ns, p99 {} ns, p99.9 {} ns (one way ~ p50/2 = {} ns)",
            pct(0.5),
            pct(0.99),
            pct(0.999),
            pct(0.5) / 2
        );
    }
    Ok(())
}

fn echo(name: &str) -> Result<()> {
    let region = Region::new(Arc::new(Segment::open(name)?));
    let (ping, pong) = rings(&region)?;
    let mut rx = spsc::Consumer::<[u64; 2]>::attach(&ping)?;
    let mut tx = spsc::Producer::<[u64; 2]>::attach(&pong)?;
    loop {
        let v = rx.pop_blocking(
            &WaitStrategy::BusySpin,
            Instant::now() + Duration::from_secs(30),
        )?;
        if v[0] == u64::MAX {
            return Ok(());
        }
        tx.push_blocking(
            v,
            &WaitStrategy::BusySpin,
            Instant::now() + Duration::from_secs(30),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
}
