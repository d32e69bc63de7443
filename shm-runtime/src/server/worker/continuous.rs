//! Continuous batching: a backend that decodes step by step (a [`Stepper`]) runs several
//! sequences together; between steps, queued jobs join free slots and sequences that must stop
//! (client gone, cancelled, deadline, drain) leave.
//!
//! Stop sequences are handled here, for every stepper: each token's text goes through the
//! sequence's [`StopStrings`], which releases only text that can no longer begin a stop sequence
//! (to the answer written in place and, for a stream, to the token's part); when one completes,
//! the stepper's slot is released and the answer ends before it, with finish `Stop`. When the
//! stepper ends a sequence itself (end of sequence, `max_tokens`), the text still held is
//! released, in a last part without tokens.
//!
//! Every call into the stepper is contained (`call_stepper`): a panic sets the stepper aside, and
//! at the end of that phase of the round every sequence it held ends with the panic's `Backend`
//! error (`end_broken`) and the lane restarts its backend; this worker then moves to the new
//! instance and makes a new stepper.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use super::outbox::Undelivered;
use super::request::validate;
use super::{refusal, Worker};
use crate::backend::writer::{GenerationState, Out};
use crate::backend::{StepEvent, Stepper, StopStrings};
use crate::protocol::{
    Body, DescriptorKind, ErrorCode, FinishReason, Refusal, Response, StreamChunk, TokenLogprob,
    Usage,
};
use crate::scheduler::{now_ns, Job};
use crate::server::recovery::contain;

/// A request being decoded by the lane's stepper.
pub(super) struct Sequence<'s> {
    job: Job,
    out: Out<'s>,
    gen: GenerationState,
    stream: bool,
    /// Index of its next stream chunk.
    index: u32,
    /// Its stop sequences and the text held back while it could begin one.
    stops: StopStrings,
    /// The log-probabilities of its tokens so far (when the request asked for them).
    logprobs: Vec<TokenLogprob>,
    /// A stream part that could not be sent yet (the client holds its share of the pool, or the
    /// pool is empty), with the reason: the sequence is paused, and decodes no further, until the
    /// part goes; at its deadline it ends with `ResourceExhausted`. A later part joins it.
    waiting: Option<(Response, String)>,
    /// How the stepper ended the sequence while a part was still waiting: its final answer goes
    /// after that part (the stepper's slot is already free; the worker's stays taken until then).
    ended: Option<Ended>,
}

/// The end of a sequence as the stepper reported it (or a stop sequence decided).
pub(super) struct Ended {
    finish: FinishReason,
    usage: Usage,
}

impl<'w, 's> Worker<'w, 's> {
    /// One round of continuous batching: admits queued jobs into free slots, ends sequences that
    /// must stop, and runs one decode step. Returns whether there was anything to do.
    /// Once the lane's backend was restarted, no job joins this worker's sequences: they finish
    /// on the old instance, and the worker then moves to the new one.
    pub(super) fn step_round(&mut self) -> bool {
        let mut did = false;
        while !self.stale() {
            let Some(slot) = self.sequences.iter().position(Option::is_none) else {
                break;
            };
            let Some(mut job) = self.desk.queue.pop() else {
                break;
            };
            did = true;
            if self.desk.begin(&mut job) {
                self.admit(slot, job);
                self.end_broken();
            }
        }
        if self.sequences.iter().all(Option::is_none) {
            self.desk.running = 0;
            return did;
        }
        self.end_stopped_sequences();
        self.end_broken();
        self.send_waiting_parts();
        let mut paused = std::mem::take(&mut self.paused);
        paused.clear();
        paused.extend(
            self.sequences
                .iter()
                .map(|s| s.as_ref().is_some_and(|s| s.waiting.is_some())),
        );
        let running = self
            .sequences
            .iter()
            .zip(&paused)
            .any(|(s, &p)| s.is_some() && !p);
        if !running {
            // Every sequence waits for its client to read: nothing to decode (the worker parks and
            // tries the parts again when it wakes).
            self.paused = paused;
            self.desk.running = self.sequences.iter().filter(|s| s.is_some()).count();
            return did;
        }
        let mut events = std::mem::take(&mut self.events);
        if self
            .call_stepper(|st| st.step(&paused, &mut events))
            .is_none()
        {
            // The step panicked: what it reported before is of a broken stepper.
            events.clear();
        }
        self.paused = paused;
        for ev in events.drain(..) {
            self.on_step_event(ev);
        }
        self.events = events;
        self.end_at_stop_sequences();
        self.end_broken();
        self.desk.now = now_ns();
        self.desk.running = self.sequences.iter().filter(|s| s.is_some()).count();
        self.desk.publish_load();
        true
    }

