//! A lane worker: takes requests from its lane's request rings, queues them, runs them on the
//! lane's model, and sends the answers.
//!
//! The worker is two parts. Its [`Desk`] is where requests come in and answers go out: the client
//! table, the intake, the queue (a [`Scheduler`]), the books and the outbox. The execution modes
//! borrow the desk while they run a job, and a backend's [`RunContext`] gets the desk alone (it
//! takes in cancels while a job runs): nothing reaches back into the execution state. The
//! [`Worker`] adds the continuous-batching state of lanes that decode step by step.
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
//!  dropped,      drain expired: error answer    │
//!  no answer                                    ▼ end: the final answer, result or error
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

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, RunContext, StepEvent, Stepper, Stop};
use crate::protocol::{ErrorCode, Refusal};
use crate::scheduler::{now_ns, Scheduler};
use crate::service::LaneHeader;

use super::state::{ModelLane, ServerState};
use clients::ClientTable;
use continuous::Sequence;
use outbox::{Outbox, Undelivered};

/// One worker thread of a lane.
pub(crate) struct Worker<'s> {
    desk: Desk<'s>,
    /// The lane's stepper, for backends that decode step by step (continuous batching), or why
    /// it could not be made.
    stepper: Option<Result<Box<dyn Stepper + 's>, String>>,
    /// The stepper's sequences: one per slot.
    sequences: Vec<Option<Sequence<'s>>>,
    /// Events of the last step (kept for its allocation).
    events: Vec<StepEvent>,
    /// Per stepper slot: paused this step (kept for its allocation).
    paused: Vec<bool>,
}

/// Where a worker's requests come in and its answers go out (see the module docs).
pub(crate) struct Desk<'s> {
    state: &'s ServerState,
    lane: &'s ModelLane,
    /// The lane's counters in the segment.
    counters: &'s LaneHeader,
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

impl<'s> Worker<'s> {
    /// Worker `index` of lane `lane`, with the lane's stepper when its backend decodes step by
    /// step.
    pub(crate) fn new(state: &'s ServerState, lane: usize, index: usize) -> Worker<'s> {
        let max_clients = state.svc.layout.max_clients;
        let model: &'s ModelLane = &state.lanes[lane];
        let mut worker = Worker {
            desk: Desk {
                state,
                lane: model,
                counters: state.svc.lane(lane),
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
            },
            stepper: None,
            sequences: Vec::new(),
            events: Vec::new(),
            paused: Vec::new(),
        };
        match model.backend.stepper() {
            Ok(None) => {}
            Ok(Some(st)) => {
                worker.sequences = (0..st.slots().max(1)).map(|_| None).collect();
                worker.stepper = Some(Ok(st));
                worker.desk.stepping = true;
            }
            Err(e) => {
                tracing::error!(lane = %model.name, %e, "cannot make the model's stepper");
                worker.sequences = vec![None];
                worker.stepper = Some(Err(e.to_string()));
                worker.desk.stepping = true;
            }
        }
        worker
    }

    /// The loop: until the server exits, attach to new clients, retry waiting answers, take in
    /// requests and run the most urgent; park on the lane's doorbell when there is nothing to do.
    pub(crate) fn run(mut self) {
        let state = self.desk.state;
        loop {
            if state.exit.load(Ordering::Acquire) {
                self.stop_all_sequences(ErrorCode::ShuttingDown, "the server stopped");
                self.desk.take_transfers(usize::MAX);
                self.desk.answer_all_queued(ErrorCode::ShuttingDown);
                return;
            }
            self.desk.sync_clients();
            self.desk.flush_backlog();
            // Transferred jobs first: they were accepted before anything still in the rings.
            if self.stepper.is_some() {
                self.desk.balance(self.sequences.len());
            }
            // With a backlog of jobs, look at the rings only every few rounds: a poll of a ring
            // the client is writing costs a cache-line transfer, and the backlog keeps us busy.
            let desk = &mut self.desk;
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
                self.desk.run_job(job);
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
