//! `AsyncClient`: awaitable calls for asyncio that never block the event loop and take no thread
//! per call (the loop's side is `bridge.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_core::Stream as _;
use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::answers::{Classification, Generation};
use crate::bridge::{lock, Bridge, Convert, Limiter, Task};
use crate::client::{client_options, closed, step, Next};
use crate::embeddings::Embeddings;
use crate::errors::{to_py, IntoPyResult};
use crate::options::{self, Sampling};

/// The asyncio flavour of `Client`: the same calls, awaitable; streams are async iterators.
///
/// A client serves the event loop it was first used on (another loop may take it over once
/// that one is closed). Waiting never blocks the loop, and takes no thread per call.
#[pyclass(module = "shm_runtime", frozen)]
#[derive(Debug)]
pub(crate) struct AsyncClient {
    service: String,
    timeout: f64,
    inner: Mutex<Option<shm_runtime::AsyncClient>>,
    bridge: Mutex<Option<Arc<Bridge>>>,
    limiter: Arc<Limiter>,
}

impl AsyncClient {
    fn client(&self) -> PyResult<shm_runtime::AsyncClient> {
        lock(&self.inner)
            .clone()
            .ok_or_else(|| closed(&self.service))
    }

    /// The running loop's bridge, made on first use.
    fn bridge(&self, py: Python<'_>) -> PyResult<Arc<Bridge>> {
        let running = py
            .import("asyncio")?
            .call_method0("get_running_loop")
            .map_err(|_| {
                PyRuntimeError::new_err(
                    "AsyncClient calls must be awaited in a running event loop (asyncio.run); use Client outside one",
                )
            })?;
        let mut slot = lock(&self.bridge);
        if let Some(b) = slot.as_ref() {
            let lp = b.event_loop.bind(py);
            if lp.is(&running) {
                return Ok(b.clone());
            }
            if !lp.call_method0("is_closed")?.is_truthy()? {
                return Err(PyRuntimeError::new_err(
                    "this AsyncClient serves another event loop that is still open: make one client per loop",
                ));
            }
        }
        let b = Bridge::new(&running)?;
        *slot = Some(b.clone());
        Ok(b)
    }

    /// Starts `call` on the running loop.
    fn spawn<F>(&self, py: Python<'_>, call: F) -> PyResult<Py<PyAny>>
    where
        F: Future<Output = Convert> + Send + 'static,
    {
        let bridge = self.bridge(py)?;
        Task::spawn(py, bridge, Some(self.limiter.clone()), Box::pin(call))
    }
}

/// A call's result made into Python with `f`, its error raised as its exception.
fn convert<T: Send + 'static>(
    r: Result<T, shm_runtime::Error>,
    f: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
) -> Convert {
    Box::new(move |py| match r {
        Ok(v) => f(py, v),
        Err(e) => Err(to_py(py, e)),
    })
}

#[pymethods]
impl AsyncClient {
    #[new]
    #[pyo3(signature = (service, timeout = 30.0))]
    fn new(py: Python<'_>, service: String, timeout: f64) -> PyResult<AsyncClient> {
        let opts = client_options(timeout)?;
        let inner = py
            .detach(|| shm_runtime::AsyncClient::connect_with(&service, opts))
            .py(py)?;
        let max = inner.blocking().max_in_flight().max(1) as usize;
        Ok(AsyncClient {
            service,
            timeout,
            inner: Mutex::new(Some(inner)),
            bridge: Mutex::new(None),
            limiter: Arc::new(Limiter::new(max)),
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
        lock(&self.inner).is_none()
    }

    /// Awaitable `Client.embed`.
    #[pyo3(signature = (texts, *, model))]
    fn embed(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        model: String,
    ) -> PyResult<Py<PyAny>> {
        let texts = options::texts(texts)?;
        let c = self.client()?;
        self.spawn(py, async move {
            let r = c.embed(&model, &texts).await;
            convert(r, |py, e| Embeddings::new(e).into_py_any(py))
        })
    }

    /// Awaitable `Client.classify`.
    #[pyo3(signature = (texts, *, model))]
    fn classify(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        model: String,
    ) -> PyResult<Py<PyAny>> {
        let texts = options::texts(texts)?;
        let c = self.client()?;
        self.spawn(py, async move {
            let r = c.classify(&model, &texts).await;
            convert(r, |py, all| {
                all.into_iter()
                    .map(Classification::from)
                    .collect::<Vec<_>>()
                    .into_py_any(py)
            })
        })
    }

    /// Awaitable `Client.generate`.
    #[pyo3(signature = (prompt, *, model, max_tokens = None, temperature = None, top_p = None, seed = None, stop = None, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: String,
        model: String,
        max_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Option<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
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
        self.spawn(py, async move {
            let r = c.generate(&model, &prompt, &o).await;
            convert(r, |py, g| Generation::from(g).into_py_any(py))
        })
    }

    /// Awaitable `Client.chat`.
    #[pyo3(signature = (messages, *, model, max_tokens = None, temperature = None, top_p = None, seed = None, stop = None, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        model: String,
        max_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        stop: Option<Bound<'_, PyAny>>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
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
        self.spawn(py, async move {
            let r = c.chat(&model, &m, &o).await;
            convert(r, |py, g| Generation::from(g).into_py_any(py))
        })
    }

