//! `Client`: the blocking client. Every wait runs with the GIL released, so other Python threads
//! go on; one client serves many threads at once.

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use shm_runtime::{ClientOptions, StreamEvent};

use crate::answers::{Classification, Generation, Health};
use crate::embeddings::Embeddings;
use crate::errors::IntoPyResult;
use crate::options::{self, Sampling};

/// A connection to the runtime serving `service` on this machine.
///
/// `Client(service, timeout=30.0)`: `timeout` (seconds) bounds every call that gives none of its
/// own. Use it from as many threads as you like; `close()` (or leaving a `with` block) ends the
/// connection, and so does dropping the last reference.
#[pyclass(module = "shm_runtime", frozen)]
#[derive(Debug)]
pub(crate) struct Client {
    service: String,
    timeout: f64,
    inner: Mutex<Option<shm_runtime::Client>>,
}

impl Client {
    /// The connection, or `ValueError` once closed.
    pub(crate) fn client(&self) -> PyResult<shm_runtime::Client> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| closed(&self.service))
    }
}

pub(crate) fn closed(service: &str) -> PyErr {
    PyValueError::new_err(format!("the client of {service:?} is closed"))
}

/// Options from the constructor's arguments.
pub(crate) fn client_options(timeout: f64) -> PyResult<ClientOptions> {
    Ok(ClientOptions {
        timeout: options::timeout(timeout)?,
        ..ClientOptions::default()
    })
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (service, timeout = 30.0))]
    fn new(py: Python<'_>, service: String, timeout: f64) -> PyResult<Client> {
        let opts = client_options(timeout)?;
        let inner = py
            .detach(|| shm_runtime::Client::connect_with(&service, opts))
            .py(py)?;
        Ok(Client {
            service,
            timeout,
            inner: Mutex::new(Some(inner)),
        })
    }

    /// The service's name.
    #[getter]
    fn service(&self) -> &str {
        &self.service
    }

    /// Seconds a call waits when it gives no timeout of its own.
    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Embeds `texts` (one str or a sequence of them) with `model`, in one request.
    ///
    /// Returns `Embeddings`: `numpy.asarray(e)` is a zero-copy float32 `(len(texts), dim)` view.
    #[pyo3(signature = (texts, *, model))]
    fn embed(&self, py: Python<'_>, texts: &Bound<'_, PyAny>, model: &str) -> PyResult<Embeddings> {
        let texts = options::texts(texts)?;
        let c = self.client()?;
        let e = py.detach(|| c.embed(model, &texts)).py(py)?;
        Ok(Embeddings::new(e))
    }

    /// Classifies `texts` (one str or a sequence of them) with `model`, in one request.
    #[pyo3(signature = (texts, *, model))]
    fn classify(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        model: &str,
    ) -> PyResult<Vec<Classification>> {
        let texts = options::texts(texts)?;
        let c = self.client()?;
        let all = py.detach(|| c.classify(model, &texts)).py(py)?;
        Ok(all.into_iter().map(Classification::from).collect())
    }

    /// Generates a continuation of `prompt` with `model`.
    #[pyo3(signature = (prompt, *, model, max_tokens = None, temperature = None, top_p = None, seed = None, stop = None, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        model: &str,
        max_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Option<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Generation> {
        let o = Sampling {
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            timeout,
        }
        .options()?;
        let c = self.client()?;
        let g = py.detach(|| c.generate(model, prompt, &o)).py(py)?;
        Ok(g.into())
    }

    /// Answers chat `messages` (`{"role", "content"}` dicts) with `model`, through its chat
    /// template.
    #[pyo3(signature = (messages, *, model, max_tokens = None, temperature = None, top_p = None, seed = None, stop = None, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        model: &str,
        max_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Option<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Generation> {
        let m = options::messages(messages)?;
        let o = Sampling {
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            timeout,
        }
        .options()?;
        let c = self.client()?;
        let g = py.detach(|| c.chat(model, &m, &o)).py(py)?;
        Ok(g.into())
    }

    /// Streams a generation: iterate for the text as it comes; `stream.generation` is the whole
    /// answer once the iteration ends. Closing the stream (or dropping it) cancels the request.
    #[pyo3(signature = (prompt, *, model, max_tokens = None, temperature = None, top_p = None, seed = None, stop = None, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &str,
        model: &str,
        max_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Option<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<TextStream> {
        let o = Sampling {
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            timeout,
        }
        .options()?;
        let c = self.client()?;
        let s = py.detach(|| c.stream(model, prompt, &o)).py(py)?;
        Ok(TextStream::new(s))
    }

    /// `chat`, streamed like `stream`.
    #[pyo3(signature = (messages, *, model, max_tokens = None, temperature = None, top_p = None, seed = None, stop = None, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat_stream(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        model: &str,
        max_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Option<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<TextStream> {
        let m = options::messages(messages)?;
        let o = Sampling {
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            timeout,
        }
        .options()?;
        let c = self.client()?;
        let s = py.detach(|| c.chat_stream(model, &m, &o)).py(py)?;
        Ok(TextStream::new(s))
    }

    /// The server's own answer about itself and its models (no model runs).
    #[pyo3(signature = (timeout = None))]
    fn health(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Health> {
        let t = options::timeout(timeout.unwrap_or(self.timeout))?;
        let c = self.client()?;
        let h = py.detach(|| c.health(t)).py(py)?;
        Ok(h.into())
    }

    /// The names of the models the service serves.
    fn models(&self) -> PyResult<Vec<String>> {
        Ok(self.client()?.models())
    }

    /// `(free, total)` chunks of the service's shared-memory pool.
    fn pool_free(&self) -> PyResult<(u32, u32)> {
        Ok(self.client()?.pool_free())
    }

    /// Ends the connection (requests in flight are cancelled). Answers already received
    /// (embeddings) stay readable.
    fn close(&self, py: Python<'_>) {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.detach(|| drop(c));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { ", closed" } else { "" };
        format!("Client({:?}{state})", self.service)
    }
}

