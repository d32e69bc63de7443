//! A request's sampling and scheduling parameters ([`Params`]) and their defaults.

use rkyv::{Archive, Deserialize, Serialize};

/// Sampling and scheduling parameters.
///
/// # Examples
///
/// ```
/// # use shm_runtime::protocol::{access_request, check_request, Input, Limits, Refusal};
/// # use shm_runtime::protocol::{Request, Task};
/// # /// Validates a generation request with `params` as a server does.
/// # fn check(params: Params) -> Result<(), Refusal> {
/// #     let input = Input::Text("Hi".into());
/// #     let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
/// #     let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap();
/// #     check_request(access_request(&bytes)?, &Limits::default())
/// # }
/// use shm_runtime::protocol::Params;
///
/// let params = Params {
///     max_tokens: 32,
///     temperature: 0.7,
///     stop: vec!["\n".into()],
///     ..Params::default()
/// };
/// assert_eq!((params.top_p, params.priority), (1.0, 1)); // the rest as by default
/// assert!(check(params).is_ok());
/// // Ranges are checked by the server, after bytecheck.
/// let hot = Params { temperature: 11.0, ..Params::default() };
/// assert_eq!(check(hot).unwrap_err().message, "temperature must be in 0..=10, got 11");
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Params {
    /// Most tokens to generate (generation only; must be >= 1 there).
    pub max_tokens: u32,
    /// Sampling temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: f32,
    /// Top-k sampling; 0 means off.
    pub top_k: u32,
    /// Sampling seed: the same seed, prompt and parameters give the same tokens. All 64 bits
    /// count; a backend whose sampler takes fewer folds them (GGUF: `backend::gguf::sampler_seed`).
    pub seed: u64,
    /// Repetition penalty over the last 64 tokens, prompt included: a repeated token's logit is
    /// divided by it (multiplied when negative); 1 means off.
    pub repetition_penalty: f32,
    /// Min-p sampling, in 0..=1: only tokens at least this fraction as likely as the most likely
    /// one are kept; 0 means off.
    pub min_p: f32,
    /// Presence penalty, in -2..=2: subtracted from the logit of every token already generated;
    /// 0 means off.
    pub presence_penalty: f32,
    /// Frequency penalty, in -2..=2: subtracted from a token's logit once per time it was
    /// generated; 0 means off.
    pub frequency_penalty: f32,
    /// Stop sequences: the generation ends when one is generated, and the text ends before it.
    /// Text that could be the start of one is held back until it cannot, so no part of a stop
    /// sequence is ever sent, streamed or not. Honoured for every backend that decodes step by
    /// step (GGUF, `sleep` with `slots`); the one-call `echo` and `sleep` ignore them.
    pub stop: Vec<String>,
    /// Log-probabilities: 0 means none; n (at most [`Limits::max_logprobs`](super::Limits)) gives
    /// each generated token's log-probability and the n most likely tokens at its position.
    pub logprobs: u8,
    /// Stream the generation as chunks.
    pub stream: bool,
    /// Deadline, milliseconds from submission; 0 means the server's default.
    pub timeout_ms: u32,
    /// 0 (most urgent) ..= 3.
    pub priority: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            repetition_penalty: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            logprobs: 0,
            stream: false,
            timeout_ms: 0,
            priority: 1,
        }
    }
}
