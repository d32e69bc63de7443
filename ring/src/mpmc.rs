//! Multi-producer multi-consumer ring of fixed-size POD entries in shared memory, robust to the death
//! of any producer or consumer at any instruction.
//!
//! A bounded array queue in the style of Vyukov's, with one change that makes it crash-tolerant: each
//! slot's 64-bit *stamp* carries both the lap (the position, 48 bits) and a state (16 bits), and every
//! transition of a slot is a compare-exchange on that stamp.
//!
//! ```text
//!  EMPTY(p) --producer k claims--> CLAIMED(p,k) --k publishes--> FULL(p)
//!     ^                                |  k died                  |
//!     |                                v                          v
//!  EMPTY(p+cap) <--consumer j done-- TAKEN(p,j) <--consumer j--- SKIP(p) / FULL(p)
//! ```
//!
//! * Producers claim the slot first (CAS on the stamp) and only then advance `tail`; anyone who sees a
//!   claimed slot at `tail` helps advance it. So a producer that dies right after claiming leaves no
//!   half-advanced index behind.
//! * The claim names the producer's *participant* index. A consumer that finds a claim stuck at `head`
//!   asks whether that participant's process is alive (pid + start time, see
//!   [`ProcessToken`]); if not, it turns the claim into SKIP and moves on: the
//!   ring is never blocked by a dead producer (Aeron's "unblock", decided by liveness, not by a timer).
//! * Publishing is a CAS from CLAIMED(p,k) to FULL(p), so a claim that was skipped can never be
//!   published over.
//! * Consumers likewise take a slot by CAS (FULL -> TAKEN(p,j)) before reading it; a slot left TAKEN
//!   by a dead consumer is returned to EMPTY by the next producer that needs it.
//!
//! Lost entries: an entry claimed by a producer that died is skipped (it was never published); an
//! entry taken by a consumer that died is gone with it (at-most-once delivery to a dying consumer).
//!
//! ```
//! use shm_ring::{mpmc, Region};
//!
//! let region = Region::heap(mpmc::bytes_for::<u64>(8, 4));
//! mpmc::init::<u64>(&region, 8, 4).unwrap();
//! let tx = mpmc::Producer::<u64>::attach(&region).unwrap();
//! let rx = mpmc::Consumer::<u64>::attach(&region).unwrap();
//! tx.push(1).unwrap();
//! tx.push_with(|slot| *slot = 2).unwrap();
//! assert_eq!(rx.pop(), Ok(1));
//! assert_eq!(rx.pop(), Ok(2));
//! ```

use std::ptr::NonNull;
use std::sync::atomic::AtomicU64 as LocalU64;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use crossbeam_utils::CachePadded;

use crate::memory::{align_up, Region, REGION_ALIGN};
use crate::process::{claim_slot, release_slot, slot_vacant, Claimed, ProcessToken};
use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};
use crate::wait::{WaitStrategy, WaitWord};

pub use crate::error::{AttachError, PopError, PushError};

/// Magic of an initialised MPMC ring header ("MPMC").
///
/// # Examples
///
/// What a peer checks first (the header's first word, published last by [`init`]):
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use shm_ring::{mpmc, Region};
///
/// let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
/// mpmc::init::<u64>(&region, 8, 2)?;
/// let magic = region.ptr_at::<AtomicU32>(0).unwrap();
/// // SAFETY: in bounds and aligned (ptr_at); the header is atomics only, initialised by init.
/// assert_eq!(unsafe { magic.as_ref() }.load(Ordering::Acquire), mpmc::MPMC_MAGIC);
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub const MPMC_MAGIC: u32 = u32::from_le_bytes(*b"MPMC");
const MPMC_VERSION: u32 = 1;

/// Most participants (producers + consumers) one ring supports.
///
/// # Examples
///
/// ```
/// use shm_ring::{mpmc, Region};
///
/// let region = Region::heap(mpmc::bytes_for::<u64>(8, mpmc::MAX_PARTICIPANTS));
/// mpmc::init::<u64>(&region, 8, mpmc::MAX_PARTICIPANTS)?;
/// assert!(mpmc::init::<u64>(&region, 8, mpmc::MAX_PARTICIPANTS + 1).is_err());
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub const MAX_PARTICIPANTS: usize = 0x3FFF;

const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const EMPTY: u16 = 0;
const FULL: u16 = 1;
const SKIP: u16 = 2;
const CLAIMED: u16 = 0x4000;
const TAKEN: u16 = 0x8000;
const INDEX_MASK: u16 = 0x3FFF;

#[inline]
fn stamp(pos: u64, state: u16) -> u64 {
    ((pos & SEQ_MASK) << 16) | u64::from(state)
}

#[inline]
fn state_of(s: u64) -> u16 {
    s as u16
}

/// Lap distance of stamp `s` from position `pos`, in the 48-bit sequence space.
#[inline]
fn lap_delta(s: u64, pos: u64) -> u64 {
    (s >> 16).wrapping_sub(pos) & SEQ_MASK
}

/// The shared header of an MPMC ring. An ABI: `#[repr(C)]`, atomics only.
///
/// # Safety (trust model)
///
/// Any participant may write any of these words at any time. Sizes are copied into each handle at
/// attach and validated; positions are masked before every slot access; participant indices taken
/// from stamps are bounds-checked.
///
/// # Examples
///
/// ```
/// use std::mem::size_of;
/// use shm_ring::mpmc::{MpmcHeader, HEAD_OFFSET, TAIL_OFFSET};
///
/// assert_eq!(size_of::<MpmcHeader>(), 640);
/// assert!(TAIL_OFFSET < HEAD_OFFSET && HEAD_OFFSET < size_of::<MpmcHeader>());
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct MpmcHeader {
    magic: AtomicU32,
    version: AtomicU32,
    capacity: AtomicU32,
    entry_size: AtomicU32,
    participants: AtomicU32,
    reserved: AtomicU32,
    /// Next position producers claim.
    tail: CachePadded<AtomicU64>,
    /// Next position consumers take.
    head: CachePadded<AtomicU64>,
    /// Consumers park here when the ring is empty.
    not_empty: CachePadded<WaitWord>,
    /// Producers park here when the ring is full.
    not_full: CachePadded<WaitWord>,
}

