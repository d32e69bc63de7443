//! From a model configuration's backend name to a loaded [`Backend`]: a table of factories, one
//! per backend. Each backend parses its own options.

use crate::backend::{echo, sleep, Backend};
use crate::config::ModelConfig;

/// Makes a backend from a model's configuration.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{factory, Backend, Factory};
/// use shm_runtime::protocol::Task;
/// use shm_runtime::ModelConfig;
///
/// let make: Factory = factory("sleep").expect("built in");
/// let mut model = ModelConfig::new("slow", "sleep");
/// model.options.insert("slots".into(), 4.into());
/// let backend = make(&model)?;
/// assert_eq!(backend.tasks(), [Task::Generate]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type Factory = fn(&ModelConfig) -> Result<Box<dyn Backend>, LoadError>;

/// Why a backend could not be made.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{load, LoadError};
/// use shm_runtime::ModelConfig;
///
/// let err = load(&ModelConfig::new("m", "tensorrt")).err().unwrap();
/// assert!(matches!(&err, LoadError::Unknown { name, .. } if name == "tensorrt"));
/// let mut slow = ModelConfig::new("slow", "sleep");
/// slow.options.insert("step_ms".into(), "fast".into());
/// let err = load(&slow).err().unwrap();
/// assert_eq!(err, LoadError::Failed("option step_ms must be a number".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// No backend of that name.
    #[error("unknown backend {name:?} (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The backends this build has, comma-separated.
        known: String,
    },
    /// The backend exists but this build leaves it out.
    #[error("backend {0} needs the {0} feature (cargo build --features {0})")]
    NotBuilt(&'static str),
    /// The backend refused the model: a bad option, a missing or unreadable model file.
    #[error("{0}")]
    Failed(String),
}

/// The backends of this build, by name.
const BUILT_IN: &[(&str, Factory)] = &[
    ("echo", |_| Ok(Box::new(echo::Echo))),
    ("sleep", |m| {
        Ok(Box::new(
            sleep::Sleep::from_config(m).map_err(LoadError::Failed)?,
        ))
    }),
    // Test only: panics on a given input (`backend::panicking`).
    #[cfg(any(test, feature = "test-backends"))]
    ("panic", |m| {
        Ok(Box::new(
            crate::backend::panicking::Panicking::from_config(m).map_err(LoadError::Failed)?,
        ))
    }),
    #[cfg(feature = "onnx")]
    ("onnx", |m| {
        Ok(Box::new(
            crate::backend::onnx::Onnx::load(m).map_err(LoadError::Failed)?,
        ))
    }),
    #[cfg(feature = "gguf")]
    ("gguf", |m| {
        Ok(Box::new(
            crate::backend::gguf::Gguf::load(m).map_err(LoadError::Failed)?,
        ))
    }),
];

/// A backend factory registered in code ([`ServerBuilder::backend`](crate::ServerBuilder::backend)).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use shm_runtime::backend::{echo::Echo, Backend, CustomFactory, LoadError};
/// use shm_runtime::protocol::Task;
/// use shm_runtime::ModelConfig;
///
/// // What `CustomBackends::register` keeps of a factory: any model served by the echo backend.
/// let factory: CustomFactory = Arc::new(|m: &ModelConfig| match &m.path {
///     None => Ok(Box::new(Echo) as Box<dyn Backend>),
///     Some(_) => Err(LoadError::Failed("this backend loads no file".into())),
/// });
/// let backend = factory(&ModelConfig::new("m", "mirror"))?;
/// assert!(backend.tasks().contains(&Task::Embed));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type CustomFactory =
    std::sync::Arc<dyn Fn(&ModelConfig) -> Result<Box<dyn Backend>, LoadError> + Send + Sync>;

/// Backends registered in code by the program that embeds the server, beside the built-in ones;
/// a model's `backend` names one of either.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{echo::Echo, load_with};
/// use shm_runtime::{ModelConfig, ServerConfig};
///
/// let mut config = ServerConfig::new("svc", vec![ModelConfig::new("m", "mirror")]);
/// // A backend of this program's own, under a name of its own ...
/// config.backends.register("mirror", |_: &ModelConfig| Ok::<_, String>(Echo));
/// // ... which a server loads like the built-in ones.
/// assert!(load_with(&config.models[0], &config.backends).is_ok());
/// ```
#[derive(Clone, Default)]
pub struct CustomBackends {
    factories: Vec<(String, CustomFactory)>,
}

