//! The errors a client sees.

use crate::protocol::ErrorCode;

/// Why a call on a [`Client`](crate::Client) failed.
///
/// # Examples
///
/// ```
/// # let name = format!("doc-error-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
/// # let client = shm_runtime::Client::connect(&name)?;
/// use std::time::Duration;
/// use shm_runtime::{Error, GenerateOptions};
///
/// // Busy passes: try again a little later. Every other error is the answer.
/// fn retry<T>(mut call: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
///     for _ in 0..100 {
///         match call() {
///             Err(Error::Busy(_)) => std::thread::sleep(Duration::from_millis(1)),
///             done => return done,
///         }
///     }
///     call()
/// }
/// let opts = GenerateOptions::default();
/// assert_eq!(retry(|| client.generate("echo", "hi", &opts))?.text, "hi");
/// let r = retry(|| client.generate("no-such-model", "hi", &opts));
/// assert!(matches!(r, Err(Error::ModelNotFound(_))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No service of that name is running (no segment, or its server died).
    #[error("no service named {0:?} is running: start it (`shm-runtime serve --name {0}`) or check the name")]
    ServiceNotFound(String),
    /// The service speaks another protocol version.
    #[error("the service speaks protocol {found}, this client {expected}: use a client of the server's release")]
    VersionMismatch {
        /// The service's version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The service segment cannot be used (permissions, corruption).
    #[error("cannot attach to the service: {0}")]
    Attach(String),
    /// The server stopped or died while the call was waiting.
    #[error("the server has gone (it stopped or died): connect again once it is back")]
    ServerGone,
    /// The server disconnected this client, for the reason given (it found the client's rings
    /// written with impossible values: a bug in the client, or memory it does not own written
    /// over). Requests in flight get no answer; connect again.
    #[error("the server disconnected this client: {0}; connect again (and fix what wrote into the rings)")]
    Disconnected(String),
    /// The service is busy (too many requests in flight, a full ring, no free client slot, the
    /// shared pool empty): try again later.
    #[error("the service is busy: {0}; retry later, or keep fewer requests in flight")]
    Busy(String),
    /// Memory ran out for this request: this client holds its share of shared memory (answers or
    /// stream parts it has not read, requests it has not sent), the pool had no chunk left for
    /// the answer, or the answer needs more than the largest chunk. Read what is waiting, or ask
    /// for less. Unlike [`Error::Busy`], waiting alone does not help while this client keeps what
    /// it holds.
    #[error(
        "resource exhausted: {0}; read or drop the answers this client holds, or ask for less"
    )]
    ResourceExhausted(String),
    /// The deadline passed.
    #[error("the request timed out: give it a longer timeout, or the server less to do")]
    TimedOut,
    /// The request was cancelled.
    #[error("the request was cancelled")]
    Cancelled,
    /// The request is malformed or breaks a limit.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No such model, or it does not do that task.
    #[error("model not found: {0} (`shm-runtime status` lists the service's models)")]
    ModelNotFound(String),
    /// The model backend failed.
    #[error("the model failed: {0}")]
    Backend(String),
    /// The server is shutting down and takes no new work.
    #[error("the server is shutting down and takes no new requests: connect to its successor")]
    ShuttingDown,
    /// The ticket is not one of this client's requests in flight.
    #[error("ticket {0} is not one of this client's requests in flight (already answered, abandoned, or never sent)")]
    UnknownTicket(u32),
    /// The server sent something this client cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The client-side error for an error answer of the server.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::ErrorCode;
    /// use shm_runtime::Error;
    ///
    /// let e = Error::from_code(ErrorCode::Busy, "the queue is full".into());
    /// assert_eq!(e, Error::Busy("the queue is full".into()));
    /// assert_eq!(Error::from_code(ErrorCode::TimedOut, String::new()), Error::TimedOut);
    /// ```
    pub fn from_code(code: ErrorCode, message: String) -> Error {
        match code {
            ErrorCode::InvalidRequest => Error::InvalidRequest(message),
            ErrorCode::ModelNotFound => Error::ModelNotFound(message),
            ErrorCode::Busy => Error::Busy(message),
            ErrorCode::TimedOut => Error::TimedOut,
            ErrorCode::Cancelled => Error::Cancelled,
            ErrorCode::Backend => Error::Backend(message),
            ErrorCode::ShuttingDown => Error::ShuttingDown,
            ErrorCode::ResourceExhausted => Error::ResourceExhausted(message),
        }
    }
}

/// Why a [`Server`](crate::Server) could not start.
///
/// # Examples
///
/// ```
/// use std::error::Error as _;
/// use shm_runtime::{ModelConfig, Server, ServerConfig, ServerError};
///
/// # let name = format!("doc-server-error-{}", std::process::id());
/// let config = ServerConfig::new(&name, vec![ModelConfig::new("chat", "llama")]);
/// let err = Server::start(config).unwrap_err();
/// assert!(matches!(&err, ServerError::Model { name, .. } if name == "chat"));
/// // What went wrong is in the chain of sources: print them all.
/// assert_eq!(err.to_string(), r#"cannot load model "chat""#);
/// assert!(err.source().unwrap().to_string().starts_with(r#"unknown backend "llama""#));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error("invalid configuration")]
    Config(#[from] crate::config::ConfigError),
    /// A model could not be loaded.
    #[error("cannot load model {name:?}")]
    Model {
        /// The model.
        name: String,
        /// Why.
        #[source]
        source: crate::backend::LoadError,
    },
    /// The segment could not be created (name in use by a live server, permissions...).
    #[error("cannot create service {name:?}")]
    Segment {
        /// Service name.
        name: String,
        /// The cause.
        #[source]
        source: shm_ring::CreateError,
    },
    /// Setting up the service segment or the server's threads failed.
    #[error("cannot set up the service: {what}")]
    Setup {
        /// What could not be done.
        what: &'static str,
        /// The cause, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ServerError {
    pub(crate) fn setup(
        what: &'static str,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ServerError {
        ServerError::Setup { what, source }
    }
}