/// Where a ring's tail index (a u64, the next position producers claim) sits in its region: part
/// of the ABI, for peers in other languages (and tests of peers that write it).
///
/// # Examples
///
/// What a peer in another language reads:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use shm_ring::{mpmc, Region};
///
/// let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
/// mpmc::init::<u64>(&region, 8, 2)?;
/// let tx = mpmc::Producer::<u64>::attach(&region)?;
/// (0..3).try_for_each(|i| tx.push(i)).unwrap();
/// let tail = region.ptr_at::<AtomicU64>(mpmc::TAIL_OFFSET).unwrap();
/// // SAFETY: in bounds and aligned (ptr_at); the header is atomics only, initialised by init.
/// assert_eq!(unsafe { tail.as_ref() }.load(Ordering::Acquire), 3);
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub const TAIL_OFFSET: usize = 128;
/// Where a ring's head index (a u64, the next position consumers take) sits in its region.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use shm_ring::{mpmc, Region};
///
/// let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
/// mpmc::init::<u64>(&region, 8, 2)?;
/// let tx = mpmc::Producer::<u64>::attach(&region)?;
/// let rx = mpmc::Consumer::<u64>::attach(&region)?;
/// (0..3).try_for_each(|i| tx.push(i)).unwrap();
/// assert_eq!(rx.pop(), Ok(0));
/// let head = region.ptr_at::<AtomicU64>(mpmc::HEAD_OFFSET).unwrap();
/// // SAFETY: in bounds and aligned (ptr_at); the header is atomics only, initialised by init.
/// assert_eq!(unsafe { head.as_ref() }.load(Ordering::Acquire), 1);
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub const HEAD_OFFSET: usize = 256;

#[cfg(not(shm_loom))]
const _: () = {
    assert!(std::mem::offset_of!(MpmcHeader, participants) == 16);
    assert!(std::mem::offset_of!(MpmcHeader, tail) == TAIL_OFFSET);
    assert!(std::mem::offset_of!(MpmcHeader, head) == HEAD_OFFSET);
    assert!(std::mem::size_of::<MpmcHeader>() == 640);
    assert!(std::mem::size_of::<Slot<[u64; 2]>>() == 24);
};

#[repr(C)]
struct Slot<T> {
    stamp: AtomicU64,
    data: UnsafeCell<T>,
}

fn table_offset() -> usize {
    align_up(std::mem::size_of::<MpmcHeader>(), REGION_ALIGN)
}

fn slots_offset(participants: usize) -> usize {
    align_up(
        table_offset() + participants * std::mem::size_of::<AtomicU64>(),
        REGION_ALIGN,
    )
}

/// Bytes a ring of `capacity` entries (rounded up to a power of two) with room for `participants`
/// producers and consumers needs.
///
/// # Examples
///
/// ```
/// use shm_ring::{mpmc, Region};
///
/// // 100 entries (rounded up to 128) for up to 4 producers and consumers in all:
/// let region = Region::heap(mpmc::bytes_for::<u64>(100, 4));
/// mpmc::init::<u64>(&region, 100, 4)?;
/// assert_eq!(mpmc::Consumer::<u64>::attach(&region)?.capacity(), 128);
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub fn bytes_for<T: Pod>(capacity: usize, participants: usize) -> usize {
    let cap = capacity.max(2).next_power_of_two();
    slots_offset(participants) + cap * std::mem::size_of::<Slot<T>>()
}

/// Writes a fresh ring for `capacity` entries (rounded up to a power of two, at least 2) and up to
/// `participants` attached handles into `region`. The magic is published last.
///
/// # Errors
///
/// [`AttachError::RegionTooSmall`], [`AttachError::InvalidCapacity`] (also for 0 or too many
/// participants).
///
/// # Examples
///
/// ```
/// use shm_ring::{mpmc, AttachError, Region};
///
/// let region = Region::heap(mpmc::bytes_for::<u64>(64, 3));
/// mpmc::init::<u64>(&region, 64, 3)?;
/// let tx = mpmc::Producer::<u64>::attach(&region)?;
/// let rx = mpmc::Consumer::<u64>::attach(&region)?;
/// tx.push(1).unwrap();
/// assert_eq!(rx.pop(), Ok(1));
///
/// let refused = mpmc::init::<u64>(&Region::heap(4096), 1024, 3);
/// assert!(matches!(refused, Err(AttachError::RegionTooSmall { .. })));
/// # Ok::<(), AttachError>(())
/// ```
pub fn init<T: Pod>(
    region: &Region,
    capacity: usize,
    participants: usize,
) -> Result<(), AttachError> {
    if capacity == 0 || capacity > (1 << 30) || participants == 0 || participants > MAX_PARTICIPANTS
    {
        return Err(AttachError::InvalidCapacity(capacity));
    }
    let cap = capacity.max(2).next_power_of_two();
    let needed = bytes_for::<T>(cap, participants);
    let too_small = AttachError::RegionTooSmall {
        needed,
        available: region.len(),
    };
    if region.len() < needed {
        return Err(too_small);
    }
    let hdr = region.ptr_at::<MpmcHeader>(0).ok_or(too_small)?;
    let base = region.as_ptr().as_ptr();
    // SAFETY: `needed` bytes fit (checked), the region is REGION_ALIGN-aligned, and init runs before
    // any handle attaches, so these writes race with nobody.
    unsafe {
        hdr.as_ptr().write(MpmcHeader {
            magic: AtomicU32::new(0),
            version: AtomicU32::new(MPMC_VERSION),
            capacity: AtomicU32::new(cap as u32),
            entry_size: AtomicU32::new(std::mem::size_of::<T>() as u32),
            participants: AtomicU32::new(participants as u32),
            reserved: AtomicU32::new(0),
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            not_empty: CachePadded::new(WaitWord::new()),
            not_full: CachePadded::new(WaitWord::new()),
        });
        let table = base.add(table_offset()).cast::<AtomicU64>();
        for i in 0..participants {
            table.add(i).write(AtomicU64::new(0));
        }
        let slots = base.add(slots_offset(participants)).cast::<Slot<T>>();
        for i in 0..cap {
            slots.add(i).write(Slot {
                stamp: AtomicU64::new(stamp(i as u64, EMPTY)),
                data: UnsafeCell::new(T::zeroed()),
            });
        }
    }
    // SAFETY: initialised above.
    let h = unsafe { hdr.as_ref() };
    // SYNC(magic): Release publishes the initialised ring; pairs with the Acquire in `Shared::attach`.
    h.magic.store(MPMC_MAGIC, Ordering::Release);
    Ok(())
}

/// What every handle holds: the validated layout, copied out of shared memory once, and its
/// participant index.
struct Shared<T> {
    _region: Region,
    hdr: NonNull<MpmcHeader>,
    table: NonNull<AtomicU64>,
    slots: NonNull<Slot<T>>,
    mask: u64,
    cap: u64,
    participants: usize,
    index: u16,
    me: ProcessToken,
    /// Stuck-claim memo: (position, first time seen in ns since `epoch`), to rate-limit liveness checks.
    stuck_pos: LocalU64,
    stuck_since: LocalU64,
    epoch: Instant,
}

/// How long a claim must stay unpublished before anyone asks whether its producer is alive.
const STUCK_CHECK_AFTER: Duration = Duration::from_micros(500);

