//! `shm-runtime serve`: a server under a service name until SIGINT or SIGTERM, then a drain.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use shm_runtime::ring::WaitStrategy;
use shm_runtime::{config, ModelConfig, Server, ServerConfig};

use crate::args;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    shm-runtime serve --name svc --model echo=echo --model slow=sleep\n  \
    shm-runtime serve --config examples/demo.toml --name svc --cores 1\n\n\
    Workers are pinned by default when the CPUs this process may use outnumber them: one CPU \
    each, the first left to clients (busy-polling workers, --wait busy, only with two CPUs left). \
    --cores chooses the CPUs, --no-pin never pins.")]
pub(crate) struct ServeArgs {
    /// Service name (the shared-memory segment's name); overrides the config file's `service`.
    #[arg(long)]
    name: Option<String>,
    /// TOML configuration file: a `[server]` section and `[[model]]` entries.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A model as NAME=BACKEND (built in: echo, sleep); may repeat.
    #[arg(long = "model", value_name = "NAME=BACKEND", value_parser = args::model)]
    models: Vec<ModelConfig>,
    /// Wait strategy of idle workers: busy, yield, park (spin 50 us, then sleep) or park:MICROS.
    #[arg(long, value_parser = args::wait)]
    wait: Option<WaitStrategy>,
    /// CPUs to pin workers to, in turn, comma separated (overrides the automatic pinning).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "CPU,...",
        conflicts_with = "no_pin"
    )]
    cores: Vec<usize>,
    /// Never pin workers to CPUs (the default pins them when there are CPUs to spare).
    #[arg(long)]
    no_pin: bool,
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
    /// How long queued and running requests may take to finish on shutdown (5s, 500ms; a plain
    /// number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration)]
    grace: Duration,
    /// Also serve the OpenAI-compatible HTTP gateway on this address (as `shm-runtime gateway`).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    http_args: crate::gateway::HttpArgs,
}

impl ServeArgs {
    /// The server's configuration: the file's (if any), then the command line's overrides.
    fn config(self) -> Result<ServerConfig> {
        let mut cfg = match &self.config {
            Some(p) => config::load(p, self.name.as_deref()).map_err(anyhow::Error::msg)?,
            None => {
                let Some(name) = &self.name else {
                    bail!("give a service name with --name (or a --config file that sets one)");
                };
                ServerConfig::new(name, Vec::new())
            }
        };
        cfg.models.extend(self.models);
        if cfg.models.is_empty() {
            bail!("no models: pass --model NAME=BACKEND or a --config file with [[model]] entries");
        }
        if let Some(w) = self.wait {
            cfg.wait = w;
        }
        if !self.cores.is_empty() {
            cfg.cores = self.cores;
            cfg.pin = true;
        }
        if self.no_pin {
            cfg.pin = false;
        }
        cfg.trusted_clients |= self.trusted_clients;
        if let Some(p) = self.client_share {
            cfg.pool.class_share = p;
        }
        if self.hardened {
            tracing::warn!(
                "--hardened is deprecated and ignored: requests are always copied before \
                 validation unless --trusted-clients is given"
            );
        }
        Ok(cfg)
    }
}

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    let grace = args.grace;
    let http = args.http.map(|addr| (addr, args.http_args.clone()));
    let cfg = args.config()?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let server = Server::start(cfg)?;
    // A server outlives whoever reads its stdout: a closed one is no reason to stop.
    let _ = writeln!(
        std::io::stdout().lock(),
        "serving {:?}; stop with Ctrl-C",
        server.name()
    );
    match http {
        // The gateway runs on this thread until the stop signal.
        Some((addr, http)) => crate::gateway::run(server.name(), addr, &http, stop.clone())?,
        None => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    tracing::info!("draining (up to {:.1} s)", grace.as_secs_f64());
    server.shutdown(grace);
    Ok(())
}
