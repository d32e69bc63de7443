//! The sleep backend: takes a configurable time per request (or per streamed token), checking for
//! cancel and deadline between steps. For tests of scheduling, deadlines, cancel and drain.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use shm_runtime::{Client, Error, GenerateOptions, ModelConfig, Server, ServerConfig};
//!
//! let mut slow = ModelConfig::new("slow", "sleep");
//! slow.options.insert("step_ms".into(), 50.into());
//! # let name = format!("doc-sleep-module-{}", std::process::id());
//! let _server = Server::start(ServerConfig::new(&name, vec![slow]))?;
//! let client = Client::connect(&name)?;
//! // 20 tokens of 50 ms each cannot be done in 100 ms.
//! let options = GenerateOptions::new().max_tokens(20).timeout(Duration::from_millis(100));
//! assert_eq!(client.generate("slow", "hi", &options).err(), Some(Error::TimedOut));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::{Duration, Instant};

use crate::backend::writer::Out;
use crate::backend::{Admitted, Backend, BackendError, RunContext, StepEvent, Stepper};
use crate::config::ModelConfig;
use crate::protocol::{ArchivedRequest, ArchivedTask, FinishReason, StreamChunk, Task, Usage};

/// Sleeps `step` per token, `max_tokens` tokens.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shm_runtime::backend::{sleep::Sleep, writer::Out, Backend};
/// use shm_runtime::protocol::{access_request, access_response, ArchivedBody};
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
/// # /// An archived generation request for `max_tokens` tokens.
/// # fn generate(max_tokens: u32) -> rkyv::util::AlignedVec {
/// #     use shm_runtime::protocol::{Input, Params, Request, Task};
/// #     let params = Params { max_tokens, ..Params::default() };
/// #     let input = Input::Text("hi".into());
/// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
/// #     rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap()
/// # }
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(1024, 0);
///
/// let sleep = Sleep { step: Duration::from_millis(1), slots: None };
/// let mut out = Out::in_buffer(&mut chunk, 1);
/// // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
/// sleep.run(access_request(&generate(3))?, &mut Ctx(Vec::new()), &mut out)?;
/// let answer = access_response(out.bytes().unwrap())?;
/// let ArchivedBody::Generation(g) = &answer.body else { panic!() };
/// assert_eq!(g.text, "t0 t1 t2 "); // after 3 ms
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sleep {
    /// Time per generated token (one step).
    pub step: Duration,
    /// With `Some(n)`, generation runs as continuous batching over `n` slots: one step (one
    /// `step` of sleep) gives every running sequence its next token, and new requests join between
    /// steps, the way a model decodes a batch.
    pub slots: Option<usize>,
}

impl Sleep {
    /// The backend a model configuration describes: options `step_ms` (a number, 0..=60000,
    /// default 10) and `slots` (an integer 1..=64: continuous batching over that many sequences).
    ///
    /// # Errors
    ///
    /// A sentence naming the bad option.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::backend::sleep::Sleep;
    /// use shm_runtime::ModelConfig;
    ///
    /// let mut model = ModelConfig::new("slow", "sleep");
    /// model.options.insert("step_ms".into(), 20.into());
    /// model.options.insert("slots".into(), 8.into());
    /// let sleep = Sleep::from_config(&model)?;
    /// assert_eq!((sleep.step, sleep.slots), (Duration::from_millis(20), Some(8)));
    /// model.options.insert("slots".into(), 100.into());
    /// let err = Sleep::from_config(&model).unwrap_err();
    /// assert_eq!(err, "option slots must be an integer in 1..=64");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config(m: &ModelConfig) -> Result<Sleep, String> {
        let ms = match m.options.get("step_ms") {
            None => 10.0,
            Some(v) => v.as_number().ok_or("option step_ms must be a number")?,
        };
        if !(0.0..=60_000.0).contains(&ms) {
            return Err(format!("step_ms {ms} out of range 0..=60000"));
        }
        let slots = match m.options.get("slots") {
            None => None,
            Some(v) => match v.as_integer() {
                Some(n @ 1..=64) => Some(n as usize),
                _ => return Err("option slots must be an integer in 1..=64".into()),
            },
        };
        Ok(Sleep {
            step: Duration::from_secs_f64(ms / 1000.0),
            slots,
        })
    }
}