impl<T: Pod> Shared<T> {
    fn attach(region: &Region) -> Result<Self, AttachError> {
        let too_small = AttachError::RegionTooSmall {
            needed: table_offset(),
            available: region.len(),
        };
        let hdr = region.ptr_at::<MpmcHeader>(0).ok_or(too_small)?;
        // SAFETY: in bounds and aligned (ptr_at); atomics only.
        let h = unsafe { hdr.as_ref() };
        // SYNC(magic): Acquire pairs with the Release in `init`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MPMC_MAGIC {
            return Err(AttachError::NotInitialised(magic));
        }
        let version = h.version.load(Ordering::Relaxed);
        let entry = h.entry_size.load(Ordering::Relaxed);
        let expected = std::mem::size_of::<T>() as u32;
        if entry != expected || version != MPMC_VERSION {
            return Err(AttachError::EntryMismatch {
                found: entry,
                expected,
                version,
            });
        }
        let cap = h.capacity.load(Ordering::Relaxed);
        let participants = h.participants.load(Ordering::Relaxed) as usize;
        if cap < 2 || !cap.is_power_of_two() || participants == 0 || participants > MAX_PARTICIPANTS
        {
            return Err(AttachError::BadCapacity(cap));
        }
        if bytes_for::<T>(cap as usize, participants) > region.len() {
            return Err(AttachError::BadCapacity(cap));
        }
        let base = region.as_ptr();
        // SAFETY: table and slots lie inside the region (size checked just above).
        let (table, slots) = unsafe {
            (
                base.add(table_offset()).cast::<AtomicU64>(),
                base.add(slots_offset(participants)).cast::<Slot<T>>(),
            )
        };
        let mut shared = Shared {
            _region: region.clone(),
            hdr,
            table,
            slots,
            mask: u64::from(cap) - 1,
            cap: u64::from(cap),
            participants,
            index: 0,
            me: ProcessToken::current(),
            stuck_pos: LocalU64::new(u64::MAX),
            stuck_since: LocalU64::new(0),
            epoch: Instant::now(),
        };
        shared.index = shared.register()?;
        Ok(shared)
    }

    /// Claims a participant slot; cleans up after a dead previous holder before using it.
    fn register(&self) -> Result<u16, AttachError> {
        let mut live_holder = 0;
        for i in 0..self.participants {
            match claim_slot(self.participant(i), self.me) {
                Ok(Claimed::Fresh) => return Ok(i as u16),
                Ok(Claimed::TookOver(_)) => {
                    self.cleanup_after(i as u16);
                    return Ok(i as u16);
                }
                Err(holder) => live_holder = holder.pid(),
            }
        }
        Err(AttachError::RoleTaken { pid: live_holder })
    }

    /// Undoes whatever dead participant `index` left in the slots: its claims become SKIP, slots it
    /// had taken become EMPTY for their next lap.
    fn cleanup_after(&self, index: u16) {
        for i in 0..self.cap {
            let slot = self.slot(i);
            let s = slot.stamp.load(Ordering::Acquire);
            let state = state_of(s);
            let pos = s >> 16;
            if state == CLAIMED | index {
                let _ = slot.stamp.compare_exchange(
                    s,
                    stamp(pos, SKIP),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            } else if state == TAKEN | index {
                let _ = slot.stamp.compare_exchange(
                    s,
                    stamp(pos.wrapping_add(self.cap), EMPTY),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    fn looks_consistent(&self) -> bool {
        let h = self.hdr();
        let head = h.head.load(Ordering::Acquire);
        // SYNC(stamp): Acquire, as in `pop`.
        let s = self.slot(head).stamp.load(Ordering::Acquire);
        let tail = h.tail.load(Ordering::Acquire);
        let ahead = tail.wrapping_sub(head);
        // Head and tail each trail their claims by a few positions, never by a lap; the head
        // passes the tail only between two loads of a racing look.
        ahead == 0 || (ahead <= self.cap + MAX_PARTICIPANTS as u64 && s != stamp(head, EMPTY))
    }

    fn reset(&self) {
        let h = self.hdr();
        // Restart at the head's slot boundary of a lap, well inside the stamps' sequence space.
        let base = h.head.load(Ordering::Relaxed) & SEQ_MASK & !self.mask;
        for i in 0..self.cap {
            // SYNC(stamp): Release, so a producer that claims a slot (Acquire) after the reset
            // sees it empty; the data is not cleared (Pod: any bytes are a value).
            self.slot(base + i)
                .stamp
                .store(stamp(base + i, EMPTY), Ordering::Release);
        }
        h.head.store(base, Ordering::SeqCst);
        h.tail.store(base, Ordering::SeqCst);
    }

    #[inline]
    fn hdr(&self) -> &MpmcHeader {
        // SAFETY: validated at attach; the region lives as long as self.
        unsafe { self.hdr.as_ref() }
    }

    #[inline]
    fn slot(&self, pos: u64) -> &Slot<T> {
        // SAFETY: masked position < cap; the slots were checked to fit at attach.
        unsafe { &*self.slots.as_ptr().add((pos & self.mask) as usize) }
    }

    fn participant(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < self.participants);
        // SAFETY: i < participants (all callers bound it), and the table was checked to fit.
        unsafe { &*self.table.as_ptr().add(i) }
    }

    /// Whether participant `index` (read from a stamp: untrusted) is vacant or dead.
    fn participant_gone(&self, index: u16) -> bool {
        let i = usize::from(index & INDEX_MASK);
        // An index past the table cannot belong to anyone: treat its claim as abandoned.
        i >= self.participants || slot_vacant(self.participant(i))
    }

    /// Whether a claim stuck at `pos` is old enough to ask about its producer, rate-limited.
    fn claim_stuck_long_enough(&self, pos: u64) -> bool {
        if cfg!(shm_loom) {
            // loom replays the model once per schedule and needs each replay to make the same
            // atomic operations as the last; a wall-clock verdict differs between replays ("Is
            // the model fully deterministic?"). loom does not model dead processes anyway (every
            // process is alive under shm_loom), so it never skips a claim.
            return false;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        if self.stuck_pos.load(Ordering::Relaxed) != pos {
            self.stuck_pos.store(pos, Ordering::Relaxed);
            self.stuck_since.store(now, Ordering::Relaxed);
            return false;
        }
        now.saturating_sub(self.stuck_since.load(Ordering::Relaxed))
            >= STUCK_CHECK_AFTER.as_nanos() as u64
    }
}

/// A producer handle of an MPMC ring. `Send + Sync`: threads may share one.
///
/// # Examples
///
/// Threads share one producer (and one participant slot):
///
/// ```
/// use shm_ring::{mpmc, Region};
///
/// let region = Region::heap(mpmc::bytes_for::<u64>(64, 2));
/// mpmc::init::<u64>(&region, 64, 2)?;
/// let tx = mpmc::Producer::<u64>::attach(&region)?;
/// let rx = mpmc::Consumer::<u64>::attach(&region)?;
/// std::thread::scope(|s| {
///     for t in 0..4 {
///         let tx = &tx;
///         s.spawn(move || (0..8).for_each(|i| tx.push(t * 8 + i).unwrap()));
///     }
/// });
/// let mut got: Vec<u64> = std::iter::from_fn(|| rx.pop().ok()).collect();
/// got.sort();
/// assert_eq!(got, (0..32).collect::<Vec<_>>());
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub struct Producer<T> {
    shared: Shared<T>,
}

/// A consumer handle of an MPMC ring. `Send + Sync`: threads may share one.
///
/// # Examples
///
/// Threads share one consumer; each entry goes to one of them:
///
/// ```
/// use shm_ring::{mpmc, Region};
///
/// let region = Region::heap(mpmc::bytes_for::<u64>(64, 2));
/// mpmc::init::<u64>(&region, 64, 2)?;
/// let tx = mpmc::Producer::<u64>::attach(&region)?;
/// let rx = mpmc::Consumer::<u64>::attach(&region)?;
/// (0..32).try_for_each(|i| tx.push(i)).unwrap();
/// let total: u64 = std::thread::scope(|s| {
///     let workers: Vec<_> =
///         (0..2).map(|_| s.spawn(|| std::iter::from_fn(|| rx.pop().ok()).sum::<u64>())).collect();
///     workers.into_iter().map(|w| w.join().unwrap()).sum()
/// });
/// assert_eq!(total, (0..32).sum());
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub struct Consumer<T> {
    shared: Shared<T>,
}

// SAFETY: every access to shared state goes through atomics or through slots owned by CAS on their
// stamp; the handle-local memo is atomics too. T is Pod, hence Send.
unsafe impl<T: Pod> Send for Producer<T> {}
// SAFETY: as for Send: `&Producer` methods are safe to call concurrently (each claim is a CAS).
unsafe impl<T: Pod> Sync for Producer<T> {}
// SAFETY: as for Producer.
unsafe impl<T: Pod> Send for Consumer<T> {}
// SAFETY: as for Producer: each take is a CAS on the slot's stamp.
unsafe impl<T: Pod> Sync for Consumer<T> {}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpmc::Producer")
            .field("capacity", &self.shared.cap)
            .field("index", &self.shared.index)
            .finish()
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpmc::Consumer")
            .field("capacity", &self.shared.cap)
            .field("index", &self.shared.index)
            .finish()
    }
}

/// How many times an index may be re-read without any sign of progress before the ring is declared
/// corrupt (a stamp that fits no lap around the index). Smaller under cargo-fuzz (`--cfg fuzzing`),
/// where corrupt rings are the common case and the bound only has to be finite.
#[allow(unexpected_cfgs)] // `fuzzing` is set by cargo-fuzz, not by this workspace.
const MAX_STALE_ROUNDS: u32 = if cfg!(fuzzing) { 1 << 8 } else { 1 << 16 };

/// A claimed, unpublished slot.
struct ClaimedSlot {
    pos: u64,
}

impl<T: Pod> Producer<T> {
    /// Attaches a producer, taking a free participant slot (or one whose holder died, after cleaning
    /// up after it).
    ///
    /// # Errors
    ///
    /// [`AttachError`]; [`AttachError::RoleTaken`] when every participant slot is held by a live
    /// process.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{mpmc, AttachError, Region};
    ///
    /// let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
    /// mpmc::init::<u64>(&region, 8, 2)?;
    /// let a = mpmc::Producer::<u64>::attach(&region)?;
    /// let _b = mpmc::Producer::<u64>::attach(&region)?;
    /// // Both participant slots are held (by this live process):
    /// let third = mpmc::Producer::<u64>::attach(&region);
    /// assert!(matches!(third, Err(AttachError::RoleTaken { .. })));
    /// drop(a);
    /// let _c = mpmc::Producer::<u64>::attach(&region)?;
    /// # Ok::<(), AttachError>(())
    /// ```
    pub fn attach(region: &Region) -> Result<Self, AttachError> {
        Ok(Producer {
            shared: Shared::attach(region)?,
        })
    }

    /// Capacity in entries.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{mpmc, Region};
    ///
    /// let region = Region::heap(mpmc::bytes_for::<u64>(1, 1));
    /// mpmc::init::<u64>(&region, 1, 1)?;
    /// assert_eq!(mpmc::Producer::<u64>::attach(&region)?.capacity(), 2); // at least 2
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.cap as usize
    }

    /// This handle's participant index (the one its claims carry).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::mpmc;
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(8, 4));
    /// # mpmc::init::<u64>(&region, 8, 4)?;
    /// let a = mpmc::Producer::<u64>::attach(&region)?;
    /// let b = mpmc::Producer::<u64>::attach(&region)?;
    /// assert_eq!((a.participant_index(), b.participant_index()), (0, 1));
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn participant_index(&self) -> u16 {
        self.shared.index
    }

    /// Pushes one entry without waiting.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`]; [`PushError::Corrupted`] when the slots contradict the indices.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{mpmc, PushError};
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(2, 2));
    /// # mpmc::init::<u64>(&region, 2, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// tx.push(1).unwrap();
    /// tx.push(2).unwrap();
    /// assert_eq!(tx.push(3), Err(PushError::Full(3)));
    /// assert_eq!(rx.pop(), Ok(1));
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    #[inline]
    pub fn push(&self, value: T) -> Result<(), PushError<T>> {
        match self.push_with(|slot| *slot = value) {
            Ok(()) => Ok(()),
            Err(e) => Err(match e {
                PushError::Full(()) => PushError::Full(value),
                PushError::Corrupted(()) => PushError::Corrupted(value),
                PushError::Abandoned(()) => PushError::Abandoned(value),
                PushError::TimedOut(()) => PushError::TimedOut(value),
            }),
        }
    }

    /// Claims a slot, lets `write` fill it in place, then publishes it.
    ///
    /// The slot is this producer's alone while `write` runs. If the process dies inside `write`,
    /// consumers skip the slot; if `write` panics, the slot is published as SKIP.
    ///
    /// # Errors
    ///
    /// As for [`push`](Self::push); `write` is not called on error.
    ///
    /// # Examples
    ///
    /// A large entry written in place. The slot holds whatever its last lap left: write all of it.
    ///
    /// ```
    /// use shm_ring::{mpmc, Region};
    ///
    /// let region = Region::heap(mpmc::bytes_for::<[u64; 32]>(4, 2));
    /// mpmc::init::<[u64; 32]>(&region, 4, 2)?;
    /// let tx = mpmc::Producer::<[u64; 32]>::attach(&region)?;
    /// let rx = mpmc::Consumer::<[u64; 32]>::attach(&region)?;
    /// tx.push_with(|entry| {
    ///     for (i, word) in entry.iter_mut().enumerate() {
    ///         *word = i as u64;
    ///     }
    /// })
    /// .unwrap();
    /// assert_eq!(rx.pop().unwrap()[31], 31);
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn push_with(&self, write: impl FnOnce(&mut T)) -> Result<(), PushError<()>> {
        let claim = self.claim()?;
        let slot = self.shared.slot(claim.pos);
        let guard = SkipOnUnwind {
            shared: &self.shared,
            pos: claim.pos,
        };
        // SAFETY: the CAS in `claim` made this slot ours (CLAIMED by our index); no consumer reads it
        // and no producer writes it until we publish. T is Pod: any bytes left there are a valid T.
        slot.data.with_mut(|p| write(unsafe { &mut *p }));
        std::mem::forget(guard);
        self.publish(claim.pos, FULL)
    }

    /// As [`Consumer::looks_consistent`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::mpmc;
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
    /// # mpmc::init::<u64>(&region, 8, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// tx.push(1).unwrap();
    /// assert!(tx.looks_consistent());
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn looks_consistent(&self) -> bool {
        self.shared.looks_consistent()
    }

    /// As [`Consumer::reset`].
    ///
    /// # Examples
    ///
    /// A producer that takes over a ring whose consumers have all gone starts it afresh:
    ///
    /// ```
    /// use shm_ring::mpmc;
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
    /// # mpmc::init::<u64>(&region, 8, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// (0..3).try_for_each(|i| tx.push(i)).unwrap();
    /// tx.reset(); // the three entries are dropped
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// assert!(rx.is_empty());
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn reset(&self) {
        self.shared.reset();
    }

    fn claim(&self) -> Result<ClaimedSlot, PushError<()>> {
        let s_ = &self.shared;
        let h = s_.hdr();
        let mine = CLAIMED | s_.index;
        let mut stale_rounds = 0;
        let mut helped = 0;
        loop {
            let pos = h.tail.load(Ordering::Relaxed);
            let slot = s_.slot(pos);
            // SYNC(stamp): Acquire pairs with the consumer's Release when it empties the slot, so our
            // writes to the slot come after its reads.
            let s = slot.stamp.load(Ordering::Acquire);
            let delta = lap_delta(s, pos);
            if s == stamp(pos, EMPTY) {
                // Success AcqRel: acquire the consumer's release; release our claim to helpers.
                // Failure Relaxed: we only loop and reload.
                if slot
                    .stamp
                    .compare_exchange_weak(s, stamp(pos, mine), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    let _ = h.tail.compare_exchange(
                        pos,
                        pos.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    return Ok(ClaimedSlot { pos });
                }
            } else if delta == 0 || (delta < (1 << (SEQ_BITS - 1)) && state_of(s) == EMPTY) {
                // Someone claimed `pos` (or it was even consumed already) but tail was not advanced:
                // help, so a producer that died right after its claim cannot stall the ring.
                // Tail trails the claims by a few positions, never by laps: helping on for more
                // than a lap means a peer wrote the stamps, and would take up to 2^47 rounds.
                helped += 1;
                if helped > s_.cap + u64::from(MAX_STALE_ROUNDS) {
                    return Err(PushError::Corrupted(()));
                }
                let _ = h.tail.compare_exchange(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else if delta == SEQ_MASK + 1 - s_.cap {
                // The slot still holds the previous lap: full, unless a dead consumer took it.
                let st = state_of(s);
                if st & TAKEN != 0 && s_.participant_gone(st & INDEX_MASK) {
                    let _ = slot.stamp.compare_exchange(
                        s,
                        stamp(pos, EMPTY),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                    continue;
                }
                if h.tail.load(Ordering::Relaxed) == pos {
                    return Err(PushError::Full(()));
                }
            } else {
                stale_rounds += 1;
                if stale_rounds > MAX_STALE_ROUNDS {
                    return Err(PushError::Corrupted(()));
                }
            }
            crate::sync::spin_hint();
        }
    }

    fn publish(&self, pos: u64, state: u16) -> Result<(), PushError<()>> {
        let s_ = &self.shared;
        let slot = s_.slot(pos);
        // SYNC(stamp): SeqCst (a) releases the slot's contents to the consumer's Acquire load of the
        // stamp and (b) orders this RMW before the `waiters` load (Dekker handshake, see wait.rs).
        // A failure means our claim was skipped: only possible if the stamp was overwritten by a
        // buggy peer, because claims are skipped only when their process is dead.
        match slot.stamp.compare_exchange(
            stamp(pos, CLAIMED | s_.index),
            stamp(pos, state),
            Ordering::SeqCst,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                s_.hdr().not_empty.notify_after_rmw();
                Ok(())
            }
            Err(_) => Err(PushError::Corrupted(())),
        }
    }

    /// Pushes, waiting for room with `strategy` until `deadline`.
    ///
    /// # Errors
    ///
    /// [`PushError::TimedOut`] at the deadline; [`PushError::Corrupted`] as for [`push`](Self::push).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{mpmc, WaitStrategy};
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(2, 2));
    /// # mpmc::init::<u64>(&region, 2, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// (1..=2).try_for_each(|i| tx.push(i)).unwrap();
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         std::thread::sleep(Duration::from_millis(10));
    ///         assert_eq!(rx.pop(), Ok(1));
    ///     });
    ///     tx.push_blocking(3, &WaitStrategy::default(), deadline).unwrap(); // waits for room
    /// });
    /// assert_eq!((rx.pop(), rx.pop()), (Ok(2), Ok(3)));
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn push_blocking(
        &self,
        value: T,
        strategy: &WaitStrategy,
        deadline: Instant,
    ) -> Result<(), PushError<T>> {
        loop {
            match self.push(value) {
                Err(PushError::Full(_)) => {}
                other => return other,
            }
            let h = self.shared.hdr();
            let cap = self.shared.cap;
            let ready = || {
                h.tail
                    .load(Ordering::SeqCst)
                    .wrapping_sub(h.head.load(Ordering::SeqCst))
                    < cap
            };
            // The deadline holds also when `ready` says there is room and `push` still finds none
            // (indices a peer corrupted): `wait_until` then returns at once, every round.
            if strategy.wait_until(&h.not_full, deadline, ready).is_err()
                || Instant::now() >= deadline
            {
                return Err(PushError::TimedOut(value));
            }
        }
    }
}

/// Publishes a claimed slot as SKIP if the writer panics, so consumers are not held up.
struct SkipOnUnwind<'a, T: Pod> {
    shared: &'a Shared<T>,
    pos: u64,
}

