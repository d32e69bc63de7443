//! `AsyncClient`: awaitable calls for asyncio that never block the event loop and take no thread
//! per call.
//!
//! Each call is the Rust async client's future, polled on the event loop's thread. When the
//! connection's waiter thread files an answer it wakes the future's task: the task goes on a
//! ready list and one 8-byte write to an eventfd tells the loop, which watches the eventfd
//! (`loop.add_reader`) and polls the ready tasks. A waker never touches Python, so the waiter
//! thread never waits for the GIL.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream as _;
use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::answers::{Classification, Generation};
use crate::client::{client_options, closed, step, Next};
use crate::embeddings::Embeddings;
use crate::errors::{to_py, IntoPyResult};
use crate::options::{self, Sampling};

/// What a finished call gives the event loop: its Python result, made with the GIL.
type Convert = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;
/// A call in flight.
type Call = Pin<Box<dyn Future<Output = Convert> + Send>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One event loop's side of the client: the eventfd it watches and the tasks woken since it
/// last looked.
#[derive(Debug)]
struct Bridge {
    event_loop: Py<PyAny>,
    fd: OwnedFd,
    ready: Mutex<Vec<Arc<Task>>>,
}

impl Bridge {
    /// A bridge watched by `event_loop`.
    fn new(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Bridge>> {
        // SAFETY: eventfd takes no pointers; a negative result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(PyRuntimeError::new_err(format!(
                "cannot make an eventfd for the event loop: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let bridge = Arc::new(Bridge {
            event_loop: event_loop.clone().unbind(),
            fd,
            ready: Mutex::new(Vec::new()),
        });
        let drain = Drain {
            bridge: bridge.clone(),
        };
        event_loop.call_method1("add_reader", (bridge.fd.as_raw_fd(), drain))?;
        Ok(bridge)
    }

    /// Tells the loop that tasks are ready.
    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live u64 to the eventfd this bridge owns. A full
        // counter (EAGAIN) already means "ready", so the result needs no check.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Stops the loop watching the eventfd (unless the loop is closed, which forgot it).
    fn detach(&self, py: Python<'_>) {
        let lp = self.event_loop.bind(py);
        let closed = lp
            .call_method0("is_closed")
            .and_then(|c| c.is_truthy())
            .unwrap_or(true);
        if !closed {
            let _ = lp.call_method1("remove_reader", (self.fd.as_raw_fd(),));
        }
    }
}

/// The loop's reader callback: polls the tasks woken since the last call.
#[pyclass(frozen)]
#[derive(Debug)]
struct Drain {
    bridge: Arc<Bridge>,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from the eventfd the bridge owns (non-blocking:
        // EAGAIN when nothing is pending, which is fine).
        let _ = unsafe {
            libc::read(
                self.bridge.fd.as_raw_fd(),
                std::ptr::from_mut(&mut count).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        let tasks = std::mem::take(&mut *lock(&self.bridge.ready));
        for t in tasks {
            t.run(py);
        }
    }
}

/// A call and the asyncio future that gets its result.
struct Task {
    call: Mutex<Option<Call>>,
    future: Py<PyAny>,
    bridge: Arc<Bridge>,
    /// On the ready list already.
    queued: AtomicBool,
    /// The client's limit on calls in flight this call counts against (streams take no part).
    limiter: Option<Arc<Limiter>>,
    /// Holds one of the limiter's places (its request may be in flight).
    started: AtomicBool,
}

/// Keeps a client's calls in flight within the server's per-client limit: the calls beyond it
/// wait in order (their requests not yet sent) instead of failing with `BusyError`, as
/// `asyncio.gather` over many calls expects. Used on the loop's thread only.
#[derive(Debug)]
struct Limiter {
    max: usize,
    state: Mutex<(usize, std::collections::VecDeque<Arc<Task>>)>,
}

impl Limiter {
    /// Takes a place for `task` and says so, or queues it.
    fn admit(&self, task: &Arc<Task>) -> bool {
        let mut s = lock(&self.state);
        if s.0 < self.max && s.1.is_empty() {
            s.0 += 1;
            true
        } else {
            s.1.push_back(task.clone());
            false
        }
    }

    /// Gives a place back and starts the calls waiting for one.
    fn release(&self, py: Python<'_>) {
        lock(&self.state).0 -= 1;
        loop {
            let next = {
                let mut s = lock(&self.state);
                if s.0 >= self.max {
                    return;
                }
                let Some(t) = s.1.pop_front() else {
                    return;
                };
                s.0 += 1;
                t
            };
            // A call cancelled while it waited has no call left: its place goes to the next.
            if lock(&next.call).is_none() {
                lock(&self.state).0 -= 1;
                continue;
            }
            next.started.store(true, Ordering::Relaxed);
            next.run(py);
        }
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").finish_non_exhaustive()
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.bridge.ready).push(self.clone());
            self.bridge.signal();
        }
    }
}

