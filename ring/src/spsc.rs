//! Single-producer single-consumer ring of fixed-size POD entries in shared memory.
//!
//! Layout in its [`Region`]: an [`SpscHeader`] (producer and consumer indices on separate cache lines,
//! a wait word per direction, the two role slots), then `capacity` entries. Indices are free-running
//! `u64` counters; a slot is `index & mask`, so no index read from shared memory can ever address
//! outside the ring, whatever a buggy peer wrote.
//!
//! Each side keeps a private copy of the other side's index (`cached_head` / `cached_tail`, as in
//! rtrb) and touches the shared one only when the cached one says full or empty.
//!
//! Roles are claimed across processes with a compare-exchange on a role slot holding the holder's
//! [`ProcessToken`]. A handle releases its role on drop; a role whose holder died
//! can be taken over by a new process, which resumes from the published index: nothing the dead
//! holder had not published is seen, nothing published is lost.
//!
//! ```
//! use shm_ring::{spsc, Region};
//!
//! let region = Region::heap(spsc::bytes_for::<u64>(8));
//! spsc::init::<u64>(&region, 8).unwrap();
//! let mut tx = spsc::Producer::<u64>::attach(&region).unwrap();
//! let mut rx = spsc::Consumer::<u64>::attach(&region).unwrap();
//! tx.push(7).unwrap();
//! assert_eq!(rx.pop(), Ok(7));
//! ```
//!
//! A handle cannot be shared between threads (it is `Send`, not `Sync`):
//!
//! ```compile_fail
//! fn assert_sync<T: Sync>() {}
//! assert_sync::<shm_ring::spsc::Producer<u64>>();
//! ```

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use crossbeam_utils::CachePadded;

use crate::memory::{align_up, Region, REGION_ALIGN};
use crate::process::{claim_slot, release_slot, slot_vacant, ProcessToken};
use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::wait::{WaitStrategy, WaitWord};

pub use crate::error::{AttachError, PopError, PushError};

/// Magic of an initialised SPSC ring header ("SPSC").
///
/// # Examples
///
/// What a peer checks first (the header's first word, published last by [`init`]):
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use shm_ring::{spsc, Region};
///
/// let region = Region::heap(spsc::bytes_for::<u64>(8));
/// spsc::init::<u64>(&region, 8)?;
/// let magic = region.ptr_at::<AtomicU32>(0).unwrap();
/// // SAFETY: in bounds and aligned (ptr_at); the header is atomics only, initialised by init.
/// assert_eq!(unsafe { magic.as_ref() }.load(Ordering::Acquire), spsc::SPSC_MAGIC);
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub const SPSC_MAGIC: u32 = u32::from_le_bytes(*b"SPSC");
const SPSC_VERSION: u32 = 1;

/// The shared header of an SPSC ring. An ABI: `#[repr(C)]`, atomics only.
///
/// # Safety (trust model)
///
/// The peer process may write any of these words at any time. Sizes are copied into the handle once
/// at attach and validated; indices are masked before every slot access.
///
/// # Examples
///
/// ```
/// use std::mem::size_of;
/// use shm_ring::spsc::{self, SpscHeader};
///
/// // The header, then the entries:
/// assert_eq!(size_of::<SpscHeader>(), 640);
/// assert_eq!(spsc::bytes_for::<u64>(16), 640 + 16 * 8);
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct SpscHeader {
    magic: AtomicU32,
    version: AtomicU32,
    capacity: AtomicU32,
    entry_size: AtomicU32,
    producer: AtomicU64,
    consumer: AtomicU64,
    /// Next index the producer writes; written only by the producer.
    tail: CachePadded<AtomicU64>,
    /// Next index the consumer reads; written only by the consumer.
    head: CachePadded<AtomicU64>,
    /// The consumer parks here when the ring is empty.
    not_empty: CachePadded<WaitWord>,
    /// The producer parks here when the ring is full.
    not_full: CachePadded<WaitWord>,
}

#[cfg(not(shm_loom))]
const _: () = {
    assert!(std::mem::offset_of!(SpscHeader, capacity) == 8);
    assert!(std::mem::offset_of!(SpscHeader, producer) == 16);
    assert!(std::mem::offset_of!(SpscHeader, tail) == 128);
    assert!(std::mem::offset_of!(SpscHeader, head) == 256);
    assert!(std::mem::size_of::<SpscHeader>() == 640);
};

