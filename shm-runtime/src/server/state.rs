//! What the server's threads share: the service segment, the pool, the flags that stop them, and
//! one [`ModelLane`] per model with its backend (and its restarts), cancel set and transfer queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use shm_ring::pool::{ChunkId, OwnerId, Pool};

use super::recovery::{LaneBackend, Loaded};
use crate::backend::CustomBackends;
use crate::config::{ModelConfig, ServerConfig};
use crate::scheduler::{Job, ReplyTo};
use crate::service::Service;

/// Everything the workers and the housekeeper share.
pub(crate) struct ServerState {
    pub(crate) svc: Service,
    pub(crate) pool: Pool,
    /// The server's own pool owner: it holds request chunks while they are validated and run,
    /// and answer chunks until they are given to their client.
    pub(crate) owner: OwnerId,
    pub(crate) lanes: Vec<ModelLane>,
    pub(crate) config: ServerConfig,
    /// Set when draining starts; requests arriving later are answered `ShuttingDown`.
    pub(crate) draining: AtomicBool,
    /// Set by `stop` when the grace period has passed: queued and running work is answered
    /// `ShuttingDown` (a flag, so workers read no clock for it).
    pub(crate) drain_expired: AtomicBool,
    /// Workers and housekeeper exit.
    pub(crate) exit: AtomicBool,
    pub(crate) workers_running: AtomicU32,
}

impl ServerState {
    /// Rings every lane's doorbell, so that parked workers look at the flags.
    pub(crate) fn wake_workers(&self) {
        for l in 0..self.lanes.len() {
            self.svc.lane(l).doorbell.notify();
        }
    }
}

/// One model and what its workers share.
pub(crate) struct ModelLane {
    pub(crate) name: String,
    /// The backend instance the lane's workers run on, replaced after a panic.
    pub(crate) backend: LaneBackend,
    /// The tasks the model does (`backend::task_mask`), as the model table publishes them.
    pub(crate) tasks: u32,
    pub(crate) cancels: CancelSet,
    /// Per worker of the lane: its sequences, running and queued (published by lanes whose
    /// workers each decode step by step, so that new requests go to the least loaded one).
    /// SYNC(loads): Relaxed; advisory counts that steer choices, nothing is published through them.
    pub(crate) loads: Box<[AtomicU32]>,
    /// Jobs a worker queued but cannot start, for a worker of the lane with a free slot.
    pub(crate) transfers: TransferQueue,
}

impl ModelLane {
    pub(crate) fn new(
        config: &ModelConfig,
        custom: &CustomBackends,
        loaded: Loaded,
        workers: usize,
    ) -> ModelLane {
        ModelLane {
            name: config.name.clone(),
            tasks: loaded.tasks,
            backend: LaneBackend::new(config, custom, loaded),
            cancels: CancelSet::default(),
            loads: (0..workers).map(|_| AtomicU32::new(0)).collect(),
            transfers: TransferQueue::default(),
        }
    }
}

/// The requests of a lane that clients asked to cancel and that no worker has finished yet.
///
/// A cancel arrives on the request ring like a request, so any worker of the lane may take it in;
/// the worker running the request looks here between steps. A cancel names its request by ticket
/// and request chunk (raw id, generation included), so a cancel that outlives its request never
/// matches a later request that reuses the ticket. Each client may have at most a fixed number
/// pending (more than its requests in flight can need); beyond that a cancel is refused.
#[derive(Default)]
pub(crate) struct CancelSet {
    inner: Mutex<Cancels>,
    /// SYNC(cancels): the set's size, stored under its mutex and read without it so that a worker
    /// takes no lock while nothing is cancelled (a stale zero delays a cancel by one check).
    pending: AtomicUsize,
}

#[derive(Default)]
struct Cancels {
    by_reply: HashMap<ReplyTo, ChunkId>,
    /// Entries per client slot (of any epoch: those of a previous holder are forgotten when a
    /// worker sees it leave, or when the slot's count reaches the limit).
    per_slot: HashMap<u16, usize>,
}

