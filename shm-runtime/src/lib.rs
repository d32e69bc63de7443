//! shm-runtime: co-located processes send inference requests to a model server through shared
//! memory, without copies.
//!
//! # What it guarantees
//!
//! * **Zero copy.** A client serializes its request (rkyv) straight into a chunk of the service's
//!   shared pool and passes a 16-byte descriptor on a ring; the server validates the archive in
//!   place and writes its answer straight into another chunk, which the client reads in place.
//! * **Nothing from shared memory is trusted.** Descriptors, chunk ownership, archives (bytecheck)
//!   and semantic limits are checked before use; bad input gets a typed error answer, never a panic
//!   in the server.
//! * **Every accepted request gets exactly one final answer** (result, error, timeout, cancellation
//!   or shutdown), unless its client died; a dead client's slot, queued work and chunks are
//!   reclaimed.
//! * **A panicking backend is contained**: the requests the panicking call held get a `Backend`
//!   error answer, and the model's backend is loaded again (a few times; then the model is marked
//!   failed and every request to it gets a `Backend` error at once).
//! * **A dead server is noticed**: blocked client calls return [`Error::ServerGone`] within about
//!   20 ms.
//!
//! # Example
//!
//! ```
//! use shm_runtime::{Client, GenerateOptions, ModelConfig, Server, ServerConfig};
//!
//! # let name = format!("doc-crate-{}", std::process::id());
//! let server = Server::start(ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo")]))?;
//! let client = Client::connect(&name)?;
//! let g = client.generate("echo", "hello", &GenerateOptions::default())?;
//! assert_eq!(g.text, "hello");
//! let e = client.embed("echo", &["a", "bc"])?; // read in place, in the answer's shared chunk
//! assert_eq!((e.len(), e.dim()), (2, 2));
//! # drop(server);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The raw protocol is one level down: [`protocol::Request`] sent with [`Client::infer`],
//! [`Client::submit`] and [`Client::recv`], or [`Client::stream_request`].

pub use shm_ring as ring;

pub mod backend;
mod client;
pub mod config;
mod error;
pub mod metrics;
pub mod protocol;
mod scheduler;
mod server;
mod service;
mod status;

#[cfg(feature = "async")]
pub use client::{AsyncClient, AsyncTextStream};
pub use client::{
    Classification, Client, ClientOptions, Embeddings, GenerateOptions, Generation, Health,
    Message, ModelHealth, ModelState, ResponseView, Stream, StreamEvent, TextStream, Ticket, Usage,
};
pub use config::{ConfigError, ModelConfig, ServerConfig};
pub use error::{Error, ServerError};
pub use protocol::{FinishReason, TokenLogprob, TopLogprob};
pub use server::{Server, ServerBuilder};
pub use status::{
    error_name, status, ClientStatus, LaneState, LaneStatus, PoolClassStatus, ServiceState,
    ServiceStatus,
};

/// Internals for the benchmarks, the fuzz targets and out-of-tree test clients: the service
/// segment's layout and the scheduler. Not a stable interface.
#[doc(hidden)]
pub mod testing {
    pub use crate::scheduler::*;
    pub use crate::service::*;
}

/// The README's Rust examples, compiled as doc tests: what it shows builds against this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
