//! The event-loop side of `AsyncClient`: each call is the Rust async client's future, polled on
//! the event loop's thread. When the connection's waiter thread files an answer it wakes the
//! future's task: the task goes on a ready list and one 8-byte write to an eventfd tells the
//! loop, which watches the eventfd (`loop.add_reader`) and polls the ready tasks. A waker never
//! touches Python, so the waiter thread never waits for the GIL.

use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// What a finished call gives the event loop: its Python result, made with the GIL.
pub(crate) type Convert = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;
/// A call in flight.
pub(crate) type Call = Pin<Box<dyn Future<Output = Convert> + Send>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One event loop's side of the client: the eventfd it watches and the tasks woken since it
/// last looked.
#[derive(Debug)]
pub(crate) struct Bridge {
    pub(crate) event_loop: Py<PyAny>,
    fd: OwnedFd,
    ready: Mutex<Vec<Arc<Task>>>,
}

impl Bridge {
    /// A bridge watched by `event_loop`.
    pub(crate) fn new(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Bridge>> {
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
    pub(crate) fn detach(&self, py: Python<'_>) {
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
pub(crate) struct Task {
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
pub(crate) struct Limiter {
    max: usize,
    state: Mutex<(usize, VecDeque<Arc<Task>>)>,
}

impl Limiter {
    /// A limit of `max` calls in flight.
    pub(crate) fn new(max: usize) -> Limiter {
        Limiter {
            max,
            state: Mutex::new((0, VecDeque::new())),
        }
    }

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
    pub(crate) fn spawn(
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
