//! Test only (built under `cfg(test)` or with the feature `test-backends`, which the workspace's
//! test helpers turn on; never in a plain build): the `panic` backend, which panics on a given
//! input, for the tests of panic containment.
//!
//! It generates the text it is given, one character per token, and panics on the text
//! [`TRIGGER`]: in [`Backend::run`] (a stream sends two parts first), in
//! [`Backend::run_batch`] (after answering the requests before it in the batch), or in a step of
//! its stepper (after two tokens). On [`ADMIT_TRIGGER`] its stepper's `admit` panics. An instance
//! that panicked is poisoned: every later call on it (or on its steppers) answers a `Backend`
//! error saying so, so a test sees whether the runtime replaced it.
//!
//! Options: `batch` (an integer 2..=64: runs requests in batches of up to that many, waiting up
//! to 50 ms for more), `slots` (an integer 1..=64: continuous batching over that many sequences),
//! `step_ms` (a number 0..=10000: the time of each step, of each `run` before it answers, and of
//! each batch; default 0), `panic_on_load` (a boolean: the factory itself panics).
//!
//! # Examples
//!
//! ```
//! use shm_runtime::backend::panicking::{MESSAGE, TRIGGER};
//! use shm_runtime::{Client, Error, GenerateOptions, ModelConfig, Server, ServerConfig};
//! # let name = format!("doc-panicking-{}", std::process::id());
//!
//! let _server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("p", "panic")]))?;
//! let client = Client::connect(&name)?;
//! let options = GenerateOptions::default();
//! // The panic is contained: the request that caused it gets a `Backend` error ...
//! let err = client.generate("p", TRIGGER, &options).unwrap_err();
//! assert!(matches!(&err, Error::Backend(m) if m.contains(MESSAGE)));
//! // ... and a new instance of the backend answers the next one.
//! assert_eq!(client.generate("p", "hello", &options)?.text, "hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::writer::Out;
use crate::backend::{Admitted, Backend, BackendError, Batching, RunContext, StepEvent, Stepper};
use crate::config::ModelConfig;
use crate::protocol::{ArchivedInput, ArchivedRequest, FinishReason, StreamChunk, Task, Usage};

/// The text on which a `panic` model panics.
///
/// # Examples
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// use shm_runtime::backend::panicking::{Panicking, TRIGGER};
/// use shm_runtime::backend::{writer::Out, Backend};
/// use shm_runtime::protocol::access_request;
/// use shm_runtime::ModelConfig;
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
/// # /// An archived generation request for `text`.
/// # fn generate(text: &str) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let (input, params) = (Input::Text(text.into()), Params::default());
/// #     let req = Request { id: 1, model: "p".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
/// # std::panic::set_hook(Box::new(|_| {})); // quiet
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(1024, 0);
/// # let mut out = Out::in_buffer(&mut chunk, 1);
///
/// let backend = Panicking::from_config(&ModelConfig::new("p", "panic"))?;
/// let panicky = generate(TRIGGER);
/// // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
/// let run = || backend.run(access_request(&panicky).unwrap(), &mut Ctx(Vec::new()), &mut out);
/// assert!(catch_unwind(AssertUnwindSafe(run)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const TRIGGER: &str = "panic";

/// The text on which the stepper of a `panic` model panics while admitting it.
///
/// # Examples
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// use shm_runtime::backend::panicking::{Panicking, ADMIT_TRIGGER};
/// use shm_runtime::backend::Backend;
/// use shm_runtime::protocol::access_request;
/// use shm_runtime::ModelConfig;
/// # /// An archived generation request for `text`.
/// # fn generate(text: &str) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let (input, params) = (Input::Text(text.into()), Params::default());
/// #     let req = Request { id: 1, model: "p".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
/// # std::panic::set_hook(Box::new(|_| {})); // quiet
///
/// let mut model = ModelConfig::new("p", "panic");
/// model.options.insert("slots".into(), 2.into());
/// let backend = Panicking::from_config(&model)?;
/// let mut stepper = backend.stepper()?.expect("with slots, it steps");
/// let request = generate(ADMIT_TRIGGER);
/// let admit = || stepper.admit(0, access_request(&request).unwrap());
/// assert!(catch_unwind(AssertUnwindSafe(admit)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const ADMIT_TRIGGER: &str = "panic in admit";

/// The panic's message.
///
/// # Examples
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// use shm_runtime::backend::panicking::{Panicking, MESSAGE, TRIGGER};
/// use shm_runtime::backend::{writer::Out, Backend};
/// use shm_runtime::protocol::access_request;
/// use shm_runtime::ModelConfig;
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
/// # /// An archived generation request for `text`.
/// # fn generate(text: &str) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let (input, params) = (Input::Text(text.into()), Params::default());
/// #     let req = Request { id: 1, model: "p".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
/// # std::panic::set_hook(Box::new(|_| {})); // quiet
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(1024, 0);
/// # let mut out = Out::in_buffer(&mut chunk, 1);
///
/// let backend = Panicking::from_config(&ModelConfig::new("p", "panic"))?;
/// let panicky = generate(TRIGGER);
/// // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
/// let run = || backend.run(access_request(&panicky).unwrap(), &mut Ctx(Vec::new()), &mut out);
/// let payload = catch_unwind(AssertUnwindSafe(run)).unwrap_err();
/// assert_eq!(payload.downcast_ref::<String>().map(String::as_str), Some(MESSAGE));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const MESSAGE: &str = "the test backend was asked to panic";

