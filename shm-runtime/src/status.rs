//! A service's state and counters, read from its segment by any process of the same user: what
//! `shm-runtime status` prints and what monitoring reads, without knowing the segment's layout.
//!
//! Every figure is a relaxed load of a counter the server keeps moving: a snapshot, not a
//! transaction (a request may be counted as accepted and not yet as completed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use shm_ring::pool::OwnerId;

use crate::protocol::ErrorCode;
use crate::service::{
    EjectReason, Service, CLIENT_EJECTED, LANE_SERVING, STATE_DRAINING, STATE_RUNNING,
    STATE_STARTING,
};
use crate::Error;

/// Where a server stands in its life.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-service-state-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// use shm_runtime::{status, ServiceState};
///
/// let s = status(&name)?;
/// assert_eq!(s.state, ServiceState::Running);
/// assert_eq!(s.state.to_string(), "running");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Loading models; not yet taking requests.
    Starting,
    /// Taking requests.
    Running,
    /// Finishing what it accepted; refusing new work.
    Draining,
    /// Stopped (or the state word holds something unknown).
    Stopped,
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Draining => "draining",
            ServiceState::Stopped => "stopped",
        })
    }
}

/// Whether a model's lane serves.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-lane-state-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// use shm_runtime::{status, LaneState};
///
/// let s = status(&name)?;
/// assert!(s.lanes.iter().all(|lane| lane.state == LaneState::Serving));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneState {
    /// Serving requests (also after restarts of its backend).
    Serving,
    /// Its backend panicked more often than its restarts allow, or could not be loaded again
    /// after a panic: every request to it is answered with a `Backend` error at once, until the
    /// server is restarted.
    Failed,
}

impl std::fmt::Display for LaneState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LaneState::Serving => "serving",
            LaneState::Failed => "failed",
        })
    }
}

/// One model's lane: its queue and counters.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-lane-status-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use shm_runtime::{status, GenerateOptions, ModelState};
///
/// for _ in 0..3 {
///     client.generate("echo", "hi", &GenerateOptions::default())?;
/// }
/// let lane = &status(&name)?.lanes[0];
/// assert_eq!(lane.model.as_deref(), Some("echo"));
/// assert_eq!(lane.model_state, ModelState::Ready);
/// assert_eq!(lane.completed, 1 + 3); // the warm-up request, and ours
/// assert_eq!((lane.panics, lane.restarts), (0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaneStatus {
    /// The model's name (`None` if the segment holds no valid name for it).
    pub model: Option<String>,
    /// Whether it serves.
    pub state: LaneState,
    /// The model's state: warming (its warm-up inference not answered yet), ready, or failed
    /// (its warm-up failed, or its lane failed).
    pub model_state: crate::ModelState,
    /// Requests queued, not yet running.
    pub queued: u64,
    /// Requests running.
    pub running: u64,
    /// Requests accepted since the start.
    pub accepted: u64,
    /// Requests completed since the start.
    pub completed: u64,
    /// Batches run (models that batch).
    pub batches: u64,
    /// Requests run in those batches.
    pub batched: u64,
    /// Panics of its backend, each contained: the requests the panicking call held are answered
    /// with a `Backend` error (a panic is counted as soon as it is caught).
    pub panics: u64,
    /// New instances of its backend loaded after a panic (each once the answers of the requests
    /// the panicking call held are out).
    pub restarts: u64,
    /// Its latency histograms and generation counters.
    pub metrics: crate::metrics::LaneMetricsSnapshot,
}

/// One connected client.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-client-status-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use shm_runtime::{status, GenerateOptions};
///
/// client.generate("echo", "hi", &GenerateOptions::default())?;
/// let s = status(&name)?;
/// assert_eq!(s.clients.len(), 1);
/// let me = &s.clients[0];
/// assert_eq!(me.pid, std::process::id());
/// assert_eq!((me.requests, me.inflight, me.errors), (1, 0, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientStatus {
    /// Its slot in the client table.
    pub slot: usize,
    /// Its process id.
    pub pid: u32,
    /// Requests in flight now.
    pub inflight: u32,
    /// Requests it sent.
    pub requests: u64,
    /// Error answers it got.
    pub errors: u64,
    /// Pool chunks it holds now, per size class (in the order of [`ServiceStatus::pool`]):
    /// requests it is writing, answers and stream parts it has not read yet. Stream parts and
    /// requests stay within the class's [`share`](PoolClassStatus::share); final answers always
    /// go (one per request in flight), so a client may hold its share plus those.
    pub held: Vec<u32>,
    /// Why the server disconnected it, if it did (it broke its rings; the slot is freed when it
    /// closes or dies).
    pub disconnected: Option<String>,
}

