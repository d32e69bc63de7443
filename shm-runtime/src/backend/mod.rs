//! Model backends behind one trait. Built in: [`echo`] and [`sleep`] (a configurable delay), used
//! to test and measure everything but the model libraries; in test builds only (feature
//! `test-backends`), `panicking`, a backend that panics on a given input.
//!
//! A model implements [`Backend`]; while it runs a request it sees the server through a
//! [`RunContext`]; one that decodes step by step also gives each worker a [`Stepper`] (continuous
//! batching). [`load`] makes the backend a model's configuration names.
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

mod batching;
pub mod echo;
#[cfg(feature = "gguf")]
pub mod gguf;
#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(any(test, feature = "test-backends"))]
pub mod panicking;
mod registry;
mod run;
pub mod sleep;
mod stops;
pub mod writer;

pub use batching::{Admitted, Batching, StepEvent, Stepper};
pub use registry::{
    factory, is_built_in, load, load_with, CustomBackends, CustomFactory, Factory, LoadError,
};
pub use run::{BackendError, RunContext, Stop};
pub use stops::{Released, StopStrings};

use crate::backend::writer::Out;
use crate::protocol::{ArchivedRequest, Task};

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
