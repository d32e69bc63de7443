//! Dynamic batching: a backend that runs several requests in one call ([`Backend::run_batch`])
//! gets the queued jobs of its lane together, waiting a little for more while other clients are
//! sending.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use super::request::validate;
use super::{refusal, Desk};
use crate::backend::writer::Out;
use crate::backend::{Backend, Batching};
use crate::protocol::{ErrorCode, Refusal};
use crate::scheduler::{now_ns, Job};
use crate::server::recovery::contain;

/// A partial batch stops waiting after this long without a new request (nanoseconds).
const IDLE_GAP: u64 = 100_000;

/// Another client counts as sending if it sent this lane a request this recently (nanoseconds).
const RECENT: u64 = 100_000_000;

impl Desk<'_> {
    /// Runs `first` with up to `b.max_batch - 1` more queued jobs of this lane in one call of
    /// `backend` (the lane's instance of generation `generation`), waiting up to `b.max_delay` for
    /// more while other clients of the lane are active. A panic of the call is the answer of
    /// every request in the batch, and restarts the lane's backend once the answers are out.
    pub(super) fn run_batched(
        &mut self,
        first: Job,
        backend: &dyn Backend,
        generation: u64,
        b: Batching,
    ) {
        let mut jobs = vec![first];
        self.gather(&mut jobs, b);
        jobs.retain_mut(|j| self.begin(j));
        if jobs.is_empty() {
            return;
        }
        let state = self.state;
        let lane = self.lane;
        let mut copies = std::mem::take(&mut self.copies);
        if copies.len() < jobs.len() {
            copies.resize_with(jobs.len(), Vec::new);
        }
        let mut results: Vec<Option<Result<(), Refusal>>> = jobs.iter().map(|_| None).collect();
        let mut reqs = Vec::with_capacity(jobs.len());
        let mut members = Vec::with_capacity(jobs.len());
        for ((i, job), copy) in jobs.iter().enumerate().zip(copies.iter_mut()) {
            match validate(state, lane, job, copy) {
                Ok(r) => {
                    reqs.push(r);
                    members.push(i);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let counters = self.counters;
        let mut restart = None;
        let mut outs: Vec<Out<'_>> = members
            .iter()
            .map(|&i| Out::in_pool(&state.pool, state.owner, jobs[i].request_id))
            .collect();
        if !reqs.is_empty() {
            if reqs.len() > 1 {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .batched
                    .fetch_add(reqs.len() as u64, Ordering::Relaxed);
            }
            // AssertUnwindSafe: after a panic no new work goes to the instance (the lane replaces
            // it) and the answers written so far are dropped unread (their chunks go back to the
            // pool); the requests are the worker's private copies, read only.
            match contain(AssertUnwindSafe(|| backend.run_batch(&reqs, &mut outs))) {
                Ok(ran) => {
                    for (k, &i) in members.iter().enumerate() {
                        results[i] = Some(match ran.get(k) {
                            Some(Ok(())) => Ok(()),
                            Some(Err(e)) => Err(refusal(e)),
                            None => {
                                Err(Refusal::new(ErrorCode::Backend, "the batch lost a result"))
                            }
                        });
                    }
                }
                Err(p) => {
                    restart = lane.backend.panicked(generation, &p, counters);
                    for &i in &members {
                        results[i] = Some(Err(p.refusal()));
                    }
                }
            }
        }
        drop(reqs);
        let mut outs = outs.into_iter();
        for (i, job) in jobs.iter().enumerate() {
            let result = results[i]
                .take()
                .unwrap_or_else(|| Err(Refusal::new(ErrorCode::Backend, "no result")));
            let out = if members.contains(&i) {
                outs.next()
            } else {
                None
            };
            let out = out.unwrap_or_else(|| Out::in_pool(&state.pool, state.owner, job.request_id));
            self.end(job, result, out);
        }
        self.copies = copies;
        // The answers first, then the new instance.
        if let Some(restart) = restart {
            restart.finish();
        }
    }

    /// Adds queued jobs to `jobs` up to the batch size. A partial batch waits for more, up to the
    /// batch delay, only while another client sent this lane a request in the last 100 ms (so a
    /// lone client never waits) and requests keep arriving (it stops after 100 us without one).
    fn gather(&mut self, jobs: &mut Vec<Job>, b: Batching) {
        let until = self.now + b.max_delay.as_nanos() as u64;
        let mut last_arrival = self.now;
        loop {
            let before = jobs.len();
            while jobs.len() < b.max_batch {
                match self.queue.pop() {
                    Some(j) => jobs.push(j),
                    None => break,
                }
            }
            if jobs.len() >= b.max_batch || self.state.exit.load(Ordering::Relaxed) {
                return;
            }
            if jobs.len() > before {
                last_arrival = self.now;
            }
            let recent = self.now.saturating_sub(RECENT);
            let others = self.clients.attached.iter().any(|&slot| {
                self.clients.last_request[slot] >= recent
                    && !jobs.iter().any(|j| j.reply.slot() == slot)
            });
            if !others || self.now >= until || self.now - last_arrival > IDLE_GAP {
                return;
            }
            if self.ingest(None, usize::MAX) == 0 {
                std::hint::spin_loop();
            }
            self.now = now_ns();
        }
    }
}
