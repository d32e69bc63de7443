//! The archived types: requests, responses and error codes.

use rkyv::{Archive, Deserialize, Serialize};

/// What the model is asked to do.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{ArchivedTask, Task};
///
/// // A task named in a configuration file.
/// let task = [Task::Classify, Task::Embed, Task::Generate, Task::Tensors]
///     .into_iter()
///     .find(|t| t.name() == "embed");
/// assert_eq!(task, Some(Task::Embed));
/// // Archived in a request, it reads back as itself.
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&Task::Embed)?;
/// let archived = rkyv::access::<ArchivedTask, rkyv::rancor::Error>(&bytes)?;
/// assert_eq!(archived.to_native(), Task::Embed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
pub enum Task {
    /// Text in, label scores out.
    Classify,
    /// Text (or tokens) in, one vector out.
    Embed,
    /// Prompt in, generated text out (optionally streamed).
    Generate,
    /// Named tensors in, named tensors out.
    Tensors,
}

impl Task {
    /// The task's name, as in configuration files: `classify`, `embed`, `generate`, `tensors`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::Task;
    ///
    /// assert_eq!(Task::Generate.name(), "generate");
    /// assert_eq!(Task::Tensors.to_string(), "tensors"); // Display writes the name
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Embed => "embed",
            Task::Generate => "generate",
            Task::Tensors => "tensors",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl ArchivedTask {
    /// The native task.
    pub fn to_native(self) -> Task {
        match self {
            ArchivedTask::Classify => Task::Classify,
            ArchivedTask::Embed => Task::Embed,
            ArchivedTask::Generate => Task::Generate,
            ArchivedTask::Tensors => Task::Tensors,
        }
    }
}

/// One chat message.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, ArchivedInput, ChatMessage, Input, Params, Request};
/// use shm_runtime::protocol::Task;
///
/// let chat = vec![
///     ChatMessage { role: "system".into(), content: "Answer briefly.".into() },
///     ChatMessage { role: "user".into(), content: "What is rkyv?".into() },
/// ];
/// let req = Request {
///     id: 1,
///     model: "smollm2".into(),
///     task: Task::Generate,
///     input: Input::Chat(chat),
///     params: Params::default(),
/// };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let ArchivedInput::Chat(messages) = &access_request(&bytes)?.input else {
///     panic!("not a chat")
/// };
/// assert_eq!(messages[1].role, "user");
/// assert_eq!(messages[1].content, "What is rkyv?");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

/// Element data of a tensor, typed so that archived data stays aligned for its type.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{i64_native, ArchivedTensorData, TensorData};
///
/// let ids = TensorData::I64(vec![101, 2023, 102]);
/// assert_eq!(ids.len(), 3);
/// // Archived, the elements keep their type's alignment: read in place, without a copy.
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&ids)?;
/// let archived = rkyv::access::<ArchivedTensorData, rkyv::rancor::Error>(&bytes)?;
/// let ArchivedTensorData::I64(v) = archived else { panic!("the variant travels") };
/// assert_eq!(i64_native(v), [101, 2023, 102]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// 32-bit signed integers.
    I32(Vec<i32>),
    /// Bytes.
    U8(Vec<u8>),
}

