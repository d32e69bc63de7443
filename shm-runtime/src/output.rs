//! Answers written in place: a backend writes its result straight into the response chunk.
//!
//! [`Out`] is the answer of one request. A backend either hands it an owned [`Body`]
//! ([`Out::body`], serialized once into the chunk) or, for the bulky results, writes the payload
//! where the client will read it:
//!
//! * [`Out::embedding`] lends the vector as `&mut [f32]` inside the chunk;
//! * [`Out::generation`] appends text and token ids as they are produced;
//! * [`Out::tensors`] lends each output tensor's data inside the chunk.
//!
//! Then only the small root of the archive (a few dozen bytes) is serialized behind the payload.
//! The layout follows rkyv's rules, so the client validates and reads it like any other archive:
//! payloads come first, in the order in which the archived fields are visited (text before tokens,
//! a tensor's name before its shape before its data, tensor after tensor), gaps between them are
//! allowed, and the root comes last.
//!
//! The root is written through mirror types that archive as the protocol's own archived types
//! (`#[rkyv(as = ...)]`) but point at payloads already in place; a unit test checks that an answer
//! written this way is byte-for-byte the answer rkyv writes from the owned value.

use std::marker::PhantomData;

use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::allocator::SubAllocator;
use rkyv::ser::{Positional, Writer};
use rkyv::string::repr::{ArchivedStringRepr, INLINE_CAPACITY};
use rkyv::string::ArchivedString;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};
use shm_ring::pool::{Loan, OwnerId, Pool};

use crate::backend::BackendError;
use crate::protocol::{
    encode_into, ArchivedBody, ArchivedErrorBody, ArchivedGeneration, ArchivedResponse,
    ArchivedStreamChunk, ArchivedTensor, ArchivedTensorData, Body, ErrorCode, FinishReason,
    LabelScore, Response, Usage,
};

/// Room kept behind the payload for the archive's root.
const ROOT_ROOM: usize = 256;

/// Where an answer is written: a chunk loaned from the pool on demand, or a caller's buffer.
enum Store<'a> {
    Pool {
        pool: &'a Pool,
        owner: OwnerId,
        loan: Option<Loan<'a>>,
    },
    Buf(&'a mut [u8]),
}

/// The answer of one request, written in place. See the [module](self) docs.
pub struct Out<'a> {
    store: Store<'a>,
    id: u64,
    len: usize,
}