fn slots_offset() -> usize {
    align_up(std::mem::size_of::<SpscHeader>(), REGION_ALIGN)
}

/// Bytes a ring of `capacity` entries of `T` needs (capacity is rounded up to a power of two).
///
/// # Examples
///
/// ```
/// use shm_ring::{spsc, Region};
///
/// // The capacity is rounded up to a power of two:
/// assert_eq!(spsc::bytes_for::<u64>(100), spsc::bytes_for::<u64>(128));
/// let region = Region::heap(spsc::bytes_for::<u64>(100));
/// spsc::init::<u64>(&region, 100)?;
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub fn bytes_for<T: Pod>(capacity: usize) -> usize {
    let cap = capacity.max(1).next_power_of_two();
    slots_offset() + cap * std::mem::size_of::<UnsafeCell<T>>()
}

/// Writes a fresh ring header for `capacity` entries (rounded up to a power of two) into `region`.
///
/// Call once, before any handle attaches; the magic is published last.
///
/// # Errors
///
/// [`AttachError::RegionTooSmall`] or [`AttachError::InvalidCapacity`].
///
/// # Examples
///
/// ```
/// use shm_ring::{spsc, AttachError, Region};
///
/// let region = Region::heap(spsc::bytes_for::<[u8; 64]>(256));
/// spsc::init::<[u8; 64]>(&region, 256)?;
/// let rx = spsc::Consumer::<[u8; 64]>::attach(&region)?;
/// assert_eq!(rx.capacity(), 256);
///
/// let small = Region::heap(1024);
/// let refused = spsc::init::<u64>(&small, 1024);
/// assert!(matches!(refused, Err(AttachError::RegionTooSmall { .. })));
/// # Ok::<(), AttachError>(())
/// ```
pub fn init<T: Pod>(region: &Region, capacity: usize) -> Result<(), AttachError> {
    if capacity == 0 || capacity > (1 << 30) {
        return Err(AttachError::InvalidCapacity(capacity));
    }
    let cap = capacity.next_power_of_two();
    let needed = bytes_for::<T>(cap);
    if region.len() < needed {
        return Err(AttachError::RegionTooSmall {
            needed,
            available: region.len(),
        });
    }
    let hdr = region
        .ptr_at::<SpscHeader>(0)
        .ok_or(AttachError::RegionTooSmall {
            needed,
            available: region.len(),
        })?;
    // SAFETY: the region holds `needed` bytes (checked), is REGION_ALIGN-aligned (Region invariant),
    // and the caller initialises before any handle attaches, so nobody else touches these bytes.
    unsafe {
        hdr.as_ptr().write(SpscHeader {
            magic: AtomicU32::new(0),
            version: AtomicU32::new(SPSC_VERSION),
            capacity: AtomicU32::new(cap as u32),
            entry_size: AtomicU32::new(std::mem::size_of::<T>() as u32),
            producer: AtomicU64::new(0),
            consumer: AtomicU64::new(0),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            not_empty: CachePadded::new(WaitWord::new()),
            not_full: CachePadded::new(WaitWord::new()),
        });
        let slots = region
            .as_ptr()
            .as_ptr()
            .add(slots_offset())
            .cast::<UnsafeCell<T>>();
        for i in 0..cap {
            slots.add(i).write(UnsafeCell::new(T::zeroed()));
        }
    }
    // SAFETY: initialised just above.
    let hdr = unsafe { hdr.as_ref() };
    // SYNC(magic): Release publishes the initialised ring; pairs with the Acquire in `Shared::attach`.
    hdr.magic.store(SPSC_MAGIC, Ordering::Release);
    Ok(())
}

/// A producer and a consumer over a fresh heap-backed ring (in-process use, tests, miri).
///
/// # Examples
///
/// ```
/// use shm_ring::spsc;
///
/// let (mut tx, mut rx) = spsc::heap::<u64>(16);
/// tx.push(1).unwrap();
/// assert_eq!(rx.pop(), Ok(1));
/// ```
pub fn heap<T: Pod>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let region = Region::heap(bytes_for::<T>(capacity));
    init::<T>(&region, capacity).expect("heap region is sized for the ring");
    let p = Producer::attach(&region).expect("fresh ring");
    let c = Consumer::attach(&region).expect("fresh ring");
    (p, c)
}

/// What both handles hold: the validated layout, copied out of shared memory once.
struct Shared<T> {
    /// Keeps the memory mapped for as long as the handle lives.
    _region: Region,
    hdr: NonNull<SpscHeader>,
    slots: NonNull<UnsafeCell<T>>,
    mask: u64,
    cap: u64,
    me: ProcessToken,
}

