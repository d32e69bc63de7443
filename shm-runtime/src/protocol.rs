//! The wire protocol: rkyv-archived requests and responses, serialized straight into pool chunks and
//! read in place after validation.
//!
//! A request travels as a 16-byte [`Desc`] on a ring that names a chunk; the chunk holds the
//! archived [`Request`]. The server validates it with bytecheck ([`access_request`]) and the
//! semantic [`Limits`] ([`check_request`]) before any field is used, and answers with an archived
//! [`Response`] in a chunk of its own (or, when even that is impossible, with an error code inline in
//! the descriptor).

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

/// Version of this protocol; lives in the service segment header. Bumped on any change to the
/// archived types or the descriptor format.
pub const PROTOCOL_VERSION: u32 = 4;

/// Bytes before the archive in a request chunk: a plain header with what the server needs to
/// queue a request before it validates the archive (priority, timeout, id), so that the archive is
/// validated once, when the request runs. Layout: `priority: u8, 0, 0, 0, timeout_ms: u32 LE,
/// id: u64 LE`. The archive follows, 16-byte aligned.
pub const REQUEST_HEAD: usize = 16;

/// Number of priority levels; 0 is the most urgent.
pub const PRIORITY_LEVELS: usize = 4;

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
    /// Sampling seed.
    pub seed: u64,
    /// Repetition penalty; 1 means off.
    pub repetition_penalty: f32,
    /// Stop sequences.
    pub stop: Vec<String>,
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
            stop: Vec::new(),
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

/// A finished generation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Generation {
    /// Generated text.
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Counts and timings.
    pub usage: Usage,
}

/// A piece of a streamed generation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct StreamChunk {
    /// Position of this chunk in the stream, from 0.
    pub index: u32,
    /// Text of the new tokens.
    pub text: String,
    /// The new token ids.
    pub tokens: Vec<u32>,
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

/// Validates `bytes` as an archived [`Request`] (bytecheck: every offset, length, enum tag and
/// UTF-8 string) and returns a view of it.
///
/// `bytes` must start at a 16-byte aligned address (pool chunks are 64-byte aligned).
///
/// # Errors
///
/// A sentence naming what is malformed.
pub fn access_request(bytes: &[u8]) -> Result<&ArchivedRequest, String> {
    rkyv::access::<ArchivedRequest, rancor::Error>(bytes)
        .map_err(|e| format!("the request is not a valid archive: {e}"))
}

/// Validates `bytes` as an archived [`Response`].
///
/// # Errors
///
/// A sentence naming what is malformed.
pub fn access_response(bytes: &[u8]) -> Result<&ArchivedResponse, String> {
    rkyv::access::<ArchivedResponse, rancor::Error>(bytes)
        .map_err(|e| format!("the response is not a valid archive: {e}"))
}

/// Serializes `value` into `out` (no allocation of an intermediate buffer) and returns the number
/// of bytes written.
///
/// Tries first with scratch space on the stack (no thread-local arena: the common answers need
/// none or little), then with rkyv's arena-backed serializer.
///
/// # Errors
///
/// When `out` is too small.
pub fn encode_into<T>(value: &T, out: &mut [u8]) -> Result<usize, rancor::Error>
where
    T: for<'x, 'a> Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::ser::writer::Buffer<'x>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rancor::Error,
            >,
        > + for<'x, 'c> Serialize<
            rkyv::api::low::LowSerializer<
                rkyv::ser::writer::Buffer<'x>,
                rkyv::ser::allocator::SubAllocator<'c>,
                rancor::Error,
            >,
        >,
{
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 512];
    if let Ok(buf) = rkyv::api::low::to_bytes_in_with_alloc::<_, _, rancor::Error>(
        value,
        rkyv::ser::writer::Buffer::from(&mut *out),
        rkyv::ser::allocator::SubAllocator::new(&mut scratch),
    ) {
        return Ok(buf.len());
    }
    let buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
        value,
        rkyv::ser::writer::Buffer::from(out),
    )?;
    Ok(buf.len())
}

/// Writes the request head and the archived request into a chunk; returns the bytes used.
///
/// # Errors
///
/// When `out` is too small.
pub fn encode_request(req: &Request, out: &mut [u8]) -> Result<usize, rancor::Error> {
    if out.len() < REQUEST_HEAD {
        return Err(<rancor::Error as rancor::Source>::new(HeadTooSmall));
    }
    let (head, body) = out.split_at_mut(REQUEST_HEAD);
    head[0] = req.params.priority;
    head[1..4].fill(0);
    head[4..8].copy_from_slice(&req.params.timeout_ms.to_le_bytes());
    head[8..16].copy_from_slice(&req.id.to_le_bytes());
    Ok(REQUEST_HEAD + encode_into(req, body)?)
}

