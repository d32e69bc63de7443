//! Generation answers: text and token ids appended in place as they are produced.

use shm_ring::pool::Loan;

use std::mem::{size_of, MaybeUninit};

use rkyv::Archive;

use super::archive::{
    align, write_root_with, BodyOut, Entries, GenerationOut, Placed, PlacedStr, ResponseOut,
};
use super::{Out, OutOfRoom, Store, ROOT_ROOM};
use crate::protocol::{FinishReason, TokenLogprob, TopLogprob, Usage};

/// Appends a generation result in place; see [`Out::generation`].
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::writer::Out;
/// use shm_runtime::protocol::{access_response, ArchivedBody, FinishReason, Usage};
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(4096, 0);
///
/// let mut out = Out::in_buffer(&mut chunk, 1);
/// let mut g = out.generation(16, 64)?;
/// for (id, piece) in [(9906, "Hello"), (11, ","), (1917, " world")] {
///     g.push(id, piece)?; // as the model produces them
/// }
/// g.finish(FinishReason::Length, Usage { generated_tokens: 3, ..Usage::default() })?;
/// let answer = access_response(out.bytes().unwrap())?;
/// let ArchivedBody::Generation(read) = &answer.body else { panic!() };
/// assert_eq!(read.text, "Hello, world");
/// assert_eq!(read.tokens, [9906, 11, 1917]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct GenerationWriter<'o, 'a> {
    pub(super) out: &'o mut Out<'a>,
    pub(super) st: GenerationState,
}

/// Where a generation result stands, to keep it between decode steps without borrowing its
/// [`Out`]: [`GenerationWriter::suspend`] and [`Out::resume_generation`].
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::writer::{GenerationState, Out};
/// use shm_runtime::protocol::{access_response, ArchivedBody, FinishReason, Usage};
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(4096, 0);
///
/// /// A sequence between decode steps: its answer, and where that stands.
/// struct Seq<'a> {
///     out: Out<'a>,
///     state: GenerationState,
/// }
/// let mut out = Out::in_buffer(&mut chunk, 1);
/// let state = out.generation(8, 32)?.suspend();
/// let mut seq = Seq { out, state };
/// for (id, piece) in [(1, "a"), (2, "b")] {
///     // One decode step: resume, append, suspend.
///     let mut g = seq.out.resume_generation(seq.state);
///     g.push(id, piece)?;
///     seq.state = g.suspend();
/// }
/// seq.out.resume_generation(seq.state).finish(FinishReason::Length, Usage::default())?;
/// let answer = access_response(seq.out.bytes().unwrap())?;
/// assert!(matches!(&answer.body, ArchivedBody::Generation(g) if g.text == "ab"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct GenerationState {
    pub(super) buf_len: usize,
    pub(super) text_len: usize,
    pub(super) tokens_at: usize,
    pub(super) n_tokens: usize,
    pub(super) max_tokens: usize,
}