impl std::fmt::Debug for CustomBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.factories.iter().map(|(n, _)| n))
            .finish()
    }
}

impl CustomBackends {
    /// Registers backend `name`, made for each model that names it by `factory` (which may
    /// refuse the model with a sentence saying why). A later registration of the same name
    /// replaces an earlier one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::{echo::Echo, load_with, CustomBackends, LoadError};
    /// use shm_runtime::ModelConfig;
    ///
    /// let mut custom = CustomBackends::default();
    /// custom.register("mirror", |m: &ModelConfig| match m.path {
    ///     None => Ok(Echo),
    ///     Some(_) => Err("mirror loads no model file"),
    /// });
    /// let mut model = ModelConfig::new("m", "mirror");
    /// assert!(load_with(&model, &custom).is_ok());
    /// model.path = Some("model.bin".into());
    /// let refused = LoadError::Failed("mirror loads no model file".into());
    /// assert_eq!(load_with(&model, &custom).err(), Some(refused));
    /// ```
    pub fn register<B, E, F>(&mut self, name: &str, factory: F)
    where
        B: Backend + 'static,
        E: std::fmt::Display,
        F: Fn(&ModelConfig) -> Result<B, E> + Send + Sync + 'static,
    {
        let f: CustomFactory = std::sync::Arc::new(move |m: &ModelConfig| {
            factory(m)
                .map(|b| Box::new(b) as Box<dyn Backend>)
                .map_err(|e| LoadError::Failed(e.to_string()))
        });
        self.factories.retain(|(n, _)| n != name);
        self.factories.push((name.to_owned(), f));
    }

    /// The names registered.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::backend::{echo::Echo, CustomBackends};
    /// use shm_runtime::ModelConfig;
    ///
    /// let mut custom = CustomBackends::default();
    /// custom.register("a", |_: &ModelConfig| Ok::<_, String>(Echo));
    /// custom.register("b", |_: &ModelConfig| Ok::<_, String>(Echo));
    /// custom.register("a", |_: &ModelConfig| Ok::<_, String>(Echo)); // replaces the first
    /// assert_eq!(custom.names().collect::<Vec<_>>(), ["b", "a"]);
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.iter().map(|(n, _)| n.as_str())
    }

    /// Whether no backend is registered.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::{ModelConfig, ServerConfig};
    ///
    /// let config = ServerConfig::new("svc", vec![ModelConfig::new("echo", "echo")]);
    /// assert!(config.backends.is_empty()); // built-in backends only
    /// ```
    pub fn is_empty(&self) -> bool {
        self.factories.is_empty()
    }

    fn get(&self, name: &str) -> Option<&CustomFactory> {
        self.factories
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f)
    }
}

/// Loads the backend `m` names: a custom one of `custom`, or a built-in one ([`load`]).
///
/// # Errors
///
/// As for [`load`].
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{echo::Echo, load_with, CustomBackends};
/// use shm_runtime::ModelConfig;
///
/// let mut custom = CustomBackends::default();
/// custom.register("mirror", |_: &ModelConfig| Ok::<_, String>(Echo));
/// assert!(load_with(&ModelConfig::new("m", "mirror"), &custom).is_ok());
/// assert!(load_with(&ModelConfig::new("m", "echo"), &custom).is_ok()); // built in
/// // An unknown name's error lists the custom backends beside the built-in ones.
/// let err = load_with(&ModelConfig::new("m", "mirorr"), &custom).err().unwrap();
/// assert!(err.to_string().starts_with("unknown backend \"mirorr\" (known: echo, "));
/// assert!(err.to_string().ends_with(", mirror)"));
/// ```
pub fn load_with(m: &ModelConfig, custom: &CustomBackends) -> Result<Box<dyn Backend>, LoadError> {
    match custom.get(&m.backend) {
        Some(f) => f(m),
        None => load(m).map_err(|e| match e {
            LoadError::Unknown { name, known } if !custom.is_empty() => LoadError::Unknown {
                name,
                known: format!("{known}, {}", custom.names().collect::<Vec<_>>().join(", ")),
            },
            e => e,
        }),
    }
}