#[derive(Debug, thiserror::Error)]
#[error("buffer smaller than the request head")]
struct HeadTooSmall;

/// The request head as read from a chunk (untrusted: check before use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Priority level.
    pub priority: u8,
    /// Deadline in milliseconds, 0 for the server's default.
    pub timeout_ms: u32,
    /// The request's id.
    pub id: u64,
}

/// Reads and checks a request head (the first [`REQUEST_HEAD`] bytes of a request chunk).
///
/// # Errors
///
/// A sentence naming what is out of range.
#[inline]
pub fn read_request_head(bytes: &[u8], limits: &Limits) -> Result<RequestHead, String> {
    let Some(head) = bytes.get(..REQUEST_HEAD) else {
        return Err(format!(
            "a request needs at least {REQUEST_HEAD} bytes, got {}",
            bytes.len()
        ));
    };
    let mut w = [0u8; 4];
    w.copy_from_slice(&head[4..8]);
    let timeout_ms = u32::from_le_bytes(w);
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[8..16]);
    let priority = head[0];
    // The messages format copies of the fields, never the head itself: a head whose address is
    // taken lives on the stack, and copying it out whole after field-wise stores stalls
    // store-to-load forwarding on every request.
    if usize::from(priority) >= PRIORITY_LEVELS || head[1..4] != [0, 0, 0] {
        return Err(format!(
            "request head: priority must be 0..={}, got {priority}",
            PRIORITY_LEVELS - 1,
        ));
    }
    if timeout_ms > limits.max_timeout_ms {
        return Err(format!(
            "timeout_ms {timeout_ms} exceeds the limit of {}",
            limits.max_timeout_ms
        ));
    }
    Ok(RequestHead {
        priority,
        timeout_ms,
        id: u64::from_le_bytes(id),
    })
}

/// Validates a whole request chunk's bytes: the head, the archive after it, the semantic limits,
/// and that the head agrees with the archive.
///
/// # Errors
///
/// A sentence naming the first problem.
pub fn access_request_chunk<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<(RequestHead, &'a ArchivedRequest), String> {
    let head = read_request_head(bytes, limits)?;
    let req = access_request(&bytes[REQUEST_HEAD..])?;
    check_request(req, limits)?;
    if req.params.priority != head.priority
        || req.params.timeout_ms.to_native() != head.timeout_ms
        || req.id.to_native() != head.id
    {
        return Err("the request head disagrees with the archived request".to_owned());
    }
    Ok((head, req))
}

/// Semantic limits every request is checked against after bytecheck.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest text input or chat message, bytes.
    pub max_text_bytes: usize,
    /// Most token ids.
    pub max_tokens_in: usize,
    /// Most chat messages.
    pub max_messages: usize,
    /// Most tensors.
    pub max_tensors: usize,
    /// Most elements in one tensor.
    pub max_tensor_elems: usize,
    /// Most dimensions of one tensor.
    pub max_rank: usize,
    /// Largest `max_tokens`.
    pub max_new_tokens: u32,
    /// Most stop sequences.
    pub max_stop: usize,
    /// Longest stop sequence, bytes.
    pub max_stop_bytes: usize,
    /// Longest model name, bytes.
    pub max_model_name: usize,
    /// Longest `timeout_ms`.
    pub max_timeout_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 256 << 10,
            max_tokens_in: 32 << 10,
            max_messages: 256,
            max_tensors: 16,
            max_tensor_elems: 16 << 20,
            max_rank: 8,
            max_new_tokens: 32 << 10,
            max_stop: 16,
            max_stop_bytes: 256,
            max_model_name: 64,
            max_timeout_ms: 3_600_000,
        }
    }
}