impl<T: Pod> Drop for SkipOnUnwind<'_, T> {
    fn drop(&mut self) {
        let slot = self.shared.slot(self.pos);
        let _ = slot.stamp.compare_exchange(
            stamp(self.pos, CLAIMED | self.shared.index),
            stamp(self.pos, SKIP),
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
        self.shared.hdr().not_empty.notify_after_rmw();
    }
}

impl<T: Pod> Consumer<T> {
    /// Attaches a consumer (see [`Producer::attach`]).
    ///
    /// # Errors
    ///
    /// As for [`Producer::attach`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{mpmc, Region};
    ///
    /// let region = Region::heap(mpmc::bytes_for::<u64>(8, 3));
    /// mpmc::init::<u64>(&region, 8, 3)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// let rx1 = mpmc::Consumer::<u64>::attach(&region)?;
    /// let rx2 = mpmc::Consumer::<u64>::attach(&region)?;
    /// (1..=2).try_for_each(|i| tx.push(i)).unwrap();
    /// assert_eq!((rx1.pop(), rx2.pop()), (Ok(1), Ok(2)));
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn attach(region: &Region) -> Result<Self, AttachError> {
        Ok(Consumer {
            shared: Shared::attach(region)?,
        })
    }

    /// Capacity in entries.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{mpmc, Region};
    ///
    /// let region = Region::heap(mpmc::bytes_for::<u64>(50, 2));
    /// mpmc::init::<u64>(&region, 50, 2)?;
    /// assert_eq!(mpmc::Consumer::<u64>::attach(&region)?.capacity(), 64);
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.shared.cap as usize
    }

    /// Resets the consumers' parked count (see [`WaitWord::clear_parked`]): call it when taking
    /// over a ring whose previous consumers are all dead, before any of this process's threads
    /// waits on it. Returns how many parked consumers were counted.
    ///
    /// # Examples
    ///
    /// Taking over the consumer side of a ring in a segment that outlived its previous consumers:
    ///
    /// ```
    /// use shm_ring::mpmc;
    /// # use shm_ring::Region;
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
    /// # mpmc::init::<u64>(&region, 8, 2)?;
    ///
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// let forgotten = rx.clear_parked_consumers(); // dead consumers that stayed counted
    /// assert_eq!(forgotten, 0); // none here
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn clear_parked_consumers(&self) -> u32 {
        let w = &self.shared.hdr().not_empty;
        let n = w.parked();
        if n != 0 {
            w.clear_parked();
        }
        n
    }

    /// Whether nothing is published past the consumers' position (a hint: another consumer may
    /// take what is there first).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::mpmc;
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
    /// # mpmc::init::<u64>(&region, 8, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// assert!(rx.is_empty());
    /// tx.push(1).unwrap();
    /// assert!(!rx.is_empty());
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        let h = self.shared.hdr();
        // SYNC(tail): SeqCst so a waiter's readiness check pairs with the producers' SeqCst
        // publication (the park/wake handshake, see wait.rs).
        h.tail.load(Ordering::SeqCst) == h.head.load(Ordering::SeqCst)
    }

    /// Whether the ring's indices agree with its slots, as far as one look can tell. False when
    /// the tail is further from the head than the ring holds (either way), or when the tail is
    /// past a head slot that no producer has claimed: a ring that [`is_empty`](Self::is_empty)
    /// calls non-empty while [`pop`](Self::pop) finds nothing for ever. A producer that claims
    /// between this call's loads can make one look false; a peer that wrote impossible indices
    /// makes every look false, so a caller decides on several looks over time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use shm_ring::{mpmc, PopError, Region};
    ///
    /// let region = Region::heap(mpmc::bytes_for::<u64>(4, 2));
    /// mpmc::init::<u64>(&region, 4, 2)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// assert!(rx.looks_consistent());
    /// // A buggy peer moves the tail past a slot that nobody claimed:
    /// let tail = region.ptr_at::<AtomicU64>(mpmc::TAIL_OFFSET).unwrap();
    /// // SAFETY: in bounds and aligned (ptr_at); the header is atomics only.
    /// unsafe { tail.as_ref() }.fetch_add(1, Ordering::SeqCst);
    /// assert!(!rx.is_empty() && rx.pop() == Err(PopError::Empty));
    /// assert!(!rx.looks_consistent());
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn looks_consistent(&self) -> bool {
        self.shared.looks_consistent()
    }

    /// Empties the ring and makes its indices and slots agree again: for a ring whose other users
    /// are gone (a client slot's rings when its next holder connects), after a look found them
    /// inconsistent. Entries in it are lost. Only atomic stores: a late user still holding a
    /// handle sees a ring that changes under it, never undefined behaviour.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::mpmc;
    /// # use shm_ring::Region;
    /// # use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(4, 2));
    /// # mpmc::init::<u64>(&region, 4, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// # let tail = region.ptr_at::<AtomicU64>(mpmc::TAIL_OFFSET).unwrap();
    /// # // SAFETY: in bounds and aligned (ptr_at); the header is atomics only.
    /// # unsafe { tail.as_ref() }.fetch_add(1, Ordering::SeqCst); // as a buggy peer would
    /// assert!(!rx.looks_consistent());
    /// rx.reset();
    /// assert!(rx.looks_consistent() && rx.is_empty());
    /// tx.push(5).unwrap();
    /// assert_eq!(rx.pop(), Ok(5));
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Pops one entry without waiting, skipping slots claimed by producers that died.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`] when nothing is published at the head (possibly a live producer is still
    /// writing it); [`PopError::Corrupted`] when the slots contradict the indices.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{mpmc, PopError};
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
    /// # mpmc::init::<u64>(&region, 8, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// tx.push(1).unwrap();
    /// assert_eq!(rx.pop(), Ok(1));
    /// assert_eq!(rx.pop(), Err(PopError::Empty));
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    #[inline]
    pub fn pop(&self) -> Result<T, PopError> {
        let s_ = &self.shared;
        let h = s_.hdr();
        let mine = TAKEN | s_.index;
        let mut stale_rounds = 0;
        let mut helped = 0;
        loop {
            let pos = h.head.load(Ordering::Relaxed);
            let slot = s_.slot(pos);
            // SYNC(stamp): Acquire pairs with the producer's SeqCst CAS in `publish`.
            let s = slot.stamp.load(Ordering::Acquire);
            let delta = lap_delta(s, pos);
            let st = state_of(s);
            if delta == 0 {
                if st == FULL || st == SKIP {
                    if slot
                        .stamp
                        .compare_exchange_weak(
                            s,
                            stamp(pos, mine),
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let _ = h.head.compare_exchange(
                        pos,
                        pos.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    // SAFETY: TAKEN by us: no producer writes this slot until we empty it. T is Pod.
                    let value = (st == FULL).then(|| slot.data.with(|p| unsafe { p.read() }));
                    // SYNC(stamp): SeqCst releases the slot to the next lap's producer (its Acquire
                    // load in `claim`) and orders this before the `waiters` load (Dekker).
                    slot.stamp
                        .swap(stamp(pos.wrapping_add(s_.cap), EMPTY), Ordering::SeqCst);
                    h.not_full.notify_after_rmw();
                    match value {
                        Some(v) => return Ok(v),
                        None => continue,
                    }
                } else if st == EMPTY {
                    return Err(PopError::Empty);
                } else if st & TAKEN != 0 {
                    // Another consumer has it and has not advanced head yet: help.
                    let _ = h.head.compare_exchange(
                        pos,
                        pos.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                } else if st & CLAIMED != 0 {
                    // A producer is writing it. If it died, unblock the ring.
                    if s_.claim_stuck_long_enough(pos) && s_.participant_gone(st & INDEX_MASK) {
                        let _ = slot.stamp.compare_exchange(
                            s,
                            stamp(pos, SKIP),
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        );
                        continue;
                    }
                    return Err(PopError::Empty);
                } else {
                    return Err(PopError::Corrupted);
                }
            } else if delta < (1 << (SEQ_BITS - 1)) && st == EMPTY {
                // Already consumed (the taker died or is slow before advancing head): help. As in
                // `claim`, head trails the takes by a few positions, never by laps.
                helped += 1;
                if helped > s_.cap + u64::from(MAX_STALE_ROUNDS) {
                    return Err(PopError::Corrupted);
                }
                let _ = h.head.compare_exchange(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else if delta == SEQ_MASK + 1 - s_.cap {
                // The previous lap is still being read by another consumer: nothing new here yet.
                return Err(PopError::Empty);
            } else {
                stale_rounds += 1;
                if stale_rounds > MAX_STALE_ROUNDS {
                    return Err(PopError::Corrupted);
                }
            }
            crate::sync::spin_hint();
        }
    }

    /// Pops, waiting with `strategy` until `deadline`.
    ///
    /// # Errors
    ///
    /// [`PopError::TimedOut`] at the deadline; [`PopError::Corrupted`] as for [`pop`](Self::pop).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shm_ring::{mpmc, WaitStrategy};
    /// # use shm_ring::Region;
    ///
    /// # let region = Region::heap(mpmc::bytes_for::<u64>(8, 2));
    /// # mpmc::init::<u64>(&region, 8, 2)?;
    /// let tx = mpmc::Producer::<u64>::attach(&region)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// std::thread::scope(|s| {
    ///     s.spawn(|| {
    ///         std::thread::sleep(Duration::from_millis(10));
    ///         tx.push(7).unwrap();
    ///     });
    ///     assert_eq!(rx.pop_blocking(&WaitStrategy::default(), deadline), Ok(7));
    /// });
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn pop_blocking(&self, strategy: &WaitStrategy, deadline: Instant) -> Result<T, PopError> {
        let mut strategy = *strategy;
        loop {
            match self.pop() {
                Err(PopError::Empty) => {}
                other => return other,
            }
            let h = self.shared.hdr();
            let head = h.head.load(Ordering::SeqCst);
            // Slices of 1 ms so that a dead producer's claim is noticed and skipped.
            let slice = deadline.min(Instant::now() + Duration::from_millis(1));
            let ready =
                || h.tail.load(Ordering::SeqCst) != head || h.head.load(Ordering::SeqCst) != head;
            let _ = strategy.wait_until(&h.not_empty, slice, ready);
            // Spin in the first slice only.
            strategy = strategy.parking_now();
            // Checked whether or not the wait saw something: `ready` may hold while `pop` finds
            // nothing (a claim not yet published, or indices a peer corrupted), and then the wait
            // returns at once, every round.
            if Instant::now() >= deadline {
                return self.pop().map_err(|e| {
                    if e == PopError::Empty {
                        PopError::TimedOut
                    } else {
                        e
                    }
                });
            }
        }
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.shared.release_raw();
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.release_raw();
    }
}

impl<T> Shared<T> {
    fn release_raw(&self) {
        // SAFETY: index < participants (assigned by `register`); the table fits the region, which
        // self keeps alive.
        let slot = unsafe { &*self.table.as_ptr().add(usize::from(self.index)) };
        release_slot(slot, self.me);
    }
}

#[cfg(all(test, not(shm_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ring(cap: usize) -> Region {
        let region = Region::heap(bytes_for::<u64>(cap, 8));
        init::<u64>(&region, cap, 8).unwrap();
        region
    }

    #[test]
    fn fifo_full_empty_and_wrap() {
        let region = ring(4);
        let tx = Producer::<u64>::attach(&region).unwrap();
        let rx = Consumer::<u64>::attach(&region).unwrap();
        assert_eq!(rx.pop(), Err(PopError::Empty));
        for lap in 0..5 {
            for i in 0..4 {
                tx.push(lap * 4 + i).unwrap();
            }
            assert_eq!(tx.push(99), Err(PushError::Full(99)));
            for i in 0..4 {
                assert_eq!(rx.pop(), Ok(lap * 4 + i));
            }
            assert_eq!(rx.pop(), Err(PopError::Empty));
        }
    }

    #[test]
    fn participants_are_limited_and_reused() {
        let region = Region::heap(bytes_for::<u64>(4, 2));
        init::<u64>(&region, 4, 2).unwrap();
        let a = Producer::<u64>::attach(&region).unwrap();
        let b = Consumer::<u64>::attach(&region).unwrap();
        assert!(matches!(
            Producer::<u64>::attach(&region),
            Err(AttachError::RoleTaken { .. })
        ));
        drop(a);
        let c = Producer::<u64>::attach(&region).unwrap();
        assert_eq!(c.participant_index(), 0);
        drop(b);
    }

    #[test]
    fn panicking_writer_publishes_a_skip() {
        let region = ring(4);
        let tx = Producer::<u64>::attach(&region).unwrap();
        let rx = Consumer::<u64>::attach(&region).unwrap();
        tx.push(1).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = tx.push_with(|_| panic!("writer failed"));
        }));
        assert!(r.is_err());
        tx.push(3).unwrap();
        assert_eq!(rx.pop(), Ok(1));
        assert_eq!(rx.pop(), Ok(3));
        assert_eq!(rx.pop(), Err(PopError::Empty));
    }

    /// Runs `f` on another thread and fails the test if it has not returned within 5 s (under
    /// miri, which interprets every thread of every test on one core, 600 s: still nothing like
    /// the 2^46 rounds an unbounded loop would take there).
    fn returns_in_time<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (done, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(f()));
        let limit = Duration::from_secs(if cfg!(miri) { 600 } else { 5 });
        rx.recv_timeout(limit)
            .expect("the blocking call outlived its deadline")
    }

    #[test]
    fn blocking_calls_keep_their_deadline_when_a_peer_corrupts_the_indices() {
        // A peer bumps tail: `ready` sees an entry, `pop` finds an empty slot.
        let region = ring(4);
        let rx = Consumer::<u64>::attach(&region).unwrap();
        rx.shared.hdr().tail.fetch_add(1, Ordering::SeqCst);
        let got = returns_in_time(move || {
            rx.pop_blocking(
                &WaitStrategy::BusySpin,
                Instant::now() + Duration::from_millis(20),
            )
        });
        assert_eq!(got, Err(PopError::TimedOut));
        // A peer bumps head of a full ring: `ready` sees room, `push` finds the slot full.
        let region = ring(2);
        let tx = Producer::<u64>::attach(&region).unwrap();
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        tx.shared.hdr().head.fetch_add(1, Ordering::SeqCst);
        let got = returns_in_time(move || {
            tx.push_blocking(
                3,
                &WaitStrategy::BusySpin,
                Instant::now() + Duration::from_millis(20),
            )
        });
        assert_eq!(got, Err(PushError::TimedOut(3)));
    }

    #[test]
    fn impossible_indices_look_inconsistent_and_real_states_do_not() {
        let region = ring(4);
        let tx = Producer::<u64>::attach(&region).unwrap();
        let rx = Consumer::<u64>::attach(&region).unwrap();
        assert!(rx.looks_consistent(), "empty");
        tx.push(1).unwrap();
        assert!(rx.looks_consistent(), "one entry");
        let claim = tx.claim().unwrap();
        assert!(rx.looks_consistent(), "one entry and one claimed");
        tx.publish(claim.pos, FULL).unwrap();
        for v in 3..=4 {
            tx.push(v).unwrap();
        }
        assert!(rx.looks_consistent(), "full");
        let h = rx.shared.hdr();
        while rx.pop().is_ok() {}
        assert!(rx.looks_consistent(), "emptied");
        // Tail one past an unclaimed head slot: `is_empty` says no, `pop` finds nothing.
        h.tail.fetch_add(1, Ordering::SeqCst);
        assert!(!rx.is_empty() && rx.pop() == Err(PopError::Empty));
        assert!(!rx.looks_consistent(), "tail past an unclaimed slot");
        // Tail more than a ring (and the participants' lag) ahead.
        h.tail
            .fetch_add(4 + MAX_PARTICIPANTS as u64, Ordering::SeqCst);
        assert!(!rx.looks_consistent(), "tail laps ahead");
        // Head ahead of tail.
        let t = h.tail.load(Ordering::SeqCst);
        h.head.store(t + 1, Ordering::SeqCst);
        assert!(!rx.looks_consistent(), "head ahead of tail");
        // A reset makes it a working, empty ring again.
        tx.reset();
        assert!(rx.looks_consistent() && rx.is_empty());
        assert_eq!(rx.pop(), Err(PopError::Empty));
        for v in 10..14 {
            tx.push(v).unwrap();
        }
        assert!(matches!(tx.push(14), Err(PushError::Full(14))));
        assert_eq!(
            (0..4).map(|_| rx.pop().unwrap()).collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        assert!(rx.looks_consistent() && rx.is_empty());
    }

    #[test]
    fn stamps_of_a_far_lap_are_corruption_not_a_lag_to_help_through() {
        // A peer writes every stamp as EMPTY 2^46 positions ahead: helping the index along one
        // position at a time would take 2^46 rounds.
        let region = ring(4);
        let tx = Producer::<u64>::attach(&region).unwrap();
        let rx = Consumer::<u64>::attach(&region).unwrap();
        for i in 0..4 {
            rx.shared
                .slot(i)
                .stamp
                .store(stamp(i + (1 << 46), EMPTY), Ordering::SeqCst);
        }
        assert_eq!(returns_in_time(move || rx.pop()), Err(PopError::Corrupted));
        assert_eq!(
            returns_in_time(move || tx.push(1)),
            Err(PushError::Corrupted(1))
        );
    }

    #[test]
    fn dead_participant_claim_is_skipped_after_takeover() {
        let region = Region::heap(bytes_for::<u64>(4, 2));
        init::<u64>(&region, 4, 2).unwrap();
        let tx = Producer::<u64>::attach(&region).unwrap();
        let rx = Consumer::<u64>::attach(&region).unwrap();
        tx.push(1).unwrap();
        // Forge a claim at position 1 by participant 0, then pretend participant 0's process died.
        let claim = tx.claim().unwrap();
        assert_eq!(claim.pos, 1);
        let dead = 0xFFFF_FFFE_0000_0063u64; // pid 0xFFFFFFFE: no such process
        tx.shared.participant(0).store(dead, Ordering::Relaxed);
        std::mem::forget(tx);
        assert_eq!(rx.pop(), Ok(1));
        // A new producer takes over the dead participant slot and cleans its claim up.
        let tx2 = Producer::<u64>::attach(&region).unwrap();
        assert_eq!(tx2.participant_index(), 0);
        tx2.push(2).unwrap();
        assert_eq!(rx.pop(), Ok(2));
        assert_eq!(rx.pop(), Err(PopError::Empty));
    }

    #[test]
    fn consumer_skips_a_stuck_claim_of_a_dead_producer() {
        let region = Region::heap(bytes_for::<u64>(4, 3));
        init::<u64>(&region, 4, 3).unwrap();
        let dead_tx = Producer::<u64>::attach(&region).unwrap();
        let tx = Producer::<u64>::attach(&region).unwrap();
        let rx = Consumer::<u64>::attach(&region).unwrap();
        let _claim = dead_tx.claim().unwrap();
        tx.push(5).unwrap();
        assert_eq!(
            rx.pop(),
            Err(PopError::Empty),
            "a live claim blocks the head"
        );
        dead_tx
            .shared
            .participant(0)
            .store(0xFFFF_FFFE_0000_0063, Ordering::Relaxed);
        std::mem::forget(dead_tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = rx.pop_blocking(&WaitStrategy::default(), deadline);
        assert_eq!(got, Ok(5));
    }

    #[test]
    fn a_dead_parked_consumer_can_be_forgotten() {
        let region = ring(4);
        let tx = Producer::<u64>::attach(&region).unwrap();
        let rx = Consumer::<u64>::attach(&region).unwrap();
        // As if a consumer process had been killed while parked: announced, never withdrawn.
        let h = rx.shared.hdr();
        h.not_empty.leak_waiter_for_test();
        assert_eq!(h.not_empty.parked(), 1);
        assert_eq!(rx.clear_parked_consumers(), 1);
        assert_eq!(h.not_empty.parked(), 0);
        tx.push(5).unwrap();
        assert_eq!(rx.pop(), Ok(5));
        assert_eq!(rx.clear_parked_consumers(), 0);
    }

    #[test]
    fn threads_deliver_every_item_exactly_once() {
        let region = ring(64);
        let producers = 3u64;
        let per = if cfg!(miri) { 50 } else { 20_000u64 };
        let rx = Arc::new(Consumer::<u64>::attach(&region).unwrap());
        let mut handles = Vec::new();
        for p in 0..producers {
            let region = region.clone();
            handles.push(std::thread::spawn(move || {
                let tx = Producer::<u64>::attach(&region).unwrap();
                for i in 0..per {
                    tx.push_blocking(
                        p << 32 | i,
                        &WaitStrategy::Yield,
                        Instant::now() + Duration::from_secs(30),
                    )
                    .unwrap();
                }
            }));
        }
        let mut seen = vec![0u64; producers as usize];
        let mut got = 0;
        while got < producers * per {
            let v = rx
                .pop_blocking(
                    &WaitStrategy::Yield,
                    Instant::now() + Duration::from_secs(30),
                )
                .unwrap();
            let (p, i) = ((v >> 32) as usize, v & 0xFFFF_FFFF);
            assert_eq!(seen[p], i, "per-producer FIFO");
            seen[p] += 1;
            got += 1;
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(rx.pop(), Err(PopError::Empty));
    }
}