impl TensorData {
    /// Number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::TensorData;
    ///
    /// let pixels = TensorData::F32(vec![0.5; 3 * 224 * 224]);
    /// assert_eq!(pixels.len(), 150_528); // elements, not bytes
    /// ```
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::TensorData;
    ///
    /// assert!(TensorData::U8(Vec::new()).is_empty());
    /// assert!(!TensorData::I32(vec![0]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ArchivedTensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ArchivedTensorData::F32(v) => v.len(),
            ArchivedTensorData::I64(v) => v.len(),
            ArchivedTensorData::I32(v) => v.len(),
            ArchivedTensorData::U8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A named tensor with its shape.
///
/// # Examples
///
/// ```
/// # use shm_runtime::protocol::{access_request, check_request, Input, Limits, Params, Refusal};
/// # use shm_runtime::protocol::{Request, Task};
/// # /// Validates a tensors request of `t` as a server does.
/// # fn check(t: Tensor) -> Result<(), Refusal> {
/// #     let input = Input::Tensors(vec![t]);
/// #     let params = Params::default();
/// #     let req = Request { id: 1, model: "mlp".into(), task: Task::Tensors, input, params };
/// #     let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req).unwrap();
/// #     check_request(access_request(&bytes)?, &Limits::default())
/// # }
/// use shm_runtime::protocol::{Tensor, TensorData};
///
/// let x = Tensor { name: "x".into(), shape: vec![2, 3], data: TensorData::F32(vec![0.0; 6]) };
/// assert!(check(x.clone()).is_ok());
/// // The shape must hold exactly the elements given.
/// let wrong = Tensor { shape: vec![4, 4], ..x };
/// assert!(check(wrong).unwrap_err().message.contains("shape holds 16 elements, data has 6"));
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Tensor {
    /// Input or output name in the model.
    pub name: String,
    /// Dimensions; their product equals the element count.
    pub shape: Vec<u64>,
    /// The elements, row-major.
    pub data: TensorData,
}

/// The input of a request.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, check_request, ArchivedInput, Input, Limits};
/// use shm_runtime::protocol::{Params, Request, Task};
///
/// // Two texts embedded in one request, one row each in the answer.
/// let input = Input::Texts(vec!["a cat".into(), "a dog".into()]);
/// let params = Params::default();
/// let req = Request { id: 1, model: "minilm".into(), task: Task::Embed, input, params };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let archived = access_request(&bytes)?;
/// check_request(archived, &Limits::default())?;
/// match &archived.input {
///     ArchivedInput::Texts(texts) => assert_eq!(texts[1], "a dog"),
///     other => panic!("unexpected input {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Input {
    /// Plain text (tokenized by the server).
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A conversation (formatted with the model's chat template).
    Chat(Vec<ChatMessage>),
    /// Named tensors.
    Tensors(Vec<Tensor>),
    /// Several texts answered together in one answer (embed, classify): one row each, in order.
    Texts(Vec<String>),
}

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

/// An inference request.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, Input, Params, Request, Task};
///
/// let req = Request {
///     id: 42,
///     model: "smollm2".into(),
///     task: Task::Generate,
///     input: Input::Text("Once upon a time".into()),
///     params: Params { max_tokens: 16, ..Params::default() },
/// };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let archived = access_request(&bytes)?; // validated, then read in place
/// assert_eq!(archived.id, 42);
/// assert_eq!(archived.params.max_tokens, 16);
/// assert_eq!(rkyv::deserialize::<Request, rkyv::rancor::Error>(archived)?, req);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Request {
    /// Chosen by the client; echoed in every response to it.
    pub id: u64,
    /// Model name, as the server loaded it.
    pub model: String,
    /// What to do.
    pub task: Task,
    /// The input.
    pub input: Input,
    /// Parameters.
    pub params: Params,
}

/// A label and its score.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, ArchivedBody, Body, LabelScore, Response};
///
/// let scores = vec![
///     LabelScore { label: "positive".into(), score: 0.9 },
///     LabelScore { label: "negative".into(), score: 0.1 },
/// ];
/// let resp = Response { id: 1, body: Body::Classification(scores) };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&resp)?;
/// let ArchivedBody::Classification(read) = &access_response(&bytes)?.body else {
///     panic!("not a classification")
/// };
/// assert_eq!(read[0].label, "positive");
/// assert_eq!(read[0].score, 0.9);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct LabelScore {
    /// The label.
    pub label: String,
    /// Its score (probability).
    pub score: f32,
}