impl<T: Pod> Shared<T> {
    fn attach(region: &Region, role: fn(&SpscHeader) -> &AtomicU64) -> Result<Self, AttachError> {
        let too_small = AttachError::RegionTooSmall {
            needed: slots_offset(),
            available: region.len(),
        };
        let hdr = region.ptr_at::<SpscHeader>(0).ok_or(too_small)?;
        // SAFETY: in bounds and aligned (ptr_at); the header is atomics only, so a concurrent writer
        // cannot make the reference unsound.
        let h = unsafe { hdr.as_ref() };
        // SYNC(magic): Acquire pairs with the Release in `init`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != SPSC_MAGIC {
            return Err(AttachError::NotInitialised(magic));
        }
        let version = h.version.load(Ordering::Relaxed);
        let entry = h.entry_size.load(Ordering::Relaxed);
        let expected = std::mem::size_of::<T>() as u32;
        if entry != expected || version != SPSC_VERSION {
            return Err(AttachError::EntryMismatch {
                found: entry,
                expected,
                version,
            });
        }
        let cap = h.capacity.load(Ordering::Relaxed);
        if cap == 0 || !cap.is_power_of_two() {
            return Err(AttachError::BadCapacity(cap));
        }
        let needed = bytes_for::<T>(cap as usize);
        if needed > region.len() {
            return Err(AttachError::BadCapacity(cap));
        }
        let me = ProcessToken::current();
        claim_slot(role(h), me).map_err(|holder| AttachError::RoleTaken { pid: holder.pid() })?;
        // SAFETY: slots_offset() + cap entries fit in the region (checked above).
        let slots = unsafe { region.as_ptr().add(slots_offset()).cast::<UnsafeCell<T>>() };
        Ok(Shared {
            _region: region.clone(),
            hdr,
            slots,
            mask: u64::from(cap) - 1,
            cap: u64::from(cap),
            me,
        })
    }

    #[inline]
    fn hdr(&self) -> &SpscHeader {
        // SAFETY: validated at attach; the region (and so the memory) lives as long as self.
        unsafe { self.hdr.as_ref() }
    }

    #[inline]
    fn slot(&self, index: u64) -> &UnsafeCell<T> {
        // SAFETY: masked index < cap, and cap slots were checked to fit at attach.
        unsafe { &*self.slots.as_ptr().add((index & self.mask) as usize) }
    }
}

/// The producing half of an SPSC ring. `Send`, not `Sync`.
///
/// # Examples
///
/// The producer moves to a thread of its own (handles are `Send`):
///
/// ```
/// use std::time::{Duration, Instant};
/// use shm_ring::{spsc, WaitStrategy};
///
/// let (mut tx, mut rx) = spsc::heap::<u64>(8);
/// let (wait, deadline) = (WaitStrategy::default(), Instant::now() + Duration::from_secs(10));
/// let producer = std::thread::spawn(move || {
///     for i in 0..100 {
///         tx.push_blocking(i, &wait, deadline).unwrap();
///     }
/// });
/// let sum: u64 = (0..100).map(|_| rx.pop_blocking(&wait, deadline).unwrap()).sum();
/// producer.join().unwrap();
/// assert_eq!(sum, 4950);
/// ```
pub struct Producer<T> {
    shared: Shared<T>,
    tail: u64,
    cached_head: u64,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

/// The consuming half of an SPSC ring. `Send`, not `Sync`.
///
/// # Examples
///
/// A consumer thread that reads until the producer has gone and the ring is drained:
///
/// ```
/// use std::time::{Duration, Instant};
/// use shm_ring::{spsc, WaitStrategy};
///
/// let (mut tx, mut rx) = spsc::heap::<u32>(4);
/// let (wait, deadline) = (WaitStrategy::default(), Instant::now() + Duration::from_secs(10));
/// let consumer = std::thread::spawn(move || {
///     let mut got = Vec::new();
///     while let Ok(v) = rx.pop_blocking(&wait, deadline) {
///         got.push(v); // ends with PopError::Abandoned
///     }
///     got
/// });
/// for i in 0..10 {
///     tx.push_blocking(i, &wait, deadline).unwrap();
/// }
/// drop(tx);
/// assert_eq!(consumer.join().unwrap(), (0..10).collect::<Vec<_>>());
/// ```
pub struct Consumer<T> {
    shared: Shared<T>,
    head: u64,
    cached_tail: u64,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: a handle owns its role exclusively (claimed in shared memory); moving it to another thread
// moves that exclusive right with it. T is Pod, hence Send.
unsafe impl<T: Pod> Send for Producer<T> {}
// SAFETY: as for Producer.
unsafe impl<T: Pod> Send for Consumer<T> {}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("spsc::Producer")
            .field("capacity", &self.shared.cap)
            .field("tail", &self.tail)
            .finish()
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("spsc::Consumer")
            .field("capacity", &self.shared.cap)
            .field("head", &self.head)
            .finish()
    }
}

