//! Text models: tokenize, run a batch, pool or score each row into its answer.

use ort::value::TensorRef;

use super::{Onnx, Pooling, Scratch, TextModel};
use crate::backend::writer::Out;
use crate::backend::BackendError;
use crate::protocol::{tokens_native, ArchivedInput, ArchivedRequest, Body, LabelScore, Task};

impl Onnx {
    /// The token ids of one text (truncated to `max_length`).
    fn ids_of_text(&self, tm: &TextModel, text: &str) -> Result<Vec<u32>, BackendError> {
        if text.trim().is_empty() {
            return Err(BackendError::Invalid("the text is empty".into()));
        }
        Ok(tm
            .tokenizer
            .encode(text, true)
            .map_err(|e| BackendError::Invalid(format!("cannot tokenize the text: {e}")))?
            .get_ids()
            .to_vec())
    }

    /// The rows of token ids of one text request: one for a text or token ids, one per text for
    /// [`Input::Texts`](crate::protocol::Input::Texts) (answered as a batch answer).
    fn rows_of(&self, req: &ArchivedRequest, rows: &mut Vec<Vec<u32>>) -> Result<(), BackendError> {
        let tm = self
            .text
            .as_ref()
            .ok_or_else(|| BackendError::Invalid("this model takes tensors, not text".into()))?;
        match &req.input {
            ArchivedInput::Text(t) => rows.push(self.ids_of_text(tm, t.as_str())?),
            ArchivedInput::Texts(ts) => {
                let first = rows.len();
                for (i, t) in ts.iter().enumerate() {
                    match self.ids_of_text(tm, t.as_str()) {
                        Ok(ids) => rows.push(ids),
                        Err(e) => {
                            rows.truncate(first);
                            return Err(BackendError::Invalid(format!("text {i}: {e}")));
                        }
                    }
                }
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
                rows.push(t[..t.len().min(tm.max_len)].to_vec());
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
        }
        Ok(())
    }

    /// Runs text requests together and writes each answer. Their rows (one per text) run in
    /// batches of at most `max_batch` rows; a request of one text is answered in place from its
    /// row, a request of several texts once all its rows have run.
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
        let mut owner = Vec::new();
        let mut several = vec![false; reqs.len()];
        for (i, r) in reqs.iter().enumerate() {
            let first = scratch.rows.len();
            match self.rows_of(r, &mut scratch.rows) {
                Ok(()) => {
                    owner.resize(scratch.rows.len(), i);
                    several[i] = matches!(r.input, ArchivedInput::Texts(_));
                    results.push(Ok(()));
                }
                Err(e) => {
                    scratch.rows.truncate(first);
                    results.push(Err(e));
                }
            }
        }
        let mut batches: Vec<Rows> = several
            .iter()
            .map(|&s| if s { Rows::Collecting } else { Rows::One })
            .collect();
        let max_batch = self.batching.max_batch.max(1);
        let mut start = 0;
        while start < scratch.rows.len() {
            let end = (start + max_batch).min(scratch.rows.len());
            let run = self.run_rows(session, scratch, start..end, |row, out: RowOutput<'_>| {
                let i = owner[row];
                if results[i].is_err() {
                    return;
                }
                results[i] = match &mut batches[i] {
                    Rows::One => self.answer_row(&out, &mut outs[i]),
                    Rows::Collecting => {
                        let mut rows = self.collector();
                        let r = self.collect_row(&out, &mut rows);
                        batches[i] = rows;
                        r
                    }
                    rows => self.collect_row(&out, rows),
                };
            });
            if let Err(e) = run {
                for &i in &owner[start..end] {
                    results[i] = Err(BackendError::Failed(e.clone()));
                }
            }
            start = end;
        }
        for (i, rows) in batches.into_iter().enumerate() {
            if results[i].is_ok() {
                results[i] = match rows {
                    Rows::One => Ok(()),
                    Rows::Collecting => Err(BackendError::Failed("no rows ran".into())),
                    Rows::Embeddings { dim, values } => {
                        outs[i].embeddings(values.len() / dim.max(1), dim, |v| {
                            v.copy_from_slice(&values);
                            Ok(())
                        })
                    }
                    Rows::Scores(scores) => outs[i]
                        .body(Body::Classifications(scores))
                        .map_err(BackendError::from),
                };
            }
        }
        results
    }

    /// Runs the rows `range` of `scratch.rows` as one batch, giving each row's output to `each`
    /// (with the row's index in `scratch.rows`).
    fn run_rows(
        &self,
        session: &mut ort::session::Session,
        scratch: &mut Scratch,
        range: std::ops::Range<usize>,
        mut each: impl FnMut(usize, RowOutput<'_>),
    ) -> Result<(), String> {
        let tm = self.text.as_ref().expect("text tasks have a text model");
        let rows = &scratch.rows[range.clone()];
        let b = rows.len();
        let seq = rows.iter().map(Vec::len).max().unwrap_or(1);
        scratch.ids.clear();
        scratch.mask.clear();
        scratch.types.clear();
        for row in rows {
            scratch.ids.extend(row.iter().map(|&t| i64::from(t)));
            scratch
                .ids
                .extend(std::iter::repeat_n(tm.pad_id, seq - row.len()));
            scratch.mask.extend(std::iter::repeat_n(1, row.len()));
            scratch.mask.extend(std::iter::repeat_n(0, seq - row.len()));
        }
        scratch.types.resize(b * seq, 0);
        let shape = vec![b as i64, seq as i64];
        let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(3);
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
        for (k, row) in range.enumerate() {
            each(
                row,
                RowOutput {
                    shape: oshape,
                    data,
                    row: k,
                    mask: &scratch.mask[k * seq..(k + 1) * seq],
                },
            );
        }
        Ok(())
    }

    /// An empty collector of a several-text request's rows, for this model's task.
    fn collector(&self) -> Rows {
        match self.task {
            Task::Classify => Rows::Scores(Vec::new()),
            _ => Rows::Embeddings {
                dim: 0,
                values: Vec::new(),
            },
        }
    }

    /// Adds one row's answer to a several-text request's `rows`.
    fn collect_row(&self, out: &RowOutput<'_>, rows: &mut Rows) -> Result<(), BackendError> {
        match rows {
            Rows::Scores(scores) => scores.push(self.scores_of(out)?),
            Rows::Embeddings { dim, values } => {
                let d = self.embedding_dim(out.shape)?;
                if values.is_empty() {
                    *dim = d;
                }
                let at = values.len();
                values.resize(at + d, 0.0);
                self.embed_row(out, &mut values[at..])?;
            }
            Rows::One | Rows::Collecting => {}
        }
        Ok(())
    }

    /// Writes the answer of one row to `out` in place.
    fn answer_row(&self, row: &RowOutput<'_>, out: &mut Out<'_>) -> Result<(), BackendError> {
        match self.task {
            Task::Classify => Ok(out.body(Body::Classification(self.scores_of(row)?))?),
            Task::Embed => {
                let dim = self.embedding_dim(row.shape)?;
                out.embedding(dim, |v| self.embed_row(row, v))
            }
            _ => Err(BackendError::Failed("not a text task".into())),
        }
    }

    /// The label scores of one row of a classifier's logits `[batch, classes]`, best first.
    fn scores_of(&self, out: &RowOutput<'_>) -> Result<Vec<LabelScore>, BackendError> {
        let [_, classes] = out.shape[..] else {
            return Err(BackendError::Failed(format!(
                "classifier output has shape {:?}, want [batch, classes]",
                out.shape
            )));
        };
        let classes = classes as usize;
        let logits = &out.data[out.row * classes..(out.row + 1) * classes];
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
        Ok(scores)
    }

    /// The dimension of the embeddings an output of `shape` gives with this model's pooling.
    fn embedding_dim(&self, shape: &[i64]) -> Result<usize, BackendError> {
        match (self.pooling, shape) {
            (Pooling::None, &[_, h]) | (Pooling::Cls | Pooling::Mean, &[_, _, h]) => Ok(h as usize),
            (p, s) => Err(BackendError::Failed(format!(
                "pooling {p:?} does not fit output {:?} of shape {s:?}",
                self.output
            ))),
        }
    }

    /// Pools (and normalizes, if the model says so) one row's embedding into `v`.
    fn embed_row(&self, out: &RowOutput<'_>, v: &mut [f32]) -> Result<(), BackendError> {
        let (data, row) = (out.data, out.row);
        match (self.pooling, out.shape) {
            (Pooling::None, &[_, h]) => {
                let h = h as usize;
                v.copy_from_slice(&data[row * h..(row + 1) * h]);
            }
            (Pooling::Cls, &[_, s, h]) => {
                let (s, h) = (s as usize, h as usize);
                v.copy_from_slice(&data[row * s * h..row * s * h + h]);
            }
            (Pooling::Mean, &[_, s, h]) => {
                let (s, h) = (s as usize, h as usize);
                v.fill(0.0);
                let mut kept = 0.0f32;
                for (t, &m) in out.mask.iter().enumerate().take(s) {
                    if m != 0 {
                        kept += 1.0;
                        let st = &data[(row * s + t) * h..(row * s + t + 1) * h];
                        v.iter_mut().zip(st).for_each(|(a, b)| *a += b);
                    }
                }
                let kept = kept.max(1.0);
                v.iter_mut().for_each(|x| *x /= kept);
            }
            _ => {
                return Err(self
                    .embedding_dim(out.shape)
                    .err()
                    .unwrap_or_else(|| BackendError::Failed("unexpected output shape".into())))
            }
        }
        if self.normalize {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= n);
        }
        Ok(())
    }
}

/// One row of a batch's output: the output tensor (`shape`, `data`), the row's index in it, and
/// the row's attention mask.
struct RowOutput<'a> {
    shape: &'a [i64],
    data: &'a [f32],
    row: usize,
    mask: &'a [i64],
}

/// What a request's rows have given so far.
enum Rows {
    /// A request of one text: answered in place from its row.
    One,
    /// A request of several texts whose first row has not run yet.
    Collecting,
    /// A several-text request's embeddings so far (`dim` each).
    Embeddings { dim: usize, values: Vec<f32> },
    /// A several-text request's label scores so far.
    Scores(Vec<Vec<LabelScore>>),
}
