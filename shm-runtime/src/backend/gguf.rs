//! GGUF models through llama.cpp (`llama-cpp-2`): text generation with continuous batching.
//!
//! One `LlamaBackend` per process; per model, the lane's worker owns one persistent context whose
//! KV cache holds up to `parallel` sequences. Each decode step puts every running sequence's next
//! token (or the next piece of a new sequence's prompt) into one batch, so a request that arrives
//! while another is generating joins at the next step instead of waiting for it to finish.
//!
//! Model options (the `options` table of the model in the server's TOML file):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `context` | tokens of context per sequence (prompt + generated) | 2048, at most the model's training context |
//! | `parallel` | sequences decoded together | 4 |
//! | `batch` | most tokens per decode step (prompts are fed in pieces of this size) | 512 |
//! | `threads` | llama.cpp threads (the worker's own thread is one of them) | 1 |
//!
//! Request parameters: `max_tokens` (>= 1), `temperature` (0: greedy), `top_k` (0: off), `top_p`
//! (1: off), `min_p` (0: off), `repetition_penalty` (1: off; over the last 64 tokens, prompt
//! included), `presence_penalty` and `frequency_penalty` (0: off; over the tokens generated),
//! `seed` (folded to llama.cpp's 32 bits by [`sampler_seed`]), `logprobs` (each token's
//! log-probability and the most likely tokens, from the model's logits), `stop` (handled by the
//! worker, for every stepping backend: see `backend::StopStrings`). The sampler chain, in
//! llama.cpp's usual order: penalties, top-k, top-p, min-p, temperature, then a seeded draw
//! (greedy at temperature 0, where only the penalties apply). Prompts: text, token ids, or chat
//! messages formatted with the model's own chat template (from the GGUF metadata).
//!
//! # Examples
//!
//! ```no_run
//! use shm_runtime::{Client, GenerateOptions, ModelConfig, Server, ServerConfig};
//!
//! let mut model = ModelConfig::new("tiny", "gguf");
//! model.path = Some("models/tiny/tiny-llama.gguf".into());
//! model.options.insert("parallel".into(), 2.into()); // two sequences per decode step
//! let _server = Server::start(ServerConfig::new("svc", vec![model]))?;
//! let options = GenerateOptions::new().max_tokens(8).stop(["\n"]);
//! let g = Client::connect("svc")?.generate("tiny", "Once upon a time", &options)?;
//! assert!(g.usage.completion_tokens <= 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::backend::writer::Out;
use crate::backend::{Admitted, Backend, BackendError, RunContext, StepEvent, Stepper};
use crate::config::ModelConfig;
use crate::protocol::{
    tokens_native, ArchivedInput, ArchivedRequest, FinishReason, Task, TokenLogprob, TopLogprob,
    Usage,
};

/// The process's llama.cpp backend, initialised on first use.
///
/// # Errors
///
/// When llama.cpp cannot be initialised.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::gguf::llama;
///
/// // One llama.cpp backend per process, shared by every GGUF model.
/// let first = llama()?;
/// assert!(std::ptr::eq(first, llama()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn llama() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| format!("cannot start llama.cpp: {e}"))?;
            if std::env::var_os("SHM_RUNTIME_LLAMA_LOG").is_none() {
                b.void_logs();
            }
            Ok(b)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A loaded GGUF model.