/// How long one park lasts before a blocked side re-checks whether its peer is still alive.
const LIVENESS_SLICE: Duration = Duration::from_millis(20);

impl<T: Pod> Producer<T> {
    /// Claims the producer role of the ring initialised in `region`.
    ///
    /// # Errors
    ///
    /// [`AttachError`]: no ring there, another entry type, a corrupt header, or the role is held by a
    /// live process. A role held by a dead process is taken over.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{spsc, AttachError, Region};
    ///
    /// let region = Region::heap(spsc::bytes_for::<u64>(8));
    /// spsc::init::<u64>(&region, 8)?;
    /// let tx = spsc::Producer::<u64>::attach(&region)?;
    /// // One producer at a time; the role is free again once the handle drops.
    /// let second = spsc::Producer::<u64>::attach(&region);
    /// assert!(matches!(second, Err(AttachError::RoleTaken { .. })));
    /// drop(tx);
    /// let _tx = spsc::Producer::<u64>::attach(&region)?;
    /// # Ok::<(), AttachError>(())
    /// ```
    pub fn attach(region: &Region) -> Result<Self, AttachError> {
        let shared = Shared::attach(region, |h| &h.producer)?;
        // We hold the only producer role: anyone counted as parked on `not_full` is a dead
        // predecessor, whose count would otherwise make every pop a wake syscall.
        if shared.hdr().not_full.parked() != 0 {
            shared.hdr().not_full.clear_parked();
        }
        // SYNC(tail): we are the only writer of tail; Acquire on head pairs with the consumer's
        // Release (swap) in `Consumer::pop`.
        let tail = shared.hdr().tail.load(Ordering::Acquire);
        let cached_head = shared.hdr().head.load(Ordering::Acquire);
        Ok(Producer {
            shared,
            tail,
            cached_head,
            _not_sync: PhantomData,
        })
    }

