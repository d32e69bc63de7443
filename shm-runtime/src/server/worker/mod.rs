//! A lane worker: takes requests from its lane's request rings, queues them, runs them on the
//! lane's model, and sends the answers.
//!
//! The worker is two parts. Its [`Desk`] is where requests come in and answers go out: the client
//! table, the intake, the queue (a [`Scheduler`]), the books and the outbox. The execution modes
//! borrow the desk while they run a job, and a backend's [`RunContext`] gets the desk alone (it
//! takes in cancels while a job runs): nothing reaches back into the execution state. The
//! [`Worker`] adds the instance of the lane's backend it runs on and the continuous-batching
//! state of lanes that decode step by step.
//!
//! Every call into a backend is contained (`server/recovery.rs`): a panic is the `Backend` error
//! answer of every request the call held (the one request, every request of the batch, every
//! sequence of the stepper), and then the lane's backend is restarted; the desk, with its queue
//! and backlog, lives on, and [`serve`] gives it a new worker on the new instance. A worker moves
//! to a new instance as soon as it holds no request of the old one: at once when it was the one
//! that panicked, after its running sequences otherwise (none joins them meanwhile).
//!
//! | file | concern |
//! |---|---|
//! | `clients.rs` | the client table: handles to each client's rings, attach and let go |
//! | `intake.rs` | taking descriptors from the rings, checking heads, queueing jobs |
//! | `balancing.rs` | spreading sequences over the workers of a step-by-step lane |
//! | `ledger.rs` | the books: what each counter means, begin, end, drop |
//! | `outbox.rs` | answers: serializing, giving chunks to clients, the backlog of full rings |
//! | `request.rs` | validating a queued request before it runs |
//! | `single.rs`, `batch.rs`, `continuous.rs` | the execution modes: one request per backend call, dynamic batches, continuous batching |
//!
//! # A job's life
//!
//! ```text
//!  descriptor ──accept──► refused (bad descriptor or head, busy, draining): error answer
//!                 │
//!                 ▼ queued                                    accepted  += 1
//!        ┌──────────────────┐ client left ──► dropped, no answer  started, completed += 1
//!        │ queue (Scheduler)│ server exits ─► ShuttingDown answer started, completed += 1
//!        └──────────────────┘
//!                 │ popped: begin                             started   += 1
//!     ┌───────────┼─────────────────────────────┐
//!     ▼           ▼                             ▼
//!  client dead   cancelled, deadline passed,   runs (single, batch or continuous)
//!  dropped,      drain expired, lane failed:    │
//!  no answer     error answer                   ▼ end: the final answer, result or error
//!                                                 (a backend's panic: a Backend error)
//!     └─────────── completed += 1 ──────────────┘
//! ```
//!
//! `queued = accepted - started` and `running = started - completed` (the lane's counters in the
//! segment). A job is dropped without an answer only when its client is gone (its slot left or
//! changed hands): every other job gets exactly one final answer. A job's request chunk and its
//! client's in-flight count are released when it leaves (dropped or answered).

mod balancing;
mod batch;
mod clients;
mod continuous;
mod intake;
mod ledger;
mod outbox;
mod request;
mod single;
#[cfg(test)]
mod tests;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, RunContext, StepEvent, Stepper, Stop};
use crate::protocol::{ErrorCode, Refusal};
use crate::scheduler::{now_ns, Scheduler};
use crate::service::LaneHeader;

use super::recovery::{contain, Instance, Panicked, Restart};
use super::state::{ModelLane, ServerState};
use clients::ClientTable;
use continuous::Sequence;
use outbox::{Outbox, Undelivered};

/// One worker thread of lane `lane`: serves until the server exits, on the lane's current backend
/// instance, moving to a new one whenever the lane restarts its backend (see `recovery.rs`).
pub(crate) fn serve(state: &ServerState, lane: usize, index: usize) {
    let mut desk = Desk::new(state, lane, index);
    loop {
        let instance = desk.lane.backend.current();
        let ended = Worker::new(&mut desk, &instance).run();
        // The last worker to leave an instance drops it. AssertUnwindSafe: nothing of it is used
        // after a panic of its destructor (its memory may leak).
        if let Err(p) = contain(AssertUnwindSafe(move || drop(instance))) {
            tracing::error!(lane = %desk.lane.name, panic = %p.0, "dropping a backend instance panicked");
        }
        if ended == Ended::Exit {
            return;
        }
    }
}