/// One size class of the shared pool.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-pool-class-status-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use shm_runtime::status;
///
/// let held = client.embed("echo", &["a text"])?; // its answer's chunk is in use while it lives
/// let s = status(&name)?;
/// let in_use: u32 = s.pool.iter().map(|class| class.count - class.free).sum();
/// assert!(in_use >= 1);
/// for c in &s.pool {
///     println!("{} B chunks: {} of {} free, {} a client", c.chunk_size, c.free, c.count, c.share);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolClassStatus {
    /// Bytes per chunk.
    pub chunk_size: usize,
    /// Chunks free now.
    pub free: u32,
    /// Chunks in the class.
    pub count: u32,
    /// Most chunks ever in use at once.
    pub high_water: u32,
    /// Most chunks of the class one client may hold at once.
    pub share: u32,
}

/// A snapshot of a service: see [`status`].
///
/// # Examples
///
/// ```
/// # let name = format!("doc-service-status-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use shm_runtime::{status, GenerateOptions};
///
/// client.generate("echo", "hi", &GenerateOptions::default())?;
/// let s = status(&name)?;
/// assert!(s.server_alive);
/// assert_eq!(s.server_pid, std::process::id()); // a server of this very process
/// assert_eq!(s.requests, 1 + 1); // the warm-up request, and ours
/// assert_eq!(s.errors.values().sum::<u64>(), 0);
/// println!("{}", serde_json::to_string_pretty(&s)?); // what `shm-runtime status --json` prints
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub service: String,
    /// Where its server stands.
    pub state: ServiceState,
    /// Whether the server process is alive (it holds its segment's lock and is not stopped).
    pub server_alive: bool,
    /// The server's process id.
    pub server_pid: u32,
    /// Requests taken from the rings.
    pub requests: u64,
    /// Requests answered with a result.
    pub ok: u64,
    /// Error answers by kind (`invalid_request`, `busy`, ...).
    pub errors: BTreeMap<&'static str, u64>,
    /// Dead clients whose slots were reclaimed.
    pub clients_reaped: u64,
    /// Clients the server disconnected because they broke their rings.
    pub clients_ejected: u64,
    /// Chunks returned to the pool from dead clients.
    pub chunks_reclaimed: u64,
    /// Request latencies: bucket `i` counts those of `2^i` to `2^(i+1)` microseconds.
    pub latency_us_log2_buckets: Vec<u64>,
    /// The model lanes.
    pub lanes: Vec<LaneStatus>,
    /// Client slots the service has.
    pub max_clients: usize,
    /// The connected clients.
    pub clients: Vec<ClientStatus>,
    /// The pool's size classes.
    pub pool: Vec<PoolClassStatus>,
    /// Processes registered with the pool (the server and each connected client).
    pub pool_owners: u32,
}

/// The snake-case name of an error kind, as [`ServiceStatus::errors`] keys it.
///
/// # Examples
///
/// ```
/// use shm_runtime::error_name;
/// use shm_runtime::protocol::ErrorCode;
///
/// assert_eq!(error_name(ErrorCode::TimedOut), "timed_out");
/// assert_eq!(error_name(ErrorCode::ResourceExhausted), "resource_exhausted");
/// ```
pub fn error_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::ModelNotFound => "model_not_found",
        ErrorCode::Busy => "busy",
        ErrorCode::TimedOut => "timed_out",
        ErrorCode::Cancelled => "cancelled",
        ErrorCode::Backend => "backend",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::ResourceExhausted => "resource_exhausted",
    }
}

