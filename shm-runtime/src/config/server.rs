//! The configuration types: the server's settings ([`ServerConfig`]) and each model's
//! ([`ModelConfig`]), with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shm_ring::pool::PoolConfig;
use shm_ring::WaitStrategy;

use super::Options;
use crate::protocol::Limits;

/// One model to load.
///
/// # Examples
///
/// ```
/// use shm_runtime::config::OptionValue;
/// use shm_runtime::{Client, GenerateOptions, ModelConfig, Server, ServerConfig};
///
/// // A sleep model: 1 ms per token, continuous batching over 4 sequences, 2 workers.
/// let mut model = ModelConfig::new("steps", "sleep");
/// model.options.insert("step_ms".into(), OptionValue::Float(1.0));
/// model.options.insert("slots".into(), OptionValue::Integer(4));
/// model.workers = Some(2);
/// # let name = format!("doc-model-config-{}", std::process::id());
/// let _server = Server::start(ServerConfig::new(&name, vec![model]))?;
/// let client = Client::connect(&name)?;
/// let g = client.generate("steps", "go", &GenerateOptions::new().max_tokens(3))?;
/// assert_eq!(g.text, "t0 t1 t2 ");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients use.
    pub name: String,
    /// `echo`, `sleep` (built in), `onnx` or `gguf` (features). (`panic`, a backend that panics
    /// on a given input, exists only in test builds: feature `test-backends`.)
    pub backend: String,
    /// Model file, for backends that load one.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Task for backends that do several.
    #[serde(default)]
    pub task: Option<String>,
    /// Backend options: each backend reads and checks its own.
    #[serde(default)]
    pub options: Options,
    /// Worker threads of this model's lane (default: the server's `workers_per_lane`). For a
    /// model that decodes step by step (GGUF), each worker has its own context and sequences, and
    /// a new request goes to the least loaded worker: with one llama.cpp thread each, two workers
    /// decode two streams on two cores without meeting at a barrier.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl ModelConfig {
    /// A model with no file or options.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::ModelConfig;
    ///
    /// let model = ModelConfig::new("echo", "echo");
    /// assert_eq!((model.name.as_str(), model.backend.as_str()), ("echo", "echo"));
    /// assert!(model.path.is_none() && model.options.is_empty());
    /// ```
    pub fn new(name: &str, backend: &str) -> ModelConfig {
        ModelConfig {
            name: name.to_owned(),
            backend: backend.to_owned(),
            path: None,
            task: None,
            options: Options::new(),
            workers: None,
        }
    }

    /// Worker threads of this model's lane under server configuration `c`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{ModelConfig, ServerConfig};
    ///
    /// let mut config = ServerConfig::new("svc", vec![ModelConfig::new("a", "echo")]);
    /// config.workers_per_lane = 2;
    /// let mut b = ModelConfig::new("b", "echo");
    /// b.workers = Some(3);
    /// assert_eq!(config.models[0].workers(&config), 2); // the server's default
    /// assert_eq!(b.workers(&config), 3); // its own
    /// ```
    pub fn workers(&self, c: &ServerConfig) -> usize {
        self.workers.unwrap_or(c.workers_per_lane)
    }
}

/// Everything a server needs.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
///
/// # let name = format!("doc-server-config-{}", std::process::id());
/// let mut config = ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]);
/// config.max_clients = 4;
/// config.default_timeout = Duration::from_secs(5);
/// config.pin = false; // leave the workers to the OS scheduler
/// let _server = Server::start(config)?;
/// assert_eq!(Client::connect(&name)?.models(), ["echo"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Service name (the segment's name).
    pub name: String,
    /// Models, one lane each.
    pub models: Vec<ModelConfig>,
    /// Client slots (<= 64).
    pub max_clients: usize,
    /// Entries per ring (power of two).
    pub ring_capacity: usize,
    /// Pool size classes.
    pub pool: PoolConfig,
    /// Worker threads per lane.
    pub workers_per_lane: usize,
    /// CPUs to pin workers to, in turn, in the order the workers start (lane by lane). Empty:
    /// the automatic rule of [`pin`](Self::pin).
    pub cores: Vec<usize>,
    /// Whether workers are pinned to CPUs (default `true`). With [`cores`](Self::cores) set, each
    /// worker is pinned to the next of those CPUs. Without, the automatic rule: when the CPUs this
    /// process may run on (its affinity mask) outnumber the threads the workers keep busy (one
    /// per worker, or its backend's [`threads`](crate::backend::Backend::threads)), each worker
    /// of one thread is pinned to a CPU of its own, from the second on, the first left to clients,
    /// the housekeeper and the rest of the machine; otherwise no worker is pinned, since one of
    /// them would share its CPU with clients and the scheduler could not move it away. A worker
    /// whose backend runs several threads is never pinned by the rule (the threads it starts
    /// would share its CPU). Workers that busy-poll ([`WaitStrategy::BusySpin`]) never give
    /// their CPU up, so they are pinned only when at least two CPUs are left. `false` never pins,
    /// whatever `cores` says. Several servers on one machine each follow the rule alone, on the
    /// same CPUs: give each its own `cores`. (The report's `rtt_ns_shm_*_pinned` and `_unpinned`
    /// figures are behind the rule.)
    pub pin: bool,
    /// How idle workers wait.
    pub wait: WaitStrategy,
    /// Most requests one client may have in flight.
    pub max_inflight: u32,
    /// Deadline for requests that do not set `timeout_ms`.
    pub default_timeout: Duration,
    /// Semantic limits.
    pub limits: Limits,
    /// Validate and run requests in place, in the shared chunk, instead of a worker-private copy.
    ///
    /// Off by default: the server copies each request before validating it, so a client that
    /// rewrites its request after submitting it (a use-after-submit bug, or a client in another
    /// language) changes nothing the server checked. Turn it on only when every client process is
    /// trusted to leave its submitted chunks alone: it saves one copy of each request (a few
    /// cache lines for a small one), and such a client can then make the server read out of
    /// bounds and crash, or copy server memory into an answer.
    pub trusted_clients: bool,
    /// Backends registered in code, beside the built-in ones (see
    /// [`ServerBuilder::backend`](crate::ServerBuilder::backend)); a custom backend may not take a
    /// built-in one's name.
    pub backends: crate::backend::CustomBackends,
}

impl ServerConfig {
    /// Defaults for a service `name` serving `models`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::{ModelConfig, ServerConfig};
    ///
    /// let config = ServerConfig::new("svc", vec![ModelConfig::new("echo", "echo")]);
    /// assert_eq!((config.max_clients, config.workers_per_lane), (32, 1));
    /// assert_eq!(config.default_timeout, Duration::from_secs(30));
    /// assert!(config.pin && !config.trusted_clients);
    /// ```
    pub fn new(name: &str, models: Vec<ModelConfig>) -> ServerConfig {
        ServerConfig {
            name: name.to_owned(),
            models,
            max_clients: 32,
            ring_capacity: 256,
            pool: PoolConfig::standard(),
            workers_per_lane: 1,
            cores: Vec::new(),
            pin: true,
            wait: WaitStrategy::default(),
            max_inflight: 64,
            default_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            trusted_clients: false,
            backends: crate::backend::CustomBackends::default(),
        }
    }
}
