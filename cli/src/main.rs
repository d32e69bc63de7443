//! The `shm-runtime` command: `serve`, `status`, `ping`, `cleanup`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use shm_runtime::protocol::{Input, Params, Request, Task};
use shm_runtime::ring::Segment;
use shm_runtime::{config, Client, ModelConfig, Server, ServerConfig};

#[derive(Parser)]
#[command(
    name = "shm-runtime",
    version,
    about = "Zero-copy shared-memory model server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Service name (the shared-memory segment's name).
    #[arg(long)]
    name: Option<String>,
    /// TOML configuration file ([server] section and [[model]] entries).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A model as NAME=BACKEND (built in: echo, sleep); may repeat.
    #[arg(long = "model", value_name = "NAME=BACKEND")]
    models: Vec<String>,
    /// Wait strategy of idle workers: busy, yield, park, park:MICROS.
    #[arg(long)]
    wait: Option<String>,
    /// CPUs to pin workers to, comma separated.
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Validate and run requests in place in shared memory instead of a private copy. Only for
    /// clients trusted never to touch a request after submitting it: one that does can crash the
    /// server.
    #[arg(long)]
    trusted_clients: bool,
    /// Deprecated and ignored: requests are copied before validation by default.
    #[arg(long, hide = true)]
    hardened: bool,
    /// Percent of each pool size class one client may hold (unread answers and stream parts,
    /// requests being written); a stream whose client holds its share waits for it to read.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    client_share: Option<u32>,
    /// Seconds queued and running requests may take to finish on shutdown.
    #[arg(long, default_value_t = 5)]
    grace: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve models under a service name until SIGINT or SIGTERM (then drain and stop).
    Serve(ServeArgs),
    /// Print a running service's counters.
    Status {
        /// Service name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send echo requests and print round-trip times.
    Ping {
        /// Service name.
        name: String,
        /// Model to ping (an echo model).
        #[arg(long, default_value = "echo")]
        model: String,
        /// Number of requests.
        #[arg(short, long, default_value_t = 5)]
        count: u32,
    },
    /// Remove a service segment whose server has died (never a live one).
    Cleanup {
        /// Service name.
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), no backtrace: these are user-facing errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Serve(args) => serve(args),
        Cmd::Status { name, json } => status(&name, json),
        Cmd::Ping { name, model, count } => ping(&name, &model, count),
        Cmd::Cleanup { name } => cleanup(&name),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let ServeArgs {
        name,
        config: config_path,
        models,
        wait,
        cores,
        trusted_clients,
        hardened,
        client_share,
        grace,
    } = args;
    let mut cfg = match &config_path {
        Some(p) => config::load(p, name.as_deref()).map_err(anyhow::Error::msg)?,
        None => {
            let Some(name) = name else {
                bail!("give a service name with --name (or a --config file that sets one)");
            };
            ServerConfig::new(&name, Vec::new())
        }
    };
    for m in &models {
        let Some((n, b)) = m.split_once('=') else {
            bail!("--model wants NAME=BACKEND, got {m:?}");
        };
        cfg.models.push(ModelConfig::new(n, b));
    }
    if cfg.models.is_empty() {
        bail!("no models: pass --model NAME=BACKEND or a --config file with [[model]] entries");
    }
    if let Some(w) = wait {
        cfg.wait = config::parse_wait(&w).map_err(anyhow::Error::msg)?;
    }
    if !cores.is_empty() {
        cfg.cores = cores;
    }
    cfg.trusted_clients |= trusted_clients;
    if let Some(p) = client_share {
        cfg.pool.class_share = p;
    }
    if hardened {
        tracing::warn!(
            "--hardened is deprecated and ignored: requests are always copied before validation \
             unless --trusted-clients is given"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let server = Server::start(cfg)?;
    println!("serving {:?}; stop with Ctrl-C", server.name());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("draining (up to {grace} s)");
    server.shutdown(Duration::from_secs(grace));
    Ok(())
}

fn status(name: &str, json: bool) -> Result<()> {
    let st = shm_runtime::status(name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    println!(
        "service {name:?}: {}, server pid {} ({})",
        st.state,
        st.server_pid,
        if st.server_alive { "alive" } else { "dead" }
    );
    let errors: Vec<String> = st
        .errors
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    println!(
        "requests {}  ok {}  errors: {}",
        st.requests,
        st.ok,
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        }
    );
    for l in &st.lanes {
        println!(
            "lane {}: {}, queued {} running {} accepted {} completed {} (batched: {} requests in {} batches), backend panics {} restarts {}",
            l.model.as_deref().unwrap_or("?"),
            l.state,
            l.queued,
            l.running,
            l.accepted,
            l.completed,
            l.batched,
            l.batches,
            l.panics,
            l.restarts
        );
    }
    println!("clients: {}", st.clients.len());
    for c in &st.clients {
        let held: Vec<String> = st
            .pool
            .iter()
            .zip(&c.held)
            .filter(|(_, &n)| n > 0)
            .map(|(k, n)| format!("{n}x{} B", k.chunk_size))
            .collect();
        println!(
            "  slot {} pid {} inflight {} requests {} errors {} holds {}",
            c.slot,
            c.pid,
            c.inflight,
            c.requests,
            c.errors,
            if held.is_empty() {
                "nothing".to_owned()
            } else {
                held.join(", ")
            }
        );
        if let Some(why) = &c.disconnected {
            println!("    disconnected by the server: {why}");
        }
    }
    for c in &st.pool {
        println!(
            "pool {:>8} B: {}/{} free, high water {}, {} per client",
            c.chunk_size, c.free, c.count, c.high_water, c.share
        );
    }
    Ok(())
}

fn ping(name: &str, model: &str, count: u32) -> Result<()> {
    let client = Client::connect(name)?;
    for i in 0..count {
        let t = Instant::now();
        let v = client.infer(&Request {
            id: 0,
            model: model.to_owned(),
            task: Task::Generate,
            input: Input::Text(format!("ping {i}")),
            params: Params::default(),
        })?;
        let rtt = t.elapsed();
        let bytes = v.len();
        println!(
            "answer {i}: {bytes} bytes in {:.1} us",
            rtt.as_secs_f64() * 1e6
        );
    }
    Ok(())
}

fn cleanup(name: &str) -> Result<()> {
    match Segment::remove(name, std::path::Path::new("/dev/shm")) {
        Ok(()) => {
            println!("removed the stale segment of {name:?}");
            Ok(())
        }
        Err(e) => bail!("{e}"),
    }
}
