//! The server: creates the service segment, loads the models, and runs the lanes' workers and a
//! housekeeper.
//!
//! A worker of lane `l` takes requests from every active client's request ring for `l` (a few per
//! client per round, round-robin), validates each in place, queues it in the lane's [`Scheduler`],
//! and runs the most urgent queued job. Results are serialized straight into a response chunk,
//! handed to the client's pool owner and announced on the client's response ring. The housekeeper
//! notices dead clients and returns everything they held.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shm_ring::pool::{ChunkId, Loan, OwnerId, Pool};
use shm_ring::process::ProcessToken;
use shm_ring::{mpmc, CreateOptions, Segment};

use crate::backend::{self, Backend, BackendError, Batching, RunContext, StepEvent, Stepper, Stop};
use crate::config::{ModelConfig, ServerConfig};
use crate::output::{GenerationState, Out};
use crate::protocol::{
    access_request_chunk, desc, parse_desc, read_request_head, ticket_of_epoch, ArchivedRequest,
    Body, Desc, DescKind, ErrorBody, ErrorCode, FinishReason, Response, StreamChunk,
    PROTOCOL_VERSION,
};
use crate::scheduler::{Job, Scheduler};
use crate::service::{
    self, Layout, Service, CLIENT_ACTIVE, CLIENT_FREE, MAX_CLIENTS, MAX_MODELS, MAX_NAME,
    RING_PARTICIPANTS, SERVICE_MAGIC, STATE_DRAINING, STATE_RUNNING, STATE_STOPPED,
};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A model could not be loaded.
    #[error("cannot load model {name:?}: {reason}")]
    Model {
        /// The model.
        name: String,
        /// Why.
        reason: String,
    },
    /// The segment could not be created (name in use by a live server, permissions...).
    #[error("cannot create service {name:?}: {source}")]
    Segment {
        /// Service name.
        name: String,
        /// The cause.
        source: shm_ring::CreateError,
    },
    /// Setting up a structure in the segment failed.
    #[error("cannot set up the service segment: {0}")]
    Setup(String),
}

/// Builds the backend a model configuration names.
///
/// # Errors
///
/// For an unknown backend or bad options.
pub fn load_backend(m: &ModelConfig) -> Result<Box<dyn Backend>, String> {
    match m.backend.as_str() {
        "echo" => Ok(Box::new(backend::echo::Echo)),
        "sleep" => {
            let ms = match m.options.get("step_ms") {
                None => 10.0,
                Some(v) => v
                    .as_float()
                    .or_else(|| v.as_integer().map(|i| i as f64))
                    .ok_or("option step_ms must be a number")?,
            };
            if !(0.0..=60_000.0).contains(&ms) {
                return Err(format!("step_ms {ms} out of range 0..=60000"));
            }
            let slots = match m.options.get("slots") {
                None => None,
                Some(v) => match v.as_integer() {
                    Some(n @ 1..=64) => Some(n as usize),
                    _ => return Err("option slots must be an integer in 1..=64".into()),
                },
            };
            Ok(Box::new(backend::sleep::Sleep {
                step: Duration::from_secs_f64(ms / 1000.0),
                slots,
            }))
        }
        #[cfg(feature = "onnx")]
        "onnx" => Ok(Box::new(backend::onnx::Onnx::load(m)?)),
        #[cfg(not(feature = "onnx"))]
        "onnx" => Err("backend onnx needs the onnx feature (cargo build --features onnx)".into()),
        #[cfg(feature = "gguf")]
        "gguf" => Ok(Box::new(backend::gguf::Gguf::load(m)?)),
        #[cfg(not(feature = "gguf"))]
        "gguf" => Err("backend gguf needs the gguf feature (cargo build --features gguf)".into()),
        other => Err(format!(
            "unknown backend {other:?} (built in: echo, sleep; onnx and gguf need their features)"
        )),
    }
}

struct Lane {
    name: String,
    backend: Box<dyn Backend>,
    cancels: Mutex<HashSet<(u16, u32, u32)>>,
    cancels_pending: AtomicUsize,
    /// Per worker of the lane: its sequences, running and queued (published by lanes whose
    /// workers each decode step by step, so that new requests go to the least loaded one).
    /// SYNC(loads): Relaxed; advisory counts that steer choices, nothing is published through them.
    loads: Box<[AtomicU32]>,
    /// Jobs a worker of such a lane queued but cannot start, handed to one with a free slot.
    handoff: Mutex<VecDeque<Job>>,
    /// SYNC(handoff): the queue's length, stored under its mutex and read without it as a hint
    /// (a stale read only delays a take by one round); the jobs move under the mutex.
    handoff_len: AtomicUsize,
}

struct Shared {
    svc: Service,
    pool: Pool,
    owner: OwnerId,
    lanes: Vec<Lane>,
    config: ServerConfig,
    /// Set when draining starts; requests arriving later are answered `ShuttingDown`.
    draining: AtomicBool,
    /// Set by `stop` when the grace period has passed: queued and running work is answered
    /// `ShuttingDown` (a flag, so workers read no clock for it).
    drain_expired: AtomicBool,
    /// Workers and housekeeper exit.
    exit: AtomicBool,
    workers_running: AtomicU32,
}

