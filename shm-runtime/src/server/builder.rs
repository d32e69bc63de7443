//! [`ServerBuilder`]: a server configured in code, with backends of the embedding program's own.

use crate::backend::Backend;
use crate::config::{ModelConfig, ServerConfig};
use crate::error::ServerError;

use super::Server;

/// Builds a server in code: models, backends of your own beside the built-in ones, and any other
/// setting of [`ServerConfig`].
///
/// ```no_run
/// use shm_runtime::backend::writer::Out;
/// use shm_runtime::backend::{Backend, BackendError, RunContext};
/// use shm_runtime::protocol::{ArchivedInput, ArchivedRequest, Body, Task};
/// use shm_runtime::{ModelConfig, ServerBuilder};
///
/// /// Answers every text with its length.
/// struct Length;
///
/// impl Backend for Length {
///     fn tasks(&self) -> &[Task] {
///         &[Task::Classify]
///     }
///
///     fn run(
///         &self,
///         req: &ArchivedRequest,
///         _ctx: &mut dyn RunContext,
///         out: &mut Out<'_>,
///     ) -> Result<(), BackendError> {
///         let ArchivedInput::Text(t) = &req.input else {
///             return Err(BackendError::Invalid("send one text".into()));
///         };
///         let label = format!("{} bytes", t.len());
///         Ok(out.body(Body::Classification(vec![shm_runtime::protocol::LabelScore {
///             label,
///             score: 1.0,
///         }]))?)
///     }
/// }
///
/// let server = ServerBuilder::new("svc")
///     .backend("length", |_: &ModelConfig| Ok::<_, String>(Length))
///     .model(ModelConfig::new("length", "length"))
///     .start()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    config: ServerConfig,
}

impl ServerBuilder {
    /// A server for service `name`, with the defaults of [`ServerConfig::new`] and no model yet.
    pub fn new(name: &str) -> ServerBuilder {
        ServerBuilder {
            config: ServerConfig::new(name, Vec::new()),
        }
    }

    /// A server of `config` (read from a file, say), to add backends to.
    pub fn from_config(config: ServerConfig) -> ServerBuilder {
        ServerBuilder { config }
    }

    /// Registers backend `name`: each model whose `backend` is `name` is served by what
    /// `factory` makes of the model's configuration (its options, its path), or refused at start
    /// with the factory's error. The name may not be a built-in backend's.
    #[must_use]
    pub fn backend<B, E, F>(mut self, name: &str, factory: F) -> Self
    where
        B: Backend + 'static,
        E: std::fmt::Display,
        F: Fn(&ModelConfig) -> Result<B, E> + Send + Sync + 'static,
    {
        self.config.backends.register(name, factory);
        self
    }

    /// Serves `model` too.
    #[must_use]
    pub fn model(mut self, model: ModelConfig) -> Self {
        self.config.models.push(model);
        self
    }

    /// Changes any other setting.
    #[must_use]
    pub fn configure(mut self, f: impl FnOnce(&mut ServerConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Starts the server ([`Server::start`]).
    ///
    /// # Errors
    ///
    /// As for [`Server::start`]; [`ConfigError::BackendName`](crate::ConfigError::BackendName)
    /// for a backend registered under a built-in name.
    pub fn start(self) -> Result<Server, ServerError> {
        Server::start(self.config)
    }
}
