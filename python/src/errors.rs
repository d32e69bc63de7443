//! The runtime's errors as the Python exceptions of `shm_runtime.errors` (defined in Python, so
//! that each can also derive from the built-in exception a caller expects).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;
use shm_runtime::Error;

/// `shm_runtime.errors`, imported once.
static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The name of the exception class of `shm_runtime.errors` that `e` raises.
fn class_of(e: &Error) -> &'static str {
    match e {
        Error::ServiceNotFound(_) | Error::VersionMismatch { .. } => "ServiceNotFoundError",
        Error::ServerGone => "ServerGoneError",
        Error::Disconnected(_) => "DisconnectedError",
        Error::ShuttingDown => "ShuttingDownError",
        Error::Busy(_) => "BusyError",
        Error::ResourceExhausted(_) => "ResourceExhaustedError",
        Error::TimedOut => "TimedOutError",
        Error::Cancelled => "CancelledError",
        Error::InvalidRequest(_) => "InvalidRequestError",
        Error::ModelNotFound(_) => "ModelNotFoundError",
        Error::Backend(_) => "BackendError",
        Error::Protocol(_) | Error::UnknownTicket(_) => "ProtocolError",
        _ => "ShmRuntimeError",
    }
}

/// `e` as the exception to raise, its message the runtime's own sentence.
pub(crate) fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    let raised = ERRORS
        .get_or_try_init(py, || {
            PyModule::import(py, "shm_runtime.errors").map(Bound::unbind)
        })
        .and_then(|m| m.bind(py).getattr(class_of(&e)))
        .and_then(|class| class.call1((message.clone(),)));
    match raised {
        Ok(exception) => PyErr::from_value(exception),
        // The package is broken (errors.py missing): still say what happened.
        Err(import) => {
            let e = pyo3::exceptions::PyRuntimeError::new_err(message);
            e.set_cause(py, Some(import));
            e
        }
    }
}

/// `Result<T, Error>` into `PyResult<T>`.
pub(crate) trait IntoPyResult<T> {
    /// The result, its error raised as its Python exception.
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
