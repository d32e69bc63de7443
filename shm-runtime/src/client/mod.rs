//! The client library: attach to a service by name, submit requests serialized straight into
//! shared memory, receive answers as zero-copy views.
//!
//! A [`Client`] is `Send + Sync` and cheap to clone: threads of one process share one connection
//! (one client slot). Answers arrive on one response ring; whichever waiting thread holds the
//! "leader" role pops it and routes it to the ticket it belongs to.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use shm_ring::pool::{ChunkId, OwnerId, Pool};
use shm_ring::process::ProcessToken;
use shm_ring::{mpmc, OpenError, Segment, SegmentOpenOptions, WaitStrategy};

use crate::error::Error;
use crate::protocol::{
    encode_request, ArchivedBody, Descriptor, DescriptorKind, DescriptorWords, ErrorCode, Request,
    PROTOCOL_VERSION,
};
use crate::service::{
    EjectReason, LayoutError, Service, CLIENT_ACTIVE, CLIENT_EJECTED, CLIENT_FREE, SEGMENT_MODE,
};

#[cfg(feature = "async")]
mod asynchronous;
mod counts;
mod embeddings;
pub(crate) mod health;
mod hooks;
mod inbox;
mod options;
mod typed;
mod view;

#[cfg(feature = "async")]
pub use asynchronous::{AsyncClient, AsyncTextStream};
pub use health::{Health, ModelHealth, ModelState};
use inbox::{Inbox, Pending};
pub use options::{GenerateOptions, Message};
pub use typed::{Classification, Embeddings, Generation, StreamEvent, TextStream, Usage};
pub use view::{ResponseView, Stream};

/// How a client waits.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-client-options-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// use std::time::Duration;
/// use shm_runtime::{Client, ClientOptions};
///
/// assert_eq!(ClientOptions::default().timeout, Duration::from_secs(30));
/// // Calls that give no deadline of their own wait at most 2 s.
/// let options = ClientOptions { timeout: Duration::from_secs(2), ..ClientOptions::default() };
/// let client = Client::connect_with(&name, options)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How a thread waiting for an answer waits.
    pub wait: WaitStrategy,
    /// Deadline of calls that do not give one.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            wait: WaitStrategy::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A request in flight.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-ticket-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use shm_runtime::protocol::{Input, Params, Request, Task};
///
/// let mut prompts = HashMap::new();
/// for (id, prompt) in (1..).zip(["one", "two"]) {
///     let request = Request {
///         id,
///         model: "echo".into(),
///         task: Task::Generate,
///         input: Input::Text(prompt.into()),
///         params: Params::default(),
///     };
///     prompts.insert(client.submit(&request)?, prompt);
/// }
/// for (ticket, prompt) in prompts {
///     assert!(client.recv(ticket, Duration::from_secs(5))?.is_final(), "{prompt}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u32);

struct Connection {
    svc: Service,
    /// The model table, read once at connect (it never changes while a server lives).
    models: Vec<(String, usize, u32)>,
    pool: Pool,
    owner: OwnerId,
    slot: usize,
    epoch: u32,
    requests: Vec<mpmc::Producer<DescriptorWords>>,
    responses: mpmc::Consumer<DescriptorWords>,
    inbox: Mutex<Inbox>,
    arrived: Condvar,
    next_ticket: AtomicU32,
    /// Ids of the typed calls' requests.
    next_request: std::sync::atomic::AtomicU64,
    options: ClientOptions,
    /// Set once a wait found the server dead: later calls fail at once.
    server_gone: std::sync::atomic::AtomicBool,
    /// Answers that arrived for no ticket in flight (see [`Client::stray_answers`]).
    strays: std::sync::atomic::AtomicU64,
}

/// A connection to a service: `Send + Sync`, cheap to clone (clones share the connection), and
/// usable from many threads at once. The typed calls ([`embed`](Self::embed),
/// [`classify`](Self::classify), [`generate`](Self::generate), [`chat`](Self::chat),
/// [`stream`](Self::stream)) are the usual way in; [`infer`](Self::infer),
/// [`submit`](Self::submit) + [`recv`](Self::recv) and [`stream_request`](Self::stream_request)
/// take raw [`Request`]s.
///
/// ```
/// use shm_runtime::{Client, GenerateOptions, ModelConfig, Server, ServerConfig};
///
/// let name = format!("doc-client-{}", std::process::id());
/// let server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
/// let client = Client::connect(&name)?;
/// let g = client.generate("echo", "hello", &GenerateOptions::default())?;
/// assert_eq!(g.text, "hello");
/// # drop(client); server.shutdown(std::time::Duration::ZERO);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    conn: Arc<Connection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("slot", &self.conn.slot)
            .field("owner", &self.conn.owner)
            .finish()
    }
}

