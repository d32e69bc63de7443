//! Server configuration: from a TOML file or built in code.
//!
//! # Examples
//!
//! ```
//! use shm_runtime::config::{self, ModelConfig, ServerConfig};
//!
//! let in_code = ServerConfig::new("demo", vec![ModelConfig::new("echo", "echo")]);
//!
//! // The same from a file (feature `toml`, on by default; `load` tells every setting):
//! let toml = "service = 'demo'\n[[model]]\nname = 'echo'\nbackend = 'echo'\n";
//! # let dir = std::env::temp_dir().join(format!("doc-config-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("demo.toml");
//! std::fs::write(&path, toml)?;
//! let from_file = config::load(&path, None)?;
//! assert_eq!((from_file.name, from_file.models), (in_code.name, in_code.models));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "toml")]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shm_ring::pool::PoolConfig;
use shm_ring::WaitStrategy;

use crate::protocol::{Limits, MAX_DESC_LEN};
use crate::service::{MAX_CLIENTS, MAX_MODELS, MAX_NAME, RING_PARTICIPANTS};

/// A model's backend options by name, as a configuration file's `options = { ... }` gives them.
///
/// # Examples
///
/// ```
/// use shm_runtime::config::{OptionValue, Options};
/// use shm_runtime::ModelConfig;
///
/// let mut options = Options::new();
/// options.insert("step_ms".into(), OptionValue::Float(2.5));
/// options.insert("slots".into(), OptionValue::Integer(4));
/// let model = ModelConfig { options, ..ModelConfig::new("steps", "sleep") };
/// assert_eq!(model.options["slots"].as_integer(), Some(4));
/// ```
pub type Options = std::collections::BTreeMap<String, OptionValue>;

/// The value of one backend option: the plain values a configuration file can hold.
///
/// # Examples
///
/// ```
/// use shm_runtime::config::OptionValue;
///
/// // What `options = { pooling = "cls", labels = ["neg", "pos"] }` reads as:
/// let pooling = OptionValue::from("cls");
/// let labels = OptionValue::from(vec!["neg", "pos"]);
/// assert_eq!(pooling, OptionValue::String("cls".into()));
/// assert_eq!(labels.as_array().map(<[_]>::len), Some(2));
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    /// `true` or `false`.
    Boolean(bool),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text.
    String(String),
    /// A list of values.
    Array(Vec<OptionValue>),
}

