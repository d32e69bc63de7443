//! Benchmark workloads shared by the criterion suites and the `report` binary, plus the report
//! writer (JSON, Markdown, PNG chart).
//!
//! Cross-process workloads re-execute the current binary as a child: a binary that uses them must
//! call [`child::dispatch`] first thing in `main` (the `report` binary and the criterion suites do).

pub mod child;
#[cfg(feature = "gguf")]
pub mod gguf_work;
#[cfg(feature = "onnx")]
pub mod onnx_work;
pub mod peers;
pub mod plot;
pub mod report;
pub mod ring_work;
pub mod runtime_work;
pub mod seed_work;
pub mod soak;
pub use shm_peers::stats;
