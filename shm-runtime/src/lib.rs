//! shm-runtime: co-located processes send inference requests to a model server through shared
//! memory and read the answers in place.
//!
//! This crate is the runtime layer (protocol, server, scheduler, client). It builds on [`shm_ring`],
//! re-exported here, which provides the segments, rings, pool and wait strategies.

pub use shm_ring as ring;