/// Why a generation ended.
///
/// # Examples
///
/// ```
/// use shm_runtime::{Client, FinishReason, GenerateOptions};
/// # let name = format!("doc-finish-reason-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
///
/// let client = Client::connect(&name)?;
/// // The echo model answers with its prompt, cut to `max_tokens` characters.
/// let g = client.generate("echo", "hello", &GenerateOptions::new().max_tokens(3))?;
/// assert_eq!(g.text, "hel");
/// assert_eq!(g.finish_reason, FinishReason::Length);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// End of sequence or a stop sequence.
    Stop,
    /// Cancelled by the client.
    Cancelled,
    /// The deadline passed.
    Timeout,
}

/// Counts and timings of a generation.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, ArchivedBody, Body, FinishReason, Generation};
/// use shm_runtime::protocol::{Response, Usage};
///
/// let usage = Usage { prompt_tokens: 12, generated_tokens: 3, ttft_us: 4_000, total_us: 9_000 };
/// let finish = FinishReason::Length;
/// let (text, tokens, logprobs) = ("a b c".into(), vec![1, 2, 3], Vec::new());
/// let body = Body::Generation(Generation { text, tokens, finish, usage, logprobs });
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&Response { id: 1, body })?;
/// let ArchivedBody::Generation(read) = &access_response(&bytes)?.body else { panic!() };
/// // Read back: the time per token after the first.
/// let u = &read.usage;
/// let decode_us = u.total_us.to_native() - u.ttft_us.to_native();
/// assert_eq!(decode_us / u64::from(u.generated_tokens.to_native() - 1), 2_500);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub generated_tokens: u32,
    /// Time to the first generated token, microseconds.
    pub ttft_us: u64,
    /// Total time, microseconds.
    pub total_us: u64,
}

/// One of the most likely tokens at a position of a generation.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{ArchivedTopLogprob, TopLogprob};
///
/// let top = TopLogprob { token: 3797, logprob: -0.105, text: " cat".into() };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&top)?;
/// let archived = rkyv::access::<ArchivedTopLogprob, rkyv::rancor::Error>(&bytes)?;
/// assert_eq!(archived.text, " cat");
/// assert_eq!(archived.to_native(), top);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TopLogprob {
    /// The token id.
    pub token: u32,
    /// Its natural log-probability (<= 0).
    pub logprob: f32,
    /// Its text (special tokens by name; bytes of a character split across tokens as U+FFFD).
    pub text: String,
}

/// The log-probability of one generated token, under the model's own distribution (the softmax
/// of its logits, before penalties, temperature and truncation), with the most likely tokens at
/// that position.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{ArchivedTokenLogprob, TokenLogprob, TopLogprob};
///
/// let lp = TokenLogprob {
///     logprob: -0.105,
///     text: " cat".into(),
///     top: vec![
///         TopLogprob { token: 3797, logprob: -0.105, text: " cat".into() },
///         TopLogprob { token: 3290, logprob: -2.4, text: " dog".into() },
///     ],
/// };
/// // The token generated was the most likely one, at about 90 %.
/// assert_eq!(lp.top[0].logprob, lp.logprob);
/// assert!((lp.logprob.exp() - 0.9).abs() < 0.01);
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&lp)?;
/// let archived = rkyv::access::<ArchivedTokenLogprob, rkyv::rancor::Error>(&bytes)?;
/// assert_eq!(archived.to_native(), lp);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TokenLogprob {
    /// The natural log-probability of the token generated (<= 0).
    pub logprob: f32,
    /// The token generated, as text (its piece alone; a character split over tokens gives
    /// replacement characters).
    pub text: String,
    /// The [`Params::logprobs`] most likely tokens, most likely first.
    pub top: Vec<TopLogprob>,
}

impl ArchivedTopLogprob {
    /// The native value.
    pub fn to_native(&self) -> TopLogprob {
        TopLogprob {
            token: self.token.to_native(),
            logprob: self.logprob.to_native(),
            text: self.text.as_str().to_owned(),
        }
    }
}