/// Checks an archived request against `limits`: sizes, counts, parameter ranges, tensor shapes.
/// Runs in time independent of the payload size except for tensor shapes and chat messages (a
/// handful of words each).
///
/// # Errors
///
/// A sentence naming the first violated rule.
pub fn check_request(req: &ArchivedRequest, limits: &Limits) -> Result<(), String> {
    if req.model.len() > limits.max_model_name || req.model.is_empty() {
        return Err(format!(
            "model name must be 1..={} bytes, got {}",
            limits.max_model_name,
            req.model.len()
        ));
    }
    match &req.input {
        ArchivedInput::Text(t) => {
            if t.len() > limits.max_text_bytes {
                return Err(format!(
                    "text of {} bytes exceeds the limit of {}",
                    t.len(),
                    limits.max_text_bytes
                ));
            }
        }
        ArchivedInput::Tokens(t) => {
            if t.len() > limits.max_tokens_in {
                return Err(format!(
                    "{} token ids exceed the limit of {}",
                    t.len(),
                    limits.max_tokens_in
                ));
            }
        }
        ArchivedInput::Chat(m) => {
            if m.len() > limits.max_messages {
                return Err(format!(
                    "{} chat messages exceed the limit of {}",
                    m.len(),
                    limits.max_messages
                ));
            }
            let total: usize = m.iter().map(|m| m.content.len() + m.role.len()).sum();
            if total > limits.max_text_bytes {
                return Err(format!(
                    "chat of {total} bytes exceeds the limit of {}",
                    limits.max_text_bytes
                ));
            }
        }
        ArchivedInput::Tensors(ts) => {
            if ts.len() > limits.max_tensors {
                return Err(format!(
                    "{} tensors exceed the limit of {}",
                    ts.len(),
                    limits.max_tensors
                ));
            }
            for t in ts.iter() {
                if t.shape.len() > limits.max_rank {
                    return Err(format!(
                        "tensor {:?} has rank {}, limit {}",
                        t.name.as_str(),
                        t.shape.len(),
                        limits.max_rank
                    ));
                }
                let mut elems: u64 = 1;
                for d in t.shape.iter() {
                    elems = elems.saturating_mul(d.to_native());
                }
                if elems != t.data.len() as u64 {
                    return Err(format!(
                        "tensor {:?}: shape holds {elems} elements, data has {}",
                        t.name.as_str(),
                        t.data.len()
                    ));
                }
                if t.data.len() > limits.max_tensor_elems {
                    return Err(format!(
                        "tensor {:?} of {} elements exceeds the limit of {}",
                        t.name.as_str(),
                        t.data.len(),
                        limits.max_tensor_elems
                    ));
                }
            }
        }
    }
    let p = &req.params;
    let temperature = p.temperature.to_native();
    if !(temperature.is_finite() && (0.0..=10.0).contains(&temperature)) {
        return Err(format!("temperature must be in 0..=10, got {temperature}"));
    }
    let top_p = p.top_p.to_native();
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(format!("top_p must be in (0, 1], got {top_p}"));
    }
    let rp = p.repetition_penalty.to_native();
    if !(rp.is_finite() && rp > 0.0 && rp <= 10.0) {
        return Err(format!("repetition_penalty must be in (0, 10], got {rp}"));
    }
    let max_tokens = p.max_tokens.to_native();
    if max_tokens > limits.max_new_tokens {
        return Err(format!(
            "max_tokens {max_tokens} exceeds the limit of {}",
            limits.max_new_tokens
        ));
    }
    if req.task == ArchivedTask::Generate && max_tokens == 0 {
        return Err("max_tokens must be at least 1 for generation".to_owned());
    }
    if p.stop.len() > limits.max_stop {
        return Err(format!(
            "{} stop sequences exceed the limit of {}",
            p.stop.len(),
            limits.max_stop
        ));
    }
    if let Some(s) = p
        .stop
        .iter()
        .find(|s| s.is_empty() || s.len() > limits.max_stop_bytes)
    {
        return Err(format!(
            "stop sequences must be 1..={} bytes, got {}",
            limits.max_stop_bytes,
            s.len()
        ));
    }
    if usize::from(p.priority) >= PRIORITY_LEVELS {
        return Err(format!(
            "priority must be 0..={}, got {}",
            PRIORITY_LEVELS - 1,
            p.priority
        ));
    }
    let timeout = p.timeout_ms.to_native();
    if timeout > limits.max_timeout_ms {
        return Err(format!(
            "timeout_ms {timeout} exceeds the limit of {}",
            limits.max_timeout_ms
        ));
    }
    Ok(())
}