    /// Ends the sequences whose client left, that were cancelled, whose deadline passed, or that
    /// the drain's end stops.
    fn end_stopped_sequences(&mut self) {
        // SYNC(drain_expired): pairs with the Release store in `Server::stop`.
        let drain_expired = self.desk.state.drain_expired.load(Ordering::Acquire);
        for slot in 0..self.sequences.len() {
            let Some(seq) = &self.sequences[slot] else {
                continue;
            };
            let reply = seq.job.reply;
            if !self.desk.client_alive(reply) || self.desk.clients.get(reply.slot()).is_none() {
                let seq = self.take_sequence(slot);
                self.desk.drop_started(&seq.job);
            } else if self.desk.lane.cancels.contains(reply, seq.job.chunk) {
                let seq = self.take_sequence(slot);
                let err = Refusal::new(ErrorCode::Cancelled, "cancelled while running");
                self.desk.end(&seq.job, Err(err), seq.out);
            } else if drain_expired {
                let seq = self.take_sequence(slot);
                let err = Refusal::new(ErrorCode::ShuttingDown, "the server is shutting down");
                self.desk.end(&seq.job, Err(err), seq.out);
            } else if self.desk.now >= seq.job.deadline_ns && seq.waiting.is_some() {
                let seq = self.take_sequence(slot);
                let why = seq.waiting.map(|(_, why)| why).unwrap_or_default();
                let err = Refusal::new(ErrorCode::ResourceExhausted, why);
                self.desk.end(&seq.job, Err(err), seq.out);
            } else if self.desk.now >= seq.job.deadline_ns {
                let usage = self.call_stepper(|st| st.release(slot)).unwrap_or_default();
                let mut seq = self.sequences[slot].take().expect("checked above");
                // Text held back for a stop sequence stays out: the parts sent make up the answer.
                let res = seq
                    .out
                    .resume_generation(seq.gen)
                    .finish_with_logprobs(FinishReason::Timeout, usage, &seq.logprobs)
                    .map_err(|e| refusal(&e.into()));
                self.desk.end(&seq.job, res, seq.out);
            }
        }
    }

    /// Tries again to send the stream parts that paused their sequences; a sequence whose part
    /// goes runs again in the next step.
    fn send_waiting_parts(&mut self) {
        for slot in 0..self.sequences.len() {
            let Some(seq) = self.sequences[slot].as_mut() else {
                continue;
            };
            let Some((resp, _)) = &seq.waiting else {
                continue;
            };
            let reply = seq.job.reply;
            match self.desk.answer(reply, DescriptorKind::Partial, resp) {
                Ok(()) => {
                    seq.waiting = None;
                    if seq.ended.is_some() {
                        let seq = self.sequences[slot].take().expect("checked above");
                        self.finish_sequence(seq);
                    }
                }
                Err(Undelivered::Gone) => {
                    let seq = self.take_sequence(slot);
                    self.desk.drop_started(&seq.job);
                }
                Err(Undelivered::NoChunk | Undelivered::OverShare(_)) => {}
            }
        }
    }

