//! The options of a generation ([`GenerateOptions`], a builder with defaults) and the messages of
//! a chat ([`Message`]), as the typed calls take them.

use std::time::Duration;

use crate::protocol::Params;

/// How to generate: the sampling parameters and limits of [`Client::generate`],
/// [`Client::chat`] and their streams. The defaults: at most 64 new tokens, greedy decoding
/// (temperature 0), no penalties, no stop strings, no log-probabilities, the client's timeout,
/// normal priority. The server checks the ranges (`protocol::Limits`); a value outside one is
/// an [`Error::InvalidRequest`] naming it.
///
/// ```
/// use shm_runtime::GenerateOptions;
///
/// let opts = GenerateOptions::new()
///     .max_tokens(200)
///     .temperature(0.7)
///     .min_p(0.05)
///     .frequency_penalty(0.5)
///     .seed(42)
///     .stop(["\n\n"])
///     .logprobs(3);
/// assert_eq!(opts.max_tokens, 200);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus sampling: only the most likely tokens whose probabilities add up to this.
    pub top_p: f32,
    /// Only the `top_k` most likely tokens (0: no limit).
    pub top_k: u32,
    /// Only tokens at least this fraction as likely as the most likely one, in 0..=1 (0: off).
    pub min_p: f32,
    /// Seed of the sampler (the same seed gives the same tokens); all 64 bits count.
    pub seed: u64,
    /// Penalty on tokens of the last 64, prompt included (1: none; > 1 discourages them).
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token generated so far, in -2..=2 (0: none).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated, in -2..=2 (0: none).
    pub frequency_penalty: f32,
    /// Strings that end the generation when generated; no part of one is ever in the text,
    /// streamed or not.
    pub stop: Vec<String>,
    /// With each token, its log-probability and this many most likely tokens (0: none; at most
    /// 20).
    pub logprobs: u8,
    /// The request's deadline, from when it is sent; `None` takes the client's timeout.
    pub timeout: Option<Duration>,
    /// Priority, 0 (most urgent) to 3.
    pub priority: u8,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        let p = Params::default();
        GenerateOptions {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            seed: p.seed,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            stop: Vec::new(),
            logprobs: p.logprobs,
            timeout: None,
            priority: p.priority,
        }
    }
}

impl GenerateOptions {
    /// The defaults.
    pub fn new() -> GenerateOptions {
        GenerateOptions::default()
    }

    /// At most `n` new tokens.
    #[must_use]
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sampling temperature (0: greedy).
    #[must_use]
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Nucleus sampling threshold.
    #[must_use]
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Sample among the `k` most likely tokens only.
    #[must_use]
    pub fn top_k(mut self, k: u32) -> Self {
        self.top_k = k;
        self
    }

    /// Min-p sampling: drops tokens less than `p` times as likely as the most likely one.
    #[must_use]
    pub fn min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }

    /// The sampler's seed.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Penalty on repeated tokens.
    #[must_use]
    pub fn repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = p;
        self
    }

    /// Penalty on every token already generated, however often.
    #[must_use]
    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.presence_penalty = p;
        self
    }

    /// Penalty on a token per time it was generated.
    #[must_use]
    pub fn frequency_penalty(mut self, p: f32) -> Self {
        self.frequency_penalty = p;
        self
    }

    /// Each token's log-probability with the `n` most likely tokens at its position
    /// ([`Generation::logprobs`], [`StreamEvent::Delta`]).
    #[must_use]
    pub fn logprobs(mut self, n: u8) -> Self {
        self.logprobs = n;
        self
    }

    /// Strings that end the generation.
    #[must_use]
    pub fn stop<S: Into<String>>(mut self, stop: impl IntoIterator<Item = S>) -> Self {
        self.stop = stop.into_iter().map(Into::into).collect();
        self
    }

    /// The request's deadline, from when it is sent.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Priority, 0 (most urgent) to 3.
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    pub(super) fn params(&self, stream: bool) -> Params {
        Params {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            stop: self.stop.clone(),
            logprobs: self.logprobs,
            stream,
            timeout_ms: self
                .timeout
                .map_or(0, |t| t.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
            priority: self.priority,
        }
    }
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who says it: `system`, `user` or `assistant`.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}
