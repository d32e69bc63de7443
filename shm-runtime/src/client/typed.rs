//! Typed calls: embeddings, classifications, generations and chats, without building requests or
//! reading archives by hand. Each is a thin layer over the zero-copy path: one request, one
//! answer chunk; [`Embeddings`] reads its vectors where the server wrote them.

use std::time::Duration;

use super::options::{GenerateOptions, Message};
use super::{Client, ResponseView, Stream};
use crate::error::Error;
use crate::protocol::{
    f32_native, tokens_native, ArchivedBody, ArchivedGeneration, ArchivedLabelScore,
    ArchivedTokenLogprob, ChatMessage, FinishReason, Input, Params, Request, Task, TokenLogprob,
};

/// Embeddings read in place: one row per text, each of [`dim`](Self::dim) values, in the
/// answer's shared chunk (no copy until [`to_vec`](Self::to_vec)). The chunk returns to the pool
/// when this is dropped.
#[derive(Debug)]
pub struct Embeddings {
    view: ResponseView,
    /// Where the values start in the chunk, in bytes.
    at: usize,
    rows: usize,
    dim: usize,
}

impl Embeddings {
    pub(super) fn new(view: ResponseView, texts: usize) -> Result<Embeddings, Error> {
        let (values, dim) = match &view.response()?.body {
            ArchivedBody::Embedding(v) => (f32_native(v), v.len()),
            ArchivedBody::Embeddings(e) => (f32_native(&e.values), e.dim.to_native() as usize),
            other => return Err(unexpected("embeddings", other)),
        };
        let rows = values.len().checked_div(dim).unwrap_or(0);
        if rows != texts || rows * dim != values.len() {
            return Err(Error::Protocol(format!(
                "{} values of dimension {dim} answer {texts} texts",
                values.len()
            )));
        }
        let at = values.as_ptr() as usize - view.bytes()?.as_ptr() as usize;
        Ok(Embeddings {
            at,
            rows,
            dim,
            view,
        })
    }

    /// Every value, row after row.
    pub fn as_flat(&self) -> &[f32] {
        // The chunk is this view's until it drops: its bytes were validated as an archive when
        // this was made and nobody writes them since. A failure here would mean another process
        // took the chunk over, which only a dead client's reclaim does.
        let bytes = self.view.bytes().unwrap_or(&[]);
        bytes
            .get(self.at..self.at + self.rows * self.dim * 4)
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .unwrap_or(&[])
    }

    /// How many rows (one per text).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The dimension of each row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&[f32]> {
        (i < self.rows).then(|| &self.as_flat()[i * self.dim..(i + 1) * self.dim])
    }

    /// Row `i`.
    ///
    /// # Panics
    ///
    /// When `i` is not below [`len`](Self::len).
    pub fn row(&self, i: usize) -> &[f32] {
        self.get(i).unwrap_or_else(|| {
            panic!("row {i} of {} embeddings", self.rows);
        })
    }

    /// The rows in order.
    pub fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.as_flat().chunks_exact(self.dim.max(1))
    }

    /// The rows, copied out of shared memory.
    pub fn to_vec(&self) -> Vec<Vec<f32>> {
        self.iter().map(<[f32]>::to_vec).collect()
    }
}

impl<'a> IntoIterator for &'a Embeddings {
    type Item = &'a [f32];
    type IntoIter = std::slice::ChunksExact<'a, f32>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The scores of one text: its best label first.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// The best label.
    pub label: String,
    /// Its score (a probability).
    pub score: f32,
    /// Every label with its score, best first.
    pub scores: Vec<(String, f32)>,
}

impl Classification {
    fn from_archived(scores: &[ArchivedLabelScore]) -> Result<Classification, Error> {
        let scores: Vec<(String, f32)> = scores
            .iter()
            .map(|l| (l.label.as_str().to_owned(), l.score.to_native()))
            .collect();
        let (label, score) = scores
            .first()
            .cloned()
            .ok_or_else(|| Error::Protocol("a classification without labels".into()))?;
        Ok(Classification {
            label,
            score,
            scores,
        })
    }
}

/// Token counts of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The text generated (stop strings excluded).
    pub text: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// From the request's start in the server to its first token.
    pub time_to_first_token: Duration,
    /// From the request's start in the server to its end.
    pub total_time: Duration,
    /// One per token of `tokens` when [`GenerateOptions::logprobs`] asked for them, else empty.
    pub logprobs: Vec<TokenLogprob>,
}

