//! The client library: attach to a service by name, submit requests serialized straight into
//! shared memory, receive answers as zero-copy views.
//!
//! A [`Client`] is `Send + Sync` and cheap to clone: threads of one process share one connection
//! (one client slot). Answers arrive on one response ring; whichever waiting thread holds the
//! "leader" role pops it and routes it to the ticket it belongs to.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use shm_ring::pool::{OwnerId, Pool};
use shm_ring::{mpmc, WaitStrategy};

use crate::protocol::DescriptorWords;
use crate::service::Service;

#[cfg(feature = "async")]
mod asynchronous;
mod connection;
mod counts;
mod embeddings;
pub(crate) mod health;
mod hooks;
mod inbox;
mod options;
mod submit;
mod typed;
mod view;

#[cfg(feature = "async")]
pub use asynchronous::{AsyncClient, AsyncTextStream};
pub use health::{Health, ModelHealth, ModelState};
use inbox::Inbox;
pub use options::{GenerateOptions, Message};
pub use typed::{Classification, Embeddings, Generation, StreamEvent, TextStream, Usage};
pub use view::{ResponseView, Stream};

/// How a client waits.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-client-options-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// use std::time::Duration;
/// use shm_runtime::{Client, ClientOptions};
///
/// assert_eq!(ClientOptions::default().timeout, Duration::from_secs(30));
/// // Calls that give no deadline of their own wait at most 2 s.
/// let options = ClientOptions { timeout: Duration::from_secs(2), ..ClientOptions::default() };
/// let client = Client::connect_with(&name, options)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How a thread waiting for an answer waits.
    pub wait: WaitStrategy,
    /// Deadline of calls that do not give one.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            wait: WaitStrategy::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A request in flight.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-ticket-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use shm_runtime::protocol::{Input, Params, Request, Task};
///
/// let mut prompts = HashMap::new();
/// for (id, prompt) in (1..).zip(["one", "two"]) {
///     let request = Request {
///         id,
///         model: "echo".into(),
///         task: Task::Generate,
///         input: Input::Text(prompt.into()),
///         params: Params::default(),
///     };
///     prompts.insert(client.submit(&request)?, prompt);
/// }
/// for (ticket, prompt) in prompts {
///     assert!(client.recv(ticket, Duration::from_secs(5))?.is_final(), "{prompt}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(pub u32);

struct Connection {
    svc: Service,
    /// The model table, read once at connect (it never changes while a server lives).
    models: Vec<(String, usize, u32)>,
    pool: Pool,
    owner: OwnerId,
    slot: usize,
    epoch: u32,
    requests: Vec<mpmc::Producer<DescriptorWords>>,
    responses: mpmc::Consumer<DescriptorWords>,
    inbox: Mutex<Inbox>,
    arrived: Condvar,
    next_ticket: AtomicU32,
    /// Ids of the typed calls' requests.
    next_request: std::sync::atomic::AtomicU64,
    options: ClientOptions,
    /// Set once a wait found the server dead: later calls fail at once.
    server_gone: std::sync::atomic::AtomicBool,
    /// Answers that arrived for no ticket in flight (see [`Client::stray_answers`]).
    strays: std::sync::atomic::AtomicU64,
}

/// A connection to a service: `Send + Sync`, cheap to clone (clones share the connection), and
/// usable from many threads at once. The typed calls ([`embed`](Self::embed),
/// [`classify`](Self::classify), [`generate`](Self::generate), [`chat`](Self::chat),
/// [`stream`](Self::stream)) are the usual way in; [`infer`](Self::infer),
/// [`submit`](Self::submit) + [`recv`](Self::recv) and [`stream_request`](Self::stream_request)
/// take raw [`Request`](crate::protocol::Request)s.
///
/// ```
/// use shm_runtime::{Client, GenerateOptions, ModelConfig, Server, ServerConfig};
///
/// let name = format!("doc-client-{}", std::process::id());
/// let server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
/// let client = Client::connect(&name)?;
/// let g = client.generate("echo", "hello", &GenerateOptions::default())?;
/// assert_eq!(g.text, "hello");
/// # drop(client); server.shutdown(std::time::Duration::ZERO);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    conn: Arc<Connection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("slot", &self.conn.slot)
            .field("owner", &self.conn.owner)
            .finish()
    }
}