impl OptionValue {
    /// The boolean, if it is one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from(true).as_bool(), Some(true));
    /// assert_eq!(OptionValue::from("yes").as_bool(), None);
    /// ```
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            OptionValue::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The whole number, if it is one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from(4_i64).as_integer(), Some(4));
    /// assert_eq!(OptionValue::from(4.0).as_integer(), None);
    /// ```
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            OptionValue::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number with a fraction, if it is one (a whole number is not: see [`as_number`]).
    ///
    /// [`as_number`]: OptionValue::as_number
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from(2.5).as_float(), Some(2.5));
    /// assert_eq!(OptionValue::from(2_i64).as_float(), None);
    /// ```
    pub fn as_float(&self) -> Option<f64> {
        match self {
            OptionValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Any number, whole or not.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// // `step_ms = 2` and `step_ms = 2.0` both read as 2 ms.
    /// assert_eq!(OptionValue::from(2_i64).as_number(), Some(2.0));
    /// assert_eq!(OptionValue::from(2.0).as_number(), Some(2.0));
    /// assert_eq!(OptionValue::from("2").as_number(), None);
    /// ```
    pub fn as_number(&self) -> Option<f64> {
        match self {
            OptionValue::Float(f) => Some(*f),
            OptionValue::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The text, if it is text.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// assert_eq!(OptionValue::from("mean").as_str(), Some("mean"));
    /// assert_eq!(OptionValue::from(1_i64).as_str(), None);
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        match self {
            OptionValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The list, if it is one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::config::OptionValue;
    ///
    /// let labels = OptionValue::from(vec!["neg", "pos"]);
    /// let items = labels.as_array().unwrap_or_default();
    /// let names: Vec<&str> = items.iter().filter_map(OptionValue::as_str).collect();
    /// assert_eq!(names, ["neg", "pos"]);
    /// assert_eq!(OptionValue::from("neg").as_array(), None);
    /// ```
    pub fn as_array(&self) -> Option<&[OptionValue]> {
        match self {
            OptionValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl From<bool> for OptionValue {
    fn from(v: bool) -> Self {
        OptionValue::Boolean(v)
    }
}

impl From<i64> for OptionValue {
    fn from(v: i64) -> Self {
        OptionValue::Integer(v)
    }
}

impl From<f64> for OptionValue {
    fn from(v: f64) -> Self {
        OptionValue::Float(v)
    }
}

impl From<&str> for OptionValue {
    fn from(v: &str) -> Self {
        OptionValue::String(v.to_owned())
    }
}

impl From<String> for OptionValue {
    fn from(v: String) -> Self {
        OptionValue::String(v)
    }
}

impl<T: Into<OptionValue>> From<Vec<T>> for OptionValue {
    fn from(v: Vec<T>) -> Self {
        OptionValue::Array(v.into_iter().map(Into::into).collect())
    }
}

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

impl ServerConfig {
    /// Checks what the server needs of this configuration before it loads anything: the ring
    /// size, chunk sizes a descriptor can name, the model count and names, client slots and
    /// worker threads.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{ConfigError, ModelConfig, ServerConfig};
    ///
    /// let mut config = ServerConfig::new("svc", vec![ModelConfig::new("echo", "echo")]);
    /// assert_eq!(config.validate(), Ok(()));
    /// config.models.push(ModelConfig::new("echo", "sleep"));
    /// assert_eq!(config.validate(), Err(ConfigError::ModelName("echo".into())));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ring_capacity < 2 {
            return Err(ConfigError::RingCapacity(self.ring_capacity));
        }
        // A descriptor carries a length of 24 bits: larger chunks would have their answers and
        // requests cut short.
        if let Some(k) = self
            .pool
            .classes
            .iter()
            .find(|k| k.chunk_size > MAX_DESC_LEN)
        {
            return Err(ConfigError::ChunkTooLarge(k.chunk_size));
        }
        if self.pool.class_share == 0 || self.pool.class_share > 100 {
            return Err(ConfigError::ClientShare(self.pool.class_share));
        }
        if let Some(name) = self
            .backends
            .names()
            .find(|n| crate::backend::is_built_in(n))
        {
            return Err(ConfigError::BackendName(name.to_owned()));
        }
        if self.models.is_empty() {
            return Err(ConfigError::NoModels);
        }
        if self.models.len() > MAX_MODELS {
            return Err(ConfigError::TooManyModels(self.models.len()));
        }
        if self.max_clients == 0 || self.max_clients > MAX_CLIENTS {
            return Err(ConfigError::MaxClients(self.max_clients));
        }
        let workers: usize = self.models.iter().map(|m| m.workers(self)).sum();
        if self.models.iter().any(|m| m.workers(self) == 0) || workers + 2 > RING_PARTICIPANTS {
            return Err(ConfigError::Workers(workers));
        }
        let mut names = std::collections::HashSet::new();
        for m in &self.models {
            if m.name.is_empty() || m.name.len() > MAX_NAME || !names.insert(m.name.as_str()) {
                return Err(ConfigError::ModelName(m.name.clone()));
            }
        }
        Ok(())
    }
}

/// What [`ServerConfig::validate`] found wrong.
///
/// # Examples
///
/// ```
/// use shm_runtime::{ConfigError, ServerConfig, ServerError};
///
/// let config = ServerConfig::new("svc", Vec::new());
/// assert_eq!(config.validate(), Err(ConfigError::NoModels));
/// assert_eq!(ConfigError::NoModels.to_string(), "no models configured");
/// // Server::start checks it first, and loads nothing then.
/// let err = shm_runtime::Server::start(config).unwrap_err();
/// assert!(matches!(err, ServerError::Config(ConfigError::NoModels)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A backend registered in code takes a built-in backend's name.
    #[error("backend {0:?} is built in: register a custom backend under another name")]
    BackendName(String),
    /// Rings need at least two entries.
    #[error("ring_capacity must be at least 2, not {0}")]
    RingCapacity(usize),
    /// A pool size class has chunks longer than a descriptor can describe.
    #[error(
        "pool chunks must be at most {MAX_DESC_LEN} bytes (a descriptor's length field), not {0}"
    )]
    ChunkTooLarge(usize),
    /// A client's share of each pool class is a percentage.
    #[error("client_share_percent must be 1..=100, not {0}")]
    ClientShare(u32),
    /// Nothing to serve.
    #[error("no models configured")]
    NoModels,
    /// More models than the service's model table holds.
    #[error("{0} models; at most {MAX_MODELS}")]
    TooManyModels(usize),
    /// `max_clients` out of range.
    #[error("max_clients must be 1..={MAX_CLIENTS}, not {0}")]
    MaxClients(usize),
    /// A model without a worker, or more workers in all than a ring has participants.
    #[error(
        "every model needs at least one worker, and all models together at most {max} \
         (workers_per_lane, or the model's workers); {0} asked",
        max = RING_PARTICIPANTS - 2
    )]
    Workers(usize),
    /// An empty, too long or repeated model name.
    #[error("model names must be unique and 1..={MAX_NAME} bytes: {0:?}")]
    ModelName(String),
}