/// A running server. Dropping it drains for up to 5 seconds and stops.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.shared.config.name)
            .field("lanes", &self.shared.lanes.len())
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
    pub fn start(mut config: ServerConfig) -> Result<Server, ServerError> {
        // Every client registers one pool owner and the server one more: with fewer entries the
        // last client slots could never be used.
        config.pool.max_owners = config.pool.max_owners.max(config.max_clients as u32 + 1);
        let c = &config;
        // The name first: nothing is loaded for a name that cannot be served.
        if !shm_ring::segment::validate_name(&c.name) {
            return Err(ServerError::Segment {
                name: c.name.clone(),
                source: shm_ring::CreateError::InvalidName(c.name.clone()),
            });
        }
        if c.ring_capacity < 2 {
            return Err(ServerError::Config(
                "ring_capacity must be at least 2".into(),
            ));
        }
        // A descriptor carries a length of 24 bits: larger chunks would have their answers and
        // requests cut short.
        if c.pool
            .classes
            .iter()
            .any(|k| k.chunk_size > crate::protocol::MAX_DESC_LEN)
        {
            return Err(ServerError::Config(format!(
                "pool chunks must be at most {} bytes (a descriptor's length field)",
                crate::protocol::MAX_DESC_LEN
            )));
        }
        if c.models.is_empty() {
            return Err(ServerError::Config("no models configured".into()));
        }
        if c.models.len() > MAX_MODELS {
            return Err(ServerError::Config(format!(
                "{} models; at most {MAX_MODELS}",
                c.models.len()
            )));
        }
        if c.max_clients == 0 || c.max_clients > MAX_CLIENTS {
            return Err(ServerError::Config(format!(
                "max_clients must be 1..={MAX_CLIENTS}"
            )));
        }
        let workers: usize = c.models.iter().map(|m| m.workers(c)).sum();
        if c.models.iter().any(|m| m.workers(c) == 0) || workers + 2 > RING_PARTICIPANTS {
            return Err(ServerError::Config(format!(
                "every model needs at least one worker, and all models together at most {} \
                 (workers_per_lane, or the model's workers); {workers} asked",
                RING_PARTICIPANTS - 2
            )));
        }
        let mut names = HashSet::new();
        for m in &c.models {
            if m.name.is_empty() || m.name.len() > MAX_NAME || !names.insert(m.name.clone()) {
                return Err(ServerError::Config(format!(
                    "model names must be unique and 1..={MAX_NAME} bytes: {:?}",
                    m.name
                )));
            }
        }
        let mut lanes = Vec::new();
        for m in &c.models {
            let backend = load_backend(m).map_err(|reason| ServerError::Model {
                name: m.name.clone(),
                reason,
            })?;
            lanes.push(Lane {
                name: m.name.clone(),
                backend,
                cancels: Mutex::new(HashSet::new()),
                cancels_pending: AtomicUsize::new(0),
                loads: (0..m.workers(c)).map(|_| AtomicU32::new(0)).collect(),
                handoff: Mutex::new(VecDeque::new()),
                handoff_len: AtomicUsize::new(0),
            });
        }
        let layout = Layout::new(c.max_clients, lanes.len(), c.ring_capacity, &c.pool);
        let mut opts = CreateOptions::new(layout.total);
        opts.user_version = PROTOCOL_VERSION;
        let seg = Segment::create(&c.name, &opts).map_err(|source| ServerError::Segment {
            name: c.name.clone(),
            source,
        })?;
        let svc = init_segment(Arc::new(seg), &layout, c, &lanes)?;
        let pool =
            Pool::attach(&svc.pool_region()).map_err(|e| ServerError::Setup(e.to_string()))?;
        let owner = pool
            .register_owner()
            .map_err(|e| ServerError::Setup(e.to_string()))?;
        let shared = Arc::new(Shared {
            svc,
            pool,
            owner,
            lanes,
            config: config.clone(),
            draining: AtomicBool::new(false),
            drain_expired: AtomicBool::new(false),
            exit: AtomicBool::new(false),
            workers_running: AtomicU32::new(0),
        });
        let mut threads = Vec::new();
        let mut core_i = 0;
        for lane in 0..shared.lanes.len() {
            for w in 0..config.models[lane].workers(&config) {
                let core = config
                    .cores
                    .get(core_i % config.cores.len().max(1))
                    .copied();
                core_i += 1;
                let sh = shared.clone();
                sh.workers_running.fetch_add(1, Ordering::AcqRel);
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("lane{lane}-w{w}"))
                        .spawn(move || {
                            if let Some(core) = core {
                                if !core_affinity::set_for_current(core_affinity::CoreId {
                                    id: core,
                                }) {
                                    tracing::warn!(core, "could not pin worker");
                                }
                            }
                            Worker::new(&sh, lane, w).with_stepper().run();
                            sh.workers_running.fetch_sub(1, Ordering::AcqRel);
                        })
                        .map_err(|e| ServerError::Setup(e.to_string()))?,
                );
            }
        }
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("housekeeper".into())
                .spawn(move || housekeeper(&sh))
                .map_err(|e| ServerError::Setup(e.to_string()))?,
        );
        shared
            .svc
            .header()
            .state
            .store(STATE_RUNNING, Ordering::Release);
        tracing::info!(
            service = %config.name,
            models = ?config.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
            bytes = layout.total,
            "serving"
        );
        Ok(Server { shared, threads })
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Stops taking new requests, lets queued and running ones finish until `grace` has passed,
    /// answers the rest `ShuttingDown`, then stops every thread and removes the segment.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        let sh = &self.shared;
        if sh.exit.load(Ordering::Acquire) {
            return;
        }
        let grace_end = Instant::now() + grace;
        // SYNC(draining): Release; pairs with the Acquire in `Worker::accept`. The flags are
        // one-way switches read on every request: no data rides on them beyond "stop".
        sh.draining.store(true, Ordering::Release);
        sh.svc
            .header()
            .state
            .store(STATE_DRAINING, Ordering::Release);
        wake_workers(sh);
        // Wait until every queue is empty and nothing runs (or the grace period and a margin end).
        let hard = Instant::now() + grace + Duration::from_secs(2);
        while Instant::now() < hard {
            if Instant::now() >= grace_end && !sh.drain_expired.load(Ordering::Relaxed) {
                // SYNC(drain_expired): pairs with the Acquire loads in `run_job` and `should_stop`.
                sh.drain_expired.store(true, Ordering::Release);
                wake_workers(sh);
            }
            let busy = (0..sh.lanes.len()).any(|l| {
                let lh = sh.svc.lane(l);
                lh.queued() > 0 || lh.running() > 0
            });
            if !busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sh.svc
            .header()
            .state
            .store(STATE_STOPPED, Ordering::Release);
        // SYNC(exit): Release after the STOPPED state; pairs with the Acquire in the worker loop
        // and the housekeeper (the Relaxed load in the wait condition only ends a wait early).
        sh.exit.store(true, Ordering::Release);
        wake_workers(sh);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(service = %sh.config.name, "stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn wake_workers(sh: &Shared) {
    for l in 0..sh.lanes.len() {
        sh.svc.lane(l).doorbell.notify();
    }
}

fn init_segment(
    seg: Arc<Segment>,
    layout: &Layout,
    c: &ServerConfig,
    lanes: &[Lane],
) -> Result<Service, ServerError> {
    let region = shm_ring::Region::new(seg.clone());
    let setup = |e: String| ServerError::Setup(e);
    let hdr = region
        .ptr_at::<service::ServiceHeader>(0)
        .ok_or_else(|| setup("segment too small".into()))?;
    // SAFETY: the segment was just created by us, is zero-filled and nobody can attach before the
    // magic is published; the header is atomics only (zero is a valid value of each).
    let h = unsafe { hdr.as_ref() };
    h.protocol.store(PROTOCOL_VERSION, Ordering::Relaxed);
    h.max_clients
        .store(layout.max_clients as u32, Ordering::Relaxed);
    h.lanes.store(layout.lanes as u32, Ordering::Relaxed);
    h.models.store(lanes.len() as u32, Ordering::Relaxed);
    h.ring_capacity.store(
        layout.ring_capacity.next_power_of_two() as u32,
        Ordering::Relaxed,
    );
    h.server_pid.store(std::process::id(), Ordering::Relaxed);
    h.ring_bytes
        .store(layout.ring_bytes as u64, Ordering::Relaxed);
    h.pool_offset.store(layout.pool as u64, Ordering::Relaxed);
    h.pool_bytes
        .store(layout.pool_bytes as u64, Ordering::Relaxed);
    h.max_inflight.store(c.max_inflight, Ordering::Relaxed);
    for c_ in 0..layout.max_clients {
        let resp = region
            .slice(layout.response_ring(c_), layout.ring_bytes)
            .map_err(|e| setup(e.to_string()))?;
        mpmc::init::<Desc>(&resp, layout.ring_capacity, RING_PARTICIPANTS)
            .map_err(|e| setup(e.to_string()))?;
        for l in 0..layout.lanes {
            let req = region
                .slice(layout.request_ring(c_, l), layout.ring_bytes)
                .map_err(|e| setup(e.to_string()))?;
            mpmc::init::<Desc>(&req, layout.ring_capacity, RING_PARTICIPANTS)
                .map_err(|e| setup(e.to_string()))?;
        }
    }
    let pool_region = region
        .slice(layout.pool, layout.pool_bytes)
        .map_err(|e| setup(e.to_string()))?;
    Pool::init(&pool_region, &c.pool).map_err(|e| setup(e.to_string()))?;
    // Publish: Service::attach checks the magic, so build a Service over the unpublished segment
    // by hand for the model table.
    let svc_tmp = Service {
        region: region.clone(),
        segment: seg.clone(),
        layout: *layout,
    };
    for (i, lane) in lanes.iter().enumerate() {
        let m = svc_tmp.model(i);
        service::write_name(m, &lane.name);
        m.lane.store(i as u32, Ordering::Relaxed);
        m.tasks
            .store(backend::task_mask(lane.backend.tasks()), Ordering::Relaxed);
    }
    // SYNC(magic): Release publishes everything above; pairs with the Acquire in Service::attach.
    h.magic.store(SERVICE_MAGIC, Ordering::Release);
    Service::attach(seg).map_err(|e| setup(e.to_string()))
}

/// Checks clients' liveness about every 10 ms and returns what dead ones held.
fn housekeeper(sh: &Shared) {
    let mut tick: u64 = 0;
    while !sh.exit.load(Ordering::Acquire) {
        tick += 1;
        sh.svc.header().heartbeat.fetch_add(1, Ordering::Relaxed);
        for c in 0..sh.svc.layout.max_clients {
            let e = sh.svc.client(c);
            let raw = e.token.load(Ordering::Acquire);
            let Some(token) = ProcessToken::from_raw(raw) else {
                continue;
            };
            if token.is_alive() {
                continue;
            }
            reap_client(sh, c, raw);
        }
        let (owners, chunks) = sh.pool.reclaim_dead();
        let orphans = if tick % 10 == 0 {
            sh.pool.reclaim_orphans()
        } else {
            0
        };
        if chunks + orphans > 0 {
            sh.svc
                .stats()
                .chunks_reclaimed
                .fetch_add((chunks + orphans) as u64, Ordering::Relaxed);
            tracing::info!(owners, chunks, orphans, "reclaimed chunks of dead owners");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reap_client(sh: &Shared, c: usize, raw: u64) {
    let e = sh.svc.client(c);
    tracing::info!(
        client = c,
        pid = raw >> 32,
        "client died; reclaiming its slot"
    );
    e.state.store(CLIENT_FREE, Ordering::Release);
    sh.svc
        .header()
        .active
        .fetch_and(!(1u64 << c), Ordering::AcqRel);
    // Jobs of the dead epoch are dropped by workers (epoch check); bump it so late answers are not
    // delivered to a successor.
    e.epoch.fetch_add(1, Ordering::AcqRel);
    e.inflight.store(0, Ordering::Release);
    sh.svc.header().clients_gen.fetch_add(1, Ordering::AcqRel);
    for lane in &sh.lanes {
        if lane.cancels_pending.load(Ordering::Acquire) > 0 {
            let mut set = lane.cancels.lock().unwrap_or_else(|p| p.into_inner());
            set.retain(|k| usize::from(k.0) != c);
            lane.cancels_pending.store(set.len(), Ordering::Release);
        }
    }
    // The entry is the client's to write: an owner id naming the server itself would take back
    // every chunk the server holds (answers being written, requests being validated).
    let owner = OwnerId::from_raw(e.owner.load(Ordering::Acquire)).filter(|&o| o != sh.owner);
    // Only while the owner entry is still the dead client's: a process started since may have
    // taken it over (registering before this slot was reaped), and its chunks are its own.
    if let (Some(owner), Some(token)) = (owner, ProcessToken::from_raw(raw)) {
        sh.pool.reclaim_dead_owner(owner, token);
    }
    sh.svc
        .stats()
        .clients_reaped
        .fetch_add(1, Ordering::Relaxed);
    // Free the slot last, and only if nobody took it over meanwhile.
    let _ = e
        .token
        .compare_exchange(raw, 0, Ordering::AcqRel, Ordering::Relaxed);
}

/// The bytes of the archived request in server-owned chunk `id`: in place, or (hardened mode)
/// copied into `private` first so that the client cannot change them after validation.
fn request_bytes<'a>(
    sh: &'a Shared,
    id: ChunkId,
    len: u32,
    private: &'a mut Vec<u128>,
) -> Result<&'a [u8], String> {
    let bytes = sh
        .pool
        .chunk_slice(id, sh.owner)
        .map_err(|e| format!("request chunk unavailable: {e}"))?;
    let len = len as usize;
    if len > bytes.len() {
        return Err(format!(
            "descriptor length {len} exceeds the chunk's {} bytes",
            bytes.len()
        ));
    }
    if !sh.config.hardened {
        return Ok(&bytes[..len]);
    }
    private.clear();
    private.resize(len.div_ceil(16), 0);
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut private[..]);
    dst[..len].copy_from_slice(&bytes[..len]);
    let src: &[u8] = bytemuck::cast_slice(&private[..]);
    Ok(&src[..len])
}

/// Validates job's request (in place, or a private copy in hardened mode): the archive, the
/// limits, that it agrees with the head it was queued by, and that this lane's model does its task.
fn validate<'b>(
    sh: &'b Shared,
    lane: &Lane,
    job: &Job,
    private: &'b mut Vec<u128>,
) -> Result<&'b ArchivedRequest, (ErrorCode, String)> {
    let (head, req) = request_bytes(sh, job.chunk, job.len, private)
        .and_then(|b| access_request_chunk(b, &sh.config.limits))
        .map_err(|msg| (ErrorCode::InvalidRequest, msg))?;
    if head.id != job.request_id || head.priority != job.priority {
        return Err((
            ErrorCode::InvalidRequest,
            "the request head changed after the request was submitted".to_owned(),
        ));
    }
    let mask = backend::task_mask(lane.backend.tasks());
    if req.model.as_str() != lane.name {
        return Err((
            ErrorCode::ModelNotFound,
            format!(
                "request for model {:?} arrived on lane {:?}",
                req.model.as_str(),
                lane.name
            ),
        ));
    }
    if mask & (1 << (req.task.to_native() as u32)) == 0 {
        return Err((
            ErrorCode::ModelNotFound,
            format!("model {:?} does not do task {:?}", lane.name, req.task),
        ));
    }
    Ok(req)
}

