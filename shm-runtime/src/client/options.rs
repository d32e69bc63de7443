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
/// [`Client::generate`]: crate::Client::generate
/// [`Client::chat`]: crate::Client::chat
/// [`Error::InvalidRequest`]: crate::Error::InvalidRequest
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new();
    /// assert_eq!(opts, GenerateOptions::default());
    /// assert_eq!((opts.max_tokens, opts.temperature, opts.priority), (64, 0.0, 1));
    /// ```
    pub fn new() -> GenerateOptions {
        GenerateOptions::default()
    }

    /// At most `n` new tokens.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-{}-{}", "max-tokens", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// use shm_runtime::GenerateOptions;
    ///
    /// // The echo model answers its prompt, one token per character.
    /// let opts = GenerateOptions::new().max_tokens(5);
    /// let g = client.generate("echo", "hello there", &opts)?;
    /// assert_eq!(g.text, "hello");
    /// assert_eq!(g.usage.completion_tokens, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sampling temperature (0: greedy).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let creative = GenerateOptions::new().temperature(0.8).seed(7);
    /// assert_eq!(creative.temperature, 0.8);
    /// assert_eq!(GenerateOptions::new().temperature, 0.0, "greedy by default");
    /// ```
    #[must_use]
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Nucleus sampling threshold.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new().top_p(0.9);
    /// assert_eq!(opts.top_p, 0.9);
    /// ```
    #[must_use]
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Sample among the `k` most likely tokens only.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new().top_k(40);
    /// assert_eq!(opts.top_k, 40);
    /// ```
    #[must_use]
    pub fn top_k(mut self, k: u32) -> Self {
        self.top_k = k;
        self
    }

    /// Min-p sampling: drops tokens less than `p` times as likely as the most likely one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new().min_p(0.05);
    /// assert_eq!(opts.min_p, 0.05);
    /// ```
    #[must_use]
    pub fn min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }

    /// The sampler's seed.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// // Sampled, yet the same tokens on every run.
    /// let opts = GenerateOptions::new().temperature(0.7).seed(42);
    /// assert_eq!(opts.seed, 42);
    /// ```
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Penalty on repeated tokens.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new().repetition_penalty(1.1);
    /// assert_eq!(opts.repetition_penalty, 1.1);
    /// ```
    #[must_use]
    pub fn repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = p;
        self
    }

    /// Penalty on every token already generated, however often.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new().presence_penalty(0.5);
    /// assert_eq!(opts.presence_penalty, 0.5);
    /// ```
    #[must_use]
    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.presence_penalty = p;
        self
    }

    /// Penalty on a token per time it was generated.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new().frequency_penalty(0.5);
    /// assert_eq!(opts.frequency_penalty, 0.5);
    /// ```
    #[must_use]
    pub fn frequency_penalty(mut self, p: f32) -> Self {
        self.frequency_penalty = p;
        self
    }

    /// Each token's log-probability with the `n` most likely tokens at its position
    /// ([`Generation::logprobs`], [`StreamEvent::Delta`]).
    ///
    /// [`Generation::logprobs`]: crate::Generation::logprobs
    /// [`StreamEvent::Delta`]: crate::StreamEvent::Delta
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use shm_runtime::{Client, GenerateOptions};
    ///
    /// let client = Client::connect("svc")?;
    /// let g = client.generate("smollm2", "The sky is", &GenerateOptions::new().logprobs(3))?;
    /// for (token, lp) in g.tokens.iter().zip(&g.logprobs) {
    ///     println!("{token}: {} ({} alternatives)", lp.logprob, lp.top.len());
    /// }
    /// # Ok::<(), shm_runtime::Error>(())
    /// ```
    #[must_use]
    pub fn logprobs(mut self, n: u8) -> Self {
        self.logprobs = n;
        self
    }

    /// Strings that end the generation.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, Server, ServerConfig};
    /// # let name = format!("doc-stop-{}", std::process::id());
    /// use shm_runtime::config::OptionValue;
    /// use shm_runtime::{FinishReason, GenerateOptions, ModelConfig};
    ///
    /// // A sleep model that steps like a decoder generates "t0 t1 t2 ...".
    /// let mut steps = ModelConfig::new("steps", "sleep");
    /// steps.options.insert("slots".into(), OptionValue::Integer(2));
    /// steps.options.insert("step_ms".into(), OptionValue::Float(1.0));
    /// # let _server = Server::start(ServerConfig::new(&name, vec![steps]))?;
    /// # let client = Client::connect(&name)?;
    /// let opts = GenerateOptions::new().max_tokens(10).stop([" t3", "\n"]);
    /// let g = client.generate("steps", "count", &opts)?;
    /// assert_eq!(g.text, "t0 t1 t2");
    /// assert_eq!(g.finish_reason, FinishReason::Stop);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn stop<S: Into<String>>(mut self, stop: impl IntoIterator<Item = S>) -> Self {
        self.stop = stop.into_iter().map(Into::into).collect();
        self
    }

    /// The request's deadline, from when it is sent.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-timeout-{}", std::process::id());
    /// # let slow = vec![ModelConfig::new("slow", "sleep")];
    /// # let _server = Server::start(ServerConfig::new(&name, slow))?;
    /// # let client = Client::connect(&name)?;
    /// use std::time::Duration;
    /// use shm_runtime::{Error, GenerateOptions};
    ///
    /// // `slow`, a sleep model, takes 10 ms a token: 1000 tokens take far longer than 50 ms.
    /// let opts = GenerateOptions::new().max_tokens(1000).timeout(Duration::from_millis(50));
    /// let r = client.generate("slow", "go", &opts);
    /// assert!(matches!(r, Err(Error::TimedOut)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Priority, 0 (most urgent) to 3.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::GenerateOptions;
    ///
    /// // Interactive requests ahead of the batch jobs (priority 1 by default).
    /// let interactive = GenerateOptions::new().priority(0);
    /// assert!(interactive.priority < GenerateOptions::default().priority);
    /// ```
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
///
/// # Examples
///
/// ```
/// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
/// use shm_runtime::{GenerateOptions, Message};
///
/// # let name = format!("doc-message-{}", std::process::id());
/// # let echo = vec![ModelConfig::new("echo", "echo")];
/// # let _server = Server::start(ServerConfig::new(&name, echo))?;
/// # let client = Client::connect(&name)?;
/// let chat = [Message::system("Answer in one word."), Message::user("Capital of France?")];
/// assert_eq!(chat[1].role, "user");
/// // The echo model answers the messages' contents, one per line.
/// let g = client.chat("echo", &chat, &GenerateOptions::default())?;
/// assert_eq!(g.text, "Answer in one word.\nCapital of France?");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who says it: `system`, `user` or `assistant`.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::Message;
    ///
    /// let tool = Message::new("tool", "42");
    /// assert_eq!((tool.role.as_str(), tool.content.as_str()), ("tool", "42"));
    /// assert_eq!(Message::new("user", "hi"), Message::user("hi"));
    /// ```
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::Message;
    ///
    /// let m = Message::system("You are terse.");
    /// assert_eq!(m.role, "system");
    /// ```
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    /// A user message.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::Message;
    ///
    /// let m = Message::user("What is 2 + 2?");
    /// assert_eq!(m.role, "user");
    /// ```
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    /// An assistant message.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::Message;
    ///
    /// // An earlier answer of the model, given back as the chat goes on.
    /// let history = [Message::user("What is 2 + 2?"), Message::assistant("4")];
    /// assert_eq!(history[1].role, "assistant");
    /// ```
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}
