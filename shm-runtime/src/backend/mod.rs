//! Model backends behind one trait. Built in: [`echo`] and [`sleep`] (a configurable delay), used
//! to test and measure everything but the model libraries.

pub mod echo;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod sleep;

use std::time::{Duration, Instant};

use crate::output::Out;
use crate::protocol::{ArchivedRequest, StreamChunk, Task};

/// Why a run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The client cancelled the request.
    Cancelled,
    /// The deadline passed.
    TimedOut,
    /// The client is gone.
    ClientGone,
}

/// Why a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The request does not suit this model (wrong task, tensor names, shapes...).
    #[error("{0}")]
    Invalid(String),
    /// The run was stopped between steps.
    #[error("stopped: {0:?}")]
    Stopped(Stop),
    /// The model failed.
    #[error("{0}")]
    Failed(String),
    /// No memory for the answer (the pool is exhausted or the answer exceeds the largest chunk).
    #[error("{0}")]
    Exhausted(String),
}

/// What a backend sees of the server while it runs a request: the deadline, the cancel flag, and
/// the stream it may emit chunks to.
pub trait RunContext {
    /// Whether to stop now (cancelled, deadline passed, client gone). Backends call it between
    /// steps; it may also take in new requests, so call it at least every few milliseconds.
    fn should_stop(&mut self) -> Option<Stop>;
    /// Sends one stream chunk to the client (only when the request asked to stream).
    ///
    /// # Errors
    ///
    /// [`Stop`] when the run should end instead.
    fn emit(&mut self, chunk: StreamChunk) -> Result<(), Stop>;
    /// The request's deadline.
    fn deadline(&self) -> Instant;
}

/// How a backend wants its requests batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most requests in one [`Backend::run_batch`] call.
    pub max_batch: usize,
    /// How long a partial batch may wait for more requests (only while other clients are
    /// connected, so a lone client never waits).
    pub max_delay: Duration,
}

/// A loaded model.
pub trait Backend: Send + Sync + 'static {
    /// The tasks it does.
    fn tasks(&self) -> &[Task];
    /// Runs one request, validated against the protocol limits already, and writes its final
    /// answer into `out` (in place, see [`Out`]). An `Ok` without an answer written is a backend
    /// failure.
    ///
    /// # Errors
    ///
    /// [`BackendError`]; whatever was written to `out` is then discarded.
    fn run(
        &self,
        req: &ArchivedRequest,
        ctx: &mut dyn RunContext,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError>;

    /// Whether this backend runs several requests at once ([`run_batch`](Self::run_batch)), and
    /// how many. Batched requests do not stream.
    fn batching(&self) -> Option<Batching> {
        None
    }

    /// Runs requests together; result `i` (and answer `outs[i]`) belongs to `reqs[i]`. Only called
    /// when [`batching`](Self::batching) says so; deadlines and cancels were checked just before.
    fn run_batch(
        &self,
        reqs: &[&ArchivedRequest],
        outs: &mut [Out<'_>],
    ) -> Vec<Result<(), BackendError>> {
        let _ = outs;
        reqs.iter()
            .map(|_| Err(BackendError::Failed("this backend does not batch".into())))
            .collect()
    }
}

/// Bit mask of tasks, as stored in the model table.
pub fn task_mask(tasks: &[Task]) -> u32 {
    tasks.iter().fold(0, |m, t| m | (1 << (*t as u32)))
}
