//! Generation answers: text and token ids appended in place as they are produced.

use shm_ring::pool::Loan;

use super::archive::{BodyOut, GenerationOut, Placed, PlacedStr, ResponseOut};
use super::{align, write_root, Out, OutOfRoom, Store, ROOT_ROOM};
use crate::protocol::{FinishReason, Usage};

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
    pub fn finish(mut self, finish_reason: FinishReason, usage: Usage) -> Result<(), OutOfRoom> {
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
            }),
        };
        let len = write_root(tail, end, &root)?;
        self.out.len = len;
        Ok(())
    }
}
