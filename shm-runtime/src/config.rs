//! Server configuration: from a TOML file or built in code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shm_ring::pool::PoolConfig;
use shm_ring::WaitStrategy;

use crate::protocol::Limits;

/// One model to load.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients use.
    pub name: String,
    /// `echo`, `sleep` (built in), `onnx` or `gguf` (features).
    pub backend: String,
    /// Model file, for backends that load one.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Task for backends that do several.
    #[serde(default)]
    pub task: Option<String>,
    /// Backend options.
    #[serde(default)]
    pub options: toml::Table,
    /// Worker threads of this model's lane (default: the server's `workers_per_lane`). For a
    /// model that decodes step by step (GGUF), each worker has its own context and sequences, and
    /// a new request goes to the least loaded worker: with one llama.cpp thread each, two workers
    /// decode two streams on two cores without meeting at a barrier.
    #[serde(default)]
    pub workers: Option<usize>,
}

impl ModelConfig {
    /// A model with no file or options.
    pub fn new(name: &str, backend: &str) -> ModelConfig {
        ModelConfig {
            name: name.to_owned(),
            backend: backend.to_owned(),
            path: None,
            task: None,
            options: toml::Table::new(),
            workers: None,
        }
    }

    /// Worker threads of this model's lane under server configuration `c`.
    pub fn workers(&self, c: &ServerConfig) -> usize {
        self.workers.unwrap_or(c.workers_per_lane)
    }
}

/// Everything a server needs.
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
    /// CPUs to pin workers to, in order (empty: no pinning).
    pub cores: Vec<usize>,
    /// How idle workers wait.
    pub wait: WaitStrategy,
    /// Most requests one client may have in flight.
    pub max_inflight: u32,
    /// Deadline for requests that do not set `timeout_ms`.
    pub default_timeout: Duration,
    /// Semantic limits.
    pub limits: Limits,
    /// Copy each request into worker-private memory before validating it.
    pub hardened: bool,
}

impl ServerConfig {
    /// Defaults for a service `name` serving `models`.
    pub fn new(name: &str, models: Vec<ModelConfig>) -> ServerConfig {
        ServerConfig {
            name: name.to_owned(),
            models,
            max_clients: 32,
            ring_capacity: 256,
            pool: PoolConfig::standard(),
            workers_per_lane: 1,
            cores: Vec::new(),
            wait: WaitStrategy::default(),
            max_inflight: 64,
            default_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            hardened: false,
        }
    }
}

/// The TOML file.
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    max_clients: Option<usize>,
    ring_capacity: Option<usize>,
    workers_per_lane: Option<usize>,
    cores: Option<Vec<usize>>,
    wait: Option<String>,
    max_inflight: Option<u32>,
    default_timeout_ms: Option<u64>,
    hardened: Option<bool>,
}

/// Parses a wait strategy name: `busy`, `yield`, `park` (default) or `park:MICROS`.
///
/// # Errors
///
/// For any other text.
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

/// Reads a TOML configuration file. `name` overrides the file's `service`.
///
/// ```toml
/// service = "demo"
/// [server]
/// workers_per_lane = 1
/// cores = [1]
/// wait = "park"
/// [[model]]
/// name = "echo"
/// backend = "echo"
/// ```
///
/// # Errors
///
/// A sentence naming the file and what is wrong.
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
    if let Some(v) = s.wait {
        c.wait = parse_wait(&v)?;
    }
    if let Some(v) = s.max_inflight {
        c.max_inflight = v;
    }
    if let Some(v) = s.default_timeout_ms {
        c.default_timeout = Duration::from_millis(v);
    }
    if let Some(v) = s.hardened {
        c.hardened = v;
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
[[model]]
name = "e"
backend = "echo"
[[model]]
name = "s"
backend = "sleep"
path = "weights.bin"
workers = 3
options = { step_ms = 2.5 }
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
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models[0].workers(&c), 2);
        assert_eq!(c.models[1].workers(&c), 3);
        assert_eq!(
            c.models[1].path.as_deref(),
            Some(dir.join("weights.bin").as_path())
        );
        assert_eq!(load(&path, Some("override")).unwrap().name, "override");
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