///
/// # Examples
///
/// ```no_run
/// use shm_runtime::backend::{gguf::Gguf, Backend};
/// use shm_runtime::protocol::Task;
/// use shm_runtime::ModelConfig;
///
/// let mut model = ModelConfig::new("tiny", "gguf");
/// model.path = Some("models/tiny/tiny-llama.gguf".into());
/// let gguf = Gguf::load(&model)?;
/// assert_eq!(gguf.tasks(), [Task::Generate]);
/// assert!(gguf.stepper()?.is_some()); // it decodes step by step
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Gguf {
    model: LlamaModel,
    template: Option<LlamaChatTemplate>,
    context: u32,
    parallel: u32,
    batch: u32,
    threads: i32,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("context", &self.context)
            .field("parallel", &self.parallel)
            .field("batch", &self.batch)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

const KNOWN_OPTIONS: [&str; 4] = ["context", "parallel", "batch", "threads"];

fn opt_u32(
    m: &ModelConfig,
    key: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<Option<u32>, String> {
    match m.options.get(key) {
        None => Ok(None),
        Some(v) => {
            let i = v
                .as_integer()
                .and_then(|i| u32::try_from(i).ok())
                .filter(|i| range.contains(i))
                .ok_or_else(|| {
                    format!(
                        "option {key} must be an integer in {}..={}",
                        range.start(),
                        range.end()
                    )
                })?;
            Ok(Some(i))
        }
    }
}

impl Gguf {
    /// Loads the model `m` names.
    ///
    /// # Errors
    ///
    /// A message naming what is missing or wrong.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::gguf::Gguf;
    /// use shm_runtime::ModelConfig;
    ///
    /// let mut model = ModelConfig::new("tiny", "gguf");
    /// assert_eq!(Gguf::load(&model).unwrap_err(), "a GGUF model needs a path to its .gguf file");
    /// model.options.insert("ctx".into(), 4096.into());
    /// assert!(Gguf::load(&model).unwrap_err().starts_with("unknown option \"ctx\""));
    /// ```
    pub fn load(m: &ModelConfig) -> Result<Gguf, String> {
        for k in m.options.keys() {
            if !KNOWN_OPTIONS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown option {k:?} (known: {})",
                    KNOWN_OPTIONS.join(", ")
                ));
            }
        }
        match m.task.as_deref() {
            None | Some("generate") => {}
            Some(t) => {
                return Err(format!(
                    "task {t:?}: a GGUF model generates (task generate)"
                ))
            }
        }
        let path = m
            .path
            .as_deref()
            .ok_or("a GGUF model needs a path to its .gguf file")?;
        if !path.is_file() {
            return Err(format!(
                "model file {} not found (scripts/setup.sh gguf fetches the project's models)",
                path.display()
            ));
        }
        let backend = llama()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let trained = model.n_ctx_train().max(1);
        let context = opt_u32(m, "context", 16..=1 << 20)?
            .unwrap_or(2048)
            .min(trained);
        let parallel = opt_u32(m, "parallel", 1..=64)?.unwrap_or(4);
        let batch = opt_u32(m, "batch", 1..=1 << 16)?.unwrap_or(512);
        // One thread by default: llama.cpp's extra threads wait for each other at every layer by
        // spinning, and on a small machine shared with clients and other models a descheduled
        // spinner stalls the whole step (measured here: 60 tokens/s alone with one thread, 92 with
        // two, but 3-10 with two once another model's threads had run in the same process).
        let threads = opt_u32(m, "threads", 1..=256)?.unwrap_or(1) as i32;
        let template = model.chat_template(None).ok();
        Ok(Gguf {
            model,
            template,
            context,
            parallel,
            batch,
            threads,
        })
    }
}

const TASKS: [Task; 1] = [Task::Generate];

impl Backend for Gguf {
    fn tasks(&self) -> &[Task] {
        &TASKS
    }

    /// llama.cpp's threads: started by the worker for each decode, so they share its CPU mask.
    fn threads(&self) -> usize {
        self.threads.max(1) as usize
    }

    fn run(
        &self,
        _req: &ArchivedRequest,
        _ctx: &mut dyn RunContext,
        _out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        Err(BackendError::Failed(
            "GGUF models run through the lane's stepper".into(),
        ))
    }

    fn stepper(&self) -> Result<Option<Box<dyn Stepper + '_>>, BackendError> {
        let backend = llama().map_err(BackendError::Failed)?;
        let n_ctx = self.context * self.parallel;
        // llama.cpp caps a decode at the context size.
        let n_batch = self.batch.min(n_ctx);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_seq_max(self.parallel)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let ctx = self
            .model
            .new_context(backend, params)
            .map_err(|e| BackendError::Failed(format!("cannot create a llama.cpp context: {e}")))?;
        let n_batch = ctx.n_batch().min(n_batch);
        Ok(Some(Box::new(GgufStepper {
            g: self,
            ctx,
            n_batch,
            batch: LlamaBatch::new(n_batch as usize, self.parallel as i32),
            seqs: (0..self.parallel).map(|_| None).collect(),
        })))
    }
}

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
struct GgufStepper<'g> {
    g: &'g Gguf,
    ctx: LlamaContext<'g>,
    /// Most tokens per decode.
    n_batch: u32,
    batch: LlamaBatch<'static>,
    seqs: Vec<Option<Seq>>,
}

