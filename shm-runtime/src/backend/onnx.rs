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

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};
use tokenizers::Tokenizer;

use crate::backend::writer::{Elem, Out, TensorsWriter};
use crate::backend::{Backend, BackendError, Batching, RunContext};
use crate::config::{cache_dir, ModelConfig};
use crate::protocol::{
    f32_native, i32_native, i64_native, tokens_native, u64_native, ArchivedInput, ArchivedRequest,
    ArchivedTensorData, Body, LabelScore, Task,
};

/// The ONNX Runtime version the project is built and tested against.
pub const ORT_VERSION: &str = "1.32.0";

/// Finds the ONNX Runtime shared library: `ORT_DYLIB_PATH`, then
/// `<cache>/onnxruntime/libonnxruntime.so.1.32.0`, then the `capi` folder of an `onnxruntime`
/// Python package.
///
/// # Errors
///
/// A message saying where it looked and how to get the library.
pub fn find_library() -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!(
            "ORT_DYLIB_PATH is set to {}, which is not a file",
            p.display()
        ));
    }
    looked.push("ORT_DYLIB_PATH (unset)".to_owned());
    let cached = cache_dir()
        .join("onnxruntime")
        .join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if cached.is_file() {
        return Ok(cached);
    }
    looked.push(cached.display().to_string());
    for py in ["python3", "python"] {
        let out = std::process::Command::new(py)
            .args([
                "-c",
                "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
            ])
            .stderr(std::process::Stdio::null())
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut libs: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                libs.sort();
                if let Some(lib) = libs.pop() {
                    return Ok(lib);
                }
            }
            looked.push(format!("{} (python onnxruntime package)", dir.display()));
            break;
        }
    }
    looked.push("an onnxruntime Python package (none installed)".to_owned());
    Err(format!(
        "ONNX Runtime {ORT_VERSION} not found (looked at: {}). Run scripts/setup.sh to fetch it \
         into the cache, or point ORT_DYLIB_PATH at libonnxruntime.so",
        looked.join("; ")
    ))
}

/// The process's ONNX Runtime environment, created (and the library loaded) on first use.
///
/// # Errors
///
/// When the library cannot be found or loaded.
pub fn environment() -> Result<&'static ort::environment::Environment, String> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = find_library()?;
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?
            .with_name("shm-runtime")
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// How token states become one embedding per text.
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