impl std::fmt::Debug for Out<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<'a> Out<'a> {
    /// An answer to request `id` that loans its chunk from `pool` as `owner` when it is written.
    pub fn in_pool(pool: &'a Pool, owner: OwnerId, id: u64) -> Out<'a> {
        Out {
            store: Store::Pool {
                pool,
                owner,
                loan: None,
            },
            id,
            len: 0,
        }
    }

    /// An answer to request `id` written into `buf`, which must be 16-byte aligned (tests and
    /// benchmarks).
    ///
    /// # Panics
    ///
    /// When `buf` is not 16-byte aligned.
    #[inline]
    pub fn in_buffer(buf: &'a mut [u8], id: u64) -> Out<'a> {
        assert!(
            buf.as_ptr().align_offset(16) == 0,
            "an answer buffer must be 16-byte aligned"
        );
        Out {
            store: Store::Buf(buf),
            id,
            len: 0,
        }
    }

    /// The id of the request this answers.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes of the finished answer, `None` while nothing has been written.
    #[inline]
    pub fn written(&self) -> Option<usize> {
        (self.len > 0).then_some(self.len)
    }

    /// The finished answer's bytes.
    pub fn bytes(&self) -> Option<&[u8]> {
        let len = self.written()?;
        match &self.store {
            Store::Pool { loan, .. } => loan.as_ref().map(|l| &l.as_slice()[..len]),
            Store::Buf(b) => Some(&b[..len]),
        }
    }

    /// The chunk with the finished answer and its length, for the server to hand to the client.
    pub(crate) fn take_loan(&mut self) -> Option<(Loan<'a>, usize)> {
        let len = self.written()?;
        match &mut self.store {
            Store::Pool { loan, .. } => loan.take().map(|l| (l, len)),
            Store::Buf(_) => None,
        }
    }

    /// A writable chunk of at least `size` bytes (the one already held when it is big enough).
    #[inline]
    fn room(&mut self, size: usize) -> Result<&mut [u8], BackendError> {
        self.len = 0;
        let fits = match &self.store {
            Store::Buf(b) => b.len() >= size,
            Store::Pool { loan, .. } => loan.as_ref().is_some_and(|l| l.len() >= size),
        };
        if !fits {
            self.get_room(size)?;
        }
        Ok(match &mut self.store {
            Store::Buf(b) => &mut b[..],
            Store::Pool { loan, .. } => loan.as_mut().map(Loan::as_mut_slice).unwrap_or_default(),
        })
    }

    /// Loans a chunk of at least `size` bytes, giving back the one held.
    #[cold]
    #[inline(never)]
    fn get_room(&mut self, size: usize) -> Result<(), BackendError> {
        match &mut self.store {
            Store::Buf(b) => Err(BackendError::Exhausted(format!(
                "the answer needs {size} bytes, the buffer has {}",
                b.len()
            ))),
            Store::Pool { pool, owner, loan } => {
                let max = pool.max_chunk_size();
                if size > max {
                    return Err(BackendError::Exhausted(format!(
                        "the answer needs {size} bytes, the largest chunk has {max}"
                    )));
                }
                *loan = None;
                *loan = Some(pool.loan(*owner, size).map_err(|e| {
                    BackendError::Exhausted(format!("no chunk for the answer: {e}"))
                })?);
                Ok(())
            }
        }
    }

    /// Writes an owned body (classification, errors, anything small).
    ///
    /// # Errors
    ///
    /// [`BackendError::Exhausted`] when no chunk can hold it.
    pub fn body(&mut self, body: Body) -> Result<(), BackendError> {
        self.response(&Response { id: self.id, body })
    }

    /// Writes a whole owned response (its own id), serialized once: into a chunk sized by
    /// [`estimate`], doubled up to the largest chunk while it does not fit.
    ///
    /// # Errors
    ///
    /// [`BackendError::Exhausted`] when no chunk can hold it.
    pub(crate) fn response(&mut self, resp: &Response) -> Result<(), BackendError> {
        let mut size = estimate(resp);
        loop {
            let max = match &self.store {
                Store::Pool { pool, .. } => pool.max_chunk_size(),
                Store::Buf(b) => b.len(),
            };
            let buf = self.room(size.min(max))?;
            match encode_into(resp, buf) {
                Ok(len) => {
                    self.len = len;
                    return Ok(());
                }
                Err(_) if size < max => size = (size * 2).min(max),
                Err(e) => {
                    return Err(BackendError::Exhausted(format!(
                        "the answer does not fit the largest chunk: {e}"
                    )))
                }
            }
        }
    }

    /// Writes an embedding of `dim` floats: `fill` gets the vector inside the chunk.
    ///
    /// # Errors
    ///
    /// What `fill` returns, or [`BackendError::Exhausted`] when no chunk can hold it.
    #[inline]
    pub fn embedding(
        &mut self,
        dim: usize,
        fill: impl FnOnce(&mut [f32]) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let id = self.id;
        let buf = self.room(dim * 4 + ROOT_ROOM)?;
        fill(bytemuck::cast_slice_mut(&mut buf[..dim * 4]))?;
        let root = ResponseOut {
            id,
            body: BodyOut::Embedding(Placed::new(0, dim)),
        };
        self.len = write_root(&mut buf[dim * 4..], dim * 4, &root)?;
        Ok(())
    }

    /// Starts a generation result with room for `max_tokens` token ids and, as a first guess,
    /// `text_hint` bytes of text (it grows past that while the chunk has room).
    ///
    /// # Errors
    ///
    /// [`BackendError::Exhausted`] when no chunk can hold it.
    #[inline]
    pub fn generation(
        &mut self,
        max_tokens: usize,
        text_hint: usize,
    ) -> Result<GenerationWriter<'_, 'a>, BackendError> {
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
    #[inline]
    pub fn resume_generation(&mut self, state: GenerationState) -> GenerationWriter<'_, 'a> {
        GenerationWriter {
            out: self,
            st: state,
        }
    }

    /// Writes named tensors: `fill` adds them one after another with [`TensorsWriter::add`].
    /// `payload` is the bytes all their names, shapes and data need together (see
    /// [`TensorsWriter::bytes_for`]).
    ///
    /// # Errors
    ///
    /// What `fill` returns, or [`BackendError::Exhausted`] when no chunk can hold it.
    pub fn tensors(
        &mut self,
        payload: usize,
        fill: impl FnOnce(&mut TensorsWriter<'_>) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let id = self.id;
        let buf = self.room(payload + ROOT_ROOM + 64)?;
        let mut w = TensorsWriter {
            buf,
            at: 0,
            placed: Vec::new(),
        };
        fill(&mut w)?;
        let TensorsWriter { buf, at, placed } = w;
        let (data, tail) = buf.split_at_mut(at);
        let tensors: Vec<TensorOut<'_>> = placed
            .iter()
            .map(|p| TensorOut {
                name: PlacedStr {
                    // SAFETY: the name was copied in from a &str by `add`, so the bytes are UTF-8.
                    text: unsafe { std::str::from_utf8_unchecked(&data[p.name.0..p.name.1]) },
                    pos: p.name.0,
                },
                shape: Placed::new(p.shape.0, p.shape.1),
                data: p.data,
            })
            .collect();
        let root = ResponseOut {
            id,
            body: BodyOut::Tensors(Entries(&tensors)),
        };
        self.len = write_root(tail, at, &root)?;
        Ok(())
    }
}

/// Serializes `root` into `tail`, which starts at position `base` of the chunk; returns the
/// answer's length (the root is its last part).
///
/// The root's own bytes are resolved straight into the chunk: the placed payloads leave nothing
/// for the serializer to write except the arrays of tensor entries.
#[inline]
fn write_root<T>(tail: &mut [u8], base: usize, root: &T) -> Result<usize, BackendError>
where
    T: Archive
        + for<'c, 'x> Serialize<
            rkyv::api::low::LowSerializer<Tail<'x>, SubAllocator<'c>, rancor::Error>,
        >,
{
    let exhausted = |e: rancor::Error| {
        BackendError::Exhausted(format!("the answer does not fit its chunk: {e}"))
    };
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 256];
    let mut ser = rkyv::ser::Serializer::new(
        Tail {
            buf: &mut *tail,
            base,
            len: 0,
        },
        SubAllocator::new(&mut scratch),
        (),
    );
    let resolver = root
        .serialize(rancor::Strategy::<_, rancor::Error>::wrap(&mut ser))
        .map_err(exhausted)?;
    let written = ser.into_writer().len;
    let (size, align_to) = (
        std::mem::size_of::<T::Archived>(),
        std::mem::align_of::<T::Archived>(),
    );
    const { assert!(std::mem::align_of::<ArchivedResponse>() <= 16) };
    let pos = align(base + written, align_to);
    let (from, to) = (pos - base, pos - base + size);
    if to > tail.len() {
        return Err(BackendError::Exhausted(
            "no room behind the payload for the answer's root".into(),
        ));
    }
    let dst = &mut tail[from..to];
    dst.fill(0);
    // SAFETY: `dst` is `size` zeroed (so initialized) bytes, borrowed exclusively, at position
    // `pos` of a chunk whose start is 16-byte aligned (Out::in_buffer asserts it; pool chunks are
    // 64-byte aligned), and `pos` is a multiple of the root's alignment (at most 16, asserted
    // above), so the pointer is aligned for T::Archived.
    let place = unsafe { Place::new_unchecked(pos, dst.as_mut_ptr().cast::<T::Archived>()) };
    root.resolve(resolver, place);
    Ok(pos + size)
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Appends a generation result in place; see [`Out::generation`].
#[derive(Debug)]
pub struct GenerationWriter<'o, 'a> {
    out: &'o mut Out<'a>,
    st: GenerationState,
}

/// Where a generation result stands, to keep it between decode steps without borrowing its
/// [`Out`]: [`GenerationWriter::suspend`] and [`Out::resume_generation`].
#[derive(Debug, Clone, Copy)]
pub struct GenerationState {
    buf_len: usize,
    text_len: usize,
    tokens_at: usize,
    n_tokens: usize,
    max_tokens: usize,
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
    /// [`BackendError::Exhausted`] when the chunk is full.
    #[inline]
    pub fn push_text(&mut self, s: &str) -> Result<(), BackendError> {
        let end = self.st.text_len + s.len();
        if end > self.st.tokens_at {
            // Move the token ids out of the way, leaving room for as much text again.
            let to = align(end + end / 2, 16);
            if to + self.st.max_tokens * 4 + ROOT_ROOM > self.st.buf_len {
                return Err(BackendError::Exhausted(format!(
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
    /// [`BackendError::Exhausted`] past `max_tokens`.
    #[inline]
    pub fn push_tokens(&mut self, ids: &[u32]) -> Result<(), BackendError> {
        if self.st.n_tokens + ids.len() > self.st.max_tokens {
            return Err(BackendError::Exhausted(format!(
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
    pub fn push(&mut self, id: u32, text: &str) -> Result<(), BackendError> {
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
    /// [`BackendError::Exhausted`] when the root does not fit (never with the room reserved).
    #[inline]
    pub fn finish(mut self, finish_reason: FinishReason, usage: Usage) -> Result<(), BackendError> {
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

/// Where a tensor's parts were placed: (position, length) of its name, shape and data.
struct PlacedTensor {
    name: (usize, usize),
    shape: (usize, usize),
    data: TensorDataOut,
}

/// Element types a tensor can have on the wire.
pub trait Elem: bytemuck::Pod {
    /// Its archived data variant over elements placed at `pos`.
    #[doc(hidden)]
    fn placed(pos: usize, len: usize) -> TensorDataOut;
}

impl Elem for f32 {
    fn placed(pos: usize, len: usize) -> TensorDataOut {
        TensorDataOut::F32(Placed::new(pos, len))
    }
}
impl Elem for i64 {
    fn placed(pos: usize, len: usize) -> TensorDataOut {
        TensorDataOut::I64(Placed::new(pos, len))
    }
}
impl Elem for i32 {
    fn placed(pos: usize, len: usize) -> TensorDataOut {
        TensorDataOut::I32(Placed::new(pos, len))
    }
}
impl Elem for u8 {
    fn placed(pos: usize, len: usize) -> TensorDataOut {
        TensorDataOut::U8(Placed::new(pos, len))
    }
}

/// Adds output tensors in place; see [`Out::tensors`].
pub struct TensorsWriter<'b> {
    buf: &'b mut [u8],
    at: usize,
    placed: Vec<PlacedTensor>,
}

impl std::fmt::Debug for TensorsWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorsWriter")
            .field("at", &self.at)
            .field("tensors", &self.placed.len())
            .finish_non_exhaustive()
    }
}

impl TensorsWriter<'_> {
    /// Payload bytes of one tensor with this name, rank and element count of type `T`.
    pub fn bytes_for<T: Elem>(name: &str, rank: usize, elems: usize) -> usize {
        name.len() + 16 + rank * 8 + 16 + elems * std::mem::size_of::<T>() + 16
    }

    /// Adds tensor `name` of `shape`; `fill` gets its data inside the chunk.
    ///
    /// # Errors
    ///
    /// What `fill` returns, or [`BackendError::Exhausted`] when the chunk is full.
    pub fn add<T: Elem>(
        &mut self,
        name: &str,
        shape: &[u64],
        fill: impl FnOnce(&mut [T]) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let elems = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| BackendError::Failed("tensor shape overflows".into()))?;
        let name_at = self.at;
        let shape_at = align(name_at + name.len(), 8);
        let data_at = align(shape_at + shape.len() * 8, 16);
        let end = data_at + elems * std::mem::size_of::<T>();
        if end + ROOT_ROOM + 64 * (self.placed.len() + 1) > self.buf.len() {
            return Err(BackendError::Exhausted(format!(
                "tensor {name:?} does not fit the answer's chunk"
            )));
        }
        self.buf[name_at..name_at + name.len()].copy_from_slice(name.as_bytes());
        for (i, d) in shape.iter().enumerate() {
            self.buf[shape_at + i * 8..shape_at + i * 8 + 8].copy_from_slice(&d.to_le_bytes());
        }
        fill(bytemuck::cast_slice_mut(&mut self.buf[data_at..end]))?;
        self.placed.push(PlacedTensor {
            name: (name_at, name_at + name.len()),
            shape: (shape_at, shape.len()),
            data: T::placed(data_at, elems),
        });
        self.at = end;
        Ok(())
    }
}

/// The rkyv writer for the root: the tail of a chunk, at positions counted from the chunk start.
struct Tail<'b> {
    buf: &'b mut [u8],
    base: usize,
    len: usize,
}

impl Positional for Tail<'_> {
    fn pos(&self) -> usize {
        self.base + self.len
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no room behind the payload for the answer's root")]
struct NoRoom;

impl<E: Source> Writer<E> for Tail<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.len + bytes.len();
        if end > self.buf.len() {
            return Err(E::new(NoRoom));
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

/// A slice already in the output at `pos`: archives as an [`ArchivedVec`] pointing at it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Placed<T> {
    pos: usize,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Placed<T> {
    fn new(pos: usize, len: usize) -> Placed<T> {
        Placed {
            pos,
            len,
            _t: PhantomData,
        }
    }
}

impl<T: Archive> Archive for Placed<T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.len, resolver, out);
    }
}

impl<T: Archive, S: Fallible + ?Sized> Serialize<S> for Placed<T> {
    fn serialize(&self, _: &mut S) -> Result<VecResolver, S::Error> {
        Ok(VecResolver::from_pos(self.pos))
    }
}

/// A string already in the output at `pos` (`text` is those bytes): archives as an
/// [`ArchivedString`] pointing at them, or holding them inline when they are short.
struct PlacedStr<'t> {
    text: &'t str,
    pos: usize,
}

impl Archive for PlacedStr<'_> {
    type Archived = ArchivedString;
    type Resolver = ();

    fn resolve(&self, (): (), out: Place<ArchivedString>) {
        // SAFETY: ArchivedString is a repr(transparent) wrapper of ArchivedStringRepr, so a place
        // for one is a place for the other.
        let repr = unsafe { out.cast_unchecked::<ArchivedStringRepr>() };
        if self.text.len() <= INLINE_CAPACITY {
            // SAFETY: the length is at most INLINE_CAPACITY and `repr` is a place to write to.
            unsafe { ArchivedStringRepr::emplace_inline(self.text, repr.ptr()) }
        } else {
            // SAFETY: INLINE_CAPACITY < length, and lengths are far below OUT_OF_LINE_CAPACITY
            // (chunks are at most a few MiB); the bytes sit at `pos`, before the root.
            unsafe { ArchivedStringRepr::emplace_out_of_line(self.text, self.pos, repr) }
        }
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for PlacedStr<'_> {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        Ok(())
    }
}

/// Mirror of [`Response`] over placed payloads.
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedResponse)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator + Fallible,
    <__S as Fallible>::Error: Source,
))]
struct ResponseOut<'t> {
    id: u64,
    #[rkyv(omit_bounds)]
    body: BodyOut<'t>,
}

/// Mirror of [`Body`]: the same variants in the same order (the tags are positions).
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedBody)]
#[allow(dead_code)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator + Fallible,
    <__S as Fallible>::Error: Source,
))]
enum BodyOut<'t> {
    Classification(Placed<LabelScore>),
    Embedding(Placed<f32>),
    Generation(#[rkyv(omit_bounds)] GenerationOut<'t>),
    Chunk(#[rkyv(omit_bounds)] ChunkOut<'t>),
    Tensors(#[rkyv(omit_bounds)] Entries<'t, TensorOut<'t>>),
    Error(#[rkyv(omit_bounds)] ErrorOut<'t>),
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedErrorBody)]
struct ErrorOut<'t> {
    code: ErrorCode,
    #[rkyv(omit_bounds)]
    message: PlacedStr<'t>,
}

/// Entries serialized behind the payload (the array of tensor entries): archives as an
/// [`ArchivedVec`]. Borrowed, so that the root has nothing to drop.
struct Entries<'e, T>(&'e [T]);

