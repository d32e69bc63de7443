//! Health and readiness: [`Client::health`] asks every lane of the server to answer a ping (no
//! model involved) and reads the server's identity and each model's state from the segment.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::inbox::Pending;
use super::submit::ring_full;
use super::Client;
use crate::error::Error;
use crate::protocol::{Descriptor, DescriptorKind};
use crate::service::{LANE_SERVING, MODEL_FAILED, MODEL_READY};

/// Where a model stands.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-model-state-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use std::time::Duration;
/// use shm_runtime::ModelState;
///
/// // Server::start returns once each model answered its warm-up inference.
/// let health = client.health(Duration::from_secs(1))?;
/// assert_eq!(health.models[0].state, ModelState::Ready);
/// assert_eq!(ModelState::Ready.to_string(), "ready");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    /// Loaded; its warm-up inference has not answered yet.
    Warming,
    /// Warmed up and serving.
    Ready,
    /// Its warm-up failed, or its backend panicked too often (see `status`): its requests get a
    /// `Backend` error.
    Failed,
}

impl std::fmt::Display for ModelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelState::Warming => "warming",
            ModelState::Ready => "ready",
            ModelState::Failed => "failed",
        })
    }
}

/// One model of a [`Health`] answer.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-model-health-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use std::time::Duration;
///
/// let health = client.health(Duration::from_secs(1))?;
/// for model in &health.models {
///     println!("{}: {} (ping {:?})", model.name, model.state, model.ping);
/// }
/// assert_eq!(health.models[0].name, "echo");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelHealth {
    /// The model's name.
    pub name: String,
    /// Its state.
    pub state: ModelState,
    /// How long its lane took to answer the ping.
    pub ping: Duration,
}

/// The server's answer to [`Client::health`].
///
/// # Examples
///
/// ```
/// # let name = format!("doc-health-struct-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use std::time::Duration;
///
/// let health = client.health(Duration::from_secs(1))?;
/// assert_eq!(health.server_pid, std::process::id()); // a server of this very process
/// assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The server's process id.
    pub server_pid: u32,
    /// Since the server started.
    pub uptime: Duration,
    /// The server's version (`major.minor.patch`).
    pub version: String,
    /// Each model, in the server's order.
    pub models: Vec<ModelHealth>,
}

impl Health {
    /// Whether every model is ready.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-is-ready-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use std::time::Duration;
    ///
    /// // A readiness probe: every model warmed up and serving.
    /// assert!(client.health(Duration::from_secs(1))?.is_ready());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_ready(&self) -> bool {
        self.models.iter().all(|m| m.state == ModelState::Ready)
    }
}

/// The state of model `model` served by lane `lane`, as the segment says: failed when its lane
/// failed (its backend panicked too often) or its warm-up failed.
pub(crate) fn model_state(svc: &crate::service::Service, model: usize, lane: usize) -> ModelState {
    match (
        svc.lane(lane).state.load(Ordering::Acquire),
        svc.model(model).state.load(Ordering::Acquire),
    ) {
        (s, _) if s != LANE_SERVING => ModelState::Failed,
        (_, MODEL_READY) => ModelState::Ready,
        (_, MODEL_FAILED) => ModelState::Failed,
        _ => ModelState::Warming,
    }
}

impl Client {
    /// Pings every lane of the server (each answers at once, whatever its model is doing, between
    /// two steps at worst) and reports the server's identity and each model's state. Needs no
    /// model: works against a server of any models.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] when a lane does not answer within `timeout`, [`Error::ServerGone`],
    /// [`Error::Disconnected`], [`Error::Busy`] when a request ring is full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-health-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use std::time::Duration;
    ///
    /// let h = client.health(Duration::from_secs(1))?;
    /// println!("pid {} up {:?}, ready: {}", h.server_pid, h.uptime, h.is_ready());
    /// assert_eq!(h.models.len(), client.models().len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn health(&self, timeout: Duration) -> Result<Health, Error> {
        let conn = &*self.conn;
        conn.check_connected()?;
        let deadline = Instant::now() + timeout;
        let mut models = Vec::with_capacity(conn.models.len());
        for (i, (name, lane, _)) in conn.models.iter().enumerate() {
            let ping = self.ping_lane(*lane, deadline)?;
            let state = model_state(&conn.svc, i, *lane);
            models.push(ModelHealth {
                name: name.clone(),
                state,
                ping,
            });
        }
        let h = conn.svc.header();
        let started = UNIX_EPOCH + Duration::from_millis(h.started_unix_ms.load(Ordering::Relaxed));
        let v = h.server_version.load(Ordering::Relaxed);
        Ok(Health {
            server_pid: h.server_pid.load(Ordering::Relaxed),
            uptime: SystemTime::now()
                .duration_since(started)
                .unwrap_or_default(),
            version: format!("{}.{}.{}", v >> 16, (v >> 8) & 0xFF, v & 0xFF),
            models,
        })
    }

    /// Sends a ping on `lane`'s ring and waits for its pong until `deadline`; the round trip.
    fn ping_lane(&self, lane: usize, deadline: Instant) -> Result<Duration, Error> {
        let conn = &*self.conn;
        let ticket = conn.take_ticket(Pending {
            lane,
            request_id: 0,
            chunk: 0,
            abandoned: false,
            arrived: VecDeque::new(),
            waker: None,
        });
        let t0 = Instant::now();
        let pushed = conn.requests[lane]
            .push(Descriptor::new(DescriptorKind::Ping, 0, 0, ticket).to_words());
        if let Err(e) = pushed {
            conn.inbox().pending.remove(&ticket);
            return Err(ring_full(lane, conn.requests[lane].capacity(), e));
        }
        conn.svc.lane(lane).doorbell.notify();
        match conn.next_for(ticket, deadline) {
            Ok(d) => {
                conn.inbox().pending.remove(&ticket);
                match Descriptor::from_words(d).map(|d| d.kind) {
                    Some(DescriptorKind::Pong) => Ok(t0.elapsed()),
                    other => Err(Error::Protocol(format!("a ping answered with {other:?}"))),
                }
            }
            Err(e) => {
                // The pong may still come: it frees the ticket then.
                conn.abandon(ticket);
                Err(e)
            }
        }
    }
}
