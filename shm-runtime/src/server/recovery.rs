//! A backend that panics is contained: every call a worker makes into a backend runs under
//! [`contain`], the requests the panicking call held are answered with a `Backend` error that
//! quotes the panic, and the lane's backend is restarted: a new instance is loaded from the
//! model's configuration (the registry's factory) and the lane's workers move to it. A lane whose
//! backend panics more than [`RESTART_LIMIT`] times within [`RESTART_WINDOW`], or whose new
//! instance cannot be loaded, is marked failed instead: its workers keep taking its requests and
//! answer each with a `Backend` error at once, and `status` shows the lane `failed`.
//!
//! Why restart rather than keep the instance: a panic can leave a backend's state half updated
//! (a buffer half written, a lock poisoned, a context mid-decode), so no new work goes to the
//! instance (sequences already running in another worker's stepper finish on it). Why a bound: a panic that a request's input triggers would otherwise cost a model
//! load for every such request, and a backend that panics on everything would load forever.
//!
//! [`LaneBackend`] keeps the lane's current [`Instance`] and its restarts; the panics and restarts
//! are counted, and the state published, in the lane's header in the segment.
//!
//! Containment needs panics that unwind (the default `panic = "unwind"`; a build with
//! `panic = "abort"` ends the process). A backend's own threads, and C or C++ code that aborts,
//! are outside its reach.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::UnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{self, Backend, Batching, CustomBackends, LoadError};
use crate::config::ModelConfig;
use crate::protocol::{ErrorCode, Refusal};
use crate::service::{LaneHeader, LANE_FAILED};

/// Restarts a lane's backend may need within [`RESTART_WINDOW`]; the next panic in that window
/// marks the lane failed.
pub(crate) const RESTART_LIMIT: usize = 3;

/// The window over which restarts are counted against [`RESTART_LIMIT`].
pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// A panic caught at a backend call: the sentence the requests the call held are answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Panicked(pub(crate) String);

impl Panicked {
    fn from_payload(payload: Box<dyn Any + Send>) -> Panicked {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            // Dropping a payload of an unknown type could run a destructor that panics in turn
            // (see `std::panic::catch_unwind`); leaking it cannot.
            std::mem::forget(payload);
            return Panicked("the backend panicked (with a payload that is not a message)".into());
        };
        Panicked(format!("the backend panicked: {message}"))
    }

    /// The error answer of a request the panicking call held.
    pub(crate) fn refusal(&self) -> Refusal {
        Refusal::new(ErrorCode::Backend, self.0.clone())
    }
}

/// Runs `f`, a call into a backend (or a drop of one), catching a panic. Callers wrap the
/// closure in `AssertUnwindSafe` and say at the call why nothing the closure touched is used in
/// a broken state afterwards.
pub(crate) fn contain<R>(f: impl FnOnce() -> R + UnwindSafe) -> Result<R, Panicked> {
    std::panic::catch_unwind(f).map_err(Panicked::from_payload)
}

/// A backend instance loaded from a model's configuration, with what the workers ask it once.
pub(crate) struct Loaded {
    pub(crate) backend: Box<dyn Backend>,
    /// Its task mask (`backend::task_mask`).
    pub(crate) tasks: u32,
    pub(crate) batching: Option<Batching>,
}

/// Loads model `m`'s backend, a panic in its factory (or in the questions asked of it) being a
/// load error.
///
/// # Errors
///
/// [`LoadError`], including [`LoadError::Failed`] for a panic.
pub(crate) fn load(m: &ModelConfig, custom: &CustomBackends) -> Result<Loaded, LoadError> {
    // AssertUnwindSafe: the closure only reads the configuration; a half-built backend is
    // dropped by the unwinding.
    let loaded = contain(std::panic::AssertUnwindSafe(|| {
        backend::load_with(m, custom).map(|backend| {
            let tasks = backend::task_mask(backend.tasks());
            let batching = backend.batching();
            Loaded {
                backend,
                tasks,
                batching,
            }
        })
    }));
    loaded.unwrap_or_else(|p| Err(LoadError::Failed(format!("{} (while loading)", p.0))))
}

/// The lane's backend as one worker runs on it: an instance, or why the lane has none.
#[derive(Clone)]
pub(crate) struct Instance {
    /// Moves on every restart and on failure (`LaneBackend::generation`).
    pub(crate) generation: u64,
    /// The instance, or the sentence every request to the failed lane is answered with.
    pub(crate) backend: Result<Arc<dyn Backend>, String>,
    pub(crate) batching: Option<Batching>,
}

/// A lane's current backend instance and its restarts (see the module docs).
pub(crate) struct LaneBackend {
    /// The model's configuration, to load a new instance from.
    config: ModelConfig,
    /// The backends registered in code, which the configuration may name.
    custom: CustomBackends,
    /// SYNC(generation): moved (Release) under `current`'s lock as soon as a panic of the current
    /// instance is caught, before the new instance is in place; workers load it (Acquire) every
    /// round and, when it moved, take the instance under the lock, which the restart holds until
    /// the new instance (or the failure) is in place.
    generation: AtomicU64,
    current: Mutex<Current>,
}