impl Generation {
    fn from_archived(g: &ArchivedGeneration) -> Generation {
        let finish_reason = match g.finish {
            crate::protocol::ArchivedFinishReason::Length => FinishReason::Length,
            crate::protocol::ArchivedFinishReason::Stop => FinishReason::Stop,
            crate::protocol::ArchivedFinishReason::Cancelled => FinishReason::Cancelled,
            crate::protocol::ArchivedFinishReason::Timeout => FinishReason::Timeout,
        };
        Generation {
            text: g.text.as_str().to_owned(),
            tokens: tokens_native(&g.tokens).to_vec(),
            finish_reason,
            usage: Usage {
                prompt_tokens: g.usage.prompt_tokens.to_native(),
                completion_tokens: g.usage.generated_tokens.to_native(),
            },
            time_to_first_token: Duration::from_micros(g.usage.ttft_us.to_native()),
            total_time: Duration::from_micros(g.usage.total_us.to_native()),
            logprobs: g
                .logprobs
                .iter()
                .map(ArchivedTokenLogprob::to_native)
                .collect(),
        }
    }

    pub(super) fn from_view(view: &ResponseView) -> Result<Generation, Error> {
        match &view.response()?.body {
            ArchivedBody::Generation(g) => Ok(Generation::from_archived(g)),
            other => Err(unexpected("a generation", other)),
        }
    }
}

/// What a [`TextStream`] yields: pieces of text as they are generated, then the whole.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// New text and the new tokens.
    Delta {
        /// The text released since the last delta (may be empty while a character needs more
        /// tokens, or while the text could begin a stop string).
        text: String,
        /// The new token ids.
        tokens: Vec<u32>,
        /// One per token of `tokens` when [`GenerateOptions::logprobs`] asked for them.
        logprobs: Vec<TokenLogprob>,
    },
    /// The finished generation (its text is the deltas' text together): the last item.
    Done(Generation),
}

/// A generation streamed: deltas, then [`StreamEvent::Done`]. Dropped before its end, it cancels
/// its request.
#[derive(Debug)]
pub struct TextStream {
    pub(super) inner: Stream,
}

impl TextStream {
    /// The event of descriptor `d` of this stream's request (for the async stream, which waits
    /// for descriptors itself).
    #[cfg(feature = "async")]
    pub(super) fn event(
        &mut self,
        d: crate::protocol::DescriptorWords,
    ) -> Result<StreamEvent, Error> {
        let s = &mut self.inner;
        let r = s.client.view(s.ticket.0, d);
        match &r {
            Ok(v) if !v.is_final() => {}
            // Not the final answer: a refused cancel; the request goes on.
            Err(Error::Busy(_)) if s.client.is_in_flight(s.ticket) => {}
            _ => s.done = true,
        }
        event_of(&r?)
    }
}

/// The event a stream's answer `view` is.
fn event_of(view: &ResponseView) -> Result<StreamEvent, Error> {
    match &view.response()?.body {
        ArchivedBody::Chunk(c) => Ok(StreamEvent::Delta {
            text: c.text.as_str().to_owned(),
            tokens: tokens_native(&c.tokens).to_vec(),
            logprobs: c
                .logprobs
                .iter()
                .map(ArchivedTokenLogprob::to_native)
                .collect(),
        }),
        ArchivedBody::Generation(g) => Ok(StreamEvent::Done(Generation::from_archived(g))),
        other => Err(unexpected("a stream part", other)),
    }
}

impl Iterator for TextStream {
    type Item = Result<StreamEvent, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.inner.next()?.and_then(|view| event_of(&view)))
    }
}

/// The classifications of `texts` texts in `view`.
pub(super) fn classifications(
    view: &ResponseView,
    texts: usize,
) -> Result<Vec<Classification>, Error> {
    let out = match &view.response()?.body {
        ArchivedBody::Classification(s) => vec![Classification::from_archived(s)?],
        ArchivedBody::Classifications(all) => all
            .iter()
            .map(|s| Classification::from_archived(s))
            .collect::<Result<_, _>>()?,
        other => return Err(unexpected("classifications", other)),
    };
    if out.len() != texts {
        return Err(Error::Protocol(format!(
            "{} classifications answer {texts} texts",
            out.len()
        )));
    }
    Ok(out)
}

fn unexpected(want: &str, got: &ArchivedBody) -> Error {
    let got = match got {
        ArchivedBody::Classification(_) => "a classification",
        ArchivedBody::Embedding(_) => "an embedding",
        ArchivedBody::Generation(_) => "a generation",
        ArchivedBody::Chunk(_) => "a stream part",
        ArchivedBody::Tensors(_) => "tensors",
        ArchivedBody::Error(_) => "an error",
        ArchivedBody::Embeddings(_) => "embeddings",
        ArchivedBody::Classifications(_) => "classifications",
    };
    Error::Protocol(format!("wanted {want}, the server answered {got}"))
}

/// The input of a call on `texts`: one text alone, several together.
fn texts_input<S: AsRef<str>>(texts: &[S]) -> Result<Input, Error> {
    match texts {
        [] => Err(Error::InvalidRequest("no texts given".into())),
        [one] => Ok(Input::Text(one.as_ref().to_owned())),
        many => Ok(Input::Texts(
            many.iter().map(|t| t.as_ref().to_owned()).collect(),
        )),
    }
}

impl Client {
    fn typed_request(&self, model: &str, task: Task, input: Input, params: Params) -> Request {
        Request {
            id: self.next_request_id(),
            model: model.to_owned(),
            task,
            input,
            params,
        }
    }

