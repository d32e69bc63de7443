//! The async client (feature `async`): futures for answers and a [`futures_core::Stream`] for
//! streams, usable from any executor (tokio, async-std, smol...) without a thread per request.
//!
//! One waiter thread per connection pops the connection's response ring with the client's wait
//! strategy (spin briefly, then park on the ring's futex word: no busy poll) and files what it
//! pops under its ticket, waking the future that waits for it. Sync calls on the same connection
//! keep working: the waiter takes the leader role for good and wakes them too.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::inbox::is_final;
use super::options::{GenerateOptions, Message};
use super::typed::{Classification, Embeddings, Generation, TextStream};
use super::{Client, ClientOptions, Connection, ResponseView, Ticket};
use crate::error::Error;
use crate::protocol::{DescriptorWords, Request};

/// How long the waiter thread blocks on the ring before it looks whether it is still needed and
/// whether the server lives.
const WAITER_SLICE: Duration = Duration::from_millis(20);

/// A client whose calls are `async`: [`infer`](Self::infer), the typed calls, and
/// [`stream`](Self::stream). Cheap to clone (one connection, one waiter thread for all clones);
/// the connection closes when the last clone drops.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-async-client-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// use shm_runtime::{AsyncClient, GenerateOptions};
///
/// let client = AsyncClient::connect(&name)?;
/// let g = client.generate("echo", "Hello", &GenerateOptions::default()).await?;
/// assert_eq!(g.text, "Hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct AsyncClient {
    client: Client,
}

