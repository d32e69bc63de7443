//! What a client can count: its requests in flight, the tickets it holds, what the server counts
//! for it and the server's limit.

use std::sync::atomic::Ordering;

use super::{Client, Ticket};

impl Client {
    /// The server's pid, as its segment header records it.
    #[doc(hidden)]
    pub fn server_pid(&self) -> Option<u32> {
        match self.conn.svc.header().server_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Whether `ticket` is in flight (sent, its final answer not received, not abandoned).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-is-in-flight-{}", std::process::id());
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
    /// use std::time::Duration;
    ///
    /// // `request`: a generation by the echo model.
    /// let ticket = client.submit(&request)?;
    /// assert!(client.is_in_flight(ticket));
    /// let _answer = client.recv(ticket, Duration::from_secs(5))?;
    /// assert!(!client.is_in_flight(ticket)); // the final answer is in
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_in_flight(&self, ticket: Ticket) -> bool {
        let inbox = self.conn.inbox();
        inbox.pending.get(&ticket.0).is_some_and(|p| !p.abandoned)
    }

    /// Requests this client has in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-in-flight-{}", std::process::id());
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
    /// use std::time::Duration;
    ///
    /// // `request`: a generation by the echo model.
    /// let tickets = [client.submit(&request)?, client.submit(&request)?];
    /// assert_eq!(client.in_flight(), 2);
    /// for ticket in tickets {
    ///     client.recv(ticket, Duration::from_secs(5))?;
    /// }
    /// assert_eq!(client.in_flight(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_flight(&self) -> usize {
        let inbox = self.conn.inbox();
        inbox.pending.values().filter(|p| !p.abandoned).count()
    }

    /// Tickets this client holds: its requests in flight and those it gave up on (a timeout, a
    /// dropped stream or future) whose final answer has not come back yet. The server may still
    /// count the latter against [`max_in_flight`](Self::max_in_flight), so a caller that keeps
    /// within the limit counts these.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-tickets-held-{}", std::process::id());
    /// # let _server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
    /// let client = Client::connect(&name)?;
    /// assert_eq!(client.tickets_held(), 0);
    /// client.embed("echo", &["hi"])?;
    /// assert_eq!(client.tickets_held(), 0); // answered: the ticket is free again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tickets_held(&self) -> usize {
        self.conn.inbox().pending.len()
    }

    /// Requests of this connection the server counts in flight: accepted and not yet finished.
    /// A request this client cancelled or gave up on stays counted until the server has ended
    /// it, so this can exceed [`in_flight`](Self::in_flight) for a moment; the server refuses a
    /// request beyond [`max_in_flight`](Self::max_in_flight) by this count.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-server-in-flight-{}", std::process::id());
    /// # let _server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
    /// let client = Client::connect(&name)?;
    /// client.embed("echo", &["hi"])?;
    /// // Answered: nothing left in flight (the count drops as the server releases the request).
    /// # std::thread::sleep(std::time::Duration::from_millis(20));
    /// assert_eq!(client.server_in_flight(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn server_in_flight(&self) -> u32 {
        let entry = self.conn.svc.client(self.conn.slot);
        entry.inflight.load(Ordering::Acquire)
    }

    /// The most requests the server lets one client have in flight (its `max_inflight`); one
    /// more is refused with [`Error::Busy`](crate::Error::Busy).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-max-in-flight-{}", std::process::id());
    /// let mut config = ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]);
    /// config.max_inflight = 8;
    /// let _server = Server::start(config)?;
    /// assert_eq!(Client::connect(&name)?.max_in_flight(), 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_in_flight(&self) -> u32 {
        self.conn.svc.header().max_inflight.load(Ordering::Relaxed)
    }
}
