//! Model backends behind one trait. Built in: [`echo`] and [`sleep`] (a configurable delay), used
//! to test and measure everything but the model libraries; in test builds only (feature
//! `test-backends`), `panicking`, a backend that panics on a given input.
//!
//! # Examples
//!
//! ```
//! use shm_runtime::backend::{load, writer::Out};
//! use shm_runtime::protocol::{access_request, access_response, ArchivedBody, Input, Params};
//! use shm_runtime::protocol::{Request, Task};
//! use shm_runtime::ModelConfig;
//! # use shm_runtime::{backend as b, protocol as p};
//! # /// Runs a backend outside a server: never stops, keeps what is streamed.
//! # struct Ctx(Vec<p::StreamChunk>);
//! # impl b::RunContext for Ctx {
//! #     fn should_stop(&mut self) -> Option<b::Stop> {
//! #         None
//! #     }
//! #     fn emit(&mut self, chunk: p::StreamChunk) -> Result<(), b::Stop> {
//! #         self.0.push(chunk);
//! #         Ok(())
//! #     }
//! #     fn deadline(&self) -> std::time::Instant {
//! #         std::time::Instant::now() + std::time::Duration::from_secs(3600)
//! #     }
//! # }
//!
//! // What a server does with each model of its configuration ...
//! let backend = load(&ModelConfig::new("echo", "echo"))?;
//! // ... and with each request to it: run it, writing the answer in place.
//! let input = Input::Text("hi".into());
//! let params = Params::default();
//! let req = Request { id: 1, model: "echo".into(), task: Task::Generate, input, params };
//! let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
//! let mut chunk = rkyv::util::AlignedVec::<16>::new();
//! chunk.resize(1024, 0);
//! let mut out = Out::in_buffer(&mut chunk, req.id);
//! // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
//! backend.run(access_request(&bytes)?, &mut Ctx(Vec::new()), &mut out)?;
//! let answer = access_response(out.bytes().unwrap())?;
//! let ArchivedBody::Generation(g) = &answer.body else { panic!() };
//! assert_eq!(g.text, "hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
///
/// # Examples
///
/// ```
/// use std::time::Instant;
/// use shm_runtime::backend::{echo::Echo, writer::Out, Backend, BackendError, RunContext, Stop};
/// use shm_runtime::protocol::{access_request, Input, Params, Request, StreamChunk, Task};
///
/// /// The context of a request whose client cancelled it.
/// struct Cancelled;
/// impl RunContext for Cancelled {
///     fn should_stop(&mut self) -> Option<Stop> {
///         Some(Stop::Cancelled)
///     }
///     fn emit(&mut self, _: StreamChunk) -> Result<(), Stop> {
///         Err(Stop::Cancelled)
///     }
///     fn deadline(&self) -> Instant {
///         Instant::now()
///     }
/// }
/// # let params = Params { stream: true, ..Params::default() };
/// # let input = Input::Text("hello".into());
/// # let req = Request { id: 1, model: "echo".into(), task: Task::Generate, input, params };
/// # let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(1024, 0);
/// # let mut out = Out::in_buffer(&mut chunk, 1);
///
/// // `bytes`: an archived generation request with `stream` set. A streaming echo stops between
/// // its chunks.
/// let err = Echo.run(access_request(&bytes)?, &mut Cancelled, &mut out).unwrap_err();
/// assert!(matches!(err, BackendError::Stopped(Stop::Cancelled)));
/// assert_eq!(err.to_string(), "stopped: the client cancelled the request");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{echo::Echo, writer::Out, Backend, BackendError};
/// use shm_runtime::protocol::{access_request, Input, Params, Request, Task};
/// use shm_runtime::{Client, Error};
/// # use shm_runtime::{backend as b, protocol as p};
/// # /// Runs a backend outside a server: never stops, keeps what is streamed.
/// # struct Ctx(Vec<p::StreamChunk>);
/// # impl b::RunContext for Ctx {
/// #     fn should_stop(&mut self) -> Option<b::Stop> {
/// #         None
/// #     }
/// #     fn emit(&mut self, chunk: p::StreamChunk) -> Result<(), b::Stop> {
/// #         self.0.push(chunk);
/// #         Ok(())
/// #     }
/// #     fn deadline(&self) -> std::time::Instant {
/// #         std::time::Instant::now() + std::time::Duration::from_secs(3600)
/// #     }
/// # }
/// # let name = format!("doc-backend-error-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(1024, 0);
///
/// // The tensors task with a text: a request that does not suit the model.
/// let input = Input::Text("not a tensor".into());
/// let params = Params::default();
/// let req = Request { id: 1, model: "echo".into(), task: Task::Tensors, input, params };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let mut out = Out::in_buffer(&mut chunk, req.id);
/// // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
/// let err = Echo.run(access_request(&bytes)?, &mut Ctx(Vec::new()), &mut out).unwrap_err();
/// assert!(matches!(&err, BackendError::Invalid(m) if m == "the tensors task needs tensor input"));
/// // Served, the same failure reaches the client as an invalid request.
/// let client = Client::connect(&name)?;
/// let invalid = Error::InvalidRequest("the tensors task needs tensor input".into());
/// assert_eq!(client.infer(&req).unwrap_err(), invalid);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use shm_runtime::backend::{echo::Echo, writer::Out, Backend, RunContext, Stop};
/// use shm_runtime::protocol::{access_request, Input, Params, Request, StreamChunk, Task};
///
/// /// Runs a backend outside a server (in a test, say): never stops, keeps what is streamed.
/// struct Collect(Vec<StreamChunk>);
///
/// impl RunContext for Collect {
///     fn should_stop(&mut self) -> Option<Stop> {
///         None
///     }
///     fn emit(&mut self, chunk: StreamChunk) -> Result<(), Stop> {
///         self.0.push(chunk);
///         Ok(())
///     }
///     fn deadline(&self) -> Instant {
///         Instant::now() + Duration::from_secs(60)
///     }
/// }
/// # let params = Params { stream: true, ..Params::default() };
/// # let input = Input::Text("abc".into());
/// # let req = Request { id: 1, model: "echo".into(), task: Task::Generate, input, params };
/// # let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(1024, 0);
/// # let mut out = Out::in_buffer(&mut chunk, 1);
///
/// // `bytes`: an archived generation request for "abc", with `stream` set.
/// let mut ctx = Collect(Vec::new());
/// Echo.run(access_request(&bytes)?, &mut ctx, &mut out)?;
/// let streamed: Vec<&str> = ctx.0.iter().map(|c| c.text.as_str()).collect();
/// assert_eq!(streamed, ["a", "b", "c"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait RunContext {
    /// Whether to stop now (cancelled, deadline passed, client gone). Backends call it between
    /// steps; it may also take in new requests, so call it at least every few milliseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::{BackendError, RunContext, Stop};
    /// # use shm_runtime::protocol::StreamChunk;
    /// # struct Expired;
    /// # impl RunContext for Expired {
    /// #     fn should_stop(&mut self) -> Option<Stop> {
    /// #         Some(Stop::TimedOut)
    /// #     }
    /// #     fn emit(&mut self, _: StreamChunk) -> Result<(), Stop> {
    /// #         Err(Stop::TimedOut)
    /// #     }
    /// #     fn deadline(&self) -> std::time::Instant {
    /// #         std::time::Instant::now()
    /// #     }
    /// # }
    ///
    /// /// A backend's decode loop: it asks between steps.
    /// fn decode(ctx: &mut dyn RunContext, steps: u32) -> Result<u32, BackendError> {
    ///     for _ in 0..steps {
    ///         if let Some(stop) = ctx.should_stop() {
    ///             return Err(BackendError::Stopped(stop));
    ///         }
    ///         // ... one step of the model ...
    ///     }
    ///     Ok(steps)
    /// }
    /// // `Expired`: the context of a request whose deadline has passed.
    /// assert!(matches!(decode(&mut Expired, 100), Err(BackendError::Stopped(Stop::TimedOut))));
    /// ```
    fn should_stop(&mut self) -> Option<Stop>;
    /// Sends one stream chunk to the client (only when the request asked to stream).
    ///
    /// # Errors
    ///
    /// [`Stop`] when the run should end instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::{BackendError, RunContext};
    /// use shm_runtime::protocol::StreamChunk;
    /// # use shm_runtime::{backend as b, protocol as p};
    /// # /// Runs a backend outside a server: never stops, keeps what is streamed.
    /// # struct Ctx(Vec<p::StreamChunk>);
    /// # impl b::RunContext for Ctx {
    /// #     fn should_stop(&mut self) -> Option<b::Stop> {
    /// #         None
    /// #     }
    /// #     fn emit(&mut self, chunk: p::StreamChunk) -> Result<(), b::Stop> {
    /// #         self.0.push(chunk);
    /// #         Ok(())
    /// #     }
    /// #     fn deadline(&self) -> std::time::Instant {
    /// #         std::time::Instant::now() + std::time::Duration::from_secs(3600)
    /// #     }
    /// # }
    ///
    /// /// Streams `text` word by word, as a backend streams its pieces.
    /// fn stream_words(text: &str, ctx: &mut dyn RunContext) -> Result<(), BackendError> {
    ///     for (i, word) in text.split_inclusive(' ').enumerate() {
    ///         let chunk = StreamChunk {
    ///             index: i as u32,
    ///             text: word.into(),
    ///             tokens: Vec::new(),
    ///             logprobs: Vec::new(),
    ///         };
    ///         ctx.emit(chunk).map_err(BackendError::Stopped)?; // the client may be gone
    ///     }
    ///     Ok(())
    /// }
    /// let mut ctx = Ctx(Vec::new()); // keeps what is emitted
    /// stream_words("one two three", &mut ctx)?;
    /// assert_eq!(ctx.0.len(), 3);
    /// assert_eq!(ctx.0[2].text, "three");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn emit(&mut self, chunk: StreamChunk) -> Result<(), Stop>;
    /// The request's deadline.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shm_runtime::backend::RunContext;
    /// # use shm_runtime::{backend as b, protocol as p};
    /// # /// Runs a backend outside a server: never stops, keeps what is streamed.
    /// # struct Ctx(Vec<p::StreamChunk>);
    /// # impl b::RunContext for Ctx {
    /// #     fn should_stop(&mut self) -> Option<b::Stop> {
    /// #         None
    /// #     }
    /// #     fn emit(&mut self, chunk: p::StreamChunk) -> Result<(), b::Stop> {
    /// #         self.0.push(chunk);
    /// #         Ok(())
    /// #     }
    /// #     fn deadline(&self) -> std::time::Instant {
    /// #         std::time::Instant::now() + std::time::Duration::from_secs(3600)
    /// #     }
    /// # }
    ///
    /// /// Whether a step that cannot be interrupted can still finish in time.
    /// fn fits(ctx: &dyn RunContext, step: Duration) -> bool {
    ///     Instant::now() + step <= ctx.deadline()
    /// }
    /// let ctx = Ctx(Vec::new()); // a deadline an hour away
    /// assert!(fits(&ctx, Duration::from_millis(20)));
    /// assert!(!fits(&ctx, Duration::from_secs(2 * 3600)));
    /// ```
    fn deadline(&self) -> Instant;
}

