//! The gateway's side of the runtime: a few client connections to the service, admission of
//! requests within what the runtime takes, and reconnection when the service restarts.
//!
//! The runtime refuses a client's request beyond its `max_inflight`; the gateway never sends it
//! one. It holds `connections x max_inflight` permits, and `max_inflight` slots per connection: a
//! request takes a permit, then a slot of the least loaded connection with one free, and keeps
//! both until its answer (or its stream) ends; a request whose client left waits, besides, until
//! the server has ended the cancelled requests that still hold tickets of its connection. Requests without a permit wait in a bounded queue; a
//! request that finds the queue full gets a 429 at once.
//!
//! When a call finds the service gone (stopped, died, restarted, or this gateway disconnected),
//! the connections are dropped; the next request connects again, at most one attempt per
//! [`RECONNECT_INTERVAL`], and gets a 503 while there is no service.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shm_runtime::{AsyncClient, ClientOptions, Error};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Least time between two attempts to connect to a missing service.
pub(crate) const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);

/// Longest wait for the server to end the cancelled requests of a connection before a request
/// is sent anyway.
const SETTLE: Duration = Duration::from_secs(2);

/// One request counted in the queue while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How the gateway uses the runtime.
///
/// # Examples
///
/// ```
/// use shm_runtime::ring::WaitStrategy;
/// use shm_runtime_gateway::RuntimeOptions;
///
/// let mut options = RuntimeOptions::default();
/// options.queue = 64; // a 65th waiting request gets a 429 at once
/// options.client.wait = WaitStrategy::default();
/// assert_eq!(options.connections, 2);
/// ```
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Client connections to the service (each has its own rings and one waiter thread).
    pub connections: usize,
    /// Most requests waiting for the runtime to take them; more get a 429.
    pub queue: usize,
    /// The connections' options (wait strategy, default deadline). The default waits without
    /// spinning (see [`RuntimeOptions::default`]).
    pub client: ClientOptions,
}

impl Default for RuntimeOptions {
    /// Two connections, a queue of 1024, a deadline of 120 s per request (a long generation
    /// takes a while), and connections whose waiter threads park at once
    /// instead of spinning first. HTTP requests arrive tens of microseconds apart, longer than a
    /// short spin, and a spinning waiter takes a core from the gateway's own threads: on 2 vCPUs
    /// an echo through the gateway read a p50 of 93-121 us without the spin against 138-182 us
    /// with the client's default 50 us spin (3 interleaved rounds, the same requests per second).
    fn default() -> Self {
        RuntimeOptions {
            connections: 2,
            queue: 1024,
            client: ClientOptions {
                wait: shm_runtime::ring::WaitStrategy::SpinThenPark {
                    spin: Duration::ZERO,
                },
                timeout: Duration::from_secs(120),
            },
        }
    }
}

/// The connections to one service, while it lives.
#[derive(Debug)]
pub(crate) struct Connections {
    clients: Vec<AsyncClient>,
    /// The server's in-flight limit per client.
    per_client: u32,
    permits: Arc<Semaphore>,
    /// Per connection, `max_inflight` permits: a request reserves its connection's slot before it
    /// is sent, so that two requests never both take a connection's last one.
    slots: Vec<Arc<Semaphore>>,
    models: Vec<String>,
}

impl Connections {
    /// The models the service serves.
    pub(crate) fn models(&self) -> &[String] {
        &self.models
    }

    /// A connection of the service (for calls outside admission: health).
    pub(crate) fn any(&self) -> &AsyncClient {
        &self.clients[0]
    }
}

#[derive(Debug, Default)]
struct State {
    current: Option<Arc<Connections>>,
    last_attempt: Option<Instant>,
    last_error: Option<Error>,
}

/// The service a gateway serves.
#[derive(Debug)]
pub(crate) struct Runtime {
    service: String,
    options: RuntimeOptions,
    state: Mutex<State>,
    waiting: AtomicUsize,
}

/// A request's right to one slot in the runtime, and the connection to send it on.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) client: AsyncClient,
    pub(crate) connections: Arc<Connections>,
    _permit: OwnedSemaphorePermit,
    _slot: OwnedSemaphorePermit,
}

