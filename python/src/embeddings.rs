//! `Embeddings`: an answer's float32 `(n, dim)` matrix, exported through the buffer protocol as
//! a read-only view of the answer chunk in shared memory (no copy).

use std::ffi::{c_int, CStr};
use std::sync::Mutex;

use pyo3::exceptions::{PyBufferError, PyIndexError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyMemoryView};

/// The buffer protocol's format of one native float32.
const FLOAT32: &CStr = c"f";

/// Embeddings of a batch of texts, one row each, in the answer chunk the server wrote.
///
/// `numpy.asarray(e)` (or `memoryview(e)`) is a zero-copy, read-only float32 view of shape
/// `(len(e), e.dim)`; the chunk stays the client's while any view lives. `release()` gives the
/// chunk back early; `copy()` makes an array of your own.
#[pyclass(module = "shm_runtime", frozen)]
#[derive(Debug)]
pub(crate) struct Embeddings {
    state: Mutex<State>,
    /// Shape and strides the exported views point at: they live as long as this object, which
    /// every view keeps alive.
    shape: [ffi::Py_ssize_t; 2],
    strides: [ffi::Py_ssize_t; 2],
}

#[derive(Debug)]
struct State {
    /// The answer, until released.
    answer: Option<shm_runtime::Embeddings>,
    /// Buffer views exported and not yet released.
    exports: usize,
}

impl Embeddings {
    pub(crate) fn new(answer: shm_runtime::Embeddings) -> Embeddings {
        let (rows, dim) = (answer.len(), answer.dim());
        Embeddings {
            shape: [ssize(rows), ssize(dim)],
            strides: [ssize(dim * 4), 4],
            state: Mutex::new(State {
                answer: Some(answer),
                exports: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the answer, or says it was released.
    fn with<T>(&self, f: impl FnOnce(&shm_runtime::Embeddings) -> T) -> PyResult<T> {
        match &self.state().answer {
            Some(a) => Ok(f(a)),
            None => Err(released()),
        }
    }
}

fn ssize(n: usize) -> ffi::Py_ssize_t {
    ffi::Py_ssize_t::try_from(n).unwrap_or(ffi::Py_ssize_t::MAX)
}

fn released() -> PyErr {
    PyBufferError::new_err(
        "these embeddings were released: their shared memory went back to the server",
    )
}

#[pymethods]
impl Embeddings {
    /// Number of rows (texts).
    fn __len__(&self) -> usize {
        self.shape[0] as usize
    }

    /// Values per row.
    #[getter]
    fn dim(&self) -> usize {
        self.shape[1] as usize
    }

    /// `(len, dim)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.shape[0] as usize, self.shape[1] as usize)
    }

    /// Whether `release()` already gave the chunk back.
    #[getter]
    fn released(&self) -> bool {
        self.state().answer.is_none()
    }

    /// Buffer views of this answer that are still alive (numpy arrays, memoryviews).
    #[getter]
    fn exports(&self) -> usize {
        self.state().exports
    }

    /// Row `i` as a list of floats (a copy).
    fn row(&self, i: isize) -> PyResult<Vec<f32>> {
        let rows = self.shape[0];
        let at = if i < 0 { i + rows } else { i };
        if at < 0 || at >= rows {
            return Err(PyIndexError::new_err(format!(
                "row {i} of embeddings with {rows} rows"
            )));
        }
        self.with(|a| a.row(at as usize).to_vec())
    }

    /// Every row as a list of lists of floats (a copy; no numpy needed).
    fn tolist<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rows = self.with(shm_runtime::Embeddings::to_vec)?;
        PyList::new(py, rows)
    }

    /// A numpy array of your own with the same values (the chunk can then be released).
    fn copy<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let numpy = py.import("numpy").map_err(|e| {
            let err = pyo3::exceptions::PyImportError::new_err(
                "Embeddings.copy() makes a numpy array: pip install numpy (or use tolist())",
            );
            err.set_cause(py, Some(e));
            err
        })?;
        let view = PyMemoryView::from(slf.as_any())?;
        numpy.call_method1("array", (view,))
    }

    /// Gives the answer's shared memory back to the server now instead of when this object dies.
    ///
    /// Raises `BufferError` while views of it (numpy arrays, memoryviews) are alive.
    fn release(&self) -> PyResult<()> {
        let mut s = self.state();
        if s.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot release embeddings while {} view(s) of them exist (numpy arrays or memoryviews): delete them first, or copy() what you keep",
                s.exports
            )));
        }
        s.answer = None;
        Ok(())
    }

    fn __repr__(&self) -> String {
        let state = if self.released() { ", released" } else { "" };
        format!(
            "Embeddings(len={}, dim={}{state})",
            self.shape[0], self.shape[1]
        )
    }

    /// # Safety
    ///
    /// `view` is a valid `Py_buffer` to fill, as the buffer protocol passes it.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "embeddings are read-only (they are the server's answer in shared memory): use copy() for a writable array",
            ));
        }
        let this = slf.get();
        let mut s = this.state();
        let Some(answer) = &s.answer else {
            return Err(released());
        };
        let values = answer.as_flat();
        let buf = values.as_ptr().cast_mut().cast();
        let len = ssize(std::mem::size_of_val(values));
        s.exports += 1;
        drop(s);
        let shape = this.shape.as_ptr().cast_mut();
        let strides = this.strides.as_ptr().cast_mut();
        // SAFETY: `view` is non-null and the buffer protocol hands it to us to fill. `buf` points
        // at `len` bytes of the answer chunk, which stays mapped and ours while this object holds
        // the answer: `release()` refuses while `exports` counts this view, and the object itself
        // lives as long as `view.obj` (a new reference to it) does. `shape` and `strides` are
        // fields of this object, so they live as long too. The consumer may not write (readonly).
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = buf;
            (*view).len = len;
            (*view).readonly = 1;
            (*view).itemsize = 4;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                FLOAT32.as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            // Without PyBUF_ND the consumer asked for plain bytes: one dimension, no shape.
            let nd = flags & ffi::PyBUF_ND == ffi::PyBUF_ND;
            (*view).ndim = if nd { 2 } else { 1 };
            (*view).shape = if nd { shape } else { std::ptr::null_mut() };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                strides
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    /// # Safety
    ///
    /// `_view` is a buffer this object exported.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut s = self.state();
        s.exports = s.exports.saturating_sub(1);
    }
}
