//! The archive's root, written behind payloads already in place: mirror types that archive as
//! the protocol's own archived types, the writer over the chunk's tail, and `write_root`, which
//! serializes a root there.

use std::marker::PhantomData;

use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::allocator::SubAllocator;
use rkyv::ser::{Positional, Writer};
use rkyv::string::repr::{ArchivedStringRepr, INLINE_CAPACITY};
use rkyv::string::ArchivedString;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use super::{OutOfRoom, ROOT_ROOM};
use crate::protocol::{
    ArchivedBody, ArchivedEmbeddingRows, ArchivedErrorBody, ArchivedGeneration, ArchivedResponse,
    ArchivedStreamChunk, ArchivedTensor, ArchivedTensorData, Body, ErrorCode, FinishReason,
    LabelScore, Response, TokenLogprob, Usage,
};

/// The rkyv writer for the root: the tail of a chunk, at positions counted from the chunk start.
pub(super) struct Tail<'b> {
    pub(super) buf: &'b mut [u8],
    pub(super) base: usize,
    pub(super) len: usize,
}

impl Positional for Tail<'_> {
    fn pos(&self) -> usize {
        self.base + self.len
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no room behind the payload for the answer's root")]
pub(super) struct NoRoom;

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
    pub(super) pos: usize,
    pub(super) len: usize,
    pub(super) _t: PhantomData<T>,
}

impl<T> Placed<T> {
    pub(super) fn new(pos: usize, len: usize) -> Placed<T> {
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
pub(super) struct PlacedStr<'t> {
    pub(super) text: &'t str,
    pub(super) pos: usize,
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
pub(super) struct ResponseOut<'t> {
    pub(super) id: u64,
    #[rkyv(omit_bounds)]
    pub(super) body: BodyOut<'t>,
}

/// Mirror of [`Body`]: the same variants in the same order (the tags are positions).
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedBody)]
#[allow(dead_code)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator + Fallible,
    <__S as Fallible>::Error: Source,
))]
pub(super) enum BodyOut<'t> {
    Classification(Placed<LabelScore>),
    Embedding(Placed<f32>),
    Generation(#[rkyv(omit_bounds)] GenerationOut<'t>),
    Chunk(#[rkyv(omit_bounds)] ChunkOut<'t>),
    Tensors(#[rkyv(omit_bounds)] Entries<'t, TensorOut<'t>>),
    Error(#[rkyv(omit_bounds)] ErrorOut<'t>),
    Embeddings(EmbeddingRowsOut),
    Classifications(Placed<Vec<LabelScore>>),
}

/// Mirror of [`EmbeddingRows`](crate::protocol::EmbeddingRows) over placed values.
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedEmbeddingRows)]
pub(super) struct EmbeddingRowsOut {
    pub(super) dim: u32,
    pub(super) values: Placed<f32>,
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedErrorBody)]
pub(super) struct ErrorOut<'t> {
    pub(super) code: ErrorCode,
    #[rkyv(omit_bounds)]
    pub(super) message: PlacedStr<'t>,
}

/// Entries serialized behind the payload (the array of tensor entries): archives as an
/// [`ArchivedVec`]. Borrowed, so that the root has nothing to drop.
pub(super) struct Entries<'e, T>(pub(super) &'e [T]);

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
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator + Fallible,
    <__S as Fallible>::Error: Source,
))]
pub(super) struct GenerationOut<'t> {
    #[rkyv(omit_bounds)]
    pub(super) text: PlacedStr<'t>,
    pub(super) tokens: Placed<u32>,
    pub(super) finish: FinishReason,
    pub(super) usage: Usage,
    /// Serialized behind the token ids, as rkyv would.
    #[rkyv(omit_bounds)]
    pub(super) logprobs: Entries<'t, TokenLogprob>,
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedStreamChunk)]
pub(super) struct ChunkOut<'t> {
    pub(super) index: u32,
    #[rkyv(omit_bounds)]
    pub(super) text: PlacedStr<'t>,
    pub(super) tokens: Placed<u32>,
    pub(super) logprobs: Placed<TokenLogprob>,
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedTensor)]
pub(super) struct TensorOut<'t> {
    #[rkyv(omit_bounds)]
    pub(super) name: PlacedStr<'t>,
    pub(super) shape: Placed<u64>,
    pub(super) data: TensorDataOut,
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

/// The rkyv serializer of an answer's root: writes behind the payload, with a fixed scratch.
type RootSerializer<'x, 'c> =
    rkyv::api::low::LowSerializer<Tail<'x>, SubAllocator<'c>, rancor::Error>;

/// Serializes `root` into `tail`, which starts at position `base` of the chunk; returns the
/// answer's length (the root is its last part).
///
/// The root's own bytes are resolved straight into the chunk: the placed payloads leave nothing
/// for the serializer to write except the arrays of tensor entries.
#[inline]
pub(super) fn write_root<T>(tail: &mut [u8], base: usize, root: &T) -> Result<usize, OutOfRoom>
where
    T: Archive + for<'c, 'x> Serialize<RootSerializer<'x, 'c>>,
{
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 256];
    write_root_with(tail, base, root, &mut scratch)
}

/// [`write_root`] with the serializer's scratch space given (the resolvers of the arrays it
/// serializes live there meanwhile).
pub(super) fn write_root_with<T>(
    tail: &mut [u8],
    base: usize,
    root: &T,
    scratch: &mut [std::mem::MaybeUninit<u8>],
) -> Result<usize, OutOfRoom>
where
    T: Archive + for<'c, 'x> Serialize<RootSerializer<'x, 'c>>,
{
    let exhausted = |e: rancor::Error| OutOfRoom(format!("the answer does not fit its chunk: {e}"));
    let mut ser = rkyv::ser::Serializer::new(
        Tail {
            buf: &mut *tail,
            base,
            len: 0,
        },
        SubAllocator::new(scratch),
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
        return Err(OutOfRoom(
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

pub(super) fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// A first guess at the bytes an owned answer needs.
pub(crate) fn estimate(resp: &Response) -> usize {
    let payload = match &resp.body {
        Body::Classification(v) => v.iter().map(|l| l.label.len() + 16).sum(),
        Body::Embedding(v) => v.len() * 4,
        Body::Generation(g) => g.text.len() + g.tokens.len() * 4 + logprobs_bytes(&g.logprobs),
        Body::Chunk(c) => c.text.len() + c.tokens.len() * 4 + logprobs_bytes(&c.logprobs),
        Body::Tensors(ts) => ts
            .iter()
            .map(|t| t.name.len() + t.shape.len() * 8 + t.data.len() * 8 + 32)
            .sum(),
        Body::Error(e) => e.message.len(),
        Body::Embeddings(e) => e.values.len() * 4,
        Body::Classifications(c) => c
            .iter()
            .flatten()
            .map(|l| l.label.len() + 16)
            .sum::<usize>()
            .saturating_add(c.len() * 8),
    };
    payload + ROOT_ROOM
}

/// About the bytes `logprobs` take in an archive.
pub(crate) fn logprobs_bytes(logprobs: &[TokenLogprob]) -> usize {
    logprobs
        .iter()
        .map(|l| 16 + l.top.iter().map(|t| 16 + t.text.len()).sum::<usize>())
        .sum()
}