    /// `Client.stream` as an async iterator (`async for piece in client.stream(...)`).
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
    ) -> PyResult<AsyncTextStream> {
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
        let bridge = self.bridge(py)?;
        let s = py.detach(|| c.stream(model, prompt, &o)).py(py)?;
        Ok(AsyncTextStream::new(s, bridge))
    }

    /// `Client.chat_stream` as an async iterator.
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
    ) -> PyResult<AsyncTextStream> {
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
        let bridge = self.bridge(py)?;
        let s = py.detach(|| c.chat_stream(model, &m, &o)).py(py)?;
        Ok(AsyncTextStream::new(s, bridge))
    }

    /// Awaitable `Client.health` (asked from the loop's default executor: it is a rare call).
    #[pyo3(signature = (timeout = None))]
    fn health(slf: &Bound<'_, Self>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let t = options::timeout(timeout.unwrap_or(this.timeout))?;
        let c = this.client()?;
        let bridge = this.bridge(py)?;
        let ask = Health {
            client: c,
            timeout: t,
        };
        Ok(bridge
            .event_loop
            .bind(py)
            .call_method1("run_in_executor", (py.None(), ask))?
            .unbind())
    }

    /// The names of the models the service serves.
    fn models(&self) -> PyResult<Vec<String>> {
        Ok(self.client()?.blocking().models())
    }

    /// `(free, total)` chunks of the service's shared-memory pool.
    fn pool_free(&self) -> PyResult<(u32, u32)> {
        Ok(self.client()?.blocking().pool_free())
    }

    /// Ends the connection (requests in flight are cancelled) and stops the loop watching it.
    fn close(&self, py: Python<'_>) {
        if let Some(b) = lock(&self.bridge).take() {
            b.detach(py);
        }
        let c = lock(&self.inner).take();
        py.detach(|| drop(c));
    }

    fn __aenter__(slf: Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        done_future(slf.py(), slf.clone().into_any().unbind())
    }

    #[pyo3(signature = (*_exc))]
    fn __aexit__(
        &self,
        py: Python<'_>,
        _exc: &Bound<'_, pyo3::types::PyTuple>,
    ) -> PyResult<Py<PyAny>> {
        self.close(py);
        done_future(py, py.None())
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { ", closed" } else { "" };
        format!("AsyncClient({:?}{state})", self.service)
    }
}

impl Drop for AsyncClient {
    fn drop(&mut self) {
        if let Some(b) = lock(&self.bridge).take() {
            Python::attach(|py| b.detach(py));
        }
    }
}

/// An already finished asyncio future holding `value` (for `async with`).
fn done_future(py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
    let f = py
        .import("asyncio")?
        .call_method0("get_running_loop")?
        .call_method0("create_future")?;
    f.call_method1("set_result", (value,))?;
    Ok(f.unbind())
}

/// `health()` run by the loop's executor.
#[pyclass(frozen)]
#[derive(Debug)]
struct Health {
    client: shm_runtime::AsyncClient,
    timeout: std::time::Duration,
}

#[pymethods]
impl Health {
    fn __call__(&self, py: Python<'_>) -> PyResult<crate::answers::Health> {
        let c = self.client.blocking();
        let h = py.detach(|| c.health(self.timeout)).py(py)?;
        Ok(h.into())
    }
}

/// A streamed generation for `async for`: text pieces, then `generation` holds the whole
/// answer. `aclose()` (or dropping it) before the end cancels the request.
#[pyclass(module = "shm_runtime", frozen)]
#[derive(Debug)]
pub(crate) struct AsyncTextStream {
    inner: Arc<Mutex<Option<shm_runtime::AsyncTextStream>>>,
    generation: Arc<Mutex<Option<shm_runtime::Generation>>>,
    bridge: Arc<Bridge>,
}

impl AsyncTextStream {
    fn new(s: shm_runtime::AsyncTextStream, bridge: Arc<Bridge>) -> AsyncTextStream {
        AsyncTextStream {
            inner: Arc::new(Mutex::new(Some(s))),
            generation: Arc::new(Mutex::new(None)),
            bridge,
        }
    }
}

#[pymethods]
impl AsyncTextStream {
    fn __aiter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __anext__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let (inner, whole) = (self.inner.clone(), self.generation.clone());
        let call = async move {
            let next = next_event(&inner).await;
            let r = next.map(|n| match n {
                Next::Done(g) => {
                    *lock(&whole) = Some(g);
                    lock(&inner).take();
                    None
                }
                Next::Text(t) => Some(t),
                Next::End => None,
            });
            convert(r, |py, t| match t {
                Some(t) => t.into_py_any(py),
                None => Err(PyStopAsyncIteration::new_err(())),
            })
        };
        Task::spawn(py, self.bridge.clone(), None, Box::pin(call))
    }

    /// The whole answer, once the iteration ended (else None).
    #[getter]
    fn generation(&self) -> Option<Generation> {
        lock(&self.generation).clone().map(Generation::from)
    }

    /// Ends the stream; a request still running is cancelled.
    fn aclose(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = lock(&self.inner).take();
        py.detach(|| drop(s));
        done_future(py, py.None())
    }
}

/// The next piece of text of `stream` (empty pieces skipped), its end, or its error.
async fn next_event(
    stream: &Mutex<Option<shm_runtime::AsyncTextStream>>,
) -> Result<Next, shm_runtime::Error> {
    loop {
        let event = std::future::poll_fn(|cx| match lock(stream).as_mut() {
            Some(s) => Pin::new(s).poll_next(cx),
            None => Poll::Ready(None),
        })
        .await;
        if let Some(next) = step(event) {
            return next;
        }
    }
}