    /// Capacity in entries.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (tx, _rx) = spsc::heap::<u64>(5);
    /// assert_eq!(tx.capacity(), 8); // rounded up to a power of two
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.cap as usize
    }

    /// Free slots as last seen (refreshes the consumer's index).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u64>(4);
    /// tx.push_slice(&[1, 2, 3]);
    /// assert_eq!(tx.free_slots(), 1);
    /// rx.pop().unwrap();
    /// assert_eq!(tx.free_slots(), 2);
    /// ```
    pub fn free_slots(&mut self) -> usize {
        self.refresh_head()
            .map_or(0, |used| (self.shared.cap - used) as usize)
    }

    /// Reloads the consumer's index; `None` if it contradicts ours.
    #[inline]
    fn refresh_head(&mut self) -> Option<u64> {
        // SYNC(head): Acquire pairs with the consumer's SeqCst swap in `Consumer::advance`: the
        // consumer has finished reading every slot before `head`, so we may overwrite them.
        self.cached_head = self.shared.hdr().head.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(self.cached_head);
        (used <= self.shared.cap).then_some(used)
    }

    /// Pushes one entry without waiting.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] when there is no room; [`PushError::Corrupted`] when the consumer's index
    /// is impossible.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{spsc, PushError};
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u64>(2);
    /// tx.push(1).unwrap();
    /// tx.push(2).unwrap();
    /// assert_eq!(tx.push(3), Err(PushError::Full(3)));
    /// assert_eq!(rx.pop(), Ok(1));
    /// tx.push(3).unwrap();
    /// ```
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        if self.tail.wrapping_sub(self.cached_head) >= self.shared.cap {
            match self.refresh_head() {
                None => return Err(PushError::Corrupted(value)),
                Some(used) if used == self.shared.cap => return Err(PushError::Full(value)),
                Some(_) => {}
            }
        }
        // SAFETY: tail - head < cap, so this slot is not readable by the consumer until we publish.
        self.shared
            .slot(self.tail)
            .with_mut(|p| unsafe { p.write(value) });
        self.publish(self.tail.wrapping_add(1));
        Ok(())
    }

    /// Pushes as many entries of `values` as fit, publishing them at once. Returns how many.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u32>(4);
    /// assert_eq!(tx.push_slice(&[1, 2, 3, 4, 5, 6]), 4); // as many as fit
    /// let mut out = [0; 8];
    /// assert_eq!(rx.pop_into(&mut out), 4);
    /// assert_eq!(out[..4], [1, 2, 3, 4]);
    /// ```
    pub fn push_slice(&mut self, values: &[T]) -> usize {
        let free = match self.refresh_head() {
            Some(used) => (self.shared.cap - used) as usize,
            None => return 0,
        };
        let n = free.min(values.len());
        for (i, v) in values[..n].iter().enumerate() {
            // SAFETY: the n slots after tail are free (n <= free), unseen by the consumer until publish.
            self.shared
                .slot(self.tail.wrapping_add(i as u64))
                .with_mut(|p| unsafe { p.write(*v) });
        }
        if n > 0 {
            self.publish(self.tail.wrapping_add(n as u64));
        }
        n
    }

    #[inline]
    fn publish(&mut self, tail: u64) {
        self.tail = tail;
        let h = self.shared.hdr();
        // SYNC(tail): the SeqCst swap (a) releases the slot writes to the consumer's Acquire load of
        // tail and (b) orders this store before the load of `waiters` in `notify_after_rmw`, which
        // pairs with the waiter's fence in `WaitWord::park` (the Dekker handshake).
        h.tail.swap(tail, Ordering::SeqCst);
        h.not_empty.notify_after_rmw();
    }

    /// Pushes, waiting for room with `strategy` until `deadline`.
    ///
    /// # Errors
    ///
    /// [`PushError::TimedOut`] at the deadline, [`PushError::Abandoned`] if the consumer role is
    /// vacant while the ring stays full, [`PushError::Corrupted`] as for [`push`](Self::push).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{spsc, WaitStrategy};
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u32>(1);
    /// let (wait, deadline) = (WaitStrategy::default(), Instant::now() + Duration::from_secs(10));
    /// tx.push(1).unwrap();
    /// let consumer = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     [rx.pop(), rx.pop_blocking(&wait, deadline)]
    /// });
    /// tx.push_blocking(2, &wait, deadline).unwrap(); // waits until the consumer makes room
    /// assert_eq!(consumer.join().unwrap(), [Ok(1), Ok(2)]);
    /// ```
    pub fn push_blocking(
        &mut self,
        value: T,
        strategy: &WaitStrategy,
        deadline: Instant,
    ) -> Result<(), PushError<T>> {
        let mut value = value;
        let mut strategy = *strategy;
        loop {
            match self.push(value) {
                Err(PushError::Full(v)) => value = v,
                other => return other,
            }
            let slice = deadline.min(Instant::now() + LIVENESS_SLICE);
            let (hdr, tail, cap) = (self.shared.hdr, self.tail, self.shared.cap);
            // SAFETY: hdr is valid as long as self (see Shared::hdr).
            let h = unsafe { hdr.as_ref() };
            let ready = || tail.wrapping_sub(h.head.load(Ordering::SeqCst)) < cap;
            let waited = strategy.wait_until(&h.not_full, slice, ready);
            // Spin in the first slice only.
            strategy = strategy.parking_now();
            if waited.is_err() {
                if Instant::now() >= deadline {
                    return Err(PushError::TimedOut(value));
                }
                if self.is_abandoned() {
                    return Err(PushError::Abandoned(value));
                }
            }
        }
    }

    /// Consumers counted as parked on this ring now (diagnostics: a count that stays up while the
    /// ring is busy means a parked consumer died; the next consumer to attach clears it).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{spsc, WaitStrategy};
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u32>(4);
    /// let (wait, deadline) = (WaitStrategy::default(), Instant::now() + Duration::from_secs(10));
    /// let consumer = std::thread::spawn(move || rx.pop_blocking(&wait, deadline));
    /// while tx.parked_consumers() == 0 && !consumer.is_finished() {
    ///     std::thread::yield_now(); // until the consumer sleeps on the futex
    /// }
    /// tx.push(7).unwrap(); // wakes it
    /// assert_eq!(consumer.join().unwrap(), Ok(7));
    /// ```
    pub fn parked_consumers(&self) -> u32 {
        self.shared.hdr().not_empty.parked()
    }

    /// Whether the consumer role is vacant: never claimed, released, or its holder died.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (tx, rx) = spsc::heap::<u64>(4);
    /// assert!(!tx.is_abandoned());
    /// drop(rx);
    /// assert!(tx.is_abandoned());
    /// ```
    pub fn is_abandoned(&self) -> bool {
        slot_vacant(&self.shared.hdr().consumer)
    }
}