/// How a backend wants its requests batched.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::backend::{Backend, Batching};
/// use shm_runtime::protocol::Task;
/// # use shm_runtime::backend::{writer::Out, BackendError, RunContext};
/// # use shm_runtime::protocol::ArchivedRequest;
///
/// /// A model that runs several requests in one call.
/// struct Batched;
///
/// impl Backend for Batched {
///     fn tasks(&self) -> &[Task] {
///         &[Task::Embed]
///     }
///     fn batching(&self) -> Option<Batching> {
///         // Up to 16 requests; a partial batch waits at most half a millisecond for more.
///         Some(Batching { max_batch: 16, max_delay: Duration::from_micros(500) })
///     }
///     // ... and `run_batch` (see its example) runs them.
/// #     fn run(&self, _: &ArchivedRequest, _: &mut dyn RunContext, _: &mut Out<'_>)
/// #         -> Result<(), BackendError> {
/// #         unimplemented!()
/// #     }
/// }
/// assert_eq!(Batched.batching().map(|b| b.max_batch), Some(16));
/// ```
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
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::backend::{sleep::Sleep, Backend, StepEvent};
/// use shm_runtime::protocol::{access_request, FinishReason};
/// # /// An archived generation request for `max_tokens` tokens.
/// # fn generate(max_tokens: u32) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let params = Params { max_tokens, ..Params::default() };
/// #     let input = Input::Text("hi".into());
/// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
///
/// let backend = Sleep { step: Duration::ZERO, slots: Some(1) };
/// let mut stepper = backend.stepper()?.unwrap();
/// stepper.admit(0, access_request(&generate(2))?)?; // asks for 2 tokens
/// let mut events = Vec::new();
/// stepper.step(&[false], &mut events);
/// stepper.step(&[false], &mut events);
/// let mut text = String::new();
/// for event in &events {
///     match event {
///         StepEvent::Token { text: piece, .. } => text.push_str(piece),
///         StepEvent::Done { finish, usage, .. } => {
///             assert_eq!((*finish, usage.generated_tokens), (FinishReason::Length, 2));
///         }
///         StepEvent::Failed { error, .. } => panic!("{error}"),
///     }
/// }
/// assert_eq!(text, "t0 t1 ");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::backend::{sleep::Sleep, Backend};
/// use shm_runtime::protocol::access_request;
/// # /// An archived generation request for `max_tokens` tokens.
/// # fn generate(max_tokens: u32) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let params = Params { max_tokens, ..Params::default() };
/// #     let input = Input::Text("hi".into());
/// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
///
/// let backend = Sleep { step: Duration::ZERO, slots: Some(1) };
/// let mut stepper = backend.stepper()?.unwrap();
/// let admitted = stepper.admit(0, access_request(&generate(40))?)?; // asks for 40 tokens
/// assert_eq!(admitted.max_tokens, 40); // the worker sizes the answer for this many
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// Most tokens it will generate.
    pub max_tokens: usize,
}

