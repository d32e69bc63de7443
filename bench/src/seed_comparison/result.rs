//! Result creation: the seed's owned struct and this project's in-place generation.

use std::hint::black_box;

use anyhow::{anyhow, Result};
use shm_runtime::backend::writer::Out;
use shm_runtime::protocol::{FinishReason, Usage};

/// Tokens of the benchmark generation result.
pub const RESULT_TOKENS: usize = 200;

/// The seed's inference result: an owned struct with the generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedResult {
    /// The request's id.
    pub request_id: u64,
    /// Generated text.
    pub output: String,
    /// Generated tokens.
    pub tokens_generated: u32,
    /// Whether the generation finished.
    pub finished: bool,
}

/// One seed-style result creation: `"generated ".repeat(200)` into a [`SeedResult`].
#[inline]
pub fn seed_result_create(request_id: u64) -> SeedResult {
    SeedResult {
        request_id,
        output: "generated ".repeat(black_box(RESULT_TOKENS)),
        tokens_generated: RESULT_TOKENS as u32,
        finished: true,
    }
}

#[repr(C, align(64))]
struct ResultBuf([u8; 64 << 10]);

/// A 200-token generation written in place, the work of [`runtime_work::result_create_ns`]: the text
/// (2000 bytes) and 200 token ids appended through [`Out::generation`], then the archive's root.
///
/// [`runtime_work::result_create_ns`]: crate::runtime_work::result_create_ns
pub struct InPlaceResult {
    buf: Box<ResultBuf>,
    text: String,
    tokens: Vec<u32>,
    usage: Usage,
}

impl std::fmt::Debug for InPlaceResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlaceResult")
            .field("text_bytes", &self.text.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Default for InPlaceResult {
    fn default() -> Self {
        InPlaceResult::new()
    }
}

impl InPlaceResult {
    /// A 64 KiB chunk-like buffer and the generation to write.
    pub fn new() -> InPlaceResult {
        InPlaceResult {
            buf: Box::new(ResultBuf([0; 64 << 10])),
            text: "generated ".repeat(RESULT_TOKENS),
            tokens: (0..RESULT_TOKENS as u32).collect(),
            usage: Usage {
                prompt_tokens: 1,
                generated_tokens: RESULT_TOKENS as u32,
                ..Usage::default()
            },
        }
    }

    /// Writes the result once; returns the bytes of the answer.
    ///
    /// # Errors
    ///
    /// When the buffer is too small.
    #[inline]
    pub fn create(&mut self) -> Result<usize> {
        let mut out = Out::in_buffer(&mut self.buf.0, 1);
        let mut g = out
            .generation(RESULT_TOKENS, self.text.len())
            .map_err(anyhow::Error::msg)?;
        g.push_text(black_box(&self.text))
            .map_err(anyhow::Error::msg)?;
        g.push_tokens(black_box(&self.tokens))
            .map_err(anyhow::Error::msg)?;
        g.finish(FinishReason::Length, self.usage)
            .map_err(anyhow::Error::msg)?;
        let len = out.written().ok_or_else(|| anyhow!("nothing written"))?;
        Ok(black_box(len))
    }

    /// The bytes written by the last [`create`](Self::create) of `len` bytes.
    pub fn bytes(&self, len: usize) -> &[u8] {
        &self.buf.0[..len]
    }
}