impl AsyncClient {
    /// Connects to service `name` and starts the connection's waiter thread.
    ///
    /// # Errors
    ///
    /// As for [`Client::connect`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-connect-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use shm_runtime::AsyncClient;
    ///
    /// let client = AsyncClient::connect(&name)?;
    /// let e = client.embed("echo", &["hi"]).await?;
    /// assert_eq!(e.row(0), [104.0, 105.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(name: &str) -> Result<AsyncClient, Error> {
        AsyncClient::connect_with(name, ClientOptions::default())
    }

    /// [`connect`](Self::connect) with options (the wait strategy is the waiter thread's).
    ///
    /// # Errors
    ///
    /// As for [`Client::connect`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-connect-with-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use shm_runtime::ring::WaitStrategy;
    /// use shm_runtime::{AsyncClient, ClientOptions, GenerateOptions};
    ///
    /// // The waiter thread yields instead of parking while it waits: answers sooner, a core busy.
    /// let options = ClientOptions { wait: WaitStrategy::Yield, ..ClientOptions::default() };
    /// let client = AsyncClient::connect_with(&name, options)?;
    /// let g = client.generate("echo", "quick", &GenerateOptions::default()).await?;
    /// assert_eq!(g.text, "quick");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_with(name: &str, options: ClientOptions) -> Result<AsyncClient, Error> {
        let client = Client::connect_with(name, options)?;
        start_waiter(&client.conn)?;
        Ok(AsyncClient { client })
    }

    /// The blocking client of the same connection.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-blocking-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// use shm_runtime::GenerateOptions;
    ///
    /// // The same connection, from code that is not async.
    /// let g = client.blocking().generate("echo", "sync", &GenerateOptions::default())?;
    /// assert_eq!(g.text, "sync");
    /// assert_eq!(client.blocking().models(), ["echo"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn blocking(&self) -> &Client {
        &self.client
    }

    /// Sends `request` and waits for its final answer (stream parts are skipped). Dropped before
    /// the answer, the future cancels the request.
    ///
    /// # Errors
    ///
    /// As for [`Client::infer`], but for the client-side timeout: the server's deadline
    /// (`timeout_ms`, or its default) bounds the wait.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-infer-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 1,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("hello".into()),
    ///     params: Params::default(),
    /// };
    /// let answer = client.infer(&request).await?;
    /// let ArchivedBody::Generation(g) = &answer.response()?.body else {
    ///     panic!("not a generation");
    /// };
    /// assert_eq!(g.text.as_str(), "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn infer(&self, request: &Request) -> Result<ResponseView, Error> {
        let ticket = self.client.submit(request)?;
        let mut waiting = Waiting {
            client: &self.client,
            ticket,
            done: false,
        };
        loop {
            let d = (&mut waiting).await?;
            let view = self.client.view(ticket.0, d);
            if is_final(d) {
                waiting.done = true;
            }
            match view {
                Ok(v) if !v.is_final() => continue,
                other => {
                    waiting.done = true;
                    return other;
                }
            }
        }
    }

    /// [`Client::embed`], awaited.
    ///
    /// # Errors
    ///
    /// As for [`Client::embed`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-embed-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// // The echo model's "embedding" of a text: its bytes, padded with zeros to the longest.
    /// let e = client.embed("echo", &["a cat", "a dog"]).await?;
    /// assert_eq!((e.len(), e.dim()), (2, 5));
    /// assert_eq!(e.row(0)[2], f32::from(b'c'));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn embed<S: AsRef<str>>(
        &self,
        model: &str,
        texts: &[S],
    ) -> Result<Embeddings, Error> {
        let req = self.client.embed_request(model, texts)?;
        Embeddings::new(self.infer(&req).await?, texts.len())
    }

    /// [`Client::classify`], awaited.
    ///
    /// # Errors
    ///
    /// As for [`Client::classify`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-classify-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// // The echo model labels each text with itself, scored 1.
    /// let labels = client.classify("echo", &["spam", "ham"]).await?;
    /// assert_eq!(labels[1].label, "ham");
    /// assert_eq!(labels[1].score, 1.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn classify<S: AsRef<str>>(
        &self,
        model: &str,
        texts: &[S],
    ) -> Result<Vec<Classification>, Error> {
        let req = self.client.classify_request(model, texts)?;
        super::typed::classifications(&self.infer(&req).await?, texts.len())
    }

    /// [`Client::generate`], awaited (`options.timeout` becomes the server's deadline).
    ///
    /// # Errors
    ///
    /// As for [`Client::generate`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-generate-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use std::time::Duration;
    /// use shm_runtime::GenerateOptions;
    ///
    /// let opts = GenerateOptions::new().max_tokens(4).timeout(Duration::from_secs(5));
    /// let g = client.generate("echo", "Once upon a time", &opts).await?;
    /// assert_eq!(g.text, "Once");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn generate(
        &self,
        model: &str,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<Generation, Error> {
        let req = self.client.generate_request(model, prompt, options, false);
        Generation::from_view(&self.infer(&req).await?)
    }

    /// [`Client::chat`], awaited.
    ///
    /// # Errors
    ///
    /// As for [`Client::chat`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-chat-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use shm_runtime::{GenerateOptions, Message};
    ///
    /// let messages = [Message::system("Be brief."), Message::user("Hi!")];
    /// let g = client.chat("echo", &messages, &GenerateOptions::default()).await?;
    /// assert_eq!(g.text, "Be brief.\nHi!"); // echo: the contents, one per line
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn chat(
        &self,
        model: &str,
        messages: &[Message],
        options: &GenerateOptions,
    ) -> Result<Generation, Error> {
        let req = self.client.chat_request(model, messages, options, false);
        Generation::from_view(&self.infer(&req).await?)
    }

    /// [`Client::stream`] as a [`futures_core::Stream`] of the same events. Dropped before its
    /// end, it cancels its request.
    ///
    /// # Errors
    ///
    /// As for [`Client::stream`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-stream-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use std::future::poll_fn;
    /// use std::pin::Pin;
    /// use futures_core::Stream as _;
    /// use shm_runtime::{GenerateOptions, StreamEvent};
    ///
    /// let mut stream = client.stream("echo", "abc", &GenerateOptions::default())?;
    /// let mut text = String::new();
    /// // With futures' `StreamExt`: `while let Some(event) = stream.next().await`.
    /// while let Some(event) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
    ///     if let StreamEvent::Delta { text: piece, .. } = event? {
    ///         text.push_str(&piece);
    ///     }
    /// }
    /// assert_eq!(text, "abc");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream(
        &self,
        model: &str,
        prompt: &str,
        options: &GenerateOptions,
    ) -> Result<AsyncTextStream, Error> {
        Ok(AsyncTextStream {
            inner: self.client.stream(model, prompt, options)?,
        })
    }

    /// [`Client::chat_stream`] as a [`futures_core::Stream`].
    ///
    /// # Errors
    ///
    /// As for [`Client::chat_stream`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-async-chat-stream-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::AsyncClient::connect(&name)?;
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use std::future::poll_fn;
    /// use std::pin::Pin;
    /// use futures_core::Stream as _;
    /// use shm_runtime::{GenerateOptions, Message, StreamEvent};
    ///
    /// let messages = [Message::user("Tell me a story.")];
    /// let mut stream = client.chat_stream("echo", &messages, &GenerateOptions::default())?;
    /// let first = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await.transpose()?;
    /// assert!(matches!(first, Some(StreamEvent::Delta { .. })));
    /// drop(stream); // not read to its end: the request is cancelled
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn chat_stream(
        &self,
        model: &str,
        messages: &[Message],
        options: &GenerateOptions,
    ) -> Result<AsyncTextStream, Error> {
        Ok(AsyncTextStream {
            inner: self.client.chat_stream(model, messages, options)?,
        })
    }
}