/// The TOML file.
#[cfg(feature = "toml")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    server: ServerSection,
    #[serde(default, rename = "model")]
    models: Vec<ModelConfig>,
}

#[cfg(feature = "toml")]
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    max_clients: Option<usize>,
    ring_capacity: Option<usize>,
    workers_per_lane: Option<usize>,
    cores: Option<Vec<usize>>,
    pin: Option<bool>,
    wait: Option<String>,
    max_inflight: Option<u32>,
    default_timeout_ms: Option<u64>,
    trusted_clients: Option<bool>,
    /// Percent of each pool class one client may hold.
    client_share_percent: Option<u32>,
    /// Accepted and ignored, with a warning: copying requests is the default now.
    hardened: Option<bool>,
}

/// Parses a wait strategy name: `busy`, `yield`, `park` (default) or `park:MICROS`.
///
/// # Errors
///
/// For any other text.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::config::parse_wait;
/// use shm_runtime::ring::WaitStrategy;
///
/// assert_eq!(parse_wait("busy"), Ok(WaitStrategy::BusySpin));
/// let spin = Duration::from_micros(20);
/// assert_eq!(parse_wait("park:20"), Ok(WaitStrategy::SpinThenPark { spin }));
/// assert!(parse_wait("sleepy").is_err());
/// ```
pub fn parse_wait(s: &str) -> Result<WaitStrategy, String> {
    match s {
        "busy" => Ok(WaitStrategy::BusySpin),
        "yield" => Ok(WaitStrategy::Yield),
        "park" => Ok(WaitStrategy::default()),
        other => match other.strip_prefix("park:").map(str::parse::<u64>) {
            Some(Ok(us)) => Ok(WaitStrategy::SpinThenPark {
                spin: Duration::from_micros(us),
            }),
            _ => Err(format!(
                "unknown wait strategy {other:?} (busy, yield, park, park:MICROS)"
            )),
        },
    }
}

/// The project's cache of downloaded and built models and libraries: `$SHM_RUNTIME_CACHE`, else
/// `$XDG_CACHE_HOME/shm-runtime`, else `~/.cache/shm-runtime`. `scripts/setup.sh` fills it; a model
/// path `cache:REST` in a configuration file names `REST` inside it.
///
/// # Examples
///
/// ```
/// use std::path::Path;
/// use shm_runtime::config::cache_dir;
///
/// std::env::set_var("SHM_RUNTIME_CACHE", "/srv/models");
/// assert_eq!(cache_dir(), Path::new("/srv/models"));
/// // A configuration file's `path = "cache:minilm/model.onnx"`:
/// assert_eq!(cache_dir().join("minilm/model.onnx"), Path::new("/srv/models/minilm/model.onnx"));
/// ```
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHM_RUNTIME_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("shm-runtime")
}

