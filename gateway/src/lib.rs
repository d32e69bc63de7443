//! An OpenAI-compatible HTTP gateway onto an shm-runtime service: every tool that speaks the
//! OpenAI API (the official SDKs, curl, editors, agents) reaches the models a runtime serves,
//! and operators scrape its Prometheus metrics.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (plain, or server-sent events with
//! `stream: true`), `POST /v1/embeddings`, `POST /v1/classify` (labels and scores; not an OpenAI
//! route), `GET /v1/models`, `GET /livez` (the process is up), `GET /health` (200 only when the
//! runtime answers and every model is ready, else 503) and `GET /metrics`.
//!
//! A client that disconnects cancels its request in the runtime; the gateway survives the
//! runtime restarting (503 meanwhile, then it connects again).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let gateway = shm_runtime_gateway::Gateway::new("svc", shm_runtime_gateway::GatewayOptions::default());
//! gateway.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod api;
mod embed;
mod error;
mod generate;
mod meta;
pub mod metrics;
mod runtime;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

pub use runtime::RuntimeOptions;

use crate::error::ApiError;
use crate::runtime::{Lease, Runtime};

/// How a gateway serves.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime_gateway::GatewayOptions;
///
/// let mut options = GatewayOptions::default();
/// options.runtime.connections = 4; // four client connections to the runtime
/// options.default_max_tokens = 256;
/// options.keep_alive = Duration::from_secs(5);
/// assert_eq!(options.max_body, 8 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// How it uses the runtime (connections, queue, wait strategy).
    pub runtime: RuntimeOptions,
    /// `max_tokens` of a generation request that gives none.
    pub default_max_tokens: u32,
    /// Largest request body, in bytes (larger: 413).
    pub max_body: usize,
    /// Interval of the keep-alive comments on an idle stream.
    pub keep_alive: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            runtime: RuntimeOptions::default(),
            default_max_tokens: 512,
            max_body: 8 << 20,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// A gateway onto one service.
///
/// # Examples
///
/// Serve a runtime's models over HTTP and ask for a completion:
///
/// ```
/// use std::io::{Read, Write};
/// use shm_runtime::{ModelConfig, Server, ServerConfig};
/// use shm_runtime_gateway::{Gateway, GatewayOptions};
///
/// let name = format!("doc-gateway-{}", std::process::id());
/// let _server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
/// let rt = tokio::runtime::Runtime::new()?;
/// let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
/// let addr = listener.local_addr()?;
/// let gateway = Gateway::new(&name, GatewayOptions::default());
/// rt.spawn(async move { gateway.serve(listener, std::future::pending()).await });
///
/// let body = r#"{"model":"echo","prompt":"hello"}"#;
/// let mut http = std::net::TcpStream::connect(addr)?;
/// write!(http, "POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
///               content-length: {}\r\n\r\n{body}", body.len())?;
/// let mut answer = String::new();
/// http.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.1 200"));
/// assert!(answer.contains(r#""text":"hello""#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Gateway {
    runtime: Runtime,
    options: GatewayOptions,
    started: Instant,
}

/// The id of one HTTP request: the client's `x-request-id` when it sent one, else the gateway's.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

impl Gateway {
    /// A gateway onto service `service` (connected on the first request that needs it).
    ///
    /// # Examples
    ///
    /// ```
    /// // No such service yet: the gateway starts anyway, and answers 503 until it exists.
    /// let gateway = shm_runtime_gateway::Gateway::new("not-yet", Default::default());
    /// # drop(gateway);
    /// ```
    pub fn new(service: &str, options: GatewayOptions) -> Arc<Gateway> {
        Arc::new(Gateway {
            runtime: Runtime::new(service, options.runtime.clone()),
            options,
            started: Instant::now(),
        })
    }

    /// The routes, ready to serve: to serve them with other routes of your own, or with your
    /// own server loop.
    ///
    /// # Examples
    ///
    /// ```
    /// use axum::routing::get;
    ///
    /// let gateway = shm_runtime_gateway::Gateway::new("svc", Default::default());
    /// let app = gateway.router().route("/version", get(|| async { "1.0" }));
    /// # drop(app);
    /// ```
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(generate::chat))
            .route("/v1/completions", post(generate::completions))
            .route("/v1/embeddings", post(embed::embeddings))
            .route("/v1/classify", post(embed::classify))
            .route("/v1/models", get(meta::models))
            .route("/v1/models/{model}", get(meta::model))
            .route("/livez", get(meta::livez))
            .route("/health", get(meta::health))
            .route("/metrics", get(meta::metrics))
            .fallback(meta::not_found)
            .layer(axum::middleware::from_fn(observe))
            .layer(axum::extract::DefaultBodyLimit::max(self.options.max_body))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then finishes the requests in progress.
    /// Installs the process's metrics recorder first ([`metrics::install`]).
    ///
    /// # Errors
    ///
    /// When the listener fails.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn demo() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let gateway = shm_runtime_gateway::Gateway::new("svc", Default::default());
    /// // Until Ctrl-C.
    /// gateway.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await
    /// # }
    /// ```
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        metrics::install();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// `result` of a runtime call made under `lease`, noting a lost runtime.
    pub(crate) fn check<T>(
        &self,
        lease: &Lease,
        result: Result<T, shm_runtime::Error>,
    ) -> Result<T, ApiError> {
        result.map_err(|e| {
            self.runtime.observe(&lease.connections, &e);
            ApiError::from(e)
        })
    }
}

/// A JSON body (whatever its `Content-Type`, as other servers of the API take it) whose
/// rejection is an error in the API's shape: 400 naming what is wrong, 413 when too large.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                let mut e = ApiError::invalid(None, rejection.body_text());
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    e.status = status;
                    e.code = Some("request_too_large");
                }
                e
            })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::invalid(None, format!("the request body is not valid: {e}")))
    }
}

/// Gives each request its id (echoed in `x-request-id`) and counts it in the HTTP metrics.
async fn observe(mut req: Request, next: Next) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let start = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "{:x}-{:x}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        });
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    metrics::http_request(&route, &method, resp.status().as_u16(), start.elapsed());
    resp
}
