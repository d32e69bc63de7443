//! Semantic limits every request is checked against after bytecheck, and native views of
//! validated archived slices.

use super::{ArchivedInput, ArchivedRequest, ArchivedTask, Refusal, PRIORITY_LEVELS};

/// Semantic limits every request is checked against after bytecheck.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, check_request, Input, Limits, Params, Request};
/// use shm_runtime::protocol::Task;
///
/// // A server for short prompts only (its configuration's `limits`).
/// let limits = Limits { max_text_bytes: 1024, ..Limits::default() };
/// let input = Input::Text("x".repeat(2000));
/// let params = Params::default();
/// let req = Request { id: 1, model: "m".into(), task: Task::Generate, input, params };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let refusal = check_request(access_request(&bytes)?, &limits).unwrap_err();
/// assert_eq!(refusal.message, "text of 2000 bytes exceeds the limit of 1024");
/// assert!(check_request(access_request(&bytes)?, &Limits::default()).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Longest text input or chat message, bytes.
    pub max_text_bytes: usize,
    /// Most token ids.
    pub max_tokens_in: usize,
    /// Most chat messages.
    pub max_messages: usize,
    /// Most texts in one request.
    pub max_texts: usize,
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
    /// Most alternatives per token of `logprobs`.
    pub max_logprobs: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 256 << 10,
            max_tokens_in: 32 << 10,
            max_messages: 256,
            max_texts: 1024,
            max_tensors: 16,
            max_tensor_elems: 16 << 20,
            max_rank: 8,
            max_new_tokens: 32 << 10,
            max_stop: 16,
            max_stop_bytes: 256,
            max_model_name: 64,
            max_timeout_ms: 3_600_000,
            max_logprobs: 20,
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
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, check_request, ErrorCode, Input, Limits, Params};
/// use shm_runtime::protocol::{Request, Task};
///
/// let params = Params { max_tokens: 0, ..Params::default() };
/// let input = Input::Text("Hello".into());
/// let req = Request { id: 1, model: "smollm2".into(), task: Task::Generate, input, params };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// // Bytecheck accepts it: the archive is sound. The limits do not: it asks for nothing.
/// let archived = access_request(&bytes)?;
/// let refusal = check_request(archived, &Limits::default()).unwrap_err();
/// assert_eq!(refusal.code, ErrorCode::InvalidRequest);
/// assert_eq!(refusal.message, "max_tokens must be at least 1 for generation");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_request(req: &ArchivedRequest, limits: &Limits) -> Result<(), Refusal> {
    first_broken_rule(req, limits).map_err(Refusal::invalid)
}

/// The sentence of the first rule of [`check_request`] that `req` breaks.
fn first_broken_rule(req: &ArchivedRequest, limits: &Limits) -> Result<(), String> {
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
        ArchivedInput::Texts(ts) => {
            if ts.is_empty() || ts.len() > limits.max_texts {
                return Err(format!(
                    "{} texts: a request takes 1..={}",
                    ts.len(),
                    limits.max_texts
                ));
            }
            let total: usize = ts.iter().map(|t| t.len()).sum();
            if total > limits.max_text_bytes {
                return Err(format!(
                    "texts of {total} bytes together exceed the limit of {}",
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
    let min_p = p.min_p.to_native();
    if !(0.0..=1.0).contains(&min_p) {
        return Err(format!("min_p must be in 0..=1 (0: off), got {min_p}"));
    }
    for (name, v) in [
        ("presence_penalty", p.presence_penalty.to_native()),
        ("frequency_penalty", p.frequency_penalty.to_native()),
    ] {
        if !(-2.0..=2.0).contains(&v) {
            return Err(format!("{name} must be in -2..=2 (0: off), got {v}"));
        }
    }
    if p.logprobs > limits.max_logprobs {
        return Err(format!(
            "logprobs asks for {} alternatives per token; at most {} (0: none)",
            p.logprobs, limits.max_logprobs
        ));
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{access_request, tokens_native, ArchivedInput, Input, Params};
    /// use shm_runtime::protocol::{Request, Task};
    ///
    /// let input = Input::Tokens(vec![101, 7592, 102]);
    /// let params = Params::default();
    /// let req = Request { id: 1, model: "m".into(), task: Task::Embed, input, params };
    /// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
    /// let ArchivedInput::Tokens(t) = &access_request(&bytes)?.input else { panic!("not tokens") };
    /// let ids: &[u32] = tokens_native(t); // the archive's own memory
    /// assert_eq!(ids, [101, 7592, 102]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    tokens_native,
    rkyv::rend::u32_le,
    u32
);
native_slice!(
    /// The elements of an archived f32 tensor as a native slice, without copying.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{f32_native, ArchivedTensor, ArchivedTensorData, Tensor};
    /// use shm_runtime::protocol::TensorData;
    ///
    /// let data = TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]);
    /// let t = Tensor { name: "x".into(), shape: vec![4], data };
    /// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&t)?;
    /// let t = rkyv::access::<ArchivedTensor, rkyv::rancor::Error>(&bytes)?;
    /// let ArchivedTensorData::F32(v) = &t.data else { panic!("not f32") };
    /// let sum: f32 = f32_native(v).iter().sum();
    /// assert_eq!(sum, 10.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    f32_native,
    rkyv::rend::f32_le,
    f32
);
native_slice!(
    /// The elements of an archived i64 tensor as a native slice, without copying.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{i64_native, ArchivedTensor, ArchivedTensorData, Tensor};
    /// use shm_runtime::protocol::TensorData;
    ///
    /// let data = TensorData::I64(vec![101, 2023, 102]);
    /// let ids = Tensor { name: "input_ids".into(), shape: vec![1, 3], data };
    /// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&ids)?;
    /// let t = rkyv::access::<ArchivedTensor, rkyv::rancor::Error>(&bytes)?;
    /// let ArchivedTensorData::I64(v) = &t.data else { panic!("not i64") };
    /// assert_eq!(i64_native(v).last(), Some(&102)); // [SEP]
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    i64_native,
    rkyv::rend::i64_le,
    i64
);
native_slice!(
    /// The elements of an archived i32 tensor as a native slice, without copying.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{i32_native, ArchivedTensor, ArchivedTensorData, Tensor};
    /// use shm_runtime::protocol::TensorData;
    ///
    /// let data = TensorData::I32(vec![-1, 0, 1]);
    /// let t = Tensor { name: "offsets".into(), shape: vec![3], data };
    /// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&t)?;
    /// let t = rkyv::access::<ArchivedTensor, rkyv::rancor::Error>(&bytes)?;
    /// let ArchivedTensorData::I32(v) = &t.data else { panic!("not i32") };
    /// assert_eq!(i32_native(v), [-1, 0, 1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    i32_native,
    rkyv::rend::i32_le,
    i32
);
native_slice!(
    /// The dimensions of an archived shape as a native slice, without copying.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{u64_native, ArchivedTensor, Tensor, TensorData};
    ///
    /// let t = Tensor { name: "x".into(), shape: vec![2, 3], data: TensorData::U8(vec![0; 6]) };
    /// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&t)?;
    /// let t = rkyv::access::<ArchivedTensor, rkyv::rancor::Error>(&bytes)?;
    /// let shape: &[u64] = u64_native(&t.shape);
    /// assert_eq!(shape.iter().product::<u64>() as usize, t.data.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    u64_native,
    rkyv::rend::u64_le,
    u64
);
