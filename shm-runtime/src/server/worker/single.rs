//! One request per backend call ([`Backend::run`](crate::backend::Backend::run)), with the run
//! context of `worker/mod.rs`.

use super::request::validate;
use super::{refusal, Desk, RunningJob};
use crate::backend::writer::Out;
use crate::backend::{BackendError, Stop};
use crate::protocol::{ErrorCode, Refusal};
use crate::scheduler::Job;

impl Desk<'_> {
    /// Runs `job` (in a batch, when the lane's backend batches), and answers it.
    pub(super) fn run_job(&mut self, job: Job) {
        if let Some(b) = self.lane.backend.batching() {
            return self.run_batched(job, b);
        }
        if !self.begin(&job) {
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
        let result = validate(state, lane, &job, &mut copies[0]).and_then(|req| {
            let mut ctx = RunningJob {
                desk: &mut *self,
                job,
                starved: None,
            };
            let result = lane.backend.run(req, &mut ctx, &mut out);
            match (result, ctx.starved) {
                (Err(BackendError::Stopped(Stop::TimedOut)), Some(why)) => {
                    Err(Refusal::new(ErrorCode::ResourceExhausted, why))
                }
                (result, _) => result.map_err(|e| refusal(&e)),
            }
        });
        self.end(&job, result, out);
        self.copies = copies;
    }
}