/// Reads the state and counters of service `name`, also when its server has died (its segment is
/// still there).
///
/// # Errors
///
/// [`Error::Attach`] when there is no such segment, it belongs to another user, or it is not a
/// service of this protocol.
///
/// # Examples
///
/// ```
/// use shm_runtime::{status, ModelConfig, Server, ServerConfig, ServiceState};
///
/// # let name = format!("doc-status-{}", std::process::id());
/// let server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
/// let s = status(&name)?;
/// assert_eq!((s.state, s.lanes.len()), (ServiceState::Running, 1));
/// server.shutdown(std::time::Duration::ZERO);
/// assert!(status(&name).is_err()); // the segment is gone with its server
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn status(name: &str) -> Result<ServiceStatus, Error> {
    let svc = Service::open(name).map_err(Error::Attach)?;
    let pool = shm_ring::pool::Pool::attach(&svc.pool_region())
        .map_err(|e| Error::Attach(format!("reading the pool of service {name:?}: {e}")))?;
    Ok(snapshot(name, &svc, &pool))
}

fn snapshot(name: &str, svc: &Service, live: &shm_ring::pool::Pool) -> ServiceStatus {
    let pool = &live.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let header = svc.header();
    let stats = svc.stats();
    let state = match header.state.load(Ordering::Acquire) {
        STATE_STARTING => ServiceState::Starting,
        STATE_RUNNING => ServiceState::Running,
        STATE_DRAINING => ServiceState::Draining,
        _ => ServiceState::Stopped,
    };
    let lanes = (0..svc.layout.lanes)
        .map(|l| {
            let lane = svc.lane(l);
            LaneStatus {
                model: svc.model_name(l),
                state: match lane.state.load(Ordering::Acquire) {
                    LANE_SERVING => LaneState::Serving,
                    _ => LaneState::Failed,
                },
                model_state: crate::client::health::model_state(svc, l, l),
                queued: lane.queued(),
                running: lane.running(),
                accepted: load(&lane.accepted),
                completed: load(&lane.completed),
                batches: load(&lane.batches),
                batched: load(&lane.batched),
                panics: load(&lane.panics),
                restarts: load(&lane.restarts),
                metrics: svc.lane_metrics(l).snapshot(),
            }
        })
        .collect();
    let clients = (0..svc.layout.max_clients)
        .filter_map(|slot| {
            let entry = svc.client(slot);
            let token = entry.token.load(Ordering::Relaxed);
            (token != 0).then(|| ClientStatus {
                slot,
                pid: (token >> 32) as u32,
                inflight: entry.inflight.load(Ordering::Relaxed),
                requests: load(&entry.requests),
                errors: load(&entry.errors),
                held: OwnerId::from_raw(entry.owner.load(Ordering::Relaxed))
                    .map(|o| live.held_by_class(o))
                    .unwrap_or_else(|| vec![0; pool.classes.len()]),
                disconnected: (entry.state.load(Ordering::Acquire) == CLIENT_EJECTED).then(|| {
                    EjectReason::from_u32(entry.ejected.load(Ordering::Acquire))
                        .map_or_else(|| "unknown reason".to_owned(), |r| r.to_string())
                }),
            })
        })
        .collect();
    let errors = (1..=u8::MAX)
        .map_while(ErrorCode::from_u8)
        .filter_map(|code| {
            let count = stats.errors.get(code as usize)?;
            Some((error_name(code), load(count)))
        })
        .collect();
    ServiceStatus {
        service: name.to_owned(),
        state,
        server_alive: svc.server_alive(),
        server_pid: header.server_pid.load(Ordering::Relaxed),
        requests: load(&stats.requests),
        ok: load(&stats.ok),
        errors,
        clients_reaped: load(&stats.clients_reaped),
        clients_ejected: load(&stats.clients_ejected),
        chunks_reclaimed: load(&stats.chunks_reclaimed),
        latency_us_log2_buckets: stats.latency_us_log2.iter().map(load).collect(),
        lanes,
        max_clients: svc.layout.max_clients,
        clients,
        pool_owners: pool.owners,
        pool: pool
            .classes
            .iter()
            .map(|c| PoolClassStatus {
                chunk_size: c.chunk_size,
                free: c.free,
                count: c.count,
                high_water: c.high_water,
                share: c.share,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_a_distinct_name() {
        let names: std::collections::BTreeSet<_> = (1..=u8::MAX)
            .map_while(ErrorCode::from_u8)
            .map(error_name)
            .collect();
        assert_eq!(names.len(), 8);
    }
}