impl Runtime {
    pub(crate) fn new(service: &str, options: RuntimeOptions) -> Runtime {
        Runtime {
            service: service.to_owned(),
            options,
            state: Mutex::new(State::default()),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The service's name.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// Requests waiting for a permit now.
    pub(crate) fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The live connections, connecting first when there are none (at most one attempt per
    /// [`RECONNECT_INTERVAL`]; in between, the last attempt's error).
    pub(crate) fn connections(&self) -> Result<Arc<Connections>, ApiError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &state.current {
            return Ok(c.clone());
        }
        if let (Some(at), Some(e)) = (state.last_attempt, &state.last_error) {
            if at.elapsed() < RECONNECT_INTERVAL {
                return Err(unavailable(&self.service, e));
            }
        }
        state.last_attempt = Some(Instant::now());
        match self.connect() {
            Ok(c) => {
                tracing::info!(service = %self.service, models = ?c.models, "connected to the runtime");
                let c = Arc::new(c);
                state.current = Some(c.clone());
                state.last_error = None;
                Ok(c)
            }
            Err(e) => {
                let api = unavailable(&self.service, &e);
                state.last_error = Some(e);
                Err(api)
            }
        }
    }

    fn connect(&self) -> Result<Connections, Error> {
        let clients = (0..self.options.connections.max(1))
            .map(|_| AsyncClient::connect_with(&self.service, self.options.client.clone()))
            .collect::<Result<Vec<_>, Error>>()?;
        let per_client = clients[0].blocking().max_in_flight().max(1);
        let models = clients[0].blocking().models();
        Ok(Connections {
            per_client,
            permits: Arc::new(Semaphore::new(per_client as usize * clients.len())),
            slots: (0..clients.len())
                .map(|_| Arc::new(Semaphore::new(per_client as usize)))
                .collect(),
            clients,
            models,
        })
    }

    /// Waits for a slot in the runtime: a 429 when the queue is full, a 503 without a service.
    pub(crate) async fn lease(&self) -> Result<Lease, ApiError> {
        let connections = self.connections()?;
        let permit = match connections.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.options.queue {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(ApiError::queue_full(self.options.queue));
                }
                // Counted out when the wait ends, also when its client leaves meanwhile (the
                // future is dropped at the await).
                let _waiting = Waiting(&self.waiting);
                let permit = connections.permits.clone().acquire_owned().await;
                permit.map_err(|_| ApiError::unavailable("the gateway is shutting down"))?
            }
        };
        // A slot of a connection, the least loaded first. The permits alone leave one free
        // (they are as many as the slots), but a moment may pass before the request that gave
        // one back has released it.
        let mut order: Vec<usize> = (0..connections.clients.len()).collect();
        order.sort_by_key(|&i| connections.clients[i].blocking().tickets_held());
        let (index, slot) = loop {
            let free = order.iter().find_map(|&i| {
                connections.slots[i]
                    .clone()
                    .try_acquire_owned()
                    .ok()
                    .map(|p| (i, p))
            });
            match free {
                Some(found) => break found,
                None => tokio::task::yield_now().await,
            }
        };
        let client = connections.clients[index].clone();
        // A request whose client left is cancelled at once and gives its slot back at once, but
        // its ticket stays taken (and the server counts it) until the server has ended it: wait
        // for that (a step of the model at most) rather than be refused as busy.
        let settle = Instant::now() + SETTLE;
        while client.blocking().tickets_held() >= connections.per_client as usize
            && Instant::now() < settle
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(Lease {
            client,
            connections,
            _permit: permit,
            _slot: slot,
        })
    }

    /// Notes the error a call on `connections` returned: when it says the service is gone, the
    /// connections are dropped so that the next request connects again.
    pub(crate) fn observe(&self, connections: &Arc<Connections>, e: &Error) {
        if gone(e) {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state
                .current
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, connections))
            {
                tracing::warn!(service = %self.service, error = %e, "lost the runtime; reconnecting on the next request");
                state.current = None;
                state.last_error = Some(e.clone());
                state.last_attempt = Some(Instant::now());
            }
        }
    }
}

/// Whether `e` means the connection is of no more use.
pub(crate) fn gone(e: &Error) -> bool {
    matches!(
        e,
        Error::ServerGone
            | Error::ServiceNotFound(_)
            | Error::Disconnected(_)
            | Error::ShuttingDown
            | Error::VersionMismatch { .. }
            | Error::Attach(_)
    )
}

fn unavailable(service: &str, e: &Error) -> ApiError {
    ApiError::unavailable(format!(
        "the runtime (service {service:?}) is not available: {e}"
    ))
}
