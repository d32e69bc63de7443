//! The server: creates the service segment, loads the models, and runs the lanes' workers and a
//! housekeeper.
//!
//! A worker of lane `l` takes requests from every active client's request ring for `l` (a few per
//! client per round, round-robin), checks each request's head, queues it in its [`Scheduler`],
//! and runs the most urgent queued job after validating the whole request. Results are serialized
//! straight into a response chunk, given to the client's pool owner and announced on the client's
//! response ring. The housekeeper notices dead clients and returns everything they held.
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | [`Server`]: start (checks, models, segment, threads) and stop (drain) |
//! | `state.rs` | what the threads share: flags, the model lanes, cancel sets, transfer queues |
//! | `setup.rs` | the layout of a new service segment |
//! | `housekeeper.rs` | dead clients and dead pool owners |
//! | `recovery.rs` | a backend that panics: containment, restart of the lane's backend, failure |
//! | `pinning.rs` | which CPU each worker is pinned to (the configured cores, the automatic rule) |
//! | `worker/` | a lane worker: its loop, intake, books, answers and execution modes |
//!
//! [`Scheduler`]: crate::scheduler::Scheduler

mod builder;
mod housekeeper;
mod pinning;
mod recovery;
mod setup;
mod state;
mod warmup;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shm_ring::pool::Pool;
use shm_ring::{CreateOptions, Segment};

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::protocol::PROTOCOL_VERSION;
use crate::service::{Layout, SEGMENT_MODE, STATE_DRAINING, STATE_RUNNING, STATE_STOPPED};
pub use builder::ServerBuilder;
use state::{ModelLane, ServerState};

/// A running server. Dropping it drains for up to 5 seconds and stops.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::{Client, GenerateOptions, ModelConfig, Server, ServerConfig};
///
/// # let name = format!("doc-server-{}", std::process::id());
/// let config = ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]);
/// let server = Server::start(config)?; // serves from its own threads until dropped
/// let client = Client::connect(&name)?; // from this process or any other of the same user
/// assert_eq!(client.generate("echo", "hi", &GenerateOptions::default())?.text, "hi");
/// server.shutdown(Duration::from_secs(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    state: Arc<ServerState>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.state.config.name)
            .field("lanes", &self.state.lanes.len())
            .finish()
    }
}