/// A loaded ONNX model.
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
            max_batch: opt_int(m, "max_batch", 1..=256)?.unwrap_or(8) as usize,
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

    /// The token ids of one text request (truncated to `max_length`).
    fn ids_of(&self, req: &ArchivedRequest) -> Result<Vec<u32>, BackendError> {
        let tm = self
            .text
            .as_ref()
            .ok_or_else(|| BackendError::Invalid("this model takes tensors, not text".into()))?;
        let ids = match &req.input {
            ArchivedInput::Text(t) => {
                if t.trim().is_empty() {
                    return Err(BackendError::Invalid("the text is empty".into()));
                }
                tm.tokenizer
                    .encode(t.as_str(), true)
                    .map_err(|e| BackendError::Invalid(format!("cannot tokenize the text: {e}")))?
                    .get_ids()
                    .to_vec()
            }
            ArchivedInput::Tokens(t) => {
                let t = tokens_native(t);
                if t.is_empty() {
                    return Err(BackendError::Invalid("no token ids".into()));
                }
                if let Some(bad) = t.iter().find(|&&id| id >= tm.vocab) {
                    return Err(BackendError::Invalid(format!(
                        "token id {bad} is outside the vocabulary of {} tokens",
                        tm.vocab
                    )));
                }
                t[..t.len().min(tm.max_len)].to_vec()
            }
            ArchivedInput::Chat(_) => {
                return Err(BackendError::Invalid(
                    "chat input is for generation models; send text or token ids".into(),
                ))
            }
            ArchivedInput::Tensors(_) => {
                return Err(BackendError::Invalid(
                    "this model takes text or token ids, not tensors".into(),
                ))
            }
        };
        Ok(ids)
    }

    /// Runs text requests as one batch and writes each answer.
    fn run_text(
        &self,
        reqs: &[&ArchivedRequest],
        outs: &mut [Out<'_>],
    ) -> Vec<Result<(), BackendError>> {
        let mut results: Vec<Result<(), BackendError>> = Vec::with_capacity(reqs.len());
        let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let (session, scratch) = &mut *guard;
        scratch.rows.clear();
        // Tokenize; requests that fail here are answered alone, the rest run together.
        let mut members = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            match self.ids_of(r) {
                Ok(ids) => {
                    scratch.rows.push(ids);
                    members.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if members.is_empty() {
            return results;
        }
        let tm = self.text.as_ref().expect("text tasks have a text model");
        let b = scratch.rows.len();
        let seq = scratch.rows.iter().map(Vec::len).max().unwrap_or(1);
        scratch.ids.clear();
        scratch.mask.clear();
        scratch.types.clear();
        for row in &scratch.rows {
            scratch.ids.extend(row.iter().map(|&t| i64::from(t)));
            scratch
                .ids
                .extend(std::iter::repeat_n(tm.pad_id, seq - row.len()));
            scratch.mask.extend(std::iter::repeat_n(1, row.len()));
            scratch.mask.extend(std::iter::repeat_n(0, seq - row.len()));
        }
        scratch.types.resize(b * seq, 0);
        let shape = vec![b as i64, seq as i64];
        let run = (|| -> Result<(), String> {
            let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> =
                Vec::with_capacity(3);
            fn t<'d>(shape: &[i64], d: &'d [i64]) -> Result<TensorRef<'d, i64>, String> {
                TensorRef::from_array_view((shape.to_vec(), d)).map_err(|e| e.to_string())
            }
            inputs.push((tm.ids.as_str(), t(&shape, &scratch.ids)?.into()));
            if let Some(m) = &tm.mask {
                inputs.push((m.as_str(), t(&shape, &scratch.mask)?.into()));
            }
            if let Some(ty) = &tm.types {
                inputs.push((ty.as_str(), t(&shape, &scratch.types)?.into()));
            }
            let outputs = session.run(inputs).map_err(|e| e.to_string())?;
            let value = outputs
                .get(&self.output)
                .ok_or_else(|| format!("the model did not produce {:?}", self.output))?;
            let (oshape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("output {:?}: {e}", self.output))?;
            for (row, &i) in members.iter().enumerate() {
                results[i] = self.answer_row(oshape, data, row, &scratch.mask, seq, &mut outs[i]);
            }
            Ok(())
        })();
        if let Err(e) = run {
            for &i in &members {
                results[i] = Err(BackendError::Failed(e.clone()));
            }
        }
        results
    }

    /// Writes the answer of batch row `row` from the output (`shape`, `data`).
    fn answer_row(
        &self,
        shape: &[i64],
        data: &[f32],
        row: usize,
        mask: &[i64],
        seq: usize,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        let fail = |m: String| Err(BackendError::Failed(m));
        match self.task {
            Task::Classify => {
                // Logits [batch, classes].
                let [_, classes] = shape[..] else {
                    return fail(format!(
                        "classifier output has shape {shape:?}, want [batch, classes]"
                    ));
                };
                let classes = classes as usize;
                let logits = &data[row * classes..(row + 1) * classes];
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
                let mut scores: Vec<LabelScore> = logits
                    .iter()
                    .enumerate()
                    .map(|(c, l)| LabelScore {
                        label: self
                            .labels
                            .get(c)
                            .cloned()
                            .unwrap_or_else(|| format!("label_{c}")),
                        score: (l - max).exp() / sum,
                    })
                    .collect();
                scores.sort_by(|a, b| b.score.total_cmp(&a.score));
                out.body(Body::Classification(scores))
            }
            Task::Embed => {
                let normalize = self.normalize;
                let finish = |v: &mut [f32]| {
                    if normalize {
                        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        v.iter_mut().for_each(|x| *x /= n);
                    }
                };
                match (self.pooling, shape) {
                    (Pooling::None, &[_, h]) => {
                        let h = h as usize;
                        out.embedding(h, |v| {
                            v.copy_from_slice(&data[row * h..(row + 1) * h]);
                            finish(v);
                            Ok(())
                        })
                    }
                    (Pooling::Cls, &[_, s, h]) => {
                        let (s, h) = (s as usize, h as usize);
                        out.embedding(h, |v| {
                            v.copy_from_slice(&data[row * s * h..row * s * h + h]);
                            finish(v);
                            Ok(())
                        })
                    }
                    (Pooling::Mean, &[_, s, h]) => {
                        let (s, h) = (s as usize, h as usize);
                        let m = &mask[row * seq..(row + 1) * seq];
                        out.embedding(h, |v| {
                            v.fill(0.0);
                            let mut kept = 0.0f32;
                            for t in 0..s.min(seq) {
                                if m[t] != 0 {
                                    kept += 1.0;
                                    let st = &data[(row * s + t) * h..(row * s + t + 1) * h];
                                    v.iter_mut().zip(st).for_each(|(a, b)| *a += b);
                                }
                            }
                            let kept = kept.max(1.0);
                            v.iter_mut().for_each(|x| *x /= kept);
                            finish(v);
                            Ok(())
                        })
                    }
                    (p, s) => fail(format!(
                        "pooling {p:?} does not fit output {:?} of shape {s:?}",
                        self.output
                    )),
                }
            }
            _ => fail("not a text task".into()),
        }
    }

    /// Runs one tensors request: inputs are views of the archived request's data (no copy), the
    /// outputs are copied once into the answer's chunk.
    fn run_tensors(&self, req: &ArchivedRequest, out: &mut Out<'_>) -> Result<(), BackendError> {
        let ArchivedInput::Tensors(ts) = &req.input else {
            return Err(BackendError::Invalid(
                "this model takes tensors (Input::Tensors)".into(),
            ));
        };
        let invalid = |m: String| BackendError::Invalid(m);
        let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(ts.len());
        for t in ts.iter() {
            let name = t.name.as_str();
            let Some((_, ty, want)) = self.inputs.iter().find(|(n, ..)| n == name) else {
                return Err(invalid(format!(
                    "the model has no input {name:?} (it takes {:?})",
                    self.inputs.iter().map(|i| &i.0).collect::<Vec<_>>()
                )));
            };
            let shape: Vec<i64> = u64_native(&t.shape)
                .iter()
                .map(|&d| {
                    i64::try_from(d).map_err(|_| invalid(format!("dimension {d} is too large")))
                })
                .collect::<Result<_, _>>()?;
            if shape.len() != want.len() || shape.iter().zip(want).any(|(&d, &w)| w >= 0 && d != w)
            {
                return Err(invalid(format!(
                    "input {name:?} has shape {shape:?}, the model wants {want:?} (-1: any)"
                )));
            }
            let elems: i64 = shape.iter().product();
            if elems as usize != t.data.len() {
                return Err(invalid(format!(
                    "input {name:?}: shape {shape:?} holds {elems} elements, the data has {}",
                    t.data.len()
                )));
            }
            let view: Result<ort::session::SessionInputValue<'_>, ort::Error> = match (&t.data, ty)
            {
                (ArchivedTensorData::F32(v), TensorElementType::Float32) => {
                    TensorRef::from_array_view((shape, f32_native(v))).map(Into::into)
                }
                (ArchivedTensorData::I64(v), TensorElementType::Int64) => {
                    TensorRef::from_array_view((shape, i64_native(v))).map(Into::into)
                }
                (ArchivedTensorData::I32(v), TensorElementType::Int32) => {
                    TensorRef::from_array_view((shape, i32_native(v))).map(Into::into)
                }
                (ArchivedTensorData::U8(v), TensorElementType::Uint8) => {
                    TensorRef::from_array_view((shape, v.as_slice())).map(Into::into)
                }
                (d, ty) => {
                    let got = match d {
                        ArchivedTensorData::F32(_) => "f32",
                        ArchivedTensorData::I64(_) => "i64",
                        ArchivedTensorData::I32(_) => "i32",
                        ArchivedTensorData::U8(_) => "u8",
                    };
                    return Err(invalid(format!(
                        "input {name:?} is {got}, the model wants {ty:?}"
                    )));
                }
            };
            inputs.push((name, view.map_err(|e| BackendError::Failed(e.to_string()))?));
        }
        if let Some((missing, ..)) = self
            .inputs
            .iter()
            .find(|(n, ..)| !ts.iter().any(|t| t.name.as_str() == n))
        {
            return Err(invalid(format!("input {missing:?} is missing")));
        }
        let mut guard = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = guard
            .0
            .run(inputs)
            .map_err(|e| BackendError::Failed(e.to_string()))?;
        let named: Vec<(&str, ort::value::ValueRef<'_>)> = outputs.iter().collect();
        let mut payload = 0;
        for (name, v) in &named {
            let Some(ValueType::Tensor { ty, shape, .. }) = Some(v.dtype()) else {
                return Err(BackendError::Failed(format!(
                    "output {name:?} is not a tensor"
                )));
            };
            let n = shape.num_elements();
            payload += match ty {
                TensorElementType::Float32 => TensorsWriter::bytes_for::<f32>(name, shape.len(), n),
                TensorElementType::Int64 => TensorsWriter::bytes_for::<i64>(name, shape.len(), n),
                TensorElementType::Int32 => TensorsWriter::bytes_for::<i32>(name, shape.len(), n),
                TensorElementType::Uint8 | TensorElementType::Bool => {
                    TensorsWriter::bytes_for::<u8>(name, shape.len(), n)
                }
                other => {
                    return Err(BackendError::Failed(format!(
                    "output {name:?} has element type {other:?}, which the protocol does not carry"
                )))
                }
            };
        }
        out.tensors(payload, |w| {
            for (name, v) in &named {
                let failed = |e: ort::Error| BackendError::Failed(format!("output {name:?}: {e}"));
                let ValueType::Tensor { ty, shape, .. } = v.dtype() else {
                    unreachable!("checked above");
                };
                let dims: Vec<u64> = shape.iter().map(|&d| d.max(0) as u64).collect();
                match ty {
                    TensorElementType::Float32 => copy_output::<f32>(w, name, &dims, v)?,
                    TensorElementType::Int64 => copy_output::<i64>(w, name, &dims, v)?,
                    TensorElementType::Int32 => copy_output::<i32>(w, name, &dims, v)?,
                    TensorElementType::Uint8 => copy_output::<u8>(w, name, &dims, v)?,
                    TensorElementType::Bool => {
                        let (_, d) = v.try_extract_tensor::<bool>().map_err(failed)?;
                        w.add::<u8>(name, &dims, |o| {
                            o.iter_mut().zip(d).for_each(|(o, &b)| *o = u8::from(b));
                            Ok(())
                        })?;
                    }
                    _ => unreachable!("checked above"),
                }
            }
            Ok(())
        })
    }
}

/// Copies output `v`, of element type `T`, into the answer as tensor `name` (the one copy a
/// `tensors` answer makes).
fn copy_output<T: Elem + PrimitiveTensorElementType + std::fmt::Debug>(
    w: &mut TensorsWriter<'_>,
    name: &str,
    dims: &[u64],
    v: &DynValue,
) -> Result<(), BackendError> {
    let (_, d) = v
        .try_extract_tensor::<T>()
        .map_err(|e| BackendError::Failed(format!("output {name:?}: {e}")))?;
    w.add::<T>(name, dims, |o| {
        o.copy_from_slice(d);
        Ok(())
    })
}

impl Backend for Onnx {
    fn tasks(&self) -> &[Task] {
        &self.tasks
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