impl GgufStepper<'_> {
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

    /// The request's sampler chain (see the module docs), primed with the prompt for the
    /// repetition penalty.
    fn sampler(
        &self,
        req: &ArchivedRequest,
        prompt: &[LlamaToken],
        max: u32,
    ) -> Result<LlamaSampler, BackendError> {
        let p = &req.params;
        let (temp, top_k, top_p, min_p, penalty, presence, frequency) = (
            p.temperature.to_native(),
            p.top_k.to_native(),
            p.top_p.to_native(),
            p.min_p.to_native(),
            p.repetition_penalty.to_native(),
            p.presence_penalty.to_native(),
            p.frequency_penalty.to_native(),
        );
        // The protocol's limits checked these ranges already; llama.cpp must never see others.
        let invalid = |m: String| Err(BackendError::Invalid(m));
        if !(temp.is_finite() && temp >= 0.0) {
            return invalid(format!("temperature {temp} must be >= 0"));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return invalid(format!("top_p {top_p} must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&min_p) {
            return invalid(format!("min_p {min_p} must be in 0..=1"));
        }
        let penalty = if penalty == 0.0 { 1.0 } else { penalty };
        if !(penalty.is_finite() && penalty > 0.0) {
            return invalid(format!("repetition_penalty {penalty} must be > 0"));
        }
        if !(presence.is_finite() && frequency.is_finite()) {
            return invalid("presence and frequency penalties must be finite".into());
        }
        let n_vocab = self.g.model.vocab().n_tokens();
        let mut chain = Vec::new();
        if penalty != 1.0 {
            // Over the prompt too: this sampler alone is primed with it, below.
            let mut repetition = LlamaSampler::penalties(n_vocab, 64, penalty, 0.0, 0.0);
            repetition.accept_many(prompt);
            chain.push(repetition);
        }
        if presence != 0.0 || frequency != 0.0 {
            // Over every token generated (the window holds all of them), not the prompt.
            let window = max.min(i32::MAX as u32) as i32;
            chain.push(LlamaSampler::penalties(
                n_vocab, window, 1.0, frequency, presence,
            ));
        }
        if temp == 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if top_k > 0 {
                chain.push(LlamaSampler::top_k(top_k.min(i32::MAX as u32) as i32));
            }
            if top_p < 1.0 {
                chain.push(LlamaSampler::top_p(top_p, 1));
            }
            if min_p > 0.0 {
                chain.push(LlamaSampler::min_p(min_p, 1));
            }
            chain.push(LlamaSampler::temp(temp));
            chain.push(LlamaSampler::dist(sampler_seed(p.seed.to_native())));
        }
        Ok(LlamaSampler::chain_simple(chain))
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
        let sampler = self.sampler(req, &prompt, max)?;
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

/// The seed llama.cpp's sampler gets for a request's 64-bit `seed` (its `dist` sampler takes 32
/// bits): the two halves xor-ed, `hi ^ lo`. Changing any one bit of the seed changes the result,
/// and a seed below 2^32 is llama.cpp's own seed of that value (so a run can be compared with
/// llama.cpp's tools); 2^32 seeds share each result (for example `x` and `x << 32`), as any fold
/// to 32 bits must. The one exception: llama.cpp takes `0xFFFF_FFFF` (`LLAMA_DEFAULT_SEED`) to
/// mean "a new random seed each time", so that result becomes `0xFFFF_FFFE` and sampling stays
/// reproducible. This is the only place where a seed loses bits.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::gguf::sampler_seed;
///
/// assert_eq!(sampler_seed(42), 42); // llama.cpp's own seed 42
/// assert_eq!(sampler_seed((1 << 32) | 42), 1 ^ 42); // the high half counts too
/// assert_eq!(sampler_seed(u64::from(u32::MAX)), u32::MAX - 1); // never "a random seed"
/// ```
pub fn sampler_seed(seed: u64) -> u32 {
    const LLAMA_DEFAULT_SEED: u32 = u32::MAX;
    let folded = (seed >> 32) as u32 ^ seed as u32;
    if folded == LLAMA_DEFAULT_SEED {
        folded - 1
    } else {
        folded
    }
}

/// The log-probability of `chosen` under the softmax of `logits`, with the `k` most likely
/// tokens (most likely first; `text` names each).
fn token_logprob(
    logits: &[f32],
    chosen: LlamaToken,
    k: usize,
    text: impl Fn(LlamaToken) -> String,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    let logprob = |l: f32| (l - log_z).min(0.0);
    // The k largest, kept sorted in a short list (k is at most a few dozen).
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if top.len() == k && top.last().is_some_and(|&(least, _)| l <= least) {
            continue;
        }
        let at = top.partition_point(|&(x, _)| x >= l);
        top.insert(at, (l, i));
        top.truncate(k);
    }
    let chosen_logit = usize::try_from(chosen.0)
        .ok()
        .and_then(|i| logits.get(i))
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    TokenLogprob {
        logprob: logprob(chosen_logit),
        text: text(chosen),
        top: top
            .into_iter()
            .map(|(l, i)| {
                let token = LlamaToken(i as i32);
                TopLogprob {
                    token: i as u32,
                    logprob: logprob(l),
                    text: text(token),
                }
            })
            .collect(),
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
    fn every_bit_of_the_seed_counts_and_small_seeds_stay_as_they_are() {
        assert_eq!(sampler_seed(42), 42);
        assert_ne!(sampler_seed(1), sampler_seed(1 | (1 << 40)));
        assert_ne!(sampler_seed(1 << 63), sampler_seed(0));
        // llama.cpp's "random seed" is never asked for.
        assert_ne!(sampler_seed(u64::from(u32::MAX)), u32::MAX);
        assert_ne!(sampler_seed(u64::MAX << 32), u32::MAX);
    }

    #[test]
    fn logprobs_are_normalised_and_the_top_tokens_sorted() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let l = token_logprob(&logits, LlamaToken(1), 3, |t| format!("t{}", t.0));
        let p: f32 = logits.iter().map(|&x| x.exp()).sum();
        assert!((l.logprob - (3.0 - p.ln())).abs() < 1e-5, "{l:?}");
        let ids: Vec<u32> = l.top.iter().map(|t| t.token).collect();
        assert_eq!(ids, [1, 3, 0], "ties keep the lower id first");
        assert_eq!(l.top[2].text, "t0");
        assert!(l.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(l.top.iter().all(|t| t.logprob <= 0.0));
    }

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