/// The wire error for a backend's error.
fn backend_error(e: &BackendError) -> (ErrorCode, String) {
    match e {
        BackendError::Invalid(m) => (ErrorCode::InvalidRequest, m.clone()),
        BackendError::Failed(m) => (ErrorCode::Backend, m.clone()),
        BackendError::Exhausted(m) => (ErrorCode::ResourceExhausted, m.clone()),
        BackendError::Stopped(Stop::Cancelled) => {
            (ErrorCode::Cancelled, "cancelled while running".into())
        }
        BackendError::Stopped(Stop::TimedOut) => (
            ErrorCode::TimedOut,
            "the deadline passed while running".into(),
        ),
        BackendError::Stopped(Stop::ClientGone) => {
            (ErrorCode::Cancelled, "the client has gone".into())
        }
    }
}

struct ClientHandles {
    epoch: u32,
    owner: OwnerId,
    req: mpmc::Consumer<Desc>,
    resp: mpmc::Producer<Desc>,
}

struct Worker<'s> {
    sh: &'s Shared,
    lane: usize,
    /// This worker's index in its lane.
    index: usize,
    clients: Vec<Option<ClientHandles>>,
    /// This worker's accepted jobs (see `scheduler`).
    sched: Scheduler,
    /// Loop rounds, for polling the rings less often when there is a backlog.
    round: u32,
    /// The clock (`scheduler::now_ns`), read after each job, after each wait and at each
    /// `should_stop`: acceptance times and the pre-run deadline check use it, so it is never older
    /// than one round of ring polling (one clock read per job on a busy lane).
    now: u64,
    /// Slots with handles, in slot order.
    attached: Vec<usize>,
    /// `clients_gen` when the client table was last read.
    seen_gen: u64,
    rr: usize,
    /// Answers that did not fit in a client's response ring yet: (client, epoch, descriptor).
    backlog: VecDeque<(usize, u32, Desc)>,
    /// Bit c set: client slot c has answers in `backlog` (its later answers queue behind them).
    backlogged: u64,
    /// Per client slot: when it last sent this lane a request (`now` clock), for batching.
    last_request: Vec<u64>,
    /// The lane's stepper, for backends that decode step by step (continuous batching), or why
    /// it could not be made.
    stepper: Option<Result<Box<dyn Stepper + 's>, String>>,
    /// The stepper's sequences: one per slot.
    active: Vec<Option<Active<'s>>>,
    /// Events of the last step (kept for its allocation).
    events: Vec<StepEvent>,
}