impl<T: Pod> Consumer<T> {
    /// Claims the consumer role of the ring initialised in `region`.
    ///
    /// # Errors
    ///
    /// As for [`Producer::attach`].
    ///
    /// # Examples
    ///
    /// A new consumer resumes where the last one stopped:
    ///
    /// ```
    /// use shm_ring::{spsc, Region};
    ///
    /// let region = Region::heap(spsc::bytes_for::<u64>(8));
    /// spsc::init::<u64>(&region, 8)?;
    /// let mut tx = spsc::Producer::<u64>::attach(&region)?;
    /// tx.push_slice(&[1, 2]);
    /// let mut rx = spsc::Consumer::<u64>::attach(&region)?;
    /// assert_eq!(rx.pop(), Ok(1));
    /// drop(rx);
    /// let mut rx = spsc::Consumer::<u64>::attach(&region)?;
    /// assert_eq!(rx.pop(), Ok(2));
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn attach(region: &Region) -> Result<Self, AttachError> {
        let shared = Shared::attach(region, |h| &h.consumer)?;
        // As in `Producer::attach`, for the consumer's wait word.
        if shared.hdr().not_empty.parked() != 0 {
            shared.hdr().not_empty.clear_parked();
        }
        let head = shared.hdr().head.load(Ordering::Acquire);
        let cached_tail = shared.hdr().tail.load(Ordering::Acquire);
        Ok(Consumer {
            shared,
            head,
            cached_tail,
            _not_sync: PhantomData,
        })
    }

