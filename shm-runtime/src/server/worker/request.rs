//! Validating a queued request just before it runs: the archive (bytecheck), the semantic limits,
//! that it agrees with the head it was queued by, and that the lane's model does its task.
//!
//! By default the request is first copied out of its shared chunk into worker-private memory
//! ([`Pool::copy_chunk`](shm_ring::pool::Pool::copy_chunk): word by word, with atomic loads, so
//! the copy is defined even while the client writes the chunk), and the validation and the
//! backend read only the copy: a client that rewrites its request after submitting it changes
//! nothing the server checked. With `trusted_clients` the request is read in place.

use shm_ring::pool::{ChunkError, ChunkId};

use crate::protocol::{access_request_body, ArchivedRequest, ErrorCode, Refusal, RequestHead};
use crate::scheduler::Job;
use crate::server::state::{ModelLane, ServerState};

/// A worker's private copies of requests, one per request of a batch, kept between jobs: a copy
/// costs neither an allocation nor a zero-fill once its buffer has held a request that large.
/// (`u128` words: archives are read from 16-byte aligned memory.)
pub(super) type Copies = Vec<Vec<u128>>;

/// The bytes of the archived request in server-owned chunk `id`: copied into `copy` (the
/// default), or in place (`trusted_clients`).
fn request_bytes<'a>(
    state: &'a ServerState,
    id: ChunkId,
    len: u32,
    copy: &'a mut Vec<u128>,
) -> Result<&'a [u8], Refusal> {
    let len = len as usize;
    let unavailable = |e: ChunkError| match e {
        ChunkError::TooLong { size, .. } => Refusal::invalid(format!(
            "descriptor length {len} exceeds the chunk's {size} bytes"
        )),
        e => Refusal::invalid(format!("request chunk unavailable: {e}")),
    };
    if state.config.trusted_clients {
        let bytes = state
            .pool
            .chunk_slice(id, state.owner)
            .map_err(unavailable)?;
        return bytes.get(..len).ok_or_else(|| {
            unavailable(ChunkError::TooLong {
                wanted: len,
                size: bytes.len(),
            })
        });
    }
    let units = len.div_ceil(16);
    if copy.len() < units {
        copy.resize(units, 0);
    }
    let words: &mut [u64] = bytemuck::cast_slice_mut(&mut copy[..units]);
    state
        .pool
        .copy_chunk(id, state.owner, &mut words[..len.div_ceil(8)])
        .map_err(unavailable)?;
    let bytes: &[u8] = bytemuck::cast_slice(&copy[..units]);
    Ok(&bytes[..len])
}

/// Validates `job`'s request for `lane` (see the module docs); `copy` receives the request
/// unless clients are trusted.
pub(super) fn validate<'b>(
    state: &'b ServerState,
    lane: &ModelLane,
    job: &Job,
    copy: &'b mut Vec<u128>,
) -> Result<&'b ArchivedRequest, Refusal> {
    let bytes = request_bytes(state, job.chunk, job.len, copy)?;
    // The head was read and checked when the job was queued; the archive must agree with it.
    let head = RequestHead {
        priority: job.priority,
        timeout_ms: job.timeout_ms,
        id: job.request_id,
    };
    let req = access_request_body(bytes, &head, &state.config.limits)?;
    if req.model.as_str() != lane.name {
        return Err(Refusal::new(
            ErrorCode::ModelNotFound,
            format!(
                "request for model {:?} arrived on lane {:?}",
                req.model.as_str(),
                lane.name
            ),
        ));
    }
    if lane.tasks & (1 << (req.task.to_native() as u32)) == 0 {
        return Err(Refusal::new(
            ErrorCode::ModelNotFound,
            format!(
                "model {:?} does not do task {}",
                lane.name,
                req.task.to_native()
            ),
        ));
    }
    Ok(req)
}