/// Why [`Worker::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The server exits.
    Exit,
    /// The lane's backend was restarted (or failed): move to its current instance.
    Moved,
}

/// A worker thread of a lane running on one instance of the lane's backend.
pub(crate) struct Worker<'w, 's> {
    desk: &'w mut Desk<'s>,
    /// The lane's backend as this worker runs on it.
    instance: &'w Instance,
    /// The instance's stepper, for backends that decode step by step (continuous batching), or
    /// why it could not be made (or why it is gone: it panicked).
    stepper: Option<Result<Box<dyn Stepper + 'w>, String>>,
    /// The stepper's sequences: one per slot.
    sequences: Vec<Option<Sequence<'s>>>,
    /// Events of the last step (kept for its allocation).
    events: Vec<StepEvent>,
    /// Per stepper slot: paused this step (kept for its allocation).
    paused: Vec<bool>,
    /// A panic of the stepper not yet dealt with: its sequences are ended with it at the end of
    /// the current phase of a round (`continuous.rs`), then the lane's restart goes on.
    broken: Option<(Panicked, Option<Restart<'s>>)>,
}

/// Where a worker's requests come in and its answers go out (see the module docs).
pub(crate) struct Desk<'s> {
    state: &'s ServerState,
    lane: &'s ModelLane,
    /// The lane's counters in the segment.
    counters: &'s LaneHeader,
    /// The lane's latency histograms and generation counters in the segment.
    metrics: &'s crate::metrics::LaneMetrics,
    /// The lane's index.
    lane_index: usize,
    /// This worker's index in its lane.
    index: usize,
    clients: ClientTable,
    /// This worker's accepted jobs.
    queue: Scheduler,
    outbox: Outbox,
    /// The clock (`scheduler::now_ns`), read after each job, after each wait and at each
    /// `should_stop`: acceptance times and the pre-run deadline check use it, so it is never older
    /// than one round of ring polling (one clock read per job on a busy lane).
    now: u64,
    /// Loop rounds, for polling the rings less often when there is a backlog.
    round: u32,
    /// Where the next intake round starts among the attached clients.
    next_client: usize,
    /// Whether the lane decodes step by step (its workers then balance their sequences).
    stepping: bool,
    /// Sequences running in this worker's stepper, as of its last step.
    running: usize,
    /// Private copies of the requests being validated and run (see `request.rs`).
    copies: request::Copies,
}

/// With at least this many jobs queued, a worker polls the request rings every 4th round only.
const INGEST_BACKLOG: usize = 8;

