//! What a backend's run sees and how it ends: the [`RunContext`] it runs under (deadline, cancel
//! flag, stream), the [`Stop`] that ends it early, and the [`BackendError`] it fails with.

use std::time::Instant;

use super::writer;
use crate::protocol::StreamChunk;

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