/// Continuous batching: several sequences decoded together, one step at a time, with new requests
/// joining between steps. A worker owns one stepper (and with it, the model's context).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::backend::{sleep::Sleep, Backend, StepEvent};
/// use shm_runtime::protocol::access_request;
/// # /// An archived generation request for `max_tokens` tokens.
/// # fn generate(max_tokens: u32) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let params = Params { max_tokens, ..Params::default() };
/// #     let input = Input::Text("hi".into());
/// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
///
/// // With slots, the sleep backend decodes step by step: a token per sequence per step.
/// let backend = Sleep { step: Duration::ZERO, slots: Some(2) };
/// let mut stepper = backend.stepper()?.expect("a stepping backend");
/// stepper.admit(0, access_request(&generate(2))?)?; // asks for 2 tokens
/// stepper.admit(1, access_request(&generate(3))?)?;
/// // What a worker does: step, and pass each sequence its events.
/// let mut events = Vec::new();
/// for _ in 0..3 {
///     stepper.step(&[false, false], &mut events);
/// }
/// let tokens = |slot: usize| {
///     let of_slot = |e: &&StepEvent| matches!(e, StepEvent::Token { slot: s, .. } if *s == slot);
///     events.iter().filter(of_slot).count()
/// };
/// assert_eq!((tokens(0), tokens(1)), (2, 3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Stepper {
    /// How many sequences can run at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::{sleep::Sleep, Backend};
    ///
    /// let backend = Sleep { step: Duration::ZERO, slots: Some(4) };
    /// let stepper = backend.stepper()?.unwrap();
    /// assert_eq!(stepper.slots(), 4); // a worker runs at most 4 sequences at once
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn slots(&self) -> usize;
    /// Takes request `req` into free slot `slot` (its prompt is processed in the next step).
    ///
    /// # Errors
    ///
    /// [`BackendError::Invalid`] for a request the model cannot run; the slot stays free.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::{sleep::Sleep, Backend, BackendError};
    /// use shm_runtime::protocol::{access_request, Input, Params, Request, Task};
    /// # /// An archived generation request for `max_tokens` tokens.
    /// # fn generate(max_tokens: u32) -> rkyv::util::AlignedVec {
    /// #     use shm_runtime::protocol::{Input, Params, Request, Task};
    /// #     let params = Params { max_tokens, ..Params::default() };
    /// #     let input = Input::Text("hi".into());
    /// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
    /// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
    /// # }
    ///
    /// let backend = Sleep { step: Duration::ZERO, slots: Some(2) };
    /// let mut stepper = backend.stepper()?.unwrap();
    /// assert_eq!(stepper.admit(0, access_request(&generate(8))?)?.max_tokens, 8);
    /// // A request this model cannot run leaves the slot free.
    /// let input = Input::Text("good".into());
    /// let params = Params::default();
    /// let req = Request { id: 2, model: "m".into(), task: Task::Classify, input, params };
    /// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
    /// assert!(matches!(stepper.admit(1, access_request(&bytes)?), Err(BackendError::Invalid(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn admit(&mut self, slot: usize, req: &ArchivedRequest) -> Result<Admitted, BackendError>;
    /// Runs one step for every admitted sequence whose slot is not set in `paused` (one flag per
    /// slot), reporting what happened through `events`. A paused sequence keeps its state and
    /// goes on from where it was at a later step (its client has not read what it was sent).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::{sleep::Sleep, Backend, StepEvent};
    /// use shm_runtime::protocol::access_request;
    /// # /// An archived generation request for `max_tokens` tokens.
    /// # fn generate(max_tokens: u32) -> rkyv::util::AlignedVec {
    /// #     use shm_runtime::protocol::{Input, Params, Request, Task};
    /// #     let params = Params { max_tokens, ..Params::default() };
    /// #     let input = Input::Text("hi".into());
    /// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
    /// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
    /// # }
    ///
    /// let backend = Sleep { step: Duration::ZERO, slots: Some(2) };
    /// let mut stepper = backend.stepper()?.unwrap();
    /// stepper.admit(0, access_request(&generate(5))?)?; // asks for 5 tokens
    /// stepper.admit(1, access_request(&generate(5))?)?;
    /// // Slot 1's client has not read what it was sent: its sequence waits.
    /// let mut events = Vec::new();
    /// stepper.step(&[false, true], &mut events);
    /// assert_eq!(events.len(), 1);
    /// assert!(matches!(events[0], StepEvent::Token { slot: 0, id: 0, .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn step(&mut self, paused: &[bool], events: &mut Vec<StepEvent>);
    /// Ends sequence `slot` now (cancelled, deadline, client gone) and frees what it held.
    /// Returns its token counts and timings so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::{sleep::Sleep, Backend};
    /// use shm_runtime::protocol::access_request;
    /// # /// An archived generation request for `max_tokens` tokens.
    /// # fn generate(max_tokens: u32) -> rkyv::util::AlignedVec {
    /// #     use shm_runtime::protocol::{Input, Params, Request, Task};
    /// #     let params = Params { max_tokens, ..Params::default() };
    /// #     let input = Input::Text("hi".into());
    /// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
    /// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
    /// # }
    ///
    /// let backend = Sleep { step: Duration::ZERO, slots: Some(1) };
    /// let mut stepper = backend.stepper()?.unwrap();
    /// stepper.admit(0, access_request(&generate(100))?)?; // asks for 100 tokens
    /// stepper.step(&[false], &mut Vec::new());
    /// // The client cancelled: the sequence ends now, with what it generated so far.
    /// let usage = stepper.release(0);
    /// assert_eq!(usage.generated_tokens, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn release(&mut self, slot: usize) -> Usage;
}

