//! The books of a lane: every counter move of a job's life in one place (see the diagram in the
//! module docs of `worker`).
//!
//! - `accepted` moves when a job enters a worker's queue ([`Desk::count_accepted`]);
//! - `started` when it leaves the queue: to run ([`Desk::begin`]), or without running (dropped
//!   because its client left, or answered at exit: [`Desk::leave_unrun`]);
//! - `completed` when it is answered or dropped after it started ([`Desk::end`],
//!   [`Desk::drop_started`], and the early answers of [`Desk::begin`]), or with `started` when it
//!   leaves without running.
//!
//! Every job that leaves also gives back its request chunk and its client's in-flight count
//! ([`Desk::release_request`]) and forgets its cancel, if any.

use std::sync::atomic::Ordering;

use shm_ring::pool::ChunkId;

use super::Desk;
use crate::backend::writer::Out;
use crate::protocol::{DescriptorKind, ErrorCode, Refusal};
use crate::scheduler::{now_ns, Job, ReplyTo};

impl Desk<'_> {
    /// Counts a job that entered this worker's queue.
    pub(super) fn count_accepted(&self) {
        // SYNC(accepted): Release, so `queued()` (Acquire) in `stop` never sees a started job
        // without its acceptance.
        self.counters.accepted.fetch_add(1, Ordering::Release);
    }

    /// Counts a job as started and answers it without running when its client died, the server is
    /// past its drain, it was cancelled or its deadline passed. Returns whether to run it.
    pub(super) fn begin(&mut self, job: &mut Job) -> bool {
        self.counters.started.fetch_add(1, Ordering::AcqRel);
        job.started_ns = self.now;
        let reply = job.reply;
        if !self.client_alive(reply) || self.clients.get(reply.slot()).is_none() {
            // The client died: drop its work silently (nobody to answer).
            self.drop_started(job);
            return false;
        }
        // SYNC(drain_expired): pairs with the Release store in `Server::stop`.
        let early = if self.state.drain_expired.load(Ordering::Acquire) {
            Some((ErrorCode::ShuttingDown, "the server is shutting down"))
        } else if self.lane.cancels.contains(reply, job.chunk) {
            Some((ErrorCode::Cancelled, "cancelled before it ran"))
        } else if self.now >= job.deadline_ns {
            Some((ErrorCode::TimedOut, "the deadline passed while queued"))
        } else {
            None
        };
        if let Some((code, message)) = early {
            self.lane.cancels.remove(reply, job.chunk);
            self.release_request(reply, job.chunk);
            self.answer_error(reply, job.request_id, Refusal::new(code, message));
            self.counters.completed.fetch_add(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// After a run: counters, the final answer (`out`'s, or the refusal), then the latency
    /// histograms (after the answer left, so that the round trip does not wait for them).
    pub(super) fn end(&mut self, job: &Job, result: Result<(), Refusal>, mut out: Out<'_>) {
        let state = self.state;
        let reply = job.reply;
        self.counters.completed.fetch_add(1, Ordering::AcqRel);
        self.lane.cancels.remove(reply, job.chunk);
        self.release_request(reply, job.chunk);
        self.now = now_ns();
        let generated = out.take_generated();
        let result = result.and_then(|()| {
            out.take_loan().ok_or_else(|| {
                Refusal::new(ErrorCode::Backend, "the backend finished without an answer")
            })
        });
        drop(out);
        let answered = match result {
            Ok((loan, len)) => {
                let given = self.give_to_client(reply, DescriptorKind::Final, loan, len);
                if given.is_ok() {
                    state.svc.stats().ok.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            Err(refusal) => {
                self.answer_error(reply, job.request_id, refusal);
                false
            }
        };
        // The bookkeeping, once the answer is on its way.
        let latency = (self.now.saturating_sub(job.accepted_ns) / 1000).max(1);
        let bucket = (63 - latency.leading_zeros()).min(31) as usize;
        state.svc.stats().latency_us_log2[bucket].fetch_add(1, Ordering::Relaxed);
        self.metrics
            .record_request(job.accepted_ns, job.started_ns, self.now);
        if let (true, Some((usage, finish))) = (answered, generated) {
            self.metrics.record_generation(&usage, finish);
        }
    }

    /// Drops a started job of a client that has gone: its chunk goes back, nobody is answered.
    pub(super) fn drop_started(&self, job: &Job) {
        let state = self.state;
        self.lane.cancels.remove(job.reply, job.chunk);
        let _ = state.pool.release(job.chunk, state.owner);
        self.counters.completed.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops a queued job of a departed client: its chunk goes back, nobody is answered.
    pub(super) fn drop_queued(&self, job: &Job) {
        self.leave_unrun();
        let _ = self.state.pool.release(job.chunk, self.state.owner);
    }

    /// Drops the queued jobs of client slot `slot` (its holder left).
    pub(super) fn drop_pending(&mut self, slot: usize) {
        for job in self.queue.drain_client(slot) {
            self.drop_queued(&job);
        }
    }

    /// Counts a queued job that leaves without running (dropped, or answered at exit).
    fn leave_unrun(&self) {
        self.counters.started.fetch_add(1, Ordering::AcqRel);
        self.counters.completed.fetch_add(1, Ordering::AcqRel);
    }

    /// Releases a request chunk and the client's in-flight count (if the client is the same).
    pub(super) fn release_request(&self, reply: ReplyTo, chunk: ChunkId) {
        let state = self.state;
        let _ = state.pool.release(chunk, state.owner);
        let entry = state.svc.client(reply.slot());
        if entry.epoch.load(Ordering::Acquire) == reply.epoch {
            let _ = entry
                .inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        }
    }

    /// At exit: answers everything still queued with `code`, then gives waiting answers up to
    /// 100 ms to leave.
    pub(super) fn answer_all_queued(&mut self, code: ErrorCode) {
        for job in self.queue.drain_all() {
            self.leave_unrun();
            self.release_request(job.reply, job.chunk);
            if self.client_alive(job.reply) {
                self.answer_error(
                    job.reply,
                    job.request_id,
                    Refusal::new(code, "the server stopped"),
                );
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
        while !self.outbox.is_empty() && std::time::Instant::now() < deadline {
            self.flush_backlog();
            std::thread::yield_now();
        }
    }
}