impl Server {
    /// Creates the service segment, loads the models and starts the workers.
    ///
    /// # Errors
    ///
    /// [`ServerError`]: a bad configuration, a model that does not load, a service name held by a
    /// live server.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    ///
    /// # let name = format!("doc-server-start-{}", std::process::id());
    /// let models = vec![ModelConfig::new("echo", "echo"), ModelConfig::new("slow", "sleep")];
    /// let server = Server::start(ServerConfig::new(&name, models))?;
    /// // Returned once every model answered its warm-up inference: ready for clients.
    /// let client = Client::connect(server.name())?;
    /// assert!(client.health(Duration::from_secs(1))?.is_ready());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let state = Arc::new(prepare(config)?);
        let threads = spawn_threads(&state)?;
        state
            .svc
            .header()
            .state
            .store(STATE_RUNNING, Ordering::Release);
        warmup::warm_up(&state);
        tracing::info!(
            service = %state.config.name,
            models = ?state.config.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
            bytes = state.svc.layout.total,
            "serving"
        );
        Ok(Server { state, threads })
    }

    /// The service name.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    ///
    /// # let name = format!("doc-server-name-{}", std::process::id());
    /// let models = vec![ModelConfig::new("echo", "echo")];
    /// let server = Server::start(ServerConfig::new(&name, models))?;
    /// assert_eq!(server.name(), name);
    /// let client = Client::connect(server.name())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// The server's own handle to the service's pool (its mapping of the segment), for in-process
    /// tests whose client threads must write chunks through the same addresses the workers read
    /// (ThreadSanitizer tells accesses apart by address). Not a stable interface.
    #[doc(hidden)]
    pub fn pool(&self) -> &shm_ring::pool::Pool {
        &self.state.pool
    }

    /// Cancels recorded and not yet forgotten, over all lanes (for tests).
    #[doc(hidden)]
    pub fn cancels_pending(&self) -> usize {
        self.state.lanes.iter().map(|l| l.cancels.len()).sum()
    }

    /// Stops taking new requests, lets queued and running ones finish until `grace` has passed,
    /// answers the rest `ShuttingDown`, then stops every thread and removes the segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::{Client, Error, GenerateOptions, ModelConfig, Server, ServerConfig};
    ///
    /// # let name = format!("doc-shutdown-{}", std::process::id());
    /// let models = vec![ModelConfig::new("echo", "echo")];
    /// let server = Server::start(ServerConfig::new(&name, models))?;
    /// let client = Client::connect(&name)?;
    /// server.shutdown(Duration::from_secs(5)); // nothing in flight: returns at once
    /// let r = client.generate("echo", "hi", &GenerateOptions::default());
    /// assert!(matches!(r, Err(Error::ServerGone)));
    /// assert!(matches!(Client::connect(&name), Err(Error::ServiceNotFound(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        let state = &self.state;
        if state.exit.load(Ordering::Acquire) {
            return;
        }
        let grace_end = Instant::now() + grace;
        // SYNC(draining): Release; pairs with the Acquire in the worker's intake. The flags are
        // one-way switches read on every request: no data rides on them beyond "stop".
        state.draining.store(true, Ordering::Release);
        state
            .svc
            .header()
            .state
            .store(STATE_DRAINING, Ordering::Release);
        state.wake_workers();
        // Wait until every queue is empty and nothing runs (or the grace period and a margin end).
        let hard = Instant::now() + grace + Duration::from_secs(2);
        while Instant::now() < hard {
            if Instant::now() >= grace_end && !state.drain_expired.load(Ordering::Relaxed) {
                // SYNC(drain_expired): pairs with the Acquire loads in the worker's books
                // (`begin`) and its run context (`should_stop`).
                state.drain_expired.store(true, Ordering::Release);
                state.wake_workers();
            }
            let busy = (0..state.lanes.len()).any(|l| {
                let counters = state.svc.lane(l);
                counters.queued() > 0 || counters.running() > 0
            });
            if !busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        state
            .svc
            .header()
            .state
            .store(STATE_STOPPED, Ordering::Release);
        // SYNC(exit): Release after the STOPPED state; pairs with the Acquire in the worker loop
        // and the housekeeper (the Relaxed load in the wait condition only ends a wait early).
        state.exit.store(true, Ordering::Release);
        state.wake_workers();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(service = %state.config.name, "stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Everything but the threads: checks the configuration, loads the models, creates and lays
/// out the service segment, and registers the server's pool owner. The segment's state stays
/// `starting` until the workers run.
pub(crate) fn prepare(mut config: ServerConfig) -> Result<ServerState, ServerError> {
    // Every client registers one pool owner and the server one more: with fewer entries the
    // last client slots could never be used.
    config.pool.max_owners = config.pool.max_owners.max(config.max_clients as u32 + 1);
    // The name first: nothing is loaded for a name that cannot be served.
    if !shm_ring::segment::validate_name(&config.name) {
        return Err(ServerError::Segment {
            name: config.name.clone(),
            source: shm_ring::CreateError::InvalidName(config.name.clone()),
        });
    }
    config.validate()?;
    let mut lanes = Vec::new();
    for m in &config.models {
        let loaded = recovery::load(m, &config.backends).map_err(|source| ServerError::Model {
            name: m.name.clone(),
            source,
        })?;
        lanes.push(ModelLane::new(
            m,
            &config.backends,
            loaded,
            m.workers(&config),
        ));
    }
    let layout = Layout::new(
        config.max_clients,
        lanes.len(),
        config.ring_capacity,
        &config.pool,
    );
    let mut opts = CreateOptions::new(layout.total);
    opts.user_version = PROTOCOL_VERSION;
    opts.mode = SEGMENT_MODE;
    let seg = Segment::create(&config.name, &opts).map_err(|source| ServerError::Segment {
        name: config.name.clone(),
        source,
    })?;
    let svc = setup::init_segment(Arc::new(seg), &layout, &config, &lanes)?;
    let pool = Pool::attach(&svc.pool_region())
        .map_err(|e| ServerError::setup("cannot attach to the pool", Some(e.into())))?;
    let owner = pool.register_unlimited_owner().map_err(|e| {
        ServerError::setup("cannot register the server's pool owner", Some(e.into()))
    })?;
    Ok(ServerState {
        svc,
        pool,
        owner,
        lanes,
        config,
        draining: AtomicBool::new(false),
        drain_expired: AtomicBool::new(false),
        exit: AtomicBool::new(false),
        workers_running: AtomicU32::new(0),
    })
}

/// Starts every lane's workers (each pinned to its CPU of the [`pinning::place`]ment, if any)
/// and the housekeeper.
fn spawn_threads(state: &Arc<ServerState>) -> Result<Vec<JoinHandle<()>>, ServerError> {
    let config = &state.config;
    // The threads a run of each worker keeps busy, in start order.
    let threads: Vec<usize> = state
        .lanes
        .iter()
        .zip(&config.models)
        .flat_map(|(lane, model)| {
            let n = lane.backend.current().backend.map_or(1, |b| b.threads());
            std::iter::repeat_n(n, model.workers(config))
        })
        .collect();
    let workers = threads.len();
    let placement = pinning::place(config, &threads, &pinning::allowed_cpus());
    tracing::info!(
        service = %config.name,
        workers,
        cpus = ?placement.cpus,
        "workers {}: {}",
        if placement.cpus.iter().any(Option::is_some) {
            "pinned"
        } else {
            "not pinned"
        },
        placement.reason
    );
    let mut cpus = placement.cpus.into_iter();
    let mut threads = Vec::new();
    for lane in 0..state.lanes.len() {
        for index in 0..config.models[lane].workers(config) {
            let core = cpus.next().flatten();
            let state = state.clone();
            state.workers_running.fetch_add(1, Ordering::AcqRel);
            let thread = std::thread::Builder::new()
                .name(format!("lane{lane}-w{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                            tracing::warn!(core, "could not pin worker");
                        }
                    }
                    worker::serve(&state, lane, index);
                    state.workers_running.fetch_sub(1, Ordering::AcqRel);
                })
                .map_err(|e| ServerError::setup("cannot start a worker thread", Some(e.into())))?;
            threads.push(thread);
        }
    }
    let state = state.clone();
    let housekeeper = std::thread::Builder::new()
        .name("housekeeper".into())
        .spawn(move || housekeeper::run(&state))
        .map_err(|e| ServerError::setup("cannot start the housekeeper thread", Some(e.into())))?;
    threads.push(housekeeper);
    Ok(threads)
}
