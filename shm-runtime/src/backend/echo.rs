//! The echo backend: answers every task from the input itself, with no model. For tests and for
//! measuring the runtime's own overhead.
//!
//! # Examples
//!
//! ```
//! use shm_runtime::{Client, GenerateOptions};
//! # let name = format!("doc-echo-module-{}", std::process::id());
//! # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
//! # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
//!
//! let client = Client::connect(&name)?;
//! let g = client.generate("echo", "hello", &GenerateOptions::default())?;
//! assert_eq!(g.text, "hello");
//! let e = client.embed("echo", &["ab"])?; // a text's bytes as floats
//! assert_eq!(e.row(0), [97.0, 98.0]);
//! let c = client.classify("echo", &["positive"])?; // each text its own label
//! assert_eq!((c[0].label.as_str(), c[0].score), ("positive", 1.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::backend::writer::{Out, TensorsWriter};
use crate::backend::{Backend, BackendError, RunContext};
use crate::protocol::{
    f32_native, i32_native, i64_native, u64_native, ArchivedInput, ArchivedRequest, ArchivedTask,
    ArchivedTensorData, Body, FinishReason, LabelScore, StreamChunk, Task, Usage,
};

/// Echoes its input.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{echo::Echo, writer::Out, Backend};
/// use shm_runtime::protocol::{access_request, access_response, u64_native, ArchivedBody, Input};
/// use shm_runtime::protocol::{Params, Request, Task, Tensor, TensorData};
/// # use shm_runtime::{backend as b, protocol as p};
/// # /// Runs a backend outside a server: never stops, keeps what is streamed.
/// # struct Ctx(Vec<p::StreamChunk>);
/// # impl b::RunContext for Ctx {
/// #     fn should_stop(&mut self) -> Option<b::Stop> {
/// #         None
/// #     }
/// #     fn emit(&mut self, chunk: p::StreamChunk) -> Result<(), b::Stop> {
/// #         self.0.push(chunk);
/// #         Ok(())
/// #     }
/// #     fn deadline(&self) -> std::time::Instant {
/// #         std::time::Instant::now() + std::time::Duration::from_secs(3600)
/// #     }
/// # }
///
/// let x = Tensor { name: "x".into(), shape: vec![2, 2], data: TensorData::I32(vec![1, 2, 3, 4]) };
/// let input = Input::Tensors(vec![x]);
/// let params = Params::default();
/// let req = Request { id: 1, model: "echo".into(), task: Task::Tensors, input, params };
/// let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&req)?;
/// let mut chunk = rkyv::util::AlignedVec::<16>::new();
/// chunk.resize(1024, 0);
/// let mut out = Out::in_buffer(&mut chunk, req.id);
/// // `Ctx`: a test's `RunContext`, which never stops (see `RunContext`).
/// Echo.run(access_request(&bytes)?, &mut Ctx(Vec::new()), &mut out)?;
/// let ArchivedBody::Tensors(ts) = &access_response(out.bytes().unwrap())?.body else { panic!() };
/// assert_eq!((ts[0].name.as_str(), u64_native(&ts[0].shape)), ("x", &[2, 2][..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
        ArchivedInput::Texts(ts) => ts.iter().map(|t| t.as_str()).collect::<Vec<_>>().join("\n"),
        ArchivedInput::Tokens(_) | ArchivedInput::Tensors(_) => String::new(),
    }
}

impl Backend for Echo {
    fn tasks(&self) -> &[Task] {
        &TASKS
    }