/// A request being decoded by the lane's stepper.
struct Active<'s> {
    job: Job,
    out: Out<'s>,
    gen: GenerationState,
    stream: bool,
    index: u32,
}

/// With at least this many jobs queued, a worker polls the request rings every 4th round only.
const INGEST_BACKLOG: usize = 8;

/// How many descriptors a worker takes from one client's ring per round.
const PER_CLIENT_ROUND: usize = 16;

impl<'s> Worker<'s> {
    fn new(sh: &'s Shared, lane: usize, index: usize) -> Worker<'s> {
        Worker {
            sh,
            lane,
            index,
            clients: (0..sh.svc.layout.max_clients).map(|_| None).collect(),
            sched: Scheduler::new(sh.svc.layout.max_clients),
            round: 0,
            now: crate::scheduler::now_ns(),
            attached: Vec::new(),
            seen_gen: u64::MAX,
            rr: 0,
            backlog: VecDeque::new(),
            backlogged: 0,
            last_request: vec![0; sh.svc.layout.max_clients],
            stepper: None,
            active: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Makes the lane's stepper, when its backend decodes step by step.
    fn with_stepper(mut self) -> Worker<'s> {
        let lane: &'s Lane = &self.sh.lanes[self.lane];
        match lane.backend.stepper() {
            Ok(None) => {}
            Ok(Some(st)) => {
                self.active = (0..st.slots().max(1)).map(|_| None).collect();
                self.stepper = Some(Ok(st));
            }
            Err(e) => {
                tracing::error!(lane = %lane.name, %e, "cannot make the model's stepper");
                self.active = vec![None];
                self.stepper = Some(Err(e.to_string()));
            }
        }
        self
    }

    fn lane(&self) -> &'s Lane {
        &self.sh.lanes[self.lane]
    }

    fn run(mut self) {
        let sh = self.sh;
        let wait = sh.config.wait;
        loop {
            if sh.exit.load(Ordering::Acquire) {
                self.stop_all_active(ErrorCode::ShuttingDown, "the server stopped");
                self.take_handoff(usize::MAX);
                self.answer_all_queued(ErrorCode::ShuttingDown);
                return;
            }
            self.sync_clients();
            self.flush_backlog();
            // Handed-over jobs first: they were accepted before anything still in the rings.
            if self.stepper.is_some() {
                self.balance();
            }
            // With a backlog of jobs, look at the rings only every few rounds: a poll of a ring
            // the client is writing costs a cache-line transfer, and the backlog keeps us busy.
            self.round = self.round.wrapping_add(1);
            let limit = self.ingest_limit();
            let took = if limit > 0 && (self.sched.len() < INGEST_BACKLOG || self.round % 4 == 0) {
                let took = self.ingest(None, limit);
                self.publish_load();
                took
            } else {
                0
            };
            if self.stepper.is_some() {
                if self.step_round() {
                    continue;
                }
            } else if let Some(job) = self.sched.pop() {
                self.run_job(job);
                continue;
            }
            if took > 0 {
                continue;
            }
            // Nothing to do: wait for a doorbell (clients ring it after pushing).
            let lh = sh.svc.lane(self.lane);
            let deadline = Instant::now() + Duration::from_millis(20);
            let this = &self;
            let lane = self.lane();
            let _ = wait.wait_until(&lh.doorbell, deadline, || {
                sh.exit.load(Ordering::Relaxed)
                    || !this.sched.is_empty()
                    || this.any_request_waiting()
                    || lane.handoff_len.load(Ordering::Relaxed) > 0
            });
            self.now = crate::scheduler::now_ns();
        }
    }

    /// Sequences this worker has, running and queued.
    fn load(&self) -> usize {
        self.active.iter().filter(|a| a.is_some()).count() + self.sched.len()
    }

    fn publish_load(&self) {
        if let Some(l) = self.lane().loads.get(self.index) {
            l.store(self.load() as u32, Ordering::Relaxed);
        }
    }

    /// How many descriptors to take from the request rings this round. A lane of several workers
    /// that decode step by step balances them: only a least loaded worker takes requests, one per
    /// round (it then counts it and looks again), so of two requests arriving together each
    /// worker takes one, and a second stream starts on an idle worker's core instead of joining
    /// a busy worker's batch. (The counts are advisory: two workers reading each other at once
    /// may both take one.)
    fn ingest_limit(&self) -> usize {
        let loads = &self.lane().loads;
        if self.stepper.is_none() || loads.len() < 2 {
            return usize::MAX;
        }
        let mine = self.load();
        loads[self.index].store(mine as u32, Ordering::Relaxed);
        let least = loads
            .iter()
            .enumerate()
            .all(|(i, l)| i == self.index || l.load(Ordering::Relaxed) as usize >= mine);
        usize::from(least)
    }

    /// Moves queued jobs between the workers of a lane that decode step by step, so that no job
    /// waits in one worker's queue while another worker has a free slot: a worker with a free
    /// slot takes handed-over jobs; a worker with jobs it cannot start yet hands one over while
    /// another worker has a free slot (one at a time, and not once draining has begun, so that
    /// a job never waits in the hand-over for a worker that has exited).
    fn balance(&mut self) {
        let lane = self.lane();
        if lane.loads.len() < 2 {
            return;
        }
        let slots = self.active.len();
        let free = self.active.iter().filter(|a| a.is_none()).count();
        if free > self.sched.len() {
            if lane.handoff_len.load(Ordering::Acquire) > 0 {
                self.take_handoff(free - self.sched.len());
            }
        } else if self.sched.len() > free
            && lane.handoff_len.load(Ordering::Acquire) == 0
            && !self.sh.draining.load(Ordering::Acquire)
            && lane
                .loads
                .iter()
                .enumerate()
                .any(|(i, l)| i != self.index && (l.load(Ordering::Relaxed) as usize) < slots)
        {
            if let Some(job) = self.sched.pop() {
                let mut q = lane.handoff.lock().unwrap_or_else(|p| p.into_inner());
                q.push_back(job);
                lane.handoff_len.store(q.len(), Ordering::Release);
                drop(q);
                self.sh.svc.lane(self.lane).doorbell.notify();
            }
        }
        self.publish_load();
    }

    /// Takes up to `n` handed-over jobs into this worker's queue.
    ///
    /// A job comes with the epoch of the connection that sent it, read by the worker that
    /// accepted it; this worker's handles may be older (a client that connected since its last
    /// look at the client table) and would then refuse the answer as a departed client's. So the
    /// table is read again for such a job, and a job whose client has left since is dropped like
    /// any other departed client's work.
    fn take_handoff(&mut self, n: usize) {
        let lane = self.lane();
        let jobs: Vec<Job> = {
            let mut q = lane.handoff.lock().unwrap_or_else(|p| p.into_inner());
            let jobs = (0..n).map_while(|_| q.pop_front()).collect();
            lane.handoff_len.store(q.len(), Ordering::Release);
            jobs
        };
        for job in jobs {
            let c = usize::from(job.client);
            let current = |w: &Self| w.clients[c].as_ref().is_some_and(|h| h.epoch == job.epoch);
            if !current(self) {
                self.seen_gen = u64::MAX;
                self.sync_clients();
            }
            if !current(self) {
                self.drop_queued(&job);
                continue;
            }
            if let Err(job) = self.sched.push(job) {
                // Only a client index outside the table is refused, which no accepted job has.
                self.drop_queued(&job);
            }
        }
    }

    fn any_request_waiting(&self) -> bool {
        self.attached
            .iter()
            .any(|&c| self.clients[c].as_ref().is_some_and(|h| !h.req.is_empty()))
    }

    /// Drops the pending jobs of client slot `c` (it left): their chunks go back, nobody is
    /// answered.
    fn drop_pending(&mut self, c: usize) {
        let jobs: Vec<Job> = self.sched.drain_client(c);
        for job in jobs {
            self.drop_queued(&job);
        }
    }

    /// Drops a queued job of a departed client: its chunk goes back, nobody is answered.
    fn drop_queued(&self, job: &Job) {
        self.job_gone();
        let _ = self.sh.pool.release(job.chunk, self.sh.owner);
    }

    /// Counts a queued job that leaves without running (dropped, or answered at exit).
    fn job_gone(&self) {
        let lh = self.sh.svc.lane(self.lane);
        lh.started.fetch_add(1, Ordering::AcqRel);
        lh.completed.fetch_add(1, Ordering::AcqRel);
    }

    /// Attaches to newly active clients and lets go of departed ones, when the client table moved.
    fn sync_clients(&mut self) {
        let gen = self.sh.svc.header().clients_gen.load(Ordering::Acquire);
        if gen == self.seen_gen {
            return;
        }
        self.seen_gen = gen;
        let active = self.sh.svc.header().active.load(Ordering::Acquire);
        for c in 0..self.clients.len() {
            let e = self.sh.svc.client(c);
            let on = active & (1 << c) != 0 && e.state.load(Ordering::Acquire) == CLIENT_ACTIVE;
            let epoch = e.epoch.load(Ordering::Acquire);
            match (&self.clients[c], on) {
                (Some(h), true) if h.epoch == epoch => {}
                (_, true) => {
                    self.drop_pending(c);
                    let owner = OwnerId::from_raw(e.owner.load(Ordering::Acquire));
                    let req = mpmc::Consumer::attach(&self.sh.svc.request_ring(c, self.lane));
                    let resp = mpmc::Producer::attach(&self.sh.svc.response_ring(c));
                    self.clients[c] = match (owner, req, resp) {
                        (Some(owner), Ok(req), Ok(resp)) => Some(ClientHandles {
                            epoch,
                            owner,
                            req,
                            resp,
                        }),
                        _ => {
                            tracing::warn!(client = c, "cannot attach to a client's rings");
                            None
                        }
                    };
                }
                (Some(_), false) => {
                    self.clients[c] = None;
                    self.drop_pending(c);
                }
                (None, false) => {}
            }
        }
        self.attached = (0..self.clients.len())
            .filter(|&c| self.clients[c].is_some())
            .collect();
    }

    /// Takes up to PER_CLIENT_ROUND descriptors from each client (only `only` when given),
    /// round-robin, and at most `limit` in all. Returns how many it took.
    fn ingest(&mut self, only: Option<usize>, limit: usize) -> usize {
        let n = self.attached.len();
        if n == 0 {
            return 0;
        }
        let mut took = 0;
        let start = self.rr % n;
        self.rr = self.rr.wrapping_add(1);
        for k in 0..n {
            // A re-read of the client table below may shorten the list.
            let Some(&c) = self.attached.get((start + k) % n) else {
                break;
            };
            if only.is_some_and(|o| o != c) {
                continue;
            }
            for _ in 0..PER_CLIENT_ROUND {
                if took >= limit {
                    return took;
                }
                let Some(h) = &self.clients[c] else { break };
                let d = match h.req.pop() {
                    Ok(d) => d,
                    Err(_) => break,
                };
                took += 1;
                if !ticket_of_epoch(d[1] as u32, h.epoch) && !self.current_holder_sent(c, d) {
                    // Left in the ring by a previous holder of the slot (its chunks went back
                    // with it), or garbage: nobody to answer.
                    continue;
                }
                self.accept(c, d);
            }
        }
        took
    }

    /// For a descriptor whose ticket is not of this worker's connection to slot `c`: whether it
    /// comes from the slot's current holder, after re-reading the client table. (A worker that is
    /// running a job ingests without looking at the table: the slot may have changed hands
    /// meanwhile, and the new holder's requests must be taken with the new holder's epoch and
    /// owner, never the departed one's.)
    fn current_holder_sent(&mut self, c: usize, d: Desc) -> bool {
        self.seen_gen = u64::MAX;
        self.sync_clients();
        self.clients[c]
            .as_ref()
            .is_some_and(|h| ticket_of_epoch(d[1] as u32, h.epoch))
    }

    fn accept(&mut self, c: usize, d: Desc) {
        let sh = self.sh;
        let Some(h) = &self.clients[c] else { return };
        let (epoch, client_owner) = (h.epoch, h.owner);
        let Some((kind, chunk, len, ticket)) = parse_desc(d) else {
            self.answer_inline(c, epoch, d[1] as u32, ErrorCode::InvalidRequest);
            return;
        };
        match kind {
            DescKind::Cancel => {
                let lane = self.lane();
                let mut set = lane.cancels.lock().unwrap_or_else(|p| p.into_inner());
                if set.len() < 4 * sh.svc.layout.max_clients * sh.config.max_inflight as usize {
                    set.insert((c as u16, epoch, ticket));
                }
                lane.cancels_pending.store(set.len(), Ordering::Release);
                return;
            }
            DescKind::Request => {}
            _ => {
                self.answer_inline(c, epoch, ticket, ErrorCode::InvalidRequest);
                return;
            }
        }
        self.last_request[c] = self.now;
        let e = sh.svc.client(c);
        // Take the chunk: refused if the client does not hold it (stale, forged, double use).
        let id = ChunkId::from_raw(chunk);
        let loan = match sh.pool.adopt(id, client_owner, sh.owner) {
            Ok(l) => l,
            Err(err) => {
                tracing::debug!(client = c, %err, "descriptor names a chunk the client does not hold");
                self.answer_inline(c, epoch, ticket, ErrorCode::InvalidRequest);
                return;
            }
        };
        e.requests.fetch_add(1, Ordering::Relaxed);
        sh.svc.stats().requests.fetch_add(1, Ordering::Relaxed);
        let id = loan.into_id();
        if sh.draining.load(Ordering::Acquire) {
            let _ = sh.pool.release(id, sh.owner);
            self.answer_inline(c, epoch, ticket, ErrorCode::ShuttingDown);
            return;
        }
        let inflight = e.inflight.fetch_add(1, Ordering::AcqRel);
        if inflight >= sh.config.max_inflight {
            e.inflight.fetch_sub(1, Ordering::AcqRel);
            let _ = sh.pool.release(id, sh.owner);
            self.answer_error(
                c,
                epoch,
                ticket,
                0,
                ErrorCode::Busy,
                &format!(
                    "{inflight} requests in flight; the limit is {}",
                    sh.config.max_inflight
                ),
            );
            return;
        }
        // Only the plain head is read now; the archive is validated once, when the job runs.
        let head = sh
            .pool
            .chunk_slice(id, sh.owner)
            .map_err(|e| format!("request chunk unavailable: {e}"))
            .and_then(|b| match b.get(..len as usize) {
                Some(b) => read_request_head(b, &sh.config.limits),
                None => Err(format!(
                    "descriptor length {len} exceeds the chunk's {} bytes",
                    b.len()
                )),
            });
        let (priority, timeout_ms, req_id) = match head {
            Ok(h) => (h.priority, h.timeout_ms, h.id),
            Err(msg) => {
                self.finish_request(c, epoch, id);
                self.answer_error(c, epoch, ticket, 0, ErrorCode::InvalidRequest, &msg);
                return;
            }
        };
        let now = self.now;
        let timeout = if timeout_ms == 0 {
            sh.config.default_timeout
        } else {
            Duration::from_millis(u64::from(timeout_ms))
        };
        let job = Job {
            client: c as u16,
            epoch,
            ticket,
            chunk: id,
            len,
            request_id: req_id,
            priority,
            deadline_ns: now + timeout.as_nanos() as u64,
            accepted_ns: now,
        };
        let lh = sh.svc.lane(self.lane);
        if let Err(job) = self.sched.push(job) {
            self.finish_request(c, epoch, job.chunk);
            self.answer_error(
                c,
                epoch,
                ticket,
                req_id,
                ErrorCode::Busy,
                "no room to queue",
            );
            return;
        }
        // SYNC(accepted): Release, so `queued()` (Acquire) in `stop` never sees a started job
        // without its acceptance.
        lh.accepted.fetch_add(1, Ordering::Release);
    }

    /// Releases a request chunk and the client's in-flight count (if the client is the same).
    fn finish_request(&self, c: usize, epoch: u32, id: ChunkId) {
        let _ = self.sh.pool.release(id, self.sh.owner);
        let e = self.sh.svc.client(c);
        if e.epoch.load(Ordering::Acquire) == epoch {
            let _ = e
                .inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        }
    }

    fn client_alive(&self, c: usize, epoch: u32) -> bool {
        let e = self.sh.svc.client(c);
        e.epoch.load(Ordering::Acquire) == epoch && e.state.load(Ordering::Acquire) == CLIENT_ACTIVE
    }

    fn is_cancelled(&self, c: usize, epoch: u32, ticket: u32) -> bool {
        let lane = self.lane();
        if lane.cancels_pending.load(Ordering::Acquire) == 0 {
            return false;
        }
        let set = lane.cancels.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&(c as u16, epoch, ticket))
    }