impl ArchivedTokenLogprob {
    /// The native value.
    pub fn to_native(&self) -> TokenLogprob {
        TokenLogprob {
            logprob: self.logprob.to_native(),
            text: self.text.as_str().to_owned(),
            top: self.top.iter().map(ArchivedTopLogprob::to_native).collect(),
        }
    }
}

/// A finished generation.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, ArchivedBody, ArchivedFinishReason, Body};
/// use shm_runtime::protocol::{FinishReason, Generation, Response, Usage};
///
/// let g = Generation {
///     text: "Hello".into(),
///     tokens: vec![15496],
///     finish: FinishReason::Stop,
///     usage: Usage { prompt_tokens: 3, generated_tokens: 1, ..Usage::default() },
///     logprobs: Vec::new(),
/// };
/// let resp = Response { id: 1, body: Body::Generation(g) };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&resp)?;
/// let ArchivedBody::Generation(read) = &access_response(&bytes)?.body else { panic!() };
/// assert_eq!(read.text, "Hello");
/// assert_eq!(read.tokens, [15496]);
/// assert_eq!(read.finish, ArchivedFinishReason::Stop);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Generation {
    /// Generated text (a stop sequence and what came after it cut off).
    pub text: String,
    /// Generated token ids (those of a stop sequence included).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Counts and timings.
    pub usage: Usage,
    /// One per token of `tokens` when the request asked for them ([`Params::logprobs`]), else
    /// empty.
    pub logprobs: Vec<TokenLogprob>,
}

/// A piece of a streamed generation.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, ArchivedBody, Body, Response, StreamChunk};
///
/// // A stream as a server sends it: one response per chunk (then a final one).
/// let mut text = String::new();
/// for (i, piece) in ["Hel", "lo"].into_iter().enumerate() {
///     let chunk = StreamChunk {
///         index: i as u32,
///         text: piece.into(),
///         tokens: vec![i as u32],
///         logprobs: Vec::new(),
///     };
///     let resp = Response { id: 1, body: Body::Chunk(chunk) };
///     let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&resp)?;
///     let ArchivedBody::Chunk(read) = &access_response(&bytes)?.body else { panic!() };
///     text.push_str(&read.text);
/// }
/// assert_eq!(text, "Hello"); // the chunks' texts together
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct StreamChunk {
    /// Position of this chunk in the stream, from 0.
    pub index: u32,
    /// The text released since the previous chunk: usually that of the new tokens, but text that
    /// could begin a stop sequence waits for the tokens that decide, and the last chunk may carry
    /// such text without tokens. The chunks' texts together are the final answer's text.
    pub text: String,
    /// The new token ids.
    pub tokens: Vec<u32>,
    /// One per token of `tokens` when the request asked for them, else empty.
    pub logprobs: Vec<TokenLogprob>,
}

/// Error kinds on the wire.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::ErrorCode;
/// use shm_runtime::Error;
///
/// // One byte on the wire ...
/// assert_eq!(ErrorCode::TimedOut as u8, 4);
/// assert_eq!(ErrorCode::from_u8(4), Some(ErrorCode::TimedOut));
/// assert_eq!(ErrorCode::TimedOut.to_string(), "the deadline passed");
/// // ... that a client turns into its own error.
/// assert_eq!(Error::from_code(ErrorCode::TimedOut, String::new()), Error::TimedOut);
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum ErrorCode {
    /// The request is malformed or breaks a limit.
    InvalidRequest = 1,
    /// No model of that name (or it does not do that task).
    ModelNotFound = 2,
    /// The client has too many requests in flight, or a queue is full.
    Busy = 3,
    /// The deadline passed before the request finished.
    TimedOut = 4,
    /// The client cancelled it.
    Cancelled = 5,
    /// The model backend failed.
    Backend = 6,
    /// The server is shutting down.
    ShuttingDown = 7,
    /// The server could not get memory for the answer.
    ResourceExhausted = 8,
}