const TASKS: [Task; 4] = [Task::Classify, Task::Embed, Task::Generate, Task::Tensors];

impl Backend for Sleep {
    fn tasks(&self) -> &[Task] {
        match self.slots {
            Some(_) => &TASKS[2..3],
            None => &TASKS,
        }
    }

    fn stepper(&self) -> Result<Option<Box<dyn Stepper + '_>>, BackendError> {
        Ok(self.slots.map(|n| {
            Box::new(SleepStepper {
                step: self.step,
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
        let start = Instant::now();
        let steps = req.params.max_tokens.to_native().max(1);
        let mut g = out.generation(steps as usize, steps as usize * 8)?;
        for i in 0..steps {
            if let Some(stop) = ctx.should_stop() {
                return Err(BackendError::Stopped(stop));
            }
            // Sleep in slices so that a cancel takes effect within a millisecond.
            let until = Instant::now() + self.step;
            while Instant::now() < until {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(1)));
                if let Some(stop) = ctx.should_stop() {
                    return Err(BackendError::Stopped(stop));
                }
            }
            let piece = format!("t{i} ");
            g.push(i, &piece)?;
            if req.params.stream {
                ctx.emit(StreamChunk {
                    index: i,
                    text: piece,
                    tokens: vec![i],
                    logprobs: Vec::new(),
                })
                .map_err(BackendError::Stopped)?;
            }
        }
        let generated_tokens = g.tokens() as u32;
        Ok(g.finish(
            FinishReason::Length,
            Usage {
                prompt_tokens: 0,
                generated_tokens,
                ttft_us: 0,
                total_us: start.elapsed().as_micros() as u64,
            },
        )?)
    }
}

/// One sequence of [`SleepStepper`].
#[derive(Debug)]
struct Seq {
    max: u32,
    n: u32,
    start: Instant,
    ttft_us: u64,
}

/// The sleep backend's continuous batching: a step sleeps once and advances every sequence.
#[derive(Debug)]
struct SleepStepper {
    step: Duration,
    seqs: Vec<Option<Seq>>,
}

impl Stepper for SleepStepper {
    fn slots(&self) -> usize {
        self.seqs.len()
    }

    fn admit(&mut self, slot: usize, req: &ArchivedRequest) -> Result<Admitted, BackendError> {
        if req.task != ArchivedTask::Generate {
            return Err(BackendError::Invalid("this model only generates".into()));
        }
        let max = req.params.max_tokens.to_native();
        if max == 0 {
            return Err(BackendError::Invalid(
                "max_tokens must be at least 1".into(),
            ));
        }
        self.seqs[slot] = Some(Seq {
            max,
            n: 0,
            start: Instant::now(),
            ttft_us: 0,
        });
        Ok(Admitted {
            max_tokens: max as usize,
        })
    }

    fn step(&mut self, paused: &[bool], events: &mut Vec<StepEvent>) {
        let is_paused = |slot: usize| paused.get(slot).copied().unwrap_or(false);
        if self
            .seqs
            .iter()
            .enumerate()
            .all(|(slot, s)| s.is_none() || is_paused(slot))
        {
            return;
        }
        std::thread::sleep(self.step);
        for (slot, seq) in self.seqs.iter_mut().enumerate() {
            let Some(s) = seq else { continue };
            if is_paused(slot) {
                continue;
            }
            let id = s.n;
            let text = format!("t{id} ");
            s.n += 1;
            if s.n == 1 {
                s.ttft_us = s.start.elapsed().as_micros() as u64;
            }
            events.push(StepEvent::Token {
                slot,
                id,
                text,
                logprob: None,
            });
            if s.n >= s.max {
                let usage = usage_of(s);
                events.push(StepEvent::Done {
                    slot,
                    finish: FinishReason::Length,
                    usage,
                });
                *seq = None;
            }
        }
    }

    fn release(&mut self, slot: usize) -> Usage {
        self.seqs[slot]
            .take()
            .map(|s| usage_of(&s))
            .unwrap_or_default()
    }
}

fn usage_of(s: &Seq) -> Usage {
    Usage {
        prompt_tokens: 0,
        generated_tokens: s.n,
        ttft_us: s.ttft_us,
        total_us: s.start.elapsed().as_micros() as u64,
    }
}
