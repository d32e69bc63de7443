//! Workloads of the ONNX models (feature `onnx`): one short sentence embedded (MiniLM) or
//! classified (MiniLM sentiment) in-process with `ort` directly, the same through the runtime (a
//! server in a child process, a client in this one), two diagnostic paths in between (the
//! runtime's backend called in this process; a client that parks at once), and the requests per
//! second of several concurrent clients against a batching server, beside the rate of `ort` itself
//! on whole batches.
//!
//! The direct path does what the runtime's ONNX backend does for one text, with the same model
//! file, tokenizer, truncation and session options: tokenize, run, then mean pooling with the
//! attention mask and L2 normalisation (embeddings) or a softmax over the logits (classification).
//!
//! | module | what |
//! |---|---|
//! | `direct` | [`Direct`]: the model run in this process with `ort` |
//! | `served` | [`OnnxServer`]: the same model served by the runtime in a child process |
//! | `compare` | [`compare`]: the latency of each path, in interleaved rounds |
//! | `concurrent` | [`concurrent`]: requests per second of concurrent clients |
//! | `batch` | [`batch32`]: texts per second of 32 texts per request |

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use shm_runtime::protocol::Task;
use shm_runtime::ModelConfig;

mod batch;
mod compare;
mod concurrent;
mod direct;
mod served;

pub use batch::{batch32, batch_texts, Batch32, BATCH_TEXTS};
pub use compare::{compare, Compared, Path};
pub use concurrent::{concurrent, Concurrent};
pub use direct::Direct;
pub(crate) use served::run_child;
pub use served::OnnxServer;

/// The sentence every measurement sends.
pub const SENTENCE: &str =
    "I loved this movie: the acting was wonderful and the story kept me hooked.";

/// Pause before each block of requests in [`compare`], longer than ONNX Runtime's pool threads spin
/// after their last work.
const SETTLE: Duration = Duration::from_millis(40);

/// Tokens per text the backend keeps by default (its `max_length` option).
const MAX_LENGTH: usize = 256;

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// all-MiniLM-L6-v2 (int8), mean-pooled and L2-normalised sentence embeddings.
    Embed,
    /// MiniLM sentiment classifier, output `logits`.
    Classify,
}

impl Kind {
    /// The model's folder in the cache's `models` directory.
    fn dir(self) -> &'static str {
        match self {
            Kind::Embed => "minilm",
            Kind::Classify => "minilm-sentiment",
        }
    }

    /// The name the server gives the model.
    pub fn model_name(self) -> &'static str {
        match self {
            Kind::Embed => "minilm",
            Kind::Classify => "sentiment",
        }
    }

    fn task(self) -> Task {
        match self {
            Kind::Embed => Task::Embed,
            Kind::Classify => Task::Classify,
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Kind::Embed => "embed",
            Kind::Classify => "classify",
        }
    }

    /// The model's output to read.
    fn output(self) -> &'static str {
        match self {
            Kind::Embed => "last_hidden_state",
            Kind::Classify => "logits",
        }
    }
}

/// The model file of `kind` in the project's cache (`scripts/setup.sh` puts it there).
pub fn model_path(kind: Kind) -> PathBuf {
    shm_runtime::config::cache_dir()
        .join("models")
        .join(kind.dir())
        .join("model.onnx")
}

/// Checks that ONNX Runtime and both models (with their tokenizers) are present, loading ONNX
/// Runtime into this process (one environment per process).
///
/// # Errors
///
/// A reason that says what is missing and to run scripts/setup.sh.
pub fn check() -> Result<(), String> {
    shm_runtime::backend::onnx::environment().map_err(|e| format!("ONNX Runtime: {e}"))?;
    for kind in [Kind::Embed, Kind::Classify] {
        let model = model_path(kind);
        let dir = model.parent().unwrap_or(&model);
        let mut need = vec![model.clone(), dir.join("tokenizer.json")];
        if kind == Kind::Classify {
            need.push(dir.join("labels.txt"));
        }
        if let Some(missing) = need.iter().find(|p| !p.is_file()) {
            return Err(format!(
                "{} is missing: run scripts/setup.sh to fetch and build the models",
                missing.display()
            ));
        }
    }
    Ok(())
}

/// The runtime's model configuration for `kind`: the onnx backend with its defaults (batching on:
/// max_batch 8, max_delay_us 500), or `max_batch` when given.
pub fn model_config(kind: Kind, max_batch: Option<i64>) -> ModelConfig {
    let mut m = ModelConfig::new(kind.model_name(), "onnx");
    m.path = Some(model_path(kind));
    m.task = Some(kind.arg().to_owned());
    m.options.insert("output".into(), kind.output().into());
    if let Some(b) = max_batch {
        m.options.insert("max_batch".into(), b.into());
    }
    m
}

/// Quantile `q` (0..=1) of `samples` (sorted in place), nearest rank.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    assert!(!samples.is_empty(), "quantile of nothing");
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// User + system CPU time of the calling thread, in clock ticks (/proc/thread-self/stat).
fn thread_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}
