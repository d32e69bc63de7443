//! Wait strategies and the park/wake protocol on a futex word in shared memory.
//!
//! The protocol (a Dekker handshake, so no wake-up is lost and the waker makes no syscall unless a
//! waiter announced itself):
//!
//! ```text
//! waiter                                   waker
//! waiters += 1            (SeqCst)         publish data            (Release)
//! fence(SeqCst)                            fence(SeqCst)
//! s = seq                                  if waiters != 0 {
//! if ready() { waiters -= 1; return }          seq += 1
//! futex_wait(seq, s, timeout)                  futex_wake(seq)
//! waiters -= 1                             }
//! ```
//!
//! Either the waker sees `waiters != 0`, or the waiter's `ready()` sees the data (the two SeqCst
//! fences order each side's store before its load). If the waker bumps `seq` after the waiter read
//! `s`, `futex_wait` returns at once because the word no longer holds `s`.
//!
//! # Examples
//!
//! A flag and the word its waiter parks on, set by another thread:
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use shm_ring::{WaitStrategy, WaitWord};
//!
//! let shared = Arc::new((WaitWord::new(), AtomicBool::new(false)));
//! let peer = Arc::clone(&shared);
//! let waker = std::thread::spawn(move || {
//!     peer.1.store(true, Ordering::Release); // publish...
//!     peer.0.notify(); // ...then notify
//! });
//! let deadline = Instant::now() + Duration::from_secs(10);
//! WaitStrategy::default().wait_until(&shared.0, deadline, || shared.1.load(Ordering::Acquire))?;
//! waker.join().unwrap();
//! # Ok::<(), shm_ring::WaitTimedOut>(())
//! ```

use std::time::{Duration, Instant};

use crate::sync::{fence, AtomicU32, Ordering};

/// The shared part of a wait point: a futex word and the count of parked waiters. Lives in shared
/// memory, one per direction of each ring.
///
/// # Examples
///
/// A wait word of one's own in shared memory, constructed in place:
///
/// ```
/// use shm_ring::{Region, WaitWord};
///
/// let region = Region::heap(4096);
/// let slot = region.ptr_at::<WaitWord>(0).unwrap();
/// // SAFETY: in bounds and aligned (checked by ptr_at), and nobody else sees the region yet.
/// unsafe { slot.as_ptr().write(WaitWord::new()) };
/// // SAFETY: initialised just above, and the region outlives the reference.
/// let word = unsafe { slot.as_ref() };
/// word.notify(); // nobody parked: no system call
/// assert_eq!(word.parked(), 0);
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct WaitWord {
    seq: AtomicU32,
    waiters: AtomicU32,
    #[cfg(shm_loom)]
    kernel: loom_futex::Kernel,
}

#[cfg(not(shm_loom))]
const _: () = assert!(std::mem::size_of::<WaitWord>() == 8);

impl WaitWord {
    /// A word with no waiters. Construct it in place (`ptr::write`) in shared memory before any
    /// other process can see it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::WaitWord;
    ///
    /// let word = WaitWord::new();
    /// assert_eq!(word.parked(), 0);
    /// ```
    #[allow(clippy::new_without_default)]
    pub fn new() -> WaitWord {
        WaitWord {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            #[cfg(shm_loom)]
            kernel: loom_futex::Kernel::new(),
        }
    }

