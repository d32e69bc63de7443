//! The request head: the plain bytes before the archive that the server reads to queue a request.

use super::{access_request, check_request, ArchivedRequest, Limits, Refusal};

/// Bytes before the archive in a request chunk: a plain header with what the server needs to
/// queue a request before it validates the archive (priority, timeout, id), so that the archive is
/// validated once, when the request runs. Layout: `priority: u8, 0, 0, 0, timeout_ms: u32 LE,
/// id: u64 LE`. The archive follows, 16-byte aligned.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{access_request_chunk, encode_into, Input, Limits, Params, Request};
/// use shm_runtime::protocol::{Task, REQUEST_HEAD};
///
/// let params = Params { priority: 0, timeout_ms: 500, ..Params::default() };
/// let input = Input::Text("hi".into());
/// let req = Request { id: 5, model: "echo".into(), task: Task::Embed, input, params };
/// let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// chunk.resize(512, 0);
/// // The head: priority, three zero bytes, timeout_ms and id (little-endian); then the archive.
/// chunk[0] = req.params.priority;
/// chunk[4..8].copy_from_slice(&req.params.timeout_ms.to_le_bytes());
/// chunk[8..16].copy_from_slice(&req.id.to_le_bytes());
/// let n = REQUEST_HEAD + encode_into(&req, &mut chunk[REQUEST_HEAD..])?;
/// let (head, archived) = access_request_chunk(&chunk[..n], &Limits::default())?;
/// assert_eq!((head.id, head.timeout_ms), (5, 500));
/// assert_eq!(archived.model, "echo");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const REQUEST_HEAD: usize = 16;

/// Number of priority levels; 0 is the most urgent.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{read_request_head, Limits, PRIORITY_LEVELS};
///
/// // A request head whose first byte, the priority, is the least urgent level ...
/// let mut head = [0u8; 16];
/// head[0] = (PRIORITY_LEVELS - 1) as u8;
/// assert_eq!(read_request_head(&head, &Limits::default())?.priority, 3);
/// // ... or one past it.
/// head[0] = PRIORITY_LEVELS as u8;
/// assert!(read_request_head(&head, &Limits::default()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const PRIORITY_LEVELS: usize = 4;

/// The request head as read from a chunk (untrusted: check before use).
///
/// # Examples
///
/// ```
/// # use shm_runtime::protocol::{encode_into, Input, Params, Request, Task, REQUEST_HEAD};
/// # let params = Params { priority: 0, timeout_ms: 250, ..Params::default() };
/// # let input = Input::Text("hi".into());
/// # let req = Request { id: 5, model: "echo".into(), task: Task::Embed, input, params };
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(512, 0);
/// # chunk[0] = req.params.priority;
/// # chunk[4..8].copy_from_slice(&req.params.timeout_ms.to_le_bytes());
/// # chunk[8..16].copy_from_slice(&req.id.to_le_bytes());
/// # let n = REQUEST_HEAD + encode_into(&req, &mut chunk[REQUEST_HEAD..])?;
/// # chunk.resize(n, 0);
/// use shm_runtime::protocol::{read_request_head, Limits, RequestHead};
///
/// // `chunk`: a request as a client wrote it (see `REQUEST_HEAD`). What the server knows of it
/// // before it validates the archive, enough to queue it:
/// let head = read_request_head(&chunk, &Limits::default())?;
/// assert_eq!(head, RequestHead { priority: 0, timeout_ms: 250, id: 5 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Priority level.
    pub priority: u8,
    /// Deadline in milliseconds, 0 for the server's default.
    pub timeout_ms: u32,
    /// The request's id.
    pub id: u64,
}

/// Reads and checks a request head (the first [`REQUEST_HEAD`] bytes of a request chunk).
///
/// # Errors
///
/// A sentence naming what is out of range.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{read_request_head, Limits};
///
/// let mut head = [0u8; 16];
/// head[0] = 2; // priority
/// head[4..8].copy_from_slice(&5_000u32.to_le_bytes()); // timeout_ms
/// head[8..].copy_from_slice(&77u64.to_le_bytes()); // id
/// let h = read_request_head(&head, &Limits::default())?;
/// assert_eq!((h.priority, h.timeout_ms, h.id), (2, 5_000, 77));
/// // Out of range for a server with a shorter longest deadline:
/// let strict = Limits { max_timeout_ms: 1_000, ..Limits::default() };
/// let refusal = read_request_head(&head, &strict).unwrap_err();
/// assert_eq!(refusal.message, "timeout_ms 5000 exceeds the limit of 1000");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[inline]
pub fn read_request_head(bytes: &[u8], limits: &Limits) -> Result<RequestHead, Refusal> {
    let Some(head) = bytes.get(..REQUEST_HEAD) else {
        return Err(Refusal::invalid(format!(
            "a request needs at least {REQUEST_HEAD} bytes, got {}",
            bytes.len()
        )));
    };
    let mut w = [0u8; 4];
    w.copy_from_slice(&head[4..8]);
    let timeout_ms = u32::from_le_bytes(w);
    let mut id = [0u8; 8];
    id.copy_from_slice(&head[8..16]);
    let priority = head[0];
    // The messages format copies of the fields, never the head itself: a head whose address is
    // taken lives on the stack, and copying it out whole after field-wise stores stalls
    // store-to-load forwarding on every request.
    if usize::from(priority) >= PRIORITY_LEVELS || head[1..4] != [0, 0, 0] {
        return Err(Refusal::invalid(format!(
            "request head: priority must be 0..={}, got {priority}",
            PRIORITY_LEVELS - 1,
        )));
    }
    if timeout_ms > limits.max_timeout_ms {
        return Err(Refusal::invalid(format!(
            "timeout_ms {timeout_ms} exceeds the limit of {}",
            limits.max_timeout_ms
        )));
    }
    Ok(RequestHead {
        priority,
        timeout_ms,
        id: u64::from_le_bytes(id),
    })
}