/// Whether `name` is a built-in backend (of this build or behind a feature).
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::is_built_in;
///
/// assert!(is_built_in("echo"));
/// assert!(is_built_in("gguf")); // even in a build without the gguf feature
/// assert!(!is_built_in("mirror")); // a name free for a backend of your own
/// ```
pub fn is_built_in(name: &str) -> bool {
    factory(name).is_some() || FEATURES.contains(&name)
}

/// Backends that exist behind a cargo feature.
const FEATURES: &[&str] = &["onnx", "gguf"];

/// The factory of backend `name`, when this build has it.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::factory;
/// use shm_runtime::ModelConfig;
///
/// let make = factory("echo").expect("echo is always built in");
/// assert!(make(&ModelConfig::new("echo", "echo")).is_ok());
/// assert!(factory("tensorrt").is_none());
/// ```
pub fn factory(name: &str) -> Option<Factory> {
    BUILT_IN.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

/// Loads the backend `m` names, with its options and model file.
///
/// # Errors
///
/// [`LoadError`]: an unknown backend, one this build leaves out, or one that refuses the model.
///
/// # Examples
///
/// ```
/// use shm_runtime::backend::{load, Backend};
/// use shm_runtime::ModelConfig;
///
/// let mut model = ModelConfig::new("slow", "sleep");
/// model.options.insert("slots".into(), 4.into());
/// let backend = load(&model)?;
/// assert!(backend.stepper()?.is_some()); // with slots, the sleep backend steps
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load(m: &ModelConfig) -> Result<Box<dyn Backend>, LoadError> {
    if let Some(f) = factory(&m.backend) {
        return f(m);
    }
    match FEATURES.iter().find(|&&f| f == m.backend) {
        Some(&feature) => Err(LoadError::NotBuilt(feature)),
        None => Err(LoadError::Unknown {
            name: m.backend.clone(),
            known: BUILT_IN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_left_out_backends_are_told_apart() {
        let err = load(&ModelConfig::new("m", "nope")).err();
        assert!(
            matches!(&err, Some(LoadError::Unknown { name, known }) if name == "nope" && known.contains("echo")),
            "{err:?}"
        );
        #[cfg(not(feature = "gguf"))]
        assert_eq!(
            load(&ModelConfig::new("m", "gguf")).err(),
            Some(LoadError::NotBuilt("gguf"))
        );
    }

    #[test]
    fn custom_backends_load_beside_the_built_in_ones_and_may_not_take_their_names() {
        let mut custom = CustomBackends::default();
        custom.register("mine", |m: &ModelConfig| {
            if m.options.contains_key("bad") {
                Err("option bad is bad")
            } else {
                Ok(echo::Echo)
            }
        });
        assert!(load_with(&ModelConfig::new("m", "mine"), &custom).is_ok());
        assert!(load_with(&ModelConfig::new("m", "echo"), &custom).is_ok());
        let mut bad = ModelConfig::new("m", "mine");
        bad.options.insert("bad".into(), "yes".into());
        assert_eq!(
            load_with(&bad, &custom).err(),
            Some(LoadError::Failed("option bad is bad".into()))
        );
        let err = load_with(&ModelConfig::new("m", "nope"), &custom).err();
        assert!(
            matches!(&err, Some(LoadError::Unknown { known, .. }) if known.contains("mine") && known.contains("echo")),
            "{err:?}"
        );
        let mut config = crate::ServerConfig::new("svc", vec![ModelConfig::new("m", "echo")]);
        config
            .backends
            .register("echo", |_: &ModelConfig| Ok::<_, String>(echo::Echo));
        assert_eq!(
            config.validate(),
            Err(crate::ConfigError::BackendName("echo".into()))
        );
    }

    #[test]
    fn each_backend_parses_its_own_options() {
        let mut m = ModelConfig::new("m", "sleep");
        m.options.insert("step_ms".into(), "fast".into());
        let err = load(&m).err();
        assert!(
            matches!(&err, Some(LoadError::Failed(msg)) if msg.contains("step_ms")),
            "{err:?}"
        );
        assert!(load(&ModelConfig::new("m", "echo")).is_ok());
    }
}