    /// Wakes every parked waiter; free (no syscall) when nobody is parked.
    ///
    /// Call after publishing what waiters wait for.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{WaitStrategy, WaitWord};
    ///
    /// let (word, ready) = (WaitWord::new(), AtomicU32::new(0));
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         ready.store(1, Ordering::Release);
    ///         word.notify();
    ///     });
    ///     let deadline = Instant::now() + Duration::from_secs(10);
    ///     let woken = WaitStrategy::default().wait_until(&word, deadline, || {
    ///         ready.load(Ordering::Acquire) == 1
    ///     });
    ///     assert!(woken.is_ok());
    /// });
    /// ```
    #[inline]
    pub fn notify(&self) {
        // SYNC(park): this fence pairs with the fence in `park`: either we see the waiter's
        // increment, or the waiter's `ready()` sees our publication.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.wake_all();
        }
    }

    /// [`notify`](Self::notify) for a caller that has just published with a SeqCst read-modify-write
    /// (such as a `swap`): that RMW already orders the publication before this load, so the fence
    /// is not needed. Free (one load) when nobody is parked.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{WaitStrategy, WaitWord};
    ///
    /// let (word, tail) = (WaitWord::new(), AtomicU64::new(0));
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         tail.swap(1, Ordering::SeqCst); // the publication is a SeqCst RMW...
    ///         word.notify_after_rmw(); // ...so no fence is needed
    ///     });
    ///     let deadline = Instant::now() + Duration::from_secs(10);
    ///     let woken = WaitStrategy::default().wait_until(&word, deadline, || {
    ///         tail.load(Ordering::SeqCst) == 1
    ///     });
    ///     assert!(woken.is_ok());
    /// });
    /// ```
    #[inline]
    pub fn notify_after_rmw(&self) {
        // SYNC(park): SeqCst load after the caller's SeqCst RMW; pairs with the fence in `park`.
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.wake_all();
        }
    }

    /// Waiters announced as parked now (a process killed while parked stays counted).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{WaitStrategy, WaitWord};
    ///
    /// let (word, ready) = (WaitWord::new(), AtomicBool::new(false));
    /// let never_spin = WaitStrategy::SpinThenPark { spin: Duration::ZERO };
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// std::thread::scope(|s| {
    ///     let waiter = s.spawn(|| {
    ///         never_spin.wait_until(&word, deadline, || ready.load(Ordering::Acquire))
    ///     });
    ///     while word.parked() == 0 && !waiter.is_finished() {
    ///         std::thread::yield_now();
    ///     }
    ///     assert_eq!(word.parked(), 1);
    ///     ready.store(true, Ordering::Release);
    ///     word.notify();
    ///     assert_eq!(waiter.join().unwrap(), Ok(()));
    /// });
    /// assert_eq!(word.parked(), 0);
    /// ```
    pub fn parked(&self) -> u32 {
        self.waiters.load(Ordering::Relaxed)
    }

    /// Announces a waiter that will never withdraw (what a process killed while parked leaves).
    #[cfg(all(test, not(shm_loom)))]
    pub(crate) fn leak_waiter_for_test(&self) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets every announced waiter. A process killed while parked never takes itself off the
    /// count, and from then on every notify makes a wake syscall; whoever knows that nobody can be
    /// parked here any more (the only side that waits on this word is being taken over) calls this
    /// to restore the free notify. A live waiter that is in fact parked is woken (its timeout
    /// passes and it re-checks), so the worst a wrong call costs is one delayed wake-up.
    ///
    /// # Examples
    ///
    /// Taking over the only side that waits on a word, in a segment whose previous holder may have
    /// been killed while parked:
    ///
    /// ```
    /// # use shm_ring::WaitWord;
    /// # let word = WaitWord::new();
    /// if word.parked() != 0 {
    ///     word.clear_parked(); // notifies are free again
    /// }
    /// assert_eq!(word.parked(), 0);
    /// ```
    pub fn clear_parked(&self) {
        self.waiters.store(0, Ordering::Relaxed);
        self.wake_all();
    }

    #[cold]
    fn wake_all(&self) {
        // SYNC(seq): Release so a waiter that reads the new value also sees the publication.
        self.seq.fetch_add(1, Ordering::Release);
        self.futex_wake();
    }

    /// Parks until `ready()` holds, `deadline` passes, or a wake-up arrives (callers loop).
    fn park(&self, deadline: Instant, ready: &mut impl FnMut() -> bool) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // SYNC(park): pairs with the fence in `notify`.
        fence(Ordering::SeqCst);
        let s = self.seq.load(Ordering::Acquire);
        let done = ready();
        if !done {
            let now = Instant::now();
            if now < deadline {
                self.futex_wait(s, deadline - now);
            }
        }
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        done
    }

    #[cfg(not(shm_loom))]
    fn futex_wait(&self, expected: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `seq` is a live, 4-byte aligned u32 for the duration of the call; FUTEX_WAIT (not
        // _PRIVATE) because other processes map the same word. Errors (EAGAIN when the word
        // changed, EINTR, ETIMEDOUT) all mean "re-check", which every caller does.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.seq.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                &ts as *const libc::timespec,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    #[cfg(not(shm_loom))]
    fn futex_wake(&self) {
        // SAFETY: `seq` is a live, aligned u32; waking never touches memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.seq.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
            );
        }
    }

    #[cfg(shm_loom)]
    fn futex_wait(&self, expected: u32, _timeout: Duration) {
        self.kernel.wait(&self.seq, expected);
    }

    #[cfg(shm_loom)]
    fn futex_wake(&self) {
        self.kernel.wake();
    }
}