    fn forget_cancel(&self, c: usize, epoch: u32, ticket: u32) {
        let lane = self.lane();
        if lane.cancels_pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut set = lane.cancels.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&(c as u16, epoch, ticket));
        lane.cancels_pending.store(set.len(), Ordering::Release);
    }

    fn run_job(&mut self, job: Job) {
        if let Some(b) = self.lane().backend.batching() {
            return self.run_batched(job, b);
        }
        if !self.begin(&job) {
            return;
        }
        let sh = self.sh;
        let lane = self.lane();
        let mut private = Vec::new();
        // The head's id is checked against the archive's, so this is the answer's id.
        let mut out = Out::in_pool(&sh.pool, sh.owner, job.request_id);
        let result = validate(sh, lane, &job, &mut private)
            .and_then(|req| self.run_backend(lane.backend.as_ref(), req, job, &mut out));
        self.end(&job, result, out);
    }

    /// One round of continuous batching: admits queued jobs into free slots, ends sequences that
    /// must stop, and runs one decode step. Returns whether there was anything to do.
    fn step_round(&mut self) -> bool {
        let sh = self.sh;
        let mut did = false;
        while let Some(slot) = self.active.iter().position(Option::is_none) {
            let Some(job) = self.sched.pop() else { break };
            did = true;
            if self.begin(&job) {
                self.admit(slot, job);
            }
        }
        if self.active.iter().all(Option::is_none) {
            return did;
        }
        // Sequences whose client left, that were cancelled, or whose deadline passed.
        let drain_expired = sh.drain_expired.load(Ordering::Acquire);
        for slot in 0..self.active.len() {
            let Some(a) = &self.active[slot] else {
                continue;
            };
            let (c, epoch, ticket) = (usize::from(a.job.client), a.job.epoch, a.job.ticket);
            if !self.client_alive(c, epoch) || self.clients[c].is_none() {
                let a = self.take_active(slot);
                self.drop_job(&a.job);
            } else if self.is_cancelled(c, epoch, ticket) {
                let a = self.take_active(slot);
                let err = (ErrorCode::Cancelled, "cancelled while running".to_owned());
                self.end(&a.job, Err(err), a.out);
            } else if drain_expired {
                let a = self.take_active(slot);
                let err = (
                    ErrorCode::ShuttingDown,
                    "the server is shutting down".to_owned(),
                );
                self.end(&a.job, Err(err), a.out);
            } else if self.now >= a.job.deadline_ns {
                let usage = self
                    .stepper_mut()
                    .map(|st| st.release(slot))
                    .unwrap_or_default();
                let mut a = self.active[slot].take().expect("checked above");
                let res = a
                    .out
                    .resume_generation(a.gen)
                    .finish(FinishReason::Timeout, usage)
                    .map_err(|e| backend_error(&e));
                self.end(&a.job, res, a.out);
            }
        }
        let mut events = std::mem::take(&mut self.events);
        if let Some(st) = self.stepper_mut() {
            st.step(&mut events);
        }
        for ev in events.drain(..) {
            self.on_step_event(ev);
        }
        self.events = events;
        self.now = crate::scheduler::now_ns();
        self.publish_load();
        true
    }

    fn stepper_mut(&mut self) -> Option<&mut (dyn Stepper + 's)> {
        match &mut self.stepper {
            Some(Ok(st)) => Some(st.as_mut()),
            _ => None,
        }
    }

    /// Takes `job` into stepper slot `slot`, or answers it when it cannot run.
    fn admit(&mut self, slot: usize, job: Job) {
        let sh = self.sh;
        let lane = self.lane();
        let mut private = Vec::new();
        let out = Out::in_pool(&sh.pool, sh.owner, job.request_id);
        let admitted = validate(sh, lane, &job, &mut private).and_then(|req| {
            let stream = req.params.stream;
            match &mut self.stepper {
                Some(Ok(st)) => st
                    .admit(slot, req)
                    .map(|a| (a, stream))
                    .map_err(|e| backend_error(&e)),
                Some(Err(e)) => Err((ErrorCode::Backend, e.clone())),
                None => Err((ErrorCode::Backend, "no stepper".to_owned())),
            }
        });
        let (admitted, stream) = match admitted {
            Ok(a) => a,
            Err(e) => return self.end(&job, Err(e), out),
        };
        let mut out = out;
        match out
            .generation(admitted.max_tokens, admitted.max_tokens * 8)
            .map(|g| g.suspend())
        {
            Ok(gen) => {
                self.active[slot] = Some(Active {
                    job,
                    out,
                    gen,
                    stream,
                    index: 0,
                });
            }
            Err(e) => {
                if let Some(st) = self.stepper_mut() {
                    st.release(slot);
                }
                self.end(&job, Err(backend_error(&e)), out);
            }
        }
    }

    /// Frees stepper slot `slot` and takes its request out.
    fn take_active(&mut self, slot: usize) -> Active<'s> {
        if let Some(st) = self.stepper_mut() {
            st.release(slot);
        }
        self.active[slot].take().expect("an active slot")
    }

    fn on_step_event(&mut self, ev: StepEvent) {
        match ev {
            StepEvent::Token { slot, id, text } => {
                let Some(a) = self.active[slot].as_mut() else {
                    return;
                };
                let mut g = a.out.resume_generation(a.gen);
                let pushed = g.push(id, &text);
                a.gen = g.suspend();
                let (c, epoch, ticket, stream) = (
                    usize::from(a.job.client),
                    a.job.epoch,
                    a.job.ticket,
                    a.stream,
                );
                let index = a.index;
                a.index += 1;
                let mut failed = pushed.err().map(|e| backend_error(&e));
                if failed.is_none() && stream {
                    let resp = Response {
                        id: a.job.request_id,
                        body: Body::Chunk(StreamChunk {
                            index,
                            text,
                            tokens: vec![id],
                        }),
                    };
                    if !self.answer(c, epoch, ticket, DescKind::Partial, &resp) {
                        failed = Some((
                            ErrorCode::ResourceExhausted,
                            "no memory for a stream chunk".to_owned(),
                        ));
                    }
                }
                if let Some(err) = failed {
                    let a = self.take_active(slot);
                    self.end(&a.job, Err(err), a.out);
                }
            }
            StepEvent::Done {
                slot,
                finish,
                usage,
                trim,
            } => {
                let Some(mut a) = self.active[slot].take() else {
                    return;
                };
                let mut g = a.out.resume_generation(a.gen);
                let keep = g.text().len().saturating_sub(trim);
                let keep = (0..=keep)
                    .rev()
                    .find(|&k| g.text().is_char_boundary(k))
                    .unwrap_or(0);
                g.truncate_text(keep);
                let res = g.finish(finish, usage).map_err(|e| backend_error(&e));
                self.end(&a.job, res, a.out);
            }
            StepEvent::Failed { slot, error } => {
                if let Some(a) = self.active[slot].take() {
                    self.end(&a.job, Err(backend_error(&error)), a.out);
                }
            }
        }
    }

    /// Ends every running sequence with error `code` (at exit).
    fn stop_all_active(&mut self, code: ErrorCode, msg: &str) {
        for slot in 0..self.active.len() {
            if self.active[slot].is_some() {
                let a = self.take_active(slot);
                let c = usize::from(a.job.client);
                if self.client_alive(c, a.job.epoch) {
                    self.end(&a.job, Err((code, msg.to_owned())), a.out);
                } else {
                    self.drop_job(&a.job);
                }
            }
        }
    }

    /// Drops a started job of a client that has gone: its chunk goes back, nobody is answered.
    fn drop_job(&mut self, job: &Job) {
        let sh = self.sh;
        self.forget_cancel(usize::from(job.client), job.epoch, job.ticket);
        let _ = sh.pool.release(job.chunk, sh.owner);
        sh.svc
            .lane(self.lane)
            .completed
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Runs `first` with up to `b.max_batch - 1` more queued jobs of this lane in one backend call,
    /// waiting up to `b.max_delay` for more while other clients of the lane are active.
    fn run_batched(&mut self, first: Job, b: Batching) {
        let mut jobs = vec![first];
        self.gather(&mut jobs, b);
        jobs.retain(|j| self.begin(j));
        if jobs.is_empty() {
            return;
        }
        let sh = self.sh;
        let lane = self.lane();
        let mut privates: Vec<Vec<u128>> = jobs.iter().map(|_| Vec::new()).collect();
        let mut results: Vec<Option<Result<(), (ErrorCode, String)>>> =
            jobs.iter().map(|_| None).collect();
        let mut reqs = Vec::with_capacity(jobs.len());
        let mut members = Vec::with_capacity(jobs.len());
        for ((i, job), private) in jobs.iter().enumerate().zip(privates.iter_mut()) {
            match validate(sh, lane, job, private) {
                Ok(r) => {
                    reqs.push(r);
                    members.push(i);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut outs: Vec<Out<'_>> = members
            .iter()
            .map(|&i| Out::in_pool(&sh.pool, sh.owner, jobs[i].request_id))
            .collect();
        if !reqs.is_empty() {
            if reqs.len() > 1 {
                let lh = sh.svc.lane(self.lane);
                lh.batches.fetch_add(1, Ordering::Relaxed);
                lh.batched.fetch_add(reqs.len() as u64, Ordering::Relaxed);
            }
            let ran = lane.backend.run_batch(&reqs, &mut outs);
            for (k, &i) in members.iter().enumerate() {
                results[i] = Some(match ran.get(k) {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(backend_error(e)),
                    None => Err((ErrorCode::Backend, "the batch lost a result".to_owned())),
                });
            }
        }
        drop(reqs);
        let mut outs = outs.into_iter();
        for (i, job) in jobs.iter().enumerate() {
            let result = results[i]
                .take()
                .unwrap_or_else(|| Err((ErrorCode::Backend, "no result".to_owned())));
            let out = if members.contains(&i) {
                outs.next()
            } else {
                None
            };
            match out {
                Some(out) => self.end(job, result, out),
                None => self.end(
                    job,
                    result,
                    Out::in_pool(&sh.pool, sh.owner, job.request_id),
                ),
            }
        }
    }

    /// Adds queued jobs to `jobs` up to the batch size. A partial batch waits for more, up to the
    /// batch delay, only while another client sent this lane a request in the last 100 ms (so a
    /// lone client never waits) and requests keep arriving (it stops after 100 us without one).
    fn gather(&mut self, jobs: &mut Vec<Job>, b: Batching) {
        const IDLE_GAP: u64 = 100_000;
        let until = self.now + b.max_delay.as_nanos() as u64;
        let mut last_arrival = self.now;
        loop {
            let before = jobs.len();
            while jobs.len() < b.max_batch {
                match self.sched.pop() {
                    Some(j) => jobs.push(j),
                    None => break,
                }
            }
            if jobs.len() >= b.max_batch || self.sh.exit.load(Ordering::Relaxed) {
                return;
            }
            if jobs.len() > before {
                last_arrival = self.now;
            }
            let recent = self.now.saturating_sub(100_000_000);
            let others = self.attached.iter().any(|&c| {
                self.last_request[c] >= recent && !jobs.iter().any(|j| usize::from(j.client) == c)
            });
            if !others || self.now >= until || self.now - last_arrival > IDLE_GAP {
                return;
            }
            if self.ingest(None, usize::MAX) == 0 {
                std::hint::spin_loop();
            }
            self.now = crate::scheduler::now_ns();
        }
    }

    /// Counts a job as started and answers it without running when its client died, the server is
    /// past its drain, it was cancelled or its deadline passed. Returns whether to run it.
    fn begin(&mut self, job: &Job) -> bool {
        let sh = self.sh;
        let lh = sh.svc.lane(self.lane);
        lh.started.fetch_add(1, Ordering::AcqRel);
        let c = usize::from(job.client);
        if !self.client_alive(c, job.epoch) || self.clients[c].is_none() {
            // The client died: drop its work silently (nobody to answer).
            self.drop_job(job);
            return false;
        }
        let early = if sh.drain_expired.load(Ordering::Acquire) {
            Some((ErrorCode::ShuttingDown, "the server is shutting down"))
        } else if self.is_cancelled(c, job.epoch, job.ticket) {
            Some((ErrorCode::Cancelled, "cancelled before it ran"))
        } else if self.now >= job.deadline_ns {
            Some((ErrorCode::TimedOut, "the deadline passed while queued"))
        } else {
            None
        };
        if let Some((code, msg)) = early {
            self.forget_cancel(c, job.epoch, job.ticket);
            self.finish_request(c, job.epoch, job.chunk);
            self.answer_error(c, job.epoch, job.ticket, job.request_id, code, msg);
            lh.completed.fetch_add(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// After a run: counters, the latency histogram, and the answer (`out`'s, or the error).
    fn end(&mut self, job: &Job, result: Result<(), (ErrorCode, String)>, mut out: Out<'_>) {
        let sh = self.sh;
        let c = usize::from(job.client);
        sh.svc
            .lane(self.lane)
            .completed
            .fetch_add(1, Ordering::AcqRel);
        self.forget_cancel(c, job.epoch, job.ticket);
        self.finish_request(c, job.epoch, job.chunk);
        self.now = crate::scheduler::now_ns();
        let latency = (self.now.saturating_sub(job.accepted_ns) / 1000).max(1);
        let bucket = (63 - latency.leading_zeros()).min(31) as usize;
        sh.svc.stats().latency_us_log2[bucket].fetch_add(1, Ordering::Relaxed);
        let result = result.and_then(|()| {
            out.take_loan().ok_or_else(|| {
                (
                    ErrorCode::Backend,
                    "the backend finished without an answer".to_owned(),
                )
            })
        });
        drop(out);
        match result {
            Ok((loan, len)) => {
                if self.hand_over(c, job.epoch, job.ticket, DescKind::Final, loan, len) {
                    sh.svc.stats().ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err((code, msg)) => {
                self.answer_error(c, job.epoch, job.ticket, job.request_id, code, &msg)
            }
        }
    }

    fn run_backend(
        &mut self,
        backend: &dyn Backend,
        req: &ArchivedRequest,
        job: Job,
        out: &mut Out<'_>,
    ) -> Result<(), (ErrorCode, String)> {
        let req_id = req.id.to_native();
        let mut ctx = Ctx {
            worker: self,
            job,
            req_id,
        };
        backend
            .run(req, &mut ctx, out)
            .map_err(|e| backend_error(&e))
    }

    fn answer_error(
        &mut self,
        c: usize,
        epoch: u32,
        ticket: u32,
        id: u64,
        code: ErrorCode,
        msg: &str,
    ) {
        let sh = self.sh;
        sh.svc.stats().errors[code as usize].fetch_add(1, Ordering::Relaxed);
        sh.svc.client(c).errors.fetch_add(1, Ordering::Relaxed);
        let resp = Response {
            id,
            body: Body::Error(ErrorBody {
                code,
                message: msg.to_owned(),
            }),
        };
        if !self.answer(c, epoch, ticket, DescKind::Final, &resp) {
            self.answer_inline(c, epoch, ticket, code);
        }
    }

    /// An error answer with no chunk (when even a chunk cannot be had).
    fn answer_inline(&mut self, c: usize, epoch: u32, ticket: u32, code: ErrorCode) {
        self.deliver(
            c,
            epoch,
            desc(DescKind::InlineError, 0, code as u32, ticket),
        );
    }

    /// Serializes `resp` into a fresh chunk, gives it to the client and announces it. Returns
    /// false when no chunk could be had or the client is gone.
    fn answer(
        &mut self,
        c: usize,
        epoch: u32,
        ticket: u32,
        kind: DescKind,
        resp: &Response,
    ) -> bool {
        let sh = self.sh;
        let Some(h) = &self.clients[c] else {
            return false;
        };
        if h.epoch != epoch {
            return false;
        }
        let mut out = Out::in_pool(&sh.pool, sh.owner, resp.id);
        if let Err(e) = out.response(resp) {
            tracing::warn!(%e, "no chunk for an answer");
            return false;
        }
        match out.take_loan() {
            Some((loan, len)) => self.hand_over(c, epoch, ticket, kind, loan, len),
            None => false,
        }
    }

    /// Gives the answer in `loan` (`len` bytes) to the client and announces it. Returns false when
    /// the client is gone.
    fn hand_over(
        &mut self,
        c: usize,
        epoch: u32,
        ticket: u32,
        kind: DescKind,
        loan: Loan<'_>,
        len: usize,
    ) -> bool {
        let sh = self.sh;
        // The slot's current epoch too: this worker's handles may be older than a reconnect, and
        // the departed client's owner id may belong to another process by now.
        let client_owner = match &self.clients[c] {
            Some(h) if h.epoch == epoch && self.client_alive(c, epoch) => h.owner,
            _ => return false,
        };
        let id = loan.into_id();
        if sh
            .pool
            .adopt(id, sh.owner, client_owner)
            .map(|l| l.into_id())
            .is_err()
        {
            let _ = sh.pool.release(id, sh.owner);
            return false;
        }
        self.deliver(c, epoch, desc(kind, id.raw(), len as u32, ticket));
        true
    }

    /// Pushes a descriptor to a client's response ring, or keeps it for later if the ring is full
    /// (a client that does not read its answers gets them when it does). A client's answers leave
    /// in order: while some wait, its later ones wait behind them. Other clients' answers never
    /// wait behind a slow client's.
    fn deliver(&mut self, c: usize, epoch: u32, d: Desc) {
        let bit = 1u64 << (c % 64);
        if self.backlogged & bit != 0 || !self.try_push(c, epoch, d) {
            self.backlog.push_back((c, epoch, d));
            self.backlogged |= bit;
        }
    }

    fn try_push(&self, c: usize, epoch: u32, d: Desc) -> bool {
        match &self.clients[c] {
            Some(h) if h.epoch == epoch => match h.resp.push(d) {
                Ok(()) => true,
                Err(mpmc_err) => {
                    // Full: keep it. Corrupted: the client broke its ring; drop the answer.
                    matches!(mpmc_err, shm_ring::spsc::PushError::Corrupted(_))
                }
            },
            // The client is gone: its chunks are reclaimed with its owner.
            _ => true,
        }
    }

    /// Retries the waiting answers, oldest first. Once a client's ring is found full, the rest of
    /// its answers stay (in order) without another try: one failed push per client per pass.
    fn flush_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let mut backlog = std::mem::take(&mut self.backlog);
        let mut blocked = 0u64;
        backlog.retain(|&(c, epoch, d)| {
            let bit = 1u64 << (c % 64);
            if blocked & bit != 0 || !self.try_push(c, epoch, d) {
                blocked |= bit;
                return true;
            }
            false
        });
        self.backlog = backlog;
        self.backlogged = blocked;
    }

    /// At exit: answer everything still queued.
    fn answer_all_queued(&mut self, code: ErrorCode) {
        for job in self.sched.drain_all() {
            let c = usize::from(job.client);
            self.job_gone();
            self.finish_request(c, job.epoch, job.chunk);
            if self.client_alive(c, job.epoch) {
                self.answer_error(
                    c,
                    job.epoch,
                    job.ticket,
                    job.request_id,
                    code,
                    "the server stopped",
                );
            }
        }
        let deadline = Instant::now() + Duration::from_millis(100);
        while !self.backlog.is_empty() && Instant::now() < deadline {
            self.flush_backlog();
            std::thread::yield_now();
        }
    }
}

struct Ctx<'w, 's> {
    worker: &'w mut Worker<'s>,
    job: Job,
    req_id: u64,
}

impl RunContext for Ctx<'_, '_> {
    fn should_stop(&mut self) -> Option<Stop> {
        let c = usize::from(self.job.client);
        // Take in what this client sent meanwhile (a cancel, most likely), and keep the others'
        // requests flowing into the queue.
        self.worker.now = crate::scheduler::now_ns();
        let limit = self.worker.ingest_limit();
        self.worker.ingest(None, limit);
        if !self.worker.client_alive(c, self.job.epoch) {
            return Some(Stop::ClientGone);
        }
        if self.worker.is_cancelled(c, self.job.epoch, self.job.ticket) {
            return Some(Stop::Cancelled);
        }
        if self.worker.now >= self.job.deadline_ns {
            return Some(Stop::TimedOut);
        }
        let sh = self.worker.sh;
        if sh.drain_expired.load(Ordering::Acquire) {
            return Some(Stop::Cancelled);
        }
        None
    }

    fn emit(&mut self, chunk: StreamChunk) -> Result<(), Stop> {
        if let Some(s) = self.should_stop() {
            return Err(s);
        }
        let c = usize::from(self.job.client);
        let resp = Response {
            id: self.req_id,
            body: Body::Chunk(chunk),
        };
        let mut waited = Duration::ZERO;
        // A stream chunk waits briefly for memory rather than being lost.
        while !self
            .worker
            .answer(c, self.job.epoch, self.job.ticket, DescKind::Partial, &resp)
        {
            if !self.worker.client_alive(c, self.job.epoch) {
                return Err(Stop::ClientGone);
            }
            if waited > Duration::from_millis(100)
                || crate::scheduler::now_ns() >= self.job.deadline_ns
            {
                return Err(Stop::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(1));
            waited += Duration::from_millis(1);
        }
        Ok(())
    }

    fn deadline(&self) -> Instant {
        self.job.deadline()
    }
}
