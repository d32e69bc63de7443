//! The sleep backend: takes a configurable time per request (or per streamed token), checking for
//! cancel and deadline between steps. For tests of scheduling, deadlines, cancel and drain.

use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, RunContext};
use crate::output::Out;
use crate::protocol::{ArchivedRequest, FinishReason, StreamChunk, Task, Usage};

/// Sleeps `step` per token, `max_tokens` tokens.
#[derive(Debug, Clone)]
pub struct Sleep {
    /// Time per generated token (one step).
    pub step: Duration,
}

const TASKS: [Task; 4] = [Task::Classify, Task::Embed, Task::Generate, Task::Tensors];

impl Backend for Sleep {
    fn tasks(&self) -> &[Task] {
        &TASKS
    }

    fn run(
        &self,
        req: &ArchivedRequest,
        ctx: &mut dyn RunContext,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        let start = Instant::now();
        let steps = req.params.max_tokens.to_native().max(1);
        let mut g = out.generation(steps as usize, steps as usize * 8)?;
        for i in 0..steps {
            if let Some(stop) = ctx.should_stop() {
                return Err(BackendError::Stopped(stop));
            }
            // Sleep in slices so that a cancel takes effect within a millisecond.
            let until = Instant::now() + self.step;
            while Instant::now() < until {
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(1)));
                if let Some(stop) = ctx.should_stop() {
                    return Err(BackendError::Stopped(stop));
                }
            }
            let piece = format!("t{i} ");
            g.push(i, &piece)?;
            if req.params.stream {
                ctx.emit(StreamChunk {
                    index: i,
                    text: piece,
                    tokens: vec![i],
                })
                .map_err(BackendError::Stopped)?;
            }
        }
        let generated_tokens = g.tokens() as u32;
        g.finish(
            FinishReason::Length,
            Usage {
                prompt_tokens: 0,
                generated_tokens,
                ttft_us: 0,
                total_us: start.elapsed().as_micros() as u64,
            },
        )
    }
}
