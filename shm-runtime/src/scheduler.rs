//! A lane worker's scheduler: priority levels (4, the most urgent first), and within a level
//! round-robin over clients, FIFO within a client.
//!
//! Each worker owns its scheduler (`&mut self`, no locks, no atomics: nothing to wait for). What
//! workers share are the lock-free MPMC request rings they take requests from; whichever worker
//! takes a request schedules it. So one client's burst delays another client's request at the same
//! level by at most one job per client ahead of it in the rotation, and a more urgent request is
//! always served before a less urgent one of any client.

use std::collections::VecDeque;
use std::time::Instant;

use shm_ring::pool::ChunkId;

use crate::protocol::PRIORITY_LEVELS;

/// Where the answers of a request go: a client slot, the epoch of the connection that sent it (a
/// slot's later holder never gets them), and the ticket the client knows the request by. It is
/// also the key of a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    /// Client slot.
    pub slot: u16,
    /// The client slot's epoch when the request was accepted.
    pub epoch: u32,
    /// The client's ticket.
    pub ticket: u32,
}

impl ReplyTo {
    /// The client slot as an index.
    #[inline]
    pub fn slot(&self) -> usize {
        usize::from(self.slot)
    }
}

/// A request accepted into a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Where its answers go.
    pub reply: ReplyTo,
    /// The request chunk, now owned by the server.
    pub chunk: ChunkId,
    /// Bytes of the request (head and archive) in the chunk.
    pub len: u32,
    /// The request's id (echoed in every answer).
    pub request_id: u64,
    /// 0 (most urgent) ..= 3.
    pub priority: u8,
    /// The timeout its head asked for (0: the server's default); the archive must agree.
    pub timeout_ms: u32,
    /// When it must be answered by, nanoseconds on the [`now_ns`] clock.
    pub deadline_ns: u64,
    /// When it was accepted, nanoseconds on the [`now_ns`] clock.
    pub accepted_ns: u64,
    /// When it left the queue to run (0 before), on the same clock.
    pub started_ns: u64,
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

/// Most client slots a scheduler handles (one bit each in its per-level masks).
pub const MAX_SLOTS: usize = 64;

/// Jobs by priority level and client slot.
#[derive(Debug)]
pub struct Scheduler {
    /// `queues[client][level]`.
    queues: Vec<[VecDeque<Job>; PRIORITY_LEVELS]>,
    /// Per level, bit c set: client c has jobs at that level.
    nonempty: [u64; PRIORITY_LEVELS],
    /// Per level, the client slot to look at first next time (round-robin).
    cursor: [u32; PRIORITY_LEVELS],
    total: usize,
}

impl Scheduler {
    /// A scheduler for `clients` client slots (at most [`MAX_SLOTS`]; more are clamped).
    pub fn new(clients: usize) -> Scheduler {
        Scheduler {
            queues: (0..clients.clamp(1, MAX_SLOTS))
                .map(|_| std::array::from_fn(|_| VecDeque::new()))
                .collect(),
            nonempty: [0; PRIORITY_LEVELS],
            cursor: [0; PRIORITY_LEVELS],
            total: 0,
        }
    }

    /// Queues a job at its priority (clamped to the last level).
    ///
    /// # Errors
    ///
    /// Gives the job back when its client slot is out of range.
    #[inline]
    pub fn push(&mut self, job: Job) -> Result<(), Job> {
        let level = usize::from(job.priority).min(PRIORITY_LEVELS - 1);
        let Some(q) = self.queues.get_mut(job.reply.slot()) else {
            return Err(job);
        };
        q[level].push_back(job);
        self.nonempty[level] |= 1 << job.reply.slot;
        self.total += 1;
        Ok(())
    }

    /// The next job: the most urgent level with work, the next client in rotation at that level,
    /// that client's oldest job there.
    #[inline]
    pub fn pop(&mut self) -> Option<Job> {
        if self.total == 0 {
            return None;
        }
        let level = self.nonempty.iter().position(|&m| m != 0)?;
        let mask = self.nonempty[level];
        // The first client with jobs at or after the cursor, wrapping around: rotate the mask so
        // the cursor is bit 0.
        let start = self.cursor[level];
        let c = (start + mask.rotate_right(start).trailing_zeros()) % 64;
        let q = &mut self.queues[c as usize][level];
        let job = q.pop_front()?;
        if q.is_empty() {
            self.nonempty[level] &= !(1 << c);
        }
        self.cursor[level] = (c + 1) % 64;
        self.total -= 1;
        Some(job)
    }

    /// Removes and returns every job of client slot `c`.
    pub fn drain_client(&mut self, c: usize) -> Vec<Job> {
        let Some(q) = self.queues.get_mut(c) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (level, jobs) in q.iter_mut().enumerate() {
            self.nonempty[level] &= !(1 << c);
            self.total -= jobs.len();
            out.extend(jobs.drain(..));
        }
        out
    }

    /// Removes and returns every job.
    pub fn drain_all(&mut self) -> Vec<Job> {
        let mut out = Vec::with_capacity(self.total);
        while let Some(j) = self.pop() {
            out.push(j);
        }
        out
    }

    /// Jobs queued now.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(client: u16, ticket: u32, priority: u8) -> Job {
        let now = now_ns();
        Job {
            reply: ReplyTo {
                slot: client,
                epoch: 1,
                ticket,
            },
            chunk: ChunkId::from_raw(0),
            len: 0,
            request_id: 0,
            priority,
            timeout_ms: 0,
            deadline_ns: now,
            accepted_ns: now,
            started_ns: 0,
        }
    }

    #[test]
    fn most_urgent_first_fifo_within_a_client() {
        let mut s = Scheduler::new(4);
        for (t, p) in [(1, 3), (2, 1), (3, 0), (4, 1), (5, 3), (6, 0)] {
            s.push(job(0, t, p)).unwrap();
        }
        let order: Vec<u32> = std::iter::from_fn(|| s.pop())
            .map(|j| j.reply.ticket)
            .collect();
        assert_eq!(order, vec![3, 6, 2, 4, 1, 5]);
    }

    #[test]
    fn clients_take_turns_within_a_level() {
        let mut s = Scheduler::new(4);
        for t in 0..6 {
            s.push(job(0, t, 1)).unwrap(); // a burst from client 0
        }
        s.push(job(2, 100, 1)).unwrap();
        s.push(job(3, 200, 2)).unwrap();
        let order: Vec<(u16, u32)> = std::iter::from_fn(|| s.pop())
            .map(|j| (j.reply.slot, j.reply.ticket))
            .collect();
        assert_eq!(
            order,
            vec![
                (0, 0),
                (2, 100),
                (0, 1),
                (0, 2),
                (0, 3),
                (0, 4),
                (0, 5),
                (3, 200)
            ]
        );
    }

    #[test]
    fn draining_a_client_keeps_the_counts_right() {
        let mut s = Scheduler::new(3);
        s.push(job(1, 1, 0)).unwrap();
        s.push(job(1, 2, 3)).unwrap();
        s.push(job(2, 3, 3)).unwrap();
        assert!(s.push(job(9, 4, 0)).is_err(), "slot out of range");
        assert_eq!(s.drain_client(1).len(), 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.pop().map(|j| j.reply.ticket), Some(3));
        assert!(s.pop().is_none() && s.is_empty());
    }
}
