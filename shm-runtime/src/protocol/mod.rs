//! The wire protocol: rkyv-archived requests and responses, serialized straight into pool chunks and
//! read in place after validation.
//!
//! A request travels as a 16-byte [`Descriptor`] on a ring that names a chunk; the chunk holds the
//! archived [`Request`]. The server validates it with bytecheck ([`access_request`]) and the
//! semantic [`Limits`] ([`check_request`]) before any field is used, and answers with an archived
//! [`Response`] in a chunk of its own (or, when even that is impossible, with an error code inline in
//! the descriptor).

/// Version of this protocol; lives in the service segment header. Bumped on any change to the
/// archived types, the descriptor format or the service segment's layout (5: a lane's panic and
/// restart counters and its state; a client's ejection reason; cancels naming their request's
/// chunk and the `CancelRefused` notice; batches of texts; the generation options `min_p`,
/// `presence_penalty`, `frequency_penalty` and `logprobs` in `Params`, and per-token
/// `logprobs` (`TokenLogprob`, `TopLogprob`) in `Generation` and `StreamChunk`; 6: the lanes'
/// metrics in the segment, and the generated token's text in `TokenLogprob`).
pub const PROTOCOL_VERSION: u32 = 6;

mod codec;
mod descriptor;
mod head;
mod limits;
#[cfg(test)]
mod tests;
mod types;

pub use codec::*;
pub use descriptor::*;
pub use head::*;
pub use limits::*;
pub use types::*;