struct Current {
    instance: Instance,
    /// When each restart of the last [`RESTART_WINDOW`] happened.
    restarts: VecDeque<Instant>,
}

impl LaneBackend {
    /// The lane of model `config`, serving the instance loaded at start.
    pub(crate) fn new(
        config: &ModelConfig,
        custom: &CustomBackends,
        loaded: Loaded,
    ) -> LaneBackend {
        LaneBackend {
            config: config.clone(),
            custom: custom.clone(),
            generation: AtomicU64::new(0),
            current: Mutex::new(Current {
                instance: Instance {
                    generation: 0,
                    backend: Ok(Arc::from(loaded.backend)),
                    batching: loaded.batching,
                },
                restarts: VecDeque::new(),
            }),
        }
    }

    /// The generation of the current instance: a worker whose instance is of another one moves.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current instance.
    pub(crate) fn current(&self) -> Instance {
        self.lock().instance.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // A panic never happens under this lock (loads run contained), so poison is only ever
        // left by a bug elsewhere; the state it guards stays consistent either way.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a contained panic of the instance of generation `seen`, as soon as it is caught
    /// (before the requests the call held are answered), and starts the lane's restart: when
    /// `seen` is still the current instance, the generation moves at once, so that the lane's
    /// other workers take no more work to the broken instance (they wait in [`current`] for the
    /// new one), and the returned [`Restart`] loads the new instance when the caller has
    /// answered. A panic of an instance already replaced is counted and nothing more (`None`).
    ///
    /// [`current`]: LaneBackend::current
    pub(crate) fn panicked<'a>(
        &'a self,
        seen: u64,
        panic: &Panicked,
        counters: &'a LaneHeader,
    ) -> Option<Restart<'a>> {
        counters.panics.fetch_add(1, Ordering::Relaxed);
        let name = &self.config.name;
        // The quick look spares a second panicking worker the wait for the first one's load.
        let current = (self.generation() == seen).then(|| self.lock());
        let Some(current) = current.filter(|c| c.instance.generation == seen) else {
            tracing::error!(model = %name, panic = %panic.0, "backend panicked (the lane was already restarted)");
            return None;
        };
        // SYNC(generation): Release here only stops the other workers early; the instance they
        // then wait for is published by the store in `Restart::finish`, under the lock they
        // wait on.
        self.generation.store(seen + 1, Ordering::Release);
        Some(Restart {
            lane: self,
            current,
            panic: panic.clone(),
            counters,
        })
    }
}

/// A restart of a lane's backend begun by [`LaneBackend::panicked`]: holds the lane's instance
/// (its other workers wait for the new one) until [`finish`](Restart::finish) loads it, or
/// marks the lane failed. Dropping it finishes it.
pub(crate) struct Restart<'a> {
    lane: &'a LaneBackend,
    current: std::sync::MutexGuard<'a, Current>,
    panic: Panicked,
    counters: &'a LaneHeader,
}

impl Restart<'_> {
    /// Loads the new instance (on the calling worker, while the lane's other workers wait), or
    /// marks the lane failed when it has had its restarts within the window or the load fails.
    /// (The work is done on drop, so that a restart is never left half done.)
    pub(crate) fn finish(self) {
        drop(self);
    }
}

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        let Restart {
            lane,
            current,
            panic,
            counters,
        } = self;
        let name = &lane.config.name;
        let now = Instant::now();
        while current
            .restarts
            .front()
            .is_some_and(|&t| now.duration_since(t) > RESTART_WINDOW)
        {
            current.restarts.pop_front();
        }
        let next = if current.restarts.len() >= RESTART_LIMIT {
            Err(format!(
                "model {name:?} has failed: its backend panicked {} times within {} s (last: \
                 {}); restart the server to serve it again",
                RESTART_LIMIT + 1,
                RESTART_WINDOW.as_secs(),
                panic.0
            ))
        } else {
            tracing::error!(model = %name, panic = %panic.0, "backend panicked; loading a new instance");
            load(&lane.config, &lane.custom).map_err(|e| {
                format!(
                    "model {name:?} has failed: its backend panicked ({}) and a new instance \
                     could not be loaded: {e}",
                    panic.0
                )
            })
        };
        let generation = current.instance.generation + 1;
        current.instance = match next {
            Ok(loaded) => {
                current.restarts.push_back(now);
                counters.restarts.fetch_add(1, Ordering::Relaxed);
                Instance {
                    generation,
                    backend: Ok(Arc::from(loaded.backend)),
                    batching: loaded.batching,
                }
            }
            Err(why) => {
                tracing::error!(model = %name, %why, "lane failed");
                // SYNC(lane state): Release; `status` reads it with Acquire. Nothing else rides on
                // it: the workers learn of the failure from the instance.
                counters.state.store(LANE_FAILED, Ordering::Release);
                Instance {
                    generation,
                    backend: Err(why),
                    batching: None,
                }
            }
        };
        // The previous instance is dropped by the last worker that still holds it (contained
        // there): the reference dropped here is never the last, the panicking worker holds one.
        // The lock, released after this, publishes the new instance to the workers waiting in
        // `current`.
    }
}
