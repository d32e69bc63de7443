//! The raw request path: [`Client::submit`] serializes a request straight into a shared chunk
//! and pushes its descriptor, [`Client::recv`] takes an answer as a view in place; with
//! [`infer`](Client::infer), [`stream_request`](Client::stream_request) and
//! [`cancel`](Client::cancel) over them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shm_ring::pool::ChunkId;

use super::inbox::Pending;
use super::{Client, ResponseView, Stream, Ticket};
use crate::error::Error;
use crate::protocol::{
    encode_request, ArchivedBody, Descriptor, DescriptorKind, DescriptorWords, ErrorCode, Request,
};

impl Client {
    /// Sends a request without waiting for the answer. The request is serialized straight into a
    /// shared chunk; answers carry its `id` (choose ids unique among your requests in flight to
    /// get the extra check that an answer belongs to its request).
    ///
    /// # Errors
    ///
    /// [`Error::ModelNotFound`] for a model the service does not serve,
    /// [`Error::InvalidRequest`] when it does not fit the largest chunk, [`Error::Busy`] when
    /// the pool or the request ring is full, [`Error::ServerGone`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-submit-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use std::time::Duration;
    /// use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
    ///
    /// let req = |i: u64| Request {
    ///     id: i,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text(format!("request {i}")),
    ///     params: Params::default(),
    /// };
    /// // Pipelined: several in flight, answers taken in any order.
    /// let tickets: Vec<_> = (1..=8).map(|i| client.submit(&req(i))).collect::<Result<_, _>>()?;
    /// for (i, ticket) in tickets.into_iter().enumerate().rev() {
    ///     let answer = client.recv(ticket, Duration::from_secs(5))?;
    ///     let ArchivedBody::Generation(g) = &answer.response()?.body else { unreachable!() };
    ///     assert_eq!(g.text.as_str(), format!("request {}", i + 1));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit(&self, request: &Request) -> Result<Ticket, Error> {
        let conn = &*self.conn;
        // One atomic load; the full liveness probe (a syscall) runs only when a wait times out.
        if conn.server_gone.load(Ordering::Relaxed)
            || conn.svc.header().state.load(Ordering::Acquire) == crate::service::STATE_STOPPED
        {
            return Err(Error::ServerGone);
        }
        let (lane, tasks) = conn
            .find_model(&request.model)
            .ok_or_else(|| Error::ModelNotFound(request.model.clone()))?;
        if tasks & (1 << (request.task as u32)) == 0 {
            return Err(Error::ModelNotFound(format!(
                "model {:?} does not do {:?}",
                request.model, request.task
            )));
        }
        let req = request;
        let max = conn.pool.max_chunk_size();
        let mut size = estimate(req).min(max);
        let (chunk, len) = loop {
            let mut loan = conn
                .pool
                .loan(conn.owner, size)
                .map_err(|e| loan_error(e, "the request"))?;
            match encode_request(req, loan.as_mut_slice()) {
                Ok(len) => break (loan.into_id(), len),
                Err(_) if size < max => size = (size * 2).min(max),
                Err(_) => {
                    return Err(Error::InvalidRequest(format!(
                        "the request does not fit the largest chunk ({max} bytes)"
                    )))
                }
            }
        };
        self.push_request(lane, chunk, len as u32, req.id)
    }

    /// The next answer for `ticket`: a stream chunk or the final answer. After the final answer the
    /// ticket is done.
    ///
    /// # Errors
    ///
    /// The error answer of the server ([`Error::TimedOut`], [`Error::Cancelled`],
    /// [`Error::InvalidRequest`]...), [`Error::TimedOut`] when `timeout` passes first (the request
    /// stays in flight), [`Error::ServerGone`], [`Error::UnknownTicket`]; [`Error::Busy`] with the
    /// request still in flight when the server refused to record a [`cancel`](Self::cancel) of it.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-recv-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use std::time::Duration;
    /// use shm_runtime::protocol::{Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 1,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("hi".into()),
    ///     params: Params::default(),
    /// };
    /// let ticket = client.submit(&request)?;
    /// // ... other work while the server runs it ...
    /// let answer = client.recv(ticket, Duration::from_secs(5))?;
    /// assert!(answer.is_final()); // not streamed: the one answer is the final one
    /// assert!(!client.is_in_flight(ticket));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv(&self, ticket: Ticket, timeout: Duration) -> Result<ResponseView, Error> {
        let deadline = Instant::now() + timeout;
        let d = self.conn.next_for(ticket.0, deadline)?;
        self.view(ticket.0, d)
    }

    pub(super) fn view(&self, ticket: u32, d: DescriptorWords) -> Result<ResponseView, Error> {
        let conn = &*self.conn;
        let Descriptor {
            kind, chunk, len, ..
        } = Descriptor::from_words(d)
            .ok_or_else(|| Error::Protocol("unknown descriptor kind".into()))?;
        if kind == DescriptorKind::CancelRefused {
            return Err(Error::Busy(
                "the server did not record the cancel of this request: this client has as many \
                 cancels pending as it may; the request goes on, and its answers follow"
                    .into(),
            ));
        }
        let final_ = kind != DescriptorKind::Partial;
        let request_id = {
            let mut inbox = conn.inbox();
            let id = inbox.pending.get(&ticket).map(|p| p.request_id);
            if final_ {
                // Anything queued behind a final answer is not this request's: return it.
                if let Some(p) = inbox.pending.remove(&ticket) {
                    p.arrived.into_iter().for_each(|d| conn.discard(d));
                }
            }
            id.unwrap_or(0)
        };
        if kind == DescriptorKind::InlineError {
            let code = ErrorCode::from_u8(len as u8)
                .ok_or_else(|| Error::Protocol(format!("unknown error code {len}")))?;
            let why = crate::protocol::InlineReason::from_u64(chunk);
            return Err(Error::from_code(code, why.message(code)));
        }
        let view = ResponseView {
            conn: self.conn.clone(),
            chunk: ChunkId::from_raw(chunk),
            len: len as usize,
            is_final: final_,
        };
        let resp = view.response()?;
        // An error about bytes the server could not read as a request carries id 0.
        let unreadable = resp.id == 0 && matches!(resp.body, ArchivedBody::Error(_));
        if resp.id != request_id && !unreadable {
            return Err(Error::Protocol(format!(
                "answer for request {} arrived for {request_id}",
                resp.id
            )));
        }
        if let ArchivedBody::Error(e) = &resp.body {
            return Err(Error::from_code(
                e.code.to_native(),
                e.message.as_str().to_owned(),
            ));
        }
        Ok(view)
    }

    /// Registers a ticket for the request in `chunk` and pushes its descriptor on `lane`'s ring.
    /// On failure the chunk is returned to the pool (if it is ours).
    pub(super) fn push_request(
        &self,
        lane: usize,
        chunk: ChunkId,
        len: u32,
        request_id: u64,
    ) -> Result<Ticket, Error> {
        let conn = &*self.conn;
        if let Err(e) = conn.check_connected() {
            let _ = conn.pool.release(chunk, conn.owner);
            return Err(e);
        }
        let Some(ring) = conn.requests.get(lane) else {
            let _ = conn.pool.release(chunk, conn.owner);
            return Err(Error::Protocol(format!("lane {lane} out of range")));
        };
        let ticket = conn.take_ticket(Pending {
            lane,
            request_id,
            chunk: chunk.raw(),
            abandoned: false,
            arrived: VecDeque::new(),
            waker: None,
        });
        if let Err(e) =
            ring.push(Descriptor::new(DescriptorKind::Request, chunk.raw(), len, ticket).to_words())
        {
            conn.inbox().pending.remove(&ticket);
            let _ = conn.pool.release(chunk, conn.owner);
            return Err(ring_full(lane, ring.capacity(), e));
        }
        conn.svc.lane(lane).doorbell.notify();
        Ok(Ticket(ticket))
    }

    /// Submits and waits for the final answer (streamed chunks are skipped).
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit) and [`recv`](Self::recv). On a client-side timeout the
    /// request is cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-infer-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 1,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("hello".into()),
    ///     params: Params::default(),
    /// };
    /// // Read in place: the answer's chunk is this client's until `answer` drops.
    /// let answer = client.infer(&request)?;
    /// let ArchivedBody::Generation(g) = &answer.response()?.body else {
    ///     panic!("not a generation");
    /// };
    /// assert_eq!(g.text.as_str(), "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn infer(&self, request: &Request) -> Result<ResponseView, Error> {
        self.infer_timeout(request, self.conn.options.timeout)
    }

    /// [`infer`](Self::infer) with a deadline.
    ///
    /// # Errors
    ///
    /// As for [`infer`](Self::infer).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-infer-timeout-{}", std::process::id());
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
    /// use std::time::Duration;
    /// use shm_runtime::Error;
    ///
    /// // `request` asks the sleep model `slow` for 1000 tokens of 10 ms each.
    /// let r = client.infer_timeout(&request, Duration::from_millis(20));
    /// assert!(matches!(r, Err(Error::TimedOut)));
    /// assert_eq!(client.in_flight(), 0); // given up, and cancelled
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn infer_timeout(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<ResponseView, Error> {
        let ticket = self.submit(request)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(ticket, left) {
                Ok(v) if v.is_final() => return Ok(v),
                Ok(_) => continue,
                Err(Error::TimedOut) if Instant::now() >= deadline => {
                    let _ = self.cancel(ticket);
                    self.conn.abandon(ticket.0);
                    return Err(Error::TimedOut);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits a request with `stream` set and returns an iterator over its chunks; the last item
    /// is the final answer. Dropped before its end, the stream cancels its request.
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-stream-request-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// # let client = shm_runtime::Client::connect(&name)?;
    /// use shm_runtime::protocol::{Input, Params, Request, Task};
    ///
    /// let request = Request {
    ///     id: 1,
    ///     model: "echo".into(),
    ///     task: Task::Generate,
    ///     input: Input::Text("abc".into()),
    ///     params: Params::default(),
    /// };
    /// // The echo model streams a part per character, then the whole.
    /// let mut parts = 0;
    /// for answer in client.stream_request(&request)? {
    ///     if !answer?.is_final() {
    ///         parts += 1;
    ///     }
    /// }
    /// assert_eq!(parts, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stream_request(&self, request: &Request) -> Result<Stream, Error> {
        let mut req = request.clone();
        req.params.stream = true;
        let ticket = self.submit(&req)?;
        Ok(Stream {
            client: self.clone(),
            ticket,
            done: false,
            deadline: Instant::now() + self.conn.options.timeout,
        })
    }

    /// Asks the server to cancel a request (queued or running). Its final answer is `Cancelled`
    /// unless it finished first.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownTicket`], [`Error::Busy`] when the ring is full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-cancel-{}", std::process::id());
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
    /// use std::time::Duration;
    /// use shm_runtime::Error;
    ///
    /// // `request` asks the sleep model `slow` for 1000 tokens of 10 ms each.
    /// let ticket = client.submit(&request)?;
    /// client.cancel(ticket)?;
    /// let answer = client.recv(ticket, Duration::from_secs(5));
    /// assert!(matches!(answer, Err(Error::Cancelled)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, ticket: Ticket) -> Result<(), Error> {
        let conn = &*self.conn;
        let (lane, chunk) = conn
            .inbox()
            .pending
            .get(&ticket.0)
            .filter(|p| !p.abandoned)
            .map(|p| (p.lane, p.chunk))
            .ok_or(Error::UnknownTicket(ticket.0))?;
        conn.requests[lane]
            .push(Descriptor::new(DescriptorKind::Cancel, chunk, 0, ticket.0).to_words())
            .map_err(|e| ring_full(lane, conn.requests[lane].capacity(), e))?;
        conn.svc.lane(lane).doorbell.notify();
        Ok(())
    }
}

fn estimate(req: &Request) -> usize {
    use crate::protocol::Input;
    let input = match &req.input {
        Input::Text(t) => t.len(),
        Input::Texts(ts) => ts.iter().map(|t| t.len() + 8).sum(),
        Input::Tokens(t) => t.len() * 4,
        Input::Chat(m) => m.iter().map(|m| m.content.len() + m.role.len() + 16).sum(),
        Input::Tensors(ts) => ts
            .iter()
            .map(|t| t.name.len() + t.shape.len() * 8 + t.data.len() * 8 + 32)
            .sum(),
    };
    input + req.model.len() + req.params.stop.iter().map(|s| s.len() + 8).sum::<usize>() + 256
}

/// The client-side error for a request ring of `lane` (of `capacity` descriptors) that refused a
/// push.
pub(super) fn ring_full(lane: usize, capacity: usize, e: impl std::fmt::Display) -> Error {
    Error::Busy(format!(
        "the request ring of lane {lane} is full ({capacity} descriptors not yet taken by the \
         server): {e}"
    ))
}

/// The client-side error for a failed loan of shared memory for `what`: this client's own share
/// or quota used up is [`Error::ResourceExhausted`]; the pool empty for everyone is
/// [`Error::Busy`].
pub(super) fn loan_error(e: shm_ring::pool::LoanError, what: &str) -> Error {
    use shm_ring::pool::LoanError;
    match e {
        LoanError::ShareExceeded { .. } | LoanError::QuotaExceeded { .. } => {
            Error::ResourceExhausted(format!("no shared memory for {what}: {e}"))
        }
        _ => Error::Busy(format!("no shared memory for {what}: {e}")),
    }
}
