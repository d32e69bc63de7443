//! The request shapes: the seed's `serde_json` message and this project's [`Request`] with the
//! same content, and the seed-style semantic check.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use shm_runtime::protocol::{Input, Limits, Params, Request, Task};

use super::*;

/// The seed's sampling parameters.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SeedParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Top-k sampling.
    pub top_k: u32,
    /// Stream the answer.
    pub stream: bool,
    /// Deadline, milliseconds.
    pub timeout_ms: u64,
}

/// The seed's IPC message: an internally tagged enum (`{"type": "InferenceRequest", ...}`), as the
/// seed encoded it with `serde_json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type")]
pub enum SeedMessage {
    /// An inference request.
    InferenceRequest {
        /// Chosen by the client.
        request_id: u64,
        /// The model's name.
        model_id: String,
        /// The prompt, as token ids.
        prompt_tokens: Vec<u32>,
        /// Sampling parameters.
        params: SeedParams,
    },
    /// A cancellation.
    Cancel {
        /// The request to cancel.
        request_id: u64,
    },
}

/// The seed-shaped request of `n` prompt tokens.
pub fn seed_request(n: usize) -> SeedMessage {
    SeedMessage::InferenceRequest {
        request_id: 42,
        model_id: MODEL.to_owned(),
        prompt_tokens: (0..n).map(token).collect(),
        params: SeedParams {
            max_tokens: 256,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            stream: false,
            timeout_ms: 30_000,
        },
    }
}

/// This project's request with the same content as [`seed_request`]`(n)`.
pub fn our_request(n: usize) -> Request {
    Request {
        id: 42,
        model: MODEL.to_owned(),
        task: Task::Generate,
        input: Input::Tokens((0..n).map(token).collect()),
        params: Params {
            max_tokens: 256,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            stream: false,
            timeout_ms: 30_000,
            ..Params::default()
        },
    }
}

/// The seed-style semantic check of a parsed request: the same rules and limits as
/// [`check_request`](shm_runtime::protocol::check_request) applies to the equivalent fields.
///
/// # Errors
///
/// A sentence naming the first violated rule.
pub fn seed_check(msg: &SeedMessage, limits: &Limits) -> Result<()> {
    let SeedMessage::InferenceRequest {
        model_id,
        prompt_tokens,
        params,
        ..
    } = msg
    else {
        bail!("not an inference request");
    };
    ensure!(
        !model_id.is_empty() && model_id.len() <= limits.max_model_name,
        "model name must be 1..={} bytes",
        limits.max_model_name
    );
    ensure!(
        prompt_tokens.len() <= limits.max_tokens_in,
        "too many prompt tokens"
    );
    ensure!(
        params.temperature.is_finite() && (0.0..=10.0).contains(&params.temperature),
        "temperature out of range"
    );
    ensure!(
        params.top_p > 0.0 && params.top_p <= 1.0,
        "top_p out of range"
    );
    ensure!(
        (1..=limits.max_new_tokens).contains(&params.max_tokens),
        "max_tokens out of range"
    );
    ensure!(
        params.timeout_ms <= u64::from(limits.max_timeout_ms),
        "timeout_ms out of range"
    );
    Ok(())
}
