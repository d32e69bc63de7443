//! Model backends behind one trait. Built in: [`echo`] and [`sleep`] (a configurable delay), used
//! to test and measure everything but the model libraries; in test builds only (feature
//! `test-backends`), `panicking`, a backend that panics on a given input.

pub mod echo;
#[cfg(feature = "gguf")]
pub mod gguf;
#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(any(test, feature = "test-backends"))]
pub mod panicking;
mod registry;
pub mod sleep;
mod stops;
pub mod writer;

use std::time::{Duration, Instant};

pub use registry::{
    factory, is_built_in, load, load_with, CustomBackends, CustomFactory, Factory, LoadError,
};
pub use stops::{Released, StopStrings};

use crate::backend::writer::Out;
use crate::protocol::{ArchivedRequest, FinishReason, StreamChunk, Task, TokenLogprob, Usage};

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

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Cancelled => "the client cancelled the request",
            Stop::TimedOut => "the request's deadline passed",
            Stop::ClientGone => "the client is gone",
        })
    }
}

/// Why a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The request does not suit this model (wrong task, tensor names, shapes...).
    #[error("{0}")]
    Invalid(String),
    /// The run was stopped between steps.
    #[error("stopped: {0}")]
    Stopped(Stop),
    /// The model failed.
    #[error("{0}")]
    Failed(String),
    /// No memory for the answer (the pool is exhausted or the answer exceeds the largest chunk).
    #[error("{0}")]
    Exhausted(String),
}

impl From<writer::OutOfRoom> for BackendError {
    fn from(e: writer::OutOfRoom) -> Self {
        BackendError::Exhausted(e.0)
    }
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

/// What a decode step did for one sequence of a [`Stepper`].
///
/// Stop sequences are the worker's business, not the stepper's: the worker runs each sequence's
/// text through [`StopStrings`], holds back what could begin one, and ends the sequence
/// ([`Stepper::release`], finish `Stop`) when one completes.
#[derive(Debug)]
pub enum StepEvent {
    /// Sequence `slot` produced token `id`, whose text is `text` (possibly empty, when a character
    /// needs more tokens).
    Token {
        /// The sequence.
        slot: usize,
        /// The token id.
        id: u32,
        /// Its text.
        text: String,
        /// Its log-probability and the most likely alternatives, when the request asked for
        /// them (`Params::logprobs`).
        logprob: Option<TokenLogprob>,
    },
    /// Sequence `slot` ended (its last token, if any, was reported before): end of sequence
    /// (`Stop`) or `max_tokens` (`Length`).
    Done {
        /// The sequence.
        slot: usize,
        /// Why it ended.
        finish: FinishReason,
        /// Token counts and timings.
        usage: Usage,
    },
    /// Sequence `slot` failed; its slot is free again.
    Failed {
        /// The sequence.
        slot: usize,
        /// Why.
        error: BackendError,
    },
}

/// What [`Stepper::admit`] learnt about a request.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// Most tokens it will generate.
    pub max_tokens: usize,
}

/// Continuous batching: several sequences decoded together, one step at a time, with new requests
/// joining between steps. A worker owns one stepper (and with it, the model's context).
pub trait Stepper {
    /// How many sequences can run at once.
    fn slots(&self) -> usize;
    /// Takes request `req` into free slot `slot` (its prompt is processed in the next step).
    ///
    /// # Errors
    ///
    /// [`BackendError::Invalid`] for a request the model cannot run; the slot stays free.
    fn admit(&mut self, slot: usize, req: &ArchivedRequest) -> Result<Admitted, BackendError>;
    /// Runs one step for every admitted sequence whose slot is not set in `paused` (one flag per
    /// slot), reporting what happened through `events`. A paused sequence keeps its state and
    /// goes on from where it was at a later step (its client has not read what it was sent).
    fn step(&mut self, paused: &[bool], events: &mut Vec<StepEvent>);
    /// Ends sequence `slot` now (cancelled, deadline, client gone) and frees what it held.
    /// Returns its token counts and timings so far.
    fn release(&mut self, slot: usize) -> Usage;
}

/// A loaded model.
pub trait Backend: Send + Sync + 'static {
    /// The tasks it does.
    fn tasks(&self) -> &[Task];
    /// How many threads one run keeps busy, its worker's own included (default 1). The server's
    /// automatic pinning ([`ServerConfig::pin`](crate::ServerConfig::pin)) pins only workers
    /// whose backend says 1, and counts the others' threads against the CPUs: threads a backend
    /// starts from its worker inherit the worker's CPU mask, and pinned would all share its CPU.
    fn threads(&self) -> usize {
        1
    }
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

    /// A stepper for continuous batching, when this backend decodes step by step; the worker that
    /// calls this owns it for its life. `None` (the default): requests go through
    /// [`run`](Self::run) or [`run_batch`](Self::run_batch).
    ///
    /// # Errors
    ///
    /// When the backend cannot make one (a context could not be created).
    fn stepper(&self) -> Result<Option<Box<dyn Stepper + '_>>, BackendError> {
        Ok(None)
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
