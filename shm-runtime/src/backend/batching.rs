//! Requests run together: [`Batching`], for a backend that runs several whole requests in one
//! call ([`Backend::run_batch`](super::Backend::run_batch)), and the [`Stepper`] of continuous
//! batching, for one that decodes step by step, with what it reports of each sequence
//! ([`StepEvent`], [`Admitted`]).

use std::time::Duration;

use super::BackendError;
use crate::protocol::{ArchivedRequest, FinishReason, TokenLogprob, Usage};

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
    /// Most requests in one [`Backend::run_batch`](super::Backend::run_batch) call.
    pub max_batch: usize,
    /// How long a partial batch may wait for more requests (only while other clients are
    /// connected, so a lone client never waits).
    pub max_delay: Duration,
}

/// What a decode step did for one sequence of a [`Stepper`].
///
/// Stop sequences are the worker's business, not the stepper's: the worker runs each sequence's
/// text through [`StopStrings`](super::StopStrings), holds back what could begin one, and ends
/// the sequence ([`Stepper::release`], finish `Stop`) when one completes.
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
