//! [`ServerBuilder`]: a server configured in code, with backends of the embedding program's own.

use crate::backend::Backend;
use crate::config::{ModelConfig, ServerConfig};
use crate::error::ServerError;

use super::Server;

/// Builds a server in code: models, backends of your own beside the built-in ones, and any other
/// setting of [`ServerConfig`].
///
/// # Examples
///
/// ```
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
/// # let name = format!("doc-server-builder-{}", std::process::id());
/// let server = ServerBuilder::new(&name)
///     .backend("length", |_: &ModelConfig| Ok::<_, String>(Length))
///     .model(ModelConfig::new("length", "length"))
///     .start()?;
/// let client = shm_runtime::Client::connect(&name)?;
/// assert_eq!(client.classify("length", &["four"])?[0].label, "4 bytes");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    config: ServerConfig,
}

impl ServerBuilder {
    /// A server for service `name`, with the defaults of [`ServerConfig::new`] and no model yet.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{ModelConfig, ServerBuilder};
    ///
    /// let builder = ServerBuilder::new("svc");
    /// assert!(builder.config().models.is_empty()); // add some before starting it
    /// let builder = builder.model(ModelConfig::new("echo", "echo"));
    /// assert_eq!(builder.config().max_clients, 32); // ServerConfig::new's defaults
    /// ```
    pub fn new(name: &str) -> ServerBuilder {
        ServerBuilder {
            config: ServerConfig::new(name, Vec::new()),
        }
    }

    /// A server of `config` (read from a file, say), to add backends to.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::echo::Echo;
    /// use shm_runtime::{Client, ModelConfig, ServerBuilder, ServerConfig};
    ///
    /// # let name = format!("doc-from-config-{}", std::process::id());
    /// // A configuration from a file, say, whose model needs a backend of the program's own.
    /// let config = ServerConfig::new(&name, vec![ModelConfig::new("m", "mine")]);
    /// let server = ServerBuilder::from_config(config)
    ///     .backend("mine", |_: &ModelConfig| Ok::<_, String>(Echo))
    ///     .start()?;
    /// assert_eq!(Client::connect(&name)?.models(), ["m"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config(config: ServerConfig) -> ServerBuilder {
        ServerBuilder { config }
    }

    /// Registers backend `name`: each model whose `backend` is `name` is served by what
    /// `factory` makes of the model's configuration (its options, its path), or refused at start
    /// with the factory's error. The name may not be a built-in backend's.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::echo::Echo;
    /// use shm_runtime::{ModelConfig, ServerBuilder, ServerError};
    ///
    /// // A backend of the program's own (here the built-in echo), for models that give a file.
    /// let picky = |m: &ModelConfig| match &m.path {
    ///     Some(_) => Ok(Echo),
    ///     None => Err("this backend needs a model file"),
    /// };
    /// # let name = format!("doc-backend-{}", std::process::id());
    /// let builder = ServerBuilder::new(&name).backend("picky", picky);
    /// let refused = builder.clone().model(ModelConfig::new("m", "picky")).start();
    /// assert!(matches!(refused, Err(ServerError::Model { .. })));
    /// let mut m = ModelConfig::new("m", "picky");
    /// m.path = Some("weights.bin".into());
    /// let server = builder.model(m).start()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{Client, ModelConfig, ServerBuilder};
    ///
    /// # let name = format!("doc-builder-model-{}", std::process::id());
    /// let server = ServerBuilder::new(&name)
    ///     .model(ModelConfig::new("echo", "echo"))
    ///     .model(ModelConfig::new("slow", "sleep"))
    ///     .start()?;
    /// assert_eq!(Client::connect(&name)?.models(), ["echo", "slow"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn model(mut self, model: ModelConfig) -> Self {
        self.config.models.push(model);
        self
    }

    /// Changes any other setting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_runtime::{ModelConfig, ServerBuilder};
    ///
    /// # let name = format!("doc-configure-{}", std::process::id());
    /// let server = ServerBuilder::new(&name)
    ///     .model(ModelConfig::new("echo", "echo"))
    ///     .configure(|c| {
    ///         c.max_clients = 4;
    ///         c.default_timeout = Duration::from_secs(5);
    ///     })
    ///     .start()?;
    /// assert_eq!(shm_runtime::status(&name)?.max_clients, 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn configure(mut self, f: impl FnOnce(&mut ServerConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// The configuration built so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{ModelConfig, ServerBuilder};
    ///
    /// let builder = ServerBuilder::new("svc")
    ///     .model(ModelConfig::new("echo", "echo"))
    ///     .configure(|c| c.workers_per_lane = 2);
    /// assert_eq!(builder.config().models.len(), 1);
    /// assert_eq!(builder.config().validate(), Ok(()));
    /// ```
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Starts the server ([`Server::start`]).
    ///
    /// # Errors
    ///
    /// As for [`Server::start`]; [`ConfigError::BackendName`](crate::ConfigError::BackendName)
    /// for a backend registered under a built-in name.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::echo::Echo;
    /// use shm_runtime::{ConfigError, ModelConfig, ServerBuilder, ServerError};
    ///
    /// # let name = format!("doc-builder-start-{}", std::process::id());
    /// let server = ServerBuilder::new(&name).model(ModelConfig::new("echo", "echo")).start()?;
    /// drop(server); // drains and stops
    /// // A backend of one's own may not take a built-in backend's name.
    /// let err = ServerBuilder::new(&name)
    ///     .backend("echo", |_: &ModelConfig| Ok::<_, String>(Echo))
    ///     .model(ModelConfig::new("echo", "echo"))
    ///     .start()
    ///     .unwrap_err();
    /// assert!(matches!(err, ServerError::Config(ConfigError::BackendName(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(self) -> Result<Server, ServerError> {
        Server::start(self.config)
    }
}
