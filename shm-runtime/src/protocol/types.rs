//! The archived types: requests, responses and error codes.

use rkyv::{Archive, Deserialize, Serialize};

/// What the model is asked to do.
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
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

/// Element data of a tensor, typed so that archived data stays aligned for its type.
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
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
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
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct LabelScore {
    /// The label.
    pub label: String,
    /// Its score (probability).
    pub score: f32,
}

/// Why a generation ended.
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error kind on the wire.
    pub code: ErrorCode,
    /// What was wrong, for the client's error message.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// An [`ErrorCode::InvalidRequest`] refusal.
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
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct EmbeddingRows {
    /// The dimension of each row.
    pub dim: u32,
    /// `rows x dim` values, row-major.
    pub values: Vec<f32>,
}

/// An error answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ErrorBody {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A sentence saying what went wrong.
    pub message: String,
}

/// A response to one request (a stream sends several, the last one final).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The content.
    pub body: Body,
}
