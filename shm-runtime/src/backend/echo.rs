//! The echo backend: answers every task from the input itself, with no model. For tests and for
//! measuring the runtime's own overhead.

use crate::backend::{Backend, BackendError, RunContext};
use crate::protocol::{
    ArchivedInput, ArchivedRequest, ArchivedTask, ArchivedTensorData, Body, FinishReason,
    Generation, LabelScore, StreamChunk, Task, Tensor, TensorData, Usage,
};

/// Echoes its input.
#[derive(Debug, Default)]
pub struct Echo;

const TASKS: [Task; 4] = [Task::Classify, Task::Embed, Task::Generate, Task::Tensors];

fn text_of(input: &ArchivedInput) -> String {
    match input {
        ArchivedInput::Text(t) => t.as_str().to_owned(),
        ArchivedInput::Chat(m) => m
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        ArchivedInput::Tokens(_) | ArchivedInput::Tensors(_) => String::new(),
    }
}

fn tokens_of(input: &ArchivedInput) -> Vec<u32> {
    match input {
        ArchivedInput::Tokens(t) => crate::protocol::tokens_native(t).to_vec(),
        ArchivedInput::Text(t) => t.bytes().map(u32::from).collect(),
        _ => Vec::new(),
    }
}

impl Backend for Echo {
    fn tasks(&self) -> &[Task] {
        &TASKS
    }

    fn run(&self, req: &ArchivedRequest, ctx: &mut dyn RunContext) -> Result<Body, BackendError> {
        match req.task {
            ArchivedTask::Classify => Ok(Body::Classification(vec![LabelScore {
                label: text_of(&req.input),
                score: 1.0,
            }])),
            ArchivedTask::Embed => Ok(Body::Embedding(
                tokens_of(&req.input)
                    .into_iter()
                    .map(|t| t as f32)
                    .collect(),
            )),
            ArchivedTask::Tensors => match &req.input {
                ArchivedInput::Tensors(ts) => Ok(Body::Tensors(
                    ts.iter()
                        .map(|t| Tensor {
                            name: t.name.as_str().to_owned(),
                            shape: t.shape.iter().map(|d| d.to_native()).collect(),
                            data: match &t.data {
                                ArchivedTensorData::F32(v) => {
                                    TensorData::F32(v.iter().map(|x| x.to_native()).collect())
                                }
                                ArchivedTensorData::I64(v) => {
                                    TensorData::I64(v.iter().map(|x| x.to_native()).collect())
                                }
                                ArchivedTensorData::I32(v) => {
                                    TensorData::I32(v.iter().map(|x| x.to_native()).collect())
                                }
                                ArchivedTensorData::U8(v) => TensorData::U8(v.to_vec()),
                            },
                        })
                        .collect(),
                )),
                _ => Err(BackendError::Invalid(
                    "the tensors task needs tensor input".into(),
                )),
            },
            ArchivedTask::Generate => {
                // The "tokens" of a text prompt are its characters; the answer echoes the input as
                // it came (text as text, token ids as token ids), cut to max_tokens units.
                let max = req.params.max_tokens.to_native() as usize;
                let (units, tokens, text): (Vec<u32>, Vec<u32>, String) = match &req.input {
                    ArchivedInput::Tokens(t) => {
                        let t = crate::protocol::tokens_native(t);
                        let t = t[..t.len().min(max)].to_vec();
                        (Vec::new(), t, String::new())
                    }
                    ArchivedInput::Text(t) if t.len() <= max => {
                        // At most `max` bytes, so at most `max` characters: one copy.
                        (Vec::new(), Vec::new(), t.as_str().to_owned())
                    }
                    input => {
                        let text: String = text_of(input).chars().take(max).collect();
                        (Vec::new(), Vec::new(), text)
                    }
                };
                // Stream units: the token ids, or the characters of the text.
                let units = if !req.params.stream {
                    units
                } else if tokens.is_empty() {
                    text.chars().map(u32::from).collect()
                } else {
                    tokens.clone()
                };
                if req.params.stream {
                    // One chunk per unit, stopping between units when asked.
                    for (i, u) in units.iter().enumerate() {
                        if let Some(stop) = ctx.should_stop() {
                            return Err(BackendError::Stopped(stop));
                        }
                        ctx.emit(StreamChunk {
                            index: i as u32,
                            text: char::from_u32(*u).map(String::from).unwrap_or_default(),
                            tokens: vec![*u],
                        })
                        .map_err(BackendError::Stopped)?;
                    }
                }
                let n = if tokens.is_empty() {
                    text.chars().count()
                } else {
                    tokens.len()
                } as u32;
                Ok(Body::Generation(Generation {
                    text,
                    tokens,
                    finish: FinishReason::Length,
                    usage: Usage {
                        prompt_tokens: n,
                        generated_tokens: n,
                        ..Usage::default()
                    },
                }))
            }
        }
    }
}