impl<'s> Desk<'s> {
    /// The desk of worker `index` of lane `lane`.
    fn new(state: &'s ServerState, lane: usize, index: usize) -> Desk<'s> {
        let max_clients = state.svc.layout.max_clients;
        Desk {
            state,
            lane: &state.lanes[lane],
            counters: state.svc.lane(lane),
            metrics: state.svc.lane_metrics(lane),
            lane_index: lane,
            index,
            clients: ClientTable::new(max_clients),
            queue: Scheduler::new(max_clients),
            outbox: Outbox::default(),
            now: now_ns(),
            round: 0,
            next_client: 0,
            stepping: false,
            running: 0,
            copies: Vec::new(),
        }
    }
}

impl<'w, 's> Worker<'w, 's> {
    /// The worker of `desk` on `instance`, with the instance's stepper when its backend decodes
    /// step by step. A stepper whose making panics counts as a panic of the instance (the lane
    /// restarts its backend, and this worker moves at once).
    fn new(desk: &'w mut Desk<'s>, instance: &'w Instance) -> Worker<'w, 's> {
        desk.stepping = false;
        let mut worker = Worker {
            desk,
            instance,
            stepper: None,
            sequences: Vec::new(),
            events: Vec::new(),
            paused: Vec::new(),
            broken: None,
        };
        let Ok(backend) = &instance.backend else {
            // A failed lane: every request is answered at once (`run_job`).
            return worker;
        };
        // AssertUnwindSafe: after a panic no new work goes to the instance (the lane replaces
        // it), and a half-made stepper is dropped by the unwinding.
        let made = contain(AssertUnwindSafe(|| {
            backend
                .stepper()
                .map(|st| st.map(|st| (st.slots().max(1), st)))
        }));
        let (lane, lane_counters) = (worker.desk.lane, worker.desk.counters);
        match made {
            Ok(Ok(None)) => return worker,
            Ok(Ok(Some((slots, st)))) => {
                worker.sequences = (0..slots).map(|_| None).collect();
                worker.stepper = Some(Ok(st));
            }
            Ok(Err(e)) => {
                tracing::error!(lane = %lane.name, %e, "cannot make the model's stepper");
                worker.sequences = vec![None];
                worker.stepper = Some(Err(e.to_string()));
            }
            Err(p) => {
                worker.sequences = vec![None];
                worker.stepper = Some(Err(p.0.clone()));
                // Nothing is held yet: the restart goes at once.
                if let Some(restart) = lane
                    .backend
                    .panicked(instance.generation, &p, lane_counters)
                {
                    restart.finish();
                }
            }
        }
        worker.desk.stepping = true;
        worker
    }

    /// Whether the lane's backend was restarted (or failed) since this worker's instance.
    fn stale(&self) -> bool {
        self.desk.lane.backend.generation() != self.instance.generation
    }

    /// The loop: until the server exits, attach to new clients, retry waiting answers, take in
    /// requests and run the most urgent; park on the lane's doorbell when there is nothing to do.
    /// Returns early when the lane's backend was restarted and this worker holds no request of
    /// the old instance (a stepper's running sequences finish on it; no new one joins them).
    fn run(mut self) -> Ended {
        let state = self.desk.state;
        loop {
            if state.exit.load(Ordering::Acquire) {
                self.stop_all_sequences(ErrorCode::ShuttingDown, "the server stopped");
                self.desk.take_transfers(usize::MAX);
                self.desk.answer_all_queued(ErrorCode::ShuttingDown);
                return Ended::Exit;
            }
            if self.stale() && self.sequences.iter().all(Option::is_none) {
                return Ended::Moved;
            }
            self.desk.sync_clients();
            self.desk.flush_backlog();
            // Transferred jobs first: they were accepted before anything still in the rings.
            if self.stepper.is_some() {
                self.desk.balance(self.sequences.len());
            } else if self.instance.backend.is_err() && self.desk.lane.transfers.len() > 0 {
                // A failed lane: jobs other workers hand over are answered here.
                self.desk.take_transfers(usize::MAX);
            }
            // With a backlog of jobs, look at the rings only every few rounds: a poll of a ring
            // the client is writing costs a cache-line transfer, and the backlog keeps us busy.
            let desk = &mut *self.desk;
            desk.round = desk.round.wrapping_add(1);
            let limit = desk.ingest_limit();
            let took = if limit > 0 && (desk.queue.len() < INGEST_BACKLOG || desk.round % 4 == 0) {
                let took = desk.ingest(None, limit);
                desk.publish_load();
                took
            } else {
                0
            };
            if self.stepper.is_some() {
                if self.step_round() {
                    continue;
                }
            } else if let Some(job) = self.desk.queue.pop() {
                self.desk.run_job(job, self.instance);
                continue;
            }
            if took > 0 {
                continue;
            }
            self.desk.park();
        }
    }
}

impl Desk<'_> {
    /// Waits for a client's doorbell (clients ring it after pushing), for at most 20 ms.
    fn park(&mut self) {
        let state = self.state;
        let deadline = Instant::now() + Duration::from_millis(20);
        let this = &*self;
        let _ = state
            .config
            .wait
            .wait_until(&self.counters.doorbell, deadline, || {
                state.exit.load(Ordering::Relaxed)
                    || !this.queue.is_empty()
                    || this.any_request_waiting()
                    || this.lane.transfers.len() > 0
            });
        self.now = now_ns();
    }
}

