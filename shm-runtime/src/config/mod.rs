//! Server configuration: from a TOML file or built in code.
//!
//! # Examples
//!
//! ```
//! use shm_runtime::config::{self, ModelConfig, ServerConfig};
//!
//! let in_code = ServerConfig::new("demo", vec![ModelConfig::new("echo", "echo")]);
//!
//! // The same from a file (feature `toml`, on by default; `load` tells every setting):
//! let toml = "service = 'demo'\n[[model]]\nname = 'echo'\nbackend = 'echo'\n";
//! # let dir = std::env::temp_dir().join(format!("doc-config-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("demo.toml");
//! std::fs::write(&path, toml)?;
//! let from_file = config::load(&path, None)?;
//! assert_eq!((from_file.name, from_file.models), (in_code.name, in_code.models));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod file;
mod options;
mod server;
mod validate;

#[cfg(feature = "toml")]
pub use file::load;
pub use file::{cache_dir, parse_wait};
pub use options::{OptionValue, Options};
pub use server::{ModelConfig, ServerConfig};
pub use validate::ConfigError;
