//! Typed calls: embeddings, classifications, generations and chats, without building requests or
//! reading archives by hand. Each is a thin layer over the zero-copy path: one request, one
//! answer chunk; [`Embeddings`] (in `embeddings.rs`) reads its vectors where the server wrote
//! them.

use std::time::Duration;

pub use super::embeddings::Embeddings;
use super::options::{GenerateOptions, Message};
use super::{Client, ResponseView, Stream};
use crate::error::Error;
use crate::protocol::{
    tokens_native, ArchivedBody, ArchivedGeneration, ArchivedLabelScore, ArchivedTokenLogprob,
    ChatMessage, FinishReason, Input, Limits, Params, Request, Task, TokenLogprob,
};

/// The scores of one text: its best label first.
///
/// # Examples
///
/// ```
/// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
/// # let name = format!("doc-classification-{}", std::process::id());
/// # let echo = vec![ModelConfig::new("echo", "echo")];
/// # let _server = Server::start(ServerConfig::new(&name, echo))?;
/// # let client = Client::connect(&name)?;
/// // The echo model labels each text with itself, scored 1.
/// let c = client.classify("echo", &["spam"])?;
/// assert_eq!((c[0].label.as_str(), c[0].score), ("spam", 1.0));
/// assert_eq!(c[0].scores, [("spam".to_owned(), 1.0)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
///
/// # Examples
///
/// ```
/// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
/// # let name = format!("doc-usage-{}", std::process::id());
/// # let echo = vec![ModelConfig::new("echo", "echo")];
/// # let _server = Server::start(ServerConfig::new(&name, echo))?;
/// # let client = Client::connect(&name)?;
/// use shm_runtime::GenerateOptions;
///
/// // Echo's tokens are characters: a prompt of 5, as many generated.
/// let g = client.generate("echo", "hello", &GenerateOptions::default())?;
/// assert_eq!(g.usage.prompt_tokens, 5);
/// assert_eq!(g.usage.completion_tokens, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// A finished generation.
///
/// # Examples
///
/// ```
/// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
/// # let name = format!("doc-generation-{}", std::process::id());
/// # let echo = vec![ModelConfig::new("echo", "echo")];
/// # let _server = Server::start(ServerConfig::new(&name, echo))?;
/// # let client = Client::connect(&name)?;
/// use shm_runtime::{FinishReason, GenerateOptions};
///
/// let g = client.generate("echo", "hello world", &GenerateOptions::new().max_tokens(5))?;
/// assert_eq!(g.text, "hello");
/// assert_eq!(g.finish_reason, FinishReason::Length); // cut at max_tokens
/// assert!(g.logprobs.is_empty()); // not asked for
/// println!("first token after {:?}, all in {:?}", g.time_to_first_token, g.total_time);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
///
/// # Examples
///
/// ```
/// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
/// # let name = format!("doc-stream-event-{}", std::process::id());
/// # let echo = vec![ModelConfig::new("echo", "echo")];
/// # let _server = Server::start(ServerConfig::new(&name, echo))?;
/// # let client = Client::connect(&name)?;
/// use shm_runtime::{GenerateOptions, StreamEvent};
///
/// let mut text = String::new();
/// for event in client.stream("echo", "hey", &GenerateOptions::default())? {
///     match event? {
///         StreamEvent::Delta { text: piece, .. } => text.push_str(&piece),
///         StreamEvent::Done(g) => assert_eq!(g.text, text),
///     }
/// }
/// assert_eq!(text, "hey");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
///
/// # Examples
///
/// ```
/// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
/// # let name = format!("doc-text-stream-{}", std::process::id());
/// # let echo = vec![ModelConfig::new("echo", "echo")];
/// # let _server = Server::start(ServerConfig::new(&name, echo))?;
/// # let client = Client::connect(&name)?;
/// use shm_runtime::{GenerateOptions, StreamEvent};
///
/// // The echo model streams its prompt a character at a time.
/// let events = client.stream("echo", "abc", &GenerateOptions::default())?;
/// let events: Vec<StreamEvent> = events.collect::<Result<_, _>>()?;
/// assert_eq!(events.len(), 4); // three deltas, then Done
/// assert!(matches!(&events[3], StreamEvent::Done(g) if g.text == "abc"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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

pub(super) fn unexpected(want: &str, got: &ArchivedBody) -> Error {
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
    /// A request of the typed calls; one that sets no deadline gets the client's
    /// ([`ClientOptions::timeout`](crate::ClientOptions::timeout)), so that the server gives up
    /// when the client does.
    fn typed_request(&self, model: &str, task: Task, input: Input, mut params: Params) -> Request {
        if params.timeout_ms == 0 {
            let ms = self.conn.options.timeout.as_millis();
            params.timeout_ms = ms.clamp(1, u128::from(Limits::default().max_timeout_ms)) as u32;
        }
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
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-embed-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// let e = client.embed("echo", &["a cat", "a dog"])?;
    /// assert_eq!((e.len(), e.dim()), (2, 5)); // one row per text
    /// // Read in place: a dot product straight over the answer's shared memory.
    /// let dot: f32 = e.row(0).iter().zip(e.row(1)).map(|(a, b)| a * b).sum();
    /// assert!(dot > 0.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
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
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-classify-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// // The echo model labels each text with itself; a real classifier, with its labels.
    /// let texts = ["great product", "broken on arrival"];
    /// let labels = client.classify("echo", &texts)?;
    /// assert_eq!(labels.len(), texts.len());
    /// assert_eq!(labels[1].label, "broken on arrival");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-generate-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// use shm_runtime::{FinishReason, GenerateOptions};
    ///
    /// // The echo model answers its prompt, one token per character.
    /// let opts = GenerateOptions::new().max_tokens(4);
    /// let g = client.generate("echo", "Once upon a time", &opts)?;
    /// assert_eq!(g.text, "Once");
    /// assert_eq!((g.finish_reason, g.usage.completion_tokens), (FinishReason::Length, 4));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
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
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-chat-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// use shm_runtime::{GenerateOptions, Message};
    ///
    /// let messages = [Message::system("Be brief."), Message::user("Hi!")];
    /// let g = client.chat("echo", &messages, &GenerateOptions::default())?;
    /// // The echo model answers the contents, one per line.
    /// assert_eq!(g.text, "Be brief.\nHi!");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-stream-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// use shm_runtime::{GenerateOptions, StreamEvent};
    ///
    /// let mut shown = String::new();
    /// for event in client.stream("echo", "Hello!", &GenerateOptions::default())? {
    ///     if let StreamEvent::Delta { text, .. } = event? {
    ///         shown.push_str(&text); // print it as it comes
    ///     }
    /// }
    /// assert_eq!(shown, "Hello!");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-chat-stream-{}", std::process::id());
    /// # let echo = vec![ModelConfig::new("echo", "echo")];
    /// # let _server = Server::start(ServerConfig::new(&name, echo))?;
    /// # let client = Client::connect(&name)?;
    /// use shm_runtime::{GenerateOptions, Message, StreamEvent};
    ///
    /// let messages = [Message::user("Tell me a story.")];
    /// let mut stream = client.chat_stream("echo", &messages, &GenerateOptions::default())?;
    /// let first = stream.next().transpose()?;
    /// assert!(matches!(first, Some(StreamEvent::Delta { .. })));
    /// drop(stream); // not read to its end: the request is cancelled
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
