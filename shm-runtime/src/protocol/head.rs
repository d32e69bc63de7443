//! The request head: the plain bytes before the archive that the server reads to queue a request.

use super::{access_request, check_request, ArchivedRequest, Limits, Refusal};

/// Bytes before the archive in a request chunk: a plain header with what the server needs to
/// queue a request before it validates the archive (priority, timeout, id), so that the archive is
/// validated once, when the request runs. Layout: `priority: u8, 0, 0, 0, timeout_ms: u32 LE,
/// id: u64 LE`. The archive follows, 16-byte aligned.
pub const REQUEST_HEAD: usize = 16;

/// Number of priority levels; 0 is the most urgent.
pub const PRIORITY_LEVELS: usize = 4;

/// The request head as read from a chunk (untrusted: check before use).
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
