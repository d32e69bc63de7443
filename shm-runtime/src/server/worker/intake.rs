//! Intake: taking descriptors from the clients' request rings of this lane, taking each request's
//! chunk from its client, checking the request head, and queueing the job. The archive itself is
//! validated once, when the job runs (`request.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use shm_ring::pool::{ChunkId, OwnerId};
use shm_ring::PopError;

use super::outbox::BACKLOG_PER_CLIENT;
use super::Desk;
use crate::protocol::{
    read_request_head, ticket_of_epoch, Descriptor, DescriptorKind, DescriptorWords, ErrorCode,
    InlineReason, Refusal, RequestHead, REQUEST_HEAD,
};
use crate::scheduler::{Job, ReplyTo};
use crate::service::EjectReason;

/// How many descriptors a worker takes from one client's ring per round.
const PER_CLIENT_ROUND: usize = 16;

impl Desk<'_> {
    /// Takes up to PER_CLIENT_ROUND descriptors from each client (only `only` when given),
    /// round-robin, and at most `limit` in all. Returns how many it took.
    pub(super) fn ingest(&mut self, only: Option<usize>, limit: usize) -> usize {
        let n = self.clients.attached.len();
        if n == 0 {
            return 0;
        }
        let mut took = 0;
        let start = self.next_client % n;
        self.next_client = self.next_client.wrapping_add(1);
        for k in 0..n {
            // A re-read of the client table below may shorten the list.
            let Some(&slot) = self.clients.attached.get((start + k) % n) else {
                break;
            };
            if only.is_some_and(|o| o != slot)
                || self.outbox.waiting_for(slot) >= BACKLOG_PER_CLIENT
            {
                continue;
            }
            for from_slot in 0..PER_CLIENT_ROUND {
                if took >= limit {
                    return took;
                }
                let Some(h) = self.clients.get(slot) else {
                    break;
                };
                let d = match h.requests.pop() {
                    Ok(d) => d,
                    Err(PopError::Corrupted) => {
                        self.eject(slot, EjectReason::CorruptRequestRing);
                        break;
                    }
                    Err(_) => {
                        self.note_intake(slot, from_slot);
                        break;
                    }
                };
                took += 1;
                if !ticket_of_epoch(Descriptor::ticket_of(d), h.epoch)
                    && !self.current_holder_sent(slot, d)
                {
                    // Left in the ring by a previous holder of the slot (its chunks went back
                    // with it), or garbage: nobody to answer.
                    continue;
                }
                self.accept(slot, d);
            }
        }
        took
    }

    /// For a descriptor whose ticket is not of this worker's connection to `slot`: whether it
    /// comes from the slot's current holder, after re-reading the client table. (A worker that is
    /// running a job ingests without looking at the table: the slot may have changed hands
    /// meanwhile, and the new holder's requests must be taken with the new holder's epoch and
    /// owner, never the departed one's.)
    fn current_holder_sent(&mut self, slot: usize, d: DescriptorWords) -> bool {
        self.clients.mark_stale();
        self.sync_clients();
        self.clients
            .get(slot)
            .is_some_and(|h| ticket_of_epoch(Descriptor::ticket_of(d), h.epoch))
    }

    /// Takes one descriptor of `slot`'s current connection: a cancel, or a request to queue.
    fn accept(&mut self, slot: usize, d: DescriptorWords) {
        let state = self.state;
        let Some(h) = self.clients.get(slot) else {
            return;
        };
        let (epoch, client_owner) = (h.epoch, h.owner);
        let Some(Descriptor {
            kind,
            chunk,
            len,
            ticket,
        }) = Descriptor::from_words(d)
        else {
            let reply = ReplyTo {
                slot: slot as u16,
                epoch,
                ticket: Descriptor::ticket_of(d),
            };
            self.answer_inline(
                reply,
                ErrorCode::InvalidRequest,
                InlineReason::BadDescriptor,
            );
            return;
        };
        let reply = ReplyTo {
            slot: slot as u16,
            epoch,
            ticket,
        };
        match kind {
            DescriptorKind::Cancel => {
                self.record_cancel(reply, ChunkId::from_raw(chunk), client_owner);
                return;
            }
            DescriptorKind::Ping => {
                self.pong(reply);
                return;
            }
            DescriptorKind::Request => {}
            _ => {
                self.answer_inline(
                    reply,
                    ErrorCode::InvalidRequest,
                    InlineReason::BadDescriptor,
                );
                return;
            }
        }
        self.clients.last_request[slot] = self.now;
        let entry = state.svc.client(slot);
        // Take the chunk: refused if the client does not hold it (stale, forged, double use).
        let loan = match state
            .pool
            .adopt(ChunkId::from_raw(chunk), client_owner, state.owner)
        {
            Ok(l) => l,
            Err(err) => {
                tracing::debug!(client = slot, %err, "descriptor names a chunk the client does not hold");
                self.answer_inline(reply, ErrorCode::InvalidRequest, InlineReason::ChunkNotHeld);
                return;
            }
        };
        entry.requests.fetch_add(1, Ordering::Relaxed);
        state.svc.stats().requests.fetch_add(1, Ordering::Relaxed);
        let id = loan.into_id();
        // SYNC(draining): pairs with the Release store in `Server::stop`.
        if state.draining.load(Ordering::Acquire) {
            let _ = state.pool.release(id, state.owner);
            self.answer_inline(reply, ErrorCode::ShuttingDown, InlineReason::Draining);
            return;
        }
        let inflight = entry.inflight.fetch_add(1, Ordering::AcqRel);
        if inflight >= state.config.max_inflight {
            entry.inflight.fetch_sub(1, Ordering::AcqRel);
            let _ = state.pool.release(id, state.owner);
            let limit = state.config.max_inflight;
            self.answer_error(
                reply,
                0,
                Refusal::new(
                    ErrorCode::Busy,
                    format!("{inflight} requests in flight; the limit is {limit}"),
                ),
            );
            return;
        }
        let head = match self.read_head(id, len) {
            Ok(h) => h,
            Err(refusal) => {
                self.release_request(reply, id);
                self.answer_error(reply, 0, refusal);
                return;
            }
        };
        let timeout = if head.timeout_ms == 0 {
            state.config.default_timeout
        } else {
            Duration::from_millis(u64::from(head.timeout_ms))
        };
        let job = Job {
            reply,
            chunk: id,
            len,
            request_id: head.id,
            priority: head.priority,
            timeout_ms: head.timeout_ms,
            deadline_ns: self.now + timeout.as_nanos() as u64,
            accepted_ns: self.now,
            started_ns: 0,
        };
        if let Err(job) = self.queue.push(job) {
            self.release_request(reply, job.chunk);
            self.answer_error(
                reply,
                head.id,
                Refusal::new(
                    ErrorCode::Busy,
                    format!("client slot {slot} is beyond this worker's scheduler"),
                ),
            );
            return;
        }
        self.count_accepted();
    }

    /// Records the cancel of `reply`'s request, whose chunk is `chunk`, unless that request has
    /// ended (its chunk is neither the client's, on its way here, nor the server's: a request
    /// holds its chunk until its final answer). A client may have as many cancels pending as it
    /// can have requests accepted or on their way on this lane; beyond that the cancel is refused
    /// with a [`DescriptorKind::CancelRefused`] notice.
    fn record_cancel(&mut self, reply: ReplyTo, chunk: ChunkId, client_owner: OwnerId) {
        let state = self.state;
        let held_by = |id, owner| state.pool.chunk_slice(id, owner).is_ok();
        // The client's first: a chunk moves from client to server only, so a request on its way
        // is seen by one check or the other.
        let live = |id| held_by(id, client_owner) || held_by(id, state.owner);
        if !live(chunk) {
            tracing::debug!(client = reply.slot, "cancel of a request that has ended");
            return;
        }
        let per_client = state.config.max_inflight as usize + state.config.ring_capacity;
        if let Err(refused) = self.lane.cancels.insert(reply, chunk, per_client, live) {
            tracing::debug!(client = reply.slot, limit = refused.limit, "cancel refused");
            self.refuse_cancel(reply);
        }
    }

    /// Reads the plain head of the request in server-owned chunk `id` (`len` bytes): only the
    /// head now; the archive is validated once, when the job runs. The head is copied out of the
    /// chunk with atomic loads (the client may be writing it) and checked as plain integers.
    fn read_head(&self, id: ChunkId, len: u32) -> Result<RequestHead, Refusal> {
        let state = self.state;
        let unavailable = |e| Refusal::invalid(format!("request chunk unavailable: {e}"));
        let size = state
            .pool
            .chunk_slice(id, state.owner)
            .map_err(unavailable)?
            .len();
        let len = len as usize;
        if len > size {
            return Err(Refusal::invalid(format!(
                "descriptor length {len} exceeds the chunk's {size} bytes"
            )));
        }
        let mut words = [0u64; REQUEST_HEAD / 8];
        state
            .pool
            .copy_chunk(id, state.owner, &mut words)
            .map_err(unavailable)?;
        let head: [u8; REQUEST_HEAD] = bytemuck::cast(words);
        read_request_head(&head[..len.min(REQUEST_HEAD)], &state.config.limits)
    }
}
