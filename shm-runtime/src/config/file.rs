//! Configuration files: `load` of a TOML file (feature `toml`, on by default), and the text
//! forms it reads that other front ends share: a wait strategy's name ([`parse_wait`]) and the
//! model cache behind `cache:` paths ([`cache_dir`]).

#[cfg(feature = "toml")]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "toml")]
use serde::Deserialize;
use shm_ring::WaitStrategy;

#[cfg(feature = "toml")]
use super::{ModelConfig, ServerConfig};

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
    use crate::config::OptionValue;

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