/// Validates a whole request chunk's bytes: the head, the archive after it, the semantic limits,
/// and that the head agrees with the archive.
///
/// # Errors
///
/// A refusal naming the first problem.
///
/// # Examples
///
/// ```
/// # use shm_runtime::protocol::{encode_into, Input, Params, Request, Task, REQUEST_HEAD};
/// # let input = Input::Text("hi".into());
/// # let params = Params::default();
/// # let req = Request { id: 5, model: "echo".into(), task: Task::Embed, input, params };
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(512, 0);
/// # chunk[0] = req.params.priority;
/// # chunk[4..8].copy_from_slice(&req.params.timeout_ms.to_le_bytes());
/// # chunk[8..16].copy_from_slice(&req.id.to_le_bytes());
/// # let n = REQUEST_HEAD + encode_into(&req, &mut chunk[REQUEST_HEAD..])?;
/// # chunk.resize(n, 0);
/// use shm_runtime::protocol::{access_request_chunk, Limits};
///
/// // `chunk` holds a request written by a client: head, then archive.
/// let (head, req) = access_request_chunk(&chunk, &Limits::default())?;
/// assert_eq!(head.id, req.id.to_native());
/// // A head that disagrees with its archive is refused.
/// let mut forged = chunk.clone();
/// forged[8] ^= 1; // another id
/// let refusal = access_request_chunk(&forged, &Limits::default()).unwrap_err();
/// assert_eq!(refusal.message, "the request head disagrees with the archived request");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn access_request_chunk<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<(RequestHead, &'a ArchivedRequest), Refusal> {
    let head = read_request_head(bytes, limits)?;
    Ok((head, access_request_body(bytes, &head, limits)?))
}

/// Validates the archive of a request chunk whose head was read before (when the request was
/// queued): bytecheck, the semantic limits, and that the archive agrees with `head`. The head's
/// bytes are not read again: a client that rewrote them since is caught by the disagreement.
///
/// `bytes` is the whole chunk, head included.
///
/// # Errors
///
/// A refusal naming the first problem.
///
/// # Examples
///
/// ```
/// # use shm_runtime::protocol::{encode_into, Input, Params, Request, Task, REQUEST_HEAD};
/// # let input = Input::Text("hi".into());
/// # let params = Params::default();
/// # let req = Request { id: 5, model: "echo".into(), task: Task::Embed, input, params };
/// # let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// # chunk.resize(512, 0);
/// # chunk[0] = req.params.priority;
/// # chunk[4..8].copy_from_slice(&req.params.timeout_ms.to_le_bytes());
/// # chunk[8..16].copy_from_slice(&req.id.to_le_bytes());
/// # let n = REQUEST_HEAD + encode_into(&req, &mut chunk[REQUEST_HEAD..])?;
/// # chunk.resize(n, 0);
/// use shm_runtime::protocol::{access_request_body, read_request_head, Limits, RequestHead};
///
/// // `chunk`: a request as a client wrote it, head then archive.
/// let limits = Limits::default();
/// // Queued on its head alone ...
/// let head = read_request_head(&chunk, &limits)?;
/// // ... and validated whole when it runs.
/// let req = access_request_body(&chunk, &head, &limits)?;
/// assert_eq!(req.model, "echo");
/// // A client that rewrote the head in between is caught.
/// let rewritten = RequestHead { id: head.id + 1, ..head };
/// assert!(access_request_body(&chunk, &rewritten, &limits).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn access_request_body<'a>(
    bytes: &'a [u8],
    head: &RequestHead,
    limits: &Limits,
) -> Result<&'a ArchivedRequest, Refusal> {
    let Some(archive) = bytes.get(REQUEST_HEAD..) else {
        return Err(Refusal::invalid(format!(
            "a request needs at least {REQUEST_HEAD} bytes, got {}",
            bytes.len()
        )));
    };
    let req = access_request(archive)?;
    check_request(req, limits)?;
    if req.params.priority != head.priority
        || req.params.timeout_ms.to_native() != head.timeout_ms
        || req.id.to_native() != head.id
    {
        return Err(Refusal::invalid(
            "the request head disagrees with the archived request",
        ));
    }
    Ok(req)
}
