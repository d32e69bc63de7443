//! Helpers over `shm-runtime`'s types (feature `runtime`): the one request builder, the expected
//! refusal of a bad request, the text of an answer, the sleep model's configuration, and a guard
//! that removes a dead server's segment.
//!
//! Only for `shm-runtime`'s integration tests and other crates' tests: its unit tests would see
//! these types as another crate's (see the crate documentation).
//!
//! # Examples
//!
//! ```
//! use shm_runtime::protocol::Params;
//! use shm_test_support::runtime::{generate, RequestExt};
//!
//! let r = generate("echo", "hello").with_id(7).with_max_tokens(4);
//! assert_eq!((r.id, r.model.as_str(), r.params.max_tokens), (7, "echo", 4));
//! assert_eq!(r.params.temperature, Params::default().temperature);
//! ```

use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
use shm_runtime::ring::pool::{PoolConfig, SizeClass};
use shm_runtime::ring::{Segment, SegmentOpenOptions};
use std::time::{Duration, Instant};

use shm_runtime::{Client, Error, ModelConfig, ResponseView, Ticket};

/// A request for `model` to do `task` on `input`, with id 0 (the client then checks no answer's
/// id) and default parameters.
pub fn request(model: &str, task: Task, input: Input) -> Request {
    Request {
        id: 0,
        model: model.into(),
        task,
        input,
        params: Params::default(),
    }
}

/// A Generate request for `model` on `text`, with id 0 and default parameters.
pub fn generate(model: &str, text: &str) -> Request {
    request(model, Task::Generate, Input::Text(text.into()))
}

/// Changes to a built request that read as one expression; other parameters are set on the
/// request's fields.
pub trait RequestExt {
    /// The request with this id (the client checks that its answers carry it).
    fn with_id(self, id: u64) -> Self;
    /// The request with this many tokens to generate at most.
    fn with_max_tokens(self, max_tokens: u32) -> Self;
}

impl RequestExt for Request {
    fn with_id(mut self, id: u64) -> Request {
        self.id = id;
        self
    }

    fn with_max_tokens(mut self, max_tokens: u32) -> Request {
        self.params.max_tokens = max_tokens;
        self
    }
}

/// The text of a final Generate answer.
///
/// # Panics
///
/// When `answer` is not a generation.
pub fn generated_text(answer: &ResponseView) -> String {
    match &answer.response().unwrap().body {
        ArchivedBody::Generation(g) => g.text.as_str().to_owned(),
        other => panic!("expected a generation, got {other:?}"),
    }
}

/// The built-in `sleep` backend as model `name`, taking `step_ms` milliseconds per token.
pub fn sleep_model(name: &str, step_ms: f64) -> ModelConfig {
    let mut m = ModelConfig::new(name, "sleep");
    m.options.insert(
        "step_ms".into(),
        shm_runtime::config::OptionValue::Float(step_ms),
    );
    m
}

/// The one error a refused request must get: its kind and a part of its message.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// `Error::InvalidRequest` whose message contains this.
    Invalid(&'static str),
    /// `Error::ModelNotFound` whose message contains this.
    NoModel(&'static str),
}

impl Want {
    /// Checks that `got` is this error.
    ///
    /// # Panics
    ///
    /// Naming the case `what`, when `got` is an answer or another error.
    pub fn check(self, what: &str, got: Result<ResponseView, Error>) {
        let ok = match (&got, self) {
            (Err(Error::InvalidRequest(m)), Want::Invalid(n)) => m.contains(n),
            (Err(Error::ModelNotFound(m)), Want::NoModel(n)) => m.contains(n),
            _ => false,
        };
        match got {
            Ok(v) => panic!("{what}: answered {:?}", v.response().map(|r| &r.body)),
            Err(e) => assert!(ok, "{what}: wanted {self:?}, got {e:?}"),
        }
    }
}

/// Removes a service's segment when dropped if its server is dead: a failing test that killed a
/// server leaves nothing in /dev/shm (a live server's segment is never removed).
#[derive(Debug)]
pub struct StaleSegment(pub String);

impl Drop for StaleSegment {
    fn drop(&mut self) {
        let _ = Segment::remove(&self.0, &SegmentOpenOptions::default().dir);
    }
}

/// The final answer of `t`, skipping stream chunks; fails the test after `limit`.
pub fn final_of(client: &Client, t: Ticket, limit: Duration) -> Result<ResponseView, Error> {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match client.recv(t, left) {
            Ok(v) if !v.is_final() => continue,
            Err(Error::TimedOut) if Instant::now() >= end => {
                panic!("no final answer for ticket {t:?} within {limit:?}")
            }
            other => return other,
        }
    }
}

/// One class of 64 chunks of 1 KiB (requests and answers of these tests take one chunk each),
/// `quota` chunks per client, no class share beyond that.
pub fn small_pool(quota: u32) -> PoolConfig {
    PoolConfig {
        classes: vec![SizeClass {
            chunk_size: 1024,
            count: 64,
        }],
        max_owners: 16,
        quota,
        class_share: 100,
    }
}
