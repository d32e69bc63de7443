//! What the server's threads share: the service segment, the pool, the flags that stop them, and
//! one [`ModelLane`] per model with its backend (and its restarts), cancel set and transfer queue.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use shm_ring::pool::{OwnerId, Pool};

use super::recovery::{LaneBackend, Loaded};
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
    pub(crate) fn new(config: &ModelConfig, loaded: Loaded, workers: usize) -> ModelLane {
        ModelLane {
            name: config.name.clone(),
            tasks: loaded.tasks,
            backend: LaneBackend::new(config, loaded),
            cancels: CancelSet::default(),
            loads: (0..workers).map(|_| AtomicU32::new(0)).collect(),
            transfers: TransferQueue::default(),
        }
    }
}

/// The requests of a lane that clients asked to cancel and that no worker has finished yet.
///
/// A cancel arrives on the request ring like a request, so any worker of the lane may take it in;
/// the worker running the request looks here between steps.
#[derive(Default)]
pub(crate) struct CancelSet {
    set: Mutex<HashSet<ReplyTo>>,
    /// SYNC(cancels): the set's size, stored under its mutex and read without it so that a worker
    /// takes no lock while nothing is cancelled (a stale zero delays a cancel by one check).
    pending: AtomicUsize,
}

impl CancelSet {
    /// Records a cancel, unless the set already holds `cap` (a flood of cancels for requests that
    /// do not exist is then ignored: a real request's cancel can be sent again).
    pub(crate) fn insert(&self, reply: ReplyTo, cap: usize) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() < cap {
            set.insert(reply);
        }
        self.pending.store(set.len(), Ordering::Release);
    }

    pub(crate) fn contains(&self, reply: ReplyTo) -> bool {
        if self.pending.load(Ordering::Acquire) == 0 {
            return false;
        }
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&reply)
    }

    /// Forgets the cancel of a request that got its final answer (or was dropped).
    pub(crate) fn remove(&self, reply: ReplyTo) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&reply);
        self.pending.store(set.len(), Ordering::Release);
    }

    /// Forgets every cancel of client slot `slot` (its holder died).
    pub(crate) fn remove_slot(&self, slot: usize) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        set.retain(|r| usize::from(r.slot) != slot);
        self.pending.store(set.len(), Ordering::Release);
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
