//! Warm-up: before [`Server::start`](super::Server::start) returns, each model answers one
//! inference through the real path (a client of the server's own process, the rings, a worker),
//! so that its first client does not pay for first-touch costs (weights paged in, ONNX Runtime's
//! and llama.cpp's first allocations). The model is then `ready` in its entry of the model table
//! (`failed` when the warm-up fails; `warming` until then). The warm-up requests are counted like
//! any other in `status`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::state::ServerState;
use crate::protocol::{Input, Params, Request, Task};
use crate::service::{MODEL_FAILED, MODEL_READY};
use crate::Client;

/// How long one model's warm-up may take.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// The warm-up request of a model serving the tasks of `mask` (bit per `Task`): one token of a
/// generation, or one short text embedded or classified. `None` for a model of named tensors
/// only, whose inputs nothing generic can fill: it is ready without one.
fn warm_up_request(model: &str, mask: u32) -> Option<Request> {
    let task = [Task::Generate, Task::Embed, Task::Classify]
        .into_iter()
        .find(|&t| mask & (1 << t as u32) != 0)?;
    Some(Request {
        id: 1,
        model: model.to_owned(),
        task,
        input: Input::Text("Hello.".into()),
        params: Params {
            max_tokens: 1,
            ..Params::default()
        },
    })
}

/// Warms every model up, one after the other, and records each one's state.
pub(super) fn warm_up(state: &ServerState) {
    let client = match Client::connect(&state.config.name) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(%e, "cannot connect to warm the models up; they are ready unwarmed");
            None
        }
    };
    for (i, lane) in state.lanes.iter().enumerate() {
        let entry = state.svc.model(i);
        let started = Instant::now();
        let outcome = match (&client, warm_up_request(&lane.name, lane.tasks)) {
            (Some(c), Some(req)) => c.infer_timeout(&req, WARM_UP_TIMEOUT).map(drop),
            _ => Ok(()),
        };
        match outcome {
            Ok(()) => {
                // SYNC(model state): Release; health checks read it with Acquire.
                entry.state.store(MODEL_READY, Ordering::Release);
                tracing::info!(model = %lane.name, ms = started.elapsed().as_millis() as u64, "model ready");
            }
            Err(e) => {
                entry.state.store(MODEL_FAILED, Ordering::Release);
                tracing::error!(model = %lane.name, %e, "the model's warm-up failed");
            }
        }
    }
}