/// A loaded model.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::writer::Out;
/// use shm_runtime::backend::{Backend, BackendError, RunContext};
/// use shm_runtime::protocol::{ArchivedInput, ArchivedRequest, Task};
/// use shm_runtime::{Client, ModelConfig, ServerBuilder};
///
/// /// Embeds a text as its length in bytes.
/// struct Length;
///
/// impl Backend for Length {
///     fn tasks(&self) -> &[Task] {
///         &[Task::Embed]
///     }
///
///     fn run(
///         &self,
///         req: &ArchivedRequest,
///         _ctx: &mut dyn RunContext,
///         out: &mut Out<'_>,
///     ) -> Result<(), BackendError> {
///         let ArchivedInput::Text(text) = &req.input else {
///             return Err(BackendError::Invalid("send one text".into()));
///         };
///         out.embedding(1, |v| {
///             v[0] = text.len() as f32;
///             Ok(())
///         })
///     }
/// }
///
/// # let name = format!("doc-backend-{}", std::process::id());
/// let _server = ServerBuilder::new(&name)
///     .backend("length", |_: &ModelConfig| Ok::<_, String>(Length))
///     .model(ModelConfig::new("len", "length"))
///     .start()?;
/// let embedding = Client::connect(&name)?.embed("len", &["four"])?;
/// assert_eq!(embedding.row(0), [4.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Backend: Send + Sync + 'static {
    /// The tasks it does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::{echo::Echo, sleep::Sleep, Backend};
    /// use shm_runtime::protocol::Task;
    ///
    /// assert!(Echo.tasks().contains(&Task::Tensors));
    /// // The sleep backend with slots only generates: a client asking it to embed gets
    /// // `Error::ModelNotFound`.
    /// let stepping = Sleep { step: Duration::ZERO, slots: Some(2) };
    /// assert_eq!(stepping.tasks(), [Task::Generate]);
    /// ```
    fn tasks(&self) -> &[Task];
    /// How many threads one run keeps busy, its worker's own included (default 1). The server's
    /// automatic pinning ([`ServerConfig::pin`](crate::ServerConfig::pin)) pins only workers
    /// whose backend says 1, and counts the others' threads against the CPUs: threads a backend
    /// starts from its worker inherit the worker's CPU mask, and pinned would all share its CPU.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::{echo::Echo, Backend};
    /// use shm_runtime::protocol::Task;
    /// # use shm_runtime::backend::{writer::Out, BackendError, RunContext};
    /// # use shm_runtime::protocol::ArchivedRequest;
    ///
    /// /// Runs each request on a pool of 4 threads besides its worker.
    /// struct Parallel;
    ///
    /// impl Backend for Parallel {
    ///     fn tasks(&self) -> &[Task] {
    ///         &[Task::Embed]
    ///     }
    ///     fn threads(&self) -> usize {
    ///         5 // so its worker is not pinned to one CPU with its pool
    ///     }
    /// #     fn run(&self, _: &ArchivedRequest, _: &mut dyn RunContext, _: &mut Out<'_>)
    /// #         -> Result<(), BackendError> {
    /// #         unimplemented!()
    /// #     }
    /// }
    /// assert_eq!(Parallel.threads(), 5);
    /// assert_eq!(Echo.threads(), 1); // the default
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::{echo::Echo, writer::Out, Backend};
    /// use shm_runtime::protocol::{access_request, access_response, f32_native, ArchivedBody};
    /// use shm_runtime::protocol::{Input, Params, Request, Task};
    /// # use shm_runtime::{backend as b, protocol as p};
    /// # /// Runs a backend outside a server: never stops, keeps what is streamed.
    /// # struct Ctx(Vec<p::StreamChunk>);
    /// # impl b::RunContext for Ctx {
    /// #     fn should_stop(&mut self) -> Option<b::Stop> {
    /// #         None
    /// #     }
    /// #     fn emit(&mut self, chunk: p::StreamChunk) -> Result<(), b::Stop> {
    /// #         self.0.push(chunk);
    /// #         Ok(())
    /// #     }
    /// #     fn deadline(&self) -> std::time::Instant {
    /// #         std::time::Instant::now() + std::time::Duration::from_secs(3600)
    /// #     }
    /// # }
    ///
    /// let input = Input::Tokens(vec![1, 2, 3]);
    /// let params = Params::default();
    /// let req = Request { id: 1, model: "echo".into(), task: Task::Embed, input, params };
    /// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
    /// let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// chunk.resize(1024, 0);
    /// let mut out = Out::in_buffer(&mut chunk, req.id);
    /// // What a worker does with a request: run it, then hand what `out` holds to the client.
    /// // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
    /// Echo.run(access_request(&bytes)?, &mut Ctx(Vec::new()), &mut out)?;
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Embedding(v) = &answer.body else { panic!() };
    /// assert_eq!(f32_native(v), [1.0, 2.0, 3.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn run(
        &self,
        req: &ArchivedRequest,
        ctx: &mut dyn RunContext,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError>;

    /// Whether this backend runs several requests at once ([`run_batch`](Self::run_batch)), and
    /// how many. Batched requests do not stream.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::{echo::Echo, Backend, Batching};
    /// use shm_runtime::protocol::Task;
    /// # use shm_runtime::backend::{writer::Out, BackendError, RunContext};
    /// # use shm_runtime::protocol::ArchivedRequest;
    ///
    /// /// A classifier whose batch size is an option of its model.
    /// struct Classifier {
    ///     max_batch: usize,
    /// }
    ///
    /// impl Backend for Classifier {
    ///     fn tasks(&self) -> &[Task] {
    ///         &[Task::Classify]
    ///     }
    ///     fn batching(&self) -> Option<Batching> {
    ///         let max_delay = Duration::from_micros(500);
    ///         let batching = Batching { max_batch: self.max_batch, max_delay };
    ///         (self.max_batch > 1).then_some(batching)
    ///     }
    /// #     fn run(&self, _: &ArchivedRequest, _: &mut dyn RunContext, _: &mut Out<'_>)
    /// #         -> Result<(), BackendError> {
    /// #         unimplemented!()
    /// #     }
    /// }
    /// assert_eq!(Classifier { max_batch: 8 }.batching().unwrap().max_batch, 8);
    /// assert_eq!(Classifier { max_batch: 1 }.batching(), None); // one request per `run`
    /// assert_eq!(Echo.batching(), None); // the default
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::{echo::Echo, sleep::Sleep, Backend};
    ///
    /// assert!(Echo.stepper()?.is_none()); // requests go through `run`
    /// let sleep = Sleep { step: Duration::from_millis(10), slots: Some(4) };
    /// let stepper = sleep.stepper()?.expect("the sleep backend steps when it has slots");
    /// assert_eq!(stepper.slots(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn stepper(&self) -> Result<Option<Box<dyn Stepper + '_>>, BackendError> {
        Ok(None)
    }

    /// Runs requests together; result `i` (and answer `outs[i]`) belongs to `reqs[i]`. Only called
    /// when [`batching`](Self::batching) says so; deadlines and cancels were checked just before.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::backend::{Backend, BackendError, Batching, RunContext};
    /// use shm_runtime::protocol::{access_request, access_response, f32_native, tokens_native};
    /// use shm_runtime::protocol::{ArchivedBody, ArchivedInput, ArchivedRequest, Input, Params};
    /// use shm_runtime::protocol::{Request, Task};
    ///
    /// /// Embeds token ids as floats, several requests per call.
    /// struct Floats;
    ///
    /// impl Backend for Floats {
    /// #     fn tasks(&self) -> &[Task] {
    /// #         &[Task::Embed]
    /// #     }
    /// #     fn batching(&self) -> Option<Batching> {
    /// #         Some(Batching { max_batch: 8, max_delay: std::time::Duration::from_micros(500) })
    /// #     }
    /// #     fn run(&self, req: &ArchivedRequest, _: &mut dyn RunContext, out: &mut Out<'_>)
    /// #         -> Result<(), BackendError> {
    /// #         embed(req, out)
    /// #     }
    ///     // (`tasks`, `batching` and `run` as usual)
    ///     fn run_batch(
    ///         &self,
    ///         reqs: &[&ArchivedRequest],
    ///         outs: &mut [Out<'_>],
    ///     ) -> Vec<Result<(), BackendError>> {
    ///         // A model would run all of `reqs` in one call here.
    ///         reqs.iter().zip(outs).map(|(req, out)| embed(req, out)).collect()
    ///     }
    /// }
    ///
    /// /// The answer to one request.
    /// fn embed(req: &ArchivedRequest, out: &mut Out<'_>) -> Result<(), BackendError> {
    ///     let ArchivedInput::Tokens(t) = &req.input else {
    ///         return Err(BackendError::Invalid("send token ids".into()));
    ///     };
    ///     let t = tokens_native(t);
    ///     out.embedding(t.len(), |v| {
    ///         v.iter_mut().zip(t).for_each(|(v, t)| *v = *t as f32);
    ///         Ok(())
    ///     })
    /// }
    ///
    /// # let request = |input| Request { id: 1, model: "m".into(), task: Task::Embed, input,
    /// #     params: Params::default() };
    /// # let tokens = rkyv::to_bytes::<rkyv::rancor::Error>(&request(Input::Tokens(vec![1, 2])))?;
    /// # let text = rkyv::to_bytes::<rkyv::rancor::Error>(&request(Input::Text("x".into())))?;
    /// # let mut a = rkyv::util::AlignedVec::<16>::new();
    /// # let mut b = rkyv::util::AlignedVec::<16>::new();
    /// # a.resize(1024, 0);
    /// # b.resize(1024, 0);
    /// // Two requests, token ids and a text, batched by a worker:
    /// let mut outs = [Out::in_buffer(&mut a, 1), Out::in_buffer(&mut b, 2)];
    /// let reqs = [access_request(&tokens)?, access_request(&text)?];
    /// let results = Floats.run_batch(&reqs, &mut outs);
    /// assert!(matches!(results[1], Err(BackendError::Invalid(_)))); // its failure is its own
    /// let answer = access_response(outs[0].bytes().unwrap())?;
    /// let ArchivedBody::Embedding(v) = &answer.body else { panic!() };
    /// assert_eq!(f32_native(v), [1.0, 2.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{echo::Echo, task_mask, Backend};
/// use shm_runtime::protocol::Task;
///
/// let mask = task_mask(&[Task::Embed, Task::Generate]);
/// assert_eq!(mask, 0b110); // bit `task as u32` of each task
/// assert_ne!(mask & (1 << Task::Generate as u32), 0);
/// assert_eq!(task_mask(Echo.tasks()), 0b1111);
/// ```
pub fn task_mask(tasks: &[Task]) -> u32 {
    tasks.iter().fold(0, |m, t| m | (1 << (*t as u32)))
}