impl Cancels {
    fn forget(&mut self, reply: ReplyTo) {
        if self.by_reply.remove(&reply).is_some() {
            if let Some(n) = self.per_slot.get_mut(&reply.slot) {
                *n -= 1;
                if *n == 0 {
                    self.per_slot.remove(&reply.slot);
                }
            }
        }
    }
}

/// A cancel the set did not record: its client has `limit` pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CancelRefused {
    pub(crate) limit: usize,
}

impl CancelSet {
    /// Records the cancel of the request `reply` whose chunk is `chunk`. When the client already
    /// has `per_client` cancels pending, first forgets those whose request has ended (`live`
    /// says whether a request chunk is still held by the client or the server: a request holds
    /// its chunk until its final answer); if that frees no room, refuses.
    pub(crate) fn insert(
        &self,
        reply: ReplyTo,
        chunk: ChunkId,
        per_client: usize,
        live: impl Fn(ChunkId) -> bool,
    ) -> Result<(), CancelRefused> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let result = if c.by_reply.contains_key(&reply) {
            c.by_reply.insert(reply, chunk);
            Ok(())
        } else {
            if c.per_slot.get(&reply.slot).copied().unwrap_or(0) >= per_client {
                let ended: Vec<ReplyTo> = c
                    .by_reply
                    .iter()
                    .filter(|(r, &id)| {
                        r.slot == reply.slot && (r.epoch != reply.epoch || !live(id))
                    })
                    .map(|(&r, _)| r)
                    .collect();
                ended.into_iter().for_each(|r| c.forget(r));
            }
            let n = c.per_slot.entry(reply.slot).or_insert(0);
            if *n >= per_client {
                Err(CancelRefused { limit: per_client })
            } else {
                *n += 1;
                c.by_reply.insert(reply, chunk);
                Ok(())
            }
        };
        self.pending.store(c.by_reply.len(), Ordering::Release);
        result
    }

    /// Whether the request `reply` with chunk `chunk` was cancelled.
    pub(crate) fn contains(&self, reply: ReplyTo, chunk: ChunkId) -> bool {
        if self.pending.load(Ordering::Acquire) == 0 {
            return false;
        }
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.by_reply.get(&reply) == Some(&chunk)
    }

    /// Forgets the cancel of a request that got its final answer (or was dropped).
    pub(crate) fn remove(&self, reply: ReplyTo, chunk: ChunkId) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.by_reply.get(&reply) == Some(&chunk) {
            c.forget(reply);
        }
        self.pending.store(c.by_reply.len(), Ordering::Release);
    }

    /// Forgets the cancels of client slot `slot` but those of the connection of epoch `keep`
    /// (its holder left, or a new one took it).
    pub(crate) fn remove_slot(&self, slot: usize, keep: Option<u32>) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<ReplyTo> = c
            .by_reply
            .keys()
            .filter(|r| r.slot() == slot && Some(r.epoch) != keep)
            .copied()
            .collect();
        gone.into_iter().for_each(|r| c.forget(r));
        self.pending.store(c.by_reply.len(), Ordering::Release);
    }

    /// Cancels pending (for tests and status).
    pub(crate) fn len(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// Jobs moving between the workers of a lane that decode step by step (see
/// `worker::balancing`).
#[derive(Default)]
pub(crate) struct TransferQueue {
    jobs: Mutex<VecDeque<Job>>,
    /// SYNC(transfers): the queue's length, stored under its mutex and read without it as a hint
    /// (a stale read only delays a take by one round); the jobs move under the mutex.
    len: AtomicUsize,
}

impl TransferQueue {
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn push(&self, job: Job) {
        let mut q = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(job);
        self.len.store(q.len(), Ordering::Release);
    }

    /// Takes up to `n` jobs, oldest first.
    pub(crate) fn take(&self, n: usize) -> Vec<Job> {
        let mut q = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let jobs = (0..n).map_while(|_| q.pop_front()).collect();
        self.len.store(q.len(), Ordering::Release);
        jobs
    }
}
