//! A worker's decoding over a GGUF model: its own llama.cpp context, whose KV cache holds the
//! running sequences, each decode step one batch of every sequence's next token or prompt piece.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaChatMessage;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::sampling::{sampler_chain, token_logprob};
use super::{llama, Gguf};
use crate::backend::{Admitted, BackendError, StepEvent, Stepper};
use crate::protocol::{tokens_native, ArchivedInput, ArchivedRequest, FinishReason, Usage};

/// One sequence being generated.
struct Seq {
    prompt: Vec<LlamaToken>,
    /// Prompt tokens in the KV cache.
    fed: usize,
    /// Tokens in the KV cache.
    pos: i32,
    /// The last sampled token, to feed in the next step.
    next: Option<LlamaToken>,
    /// Where this sequence's logits are in the current batch.
    logits_at: Option<i32>,
    sampler: LlamaSampler,
    max: u32,
    generated: u32,
    /// How many most likely tokens to report with each token's log-probability (0: none).
    logprobs: usize,
    /// Bytes of a character split across tokens.
    pending: Vec<u8>,
    start: Instant,
    ttft_us: u64,
}

impl Seq {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt.len() as u32,
            generated_tokens: self.generated,
            ttft_us: self.ttft_us,
            total_us: self.start.elapsed().as_micros() as u64,
        }
    }
}

/// A worker's context over a [`Gguf`] model and its running sequences.
pub(super) struct GgufStepper<'g> {
    g: &'g Gguf,
    ctx: LlamaContext<'g>,
    /// Most tokens per decode.
    n_batch: u32,
    batch: LlamaBatch<'static>,
    seqs: Vec<Option<Seq>>,
}

