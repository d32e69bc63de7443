//! The direct path: the model run in this process with `ort`, tokenizer and post-processing as
//! the runtime's ONNX backend does them.

use anyhow::{anyhow, bail, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use tokenizers::Tokenizer;

use super::*;

/// The model run in this process with `ort`, as the runtime's backend runs it.
pub struct Direct {
    kind: Kind,
    session: Session,
    pub(super) tokenizer: Tokenizer,
    has_mask: bool,
    has_types: bool,
    pad_id: i64,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// Loads `kind` with the backend's default session options (graph optimisation `All`, ONNX
    /// ONNX Runtime's default thread pools, as the backend) and its tokenizer settings (truncation at 256 tokens, no
    /// padding).
    ///
    /// # Errors
    ///
    /// When ONNX Runtime, the model or its tokenizer cannot be loaded.
    pub fn load(kind: Kind) -> Result<Direct> {
        let env = shm_runtime::backend::onnx::environment().map_err(anyhow::Error::msg)?;
        let path = model_path(kind);
        let session = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_file(&path)
            .with_context(|| format!("loading {}", path.display()))?;
        let tok_path = path.with_file_name("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow!("reading {}: {e}", tok_path.display()))?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_LENGTH,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").map_or(0, i64::from);
        let has = |n: &str| session.inputs().iter().any(|i| i.name() == n);
        let (has_mask, has_types) = (has("attention_mask"), has("token_type_ids"));
        if !has("input_ids") {
            bail!("{} has no input_ids input", path.display());
        }
        Ok(Direct {
            kind,
            session,
            tokenizer,
            has_mask,
            has_types,
            pad_id,
            ids: Vec::new(),
            mask: Vec::new(),
            types: Vec::new(),
        })
    }

    /// Embeds (the L2-normalised mean of the token states) or classifies (softmax of the logits,
    /// in logit order) `text`.
    ///
    /// # Errors
    ///
    /// When tokenizing or the run fails, or the output has an unexpected shape.
    pub fn run(&mut self, text: &str) -> Result<Vec<f32>> {
        self.run_batch(&[text])?
            .pop()
            .ok_or_else(|| anyhow!("no answer"))
    }

    /// [`run`](Self::run) for several texts in one ONNX Runtime call, as the backend runs a batch:
    /// each text tokenized on its own, rows padded to the longest with the attention mask.
    ///
    /// # Errors
    ///
    /// As for [`run`](Self::run).
    pub fn run_batch(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(texts.len());
        for text in texts {
            let enc = self
                .tokenizer
                .encode(*text, true)
                .map_err(|e| anyhow!("tokenizing: {e}"))?;
            rows.push(enc.get_ids().to_vec());
        }
        let b = rows.len();
        let seq = rows.iter().map(Vec::len).max().unwrap_or(1);
        self.ids.clear();
        self.mask.clear();
        for row in &rows {
            self.ids.extend(row.iter().map(|&t| i64::from(t)));
            self.ids
                .extend(std::iter::repeat_n(self.pad_id, seq - row.len()));
            self.mask.extend(std::iter::repeat_n(1, row.len()));
            self.mask.extend(std::iter::repeat_n(0, seq - row.len()));
        }
        self.types.clear();
        self.types.resize(b * seq, 0);
        let shape = [b as i64, seq as i64];
        let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(3);
        inputs.push((
            "input_ids",
            TensorRef::from_array_view((shape, &self.ids[..]))?.into(),
        ));
        if self.has_mask {
            inputs.push((
                "attention_mask",
                TensorRef::from_array_view((shape, &self.mask[..]))?.into(),
            ));
        }
        if self.has_types {
            inputs.push((
                "token_type_ids",
                TensorRef::from_array_view((shape, &self.types[..]))?.into(),
            ));
        }
        let kind = self.kind;
        let outputs = self.session.run(inputs)?;
        let value = outputs
            .get(kind.output())
            .ok_or_else(|| anyhow!("the model did not produce {}", kind.output()))?;
        let (oshape, data) = value.try_extract_tensor::<f32>()?;
        let mut answers = Vec::with_capacity(b);
        for row in 0..b {
            answers.push(match kind {
                Kind::Embed => {
                    let &[_, s, h] = &oshape[..] else {
                        bail!("output shape {oshape:?}, want [batch, seq, hidden]");
                    };
                    let (s, h) = (s as usize, h as usize);
                    let mask = &self.mask[row * seq..(row + 1) * seq];
                    let mut v = vec![0.0f32; h];
                    let mut kept = 0.0f32;
                    for t in 0..s.min(seq) {
                        if mask[t] != 0 {
                            kept += 1.0;
                            let st = &data[(row * s + t) * h..(row * s + t + 1) * h];
                            v.iter_mut().zip(st).for_each(|(a, b)| *a += b);
                        }
                    }
                    let kept = kept.max(1.0);
                    v.iter_mut().for_each(|x| *x /= kept);
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= n);
                    v
                }
                Kind::Classify => {
                    let &[_, classes] = &oshape[..] else {
                        bail!("output shape {oshape:?}, want [batch, classes]");
                    };
                    let classes = classes as usize;
                    let logits = &data[row * classes..(row + 1) * classes];
                    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
                    logits.iter().map(|l| (l - max).exp() / sum).collect()
                }
            });
        }
        Ok(answers)
    }
}