impl ErrorCode {
    /// From the inline code of a descriptor.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{Descriptor, DescriptorKind, ErrorCode};
    ///
    /// // An error answered inline carries its code in the descriptor's `len`.
    /// let d = Descriptor::new(DescriptorKind::InlineError, 0, ErrorCode::Busy as u32, 7);
    /// assert_eq!(ErrorCode::from_u8(d.len as u8), Some(ErrorCode::Busy));
    /// assert_eq!(ErrorCode::from_u8(0), None); // untrusted: unknown codes are refused
    /// ```
    pub fn from_u8(v: u8) -> Option<ErrorCode> {
        Some(match v {
            1 => ErrorCode::InvalidRequest,
            2 => ErrorCode::ModelNotFound,
            3 => ErrorCode::Busy,
            4 => ErrorCode::TimedOut,
            5 => ErrorCode::Cancelled,
            6 => ErrorCode::Backend,
            7 => ErrorCode::ShuttingDown,
            8 => ErrorCode::ResourceExhausted,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::InvalidRequest => "the request is invalid",
            ErrorCode::ModelNotFound => "no such model, or it does not do that task",
            ErrorCode::Busy => "the service is busy",
            ErrorCode::TimedOut => "the deadline passed",
            ErrorCode::Cancelled => "the request was cancelled",
            ErrorCode::Backend => "the model failed",
            ErrorCode::ShuttingDown => "the server is shutting down",
            ErrorCode::ResourceExhausted => "the server has no memory for the answer",
        })
    }
}

/// Why the server refuses or ends a request: the code its client sees and a sentence that says
/// what was wrong. Validation returns these; the server answers them as error responses.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, check_request, ErrorCode, Input, Limits};
/// use shm_runtime::protocol::{Params, Request, Task};
///
/// let req = Request {
///     id: 1,
///     model: "".into(),
///     task: Task::Embed,
///     input: Input::Text("hi".into()),
///     params: Params::default(),
/// };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let refusal = check_request(access_request(&bytes)?, &Limits::default()).unwrap_err();
/// assert_eq!(refusal.code, ErrorCode::InvalidRequest);
/// assert_eq!(refusal.message, "model name must be 1..=64 bytes, got 0");
/// assert_eq!(refusal.to_string(), format!("the request is invalid: {}", refusal.message));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error kind on the wire.
    pub code: ErrorCode,
    /// What was wrong, for the client's error message.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{ErrorCode, Refusal};
    /// use shm_runtime::Error;
    ///
    /// let refusal = Refusal::new(ErrorCode::ModelNotFound, "no model named \"gpt\"");
    /// let sentence = "no such model, or it does not do that task: no model named \"gpt\"";
    /// assert_eq!(refusal.to_string(), sentence);
    /// // What the client makes of it.
    /// let e = Error::from_code(refusal.code, refusal.message);
    /// assert_eq!(e, Error::ModelNotFound("no model named \"gpt\"".into()));
    /// ```
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// An [`ErrorCode::InvalidRequest`] refusal.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{ErrorCode, Refusal};
    ///
    /// /// A check of a server's own, beside the protocol's limits.
    /// fn check_prompt(prompt: &str) -> Result<(), Refusal> {
    ///     if prompt.trim().is_empty() {
    ///         return Err(Refusal::invalid("the prompt is blank"));
    ///     }
    ///     Ok(())
    /// }
    /// assert_eq!(check_prompt("  ").unwrap_err().code, ErrorCode::InvalidRequest);
    /// ```
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::InvalidRequest, message)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

impl ArchivedErrorCode {
    /// The native code.
    pub fn to_native(&self) -> ErrorCode {
        match self {
            ArchivedErrorCode::InvalidRequest => ErrorCode::InvalidRequest,
            ArchivedErrorCode::ModelNotFound => ErrorCode::ModelNotFound,
            ArchivedErrorCode::Busy => ErrorCode::Busy,
            ArchivedErrorCode::TimedOut => ErrorCode::TimedOut,
            ArchivedErrorCode::Cancelled => ErrorCode::Cancelled,
            ArchivedErrorCode::Backend => ErrorCode::Backend,
            ArchivedErrorCode::ShuttingDown => ErrorCode::ShuttingDown,
            ArchivedErrorCode::ResourceExhausted => ErrorCode::ResourceExhausted,
        }
    }
}

