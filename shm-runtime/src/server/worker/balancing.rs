//! Balancing between the workers of a lane that decode step by step (continuous batching): each
//! worker publishes its load (sequences running and queued), only a least loaded worker takes new
//! requests, and a worker with jobs it cannot start transfers one to a worker with a free slot.
//! Workers of other lanes run one job at a time and take what they find.

use std::sync::atomic::Ordering;

use super::Desk;

impl Desk<'_> {
    /// Sequences this worker has, running and queued.
    fn load(&self) -> usize {
        self.running + self.queue.len()
    }

    /// Publishes this worker's load for the other workers of its lane.
    pub(super) fn publish_load(&self) {
        if let Some(l) = self.lane.loads.get(self.index) {
            l.store(self.load() as u32, Ordering::Relaxed);
        }
    }

    /// How many descriptors to take from the request rings this round. A lane of several workers
    /// that decode step by step balances them: only a least loaded worker takes requests, one per
    /// round (it then counts it and looks again), so of two requests arriving together each
    /// worker takes one, and a second stream starts on an idle worker's core instead of joining
    /// a busy worker's batch. (The counts are advisory: two workers reading each other at once
    /// may both take one.)
    pub(super) fn ingest_limit(&self) -> usize {
        let loads = &self.lane.loads;
        if !self.stepping || loads.len() < 2 {
            return usize::MAX;
        }
        let mine = self.load();
        loads[self.index].store(mine as u32, Ordering::Relaxed);
        let least = loads
            .iter()
            .enumerate()
            .all(|(i, l)| i == self.index || l.load(Ordering::Relaxed) as usize >= mine);
        usize::from(least)
    }

    /// Moves queued jobs between the workers of the lane, so that no job waits in one worker's
    /// queue while another worker has a free slot (of `slots`): a worker with a free slot takes
    /// transferred jobs; a worker with jobs it cannot start yet transfers one while another worker
    /// has a free slot (one at a time, and not once draining has begun, so that a job never waits
    /// in the transfer queue for a worker that has exited).
    pub(super) fn balance(&mut self, slots: usize) {
        let lane = self.lane;
        if lane.loads.len() < 2 {
            return;
        }
        let free = slots.saturating_sub(self.running);
        if free > self.queue.len() {
            if lane.transfers.len() > 0 {
                self.take_transfers(free - self.queue.len());
            }
        } else if self.queue.len() > free
            && lane.transfers.len() == 0
            && !self.state.draining.load(Ordering::Acquire)
            && lane
                .loads
                .iter()
                .enumerate()
                .any(|(i, l)| i != self.index && (l.load(Ordering::Relaxed) as usize) < slots)
        {
            if let Some(job) = self.queue.pop() {
                lane.transfers.push(job);
                self.counters.doorbell.notify();
            }
        }
        self.publish_load();
    }

    /// Takes up to `n` transferred jobs into this worker's queue.
    ///
    /// A job comes with the epoch of the connection that sent it, read by the worker that
    /// accepted it; this worker's handles may be older (a client that connected since its last
    /// look at the client table) and would then refuse the answer as a departed client's. So the
    /// table is read again for such a job, and a job whose client has left since is dropped like
    /// any other departed client's work.
    pub(super) fn take_transfers(&mut self, n: usize) {
        for job in self.lane.transfers.take(n) {
            if self.clients.current(job.reply).is_none() {
                self.clients.mark_stale();
                self.sync_clients();
            }
            if self.clients.current(job.reply).is_none() {
                self.drop_queued(&job);
                continue;
            }
            if let Err(job) = self.queue.push(job) {
                // Only a client slot outside the table is refused, which no accepted job has.
                self.drop_queued(&job);
            }
        }
    }
}