    /// Capacity in entries.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (_tx, rx) = spsc::heap::<u64>(1000);
    /// assert_eq!(rx.capacity(), 1024);
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.cap as usize
    }

    /// Entries ready to pop (refreshes the producer's index).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u64>(8);
    /// tx.push_slice(&[1, 2, 3]);
    /// assert_eq!(rx.len(), 3);
    /// ```
    pub fn len(&mut self) -> usize {
        self.refresh_tail().unwrap_or(0) as usize
    }

    /// Whether no entry is ready.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u64>(8);
    /// assert!(rx.is_empty());
    /// tx.push(1).unwrap();
    /// assert!(!rx.is_empty());
    /// ```
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn refresh_tail(&mut self) -> Option<u64> {
        // SYNC(tail): Acquire pairs with the producer's SeqCst swap in `Producer::publish`: every
        // slot before tail is fully written.
        self.cached_tail = self.shared.hdr().tail.load(Ordering::Acquire);
        let avail = self.cached_tail.wrapping_sub(self.head);
        (avail <= self.shared.cap).then_some(avail)
    }

    /// Pops one entry without waiting.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`]; [`PopError::Corrupted`] when the producer's index is impossible.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{spsc, PopError};
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u64>(8);
    /// tx.push(1).unwrap();
    /// assert_eq!(rx.pop(), Ok(1));
    /// assert_eq!(rx.pop(), Err(PopError::Empty));
    /// ```
    #[inline]
    pub fn pop(&mut self) -> Result<T, PopError> {
        if self.head == self.cached_tail {
            match self.refresh_tail() {
                None => return Err(PopError::Corrupted),
                Some(0) => return Err(PopError::Empty),
                Some(_) => {}
            }
        }
        // SAFETY: head < tail, so the producer published this slot and will not touch it until we
        // advance head. T is Pod, so whatever bytes are there form a valid T.
        let value = self.shared.slot(self.head).with(|p| unsafe { p.read() });
        self.advance(self.head.wrapping_add(1));
        Ok(value)
    }

    /// Pops up to `out.len()` entries at once. Returns how many.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u64>(8);
    /// tx.push_slice(&[1, 2, 3, 4, 5]);
    /// let mut batch = [0; 4];
    /// assert_eq!(rx.pop_into(&mut batch), 4);
    /// assert_eq!(batch, [1, 2, 3, 4]);
    /// assert_eq!(rx.pop_into(&mut batch), 1);
    /// ```
    pub fn pop_into(&mut self, out: &mut [T]) -> usize {
        let avail = match self.refresh_tail() {
            Some(a) => a as usize,
            None => return 0,
        };
        let n = avail.min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            // SAFETY: the n slots from head are published and not yet released to the producer.
            *o = self
                .shared
                .slot(self.head.wrapping_add(i as u64))
                .with(|p| unsafe { p.read() });
        }
        if n > 0 {
            self.advance(self.head.wrapping_add(n as u64));
        }
        n
    }

    #[inline]
    fn advance(&mut self, head: u64) {
        self.head = head;
        let h = self.shared.hdr();
        // SYNC(head): SeqCst swap releases the slots to the producer's Acquire load of head, and
        // orders this store before the `waiters` load (Dekker handshake, see `publish`).
        h.head.swap(head, Ordering::SeqCst);
        h.not_full.notify_after_rmw();
    }

    /// Pops, waiting with `strategy` until `deadline`.
    ///
    /// # Errors
    ///
    /// [`PopError::TimedOut`] at the deadline, [`PopError::Abandoned`] if the producer role is vacant
    /// and the ring is empty, [`PopError::Corrupted`] as for [`pop`](Self::pop).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{spsc, WaitStrategy};
    ///
    /// let (mut tx, mut rx) = spsc::heap::<u64>(4);
    /// let producer = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     tx.push(7).unwrap();
    /// });
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// assert_eq!(rx.pop_blocking(&WaitStrategy::default(), deadline), Ok(7));
    /// producer.join().unwrap();
    /// ```
    pub fn pop_blocking(
        &mut self,
        strategy: &WaitStrategy,
        deadline: Instant,
    ) -> Result<T, PopError> {
        let mut strategy = *strategy;
        loop {
            match self.pop() {
                Err(PopError::Empty) => {}
                other => return other,
            }
            let slice = deadline.min(Instant::now() + LIVENESS_SLICE);
            let (hdr, head) = (self.shared.hdr, self.head);
            // SAFETY: hdr is valid as long as self (see Shared::hdr).
            let h = unsafe { hdr.as_ref() };
            let ready = || h.tail.load(Ordering::SeqCst) != head;
            let waited = strategy.wait_until(&h.not_empty, slice, ready);
            // Spin in the first slice only.
            strategy = strategy.parking_now();
            if waited.is_err() {
                if Instant::now() >= deadline {
                    return Err(PopError::TimedOut);
                }
                if self.is_abandoned() && self.is_empty() {
                    return Err(PopError::Abandoned);
                }
            }
        }
    }

    /// Whether the producer role is vacant: never claimed, released, or its holder died.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::spsc;
    ///
    /// let (tx, rx) = spsc::heap::<u64>(4);
    /// assert!(!rx.is_abandoned());
    /// drop(tx);
    /// assert!(rx.is_abandoned());
    /// ```
    pub fn is_abandoned(&self) -> bool {
        slot_vacant(&self.shared.hdr().producer)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // SAFETY: hdr is valid while the region lives, which `shared` keeps alive.
        release_slot(
            unsafe { &self.shared.hdr.as_ref().producer },
            self.shared.me,
        );
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // SAFETY: as for Producer::drop.
        release_slot(
            unsafe { &self.shared.hdr.as_ref().consumer },
            self.shared.me,
        );
    }
}

