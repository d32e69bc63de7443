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
//!
//! # Examples
//!
//! ```
//! use shm_runtime::backend::writer::{Out, OutOfRoom};
//! use shm_runtime::protocol::{access_response, f32_native, ArchivedBody};
//!
//! // An answer to request 7, in a buffer (a server's answers go into pool chunks).
//! let mut chunk = rkyv::util::AlignedVec::<16>::new();
//! chunk.resize(4096, 0);
//! let mut out = Out::in_buffer(&mut chunk, 7);
//! // The vector is written where the client reads it; only the root is serialized behind it.
//! out.embedding::<OutOfRoom>(3, |v| {
//!     v.copy_from_slice(&[0.5, 1.5, 2.5]);
//!     Ok(())
//! })?;
//! let answer = access_response(out.bytes().unwrap())?;
//! let ArchivedBody::Embedding(v) = &answer.body else { panic!("not an embedding") };
//! assert_eq!((answer.id.to_native(), f32_native(v)), (7, &[0.5, 1.5, 2.5][..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use shm_ring::pool::{Loan, OwnerId, Pool};

use crate::protocol::{encode_into, Body, Response};

/// An answer that does not fit: no chunk is large enough, the pool is exhausted, or a writer went
/// past the room it was given. The sentence says which. Backends turn it into
/// `BackendError::Exhausted` (with `?`), which the client sees as `ResourceExhausted`.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::writer::{Out, OutOfRoom};
/// use shm_runtime::backend::BackendError;
///
/// let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// chunk.resize(64, 0);
/// let mut out = Out::in_buffer(&mut chunk, 1);
/// let err = out.embedding::<OutOfRoom>(1000, |_| Ok(())).unwrap_err();
/// assert!(err.0.starts_with("the answer needs 4256 bytes"));
/// // In a backend, `?` makes it `BackendError::Exhausted`: the client sees `ResourceExhausted`.
/// assert!(matches!(BackendError::from(err), BackendError::Exhausted(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutOfRoom(pub String);

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
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::writer::Out;
/// use shm_runtime::protocol::{access_response, ArchivedBody, Body, LabelScore};
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(4096, 0);
///
/// // A backend's answer to request 3 (a server hands the `Out` to the backend's `run`).
/// let mut out = Out::in_buffer(&mut chunk, 3);
/// out.body(Body::Classification(vec![LabelScore { label: "spam".into(), score: 0.98 }]))?;
/// let answer = access_response(out.bytes().unwrap())?;
/// assert_eq!(answer.id, 3); // set by the `Out`
/// assert!(matches!(&answer.body, ArchivedBody::Classification(c) if c[0].label == "spam"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Out<'a> {
    store: Store<'a>,
    id: u64,
    len: usize,
    /// The counts and finish reason of the generation written, for the lane's metrics.
    generated: Option<(crate::protocol::Usage, crate::protocol::FinishReason)>,
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::Body;
    /// use shm_runtime::ring::pool::{Pool, PoolConfig};
    /// use shm_runtime::ring::Region;
    ///
    /// let config = PoolConfig::small();
    /// let region = Region::heap(Pool::bytes_for(&config));
    /// Pool::init(&region, &config)?;
    /// let pool = Pool::attach(&region)?;
    /// let server = pool.register_owner()?;
    /// let mut out = Out::in_pool(&pool, server, 5);
    /// assert_eq!(pool.stats().in_use(), 0); // no chunk until the answer is written
    /// out.body(Body::Embedding(vec![1.0; 16]))?;
    /// assert_eq!(pool.stats().in_use(), 1);
    /// drop(out); // an answer not handed on goes back to the pool
    /// assert_eq!(pool.stats().in_use(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_pool(pool: &'a Pool, owner: OwnerId, id: u64) -> Out<'a> {
        Out {
            store: Store::Pool {
                pool,
                owner,
                loan: None,
            },
            id,
            len: 0,
            generated: None,
        }
    }

    /// An answer to request `id` written into `buf`, which must be 16-byte aligned (tests and
    /// benchmarks).
    ///
    /// # Panics
    ///
    /// When `buf` is not 16-byte aligned.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::{access_response, Body};
    ///
    /// // 16-byte aligned, as archives must be: `AlignedVec` is.
    /// let mut buf = rkyv::util::AlignedVec::<16>::new();
    /// buf.resize(1024, 0);
    /// let mut out = Out::in_buffer(&mut buf, 1);
    /// out.body(Body::Embedding(vec![0.5]))?;
    /// assert!(access_response(out.bytes().unwrap()).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
            generated: None,
        }
    }

    /// The id of the request this answers.
    ///
    /// # Examples
    ///
    /// ```
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(1024, 0);
    /// let out = shm_runtime::backend::writer::Out::in_buffer(&mut chunk, 42);
    /// assert_eq!(out.id(), 42); // the request's id, which its answers carry
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The usage and finish reason of the generation this answer holds, if it is one (once:
    /// the server counts them in the lane's metrics).
    pub(crate) fn take_generated(
        &mut self,
    ) -> Option<(crate::protocol::Usage, crate::protocol::FinishReason)> {
        self.generated.take()
    }

    /// Bytes of the finished answer, `None` while nothing has been written.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::Body;
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(1024, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 1);
    /// assert_eq!(out.written(), None); // a backend returning `Ok` now would have failed
    /// out.body(Body::Embedding(vec![0.0; 4]))?;
    /// assert!(out.written().unwrap() >= 4 * 4); // the archive's length
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn written(&self) -> Option<usize> {
        (self.len > 0).then_some(self.len)
    }

    /// The finished answer's bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::{access_response, Body};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(1024, 0);
    ///
    /// let mut out = Out::in_buffer(&mut chunk, 7);
    /// assert!(out.bytes().is_none());
    /// out.body(Body::Embedding(vec![0.25, 0.75]))?;
    /// let answer = access_response(out.bytes().expect("written"))?; // what the client reads
    /// assert_eq!(answer.id, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    fn room(&mut self, size: usize) -> Result<&mut [u8], OutOfRoom> {
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
    fn get_room(&mut self, size: usize) -> Result<(), OutOfRoom> {
        match &mut self.store {
            Store::Buf(b) => Err(OutOfRoom(format!(
                "the answer needs {size} bytes, the buffer has {}",
                b.len()
            ))),
            Store::Pool { pool, owner, loan } => {
                let max = pool.max_chunk_size();
                if size > max {
                    return Err(OutOfRoom(format!(
                        "the answer needs {size} bytes, the largest chunk has {max}"
                    )));
                }
                *loan = None;
                *loan = Some(
                    pool.loan(*owner, size)
                        .map_err(|e| OutOfRoom(format!("no chunk for the answer: {e}")))?,
                );
                Ok(())
            }
        }
    }

    /// Moves the answer to a chunk of at least `size` bytes, keeping its first `keep` bytes;
    /// returns the new chunk's length.
    #[cold]
    fn grow(&mut self, size: usize, keep: usize) -> Result<usize, OutOfRoom> {
        match &mut self.store {
            Store::Buf(b) => Err(OutOfRoom(format!(
                "the answer needs more than the buffer's {} bytes",
                b.len()
            ))),
            Store::Pool { pool, owner, loan } => {
                let max = pool.max_chunk_size();
                let old_len = loan.as_ref().map_or(0, Loan::len);
                if old_len >= max {
                    return Err(OutOfRoom(format!(
                        "the answer does not fit the largest chunk ({max} bytes)"
                    )));
                }
                let mut new = pool
                    .loan(*owner, size.min(max))
                    .map_err(|e| OutOfRoom(format!("no chunk for the answer: {e}")))?;
                if let Some(old) = loan.as_ref() {
                    new.as_mut_slice()[..keep].copy_from_slice(&old.as_slice()[..keep]);
                }
                let len = new.len();
                *loan = Some(new);
                Ok(len)
            }
        }
    }

    /// Writes an owned body (classification, errors, anything small).
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] when no chunk can hold it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::writer::Out;
    /// use shm_runtime::protocol::{access_response, ArchivedBody, Body, LabelScore};
    /// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
    /// # chunk.resize(4096, 0);
    ///
    /// // The answer to a request of two texts: one classification each.
    /// let best = |label: &str| vec![LabelScore { label: label.into(), score: 1.0 }];
    /// let mut out = Out::in_buffer(&mut chunk, 3);
    /// out.body(Body::Classifications(vec![best("spam"), best("ham")]))?;
    /// let answer = access_response(out.bytes().unwrap())?;
    /// let ArchivedBody::Classifications(c) = &answer.body else { panic!() };
    /// assert_eq!(c[1][0].label, "ham");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn body(&mut self, body: Body) -> Result<(), OutOfRoom> {
        self.response(&Response { id: self.id, body })
    }

    /// Writes a whole owned response (its own id), serialized once: into a chunk sized by
    /// [`estimate`], doubled up to the largest chunk while it does not fit.
    ///
    /// # Errors
    ///
    /// [`OutOfRoom`] when no chunk can hold it.
    pub(crate) fn response(&mut self, resp: &Response) -> Result<(), OutOfRoom> {
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
                    return Err(OutOfRoom(format!(
                        "the answer does not fit the largest chunk: {e}"
                    )))
                }
            }
        }
    }
}

mod archive;
mod embedding;
mod generation;
mod tensors;
#[cfg(test)]
mod tests;

pub(crate) use archive::estimate;
pub use archive::TensorDataOut;
pub use generation::{GenerationState, GenerationWriter};
pub use tensors::{Elem, TensorsWriter};
