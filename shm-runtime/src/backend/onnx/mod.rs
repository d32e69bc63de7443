//! ONNX models through ONNX Runtime (`ort`, with the shared library loaded at run time): text
//! classification, text embeddings, and raw named tensors, with dynamic batching of text requests.
//!
//! Model options (the `options` table of a model in the server's TOML file; paths are relative to
//! the model file's directory):
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `tokenizer` | `tokenizer.json` for text input | `tokenizer.json` next to the model |
//! | `max_length` | tokens per text, longer texts are truncated | 256 |
//! | `output` | output to read (logits, hidden states, or a pooled embedding) | the first output |
//! | `pooling` | `mean` (with the attention mask), `cls`, or `none` (the output is already one row per text) | `mean` |
//! | `normalize` | L2-normalise embeddings | `true` |
//! | `labels` | class names, in logit order (or `labels_file`, one per line) | `labels.txt` or `<model>.labels.txt` next to the model |
//! | `intra_threads`, `inter_threads` | ONNX Runtime thread pools (the worker's own thread counts) | ONNX Runtime's defaults (one per core) |
//! | `optimization` | `disable`, `basic`, `extended` or `all` | `all` |
//! | `max_batch` | most text requests run together | 8 |
//! | `max_delay_us` | how long a partial batch waits for more requests, while other clients are connected | 500 |
//!
//! The task (`classify`, `embed` or `tensors`) is the model's `task`.
//!
//! ONNX Runtime itself is found by [`find_library`]: `ORT_DYLIB_PATH`, then the project's cache
//! (`scripts/setup.sh` puts it there), then an `onnxruntime` Python package installed on the machine.
//!
//! # Examples
//!
//! ```no_run
//! use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
//!
//! let mut model = ModelConfig::new("tiny", "onnx");
//! model.task = Some("embed".into());
//! model.path = Some("models/tiny/embed.onnx".into());
//! model.options.insert("pooling".into(), "mean".into());
//! let _server = Server::start(ServerConfig::new("svc", vec![model]))?;
//! let e = Client::connect("svc")?.embed("tiny", &["a cat", "a dog"])?;
//! assert_eq!(e.len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use tokenizers::Tokenizer;

use crate::backend::writer::Out;
use crate::backend::{Backend, BackendError, Batching, RunContext};
use crate::config::ModelConfig;
use crate::protocol::{ArchivedRequest, Task};

mod library;
mod tensors;
mod text;

pub use library::{environment, find_library, ORT_VERSION};

/// How token states become one embedding per text.
///
/// # Examples
///
/// ```no_run
/// use shm_runtime::backend::onnx::{Onnx, Pooling};
/// use shm_runtime::ModelConfig;
///
/// let mut model = ModelConfig::new("tiny", "onnx");
/// model.task = Some("embed".into());
/// model.path = Some("models/tiny/embed.onnx".into());
/// model.options.insert("pooling".into(), "cls".into());
/// let onnx = Onnx::load(&model)?;
/// // Chosen by the `pooling` option; shown in the model's debug output.
/// assert!(format!("{onnx:?}").contains(&format!("pooling: {:?}", Pooling::Cls)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    Mean,
    /// The first token's state.
    Cls,
    /// The output already has one row per text.
    None,
}

/// Text inputs of a BERT-shaped model.
struct TextModel {
    tokenizer: Tokenizer,
    max_len: usize,
    vocab: u32,
    pad_id: i64,
    ids: String,
    mask: Option<String>,
    types: Option<String>,
}

/// Worker-owned buffers for a batch's inputs, kept between runs.
#[derive(Default)]
struct Scratch {
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
    rows: Vec<Vec<u32>>,
}

/// Rows a text model runs together unless its `max_batch` option says otherwise.
///
/// # Examples
///
/// ```no_run
/// use shm_runtime::backend::onnx::{Onnx, DEFAULT_MAX_BATCH};
/// use shm_runtime::backend::Backend;
/// use shm_runtime::ModelConfig;
///
/// let mut model = ModelConfig::new("tiny", "onnx");
/// model.task = Some("embed".into());
/// model.path = Some("models/tiny/embed.onnx".into());
/// let onnx = Onnx::load(&model)?; // no `max_batch` option
/// assert_eq!(onnx.batching().map(|b| b.max_batch), Some(DEFAULT_MAX_BATCH));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const DEFAULT_MAX_BATCH: usize = 8;

/// A loaded ONNX model.
///
/// # Examples
///
/// ```no_run
/// use shm_runtime::backend::{onnx::Onnx, Backend};
/// use shm_runtime::protocol::Task;
/// use shm_runtime::ModelConfig;
///
/// let mut model = ModelConfig::new("tiny", "onnx");
/// model.task = Some("classify".into());
/// model.path = Some("models/tiny/classify.onnx".into());
/// let onnx = Onnx::load(&model)?; // labels from classify.labels.txt beside it
/// assert_eq!(onnx.tasks(), [Task::Classify]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Onnx {
    task: Task,
    tasks: [Task; 1],
    session: Mutex<(Session, Scratch)>,
    text: Option<TextModel>,
    output: String,
    pooling: Pooling,
    normalize: bool,
    labels: Vec<String>,
    inputs: Vec<(String, TensorElementType, Vec<i64>)>,
    batching: Batching,
    /// Threads a run keeps busy: ONNX Runtime's intra-op pool, the worker's own thread included.
    threads: usize,
}