impl<T: Archive> Archive for Entries<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<T, S> Serialize<S> for Entries<'_, T>
where
    T: Serialize<S>,
    S: Fallible + rkyv::ser::Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, s: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, s)
    }
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedGeneration)]
struct GenerationOut<'t> {
    #[rkyv(omit_bounds)]
    text: PlacedStr<'t>,
    tokens: Placed<u32>,
    finish: FinishReason,
    usage: Usage,
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedStreamChunk)]
struct ChunkOut<'t> {
    index: u32,
    #[rkyv(omit_bounds)]
    text: PlacedStr<'t>,
    tokens: Placed<u32>,
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedTensor)]
struct TensorOut<'t> {
    #[rkyv(omit_bounds)]
    name: PlacedStr<'t>,
    shape: Placed<u64>,
    data: TensorDataOut,
}

/// Mirror of [`TensorData`](crate::protocol::TensorData) over placed elements.
#[doc(hidden)]
#[derive(Archive, Serialize, Clone, Copy, Debug)]
#[rkyv(as = ArchivedTensorData)]
pub enum TensorDataOut {
    F32(Placed<f32>),
    I64(Placed<i64>),
    I32(Placed<i32>),
    U8(Placed<u8>),
}

/// A first guess at the bytes an owned answer needs.
pub(crate) fn estimate(resp: &Response) -> usize {
    let payload = match &resp.body {
        Body::Classification(v) => v.iter().map(|l| l.label.len() + 16).sum(),
        Body::Embedding(v) => v.len() * 4,
        Body::Generation(g) => g.text.len() + g.tokens.len() * 4,
        Body::Chunk(c) => c.text.len() + c.tokens.len() * 4,
        Body::Tensors(ts) => ts
            .iter()
            .map(|t| t.name.len() + t.shape.len() * 8 + t.data.len() * 8 + 32)
            .sum(),
        Body::Error(e) => e.message.len(),
    };
    payload + ROOT_ROOM
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{access_response, Generation, Tensor, TensorData};

    #[repr(C, align(64))]
    struct Buf([u8; 16 << 10]);

    fn owned(bytes: &[u8]) -> Response {
        // Archives are read from aligned memory (chunks are 64-byte aligned).
        let mut b = Box::new(Buf([0; 16 << 10]));
        b.0[..bytes.len()].copy_from_slice(bytes);
        let a = access_response(&b.0[..bytes.len()]).expect("the answer validates");
        rkyv::deserialize::<Response, rancor::Error>(a).expect("deserializes")
    }

    fn encoded(resp: &Response) -> Vec<u8> {
        let mut b = Box::new(Buf([0; 16 << 10]));
        let n = encode_into(resp, &mut b.0).expect("fits");
        b.0[..n].to_vec()
    }

    #[test]
    fn an_embedding_written_in_place_is_the_archive_rkyv_writes() {
        let mut b = Box::new(Buf([0; 16 << 10]));
        let mut out = Out::in_buffer(&mut b.0, 7);
        out.embedding(5, |v| {
            v.copy_from_slice(&[1.0, -2.5, 3.0, 0.0, 9.75]);
            Ok(())
        })
        .unwrap();
        let want = Response {
            id: 7,
            body: Body::Embedding(vec![1.0, -2.5, 3.0, 0.0, 9.75]),
        };
        assert_eq!(out.bytes().unwrap(), encoded(&want).as_slice());
        assert_eq!(owned(out.bytes().unwrap()), want);
    }

    fn generation(text: &str, tokens: &[u32], hint: usize, pieces: usize) -> (Vec<u8>, Response) {
        let mut b = Box::new(Buf([0; 16 << 10]));
        let mut out = Out::in_buffer(&mut b.0, 3);
        let mut g = out.generation(tokens.len(), hint).unwrap();
        // Interleave text and token ids as a model would produce them.
        let chars: Vec<char> = text.chars().collect();
        let step = chars.len().div_ceil(pieces.max(1)).max(1);
        let mut t = 0;
        for (i, chunk) in chars.chunks(step).enumerate() {
            g.push_text(&chunk.iter().collect::<String>()).unwrap();
            if i < tokens.len() {
                g.push_tokens(&tokens[i..=i]).unwrap();
                t = i + 1;
            }
        }
        g.push_tokens(&tokens[t..]).unwrap();
        assert_eq!(g.text(), text);
        let usage = Usage {
            prompt_tokens: 4,
            generated_tokens: tokens.len() as u32,
            ttft_us: 12,
            total_us: 99,
        };
        g.finish(FinishReason::Stop, usage).unwrap();
        let want = Response {
            id: 3,
            body: Body::Generation(Generation {
                text: text.to_owned(),
                tokens: tokens.to_vec(),
                finish: FinishReason::Stop,
                usage,
            }),
        };
        (out.bytes().unwrap().to_vec(), want)
    }

    #[test]
    fn a_generation_written_in_place_reads_back_exactly() {
        let tokens: Vec<u32> = (100..300).collect();
        let text = "generated ".repeat(200);
        // Exact hint, 16-byte multiple: the very bytes rkyv writes.
        let (bytes, want) = generation(&text, &tokens, text.len(), 200);
        assert_eq!(bytes, encoded(&want));
        // Short text (inline in the root), no tokens, text longer than the hint (the token ids
        // move), non-ASCII text.
        for (text, tokens, hint) in [
            ("hi", &tokens[..3], 0),
            ("", &tokens[..0], 8),
            ("exactly8", &tokens[..1], 8),
            ("ninebytes", &tokens[..9], 0),
            (text.as_str(), &tokens[..], 10),
            (
                "héllo wörld, ünïcode ✓ ".repeat(20).as_str(),
                &tokens[..50],
                30,
            ),
        ] {
            let (bytes, want) = generation(text, tokens, hint, 7);
            assert_eq!(owned(&bytes), want, "text {text:?} hint {hint}");
        }
    }

    #[test]
    fn text_beyond_the_chunk_is_refused_not_written_past_it() {
        let mut b = vec![0u8; 1024 + 64];
        let at = b.as_ptr().align_offset(64);
        let mut out = Out::in_buffer(&mut b[at..at + 1024], 1);
        let mut g = out.generation(10, 16).unwrap();
        let piece = "x".repeat(100);
        let mut res = Ok(());
        for _ in 0..20 {
            res = g.push_text(&piece);
            if res.is_err() {
                break;
            }
        }
        assert!(matches!(res, Err(BackendError::Exhausted(_))), "{res:?}");
        assert!(matches!(
            g.push_tokens(&[0; 11]),
            Err(BackendError::Exhausted(_))
        ));
    }

    #[test]
    fn tensors_written_in_place_read_back_exactly() {
        let want = Response {
            id: 11,
            body: Body::Tensors(vec![
                Tensor {
                    name: "a_long_tensor_name".into(),
                    shape: vec![2, 3],
                    data: TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                },
                Tensor {
                    name: "ids".into(),
                    shape: vec![3],
                    data: TensorData::I64(vec![-1, 0, i64::MAX]),
                },
                Tensor {
                    name: "b".into(),
                    shape: vec![],
                    data: TensorData::U8(vec![42]),
                },
                Tensor {
                    name: "i".into(),
                    shape: vec![1, 1],
                    data: TensorData::I32(vec![-7]),
                },
            ]),
        };
        let mut b = Box::new(Buf([0; 16 << 10]));
        let mut out = Out::in_buffer(&mut b.0, 11);
        let payload = TensorsWriter::bytes_for::<f32>("a_long_tensor_name", 2, 6)
            + TensorsWriter::bytes_for::<i64>("ids", 1, 3)
            + TensorsWriter::bytes_for::<u8>("b", 0, 1)
            + TensorsWriter::bytes_for::<i32>("i", 2, 1);
        out.tensors(payload, |w| {
            w.add::<f32>("a_long_tensor_name", &[2, 3], |d| {
                d.copy_from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
                Ok(())
            })?;
            w.add::<i64>("ids", &[3], |d| {
                d.copy_from_slice(&[-1, 0, i64::MAX]);
                Ok(())
            })?;
            w.add::<u8>("b", &[], |d| {
                d[0] = 42;
                Ok(())
            })?;
            w.add::<i32>("i", &[1, 1], |d| {
                d[0] = -7;
                Ok(())
            })
        })
        .unwrap();
        assert_eq!(owned(out.bytes().unwrap()), want);
    }

    #[test]
    fn an_owned_body_is_serialized_once() {
        let mut b = Box::new(Buf([0; 16 << 10]));
        let mut out = Out::in_buffer(&mut b.0, 5);
        let body = Body::Classification(vec![LabelScore {
            label: "positive".into(),
            score: 0.9,
        }]);
        out.body(body.clone()).unwrap();
        assert_eq!(owned(out.bytes().unwrap()), Response { id: 5, body });
    }
}