/// The refusal a client gets for a backend's error.
fn refusal(e: &BackendError) -> Refusal {
    match e {
        BackendError::Invalid(m) => Refusal::new(ErrorCode::InvalidRequest, m.clone()),
        BackendError::Failed(m) => Refusal::new(ErrorCode::Backend, m.clone()),
        BackendError::Exhausted(m) => Refusal::new(ErrorCode::ResourceExhausted, m.clone()),
        BackendError::Stopped(Stop::Cancelled) => {
            Refusal::new(ErrorCode::Cancelled, "cancelled while running")
        }
        BackendError::Stopped(Stop::TimedOut) => {
            Refusal::new(ErrorCode::TimedOut, "the deadline passed while running")
        }
        BackendError::Stopped(Stop::ClientGone) => {
            Refusal::new(ErrorCode::Cancelled, "the client has gone")
        }
    }
}

/// What a backend sees while it runs one request: the worker's desk (to take in cancels and
/// other clients' requests, and to send stream chunks) and the job.
struct RunningJob<'w, 's> {
    desk: &'w mut Desk<'s>,
    job: crate::scheduler::Job,
    /// Why a stream part could not be sent within [`STREAM_STALL`], when that stopped the job.
    starved: Option<String>,
}

/// How long a stream part of a job run by one backend call waits for room (a chunk in the pool,
/// or the client reading its share) before the job ends with `ResourceExhausted`. The worker
/// serves nobody else meanwhile, so this is short; a sequence of a lane that decodes step by step
/// instead pauses without holding the worker, until its deadline (`continuous.rs`).
const STREAM_STALL: Duration = Duration::from_millis(250);

impl RunContext for RunningJob<'_, '_> {
    fn should_stop(&mut self) -> Option<Stop> {
        let desk = &mut *self.desk;
        // Take in what this client sent meanwhile (a cancel, most likely), and keep the others'
        // requests flowing into the queue.
        desk.now = now_ns();
        let limit = desk.ingest_limit();
        desk.ingest(None, limit);
        let reply = self.job.reply;
        if !desk.client_alive(reply) {
            return Some(Stop::ClientGone);
        }
        if desk.lane.cancels.contains(reply, self.job.chunk) {
            return Some(Stop::Cancelled);
        }
        if desk.now >= self.job.deadline_ns {
            return Some(Stop::TimedOut);
        }
        // SYNC(drain_expired): pairs with the Release store in `Server::stop`.
        if desk.state.drain_expired.load(Ordering::Acquire) {
            return Some(Stop::Cancelled);
        }
        None
    }

    fn emit(&mut self, chunk: crate::protocol::StreamChunk) -> Result<(), Stop> {
        if let Some(s) = self.should_stop() {
            return Err(s);
        }
        let resp = crate::protocol::Response {
            id: self.job.request_id,
            body: crate::protocol::Body::Chunk(chunk),
        };
        let reply = self.job.reply;
        let started = Instant::now();
        // A stream part waits for room rather than being lost: for the pool to have a chunk, or
        // for the client to read what it holds. The worker holds the job meanwhile, so the wait
        // is short ([`STREAM_STALL`]) and takes in no other work.
        loop {
            let why = match self
                .desk
                .answer(reply, crate::protocol::DescriptorKind::Partial, &resp)
            {
                Ok(()) => return Ok(()),
                Err(Undelivered::Gone) => return Err(Stop::ClientGone),
                Err(Undelivered::NoChunk) => "no shared memory for a stream part".to_owned(),
                Err(Undelivered::OverShare(why)) => {
                    format!("the client is not reading its stream: {why}")
                }
            };
            if !self.desk.client_alive(reply) {
                return Err(Stop::ClientGone);
            }
            if self.desk.lane.cancels.contains(reply, self.job.chunk) {
                return Err(Stop::Cancelled);
            }
            if started.elapsed() > STREAM_STALL || now_ns() >= self.job.deadline_ns {
                self.starved = Some(why);
                return Err(Stop::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn deadline(&self) -> Instant {
        self.job.deadline()
    }
}
