//! Answers read in place: a [`ResponseView`] holds its chunk until dropped; a [`Stream`] yields a
//! request's answers one by one.

use std::sync::Arc;
use std::time::Instant;

use shm_ring::pool::ChunkId;

use super::{Client, Connection, Ticket};
use crate::error::Error;
use crate::protocol::{access_response, ArchivedResponse};

/// An answer in shared memory, read in place; its chunk returns to the pool on drop.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-response-view-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
///
/// let request = Request {
///     id: 1,
///     model: "echo".into(),
///     task: Task::Embed,
///     input: Input::Text("abc".into()),
///     params: Params::default(),
/// };
/// let answer = client.infer(&request)?;
/// // The echo model embeds a text as its bytes; the values stay where the server wrote them.
/// let ArchivedBody::Embedding(values) = &answer.response()?.body else {
///     panic!("not an embedding");
/// };
/// assert_eq!(values.len(), 3);
/// drop(answer); // the chunk goes back to the pool
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ResponseView {
    pub(super) conn: Arc<Connection>,
    pub(super) chunk: ChunkId,
    pub(super) len: usize,
    pub(super) is_final: bool,
}

impl std::fmt::Debug for ResponseView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseView")
            .field("chunk", &self.chunk)
            .field("len", &self.len)
            .field("final", &self.is_final)
            .finish()
    }
}

impl ResponseView {
    /// The archived response (validated on every call: the bytes are in shared memory).
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] when the chunk is not ours or not a valid archive.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-response-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use shm_runtime::protocol::{Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 7,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("hi".into()),
    ///     params: Params::default(),
    /// };
    /// let answer = client.infer(&request)?;
    /// let response = answer.response()?;
    /// assert_eq!(response.id, 7); // the request's id, carried back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn response(&self) -> Result<&ArchivedResponse, Error> {
        access_response(self.bytes()?).map_err(|r| Error::Protocol(r.message))
    }

    /// The answer's bytes in its chunk.
    pub(super) fn bytes(&self) -> Result<&[u8], Error> {
        let bytes = self
            .conn
            .pool
            .chunk_slice(self.chunk, self.conn.owner)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        bytes
            .get(..self.len)
            .ok_or_else(|| Error::Protocol("answer longer than its chunk".into()))
    }

    /// Whether this is the final answer of its request.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-is-final-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// # use shm_runtime::protocol::{Input, Params, Request, Task};
    /// # let request = Request {
    /// #     id: 1,
    /// #     model: "echo".into(),
    /// #     task: Task::Generate,
    /// #     input: Input::Text("abc".into()),
    /// #     params: Params::default(),
    /// # };
    /// // `request`: a generation of "abc" by the echo model, which streams it a character at a
    /// // time. Parts, then the final answer:
    /// let answers = client.stream_request(&request)?.collect::<Result<Vec<_>, _>>()?;
    /// let finals: Vec<bool> = answers.iter().map(|a| a.is_final()).collect();
    /// assert_eq!(finals, [false, false, false, true]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_final(&self) -> bool {
        self.is_final
    }

    /// Size of the archived answer in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-view-len-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// # use shm_runtime::protocol::{Input, Params, Request, Task};
    /// # let request = Request {
    /// #     id: 1,
    /// #     model: "echo".into(),
    /// #     task: Task::Generate,
    /// #     input: Input::Text("hello".into()),
    /// #     params: Params::default(),
    /// # };
    /// // `request`: a generation of "hello" by the echo model.
    /// let answer = client.infer(&request)?;
    /// assert!(answer.len() > "hello".len()); // the text, and the archive around it
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// The raw id of the chunk this answer lies in: for tests.
    #[doc(hidden)]
    pub fn chunk_raw(&self) -> u64 {
        self.chunk.raw()
    }

    /// Whether the archive is empty (never, for a valid answer).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-view-is-empty-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// # use shm_runtime::protocol::{Input, Params, Request, Task};
    /// # let request = Request {
    /// #     id: 1,
    /// #     model: "echo".into(),
    /// #     task: Task::Generate,
    /// #     input: Input::Text("hi".into()),
    /// #     params: Params::default(),
    /// # };
    /// // `request`: a generation by the echo model.
    /// let answer = client.infer(&request)?;
    /// assert!(!answer.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for ResponseView {
    fn drop(&mut self) {
        let _ = self.conn.pool.release(self.chunk, self.conn.owner);
    }
}

/// The chunks of a streamed answer, then its final answer.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-stream-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
///
/// let request = Request {
///     id: 1,
///     model: "echo".into(),
///     task: Task::Generate,
///     input: Input::Text("abc".into()),
///     params: Params::default(),
/// };
/// let mut text = String::new();
/// for answer in client.stream_request(&request)? {
///     match &answer?.response()?.body {
///         ArchivedBody::Chunk(part) => text.push_str(part.text.as_str()),
///         ArchivedBody::Generation(g) => assert_eq!(g.text.as_str(), text),
///         _ => unreachable!(),
///     }
/// }
/// assert_eq!(text, "abc");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Stream {
    pub(super) client: Client,
    pub(super) ticket: Ticket,
    pub(super) done: bool,
    pub(super) deadline: Instant,
}

impl Stream {
    /// The request's ticket (for [`Client::cancel`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-stream-ticket-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("slow", "sleep")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// # use shm_runtime::protocol::{Input, Params, Request, Task};
    /// # let request = Request {
    /// #     id: 1,
    /// #     model: "slow".into(),
    /// #     task: Task::Generate,
    /// #     input: Input::Text("go".into()),
    /// #     params: Params { max_tokens: 1000, ..Params::default() },
    /// # };
    /// use shm_runtime::Error;
    ///
    /// // `request` asks the sleep model `slow` for 1000 tokens of 10 ms each.
    /// let mut stream = client.stream_request(&request)?;
    /// assert!(!stream.next().unwrap()?.is_final());
    /// client.cancel(stream.ticket())?; // enough of it
    /// assert!(matches!(stream.last(), Some(Err(Error::Cancelled))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }
}

impl Drop for Stream {
    /// Cancels the request if its final answer has not been read; what still arrives for it is
    /// returned to the pool unread.
    fn drop(&mut self) {
        if !self.done && self.client.is_in_flight(self.ticket) {
            let _ = self.client.cancel(self.ticket);
            self.client.conn.abandon(self.ticket.0);
        }
    }
}

impl Iterator for Stream {
    type Item = Result<ResponseView, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let r = self.client.recv(self.ticket, left);
        match &r {
            Ok(v) if !v.is_final() => {}
            // Not the final answer: a refused cancel; the request goes on.
            Err(Error::Busy(_)) if self.client.is_in_flight(self.ticket) => {}
            // The stream's own deadline passed first: nobody will read the rest.
            Err(Error::TimedOut) if self.client.is_in_flight(self.ticket) => {
                let _ = self.client.cancel(self.ticket);
                self.client.conn.abandon(self.ticket.0);
                self.done = true;
            }
            _ => self.done = true,
        }
        Some(r)
    }
}