/// What a response carries.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, ArchivedBody, Body, ErrorBody, ErrorCode};
/// use shm_runtime::protocol::Response;
///
/// /// What a client does with any answer: match on its archived body.
/// fn describe(bytes: &[u8]) -> String {
///     match &access_response(bytes).unwrap().body {
///         ArchivedBody::Embedding(v) => format!("{} floats", v.len()),
///         ArchivedBody::Error(e) => format!("error: {}", e.message),
///         other => format!("{other:?}"),
///     }
/// }
/// let ok = Response { id: 1, body: Body::Embedding(vec![0.0; 384]) };
/// let error = ErrorBody { code: ErrorCode::Backend, message: "out of memory".into() };
/// let failed = Response { id: 2, body: Body::Error(error) };
/// assert_eq!(describe(&rkyv::to_bytes::<rkyv::rancor::Error>(&ok)?), "384 floats");
/// assert_eq!(describe(&rkyv::to_bytes::<rkyv::rancor::Error>(&failed)?), "error: out of memory");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Body {
    /// Label scores, best first.
    Classification(Vec<LabelScore>),
    /// An embedding vector.
    Embedding(Vec<f32>),
    /// A finished generation (the final message of a stream too).
    Generation(Generation),
    /// A piece of a stream; more follow.
    Chunk(StreamChunk),
    /// Named output tensors.
    Tensors(Vec<Tensor>),
    /// The request failed.
    Error(ErrorBody),
    /// One embedding per text of an [`Input::Texts`] request, in order.
    Embeddings(EmbeddingRows),
    /// The label scores (best first) of each text of an [`Input::Texts`] request, in order.
    Classifications(Vec<Vec<LabelScore>>),
}

/// Embeddings of equal dimension, row after row.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, f32_native, ArchivedBody, Body, EmbeddingRows};
/// use shm_runtime::protocol::Response;
///
/// // Two texts, three values each.
/// let rows = EmbeddingRows { dim: 3, values: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0] };
/// let resp = Response { id: 1, body: Body::Embeddings(rows) };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&resp)?;
/// let ArchivedBody::Embeddings(e) = &access_response(&bytes)?.body else { panic!() };
/// let dim = e.dim.to_native() as usize;
/// let second = &f32_native(&e.values)[dim..2 * dim];
/// assert_eq!(second, [0.0, 1.0, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct EmbeddingRows {
    /// The dimension of each row.
    pub dim: u32,
    /// `rows x dim` values, row-major.
    pub values: Vec<f32>,
}

/// An error answer.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, ArchivedBody, Body, ErrorBody, ErrorCode};
/// use shm_runtime::protocol::Response;
///
/// let message = "the prompt is blank".into();
/// let body = Body::Error(ErrorBody { code: ErrorCode::InvalidRequest, message });
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&Response { id: 9, body })?;
/// let ArchivedBody::Error(e) = &access_response(&bytes)?.body else { panic!("not an error") };
/// assert_eq!(e.code.to_native(), ErrorCode::InvalidRequest);
/// assert_eq!(e.message, "the prompt is blank");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A sentence saying what went wrong.
    pub message: String,
}

/// A response to one request (a stream sends several, the last one final).
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, Body, Response};
///
/// let resp = Response { id: 7, body: Body::Embedding(vec![0.25, -1.0]) };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&resp)?;
/// let archived = access_response(&bytes)?; // validated, then read in place
/// assert_eq!(archived.id, 7); // the id of the request it answers
/// assert_eq!(rkyv::deserialize::<Response, rkyv::rancor::Error>(archived)?, resp);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The content.
    pub body: Body,
}
