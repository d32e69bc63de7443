//! The one place atomics, cells and spin hints come from.
//!
//! Under `--cfg shm_loom` every type here is loom's, so the lock-free algorithms can be model-checked
//! unchanged. Shared-memory structures are always *constructed in place* with `ptr::write` of these
//! types (never by reinterpreting zeroed bytes), which is what makes the loom substitution sound.

#[cfg(shm_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(shm_loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Tells the scheduler (or loom) that this thread is waiting for another one.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(shm_loom)]
    loom::thread::yield_now();
    #[cfg(not(shm_loom))]
    core::hint::spin_loop();
}

/// Gives up the rest of the time slice (a plain spin hint is not enough under loom).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(shm_loom)]
    loom::thread::yield_now();
    #[cfg(not(shm_loom))]
    std::thread::yield_now();
}

#[cfg(shm_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `core::cell::UnsafeCell` with loom's closure-based API, so call sites are identical under both.
#[cfg(not(shm_loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(shm_loom))]
impl<T> UnsafeCell<T> {
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