    fn run(
        &self,
        req: &ArchivedRequest,
        ctx: &mut dyn RunContext,
        out: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        match req.task {
            // Each text is its own label, scored 1.
            ArchivedTask::Classify => match &req.input {
                ArchivedInput::Texts(ts) => Ok(out.body(Body::Classifications(
                    ts.iter()
                        .map(|t| {
                            vec![LabelScore {
                                label: t.as_str().to_owned(),
                                score: 1.0,
                            }]
                        })
                        .collect(),
                ))?),
                input => Ok(out.body(Body::Classification(vec![LabelScore {
                    label: text_of(input),
                    score: 1.0,
                }]))?),
            },
            // A text's bytes as floats; rows of a batch padded with zeros to the longest.
            ArchivedTask::Embed => match &req.input {
                ArchivedInput::Texts(ts) => {
                    let dim = ts.iter().map(|t| t.len()).max().unwrap_or(0);
                    out.embeddings(ts.len(), dim, |v| {
                        v.fill(0.0);
                        for (row, t) in v.chunks_exact_mut(dim.max(1)).zip(ts.iter()) {
                            row.iter_mut()
                                .zip(t.as_str().bytes())
                                .for_each(|(v, b)| *v = f32::from(b));
                        }
                        Ok(())
                    })
                }
                ArchivedInput::Tokens(t) => {
                    let t = crate::protocol::tokens_native(t);
                    out.embedding(t.len(), |v| {
                        v.iter_mut().zip(t).for_each(|(v, t)| *v = *t as f32);
                        Ok(())
                    })
                }
                input => {
                    let text = text_of(input);
                    out.embedding(text.len(), |v| {
                        v.iter_mut()
                            .zip(text.bytes())
                            .for_each(|(v, b)| *v = f32::from(b));
                        Ok(())
                    })
                }
            },
            ArchivedTask::Tensors => match &req.input {
                ArchivedInput::Tensors(ts) => {
                    let payload = ts
                        .iter()
                        .map(|t| {
                            let (name, rank, n) = (t.name.as_str(), t.shape.len(), t.data.len());
                            match &t.data {
                                ArchivedTensorData::F32(_) => {
                                    TensorsWriter::bytes_for::<f32>(name, rank, n)
                                }
                                ArchivedTensorData::I64(_) => {
                                    TensorsWriter::bytes_for::<i64>(name, rank, n)
                                }
                                ArchivedTensorData::I32(_) => {
                                    TensorsWriter::bytes_for::<i32>(name, rank, n)
                                }
                                ArchivedTensorData::U8(_) => {
                                    TensorsWriter::bytes_for::<u8>(name, rank, n)
                                }
                            }
                        })
                        .sum();
                    out.tensors(payload, |w| {
                        for t in ts.iter() {
                            let (name, shape) = (t.name.as_str(), u64_native(&t.shape));
                            let added: Result<(), BackendError> = match &t.data {
                                ArchivedTensorData::F32(v) => w.add(name, shape, |d| {
                                    d.copy_from_slice(f32_native(v));
                                    Ok(())
                                }),
                                ArchivedTensorData::I64(v) => w.add(name, shape, |d| {
                                    d.copy_from_slice(i64_native(v));
                                    Ok(())
                                }),
                                ArchivedTensorData::I32(v) => w.add(name, shape, |d| {
                                    d.copy_from_slice(i32_native(v));
                                    Ok(())
                                }),
                                ArchivedTensorData::U8(v) => w.add(name, shape, |d| {
                                    d.copy_from_slice(v.as_slice());
                                    Ok(())
                                }),
                            };
                            added?;
                        }
                        Ok::<(), BackendError>(())
                    })
                }
                _ => Err(BackendError::Invalid(
                    "the tensors task needs tensor input".into(),
                )),
            },
            ArchivedTask::Generate => generate(req, ctx, out),
        }
    }
}

/// Echoes the input as it came (text as text, token ids as token ids), cut to max_tokens units;
/// the "tokens" of a text prompt are its characters.
fn generate(
    req: &ArchivedRequest,
    ctx: &mut dyn RunContext,
    out: &mut Out<'_>,
) -> Result<(), BackendError> {
    let max = req.params.max_tokens.to_native() as usize;
    let owned;
    let (tokens, text): (&[u32], &str) = match &req.input {
        ArchivedInput::Tokens(t) => {
            let t = crate::protocol::tokens_native(t);
            (&t[..t.len().min(max)], "")
        }
        // At most `max` bytes, so at most `max` characters: no cut needed.
        ArchivedInput::Text(t) if t.len() <= max => (&[], t.as_str()),
        input => {
            owned = text_of(input).chars().take(max).collect::<String>();
            (&[], owned.as_str())
        }
    };
    if req.params.stream {
        // One chunk per unit (token id, or character of the text), stopping between units when
        // asked.
        let units: Vec<u32> = if tokens.is_empty() {
            text.chars().map(u32::from).collect()
        } else {
            tokens.to_vec()
        };
        for (i, u) in units.iter().enumerate() {
            if let Some(stop) = ctx.should_stop() {
                return Err(BackendError::Stopped(stop));
            }
            ctx.emit(StreamChunk {
                index: i as u32,
                text: char::from_u32(*u).map(String::from).unwrap_or_default(),
                tokens: vec![*u],
                logprobs: Vec::new(),
            })
            .map_err(BackendError::Stopped)?;
        }
    }
    let n = if tokens.is_empty() {
        text.chars().count()
    } else {
        tokens.len()
    } as u32;
    let mut g = out.generation(tokens.len(), text.len())?;
    g.push_text(text)?;
    g.push_tokens(tokens)?;
    Ok(g.finish(
        FinishReason::Length,
        Usage {
            prompt_tokens: n,
            generated_tokens: n,
            ..Usage::default()
        },
    )?)
}
