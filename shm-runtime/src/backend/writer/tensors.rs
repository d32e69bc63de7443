//! Tensor answers: each output tensor's data lent in place inside the chunk.

use super::archive::{Placed, TensorDataOut};
use super::{align, OutOfRoom, ROOT_ROOM};

/// Where a tensor's parts were placed: (position, length) of its name, shape and data.
pub(super) struct PlacedTensor {
    pub(super) name: (usize, usize),
    pub(super) shape: (usize, usize),
    pub(super) data: TensorDataOut,
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

/// Adds output tensors in place; see [`Out::tensors`](super::Out::tensors).
pub struct TensorsWriter<'b> {
    pub(super) buf: &'b mut [u8],
    pub(super) at: usize,
    pub(super) placed: Vec<PlacedTensor>,
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
    /// What `fill` returns, or [`OutOfRoom`] when the chunk is full.
    pub fn add<T: Elem, E: From<OutOfRoom>>(
        &mut self,
        name: &str,
        shape: &[u64],
        fill: impl FnOnce(&mut [T]) -> Result<(), E>,
    ) -> Result<(), E> {
        let elems = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| OutOfRoom("tensor shape overflows".into()))?;
        let name_at = self.at;
        let shape_at = align(name_at + name.len(), 8);
        let data_at = align(shape_at + shape.len() * 8, 16);
        let end = data_at + elems * std::mem::size_of::<T>();
        if end + ROOT_ROOM + 64 * (self.placed.len() + 1) > self.buf.len() {
            return Err(
                OutOfRoom(format!("tensor {name:?} does not fit the answer's chunk")).into(),
            );
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