/// How a blocked side waits for the other.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use shm_ring::{spsc, PopError, WaitStrategy};
///
/// // The default spins for 50 µs, then sleeps on the futex until woken:
/// let strategy = WaitStrategy::default();
/// assert_eq!(strategy, WaitStrategy::SpinThenPark { spin: Duration::from_micros(50) });
/// let (_tx, mut rx) = spsc::heap::<u64>(8);
/// let deadline = Instant::now() + Duration::from_millis(5);
/// assert_eq!(rx.pop_blocking(&strategy, deadline), Err(PopError::TimedOut));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin on the condition: lowest latency, burns a core while waiting.
    BusySpin,
    /// Spin, yielding the time slice between checks.
    Yield,
    /// Spin for `spin`, then park on the futex word (the default).
    SpinThenPark {
        /// How long to spin before parking.
        spin: Duration,
    },
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenPark {
            spin: Duration::from_micros(50),
        }
    }
}

/// The wait ended because its deadline passed.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use shm_ring::{WaitStrategy, WaitTimedOut, WaitWord};
///
/// let word = WaitWord::new();
/// let deadline = Instant::now() + Duration::from_millis(1);
/// let never = WaitStrategy::Yield.wait_until(&word, deadline, || false);
/// assert_eq!(never, Err(WaitTimedOut));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the wait timed out")]
pub struct WaitTimedOut;

impl WaitStrategy {
    /// The same strategy without its spin phase: for the later slices of a long wait, which
    /// should park at once (a wait cut into 1 ms slices that spun 50 us in each would burn 5% of
    /// a core for nothing).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shm_ring::WaitStrategy;
    ///
    /// let later = WaitStrategy::default().parking_now();
    /// assert_eq!(later, WaitStrategy::SpinThenPark { spin: Duration::ZERO });
    /// assert_eq!(WaitStrategy::BusySpin.parking_now(), WaitStrategy::BusySpin);
    /// ```
    pub fn parking_now(self) -> WaitStrategy {
        match self {
            WaitStrategy::SpinThenPark { .. } => WaitStrategy::SpinThenPark {
                spin: Duration::ZERO,
            },
            other => other,
        }
    }

