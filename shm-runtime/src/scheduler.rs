//! The lock-free scheduler of a lane: one bounded lock-free queue per priority level (crossbeam's
//! `ArrayQueue`, a Vyukov array queue), FIFO within a level, the most urgent level served first.
//!
//! Fairness between clients comes from how requests enter: workers take at most a few requests
//! from each client's ring per round, round-robin, so one client's burst cannot push the others
//! back by more than a round.

use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use shm_ring::pool::ChunkId;

use crate::protocol::PRIORITY_LEVELS;

/// A request accepted into a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Client slot.
    pub client: u16,
    /// The client slot's epoch when the request was accepted.
    pub epoch: u32,
    /// The client's ticket.
    pub ticket: u32,
    /// The request chunk, now owned by the server.
    pub chunk: ChunkId,
    /// Bytes of the archive in the chunk.
    pub len: u32,
    /// The request's id (echoed in every answer).
    pub request_id: u64,
    /// 0 (most urgent) ..= 3.
    pub priority: u8,
    /// When it must be answered by, nanoseconds on the [`now_ns`] clock.
    pub deadline_ns: u64,
    /// When it was accepted, nanoseconds on the [`now_ns`] clock.
    pub accepted_ns: u64,
}

impl Job {
    /// The deadline as an `Instant`.
    pub fn deadline(&self) -> Instant {
        epoch() + std::time::Duration::from_nanos(self.deadline_ns)
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since this process's scheduler clock started (monotonic). Jobs carry times in this
/// form: 8 bytes instead of an `Instant`'s 16 keeps a queued job small.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Priority queues of one lane.
#[derive(Debug)]
pub struct Scheduler {
    levels: [ArrayQueue<Job>; PRIORITY_LEVELS],
}

impl Scheduler {
    /// A scheduler holding up to `capacity` jobs per level.
    pub fn new(capacity: usize) -> Scheduler {
        Scheduler {
            levels: std::array::from_fn(|_| ArrayQueue::new(capacity.max(1))),
        }
    }

    /// Queues a job at its priority (clamped to the last level).
    ///
    /// # Errors
    ///
    /// Gives the job back when its level is full.
    #[inline]
    pub fn push(&self, job: Job) -> Result<(), Job> {
        let level = usize::from(job.priority).min(PRIORITY_LEVELS - 1);
        self.levels[level].push(job)
    }

    /// The oldest job of the most urgent non-empty level.
    #[inline]
    pub fn pop(&self) -> Option<Job> {
        // `is_empty` is two plain loads; a `pop` on an empty ArrayQueue costs a SeqCst fence, so
        // skip empty levels first. A job pushed meanwhile is found on the next call.
        self.levels
            .iter()
            .find_map(|q| if q.is_empty() { None } else { q.pop() })
    }

    /// Jobs queued now.
    pub fn len(&self) -> usize {
        self.levels.iter().map(ArrayQueue::len).sum()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(ArrayQueue::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ticket: u32, priority: u8) -> Job {
        let now = now_ns();
        Job {
            client: 0,
            epoch: 1,
            ticket,
            chunk: ChunkId::from_raw(0),
            len: 0,
            request_id: 0,
            priority,
            deadline_ns: now,
            accepted_ns: now,
        }
    }

    #[test]
    fn most_urgent_first_fifo_within_a_level() {
        let s = Scheduler::new(16);
        for (t, p) in [(1, 3), (2, 1), (3, 0), (4, 1), (5, 3), (6, 0)] {
            s.push(job(t, p)).unwrap();
        }
        let order: Vec<u32> = std::iter::from_fn(|| s.pop()).map(|j| j.ticket).collect();
        assert_eq!(order, vec![3, 6, 2, 4, 1, 5]);
    }

    #[test]
    fn a_full_level_gives_the_job_back() {
        let s = Scheduler::new(2);
        s.push(job(1, 2)).unwrap();
        s.push(job(2, 2)).unwrap();
        assert_eq!(s.push(job(3, 2)).unwrap_err().ticket, 3);
        s.push(job(4, 0)).unwrap();
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn threads_lose_nothing() {
        let s = std::sync::Arc::new(Scheduler::new(1024));
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        let mut j = job(p * 100_000 + i, (i % 4) as u8);
                        while let Err(back) = s.push(j) {
                            j = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 20_000 {
            if let Some(j) = s.pop() {
                assert!(seen.insert(j.ticket), "ticket {} twice", j.ticket);
            } else {
                std::thread::yield_now();
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(s.is_empty());
    }
}
