//! Serializing into chunks and validating archives read from them.

use rkyv::rancor;
use rkyv::Serialize;

use super::{ArchivedRequest, ArchivedResponse, Refusal, Request, REQUEST_HEAD};

/// Validates `bytes` as an archived [`Request`] (bytecheck: every offset, length, enum tag and
/// UTF-8 string) and returns a view of it.
///
/// `bytes` must start at a 16-byte aligned address (pool chunks are 64-byte aligned).
///
/// # Errors
///
/// An [`ErrorCode::InvalidRequest`](super::ErrorCode::InvalidRequest) refusal naming what is
/// malformed.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, Input, Params, Request, Task};
///
/// let req = Request {
///     id: 3,
///     model: "sentiment".into(),
///     task: Task::Classify,
///     input: Input::Text("good".into()),
///     params: Params::default(),
/// };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// assert_eq!(access_request(&bytes)?.model, "sentiment");
/// // Cut short, the same bytes are refused, not read.
/// let refusal = access_request(&bytes[..bytes.len() - 1]).unwrap_err();
/// assert!(refusal.message.starts_with("the request is not a valid archive"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn access_request(bytes: &[u8]) -> Result<&ArchivedRequest, Refusal> {
    rkyv::access::<ArchivedRequest, rancor::Error>(bytes)
        .map_err(|e| Refusal::invalid(format!("the request is not a valid archive: {e}")))
}

/// Validates `bytes` as an archived [`Response`](super::Response).
///
/// # Errors
///
/// An [`ErrorCode::InvalidRequest`](super::ErrorCode::InvalidRequest) refusal naming what is
/// malformed.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_response, ArchivedBody, Body, Response};
///
/// let resp = Response { id: 3, body: Body::Embedding(vec![1.0, 2.0]) };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&resp)?;
/// let answer = access_response(&bytes)?;
/// assert!(matches!(&answer.body, ArchivedBody::Embedding(v) if v.len() == 2));
/// assert!(access_response(&bytes[..8]).is_err()); // too short to be an answer
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn access_response(bytes: &[u8]) -> Result<&ArchivedResponse, Refusal> {
    rkyv::access::<ArchivedResponse, rancor::Error>(bytes)
        .map_err(|e| Refusal::invalid(format!("the response is not a valid archive: {e}")))
}

/// Serializes `value` into `out` (no allocation of an intermediate buffer) and returns the number
/// of bytes written.
///
/// Tries first with scratch space on the stack (no thread-local arena: the common answers need
/// none or little), then with rkyv's arena-backed serializer.
///
/// # Errors
///
/// When `out` is too small.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request, encode_into, Input, Params, Request, Task};
///
/// let req = Request {
///     id: 1,
///     model: "echo".into(),
///     task: Task::Embed,
///     input: Input::Tokens(vec![1, 2, 3]),
///     params: Params::default(),
/// };
/// // Straight into the memory it is read from: a pool chunk, or here an aligned buffer.
/// let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// chunk.resize(512, 0);
/// let n = encode_into(&req, &mut chunk)?;
/// assert_eq!(access_request(&chunk[..n])?.id, 1);
/// // Too small a buffer is an error, not a panic.
/// assert!(encode_into(&req, &mut [0u8; 32]).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_into<T>(value: &T, out: &mut [u8]) -> Result<usize, rancor::Error>
where
    T: for<'x, 'a> Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::ser::writer::Buffer<'x>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rancor::Error,
            >,
        > + for<'x, 'c> Serialize<
            rkyv::api::low::LowSerializer<
                rkyv::ser::writer::Buffer<'x>,
                rkyv::ser::allocator::SubAllocator<'c>,
                rancor::Error,
            >,
        >,
{
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 512];
    if let Ok(buf) = rkyv::api::low::to_bytes_in_with_alloc::<_, _, rancor::Error>(
        value,
        rkyv::ser::writer::Buffer::from(&mut *out),
        rkyv::ser::allocator::SubAllocator::new(&mut scratch),
    ) {
        return Ok(buf.len());
    }
    let buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
        value,
        rkyv::ser::writer::Buffer::from(out),
    )?;
    Ok(buf.len())
}

/// Writes the request head and the archived request into a chunk; returns the bytes used.
///
/// # Errors
///
/// When `out` is too small.
#[doc(hidden)]
pub fn encode_request(req: &Request, out: &mut [u8]) -> Result<usize, rancor::Error> {
    if out.len() < REQUEST_HEAD {
        return Err(<rancor::Error as rancor::Source>::new(HeadTooSmall));
    }
    let (head, body) = out.split_at_mut(REQUEST_HEAD);
    head[0] = req.params.priority;
    head[1..4].fill(0);
    head[4..8].copy_from_slice(&req.params.timeout_ms.to_le_bytes());
    head[8..16].copy_from_slice(&req.id.to_le_bytes());
    Ok(REQUEST_HEAD + encode_into(req, body)?)
}

#[derive(Debug, thiserror::Error)]
#[error("buffer smaller than the request head")]
struct HeadTooSmall;