/// Generates its input and panics on [`TRIGGER`] (see the module docs).
///
/// # Examples
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// use shm_runtime::backend::panicking::{Panicking, TRIGGER};
/// use shm_runtime::backend::{writer::Out, Backend, BackendError};
/// use shm_runtime::protocol::access_request;
/// use shm_runtime::ModelConfig;
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
/// # /// An archived generation request for `text`.
/// # fn generate(text: &str) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let (input, params) = (Input::Text(text.into()), Params::default());
/// #     let req = Request { id: 1, model: "p".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
/// # std::panic::set_hook(Box::new(|_| {})); // quiet
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(1024, 0);
/// # let mut out = Out::in_buffer(&mut chunk, 1);
///
/// let backend = Panicking::from_config(&ModelConfig::new("p", "panic"))?;
/// let (panicky, fine) = (generate(TRIGGER), generate("fine"));
/// // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
/// let mut run = |req: &[u8]| {
///     backend.run(access_request(req).unwrap(), &mut Ctx(Vec::new()), &mut out)
/// };
/// assert!(run(&fine).is_ok());
/// assert!(catch_unwind(AssertUnwindSafe(|| run(&panicky))).is_err());
/// // Poisoned: a server that did not replace it would see every later call fail.
/// assert!(matches!(run(&fine), Err(BackendError::Failed(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Panicking {
    step: Duration,
    batch: Option<usize>,
    slots: Option<usize>,
    /// Set just before it panics.
    poisoned: AtomicBool,
}

const TASKS: [Task; 1] = [Task::Generate];

impl Panicking {
    /// The backend a model configuration describes (options in the module docs).
    ///
    /// # Errors
    ///
    /// A sentence naming the bad option.
    ///
    /// # Panics
    ///
    /// With `panic_on_load = true`, always.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::{panicking::Panicking, Backend};
    /// use shm_runtime::ModelConfig;
    ///
    /// let mut model = ModelConfig::new("p", "panic");
    /// model.options.insert("batch".into(), 4.into());
    /// let backend = Panicking::from_config(&model)?;
    /// assert_eq!(backend.batching().map(|b| b.max_batch), Some(4));
    /// model.options.insert("batch".into(), 1.into());
    /// let err = Panicking::from_config(&model).unwrap_err();
    /// assert_eq!(err, "option batch must be an integer in 2..=64");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config(m: &ModelConfig) -> Result<Panicking, String> {
        let int = |key: &str, range: std::ops::RangeInclusive<i64>| -> Result<_, String> {
            match m.options.get(key) {
                None => Ok(None),
                Some(v) => match v.as_integer() {
                    Some(n) if range.contains(&n) => Ok(Some(n as usize)),
                    _ => Err(format!("option {key} must be an integer in {range:?}")),
                },
            }
        };
        let ms = match m.options.get("step_ms") {
            None => 0.0,
            Some(v) => v.as_number().ok_or("option step_ms must be a number")?,
        };
        if !(0.0..=10_000.0).contains(&ms) {
            return Err(format!("step_ms {ms} out of range 0..=10000"));
        }
        if m.options.get("panic_on_load").and_then(|v| v.as_bool()) == Some(true) {
            panic!("{MESSAGE} (while loading)");
        }
        Ok(Panicking {
            step: Duration::from_secs_f64(ms / 1000.0),
            batch: int("batch", 2..=64)?,
            slots: int("slots", 1..=64)?,
            poisoned: AtomicBool::new(false),
        })
    }

    fn check(&self) -> Result<(), BackendError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(BackendError::Failed(
                "this instance of the panic backend panicked before and was not replaced".into(),
            ));
        }
        Ok(())
    }

    fn panic(&self) -> ! {
        self.poisoned.store(true, Ordering::Relaxed);
        panic!("{MESSAGE}");
    }
}

fn text_of(req: &ArchivedRequest) -> Result<&str, BackendError> {
    match &req.input {
        ArchivedInput::Text(t) => Ok(t.as_str()),
        _ => Err(BackendError::Invalid("the panic model takes text".into())),
    }
}

fn usage(n: usize) -> Usage {
    Usage {
        prompt_tokens: n as u32,
        generated_tokens: n as u32,
        ..Usage::default()
    }
}