/// Reads a TOML configuration file (feature `toml`, on by default). `name` overrides the file's
/// `service`.
///
/// ```toml
/// service = "demo"
/// [server]
/// workers_per_lane = 1
/// cores = [1]        # or `pin = false`; neither: the automatic rule (ServerConfig::pin)
/// wait = "park"
/// [[model]]
/// name = "echo"
/// backend = "echo"
/// ```
///
/// # Errors
///
/// A sentence naming the file and what is wrong.
#[cfg(feature = "toml")]
pub fn load(path: &Path, name: Option<&str>) -> Result<ServerConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let f: File = toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
    let name = name.map(str::to_owned).or(f.service).ok_or_else(|| {
        format!(
            "config {}: no service name (set `service` or pass --name)",
            path.display()
        )
    })?;
    let mut c = ServerConfig::new(&name, f.models);
    let s = f.server;
    if let Some(v) = s.max_clients {
        c.max_clients = v;
    }
    if let Some(v) = s.ring_capacity {
        c.ring_capacity = v;
    }
    if let Some(v) = s.workers_per_lane {
        c.workers_per_lane = v;
    }
    if let Some(v) = s.cores {
        c.cores = v;
    }
    if let Some(v) = s.pin {
        c.pin = v;
    }
    if let Some(v) = s.wait {
        c.wait = parse_wait(&v)?;
    }
    if let Some(v) = s.max_inflight {
        c.max_inflight = v;
    }
    if let Some(v) = s.default_timeout_ms {
        c.default_timeout = Duration::from_millis(v);
    }
    if let Some(v) = s.trusted_clients {
        c.trusted_clients = v;
    }
    if let Some(v) = s.client_share_percent {
        c.pool.class_share = v;
    }
    if s.hardened.is_some() {
        tracing::warn!(
            config = %path.display(),
            "`hardened` is deprecated and ignored: requests are always copied before validation \
             unless `trusted_clients = true`"
        );
    }
    // Relative model paths are relative to the config file; `cache:REST` is in the cache.
    let base = path.parent().unwrap_or(Path::new("."));
    for m in &mut c.models {
        if let Some(p) = &m.path {
            if let Some(rest) = p.to_str().and_then(|p| p.strip_prefix("cache:")) {
                m.path = Some(cache_dir().join(rest));
            } else if p.is_relative() {
                m.path = Some(base.join(p));
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "toml")]
    fn a_config_file_sets_the_server_and_its_models() {
        let dir = std::env::temp_dir().join(format!("shm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.toml");
        std::fs::write(
            &path,
            r#"
service = "from-file"
[server]
workers_per_lane = 2
cores = [1]
wait = "park:20"
max_inflight = 8
default_timeout_ms = 1500
client_share_percent = 10
[[model]]
name = "e"
backend = "echo"
[[model]]
name = "s"
backend = "sleep"
path = "weights.bin"
workers = 3
options = { step_ms = 2.5, slots = 2, pooling = "cls", normalize = false, labels = ["a", "b"] }
"#,
        )
        .unwrap();
        let c = load(&path, None).unwrap();
        assert_eq!(c.name, "from-file");
        assert_eq!(c.workers_per_lane, 2);
        assert_eq!(c.cores, vec![1]);
        assert_eq!(
            c.wait,
            WaitStrategy::SpinThenPark {
                spin: Duration::from_micros(20)
            }
        );
        assert_eq!(c.max_inflight, 8);
        assert_eq!(c.default_timeout, Duration::from_millis(1500));
        assert_eq!(c.pool.class_share, 10);
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models[0].workers(&c), 2);
        assert_eq!(c.models[1].workers(&c), 3);
        assert_eq!(
            c.models[1].path.as_deref(),
            Some(dir.join("weights.bin").as_path())
        );
        let options = &c.models[1].options;
        assert_eq!(options["step_ms"], OptionValue::Float(2.5));
        assert_eq!(options["slots"], OptionValue::Integer(2));
        assert_eq!(options["pooling"].as_str(), Some("cls"));
        assert_eq!(options["normalize"].as_bool(), Some(false));
        assert_eq!(options["labels"], OptionValue::from(vec!["a", "b"]));
        assert_eq!(options["slots"].as_number(), Some(2.0));
        assert_eq!(load(&path, Some("override")).unwrap().name, "override");
        // `hardened` is still accepted (and ignored): old files keep working.
        std::fs::write(
            &path,
            "[server]\nhardened = true\n[[model]]\nname = \"x\"\nbackend = \"echo\"\n",
        )
        .unwrap();
        assert!(!load(&path, Some("n")).unwrap().trusted_clients);
        std::fs::write(
            &path,
            "[server]\ntrusted_clients = true\n[[model]]\nname = \"x\"\nbackend = \"echo\"\n",
        )
        .unwrap();
        assert!(load(&path, Some("n")).unwrap().trusted_clients);
        assert!(load(&path, Some("n")).unwrap().pin, "pinned by default");
        std::fs::write(
            &path,
            "[server]\npin = false\n[[model]]\nname = \"x\"\nbackend = \"echo\"\n",
        )
        .unwrap();
        assert!(!load(&path, Some("n")).unwrap().pin);
        std::fs::write(
            &path,
            "[[model]]\nname = \"x\"\nbackend = \"echo\"\nbogus = 1\n",
        )
        .unwrap();
        let err = load(&path, Some("n")).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        assert!(load(&dir.join("missing.toml"), None)
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