impl Task {
    /// Starts `call` on the running loop (or queues it behind `limiter`): returns the asyncio
    /// future of its result.
    fn spawn(
        py: Python<'_>,
        bridge: Arc<Bridge>,
        limiter: Option<Arc<Limiter>>,
        call: Call,
    ) -> PyResult<Py<PyAny>> {
        let future = bridge.event_loop.bind(py).call_method0("create_future")?;
        let task = Arc::new(Task {
            call: Mutex::new(Some(call)),
            future: future.clone().unbind(),
            bridge,
            queued: AtomicBool::new(false),
            limiter,
            started: AtomicBool::new(false),
        });
        future.call_method1("add_done_callback", (OnDone { task: task.clone() },))?;
        let go = task.limiter.as_ref().is_none_or(|l| l.admit(&task));
        if go {
            task.started.store(true, Ordering::Relaxed);
            task.run(py);
        }
        Ok(future.unbind())
    }

    /// The call is over: its limiter place goes to the next waiting call.
    fn finish(&self, py: Python<'_>) {
        if self.started.swap(false, Ordering::Relaxed) {
            if let Some(l) = &self.limiter {
                l.release(py);
            }
        }
    }

    /// Polls the call once; sets the future's result when it is ready.
    fn run(self: &Arc<Self>, py: Python<'_>) {
        self.queued.store(false, Ordering::Release);
        let mut slot = lock(&self.call);
        let Some(call) = slot.as_mut() else {
            return;
        };
        let future = self.future.bind(py);
        let waker = Waker::from(self.clone());
        let ready = match call.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => return,
            Poll::Ready(convert) => convert,
        };
        let done = slot.take();
        drop(slot);
        drop(done);
        self.finish(py);
        // The future may have been cancelled meanwhile: then nobody wants the result.
        if future
            .call_method0("done")
            .and_then(|d| d.is_truthy())
            .unwrap_or(true)
        {
            return;
        }
        let set = match ready(py) {
            Ok(v) => future.call_method1("set_result", (v,)),
            Err(e) => future.call_method1("set_exception", (e.into_value(py),)),
        };
        if let Err(e) = set {
            e.write_unraisable(py, Some(future));
        }
    }
}

/// The asyncio future's done callback: a future cancelled by its caller drops its call, which
/// cancels the request in the runtime.
#[pyclass(frozen)]
#[derive(Debug)]
struct OnDone {
    task: Arc<Task>,
}

#[pymethods]
impl OnDone {
    fn __call__(&self, py: Python<'_>, _future: &Bound<'_, PyAny>) {
        let call = lock(&self.task.call).take();
        if call.is_some() {
            py.detach(|| drop(call));
            self.task.finish(py);
        }
    }
}

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
            limiter: Arc::new(Limiter {
                max,
                state: Mutex::new((0, std::collections::VecDeque::new())),
            }),
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
