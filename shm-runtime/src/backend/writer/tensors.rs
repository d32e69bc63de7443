//! Tensor answers: each output tensor's data lent in place inside the chunk.

use super::archive::{
    align, write_root, BodyOut, Entries, Placed, PlacedStr, ResponseOut, TensorDataOut, TensorOut,
};
use super::{Out, OutOfRoom, ROOT_ROOM};

/// Where a tensor's parts were placed: (position, length) of its name, shape and data.
pub(super) struct PlacedTensor {
    pub(super) name: (usize, usize),
    pub(super) shape: (usize, usize),
    pub(super) data: TensorDataOut,
}

/// Element types a tensor can have on the wire.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::writer::{Elem, Out, OutOfRoom, TensorsWriter};
/// use shm_runtime::protocol::{access_response, ArchivedBody, ArchivedTensorData};
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(4096, 0);
///
/// /// Answers one tensor of `shape` filled with `value`, of any element type.
/// fn constant<T: Elem>(out: &mut Out<'_>, shape: &[u64], value: T) -> Result<(), OutOfRoom> {
///     let n = shape.iter().product::<u64>() as usize;
///     let payload = TensorsWriter::bytes_for::<T>("out", shape.len(), n);
///     out.tensors(payload, |w| {
///         w.add("out", shape, |d: &mut [T]| {
///             d.fill(value);
///             Ok(())
///         })
///     })
/// }
/// let mut out = Out::in_buffer(&mut chunk, 1);
/// constant(&mut out, &[2, 3], 1i64)?;
/// let ArchivedBody::Tensors(ts) = &access_response(out.bytes().unwrap())?.body else { panic!() };
/// assert!(matches!(&ts[0].data, ArchivedTensorData::I64(d) if d.len() == 6));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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

impl Out<'_> {
    /// Writes named tensors: `fill` adds them one after another with [`TensorsWriter::add`].
    /// `payload` is the bytes all their names, shapes and data need together (see
    /// [`TensorsWriter::bytes_for`]).
    ///
    /// # Errors
    ///
    /// What `fill` returns, or [`OutOfRoom`] when no chunk can hold it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::{Out, OutOfRoom, TensorsWriter};
    /// use shm_runtime::protocol::{access_response, ArchivedBody};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let payload = TensorsWriter::bytes_for::<f32>("logits", 2, 6)
    ///     + TensorsWriter::bytes_for::<i64>("ids", 1, 2);
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// out.tensors::<OutOfRoom>(payload, |w| {
    ///     w.add::<f32, OutOfRoom>("logits", &[2, 3], |d| {
    ///         d.fill(0.5);
    ///         Ok(())
    ///     })?;
    ///     w.add::<i64, OutOfRoom>("ids", &[2], |d| {
    ///         d.copy_from_slice(&[7, 8]);
    ///         Ok(())
    ///     })
    /// })?;
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Tensors(ts) = &answer.body else { panic!() };
    /// assert_eq!((ts.len(), ts[1].name.as_str()), (2, "ids"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tensors<E: From<OutOfRoom>>(
        &mut self,
        payload: usize,
        fill: impl FnOnce(&mut TensorsWriter<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
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

/// Adds output tensors in place; see [`Out::tensors`](super::Out::tensors).
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::writer::{Out, OutOfRoom, TensorsWriter};
/// use shm_runtime::protocol::{access_response, f32_native, ArchivedBody, ArchivedTensorData};
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(4096, 0);
///
/// let probs = [0.1, 0.7, 0.2]; // a model's output
/// let mut out = Out::in_buffer(&mut chunk, 1);
/// let payload = TensorsWriter::bytes_for::<f32>("probs", 2, probs.len());
/// out.tensors(payload, |w: &mut TensorsWriter<'_>| {
///     w.add::<f32, OutOfRoom>("probs", &[1, 3], |d| {
///         d.copy_from_slice(&probs); // straight into the chunk
///         Ok(())
///     })
/// })?;
/// let ArchivedBody::Tensors(ts) = &access_response(out.bytes().unwrap())?.body else { panic!() };
/// let ArchivedTensorData::F32(d) = &ts[0].data else { panic!("not f32") };
/// assert_eq!(f32_native(d), probs);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::TensorsWriter;
    ///
    /// // The payload `Out::tensors` needs for a [1, 384] f32 output and a [1] i64 one.
    /// let payload = TensorsWriter::bytes_for::<f32>("embedding", 2, 384)
    ///     + TensorsWriter::bytes_for::<i64>("label", 1, 1);
    /// assert!(payload >= 384 * 4 + 8); // the data, with room for names, shapes and alignment
    /// ```
    pub fn bytes_for<T: Elem>(name: &str, rank: usize, elems: usize) -> usize {
        name.len() + 16 + rank * 8 + 16 + elems * std::mem::size_of::<T>() + 16
    }

    /// Adds tensor `name` of `shape`; `fill` gets its data inside the chunk.
    ///
    /// # Errors
    ///
    /// What `fill` returns, or [`OutOfRoom`] when the chunk is full.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::{Out, OutOfRoom};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// out.tensors::<OutOfRoom>(256, |w| {
    ///     w.add::<u8, OutOfRoom>("mask", &[2, 4], |d| {
    ///         assert_eq!(d.len(), 8); // as many elements as the shape holds
    ///         d.fill(1);
    ///         Ok(())
    ///     })
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
