//! Typed calls: embeddings, classifications, generations and chats, without building requests or
//! reading archives by hand. Each is a thin layer over the zero-copy path: one request, one
//! answer chunk; [`Embeddings`] reads its vectors where the server wrote them.

use std::time::Duration;

use super::{Client, ResponseView, Stream};
use crate::error::Error;
use crate::protocol::{
    f32_native, tokens_native, ArchivedBody, ArchivedGeneration, ArchivedLabelScore,
    ArchivedTokenLogprob, ChatMessage, FinishReason, Input, Params, Request, Task, TokenLogprob,
};

/// How to generate: the sampling parameters and limits of [`Client::generate`],
/// [`Client::chat`] and their streams. The defaults: at most 64 new tokens, greedy decoding
/// (temperature 0), no penalties, no stop strings, no log-probabilities, the client's timeout,
/// normal priority. The server checks the ranges (`protocol::Limits`); a value outside one is
/// an [`Error::InvalidRequest`] naming it.
///
/// ```
/// use shm_runtime::GenerateOptions;
///
/// let opts = GenerateOptions::new()
///     .max_tokens(200)
///     .temperature(0.7)
///     .min_p(0.05)
///     .frequency_penalty(0.5)
///     .seed(42)
///     .stop(["\n\n"])
///     .logprobs(3);
/// assert_eq!(opts.max_tokens, 200);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus sampling: only the most likely tokens whose probabilities add up to this.
    pub top_p: f32,
    /// Only the `top_k` most likely tokens (0: no limit).
    pub top_k: u32,
    /// Only tokens at least this fraction as likely as the most likely one, in 0..=1 (0: off).
    pub min_p: f32,
    /// Seed of the sampler (the same seed gives the same tokens); all 64 bits count.
    pub seed: u64,
    /// Penalty on tokens of the last 64, prompt included (1: none; > 1 discourages them).
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token generated so far, in -2..=2 (0: none).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated, in -2..=2 (0: none).
    pub frequency_penalty: f32,
    /// Strings that end the generation when generated; no part of one is ever in the text,
    /// streamed or not.
    pub stop: Vec<String>,
    /// With each token, its log-probability and this many most likely tokens (0: none; at most
    /// 20).
    pub logprobs: u8,
    /// The request's deadline, from when it is sent; `None` takes the client's timeout.
    pub timeout: Option<Duration>,
    /// Priority, 0 (most urgent) to 3.
    pub priority: u8,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        let p = Params::default();
        GenerateOptions {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            seed: p.seed,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            stop: Vec::new(),
            logprobs: p.logprobs,
            timeout: None,
            priority: p.priority,
        }
    }
}

impl GenerateOptions {
    /// The defaults.
    pub fn new() -> GenerateOptions {
        GenerateOptions::default()
    }

    /// At most `n` new tokens.
    #[must_use]
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sampling temperature (0: greedy).
    #[must_use]
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Nucleus sampling threshold.
    #[must_use]
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Sample among the `k` most likely tokens only.
    #[must_use]
    pub fn top_k(mut self, k: u32) -> Self {
        self.top_k = k;
        self
    }

    /// Min-p sampling: drops tokens less than `p` times as likely as the most likely one.
    #[must_use]
    pub fn min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }

    /// The sampler's seed.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Penalty on repeated tokens.
    #[must_use]
    pub fn repetition_penalty(mut self, p: f32) -> Self {
        self.repetition_penalty = p;
        self
    }

    /// Penalty on every token already generated, however often.
    #[must_use]
    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.presence_penalty = p;
        self
    }

    /// Penalty on a token per time it was generated.
    #[must_use]
    pub fn frequency_penalty(mut self, p: f32) -> Self {
        self.frequency_penalty = p;
        self
    }

    /// Each token's log-probability with the `n` most likely tokens at its position
    /// ([`Generation::logprobs`], [`StreamEvent::Delta`]).
    #[must_use]
    pub fn logprobs(mut self, n: u8) -> Self {
        self.logprobs = n;
        self
    }

    /// Strings that end the generation.
    #[must_use]
    pub fn stop<S: Into<String>>(mut self, stop: impl IntoIterator<Item = S>) -> Self {
        self.stop = stop.into_iter().map(Into::into).collect();
        self
    }

    /// The request's deadline, from when it is sent.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Priority, 0 (most urgent) to 3.
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    fn params(&self, stream: bool) -> Params {
        Params {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            stop: self.stop.clone(),
            logprobs: self.logprobs,
            stream,
            timeout_ms: self
                .timeout
                .map_or(0, |t| t.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
            priority: self.priority,
        }
    }
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who says it: `system`, `user` or `assistant`.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Message {
        Message::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        Message::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Message {
        Message::new("assistant", content)
    }
}

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
