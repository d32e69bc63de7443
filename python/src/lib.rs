//! `shm_runtime._native`: the Python package's compiled core, over the Rust client.
//!
//! The package (`pysrc/shm_runtime`) re-exports these classes; `errors.py` defines the
//! exceptions they raise.

mod aio;
mod answers;
mod bridge;
mod client;
mod embeddings;
mod errors;
mod options;

use pyo3::prelude::*;

/// The compiled core of `shm_runtime`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<client::TextStream>()?;
    m.add_class::<aio::AsyncClient>()?;
    m.add_class::<aio::AsyncTextStream>()?;
    m.add_class::<embeddings::Embeddings>()?;
    m.add_class::<answers::Classification>()?;
    m.add_class::<answers::Generation>()?;
    m.add_class::<answers::Usage>()?;
    m.add_class::<answers::Health>()?;
    m.add_class::<answers::ModelHealth>()?;
    m.add("PROTOCOL_VERSION", shm_runtime::protocol::PROTOCOL_VERSION)?;
    Ok(())
}