    /// Embeds `texts` with `model`, all in one request (the server runs them as batches of the
    /// model's `max_batch`).
    ///
    /// # Errors
    ///
    /// As for [`infer`](Self::infer); [`Error::InvalidRequest`] for no texts or an empty one.
    ///
    /// ```no_run
    /// # let client = shm_runtime::Client::connect("svc")?;
    /// let e = client.embed("minilm", &["a cat", "a dog"])?;
    /// let cosine: f32 = e.row(0).iter().zip(e.row(1)).map(|(a, b)| a * b).sum();
    /// # Ok::<(), shm_runtime::Error>(())
    /// ```
    pub fn embed<S: AsRef<str>>(&self, model: &str, texts: &[S]) -> Result<Embeddings, Error> {
        let req = self.embed_request(model, texts)?;
        Embeddings::new(self.infer(&req)?, texts.len())
    }

    pub(super) fn embed_request<S: AsRef<str>>(
        &self,
        model: &str,
        texts: &[S],
    ) -> Result<Request, Error> {
        Ok(self.typed_request(model, Task::Embed, texts_input(texts)?, Params::default()))
    }

    pub(super) fn classify_request<S: AsRef<str>>(
        &self,
        model: &str,
        texts: &[S],
    ) -> Result<Request, Error> {
        Ok(self.typed_request(
            model,
            Task::Classify,
            texts_input(texts)?,
            Params::default(),
        ))
    }

    pub(super) fn generate_request(
        &self,
        model: &str,
        prompt: &str,
        options: &GenerateOptions,
        stream: bool,
    ) -> Request {
        let input = Input::Text(prompt.to_owned());
        self.typed_request(model, Task::Generate, input, options.params(stream))
    }

    pub(super) fn chat_request(
        &self,
        model: &str,
        messages: &[Message],
        options: &GenerateOptions,
        stream: bool,
    ) -> Request {
        let input = chat_input(messages);
        self.typed_request(model, Task::Generate, input, options.params(stream))
    }

    /// Classifies `texts` with `model`, all in one request.
    ///
    /// # Errors
    ///
    /// As for [`embed`](Self::embed).
    pub fn classify<S: AsRef<str>>(
        &self,
        model: &str,
        texts: &[S],
    ) -> Result<Vec<Classification>, Error> {
        let req = self.classify_request(model, texts)?;
        classifications(&self.infer(&req)?, texts.len())
    }

    /// Generates a continuation of `prompt` with `model`.
    ///
    /// # Errors
    ///
    /// As for [`infer`](Self::infer).
    ///
    /// ```no_run
    /// use shm_runtime::{Client, GenerateOptions};
    ///
    /// let client = Client::connect("svc")?;
    /// let g = client.generate("smollm2", "Once upon a time", &GenerateOptions::new().max_tokens(32))?;
    /// println!("{} ({:?}, {} tokens)", g.text, g.finish_reason, g.usage.completion_tokens);
    /// # Ok::<(), shm_runtime::Error>(())
    /// ```
    pub fn generate(
        &self,
        model: &str,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation, Error> {
        self.generate_input(
            self.generate_request(model, prompt, options, false),
            options,
        )
    }

    /// Answers a chat with `model` (its chat template formats the messages).
    ///
    /// # Errors
    ///
    /// As for [`infer`](Self::infer).
    pub fn chat(
        &self,
        model: &str,
        messages: &[Message],
        options: &GenerateOptions,
    ) -> Result<Generation, Error> {
        self.generate_input(self.chat_request(model, messages, options, false), options)
    }

    /// [`generate`](Self::generate), streamed.
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit); the stream's items carry the answer's errors.
    pub fn stream(
        &self,
        model: &str,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<TextStream, Error> {
        self.stream_input(self.generate_request(model, prompt, options, true), options)
    }

    /// [`chat`](Self::chat), streamed.
    ///
    /// # Errors
    ///
    /// As for [`stream`](Self::stream).
    pub fn chat_stream(
        &self,
        model: &str,
        messages: &[Message],
        options: &GenerateOptions,
    ) -> Result<TextStream, Error> {
        self.stream_input(self.chat_request(model, messages, options, true), options)
    }

    fn generate_input(&self, req: Request, options: &GenerateOptions) -> Result<Generation, Error> {
        let view = match options.timeout {
            Some(t) => self.infer_timeout(&req, t)?,
            None => self.infer(&req)?,
        };
        Generation::from_view(&view)
    }

    fn stream_input(&self, req: Request, options: &GenerateOptions) -> Result<TextStream, Error> {
        let mut inner = self.stream_request(&req)?;
        if let Some(t) = options.timeout {
            inner.deadline = std::time::Instant::now() + t;
        }
        Ok(TextStream { inner })
    }
}

fn chat_input(messages: &[Message]) -> Input {
    Input::Chat(
        messages
            .iter()
            .map(|m| ChatMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect(),
    )
}
