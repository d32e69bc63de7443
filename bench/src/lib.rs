//! Benchmark workloads shared by the criterion suites and the performance report ([`report`]),
//! and the chaos soak ([`soak`]). The `report` and `soak` binaries are thin wrappers around
//! [`report::main`] and [`soak::main`]; the peer transports of the round-trip comparison live in
//! the `shm-peers` crate (re-exported with the runtime's own in [`peers`]).
//!
//! Cross-process workloads re-execute the current binary as a child: a binary that uses them must
//! call [`child::dispatch`] first thing in `main` (the `report` binary and the criterion suites do).

pub mod child;
pub mod gateway_work;
#[cfg(feature = "gguf")]
pub mod gguf_work;
#[cfg(feature = "onnx")]
pub mod onnx_work;
pub mod peers;
pub mod python_work;
pub mod report;
pub mod ring_work;
pub mod runtime_work;
pub mod seed_comparison;
pub mod soak;
pub use shm_peers::stats;