    /// Waits until `ready()` returns true or `deadline` passes.
    ///
    /// `word` is where the other side calls [`WaitWord::notify`] after making `ready()` true.
    ///
    /// # Errors
    ///
    /// [`WaitTimedOut`] when the deadline passed first.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{WaitStrategy, WaitWord};
    ///
    /// let (word, done) = (WaitWord::new(), AtomicBool::new(false));
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         std::thread::sleep(Duration::from_millis(10));
    ///         done.store(true, Ordering::Release);
    ///         word.notify();
    ///     });
    ///     let deadline = Instant::now() + Duration::from_secs(10);
    ///     let strategy = WaitStrategy::default();
    ///     let woken = strategy.wait_until(&word, deadline, || done.load(Ordering::Acquire));
    ///     assert_eq!(woken, Ok(()));
    /// });
    /// ```
    pub fn wait_until(
        &self,
        word: &WaitWord,
        deadline: Instant,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), WaitTimedOut> {
        let spin_until = match *self {
            WaitStrategy::BusySpin | WaitStrategy::Yield => deadline,
            WaitStrategy::SpinThenPark { spin } => Instant::now() + spin,
        };
        let mut i: u32 = 0;
        loop {
            if ready() {
                return Ok(());
            }
            i = i.wrapping_add(1);
            if *self == WaitStrategy::Yield {
                crate::sync::yield_now();
            } else {
                crate::sync::spin_hint();
            }
            // Reading the clock costs ~20 ns: check it every 64 rounds.
            if i % 64 == 0 {
                let now = Instant::now();
                if now >= deadline {
                    return Err(WaitTimedOut);
                }
                if now >= spin_until {
                    break;
                }
            }
        }
        loop {
            if self.park_once(word, deadline, &mut ready) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return if ready() { Ok(()) } else { Err(WaitTimedOut) };
            }
        }
    }

    fn park_once(
        &self,
        word: &WaitWord,
        deadline: Instant,
        ready: &mut impl FnMut() -> bool,
    ) -> bool {
        word.park(deadline, ready) || ready()
    }
}

#[cfg(shm_loom)]
mod loom_futex {
    //! The kernel's futex semantics, modelled for loom: the value check and the sleep are atomic
    //! with respect to wake, as the futex hash-bucket lock makes them.
    use loom::sync::{Condvar, Mutex};

    use crate::sync::{AtomicU32, Ordering};

    #[derive(Debug)]
    pub(crate) struct Kernel {
        lock: Mutex<()>,
        cv: Condvar,
    }

    impl Kernel {
        pub(crate) fn new() -> Kernel {
            Kernel {
                lock: Mutex::new(()),
                cv: Condvar::new(),
            }
        }

        pub(crate) fn wait(&self, word: &AtomicU32, expected: u32) {
            let guard = self.lock.lock().unwrap();
            if word.load(Ordering::SeqCst) == expected {
                drop(self.cv.wait(guard).unwrap());
            }
        }

        pub(crate) fn wake(&self) {
            let _guard = self.lock.lock().unwrap();
            self.cv.notify_all();
        }
    }
}

#[cfg(all(test, not(shm_loom)))]
mod tests {
    use super::*;
    use crate::sync::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn every_strategy_sees_a_notify_from_another_thread() {
        for strategy in [
            WaitStrategy::BusySpin,
            WaitStrategy::Yield,
            WaitStrategy::SpinThenPark {
                spin: Duration::ZERO,
            },
            WaitStrategy::default(),
        ] {
            let shared = Arc::new((WaitWord::new(), AtomicU64::new(0)));
            let peer = Arc::clone(&shared);
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                peer.1.store(1, Ordering::Release);
                peer.0.notify();
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            strategy
                .wait_until(&shared.0, deadline, || {
                    shared.1.load(Ordering::Acquire) == 1
                })
                .unwrap();
            t.join().unwrap();
        }
    }

    #[test]
    fn wait_times_out_when_nothing_happens() {
        let word = WaitWord::new();
        let start = Instant::now();
        let r =
            WaitStrategy::default().wait_until(&word, start + Duration::from_millis(30), || false);
        assert_eq!(r, Err(WaitTimedOut));
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(
            word.waiters.load(Ordering::Relaxed),
            0,
            "waiter count restored"
        );
    }

    #[test]
    fn notify_without_waiters_leaves_seq_alone() {
        let word = WaitWord::new();
        word.notify();
        assert_eq!(word.seq.load(Ordering::Relaxed), 0);
    }
}
