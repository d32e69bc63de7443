//! The archived response: what it carries ([`Body`]): label scores, embeddings, a finished
//! generation or a piece of a stream with its counts and log-probabilities, tensors, or an error.

use rkyv::{Archive, Deserialize, Serialize};

use super::{ErrorCode, Tensor};

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
    /// The [`Params::logprobs`](super::Params::logprobs) most likely tokens, most likely first.
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
    /// One per token of `tokens` when the request asked for them
    /// ([`Params::logprobs`](super::Params::logprobs)), else empty.
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
    /// One embedding per text of an [`Input::Texts`](super::Input::Texts) request, in order.
    Embeddings(EmbeddingRows),
    /// The label scores (best first) of each text of an [`Input::Texts`](super::Input::Texts)
    /// request, in order.
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