impl<'a> Out<'a> {
    /// Starts a generation result with room for `max_tokens` token ids and, as a first guess,
    /// `text_hint` bytes of text (it grows past that while the chunk has room).
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] when no chunk can hold it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::{access_response, ArchivedBody, FinishReason, Usage};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// let mut g = out.generation(2, 16)?; // up to 2 token ids, about 16 bytes of text
    /// g.push(72, "H")?;
    /// g.push(105, "i")?;
    /// g.finish(FinishReason::Length, Usage::default())?;
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Generation(read) = &answer.body else { panic!() };
    /// assert_eq!((read.text.as_str(), read.tokens.len()), ("Hi", 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn generation(
        &mut self,
        max_tokens: usize,
        text_hint: usize,
    ) -> Result<GenerationWriter<'_, 'a>, OutOfRoom> {
        let tokens_at = align(text_hint.max(16), 16);
        let want = tokens_at + max_tokens * 4 + ROOT_ROOM;
        // Loan a little extra so that text beyond the guess rarely needs the tokens moved.
        let buf_len = self.room(want + want / 2)?.len();
        Ok(GenerationWriter {
            out: self,
            st: GenerationState {
                buf_len,
                text_len: 0,
                tokens_at,
                n_tokens: 0,
                max_tokens,
            },
        })
    }

    /// Continues a generation result [suspended](GenerationWriter::suspend) with `state`, which
    /// must come from this `Out`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// let state = out.generation(4, 16)?.suspend(); // started; `out` is free again
    /// // ... at the next decode step:
    /// let mut g = out.resume_generation(state);
    /// g.push(1, "a")?;
    /// assert_eq!((g.text(), g.tokens()), ("a", 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn resume_generation(&mut self, state: GenerationState) -> GenerationWriter<'_, 'a> {
        GenerationWriter {
            out: self,
            st: state,
        }
    }
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
    ///
    /// # Examples
    ///
    /// ```
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    /// # let mut out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 1);
    /// // A backend that produces text without token ids.
    /// let mut g = out.generation(0, 16)?;
    /// g.push_text("Hello, ")?;
    /// g.push_text("world")?;
    /// g.push_text(&"!".repeat(100))?; // past the 16 bytes guessed: the chunk has room
    /// assert!(g.text().starts_with("Hello, world!!"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    /// # let mut out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 1);
    /// let mut g = out.generation(3, 0)?; // room for 3 token ids
    /// g.push_tokens(&[101, 102])?;
    /// g.push_tokens(&[103])?;
    /// assert_eq!(g.tokens(), 3);
    /// assert!(g.push_tokens(&[104]).is_err()); // one more than the answer was sized for
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    /// # let mut out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 1);
    /// let mut g = out.generation(2, 16)?;
    /// g.push(15496, "Hello")?;
    /// g.push(0, "!")?;
    /// assert_eq!((g.text(), g.tokens()), ("Hello!", 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn push(&mut self, id: u32, text: &str) -> Result<(), OutOfRoom> {
        self.push_tokens(&[id])?;
        self.push_text(text)
    }

    /// The text so far (for stop sequences).
    ///
    /// # Examples
    ///
    /// ```
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    /// # let mut out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 1);
    /// // Generate up to the end of the first line.
    /// let mut g = out.generation(8, 64)?;
    /// for (id, piece) in [(1, "The end"), (2, ".\n"), (3, "Q:")] {
    ///     g.push(id, piece)?;
    ///     if g.text().ends_with('\n') {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(g.text(), "The end.\n");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    /// # let mut out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 1);
    /// let mut g = out.generation(4, 16)?;
    /// g.push(1, "a")?;
    /// let state = g.suspend(); // `out` is free for other work between steps ...
    /// let g = out.resume_generation(state); // ... and the answer goes on where it was
    /// assert_eq!(g.text(), "a");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn suspend(self) -> GenerationState {
        self.st
    }

    /// Token ids so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{FinishReason, Usage};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    /// # let mut out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 1);
    ///
    /// let mut g = out.generation(4, 16)?;
    /// g.push_tokens(&[5, 6, 7])?;
    /// let usage = Usage { generated_tokens: g.tokens() as u32, ..Usage::default() };
    /// assert_eq!(usage.generated_tokens, 3);
    /// g.finish(FinishReason::Length, usage)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tokens(&self) -> usize {
        self.st.n_tokens
    }

    /// Cuts the text to its first `len` bytes (a stop sequence found at the end).
    ///
    /// # Panics
    ///
    /// When `len` is not a char boundary of the text.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{FinishReason, Usage};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    /// # let mut out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 1);
    ///
    /// let mut g = out.generation(4, 32)?;
    /// g.push(1, "Answer: 4")?;
    /// g.push(2, "\nUser:")?;
    /// // The stop sequence "\nUser:" completed: the text ends before it (the token ids stay).
    /// let at = g.text().find("\nUser:").unwrap();
    /// g.truncate_text(at);
    /// assert_eq!((g.text(), g.tokens()), ("Answer: 4", 2));
    /// g.finish(FinishReason::Stop, Usage::default())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn truncate_text(&mut self, len: usize) {
        assert!(self.text().is_char_boundary(len));
        self.st.text_len = self.st.text_len.min(len);
    }

    /// Writes the root: the result is complete.
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] when the root does not fit (never with the room reserved).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::{access_response, ArchivedBody, ArchivedFinishReason};
    /// use shm_runtime::protocol::{FinishReason, Usage};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// let mut g = out.generation(1, 8)?;
    /// g.push(2, "")?; // end of sequence
    /// let usage = Usage { prompt_tokens: 4, generated_tokens: 1, ..Usage::default() };
    /// g.finish(FinishReason::Stop, usage)?;
    /// assert!(out.written().is_some()); // the answer is complete
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Generation(read) = &answer.body else { panic!() };
    /// assert_eq!(read.finish, ArchivedFinishReason::Stop);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::{access_response, ArchivedBody, FinishReason, TokenLogprob};
    /// use shm_runtime::protocol::{TopLogprob, Usage};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// let mut g = out.generation(1, 8)?;
    /// g.push(3797, " cat")?;
    /// let top = vec![TopLogprob { token: 3797, logprob: -0.1, text: " cat".into() }];
    /// let logprob = TokenLogprob { logprob: -0.1, text: " cat".into(), top };
    /// g.finish_with_logprobs(FinishReason::Length, Usage::default(), &[logprob.clone()])?;
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Generation(read) = &answer.body else { panic!() };
    /// assert_eq!(read.logprobs[0].to_native(), logprob);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
