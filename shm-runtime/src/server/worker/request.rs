//! Validating a queued request just before it runs: the archive (bytecheck), the semantic limits,
//! that it agrees with the head it was queued by, and that the lane's model does its task. In
//! hardened mode the bytes are copied into worker-private memory first, so that the client cannot
//! change them after validation.

use shm_ring::pool::ChunkId;

use crate::backend;
use crate::protocol::{access_request_body, ArchivedRequest, ErrorCode, Refusal, RequestHead};
use crate::scheduler::Job;
use crate::server::state::{ModelLane, ServerState};

/// The bytes of the archived request in server-owned chunk `id`: in place, or (hardened mode)
/// copied into `private` first.
fn request_bytes<'a>(
    state: &'a ServerState,
    id: ChunkId,
    len: u32,
    private: &'a mut Vec<u128>,
) -> Result<&'a [u8], Refusal> {
    let bytes = state
        .pool
        .chunk_slice(id, state.owner)
        .map_err(|e| Refusal::invalid(format!("request chunk unavailable: {e}")))?;
    let len = len as usize;
    if len > bytes.len() {
        return Err(Refusal::invalid(format!(
            "descriptor length {len} exceeds the chunk's {} bytes",
            bytes.len()
        )));
    }
    if !state.config.hardened {
        return Ok(&bytes[..len]);
    }
    private.clear();
    private.resize(len.div_ceil(16), 0);
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut private[..]);
    dst[..len].copy_from_slice(&bytes[..len]);
    let src: &[u8] = bytemuck::cast_slice(&private[..]);
    Ok(&src[..len])
}

/// Validates `job`'s request for `lane` (see the module docs); `private` holds the copy in
/// hardened mode.
pub(super) fn validate<'b>(
    state: &'b ServerState,
    lane: &ModelLane,
    job: &Job,
    private: &'b mut Vec<u128>,
) -> Result<&'b ArchivedRequest, Refusal> {
    let bytes = request_bytes(state, job.chunk, job.len, private)?;
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
    let mask = backend::task_mask(lane.backend.tasks());
    if mask & (1 << (req.task.to_native() as u32)) == 0 {
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