macro_rules! native_slice {
    ($(#[$doc:meta])* $name:ident, $le:ty, $t:ty) => {
        $(#[$doc])*
        pub fn $name(v: &rkyv::vec::ArchivedVec<$le>) -> &[$t] {
            const _: () = assert!(
                std::mem::size_of::<$le>() == std::mem::size_of::<$t>()
                    && std::mem::align_of::<$le>() == std::mem::align_of::<$t>()
            );
            // SAFETY: on a little-endian target (the only kind that compiles: see the
            // compile_error beside the invocations) the archived type is a wrapper of the same size, alignment and bits as the native
            // one (asserted above); the slice is validated archive memory living as long as `v`.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<$t>(), v.len()) }
        }
    };
}

#[cfg(not(target_endian = "little"))]
compile_error!(
    "shm-runtime reads archived little-endian data in place: big-endian targets are not supported"
);

native_slice!(
    /// The token ids of an archived token input as a native slice, without copying.
    tokens_native,
    rkyv::rend::u32_le,
    u32
);
native_slice!(
    /// The elements of an archived f32 tensor as a native slice, without copying.
    f32_native,
    rkyv::rend::f32_le,
    f32
);
native_slice!(
    /// The elements of an archived i64 tensor as a native slice, without copying.
    i64_native,
    rkyv::rend::i64_le,
    i64
);
native_slice!(
    /// The elements of an archived i32 tensor as a native slice, without copying.
    i32_native,
    rkyv::rend::i32_le,
    i32
);
native_slice!(
    /// The dimensions of an archived shape as a native slice, without copying.
    u64_native,
    rkyv::rend::u64_le,
    u64
);

/// Kind of a ring descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DescKind {
    /// Client -> server: a request in the named chunk.
    Request = 1,
    /// Client -> server: cancel the request with this ticket.
    Cancel = 2,
    /// Server -> client: a non-final response (stream chunk) in the named chunk.
    Partial = 3,
    /// Server -> client: the final response in the named chunk.
    Final = 4,
    /// Server -> client: the final answer is an error whose code is in `len`; no chunk.
    InlineError = 5,
}

/// Largest length a descriptor can carry (24 bits), hence the largest usable chunk.
pub const MAX_DESC_LEN: usize = 0xFF_FFFF;

/// A ring descriptor: `[chunk id, kind:8 | len:24 | ticket:32]`. 16 bytes; everything in it is
/// untrusted on receipt.
pub type Desc = [u64; 2];

/// Builds a descriptor.
pub fn desc(kind: DescKind, chunk: u64, len: u32, ticket: u32) -> Desc {
    [
        chunk,
        (u64::from(kind as u8) << 56) | (u64::from(len & 0xFF_FFFF) << 32) | u64::from(ticket),
    ]
}

/// The ticket of a connection's `seq`-th request: the low 8 bits of the connection's epoch (its
/// client slot's epoch when it connected) in the top 8 bits, `seq` in the low 24. A client slot's
/// rings outlive its holders, so descriptors of a previous holder (left in a request ring, or an
/// answer delivered late) are told from the current holder's by their ticket alone.
pub fn ticket(epoch: u32, seq: u32) -> u32 {
    (epoch << 24) | (seq & 0xFF_FFFF)
}

/// Whether `ticket` was issued by the connection of epoch `epoch` (see [`ticket`]).
pub fn ticket_of_epoch(ticket: u32, epoch: u32) -> bool {
    ticket >> 24 == epoch & 0xFF
}

/// Splits a descriptor into (kind, chunk, len, ticket); `None` for an unknown kind.
pub fn parse_desc(d: Desc) -> Option<(DescKind, u64, u32, u32)> {
    let kind = match (d[1] >> 56) as u8 {
        1 => DescKind::Request,
        2 => DescKind::Cancel,
        3 => DescKind::Partial,
        4 => DescKind::Final,
        5 => DescKind::InlineError,
        _ => return None,
    };
    Some((kind, d[0], ((d[1] >> 32) & 0xFF_FFFF) as u32, d[1] as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: Input) -> Request {
        Request {
            id: 7,
            model: "echo".into(),
            task: Task::Generate,
            input,
            params: Params::default(),
        }
    }

    #[repr(C, align(16))]
    struct Aligned([u8; 4096]);

    #[test]
    fn encode_in_place_then_access_and_check() {
        let mut buf = Aligned([0; 4096]);
        let req = request(Input::Tokens((0..100).collect()));
        let n = encode_into(&req, &mut buf.0).unwrap();
        let a = access_request(&buf.0[..n]).unwrap();
        assert_eq!(a.id, 7);
        check_request(a, &Limits::default()).unwrap();
        match &a.input {
            ArchivedInput::Tokens(t) => {
                assert_eq!(tokens_native(t).iter().sum::<u32>(), 4950)
            }
            other => panic!("wrong input {other:?}"),
        }
    }

    #[test]
    fn a_too_small_buffer_is_an_error_not_a_panic() {
        let mut small = Aligned([0; 4096]);
        let req = request(Input::Text("x".repeat(5000)));
        assert!(encode_into(&req, &mut small.0).is_err());
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        let mut buf = Aligned([0; 4096]);
        // Longer than an inline string: the text is reached through a relative pointer and a
        // length, both of which a flip may corrupt.
        let text = "hello, shared memory";
        let req = request(Input::Text(text.into()));
        let n = encode_into(&req, &mut buf.0).unwrap();
        for cut in [0, 1, n / 2, n - 1] {
            assert!(access_request(&buf.0[..cut]).is_err(), "cut {cut}");
        }
        let text_at = buf.0[..n]
            .windows(text.len())
            .position(|w| w == text.as_bytes())
            .expect("the text is in the archive");
        let mut refused = 0;
        for i in 0..n {
            let mut b = Aligned([0; 4096]);
            b.0[..n].copy_from_slice(&buf.0[..n]);
            b.0[i] ^= 0xFF;
            match access_request(&b.0[..n]) {
                Err(e) => {
                    assert!(e.contains("not a valid archive"), "byte {i}: {e}");
                    refused += 1;
                }
                Ok(a) => {
                    // A flipped ASCII byte is never valid UTF-8.
                    assert!(
                        !(text_at..text_at + text.len()).contains(&i),
                        "byte {i} of the text flipped into invalid UTF-8 was accepted"
                    );
                    // What bytecheck accepts is a changed scalar (id, a parameter), never an
                    // archive that points elsewhere: the strings still read the same. (The
                    // model name is inline, ended by 0xFF padding: a flipped pad byte lengthens
                    // it with a NUL.)
                    assert_eq!(a.model.trim_end_matches('\0'), "echo", "byte {i}");
                    match &a.input {
                        ArchivedInput::Text(t) => assert_eq!(t.as_str(), text, "byte {i}"),
                        other => panic!("byte {i}: the input became {other:?}"),
                    }
                }
            }
        }
        assert!(refused >= text.len() + 4, "{refused} of {n} flips refused");
    }

    #[test]
    fn semantic_limits_name_the_rule() {
        let mut buf = Aligned([0; 4096]);
        let cases: Vec<(Request, &str)> = vec![
            (
                Request {
                    params: Params {
                        temperature: -1.0,
                        ..Params::default()
                    },
                    ..request(Input::Text("a".into()))
                },
                "temperature",
            ),
            (
                Request {
                    params: Params {
                        max_tokens: 0,
                        ..Params::default()
                    },
                    ..request(Input::Text("a".into()))
                },
                "max_tokens",
            ),
            (
                Request {
                    params: Params {
                        priority: 9,
                        ..Params::default()
                    },
                    ..request(Input::Text("a".into()))
                },
                "priority",
            ),
            (
                Request {
                    task: Task::Tensors,
                    ..request(Input::Tensors(vec![Tensor {
                        name: "x".into(),
                        shape: vec![2, 3],
                        data: TensorData::F32(vec![0.0; 5]),
                    }]))
                },
                "shape holds 6 elements",
            ),
            (
                Request {
                    model: String::new(),
                    ..request(Input::Text("a".into()))
                },
                "model name",
            ),
        ];
        for (req, needle) in cases {
            let n = encode_into(&req, &mut buf.0).unwrap();
            let a = access_request(&buf.0[..n]).unwrap();
            let err = check_request(a, &Limits::default()).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn request_chunks_carry_a_head_that_must_agree() {
        let mut buf = Aligned([0; 4096]);
        let mut req = request(Input::Text("hi".into()));
        req.params.priority = 2;
        req.params.timeout_ms = 250;
        req.id = 99;
        let n = encode_request(&req, &mut buf.0).unwrap();
        let limits = Limits::default();
        let (head, a) = access_request_chunk(&buf.0[..n], &limits).unwrap();
        assert_eq!(
            head,
            RequestHead {
                priority: 2,
                timeout_ms: 250,
                id: 99
            }
        );
        assert_eq!(a.id, 99);
        buf.0[0] = 1;
        let err = access_request_chunk(&buf.0[..n], &limits).unwrap_err();
        assert!(err.contains("disagrees"), "{err}");
        buf.0[0] = 7;
        assert!(read_request_head(&buf.0[..n], &limits)
            .unwrap_err()
            .contains("priority"));
        assert!(read_request_head(&buf.0[..8], &limits).is_err());
    }

    #[test]
    fn descriptors_round_trip() {
        let d = desc(DescKind::Final, 0xDEAD_BEEF, 1234, 99);
        assert_eq!(
            parse_desc(d),
            Some((DescKind::Final, 0xDEAD_BEEF, 1234, 99))
        );
        assert_eq!(parse_desc([0, 0]), None);
    }
}
