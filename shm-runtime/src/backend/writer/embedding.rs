//! Embedding answers: one vector, or rows of equal dimension, written where the client reads
//! them.

use super::archive::{write_root, BodyOut, EmbeddingRowsOut, Placed, ResponseOut};
use super::{Out, OutOfRoom, ROOT_ROOM};

impl Out<'_> {
    /// Writes an embedding of `dim` floats: `fill` gets the vector inside the chunk.
    ///
    /// # Errors
    ///
    /// What `fill` returns, or [`OutOfRoom`] when no chunk can hold it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::{Out, OutOfRoom};
    /// use shm_runtime::protocol::{access_response, f32_native, ArchivedBody};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// out.embedding::<OutOfRoom>(3, |v| {
    ///     v.copy_from_slice(&[3.0, 0.0, 4.0]); // a model's output ...
    ///     let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    ///     v.iter_mut().for_each(|x| *x /= norm); // ... normalised where the client reads it
    ///     Ok(())
    /// })?;
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Embedding(v) = &answer.body else { panic!() };
    /// assert_eq!(f32_native(v), [0.6, 0.0, 0.8]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn embedding<E: From<OutOfRoom>>(
        &mut self,
        dim: usize,
        fill: impl FnOnce(&mut [f32]) -> Result<(), E>,
    ) -> Result<(), E> {
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

    /// Writes `rows` embeddings of dimension `dim` in place
    /// ([`Body::Embeddings`](crate::protocol::Body::Embeddings)): `fill` gets the `rows x dim`
    /// values, row-major.
    ///
    /// # Errors
    ///
    /// What `fill` returns, or [`OutOfRoom`] when no chunk can hold it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::{Out, OutOfRoom};
    /// use shm_runtime::protocol::{access_response, f32_native, ArchivedBody};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// let texts = ["a", "bc"];
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// out.embeddings::<OutOfRoom>(texts.len(), 3, |v| {
    ///     for (row, text) in v.chunks_exact_mut(3).zip(texts) {
    ///         row.fill(text.len() as f32);
    ///     }
    ///     Ok(())
    /// })?;
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Embeddings(e) = &answer.body else { panic!() };
    /// assert_eq!(e.dim, 3);
    /// assert_eq!(f32_native(&e.values), [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn embeddings<E: From<OutOfRoom>>(
        &mut self,
        rows: usize,
        dim: usize,
        fill: impl FnOnce(&mut [f32]) -> Result<(), E>,
    ) -> Result<(), E> {
        let id = self.id;
        let n = rows.checked_mul(dim).ok_or_else(|| {
            OutOfRoom(format!("{rows} embeddings of dimension {dim} are too many"))
        })?;
        let dim32 =
            u32::try_from(dim).map_err(|_| OutOfRoom(format!("dimension {dim} is too large")))?;
        let buf = self.room(n * 4 + ROOT_ROOM)?;
        fill(bytemuck::cast_slice_mut(&mut buf[..n * 4]))?;
        let root = ResponseOut {
            id,
            body: BodyOut::Embeddings(EmbeddingRowsOut {
                dim: dim32,
                values: Placed::new(0, n),
            }),
        };
        self.len = write_root(&mut buf[n * 4..], n * 4, &root)?;
        Ok(())
    }
}
