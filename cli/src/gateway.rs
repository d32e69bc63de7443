//! `shm-runtime gateway`: the OpenAI-compatible HTTP gateway onto a running service, and
//! `shm-runtime metrics`: the service's metrics in Prometheus' text format, without a gateway.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use shm_runtime::ring::WaitStrategy;
use shm_runtime_gateway::{Gateway, GatewayOptions, RuntimeOptions};

use crate::args;

/// The gateway's settings, shared by `gateway` and `serve --http`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct HttpArgs {
    /// Client connections to the service (each takes the server's per-client in-flight limit).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    connections: u32,
    /// Most requests waiting for the runtime; more get 429 at once.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// How the gateway's connections wait for answers: busy, yield, park or park:MICROS.
    #[arg(long, value_name = "WAIT", value_parser = args::wait)]
    http_wait: Option<WaitStrategy>,
    /// `max_tokens` of a generation request that gives none.
    #[arg(long, default_value_t = 512)]
    default_max_tokens: u32,
    /// Deadline of a request in the runtime (5s, 500ms; a plain number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = args::duration)]
    request_timeout: Duration,
    /// On SIGINT or SIGTERM, how long open HTTP requests (streams too) may take to finish before
    /// they are dropped, which cancels them in the runtime; the listener closes at once.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::duration)]
    http_grace: Duration,
}

impl HttpArgs {
    fn options(&self) -> GatewayOptions {
        let mut client = RuntimeOptions::default().client;
        client.timeout = self.request_timeout;
        if let Some(w) = self.http_wait {
            client.wait = w;
        }
        GatewayOptions {
            runtime: RuntimeOptions {
                connections: self.connections as usize,
                queue: self.queue,
                client,
            },
            default_max_tokens: self.default_max_tokens,
            ..GatewayOptions::default()
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    shm-runtime gateway --service svc --listen 127.0.0.1:8080\n  \
    curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \\\n    \
    -d '{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'")]
pub(crate) struct GatewayArgs {
    /// The service to serve (a running `shm-runtime serve --name NAME`).
    #[arg(long, value_name = "NAME")]
    service: String,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    http: HttpArgs,
}

/// `shm-runtime gateway`: serves until SIGINT or SIGTERM.
pub(crate) fn gateway(args: &GatewayArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    run(&args.service, args.listen, &args.http, stop)
}

/// Serves `service` over HTTP on `listen` until `stop` is set, then finishes the requests in
/// progress.
pub(crate) fn run(
    service: &str,
    listen: SocketAddr,
    http: &HttpArgs,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gateway")
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        tracing::info!(%local, service, "gateway listening");
        let _ = writeln!(
            std::io::stdout().lock(),
            "gateway for {service:?} on http://{local}"
        );
        let gw = Gateway::new(service, http.options());
        let stopped = {
            let stop = stop.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let serving = gw.serve(listener, stopped);
        // The requests still open `http_grace` after the signal are dropped (and so cancelled).
        let grace = async {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(http.http_grace).await;
        };
        tokio::select! {
            served = serving => served?,
            () = grace => tracing::warn!(
                "HTTP requests still open {:.1} s after the stop signal: dropped",
                http.http_grace.as_secs_f64()
            ),
        }
        Ok(())
    })
}

#[derive(clap::Args)]
pub(crate) struct MetricsArgs {
    /// Service name.
    name: String,
}

/// `shm-runtime metrics NAME`: what a gateway's `/metrics` shows of the runtime.
pub(crate) fn metrics(args: &MetricsArgs) -> Result<()> {
    let status = shm_runtime::status(&args.name)?;
    let text = shm_runtime_gateway::metrics::runtime_text(&args.name, Some(&status));
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}
