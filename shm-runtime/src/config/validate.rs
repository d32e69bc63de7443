//! What a configuration must satisfy before a server loads anything: [`ServerConfig::validate`]
//! and the [`ConfigError`] it returns.

use super::ServerConfig;
use crate::protocol::MAX_DESC_LEN;
use crate::service::{MAX_CLIENTS, MAX_MODELS, MAX_NAME, RING_PARTICIPANTS};

impl ServerConfig {
    /// Checks what the server needs of this configuration before it loads anything: the ring
    /// size, chunk sizes a descriptor can name, the model count and names, client slots and
    /// worker threads.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{ConfigError, ModelConfig, ServerConfig};
    ///
    /// let mut config = ServerConfig::new("svc", vec![ModelConfig::new("echo", "echo")]);
    /// assert_eq!(config.validate(), Ok(()));
    /// config.models.push(ModelConfig::new("echo", "sleep"));
    /// assert_eq!(config.validate(), Err(ConfigError::ModelName("echo".into())));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ring_capacity < 2 {
            return Err(ConfigError::RingCapacity(self.ring_capacity));
        }
        // A descriptor carries a length of 24 bits: larger chunks would have their answers and
        // requests cut short.
        if let Some(k) = self
            .pool
            .classes
            .iter()
            .find(|k| k.chunk_size > MAX_DESC_LEN)
        {
            return Err(ConfigError::ChunkTooLarge(k.chunk_size));
        }
        if self.pool.class_share == 0 || self.pool.class_share > 100 {
            return Err(ConfigError::ClientShare(self.pool.class_share));
        }
        if let Some(name) = self
            .backends
            .names()
            .find(|n| crate::backend::is_built_in(n))
        {
            return Err(ConfigError::BackendName(name.to_owned()));
        }
        if self.models.is_empty() {
            return Err(ConfigError::NoModels);
        }
        if self.models.len() > MAX_MODELS {
            return Err(ConfigError::TooManyModels(self.models.len()));
        }
        if self.max_clients == 0 || self.max_clients > MAX_CLIENTS {
            return Err(ConfigError::MaxClients(self.max_clients));
        }
        let workers: usize = self.models.iter().map(|m| m.workers(self)).sum();
        if self.models.iter().any(|m| m.workers(self) == 0) || workers + 2 > RING_PARTICIPANTS {
            return Err(ConfigError::Workers(workers));
        }
        let mut names = std::collections::HashSet::new();
        for m in &self.models {
            if m.name.is_empty() || m.name.len() > MAX_NAME || !names.insert(m.name.as_str()) {
                return Err(ConfigError::ModelName(m.name.clone()));
            }
        }
        Ok(())
    }
}

/// What [`ServerConfig::validate`] found wrong.
///
/// # Examples
///
/// ```
/// use shm_runtime::{ConfigError, ServerConfig, ServerError};
///
/// let config = ServerConfig::new("svc", Vec::new());
/// assert_eq!(config.validate(), Err(ConfigError::NoModels));
/// assert_eq!(ConfigError::NoModels.to_string(), "no models configured");
/// // Server::start checks it first, and loads nothing then.
/// let err = shm_runtime::Server::start(config).unwrap_err();
/// assert!(matches!(err, ServerError::Config(ConfigError::NoModels)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A backend registered in code takes a built-in backend's name.
    #[error("backend {0:?} is built in: register a custom backend under another name")]
    BackendName(String),
    /// Rings need at least two entries.
    #[error("ring_capacity must be at least 2, not {0}")]
    RingCapacity(usize),
    /// A pool size class has chunks longer than a descriptor can describe.
    #[error(
        "pool chunks must be at most {MAX_DESC_LEN} bytes (a descriptor's length field), not {0}"
    )]
    ChunkTooLarge(usize),
    /// A client's share of each pool class is a percentage.
    #[error("client_share_percent must be 1..=100, not {0}")]
    ClientShare(u32),
    /// Nothing to serve.
    #[error("no models configured")]
    NoModels,
    /// More models than the service's model table holds.
    #[error("{0} models; at most {MAX_MODELS}")]
    TooManyModels(usize),
    /// `max_clients` out of range.
    #[error("max_clients must be 1..={MAX_CLIENTS}, not {0}")]
    MaxClients(usize),
    /// A model without a worker, or more workers in all than a ring has participants.
    #[error(
        "every model needs at least one worker, and all models together at most {max} \
         (workers_per_lane, or the model's workers); {0} asked",
        max = RING_PARTICIPANTS - 2
    )]
    Workers(usize),
    /// An empty, too long or repeated model name.
    #[error("model names must be unique and 1..={MAX_NAME} bytes: {0:?}")]
    ModelName(String),
}