/// Writes `text` as the generated answer.
fn answer(out: &mut Out<'_>, text: &str) -> Result<(), BackendError> {
    let ids: Vec<u32> = text.chars().map(u32::from).collect();
    let mut g = out.generation(ids.len(), text.len())?;
    g.push_text(text)?;
    g.push_tokens(&ids)?;
    Ok(g.finish(FinishReason::Length, usage(ids.len()))?)
}

impl Backend for Panicking {
    fn tasks(&self) -> &[Task] {
        &TASKS
    }

    fn batching(&self) -> Option<Batching> {
        self.batch.map(|max_batch| Batching {
            max_batch,
            max_delay: Duration::from_millis(50),
        })
    }

    fn stepper(&self) -> Result<Option<Box<dyn Stepper + '_>>, BackendError> {
        self.check()?;
        Ok(self.slots.map(|n| {
            Box::new(PanickingStepper {
                backend: self,
                seqs: (0..n).map(|_| None).collect(),
            }) as Box<dyn Stepper>
        }))
    }

    fn run(
        &self,
        req: &ArchivedRequest,
        ctx: &mut dyn RunContext,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        self.check()?;
        let text = text_of(req)?;
        let until = Instant::now() + self.step;
        while Instant::now() < until {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(1)));
            if let Some(stop) = ctx.should_stop() {
                return Err(BackendError::Stopped(stop));
            }
        }
        if req.params.stream {
            for (i, c) in text.chars().enumerate() {
                if text == TRIGGER && i == 2 {
                    self.panic();
                }
                ctx.emit(StreamChunk {
                    index: i as u32,
                    text: c.into(),
                    tokens: vec![c.into()],
                    logprobs: Vec::new(),
                })
                .map_err(BackendError::Stopped)?;
            }
        } else if text == TRIGGER {
            self.panic();
        }
        answer(out, text)
    }

    fn run_batch(
        &self,
        reqs: &[&ArchivedRequest],
        outs: &mut [Out<'_>],
    ) -> Vec<Result<(), BackendError>> {
        if let Err(e) = self.check() {
            let why = e.to_string();
            return reqs
                .iter()
                .map(|_| Err(BackendError::Failed(why.clone())))
                .collect();
        }
        std::thread::sleep(self.step);
        reqs.iter()
            .zip(outs.iter_mut())
            .map(|(req, out)| {
                let text = text_of(req)?;
                if text == TRIGGER {
                    self.panic();
                }
                answer(out, text)
            })
            .collect()
    }
}

/// One sequence of [`PanickingStepper`].
#[derive(Debug)]
struct Seq {
    chars: Vec<char>,
    /// Tokens generated so far.
    n: usize,
    /// Its text is [`TRIGGER`]: the step after its second token panics.
    trigger: bool,
}

/// The `panic` backend's continuous batching: a step gives every running sequence its next
/// character.
#[derive(Debug)]
struct PanickingStepper<'a> {
    backend: &'a Panicking,
    seqs: Vec<Option<Seq>>,
}

impl Stepper for PanickingStepper<'_> {
    fn slots(&self) -> usize {
        self.seqs.len()
    }

    fn admit(&mut self, slot: usize, req: &ArchivedRequest) -> Result<Admitted, BackendError> {
        self.backend.check()?;
        let text = text_of(req)?;
        if text == ADMIT_TRIGGER {
            self.backend.panic();
        }
        if text.is_empty() {
            return Err(BackendError::Invalid(
                "the panic model needs some text".into(),
            ));
        }
        let chars: Vec<char> = text.chars().collect();
        let max_tokens = chars.len();
        self.seqs[slot] = Some(Seq {
            chars,
            n: 0,
            trigger: text == TRIGGER,
        });
        Ok(Admitted { max_tokens })
    }

    fn step(&mut self, paused: &[bool], events: &mut Vec<StepEvent>) {
        std::thread::sleep(self.backend.step);
        let poisoned = self.backend.check().err();
        for (slot, seq) in self.seqs.iter_mut().enumerate() {
            if seq.is_none() || paused.get(slot).copied().unwrap_or(false) {
                continue;
            }
            if let Some(e) = &poisoned {
                *seq = None;
                let error = BackendError::Failed(e.to_string());
                events.push(StepEvent::Failed { slot, error });
                continue;
            }
            let Some(s) = seq.as_mut() else { continue };
            if s.trigger && s.n == 2 {
                self.backend.panic();
            }
            let c = s.chars[s.n];
            s.n += 1;
            events.push(StepEvent::Token {
                slot,
                id: c.into(),
                text: c.into(),
                logprob: None,
            });
            if s.n == s.chars.len() {
                let usage = usage(s.n);
                *seq = None;
                events.push(StepEvent::Done {
                    slot,
                    finish: FinishReason::Length,
                    usage,
                });
            }
        }
    }

    fn release(&mut self, slot: usize) -> Usage {
        self.seqs[slot]
            .take()
            .map(|s| usage(s.n))
            .unwrap_or_default()
    }
}
