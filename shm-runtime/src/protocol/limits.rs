//! Semantic limits every request is checked against after bytecheck, and native views of
//! validated archived slices.

use super::{ArchivedInput, ArchivedRequest, ArchivedTask, Refusal, PRIORITY_LEVELS};

/// Semantic limits every request is checked against after bytecheck.
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
