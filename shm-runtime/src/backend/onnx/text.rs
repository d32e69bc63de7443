//! Text models: tokenize, run a batch, pool or score each row into its answer.

use ort::value::TensorRef;

use super::{Onnx, Pooling};
use crate::backend::writer::Out;
use crate::backend::BackendError;
use crate::protocol::{tokens_native, ArchivedInput, ArchivedRequest, Body, LabelScore, Task};

impl Onnx {
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
    pub(super) fn run_text(
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
                Ok(out.body(Body::Classification(scores))?)
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
}