impl<'g> GgufStepper<'g> {
    /// A worker's own context over `g`, with room for its `parallel` sequences.
    pub(super) fn new(g: &'g Gguf) -> Result<GgufStepper<'g>, BackendError> {
        let backend = llama().map_err(BackendError::Failed)?;
        let n_ctx = g.context * g.parallel;
        // llama.cpp caps a decode at the context size.
        let n_batch = g.batch.min(n_ctx);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_seq_max(g.parallel)
            .with_n_threads(g.threads)
            .with_n_threads_batch(g.threads);
        let ctx = g
            .model
            .new_context(backend, params)
            .map_err(|e| BackendError::Failed(format!("cannot create a llama.cpp context: {e}")))?;
        let n_batch = ctx.n_batch().min(n_batch);
        Ok(GgufStepper {
            g,
            ctx,
            n_batch,
            batch: LlamaBatch::new(n_batch as usize, g.parallel as i32),
            seqs: (0..g.parallel).map(|_| None).collect(),
        })
    }

    fn prompt(&self, req: &ArchivedRequest) -> Result<Vec<LlamaToken>, BackendError> {
        let vocab = self.g.model.vocab();
        let invalid = |m: String| BackendError::Invalid(m);
        let tokens =
            match &req.input {
                ArchivedInput::Text(t) => vocab.tokenize(t.as_bytes(), true, false),
                ArchivedInput::Tokens(t) => {
                    let n = vocab.n_tokens();
                    let t = tokens_native(t);
                    if let Some(bad) = t.iter().find(|&&id| i64::from(id) >= i64::from(n)) {
                        return Err(invalid(format!(
                            "token id {bad} is outside the vocabulary of {n} tokens"
                        )));
                    }
                    t.iter().map(|&id| LlamaToken(id as i32)).collect()
                }
                ArchivedInput::Chat(msgs) => {
                    let tmpl = self.g.template.as_ref().ok_or_else(|| {
                        invalid("this model has no chat template; send text or token ids".into())
                    })?;
                    let chat = msgs
                        .iter()
                        .map(|m| {
                            LlamaChatMessage::new(
                                m.role.as_str().to_owned(),
                                m.content.as_str().to_owned(),
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| invalid(format!("chat message: {e}")))?;
                    let text = self
                        .g
                        .model
                        .apply_chat_template(tmpl, &chat, true)
                        .map_err(|e| invalid(format!("cannot apply the chat template: {e}")))?;
                    vocab.tokenize(text.as_bytes(), true, true)
                }
                ArchivedInput::Texts(_) => return Err(invalid(
                    "several texts in one request are for embedding and classifier models; send \
                     one prompt"
                        .into(),
                )),
                ArchivedInput::Tensors(_) => {
                    return Err(invalid(
                        "a generation model takes text, token ids or chat".into(),
                    ))
                }
            };
        if tokens.is_empty() {
            return Err(invalid("the prompt is empty".into()));
        }
        Ok(tokens)
    }

    /// Frees slot `slot`'s KV cells.
    fn forget(&mut self, slot: usize) {
        let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
    }
}

impl Stepper for GgufStepper<'_> {
    fn slots(&self) -> usize {
        self.seqs.len()
    }

    fn admit(&mut self, slot: usize, req: &ArchivedRequest) -> Result<Admitted, BackendError> {
        let max = req.params.max_tokens.to_native();
        if max == 0 {
            return Err(BackendError::Invalid(
                "max_tokens must be at least 1".into(),
            ));
        }
        let prompt = self.prompt(req)?;
        let room = self.g.context as usize;
        if prompt.len() >= room {
            return Err(BackendError::Invalid(format!(
                "the prompt has {} tokens; the context holds {room} per sequence",
                prompt.len()
            )));
        }
        let max = max.min((room - prompt.len()) as u32);
        let sampler = sampler_chain(&self.g.model, req, &prompt, max)?;
        self.forget(slot);
        self.seqs[slot] = Some(Seq {
            prompt,
            fed: 0,
            pos: 0,
            next: None,
            logits_at: None,
            sampler,
            max,
            generated: 0,
            logprobs: usize::from(req.params.logprobs),
            pending: Vec::new(),
            start: Instant::now(),
            ttft_us: 0,
        });
        Ok(Admitted {
            max_tokens: max as usize,
        })
    }

    fn step(&mut self, paused: &[bool], events: &mut Vec<StepEvent>) {
        self.batch.clear();
        let mut budget = self.n_batch as usize;
        for (slot, seq) in self.seqs.iter_mut().enumerate() {
            let Some(s) = seq else { continue };
            s.logits_at = None;
            if paused.get(slot).copied().unwrap_or(false) {
                // Its next token (`s.next`) waits in the sequence for a later step.
                continue;
            }
            if budget == 0 {
                continue;
            }
            let id = [slot as i32];
            if s.fed < s.prompt.len() {
                let n = (s.prompt.len() - s.fed).min(budget);
                for k in 0..n {
                    let last = s.fed + k + 1 == s.prompt.len();
                    if last {
                        s.logits_at = Some(self.batch.n_tokens());
                    }
                    let _ = self.batch.add(s.prompt[s.fed + k], s.pos, &id, last);
                    s.pos += 1;
                }
                s.fed += n;
                budget -= n;
            } else if let Some(t) = s.next {
                s.logits_at = Some(self.batch.n_tokens());
                let _ = self.batch.add(t, s.pos, &id, true);
                s.pos += 1;
                budget -= 1;
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            for slot in 0..self.seqs.len() {
                if self.seqs[slot].take().is_some() {
                    self.forget(slot);
                    events.push(StepEvent::Failed {
                        slot,
                        error: BackendError::Failed(format!("llama.cpp decode failed: {e}")),
                    });
                }
            }
            return;
        }
        let vocab = self.g.model.vocab();
        let mut ended = Vec::new();
        for (slot, seq) in self.seqs.iter_mut().enumerate() {
            let Some(s) = seq else { continue };
            let Some(at) = s.logits_at.take() else {
                continue;
            };
            let token = s.sampler.sample(&self.ctx, at);
            if s.generated == 0 {
                s.ttft_us = s.start.elapsed().as_micros() as u64;
            }
            if vocab.is_eog(token) {
                events.push(StepEvent::Done {
                    slot,
                    finish: FinishReason::Stop,
                    usage: s.usage(),
                });
                ended.push(slot);
                continue;
            }
            s.generated += 1;
            s.next = Some(token);
            let logprob = (s.logprobs > 0).then(|| {
                token_logprob(self.ctx.get_logits_ith(at), token, s.logprobs, |t| {
                    String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned()
                })
            });
            s.pending
                .extend_from_slice(&vocab.token_to_piece(token, false, None));
            let text = take_utf8(&mut s.pending);
            events.push(StepEvent::Token {
                slot,
                id: token.0 as u32,
                text,
                logprob,
            });
            if s.generated >= s.max {
                events.push(StepEvent::Done {
                    slot,
                    finish: FinishReason::Length,
                    usage: s.usage(),
                });
                ended.push(slot);
            }
        }
        for slot in ended {
            self.seqs[slot] = None;
            self.forget(slot);
        }
    }

    fn release(&mut self, slot: usize) -> Usage {
        let usage = self.seqs[slot]
            .take()
            .map(|s| s.usage())
            .unwrap_or_default();
        self.forget(slot);
        usage
    }
}

/// The complete characters at the front of `pending` (invalid bytes become U+FFFD); an incomplete
/// character at the end stays for the next token.
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(pending) {
            Ok(s) => {
                out.push_str(s);
                pending.clear();
                return out;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // from_utf8 said these bytes are valid.
                out.push_str(std::str::from_utf8(&pending[..valid]).unwrap_or_default());
                match e.error_len() {
                    None => {
                        pending.drain(..valid);
                        return out;
                    }
                    Some(bad) => {
                        out.push('\u{fffd}');
                        pending.drain(..valid + bad);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_tokens_come_out_whole() {
        let mut p = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut p), "");
        p.extend_from_slice(&"é".as_bytes()[1..]);
        p.extend_from_slice(b"x");
        assert_eq!(take_utf8(&mut p), "éx");
        assert!(p.is_empty());
        let mut p = vec![b'a', 0xff, b'b'];
        assert_eq!(take_utf8(&mut p), "a\u{fffd}b");
    }
}
