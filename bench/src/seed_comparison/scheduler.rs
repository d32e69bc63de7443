//! Scheduling: the seed's binary heap and this project's worker scheduler.

use std::collections::BinaryHeap;

use shm_ring::pool::ChunkId;
use shm_runtime::testing::{Job, ReplyTo, Scheduler};

/// A queued request in the seed's scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedQueued {
    /// 0 (most urgent) ..= 3.
    pub priority: u8,
    /// Arrival order (FIFO within a level).
    pub seq: u64,
    /// The request's id.
    pub request_id: u64,
}

impl Ord for SeedQueued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Max-heap: the most urgent level, then the earliest arrival, is the greatest.
        other
            .priority
            .cmp(&self.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for SeedQueued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The seed's scheduler: one binary heap over 4 priority levels, FIFO within a level.
#[derive(Debug, Default)]
pub struct SeedHeap {
    heap: BinaryHeap<SeedQueued>,
    seq: u64,
}

impl SeedHeap {
    /// An empty scheduler.
    pub fn new() -> SeedHeap {
        SeedHeap::default()
    }

    /// Queues request `id` at `priority`.
    #[inline]
    pub fn push(&mut self, id: u64, priority: u8) {
        self.seq += 1;
        self.heap.push(SeedQueued {
            priority: priority & 3,
            seq: self.seq,
            request_id: id,
        });
    }

    /// The most urgent, oldest request.
    #[inline]
    pub fn pop(&mut self) -> Option<SeedQueued> {
        self.heap.pop()
    }

    /// One enqueue + dequeue pair, the `i`-th (priority `i & 3`), as [`OurScheduler::pair`].
    #[inline]
    pub fn pair(&mut self, i: u32) -> Option<u64> {
        self.push(u64::from(i), (i & 3) as u8);
        self.pop().map(|q| q.request_id)
    }

    /// A burst: `k` requests queued (priorities `i & 3`), then all popped; returns the sum of the
    /// popped ids.
    #[inline]
    pub fn burst(&mut self, k: u32) -> u64 {
        for i in 0..k {
            self.push(u64::from(i), (i & 3) as u8);
        }
        std::iter::from_fn(|| self.pop())
            .map(|q| q.request_id)
            .sum()
    }
}

/// This project's worker scheduler with the job shape of [`runtime_work::scheduler_mops`]
/// (32 client slots, jobs of 8 clients at 4 priority levels).
///
/// [`runtime_work::scheduler_mops`]: crate::runtime_work::scheduler_mops
#[derive(Debug)]
pub struct OurScheduler {
    s: Scheduler,
    job: Job,
}

impl Default for OurScheduler {
    fn default() -> Self {
        OurScheduler::new()
    }
}

impl OurScheduler {
    /// An empty scheduler of 32 client slots.
    pub fn new() -> OurScheduler {
        let now = shm_runtime::testing::now_ns();
        OurScheduler {
            s: Scheduler::new(32),
            job: Job {
                reply: ReplyTo {
                    slot: 0,
                    epoch: 1,
                    ticket: 0,
                },
                chunk: ChunkId::from_raw(0),
                len: 0,
                request_id: 0,
                priority: 1,
                timeout_ms: 0,
                deadline_ns: now,
                accepted_ns: now,
                started_ns: 0,
            },
        }
    }

    /// One enqueue + dequeue pair, the `i`-th (client `i % 8`, priority `i & 3`).
    #[inline]
    pub fn pair(&mut self, i: u32) -> Option<u64> {
        let _ = self.s.push(Job {
            reply: ReplyTo {
                slot: (i % 8) as u16,
                epoch: 1,
                ticket: i,
            },
            request_id: u64::from(i),
            priority: (i & 3) as u8,
            ..self.job
        });
        self.s.pop().map(|j| j.request_id)
    }

    /// A burst: `k` requests queued (client `i % 8`, priority `i & 3`), then all popped; returns
    /// the sum of the popped ids.
    #[inline]
    pub fn burst(&mut self, k: u32) -> u64 {
        for i in 0..k {
            let _ = self.s.push(Job {
                reply: ReplyTo {
                    slot: (i % 8) as u16,
                    epoch: 1,
                    ticket: i,
                },
                request_id: u64::from(i),
                priority: (i & 3) as u8,
                ..self.job
            });
        }
        std::iter::from_fn(|| self.s.pop())
            .map(|j| j.request_id)
            .sum()
    }
}
