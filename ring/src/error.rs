//! Errors of the rings, shared by [`spsc`](crate::spsc) and [`mpmc`](crate::mpmc): attaching to
//! a ring, pushing into it and popping from it.

/// Why a ring could not be initialised or attached.
///
/// # Examples
///
/// ```
/// use shm_ring::{spsc, AttachError, Region};
///
/// let region = Region::heap(spsc::bytes_for::<u64>(8));
/// let too_early = spsc::Consumer::<u64>::attach(&region).unwrap_err();
/// assert_eq!(too_early, AttachError::NotInitialised(0));
///
/// spsc::init::<u64>(&region, 8)?;
/// let _rx = spsc::Consumer::<u64>::attach(&region)?;
/// // One consumer at a time, and this (live) process holds the role:
/// let taken = spsc::Consumer::<u64>::attach(&region).unwrap_err();
/// assert_eq!(taken, AttachError::RoleTaken { pid: std::process::id() });
/// # Ok::<(), AttachError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The region is smaller than the ring needs.
    #[error("region of {available} bytes is too small; the ring needs {needed}")]
    RegionTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Nothing initialised is there (or something else is).
    #[error("no initialised ring in this region (magic {0:#x})")]
    NotInitialised(u32),
    /// The ring was made for entries of another size or format.
    #[error("ring holds {found}-byte entries (format {version}), this handle uses {expected}-byte entries")]
    EntryMismatch {
        /// Entry size in the header.
        found: u32,
        /// Entry size of this handle's type.
        expected: u32,
        /// Format version in the header.
        version: u32,
    },
    /// The capacity in the header is zero, not a power of two, or larger than the region allows.
    #[error("ring header is corrupt: capacity {0}")]
    BadCapacity(u32),
    /// The capacity requested at init is zero or too large.
    #[error("invalid ring capacity {0}")]
    InvalidCapacity(usize),
    /// Another live process holds the role.
    #[error("the role is held by live process {pid}")]
    RoleTaken {
        /// Holder's pid.
        pid: u32,
    },
}

/// Why a push failed; the value comes back.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use shm_ring::{spsc, PushError, WaitStrategy};
///
/// let (mut tx, rx) = spsc::heap::<u32>(2);
/// tx.push(1).unwrap();
/// tx.push(2).unwrap();
/// assert_eq!(tx.push(3), Err(PushError::Full(3)));
///
/// drop(rx); // nobody will ever make room
/// let deadline = Instant::now() + Duration::from_secs(10);
/// let gone = tx.push_blocking(3, &WaitStrategy::default(), deadline);
/// assert_eq!(gone, Err(PushError::Abandoned(3)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError<T> {
    /// The ring is full.
    #[error("the ring is full")]
    Full(T),
    /// The consumer role is vacant (released, or its holder died) and the ring stayed full.
    #[error("the consumer has gone")]
    Abandoned(T),
    /// The deadline passed while the ring stayed full.
    #[error("timed out waiting for space")]
    TimedOut(T),
    /// The shared indices contradict each other: the peer wrote garbage.
    #[error("the ring's indices are corrupt")]
    Corrupted(T),
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u32>(1);
    /// tx.push(1).unwrap();
    /// // Full: keep the value and push it again once there is room.
    /// let pending = tx.push(2).unwrap_err().into_inner();
    /// assert_eq!(rx.pop(), Ok(1));
    /// tx.push(pending).unwrap();
    /// assert_eq!(rx.pop(), Ok(2));
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(v)
            | PushError::Abandoned(v)
            | PushError::TimedOut(v)
            | PushError::Corrupted(v) => v,
        }
    }
}

/// Why a pop returned nothing.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use shm_ring::{spsc, PopError, WaitStrategy};
///
/// let (tx, mut rx) = spsc::heap::<u32>(4);
/// assert_eq!(rx.pop(), Err(PopError::Empty));
/// let soon = Instant::now() + Duration::from_millis(5);
/// assert_eq!(rx.pop_blocking(&WaitStrategy::default(), soon), Err(PopError::TimedOut));
///
/// drop(tx); // nothing will ever come
/// let later = Instant::now() + Duration::from_secs(10);
/// assert_eq!(rx.pop_blocking(&WaitStrategy::default(), later), Err(PopError::Abandoned));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PopError {
    /// The ring is empty.
    #[error("the ring is empty")]
    Empty,
    /// The producer role is vacant (released, or its holder died) and the ring is empty.
    #[error("the producer has gone")]
    Abandoned,
    /// The deadline passed while the ring stayed empty.
    #[error("timed out waiting for an entry")]
    TimedOut,
    /// The shared indices contradict each other: the peer wrote garbage.
    #[error("the ring's indices are corrupt")]
    Corrupted,
}
