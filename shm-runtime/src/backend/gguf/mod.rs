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

mod sampling;
mod stepper;

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};

pub use sampling::sampler_seed;
use stepper::GgufStepper;

use crate::backend::writer::Out;
use crate::backend::{Backend, BackendError, RunContext, Stepper};
use crate::config::ModelConfig;
use crate::protocol::{ArchivedRequest, Task};

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
        Ok(Some(Box::new(GgufStepper::new(self)?)))
    }
}