/// A generation streamed, as a [`futures_core::Stream`]: deltas, then the whole.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-async-text-stream-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::AsyncClient::connect(&name)?;
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use futures_core::Stream as _;
/// use shm_runtime::{GenerateOptions, StreamEvent};
///
/// let mut stream = client.stream("echo", "hi", &GenerateOptions::default())?;
/// let mut events = Vec::new();
/// while let Some(event) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
///     events.push(event?);
/// }
/// assert_eq!(events.len(), 3); // "h", "i", then the whole
/// assert!(matches!(&events[2], StreamEvent::Done(g) if g.text == "hi"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AsyncTextStream {
    inner: TextStream,
}

impl futures_core::Stream for AsyncTextStream {
    type Item = Result<super::typed::StreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut self.inner;
        if this.inner.done {
            return Poll::Ready(None);
        }
        let ticket = this.inner.ticket;
        match poll_next_for(&this.inner.client.conn, ticket.0, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(d)) => Poll::Ready(Some(this.event(d))),
            Poll::Ready(Err(e)) => {
                this.inner.done = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// The future of the next descriptor of a ticket; cancels and abandons the ticket when dropped
/// before its final answer was read.
struct Waiting<'c> {
    client: &'c Client,
    ticket: Ticket,
    done: bool,
}

impl Future for &mut Waiting<'_> {
    type Output = Result<DescriptorWords, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_next_for(&self.client.conn, self.ticket.0, cx)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done && self.client.is_in_flight(self.ticket) {
            let _ = self.client.cancel(self.ticket);
            self.client.conn.abandon(self.ticket.0);
        }
    }
}

/// The next descriptor filed under `ticket`, or the waker registered to be woken when one is.
pub(super) fn poll_next_for(
    conn: &Connection,
    ticket: u32,
    cx: &mut Context<'_>,
) -> Poll<Result<DescriptorWords, Error>> {
    let mut inbox = conn.inbox();
    let Some(p) = inbox.pending.get_mut(&ticket).filter(|p| !p.abandoned) else {
        return Poll::Ready(Err(Error::UnknownTicket(ticket)));
    };
    if let Some(d) = p.arrived.pop_front() {
        return Poll::Ready(Ok(d));
    }
    if let Err(e) = conn.check_connected() {
        return Poll::Ready(Err(e));
    }
    if conn.server_gone.load(Ordering::Relaxed) {
        return Poll::Ready(Err(Error::ServerGone));
    }
    p.waker = Some(cx.waker().clone());
    Poll::Pending
}

/// Starts `conn`'s waiter thread, unless one runs.
fn start_waiter(conn: &Arc<Connection>) -> Result<(), Error> {
    {
        let mut inbox = conn.inbox();
        if inbox.waiter {
            return Ok(());
        }
        inbox.waiter = true;
    }
    let weak = Arc::downgrade(conn);
    std::thread::Builder::new()
        .name("shm-client-waiter".into())
        .spawn(move || waiter(&weak))
        .map(drop)
        .map_err(|e| Error::Attach(format!("cannot start the client's waiter thread: {e}")))
}

/// The waiter loop: while the connection has users, pop its response ring and file what comes.
fn waiter(conn: &Weak<Connection>) {
    loop {
        let Some(conn) = conn.upgrade() else {
            return;
        };
        // The waiter is the ring's only reader from now on; sync callers wait on the condvar.
        conn.inbox().leader = true;
        let popped = conn
            .responses
            .pop_blocking(&conn.options.wait, Instant::now() + WAITER_SLICE);
        let mut inbox = conn.inbox();
        match popped {
            Ok(d) => {
                conn.route(&mut inbox, d);
                // More may be there: take them without blocking.
                while let Ok(d) = conn.responses.pop() {
                    conn.route(&mut inbox, d);
                }
            }
            Err(_) => {
                let gone = !conn.svc.server_alive();
                if gone || conn.check_connected().is_err() {
                    if gone {
                        conn.server_gone.store(true, Ordering::Relaxed);
                    }
                    // Wake every future: each finds the reason and returns it.
                    for p in inbox.pending.values_mut() {
                        if let Some(w) = p.waker.take() {
                            w.wake();
                        }
                    }
                    conn.arrived.notify_all();
                    if Arc::strong_count(&conn) == 1 {
                        return;
                    }
                    drop(inbox);
                    std::thread::sleep(WAITER_SLICE);
                    continue;
                }
            }
        }
        if inbox.sleepers > 0 {
            conn.arrived.notify_all();
        }
    }
}