/// A streamed generation: an iterator of text pieces. Once it ends, `generation` holds the
/// whole answer. `close()` (or dropping it) before the end cancels the request.
#[pyclass(module = "shm_runtime", frozen)]
#[derive(Debug)]
pub(crate) struct TextStream {
    inner: Mutex<Option<shm_runtime::TextStream>>,
    generation: Mutex<Option<Py<Generation>>>,
}

impl TextStream {
    fn new(s: shm_runtime::TextStream) -> TextStream {
        TextStream {
            inner: Mutex::new(Some(s)),
            generation: Mutex::new(None),
        }
    }
}

/// What the next event of a stream means to its Python iterator.
pub(crate) enum Next {
    /// A piece of text.
    Text(String),
    /// The end, with the whole answer.
    Done(shm_runtime::Generation),
    /// Already ended.
    End,
}

/// What a stream's `event` means to its Python iterator; None for an empty piece of text (the
/// iterator skips it and waits for the next event).
pub(crate) fn step(
    event: Option<Result<StreamEvent, shm_runtime::Error>>,
) -> Option<Result<Next, shm_runtime::Error>> {
    match event {
        None => Some(Ok(Next::End)),
        Some(Err(e)) => Some(Err(e)),
        Some(Ok(StreamEvent::Done(g))) => Some(Ok(Next::Done(g))),
        Some(Ok(StreamEvent::Delta { text, .. })) if !text.is_empty() => Some(Ok(Next::Text(text))),
        Some(Ok(StreamEvent::Delta { .. })) => None,
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let next = py.detach(|| {
            let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match s.as_mut() {
                Some(stream) => loop {
                    if let Some(next) = step(stream.next()) {
                        break next;
                    }
                },
                None => Ok(Next::End),
            }
        });
        match next.py(py)? {
            Next::Text(t) => Ok(Some(t)),
            Next::Done(g) => {
                *self.generation.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Py::new(py, Generation::from(g))?);
                self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
                Ok(None)
            }
            Next::End => Ok(None),
        }
    }

    /// The whole answer, once the iteration ended (else None).
    #[getter]
    fn generation(&self, py: Python<'_>) -> Option<Py<Generation>> {
        self.generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|g| g.clone_ref(py))
    }

    /// Ends the stream; a request still running is cancelled.
    fn close(&self, py: Python<'_>) {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.detach(|| drop(s));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) {
        self.close(py);
    }
}