#[cfg(all(test, not(shm_loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_wraps_and_reports_full_and_empty() {
        let (mut tx, mut rx) = heap::<u64>(4);
        assert_eq!(rx.pop(), Err(PopError::Empty));
        for round in 0..10u64 {
            for i in 0..4 {
                tx.push(round * 10 + i).unwrap();
            }
            assert_eq!(tx.push(99), Err(PushError::Full(99)));
            for i in 0..4 {
                assert_eq!(rx.pop(), Ok(round * 10 + i));
            }
            assert_eq!(rx.pop(), Err(PopError::Empty));
        }
    }

    #[test]
    fn batch_push_and_pop() {
        let (mut tx, mut rx) = heap::<[u64; 2]>(8);
        let items: Vec<[u64; 2]> = (0..12).map(|i| [i, i * 2]).collect();
        assert_eq!(tx.push_slice(&items), 8);
        let mut out = [[0u64; 2]; 5];
        assert_eq!(rx.pop_into(&mut out), 5);
        assert_eq!(&out[..], &items[..5]);
        assert_eq!(tx.push_slice(&items[8..]), 4);
        let mut rest = [[0u64; 2]; 16];
        assert_eq!(rx.pop_into(&mut rest), 7);
        assert_eq!(&rest[..3], &items[5..8]);
        assert_eq!(&rest[3..7], &items[8..12]);
    }

    #[test]
    fn roles_are_exclusive_and_released_on_drop() {
        let region = Region::heap(bytes_for::<u32>(16));
        init::<u32>(&region, 16).unwrap();
        let tx = Producer::<u32>::attach(&region).unwrap();
        assert!(matches!(
            Producer::<u32>::attach(&region),
            Err(AttachError::RoleTaken { .. })
        ));
        assert!(tx.is_abandoned(), "no consumer yet");
        let rx = Consumer::<u32>::attach(&region).unwrap();
        assert!(!tx.is_abandoned());
        drop(rx);
        assert!(tx.is_abandoned());
        drop(tx);
        let _again = Producer::<u32>::attach(&region).unwrap();
    }

    #[test]
    fn attach_refuses_wrong_entry_type_and_garbage() {
        let region = Region::heap(bytes_for::<u64>(16));
        assert!(matches!(
            Producer::<u64>::attach(&region),
            Err(AttachError::NotInitialised(0))
        ));
        init::<u64>(&region, 16).unwrap();
        assert!(matches!(
            Consumer::<u32>::attach(&region),
            Err(AttachError::EntryMismatch { .. })
        ));
        // A peer scribbles over the capacity: refused, never trusted.
        // SAFETY: test-only write through the header's atomics.
        let h = unsafe { region.ptr_at::<SpscHeader>(0).unwrap().as_ref() };
        h.capacity.store(3, Ordering::Relaxed);
        assert_eq!(
            Consumer::<u64>::attach(&region).unwrap_err(),
            AttachError::BadCapacity(3)
        );
        h.capacity.store(1 << 20, Ordering::Relaxed);
        assert_eq!(
            Consumer::<u64>::attach(&region).unwrap_err(),
            AttachError::BadCapacity(1 << 20)
        );
    }

    #[test]
    fn corrupt_peer_index_is_reported_not_followed() {
        let region = Region::heap(bytes_for::<u64>(4));
        init::<u64>(&region, 4).unwrap();
        let mut tx = Producer::<u64>::attach(&region).unwrap();
        let mut rx = Consumer::<u64>::attach(&region).unwrap();
        // SAFETY: test-only write through the header's atomics.
        let h = unsafe { region.ptr_at::<SpscHeader>(0).unwrap().as_ref() };
        h.tail.store(1000, Ordering::Relaxed);
        assert_eq!(rx.pop(), Err(PopError::Corrupted));
        h.tail.store(0, Ordering::Relaxed);
        h.head.store(u64::MAX - 5, Ordering::Relaxed);
        // The producer's cached view of head (0) still shows room: these go into masked slots,
        // never out of bounds, without reading the corrupt index.
        for i in 0..4 {
            assert!(tx.push(i).is_ok(), "push {i} within the cached room");
        }
        // Out of cached room: the producer reads head, and an index that puts more than the
        // capacity in use is corruption, not a full ring.
        assert!(matches!(tx.push(9), Err(PushError::Corrupted(9))));
    }

    #[test]
    fn blocking_pop_wakes_on_push_from_another_thread() {
        let (mut tx, mut rx) = heap::<u64>(2);
        let t = std::thread::spawn(move || {
            for i in 0..1000u64 {
                tx.push_blocking(
                    i,
                    &WaitStrategy::default(),
                    Instant::now() + Duration::from_secs(10),
                )
                .unwrap();
            }
            tx
        });
        for i in 0..1000u64 {
            let v = rx.pop_blocking(
                &WaitStrategy::default(),
                Instant::now() + Duration::from_secs(10),
            );
            assert_eq!(v, Ok(i));
        }
        let _tx = t.join().unwrap();
        assert_eq!(
            rx.pop_blocking(
                &WaitStrategy::default(),
                Instant::now() + Duration::from_millis(20)
            ),
            Err(PopError::TimedOut)
        );
    }

    #[test]
    fn blocked_consumer_sees_abandonment() {
        let (tx, mut rx) = heap::<u64>(2);
        drop(tx);
        let r = rx.pop_blocking(
            &WaitStrategy::default(),
            Instant::now() + Duration::from_secs(10),
        );
        assert_eq!(r, Err(PopError::Abandoned));
    }
}
