//! Generation answers: text and token ids appended in place as they are produced.

use shm_ring::pool::Loan;

use std::mem::{size_of, MaybeUninit};

use rkyv::Archive;

use super::archive::{BodyOut, Entries, GenerationOut, Placed, PlacedStr, ResponseOut};
use super::{align, write_root_with, Out, OutOfRoom, Store, ROOT_ROOM};
use crate::protocol::{FinishReason, TokenLogprob, TopLogprob, Usage};

/// Appends a generation result in place; see [`Out::generation`].
#[derive(Debug)]
pub struct GenerationWriter<'o, 'a> {
    pub(super) out: &'o mut Out<'a>,
    pub(super) st: GenerationState,
}

/// Where a generation result stands, to keep it between decode steps without borrowing its
/// [`Out`]: [`GenerationWriter::suspend`] and [`Out::resume_generation`].
#[derive(Debug, Clone, Copy)]
pub struct GenerationState {
    pub(super) buf_len: usize,
    pub(super) text_len: usize,
    pub(super) tokens_at: usize,
    pub(super) n_tokens: usize,
    pub(super) max_tokens: usize,
}

impl GenerationWriter<'_, '_> {
    #[inline]
    fn buf(&mut self) -> &mut [u8] {
        match &mut self.out.store {
            Store::Buf(b) => &mut b[..],
            Store::Pool { loan, .. } => loan.as_mut().map(Loan::as_mut_slice).unwrap_or_default(),
        }
    }

    /// Appends text.
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] when the chunk is full.
    #[inline]
    pub fn push_text(&mut self, s: &str) -> Result<(), OutOfRoom> {
        let end = self.st.text_len + s.len();
        if end > self.st.tokens_at {
            // Move the token ids out of the way, leaving room for as much text again.
            let to = align(end + end / 2, 16);
            if to + self.st.max_tokens * 4 + ROOT_ROOM > self.st.buf_len {
                return Err(OutOfRoom(format!(
                    "the generated text ({end} bytes) no longer fits the answer's chunk"
                )));
            }
            let (from, n) = (self.st.tokens_at, self.st.n_tokens * 4);
            self.buf().copy_within(from..from + n, to);
            self.st.tokens_at = to;
        }
        let at = self.st.text_len;
        self.buf()[at..end].copy_from_slice(s.as_bytes());
        self.st.text_len = end;
        Ok(())
    }

    /// Appends token ids.
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] past `max_tokens`.
    #[inline]
    pub fn push_tokens(&mut self, ids: &[u32]) -> Result<(), OutOfRoom> {
        if self.st.n_tokens + ids.len() > self.st.max_tokens {
            return Err(OutOfRoom(format!(
                "more than the {} token ids the answer was sized for",
                self.st.max_tokens
            )));
        }
        let at = self.st.tokens_at + self.st.n_tokens * 4;
        let dst = &mut self.buf()[at..at + ids.len() * 4];
        dst.copy_from_slice(bytemuck::cast_slice(ids));
        self.st.n_tokens += ids.len();
        Ok(())
    }

    /// Appends one token id and its text.
    ///
    /// # Errors
    ///
    /// As [`push_text`](Self::push_text) and [`push_tokens`](Self::push_tokens).
    #[inline]
    pub fn push(&mut self, id: u32, text: &str) -> Result<(), OutOfRoom> {
        self.push_tokens(&[id])?;
        self.push_text(text)
    }

    /// The text so far (for stop sequences).
    pub fn text(&self) -> &str {
        let b = match &self.out.store {
            Store::Buf(b) => &b[..self.st.text_len],
            Store::Pool { loan, .. } => loan
                .as_ref()
                .map(|l| &l.as_slice()[..self.st.text_len])
                .unwrap_or_default(),
        };
        // SAFETY: the text is a concatenation of &str pieces copied in by push_text (or cut at a
        // char boundary by truncate_text), so it is UTF-8.
        unsafe { std::str::from_utf8_unchecked(b) }
    }

    /// Stops writing for now; [`Out::resume_generation`] continues.
    pub fn suspend(self) -> GenerationState {
        self.st
    }

    /// Token ids so far.
    pub fn tokens(&self) -> usize {
        self.st.n_tokens
    }

    /// Cuts the text to its first `len` bytes (a stop sequence found at the end).
    ///
    /// # Panics
    ///
    /// When `len` is not a char boundary of the text.
    pub fn truncate_text(&mut self, len: usize) {
        assert!(self.text().is_char_boundary(len));
        self.st.text_len = self.st.text_len.min(len);
    }

    /// Writes the root: the result is complete.
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] when the root does not fit (never with the room reserved).
    #[inline]
    pub fn finish(self, finish_reason: FinishReason, usage: Usage) -> Result<(), OutOfRoom> {
        self.finish_with_logprobs(finish_reason, usage, &[])
    }

    /// Writes the root with the tokens' log-probabilities (one per token id, or none), which
    /// rkyv serializes behind the token ids; the answer moves to a larger chunk when they do not
    /// fit in this one.
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] when no chunk can hold the answer.
    pub fn finish_with_logprobs(
        mut self,
        finish_reason: FinishReason,
        usage: Usage,
        logprobs: &[TokenLogprob],
    ) -> Result<(), OutOfRoom> {
        let mut small = [MaybeUninit::<u8>::uninit(); 256];
        let mut large = Vec::new();
        let scratch: &mut [MaybeUninit<u8>] = if logprobs.is_empty() {
            &mut small
        } else {
            // The resolvers of the array of logprobs, then those of one token's alternatives.
            let most_top = logprobs.iter().map(|l| l.top.len()).max().unwrap_or(0);
            let need = logprobs.len() * size_of::<<TokenLogprob as Archive>::Resolver>()
                + most_top * size_of::<<TopLogprob as Archive>::Resolver>();
            large.resize(2 * need + 256, MaybeUninit::uninit());
            &mut large
        };
        loop {
            let id = self.out.id;
            let (text_len, tokens_at, n) = (self.st.text_len, self.st.tokens_at, self.st.n_tokens);
            let end = tokens_at + n * 4;
            let (payload, tail) = self.buf().split_at_mut(end);
            // SAFETY: as in `text`.
            let text = unsafe { std::str::from_utf8_unchecked(&payload[..text_len]) };
            let root = ResponseOut {
                id,
                body: BodyOut::Generation(GenerationOut {
                    text: PlacedStr { text, pos: 0 },
                    tokens: Placed::new(tokens_at, n),
                    finish: finish_reason,
                    usage,
                    logprobs: Entries(logprobs),
                }),
            };
            match write_root_with(tail, end, &root, scratch) {
                Ok(len) => {
                    self.out.len = len;
                    self.out.generated = Some((usage, finish_reason));
                    return Ok(());
                }
                Err(e) if logprobs.is_empty() => return Err(e),
                Err(_) => self.st.buf_len = self.out.grow(self.st.buf_len * 2, end)?,
            }
        }
    }
}
