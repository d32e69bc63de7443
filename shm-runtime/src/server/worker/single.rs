//! One request per backend call ([`Backend::run`](crate::backend::Backend::run)), with the run
//! context of `worker/mod.rs`.

use std::panic::AssertUnwindSafe;

use super::request::validate;
use super::{refusal, Desk, RunningJob};
use crate::backend::writer::Out;
use crate::backend::{BackendError, Stop};
use crate::protocol::{ErrorCode, Refusal};
use crate::scheduler::Job;
use crate::server::recovery::{contain, Instance};

impl Desk<'_> {
    /// Runs `job` on `instance` (in a batch, when the instance batches), and answers it. A
    /// failed lane answers it at once; a panic of the backend is its answer, and restarts the
    /// lane's backend once the answer is out.
    pub(super) fn run_job(&mut self, job: Job, instance: &Instance) {
        let backend = match &instance.backend {
            Ok(backend) => backend,
            Err(why) => {
                let failed = Refusal::new(ErrorCode::Backend, why.clone());
                return self.answer_unrun(job, failed);
            }
        };
        if let Some(b) = instance.batching {
            return self.run_batched(job, &**backend, instance.generation, b);
        }
        let mut job = job;
        if !self.begin(&mut job) {
            return;
        }
        let state = self.state;
        let lane = self.lane;
        let mut copies = std::mem::take(&mut self.copies);
        if copies.is_empty() {
            copies.push(Vec::new());
        }
        // The head's id is checked against the archive's, so this is the answer's id.
        let mut out = Out::in_pool(&state.pool, state.owner, job.request_id);
        let counters = self.counters;
        let mut restart = None;
        let result = validate(state, lane, &job, &mut copies[0]).and_then(|req| {
            let mut ctx = RunningJob {
                desk: &mut *self,
                job,
                starved: None,
            };
            // AssertUnwindSafe: after a panic no new work goes to the instance (the lane replaces
            // it) and the answer written so far is dropped unread (its chunk goes back to the
            // pool). The desk is reached only through the run context, whose calls leave it
            // consistent at every return to the backend.
            let ran = contain(AssertUnwindSafe(|| backend.run(req, &mut ctx, &mut out)));
            match (ran, ctx.starved) {
                (Err(p), _) => {
                    restart = lane.backend.panicked(instance.generation, &p, counters);
                    Err(p.refusal())
                }
                (Ok(Err(BackendError::Stopped(Stop::TimedOut))), Some(why)) => {
                    Err(Refusal::new(ErrorCode::ResourceExhausted, why))
                }
                (Ok(result), _) => result.map_err(|e| refusal(&e)),
            }
        });
        self.end(&job, result, out);
        self.copies = copies;
        // The answer first, then the new instance.
        if let Some(restart) = restart {
            restart.finish();
        }
    }

    /// Answers `job` with `refusal` without running it (a failed lane's).
    fn answer_unrun(&mut self, mut job: Job, refusal: Refusal) {
        if self.begin(&mut job) {
            let out = Out::in_pool(&self.state.pool, self.state.owner, job.request_id);
            self.end(&job, Err(refusal), out);
        }
    }
}