fn open_error(name: &str, e: OpenError) -> Error {
    match e {
        OpenError::NotFound(_) | OpenError::CreatorGone(_) | OpenError::NotInitialised(_) => {
            Error::ServiceNotFound(name.to_owned())
        }
        OpenError::VersionMismatch {
            found, expected, ..
        } => Error::VersionMismatch { found, expected },
        other => Error::Attach(other.to_string()),
    }
}

impl Client {
    /// Attaches to the service `name` with default options.
    ///
    /// # Errors
    ///
    /// [`Error::ServiceNotFound`], [`Error::VersionMismatch`], [`Error::Attach`], or
    /// [`Error::Busy`] when every client slot is taken.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-connect-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// use shm_runtime::{Client, Error};
    ///
    /// let client = Client::connect(&name)?;
    /// assert_eq!(client.models(), ["echo"]);
    /// assert!(matches!(Client::connect("no-such-service"), Err(Error::ServiceNotFound(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(name: &str) -> Result<Client, Error> {
        Client::connect_with(name, ClientOptions::default())
    }

    /// Attaches to the service `name`.
    ///
    /// # Errors
    ///
    /// As for [`connect`](Self::connect).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-connect-with-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// use shm_runtime::ring::WaitStrategy;
    /// use shm_runtime::{Client, ClientOptions, GenerateOptions};
    ///
    /// // Spin while waiting for answers: the lowest latency, a core busy while waiting.
    /// let options = ClientOptions { wait: WaitStrategy::BusySpin, ..ClientOptions::default() };
    /// let client = Client::connect_with(&name, options)?;
    /// assert_eq!(client.generate("echo", "fast", &GenerateOptions::default())?.text, "fast");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_with(name: &str, options: ClientOptions) -> Result<Client, Error> {
        let opts = SegmentOpenOptions {
            user_version: Some(PROTOCOL_VERSION),
            allowed_mode: SEGMENT_MODE,
            ..SegmentOpenOptions::default()
        };
        let seg = Segment::open_with(name, &opts).map_err(|e| open_error(name, e))?;
        let svc = Service::attach(Arc::new(seg)).map_err(|e| match e {
            LayoutError::NotReady => Error::ServiceNotFound(name.to_owned()),
            LayoutError::Version { found, expected } => Error::VersionMismatch { found, expected },
            other => Error::Attach(other.to_string()),
        })?;
        let pool = Pool::attach(&svc.pool_region()).map_err(|e| Error::Attach(e.to_string()))?;
        let owner = pool
            .register_owner()
            .map_err(|e| Error::Busy(format!("no pool owner entry free: {e}")))?;
        let me = ProcessToken::current().raw();
        let slot = (0..svc.layout.max_clients).find(|&c| {
            svc.client(c)
                .token
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        let Some(slot) = slot else {
            pool.unregister_owner(owner);
            return Err(Error::Busy(format!(
                "all {} client slots of the service are taken",
                svc.layout.max_clients
            )));
        };
        let e = svc.client(slot);
        let setup = || -> Result<(Vec<mpmc::Producer<DescriptorWords>>, mpmc::Consumer<DescriptorWords>), Error> {
            let responses = mpmc::Consumer::attach(&svc.response_ring(slot))
                .map_err(|e| Error::Attach(e.to_string()))?;
            let requests = (0..svc.layout.lanes)
                .map(|l| mpmc::Producer::attach(&svc.request_ring(slot, l)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Attach(e.to_string()))?;
            Ok((requests, responses))
        };
        let (requests, responses) = match setup() {
            Ok(v) => v,
            Err(err) => {
                e.token.store(0, Ordering::Release);
                pool.unregister_owner(owner);
                return Err(err);
            }
        };
        // A previous holder of this slot that wrote impossible indices into its rings (and was
        // disconnected for it) leaves them so: start this connection on working rings.
        if !responses.looks_consistent() {
            responses.reset();
        }
        for ring in requests.iter().filter(|r| !r.looks_consistent()) {
            ring.reset();
        }
        // A previous holder of this slot killed while parked on its response ring would leave a
        // waiter counted for ever (every answer would then cost a wake syscall): nobody waits on
        // it now, so forget them.
        let _ = responses.clear_parked_consumers();
        // Answers left for a previous holder of this slot: return their chunks.
        while let Ok(d) = responses.pop() {
            match Descriptor::from_words(d) {
                Some(d) if matches!(d.kind, DescriptorKind::Partial | DescriptorKind::Final) => {
                    let _ = pool.release(ChunkId::from_raw(d.chunk), owner);
                }
                _ => {}
            }
        }
        e.owner.store(owner.get(), Ordering::Relaxed);
        e.inflight.store(0, Ordering::Relaxed);
        // The slot's counters describe its current holder.
        e.requests.store(0, Ordering::Relaxed);
        e.errors.store(0, Ordering::Relaxed);
        let epoch = e.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        // SYNC(state): Release publishes owner and epoch to workers' Acquire in sync_clients.
        e.state.store(CLIENT_ACTIVE, Ordering::Release);
        svc.header().active.fetch_or(1u64 << slot, Ordering::AcqRel);
        // SYNC(clients_gen): AcqRel after the state and mask: a worker that loads the new value
        // (Acquire) sees this slot active.
        svc.header().clients_gen.fetch_add(1, Ordering::AcqRel);
        let models = svc.models();
        Ok(Client {
            conn: Arc::new(Connection {
                models,
                svc,
                pool,
                owner,
                slot,
                epoch,
                requests,
                responses,
                inbox: Mutex::new(Inbox::default()),
                arrived: Condvar::new(),
                next_ticket: AtomicU32::new(1),
                next_request: std::sync::atomic::AtomicU64::new(1),
                options,
                server_gone: std::sync::atomic::AtomicBool::new(false),
                strays: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// A request id for a typed call (answers carry it back, checked on arrival).
    fn next_request_id(&self) -> u64 {
        self.conn.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// The models the service serves.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-models-{}", std::process::id());
    /// # let models = vec![ModelConfig::new("echo", "echo"), ModelConfig::new("slow", "sleep")];
    /// # let _server = Server::start(ServerConfig::new(&name, models))?;
    /// use shm_runtime::Client;
    ///
    /// let client = Client::connect(&name)?;
    /// assert_eq!(client.models(), ["echo", "slow"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn models(&self) -> Vec<String> {
        self.conn.models.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Sends a request without waiting for the answer. The request is serialized straight into a
    /// shared chunk; answers carry its `id` (choose ids unique among your requests in flight to
    /// get the extra check that an answer belongs to its request).
    ///
    /// # Errors
    ///
    /// [`Error::ModelNotFound`] for a model the service does not serve,
    /// [`Error::InvalidRequest`] when it does not fit the largest chunk, [`Error::Busy`] when
    /// the pool or the request ring is full, [`Error::ServerGone`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-submit-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use std::time::Duration;
    /// use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
    ///
    /// let req = |i: u64| Request {
    ///     id: i,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text(format!("request {i}")),
    ///     params: Params::default(),
    /// };
    /// // Pipelined: several in flight, answers taken in any order.
    /// let tickets: Vec<_> = (1..=8).map(|i| client.submit(&req(i))).collect::<Result<_, _>>()?;
    /// for (i, ticket) in tickets.into_iter().enumerate().rev() {
    ///     let answer = client.recv(ticket, Duration::from_secs(5))?;
    ///     let ArchivedBody::Generation(g) = &answer.response()?.body else { unreachable!() };
    ///     assert_eq!(g.text.as_str(), format!("request {}", i + 1));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit(&self, request: &Request) -> Result<Ticket, Error> {
        let conn = &*self.conn;
        // One atomic load; the full liveness probe (a syscall) runs only when a wait times out.
        if conn.server_gone.load(Ordering::Relaxed)
            || conn.svc.header().state.load(Ordering::Acquire) == crate::service::STATE_STOPPED
        {
            return Err(Error::ServerGone);
        }
        let (lane, tasks) = conn
            .find_model(&request.model)
            .ok_or_else(|| Error::ModelNotFound(request.model.clone()))?;
        if tasks & (1 << (request.task as u32)) == 0 {
            return Err(Error::ModelNotFound(format!(
                "model {:?} does not do {:?}",
                request.model, request.task
            )));
        }
        let req = request;
        let max = conn.pool.max_chunk_size();
        let mut size = estimate(req).min(max);
        let (chunk, len) = loop {
            let mut loan = conn
                .pool
                .loan(conn.owner, size)
                .map_err(|e| loan_error(e, "the request"))?;
            match encode_request(req, loan.as_mut_slice()) {
                Ok(len) => break (loan.into_id(), len),
                Err(_) if size < max => size = (size * 2).min(max),
                Err(_) => {
                    return Err(Error::InvalidRequest(format!(
                        "the request does not fit the largest chunk ({max} bytes)"
                    )))
                }
            }
        };
        self.push_request(lane, chunk, len as u32, req.id)
    }

    /// The next answer for `ticket`: a stream chunk or the final answer. After the final answer the
    /// ticket is done.
    ///
    /// # Errors
    ///
    /// The error answer of the server ([`Error::TimedOut`], [`Error::Cancelled`],
    /// [`Error::InvalidRequest`]...), [`Error::TimedOut`] when `timeout` passes first (the request
    /// stays in flight), [`Error::ServerGone`], [`Error::UnknownTicket`]; [`Error::Busy`] with the
    /// request still in flight when the server refused to record a [`cancel`](Self::cancel) of it.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-recv-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use std::time::Duration;
    /// use shm_runtime::protocol::{Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 1,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("hi".into()),
    ///     params: Params::default(),
    /// };
    /// let ticket = client.submit(&request)?;
    /// // ... other work while the server runs it ...
    /// let answer = client.recv(ticket, Duration::from_secs(5))?;
    /// assert!(answer.is_final()); // not streamed: the one answer is the final one
    /// assert!(!client.is_in_flight(ticket));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&self, ticket: Ticket, timeout: Duration) -> Result<ResponseView, Error> {
        let deadline = Instant::now() + timeout;
        let d = self.conn.next_for(ticket.0, deadline)?;
        self.view(ticket.0, d)
    }

    fn view(&self, ticket: u32, d: DescriptorWords) -> Result<ResponseView, Error> {
        let conn = &*self.conn;
        let Descriptor {
            kind, chunk, len, ..
        } = Descriptor::from_words(d)
            .ok_or_else(|| Error::Protocol("unknown descriptor kind".into()))?;
        if kind == DescriptorKind::CancelRefused {
            return Err(Error::Busy(
                "the server did not record the cancel of this request: this client has as many \
                 cancels pending as it may; the request goes on, and its answers follow"
                    .into(),
            ));
        }
        let final_ = kind != DescriptorKind::Partial;
        let request_id = {
            let mut inbox = conn.inbox();
            let id = inbox.pending.get(&ticket).map(|p| p.request_id);
            if final_ {
                // Anything queued behind a final answer is not this request's: return it.
                if let Some(p) = inbox.pending.remove(&ticket) {
                    p.arrived.into_iter().for_each(|d| conn.discard(d));
                }
            }
            id.unwrap_or(0)
        };
        if kind == DescriptorKind::InlineError {
            let code = ErrorCode::from_u8(len as u8)
                .ok_or_else(|| Error::Protocol(format!("unknown error code {len}")))?;
            let why = crate::protocol::InlineReason::from_u64(chunk);
            return Err(Error::from_code(code, why.message(code)));
        }
        let view = ResponseView {
            conn: self.conn.clone(),
            chunk: ChunkId::from_raw(chunk),
            len: len as usize,
            is_final: final_,
        };
        let resp = view.response()?;
        // An error about bytes the server could not read as a request carries id 0.
        let unreadable = resp.id == 0 && matches!(resp.body, ArchivedBody::Error(_));
        if resp.id != request_id && !unreadable {
            return Err(Error::Protocol(format!(
                "answer for request {} arrived for {request_id}",
                resp.id
            )));
        }
        if let ArchivedBody::Error(e) = &resp.body {
            return Err(Error::from_code(
                e.code.to_native(),
                e.message.as_str().to_owned(),
            ));
        }
        Ok(view)
    }

    /// Registers a ticket for the request in `chunk` and pushes its descriptor on `lane`'s ring.
    /// On failure the chunk is returned to the pool (if it is ours).
    fn push_request(
        &self,
        lane: usize,
        chunk: ChunkId,
        len: u32,
        request_id: u64,
    ) -> Result<Ticket, Error> {
        let conn = &*self.conn;
        if let Err(e) = conn.check_connected() {
            let _ = conn.pool.release(chunk, conn.owner);
            return Err(e);
        }
        let Some(ring) = conn.requests.get(lane) else {
            let _ = conn.pool.release(chunk, conn.owner);
            return Err(Error::Protocol(format!("lane {lane} out of range")));
        };
        let ticket = conn.take_ticket(Pending {
            lane,
            request_id,
            chunk: chunk.raw(),
            abandoned: false,
            arrived: VecDeque::new(),
            waker: None,
        });
        if let Err(e) =
            ring.push(Descriptor::new(DescriptorKind::Request, chunk.raw(), len, ticket).to_words())
        {
            conn.inbox().pending.remove(&ticket);
            let _ = conn.pool.release(chunk, conn.owner);
            return Err(ring_full(lane, ring.capacity(), e));
        }
        conn.svc.lane(lane).doorbell.notify();
        Ok(Ticket(ticket))
    }

    /// Submits and waits for the final answer (streamed chunks are skipped).
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit) and [`recv`](Self::recv). On a client-side timeout the
    /// request is cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-infer-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 1,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("hello".into()),
    ///     params: Params::default(),
    /// };
    /// // Read in place: the answer's chunk is this client's until `answer` drops.
    /// let answer = client.infer(&request)?;
    /// let ArchivedBody::Generation(g) = &answer.response()?.body else {
    ///     panic!("not a generation");
    /// };
    /// assert_eq!(g.text.as_str(), "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn infer(&self, request: &Request) -> Result<ResponseView, Error> {
        self.infer_timeout(request, self.conn.options.timeout)
    }

    /// [`infer`](Self::infer) with a deadline.
    ///
    /// # Errors
    ///
    /// As for [`infer`](Self::infer).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-infer-timeout-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("slow", "sleep")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// # use shm_runtime::protocol::{Input, Params, Request, Task};
    /// # let request = Request {
    /// #     id: 1,
    /// #     model: "slow".into(),
    /// #     task: Task::Generate,
    /// #     input: Input::Text("go".into()),
    /// #     params: Params { max_tokens: 1000, ..Params::default() },
    /// # };
    /// use std::time::Duration;
    /// use shm_runtime::Error;
    ///
    /// // `request` asks the sleep model `slow` for 1000 tokens of 10 ms each.
    /// let r = client.infer_timeout(&request, Duration::from_millis(20));
    /// assert!(matches!(r, Err(Error::TimedOut)));
    /// assert_eq!(client.in_flight(), 0); // given up, and cancelled
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn infer_timeout(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<ResponseView, Error> {
        let ticket = self.submit(request)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(ticket, left) {
                Ok(v) if v.is_final() => return Ok(v),
                Ok(_) => continue,
                Err(Error::TimedOut) if Instant::now() >= deadline => {
                    let _ = self.cancel(ticket);
                    self.conn.abandon(ticket.0);
                    return Err(Error::TimedOut);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits a request with `stream` set and returns an iterator over its chunks; the last item
    /// is the final answer. Dropped before its end, the stream cancels its request.
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-stream-request-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use shm_runtime::protocol::{Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 1,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("abc".into()),
    ///     params: Params::default(),
    /// };
    /// // The echo model streams a part per character, then the whole.
    /// let mut parts = 0;
    /// for answer in client.stream_request(&request)? {
    ///     if !answer?.is_final() {
    ///         parts += 1;
    ///     }
    /// }
    /// assert_eq!(parts, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream_request(&self, request: &Request) -> Result<Stream, Error> {
        let mut req = request.clone();
        req.params.stream = true;
        let ticket = self.submit(&req)?;
        Ok(Stream {
            client: self.clone(),
            ticket,
            done: false,
            deadline: Instant::now() + self.conn.options.timeout,
        })
    }

    /// Asks the server to cancel a request (queued or running). Its final answer is `Cancelled`
    /// unless it finished first.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTicket`], [`Error::Busy`] when the ring is full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-cancel-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("slow", "sleep")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// # use shm_runtime::protocol::{Input, Params, Request, Task};
    /// # let request = Request {
    /// #     id: 1,
    /// #     model: "slow".into(),
    /// #     task: Task::Generate,
    /// #     input: Input::Text("go".into()),
    /// #     params: Params { max_tokens: 1000, ..Params::default() },
    /// # };
    /// use std::time::Duration;
    /// use shm_runtime::Error;
    ///
    /// // `request` asks the sleep model `slow` for 1000 tokens of 10 ms each.
    /// let ticket = client.submit(&request)?;
    /// client.cancel(ticket)?;
    /// let answer = client.recv(ticket, Duration::from_secs(5));
    /// assert!(matches!(answer, Err(Error::Cancelled)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, ticket: Ticket) -> Result<(), Error> {
        let conn = &*self.conn;
        let (lane, chunk) = conn
            .inbox()
            .pending
            .get(&ticket.0)
            .filter(|p| !p.abandoned)
            .map(|p| (p.lane, p.chunk))
            .ok_or(Error::UnknownTicket(ticket.0))?;
        conn.requests[lane]
            .push(Descriptor::new(DescriptorKind::Cancel, chunk, 0, ticket.0).to_words())
            .map_err(|e| ring_full(lane, conn.requests[lane].capacity(), e))?;
        conn.svc.lane(lane).doorbell.notify();
        Ok(())
    }
}

impl Connection {
    /// Takes the next free ticket for `pending`. Tickets wrap (2^24 per connection): those still
    /// taken are skipped, so that an answer is never filed under a request it is not for (fewer
    /// tickets are taken than there are).
    fn take_ticket(&self, pending: Pending) -> u32 {
        let mut inbox = self.inbox();
        let ticket = loop {
            let seq = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            let t = crate::protocol::ticket(self.epoch, seq);
            if !inbox.pending.contains_key(&t) {
                break t;
            }
        };
        inbox.pending.insert(ticket, pending);
        ticket
    }

    /// [`Error::Disconnected`] when the server has disconnected this connection.
    fn check_connected(&self) -> Result<(), Error> {
        let e = self.svc.client(self.slot);
        // SYNC(state): Acquire pairs with the server's Release when it ejects, so the reason is
        // there.
        if e.state.load(Ordering::Acquire) != CLIENT_EJECTED
            || e.epoch.load(Ordering::Acquire) != self.epoch
        {
            return Ok(());
        }
        let why = EjectReason::from_u32(e.ejected.load(Ordering::Acquire))
            .map_or_else(|| "no reason given".to_owned(), |r| r.to_string());
        Err(Error::Disconnected(why))
    }

    fn find_model(&self, name: &str) -> Option<(usize, u32)> {
        self.models
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, lane, tasks)| (*lane, *tasks))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let e = self.svc.client(self.slot);
        let me = ProcessToken::current().raw();
        if e.epoch.load(Ordering::Acquire) == self.epoch && e.token.load(Ordering::Acquire) == me {
            e.state.store(CLIENT_FREE, Ordering::Release);
            self.svc
                .header()
                .active
                .fetch_and(!(1u64 << self.slot), Ordering::AcqRel);
            self.svc.header().clients_gen.fetch_add(1, Ordering::AcqRel);
            // Answers still on the ring are ours: return them with the rest of our chunks.
            self.pool.unregister_owner(self.owner);
            let _ = e
                .token
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

fn estimate(req: &Request) -> usize {
    use crate::protocol::Input;
    let input = match &req.input {
        Input::Text(t) => t.len(),
        Input::Texts(ts) => ts.iter().map(|t| t.len() + 8).sum(),
        Input::Tokens(t) => t.len() * 4,
        Input::Chat(m) => m.iter().map(|m| m.content.len() + m.role.len() + 16).sum(),
        Input::Tensors(ts) => ts
            .iter()
            .map(|t| t.name.len() + t.shape.len() * 8 + t.data.len() * 8 + 32)
            .sum(),
    };
    input + req.model.len() + req.params.stop.iter().map(|s| s.len() + 8).sum::<usize>() + 256
}

/// The client-side error for a request ring of `lane` (of `capacity` descriptors) that refused a
/// push.
fn ring_full(lane: usize, capacity: usize, e: impl std::fmt::Display) -> Error {
    Error::Busy(format!(
        "the request ring of lane {lane} is full ({capacity} descriptors not yet taken by the \
         server): {e}"
    ))
}

/// The client-side error for a failed loan of shared memory for `what`: this client's own share
/// or quota used up is [`Error::ResourceExhausted`]; the pool empty for everyone is
/// [`Error::Busy`].
fn loan_error(e: shm_ring::pool::LoanError, what: &str) -> Error {
    use shm_ring::pool::LoanError;
    match e {
        LoanError::ShareExceeded { .. } | LoanError::QuotaExceeded { .. } => {
            Error::ResourceExhausted(format!("no shared memory for {what}: {e}"))
        }
        _ => Error::Busy(format!("no shared memory for {what}: {e}")),
    }
}