impl std::fmt::Debug for Onnx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Onnx")
            .field("task", &self.task)
            .field("output", &self.output)
            .field("pooling", &self.pooling)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

fn opt_str<'a>(m: &'a ModelConfig, key: &str) -> Result<Option<&'a str>, String> {
    match m.options.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("option {key} must be a string")),
    }
}

fn opt_int(
    m: &ModelConfig,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, String> {
    match m.options.get(key) {
        None => Ok(None),
        Some(v) => {
            let i = v
                .as_integer()
                .ok_or_else(|| format!("option {key} must be an integer"))?;
            if !range.contains(&i) {
                return Err(format!(
                    "option {key} = {i} is out of range {}..={}",
                    range.start(),
                    range.end()
                ));
            }
            Ok(Some(i))
        }
    }
}

const KNOWN_OPTIONS: [&str; 12] = [
    "tokenizer",
    "max_length",
    "output",
    "pooling",
    "normalize",
    "labels",
    "labels_file",
    "intra_threads",
    "inter_threads",
    "optimization",
    "max_batch",
    "max_delay_us",
];

impl Onnx {
    /// Loads the model `m` names.
    ///
    /// # Errors
    ///
    /// A message naming what is missing or wrong (library, model file, tokenizer, options).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::onnx::Onnx;
    /// use shm_runtime::ModelConfig;
    ///
    /// let mut model = ModelConfig::new("tiny", "onnx");
    /// model.path = Some("models/tiny/embed.onnx".into());
    /// let err = Onnx::load(&model).unwrap_err();
    /// assert_eq!(err, "an ONNX model needs a task: classify, embed or tensors");
    /// model.task = Some("generate".into());
    /// let err = Onnx::load(&model).unwrap_err();
    /// assert!(err.starts_with("task \"generate\" is not an ONNX task"));
    /// ```
    pub fn load(m: &ModelConfig) -> Result<Onnx, String> {
        for k in m.options.keys() {
            if !KNOWN_OPTIONS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown option {k:?} (known: {})",
                    KNOWN_OPTIONS.join(", ")
                ));
            }
        }
        let task = match m.task.as_deref() {
            Some("classify") => Task::Classify,
            Some("embed") => Task::Embed,
            Some("tensors") => Task::Tensors,
            Some(t) => {
                return Err(format!(
                    "task {t:?} is not an ONNX task (classify, embed, tensors)"
                ))
            }
            None => return Err("an ONNX model needs a task: classify, embed or tensors".into()),
        };
        let path = m
            .path
            .as_ref()
            .ok_or("an ONNX model needs a path to its .onnx file")?;
        if !path.is_file() {
            return Err(format!(
                "model file {} not found (scripts/setup.sh fetches and builds the project's models)",
                path.display()
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let env = environment()?;
        let mut b = Session::builder(env).map_err(|e| e.to_string())?;
        let level = match opt_str(m, "optimization")?.unwrap_or("all") {
            "disable" => GraphOptimizationLevel::Disable,
            "basic" => GraphOptimizationLevel::Level1,
            "extended" => GraphOptimizationLevel::Level2,
            "all" => GraphOptimizationLevel::All,
            o => {
                return Err(format!(
                    "optimization {o:?}: use disable, basic, extended or all"
                ))
            }
        };
        b = b
            .with_optimization_level(level)
            .map_err(|e| e.to_string())?;
        if let Some(n) = opt_int(m, "intra_threads", 0..=256)? {
            b = b
                .with_intra_threads(n as usize)
                .map_err(|e| e.to_string())?;
        }
        if let Some(n) = opt_int(m, "inter_threads", 0..=256)? {
            b = b
                .with_inter_threads(n as usize)
                .map_err(|e| e.to_string())?;
        }
        // ONNX Runtime's default intra-op pool has a thread per core.
        let threads = match opt_int(m, "intra_threads", 0..=256)? {
            Some(n) if n > 0 => n as usize,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let session = b
            .commit_from_file(path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let inputs: Vec<(String, TensorElementType, Vec<i64>)> = session
            .inputs()
            .iter()
            .map(|i| match i.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    Ok((i.name().to_owned(), *ty, shape.to_vec()))
                }
                other => Err(format!("input {:?} is not a tensor ({other:?})", i.name())),
            })
            .collect::<Result<_, _>>()?;
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        let output = match opt_str(m, "output")? {
            Some(o) if outputs.iter().any(|n| n == o) => o.to_owned(),
            Some(o) => {
                return Err(format!(
                    "the model has no output {o:?} (it has {outputs:?})"
                ))
            }
            None => outputs.first().cloned().ok_or("the model has no outputs")?,
        };
        let text = if task == Task::Tensors {
            None
        } else {
            Some(Self::text_model(m, dir, &inputs)?)
        };
        let pooling = match opt_str(m, "pooling")?.unwrap_or("mean") {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "none" => Pooling::None,
            p => return Err(format!("pooling {p:?}: use mean, cls or none")),
        };
        let normalize = match m.options.get("normalize") {
            None => true,
            Some(v) => v
                .as_bool()
                .ok_or("option normalize must be true or false")?,
        };
        let labels = if task == Task::Classify {
            Self::labels(m, path, dir)?
        } else {
            Vec::new()
        };
        let batching = Batching {
            max_batch: opt_int(m, "max_batch", 1..=256)?.unwrap_or(DEFAULT_MAX_BATCH as i64)
                as usize,
            max_delay: Duration::from_micros(
                opt_int(m, "max_delay_us", 0..=1_000_000)?.unwrap_or(500) as u64,
            ),
        };
        Ok(Onnx {
            task,
            tasks: [task],
            session: Mutex::new((session, Scratch::default())),
            text,
            output,
            pooling,
            normalize,
            labels,
            inputs,
            batching,
            threads,
        })
    }

    fn text_model(
        m: &ModelConfig,
        dir: &Path,
        inputs: &[(String, TensorElementType, Vec<i64>)],
    ) -> Result<TextModel, String> {
        let tok_path = dir.join(opt_str(m, "tokenizer")?.unwrap_or("tokenizer.json"));
        if !tok_path.is_file() {
            return Err(format!(
                "tokenizer {} not found (set option tokenizer, or run scripts/setup.sh)",
                tok_path.display()
            ));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| format!("cannot read {}: {e}", tok_path.display()))?;
        let max_len = opt_int(m, "max_length", 2..=8192)?.unwrap_or(256) as usize;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| format!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None);
        let find = |names: &[&str]| {
            inputs
                .iter()
                .find(|(n, ..)| names.contains(&n.as_str()))
                .map(|(n, ..)| n.clone())
        };
        let ids = find(&["input_ids"]).ok_or_else(|| {
            format!(
                "a text model needs an input named input_ids (it has {:?})",
                inputs.iter().map(|i| &i.0).collect::<Vec<_>>()
            )
        })?;
        for (n, ty, _) in inputs {
            if *ty != TensorElementType::Int64 {
                return Err(format!(
                    "text model input {n:?} must be int64, it is {ty:?}"
                ));
            }
            if !["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str()) {
                return Err(format!(
                    "text model input {n:?} is not one of input_ids, attention_mask, token_type_ids"
                ));
            }
        }
        let pad_id = tokenizer
            .get_padding()
            .map(|p| i64::from(p.pad_id))
            .or_else(|| tokenizer.token_to_id("[PAD]").map(i64::from))
            .unwrap_or(0);
        Ok(TextModel {
            vocab: tokenizer.get_vocab_size(true) as u32,
            tokenizer,
            max_len,
            pad_id,
            ids,
            mask: find(&["attention_mask"]),
            types: find(&["token_type_ids"]),
        })
    }

    fn labels(m: &ModelConfig, path: &Path, dir: &Path) -> Result<Vec<String>, String> {
        if let Some(v) = m.options.get("labels") {
            let arr = v
                .as_array()
                .ok_or("option labels must be an array of strings")?;
            return arr
                .iter()
                .map(|l| {
                    l.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| "option labels must be an array of strings".to_owned())
                })
                .collect();
        }
        let candidates: Vec<PathBuf> = match opt_str(m, "labels_file")? {
            Some(f) => vec![dir.join(f)],
            None => vec![dir.join("labels.txt"), path.with_extension("labels.txt")],
        };
        for c in &candidates {
            if c.is_file() {
                let text = std::fs::read_to_string(c)
                    .map_err(|e| format!("cannot read {}: {e}", c.display()))?;
                return Ok(text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect());
            }
        }
        Ok(Vec::new())
    }
}

impl Backend for Onnx {
    fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn run(
        &self,
        req: &ArchivedRequest,
        _ctx: &mut dyn RunContext,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        if self.task == Task::Tensors {
            return self.run_tensors(req, out);
        }
        self.run_text(&[req], std::slice::from_mut(out))
            .pop()
            .unwrap_or_else(|| Err(BackendError::Failed("no result".into())))
    }

    fn batching(&self) -> Option<Batching> {
        (self.task != Task::Tensors && self.batching.max_batch > 1).then_some(self.batching)
    }

    fn run_batch(
        &self,
        reqs: &[&ArchivedRequest],
        outs: &mut [Out<'_>],
    ) -> Vec<Result<(), BackendError>> {
        self.run_text(reqs, outs)
    }
}
