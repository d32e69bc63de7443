//! From a model configuration's backend name to a loaded [`Backend`]: a table of factories, one
//! per backend. Each backend parses its own options.

use crate::backend::{echo, sleep, Backend};
use crate::config::ModelConfig;

/// Makes a backend from a model's configuration.
pub type Factory = fn(&ModelConfig) -> Result<Box<dyn Backend>, LoadError>;

/// Why a backend could not be made.
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

/// Backends that exist behind a cargo feature.
const FEATURES: &[&str] = &["onnx", "gguf"];

/// The factory of backend `name`, when this build has it.
pub fn factory(name: &str) -> Option<Factory> {
    BUILT_IN.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

/// Loads the backend `m` names, with its options and model file.
///
/// # Errors
///
/// [`LoadError`]: an unknown backend, one this build leaves out, or one that refuses the model.
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
