//! The wire protocol: rkyv-archived requests and responses, serialized straight into pool chunks and
//! read in place after validation.
//!
//! A request travels as a 16-byte [`Descriptor`] on a ring that names a chunk; the chunk holds the
//! archived [`Request`]. The server validates it with bytecheck ([`access_request`]) and the
//! semantic [`Limits`] ([`check_request`]) before any field is used, and answers with an archived
//! [`Response`] in a chunk of its own (or, when even that is impossible, with an error code inline in
//! the descriptor).
//!
//! # Examples
//!
//! ```
//! use shm_runtime::protocol::{access_request, access_response, check_request, encode_into};
//! use shm_runtime::protocol::{f32_native, ArchivedBody, Body, Input, Limits, Params, Request};
//! use shm_runtime::protocol::{Response, Task};
//!
//! // The client's side: a request archived straight into a chunk (here, an aligned buffer).
//! let req = Request {
//!     id: 7,
//!     model: "echo".into(),
//!     task: Task::Embed,
//!     input: Input::Text("hi".into()),
//!     params: Params::default(),
//! };
//! let mut chunk = rkyv::util::AlignedVec::<16>::new();
//! chunk.resize(1024, 0);
//! let n = encode_into(&req, &mut chunk)?;
//! // The server's side: validated in place before any field is used.
//! let archived = access_request(&chunk[..n])?;
//! check_request(archived, &Limits::default())?;
//! assert_eq!(archived.model, "echo");
//! // The answer comes back the same way.
//! let resp = Response { id: archived.id.to_native(), body: Body::Embedding(vec![104.0, 105.0]) };
//! let n = encode_into(&resp, &mut chunk)?;
//! let answer = access_response(&chunk[..n])?;
//! let ArchivedBody::Embedding(v) = &answer.body else { panic!("not an embedding") };
//! assert_eq!((answer.id.to_native(), f32_native(v)), (7, &[104.0, 105.0][..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// Version of this protocol; lives in the service segment header. Bumped on any change to the
/// archived types, the descriptor format or the service segment's layout (5: a lane's panic and
/// restart counters and its state; a client's ejection reason; cancels naming their request's
/// chunk and the `CancelRefused` notice; batches of texts; the generation options `min_p`,
/// `presence_penalty`, `frequency_penalty` and `logprobs` in `Params`, and per-token
/// `logprobs` (`TokenLogprob`, `TopLogprob`) in `Generation` and `StreamChunk`; 6: the lanes'
/// metrics in the segment, and the generated token's text in `TokenLogprob`).
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::PROTOCOL_VERSION;
/// use shm_runtime::ring::Segment;
/// # let name = format!("doc-protocol-version-{}", std::process::id());
/// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
/// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
///
/// // A server stamps its service segment with the version it speaks; clients refuse any other.
/// let segment = Segment::open(&name)?;
/// assert_eq!(segment.user_version(), PROTOCOL_VERSION);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const PROTOCOL_VERSION: u32 = 6;

mod codec;
mod descriptor;
mod errors;
mod head;
mod limits;
mod params;
mod request;
mod response;
mod tensor;
#[cfg(test)]
mod tests;

pub use codec::*;
pub use descriptor::*;
pub use errors::*;
pub use head::*;
pub use limits::*;
pub use params::*;
pub use request::*;
pub use response::*;
pub use tensor::*;