    /// Calls the stepper; `None` when there is none or the call panicked. A panic is contained:
    /// the stepper is set aside and dropped, the lane's restart begun (its other workers take no
    /// more work to this instance), and the panic kept in `broken` for `end_broken`, which
    /// callers run at the end of their phase (they may be in the middle of taking a sequence
    /// out, so the others are not ended here).
    fn call_stepper<R>(&mut self, call: impl FnOnce(&mut (dyn Stepper + 'w)) -> R) -> Option<R> {
        let Some(Ok(st)) = &mut self.stepper else {
            return None;
        };
        // AssertUnwindSafe: after a panic the stepper is never called again (dropped below), and
        // what the call was given is the worker's own scratch (the step's flags and events,
        // cleared before their next use) or a private copy of a request.
        let panic = match contain(AssertUnwindSafe(|| call(st.as_mut()))) {
            Ok(r) => return Some(r),
            Err(p) => p,
        };
        let broken = self.stepper.replace(Err(panic.0.clone()));
        // AssertUnwindSafe: the stepper is gone whatever its destructor does.
        if let Err(p) = contain(AssertUnwindSafe(move || drop(broken))) {
            tracing::error!(lane = %self.desk.lane.name, panic = %p.0, "dropping a stepper panicked");
        }
        if self.broken.is_none() {
            let lane = self.desk.lane;
            let restart =
                lane.backend
                    .panicked(self.instance.generation, &panic, self.desk.counters);
            self.broken = Some((panic, restart));
        }
        None
    }

    /// After a panic of the stepper: ends every sequence it held with the panic's `Backend` error
    /// (a departed client's are dropped), then has the lane restart its backend.
    fn end_broken(&mut self) {
        let Some((panic, restart)) = self.broken.take() else {
            return;
        };
        for slot in 0..self.sequences.len() {
            let Some(seq) = self.sequences[slot].take() else {
                continue;
            };
            if self.desk.client_alive(seq.job.reply) {
                self.desk.end(&seq.job, Err(panic.refusal()), seq.out);
            } else {
                self.desk.drop_started(&seq.job);
            }
        }
        self.desk.running = 0;
        self.desk.publish_load();
        // The answers first, then the new instance.
        if let Some(restart) = restart {
            restart.finish();
        }
    }

    /// Takes `job` into stepper slot `slot`, or answers it when it cannot run.
    fn admit(&mut self, slot: usize, job: Job) {
        let state = self.desk.state;
        let lane = self.desk.lane;
        let mut copies = std::mem::take(&mut self.desk.copies);
        if copies.is_empty() {
            copies.push(Vec::new());
        }
        let mut out = Out::in_pool(&state.pool, state.owner, job.request_id);
        let admitted = validate(state, lane, &job, &mut copies[0]).and_then(|req| {
            let stream = req.params.stream;
            let stops = StopStrings::new(req.params.stop.iter().map(|s| s.as_str()));
            if let Some(Err(e)) = &self.stepper {
                return Err(Refusal::new(ErrorCode::Backend, e.clone()));
            }
            match self.call_stepper(|st| st.admit(slot, req)) {
                Some(admitted) => admitted
                    .map(|a| (a, stream, stops))
                    .map_err(|e| refusal(&e)),
                None => Err(match &self.broken {
                    Some((panic, _)) => panic.refusal(),
                    None => Refusal::new(ErrorCode::Backend, "no stepper"),
                }),
            }
        });
        self.desk.copies = copies;
        let (admitted, stream, stops) = match admitted {
            Ok(a) => a,
            Err(e) => return self.desk.end(&job, Err(e), out),
        };
        match out
            .generation(admitted.max_tokens, admitted.max_tokens * 8)
            .map(|g| g.suspend())
        {
            Ok(gen) => {
                self.sequences[slot] = Some(Sequence {
                    job,
                    out,
                    gen,
                    stream,
                    index: 0,
                    stops,
                    logprobs: Vec::new(),
                    waiting: None,
                    ended: None,
                });
            }
            Err(e) => {
                self.call_stepper(|st| st.release(slot));
                self.desk.end(&job, Err(refusal(&e.into())), out);
            }
        }
    }

    /// Frees stepper slot `slot` and takes its sequence out.
    fn take_sequence(&mut self, slot: usize) -> Sequence<'s> {
        self.call_stepper(|st| st.release(slot));
        self.sequences[slot].take().expect("a running slot")
    }

    fn on_step_event(&mut self, ev: StepEvent) {
        match ev {
            StepEvent::Token {
                slot,
                id,
                text,
                logprob,
            } => {
                let Some(seq) = self.sequences[slot].as_mut() else {
                    return;
                };
                if seq.stops.stopped() {
                    // Past a stop sequence (a stepper reporting several tokens in one step).
                    return;
                }
                let released = seq.stops.push(text);
                let mut g = seq.out.resume_generation(seq.gen);
                let pushed = g.push(id, &released.text);
                seq.gen = g.suspend();
                if let Err(e) = pushed {
                    let seq = self.take_sequence(slot);
                    self.desk.end(&seq.job, Err(refusal(&e.into())), seq.out);
                    return;
                }
                let part_logprobs = match logprob {
                    Some(l) if seq.stream => {
                        seq.logprobs.push(l.clone());
                        vec![l]
                    }
                    Some(l) => {
                        seq.logprobs.push(l);
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                if seq.stream {
                    self.send_part(slot, released.text, vec![id], part_logprobs);
                }
            }
            StepEvent::Done {
                slot,
                finish,
                usage,
            } => {
                let Some(seq) = self.sequences[slot].as_mut() else {
                    return;
                };
                if seq.ended.is_some() {
                    return;
                }
                let finish = if seq.stops.stopped() {
                    FinishReason::Stop
                } else {
                    // No stop sequence completed: the text held back is the generation's end.
                    let rest = seq.stops.finish();
                    if !rest.is_empty() {
                        let mut g = seq.out.resume_generation(seq.gen);
                        let pushed = g.push_text(&rest);
                        seq.gen = g.suspend();
                        if let Err(e) = pushed {
                            let seq = self.take_sequence(slot);
                            self.desk.end(&seq.job, Err(refusal(&e.into())), seq.out);
                            return;
                        }
                        if seq.stream {
                            self.send_part(slot, rest, Vec::new(), Vec::new());
                        }
                    }
                    finish
                };
                self.end_sequence(slot, Ended { finish, usage });
            }
            StepEvent::Failed { slot, error } => {
                if let Some(seq) = self.sequences[slot].take() {
                    self.desk.end(&seq.job, Err(refusal(&error)), seq.out);
                }
            }
        }
    }

    /// Ends the sequences in which a stop sequence completed during the step (and which the
    /// stepper did not end itself): their stepper slots are released, their answers end before
    /// the stop sequence.
    fn end_at_stop_sequences(&mut self) {
        for slot in 0..self.sequences.len() {
            let stopped = self.sequences[slot]
                .as_ref()
                .is_some_and(|s| s.stops.stopped() && s.ended.is_none());
            if stopped {
                let usage = self.call_stepper(|st| st.release(slot)).unwrap_or_default();
                let finish = FinishReason::Stop;
                self.end_sequence(slot, Ended { finish, usage });
            }
        }
    }

    /// Sends one stream part of sequence `slot`: `text` released since its last part, and its new
    /// tokens. A part that cannot go yet waits and pauses the sequence; while one waits, the next
    /// joins it.
    fn send_part(
        &mut self,
        slot: usize,
        text: String,
        tokens: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
    ) {
        let Some(seq) = self.sequences[slot].as_mut() else {
            return;
        };
        if let Some((
            Response {
                body: Body::Chunk(c),
                ..
            },
            _,
        )) = &mut seq.waiting
        {
            c.text.push_str(&text);
            c.tokens.extend(tokens);
            c.logprobs.extend(logprobs);
            return;
        }
        let resp = Response {
            id: seq.job.request_id,
            body: Body::Chunk(StreamChunk {
                index: seq.index,
                text,
                tokens,
                logprobs,
            }),
        };
        seq.index += 1;
        let why = match self
            .desk
            .answer(seq.job.reply, DescriptorKind::Partial, &resp)
        {
            Ok(()) => return,
            Err(Undelivered::Gone) => {
                let seq = self.take_sequence(slot);
                self.desk.drop_started(&seq.job);
                return;
            }
            Err(Undelivered::NoChunk) => "no shared memory for a stream part".to_owned(),
            Err(Undelivered::OverShare(why)) => {
                format!("the client is not reading its stream: {why}")
            }
        };
        if let Some(seq) = self.sequences[slot].as_mut() {
            seq.waiting = Some((resp, why));
        }
    }

    /// Sequence `slot` ended: its final answer goes now, or after its waiting part.
    fn end_sequence(&mut self, slot: usize, ended: Ended) {
        let Some(mut seq) = self.sequences[slot].take() else {
            return;
        };
        seq.ended = Some(ended);
        if seq.waiting.is_some() {
            // Its last part has not gone yet: the final answer waits behind it.
            self.sequences[slot] = Some(seq);
        } else {
            self.finish_sequence(seq);
        }
    }

    /// Sends the final answer of a sequence that ended (`seq.ended`).
    fn finish_sequence(&mut self, mut seq: Sequence<'s>) {
        let Some(Ended { finish, usage }) = seq.ended.take() else {
            return;
        };
        let res = seq
            .out
            .resume_generation(seq.gen)
            .finish_with_logprobs(finish, usage, &seq.logprobs)
            .map_err(|e| refusal(&e.into()));
        self.desk.end(&seq.job, res, seq.out);
    }

    /// Ends every running sequence with error `code` (at exit); a departed client's are dropped.
    pub(super) fn stop_all_sequences(&mut self, code: ErrorCode, message: &str) {
        for slot in 0..self.sequences.len() {
            if self.sequences[slot].is_some() {
                let seq = self.take_sequence(slot);
                if self.desk.client_alive(seq.job.reply) {
                    self.desk
                        .end(&seq.job, Err(Refusal::new(code, message)), seq.out);
                } else {
                    self.desk.drop_started(&seq.job);
                }
            }
        }
    }
}
