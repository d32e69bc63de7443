//! A slab pool of fixed-size chunks in shared memory: size classes, lock-free loan and release,
//! one owner per chunk at every moment, per-owner quotas, and reclaim of everything a dead owner held.
//!
//! # Layout
//!
//! ```text
//! PoolHeader | ClassHeader x classes | OwnerEntry x max_owners | per class: ChunkHeader x count
//!            | per class: chunk data (chunk_size x count, 128-byte aligned, chunk_size % 64 == 0)
//! ```
//!
//! Each class keeps a Treiber free list whose head word packs `tag:24 | free:20 | index+1:20`; the tag
//! changes on every push and pop (ABA protection), and the free count rides along in the same CAS, so
//! stats cost nothing on the hot path.
//!
//! Each chunk header holds `owner = generation:32 | owner_id:32` (owner 0 = free). The generation
//! changes on every loan, so a [`ChunkId`] (class, index, generation) names one loan, and a stale or
//! forged id is refused. Ownership moves by compare-exchange on that word:
//! `FREE -> owner (loan) -> other owner (transfer / adopt) -> FREE (release or reclaim)`.
//!
//! Owners are registered in the owner table with their [`ProcessToken`]; when an owner's process
//! dies, [`Pool::reclaim_dead`] returns all of its chunks and frees its entry.
//!
//! # Shares
//!
//! Besides its quota over all classes, an owner registered with [`Pool::register_owner`] may hold
//! at most a share of each class ([`PoolConfig::class_share`] percent of its chunks, at least
//! one): loans and [`Pool::adopt_within_share`] refuse to go past it, so one owner that stops
//! returning chunks cannot take a whole class from the others. An owner registered with
//! [`Pool::register_unlimited_owner`] (the process that serves the others, which holds whatever
//! is queued) has neither the share nor the quota. Each capped owner's holding per class is kept
//! in a table beside the owner table ([`Pool::held_by_class`]).
//!
//! # No chunk lost to a kill between the pop and the owner word
//!
//! A loan is two steps on two words: the pop (a compare-exchange on the class's free-list head)
//! and the owner word of the popped chunk. A process killed between them would leave a chunk that
//! is neither on the free list nor owned by anybody ("in limbo"), lost for good. So:
//!
//! * Each owner entry has [`INTENT_SLOTS`] **loan-intent** words. A loan claims one by
//!   compare-exchange (several threads of a process may loan for one owner at once: the runtime's
//!   workers share the server's owner, and a client's clones share the client's), and before each
//!   pop attempt writes into it the class, index and generation of the chunk it is about to pop.
//!   It reads that generation from the chunk's owner word *between two reads of the head that find
//!   the chunk on top*, so an intent always names a generation in which the chunk was on the free
//!   list. The slot is cleared once the owner word is stored.
//! * The owner word is stored by compare-exchange from the free word of that generation,
//!   `(gen, 0)`, to `(gen + 1, owner)`. If it fails, a reclaim took the chunk back (see below) and
//!   pushed it onto the list itself: the loan pops another one.
//! * When a dead owner is reclaimed, each of its intents is **settled**: if the chunk's word is no
//!   longer the free word of the intent's generation, the chunk has been owned since (and is
//!   someone's, or already back) and nothing is done. Otherwise the free list is walked; the walk
//!   counts only if the head word (whose tag changes on every push and pop) is the same before and
//!   after it, i.e. the walk saw one consistent list. On the list: nothing to do. Not on it: the
//!   chunk was popped in that generation and never owned, so it is in limbo; the reclaim claims
//!   its word by compare-exchange `(gen, 0) -> (gen + 1, 0)` (which makes a live loaner that popped
//!   it fail its own exchange and pop another) and pushes it back.
//! * A walk that is never consistent (a class whose list changes faster than it can be walked, or a
//!   corrupt list) leaves the intent pending: the entry goes back to the dead holder's token, so the
//!   next pass, of any process, tries again, and nobody registers into it meanwhile.
//!
//! The cost on the loan path: one compare-exchange to claim an intent slot, one store before the
//! pop and one after, one more load of the head, and a compare-exchange instead of a store for the
//! owner word. `examples/pool_loan_release.rs` (one thread, loan + release of a 200-byte chunk)
//! measured medians of 14-18 ns before and 18.5-19.5 ns after on a 2-vCPU VM: about 4-5 ns more.
//!
//! Other designs considered: a periodic sweep that returns every free-word chunk missing from a
//! consistent walk, with no intents at all, also finds chunks freed by a live `release` between its
//! owner-word exchange and its push, and would push those a second time; the intent's generation,
//! read while the chunk was on top of the list, is what excludes that window. Taking the whole list
//! off the head to walk it privately would make every loan of the class fail meanwhile, and a
//! reclaimer killed then would lose the whole list.
//!
//! ```
//! use shm_ring::{pool::{Pool, PoolConfig}, Region};
//!
//! let config = PoolConfig::small();
//! let region = Region::heap(Pool::bytes_for(&config));
//! Pool::init(&region, &config).unwrap();
//! let pool = Pool::attach(&region).unwrap();
//! let me = pool.register_owner().unwrap();
//! let mut loan = pool.loan(me, 100).unwrap();
//! loan.as_mut_slice()[..5].copy_from_slice(b"hello");
//! assert!(loan.len() >= 100);
//! drop(loan); // back to the pool
//! assert_eq!(pool.stats().in_use(), 0);
//! ```

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::memory::{align_up, Region, REGION_ALIGN};
use crate::process::{claim_slot, release_slot, Claimed, ProcessToken};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// Magic of an initialised pool header ("POOL").
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use shm_ring::{pool::{Pool, PoolConfig, POOL_MAGIC}, Region};
///
/// let config = PoolConfig::small();
/// let region = Region::heap(Pool::bytes_for(&config));
/// Pool::init(&region, &config)?;
/// let magic = region.ptr_at::<AtomicU32>(0).unwrap();
/// // SAFETY: in bounds and aligned (ptr_at); the header is atomics only, initialised by init.
/// assert_eq!(unsafe { magic.as_ref() }.load(Ordering::Acquire), POOL_MAGIC);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const POOL_MAGIC: u32 = u32::from_le_bytes(*b"POOL");
/// 2: owner entries hold loan intents (128 bytes each); 3: a share table beside the owner table.
const POOL_VERSION: u32 = 3;

/// Alignment of every chunk's data.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::CHUNK_ALIGN;
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
///
/// let mut loan = pool.loan(me, 100)?;
/// assert_eq!(loan.as_mut_ptr() as usize % CHUNK_ALIGN, 0);
/// assert_eq!(loan.len() % CHUNK_ALIGN, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const CHUNK_ALIGN: usize = 64;
/// Most size classes.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::{Pool, PoolAttachError, PoolConfig, SizeClass, MAX_CLASSES};
/// use shm_ring::Region;
///
/// let class = |i| SizeClass { chunk_size: 64usize << i, count: 1 };
/// let classes = (0..=MAX_CLASSES).map(class).collect(); // one too many
/// let config = PoolConfig { classes, ..PoolConfig::small() };
/// let refused = Pool::init(&Region::heap(4096), &config);
/// assert!(matches!(refused, Err(PoolAttachError::InvalidConfig(_))));
/// ```
pub const MAX_CLASSES: usize = 16;
/// Most chunks per class (20-bit index in the free-list head).
///
/// # Examples
///
/// ```
/// use shm_ring::pool::{Pool, PoolAttachError, PoolConfig, SizeClass, MAX_CHUNKS_PER_CLASS};
/// use shm_ring::Region;
///
/// let class = SizeClass { chunk_size: 64, count: MAX_CHUNKS_PER_CLASS + 1 };
/// let config = PoolConfig { classes: vec![class], ..PoolConfig::small() };
/// let refused = Pool::init(&Region::heap(4096), &config);
/// assert!(matches!(refused, Err(PoolAttachError::InvalidConfig(_))));
/// ```
pub const MAX_CHUNKS_PER_CLASS: u32 = (1 << 20) - 2;

const IDX_BITS: u32 = 20;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
const COUNT_SHIFT: u32 = 20;
const TAG_SHIFT: u32 = 40;

#[inline]
fn pack_head(tag: u64, free: u64, idx1: u64) -> u64 {
    (tag << TAG_SHIFT) | ((free & IDX_MASK) << COUNT_SHIFT) | (idx1 & IDX_MASK)
}

/// One size class of a pool.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::{PoolConfig, SizeClass};
/// # use shm_ring::pool::Pool;
/// # use shm_ring::Region;
///
/// let config = PoolConfig {
///     classes: vec![
///         SizeClass { chunk_size: 100, count: 64 },
///         SizeClass { chunk_size: 1000, count: 8 },
///     ],
///     ..PoolConfig::small()
/// };
/// # let region = Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// let sizes: Vec<usize> = pool.stats().classes.iter().map(|c| c.chunk_size).collect();
/// assert_eq!(sizes, [128, 1024]); // rounded up to multiples of 64
/// # Ok::<(), shm_ring::pool::PoolAttachError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeClass {
    /// Bytes per chunk (rounded up to a multiple of 64).
    pub chunk_size: usize,
    /// Number of chunks.
    pub count: u32,
}

/// Shape of a pool.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::{LoanError, PoolConfig, SizeClass};
/// # use shm_ring::pool::Pool;
/// # use shm_ring::Region;
///
/// let config = PoolConfig {
///     classes: vec![SizeClass { chunk_size: 256, count: 100 }],
///     max_owners: 4,
///     quota: 10,       // chunks one owner may hold, over all classes
///     class_share: 50, // percent of each class one owner may hold
/// };
/// # let region = Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
/// let _held: Vec<_> = (0..10).map(|_| pool.loan(me, 200)).collect::<Result<_, _>>()?;
/// let over = pool.loan(me, 200);
/// assert!(matches!(over, Err(LoanError::QuotaExceeded { quota: 10, .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Size classes, in increasing chunk size.
    pub classes: Vec<SizeClass>,
    /// Most owners (registered processes or clients) at once.
    pub max_owners: u32,
    /// Most chunks one owner may hold at once, over all classes.
    pub quota: u32,
    /// Percent of each class's chunks one capped owner may hold at once (1 ..= 100; at least one
    /// chunk of each class whatever the class size).
    pub class_share: u32,
}

impl PoolConfig {
    /// 256 B .. 1 MiB in powers of four, about 24 MiB in all, 64 owners.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{pool::{Pool, PoolConfig}, Region};
    ///
    /// let config = PoolConfig::standard();
    /// let region = Region::heap(Pool::bytes_for(&config));
    /// Pool::init(&region, &config)?;
    /// let pool = Pool::attach(&region)?;
    /// assert_eq!(pool.max_chunk_size(), 1 << 20);
    /// assert_eq!(pool.stats().capacity(), 7508);
    /// # Ok::<(), shm_ring::pool::PoolAttachError>(())
    /// ```
    pub fn standard() -> PoolConfig {
        PoolConfig {
            classes: vec![
                SizeClass {
                    chunk_size: 256,
                    count: 4096,
                },
                SizeClass {
                    chunk_size: 1024,
                    count: 2048,
                },
                SizeClass {
                    chunk_size: 4096,
                    count: 1024,
                },
                SizeClass {
                    chunk_size: 16 << 10,
                    count: 256,
                },
                SizeClass {
                    chunk_size: 64 << 10,
                    count: 64,
                },
                SizeClass {
                    chunk_size: 256 << 10,
                    count: 16,
                },
                SizeClass {
                    chunk_size: 1 << 20,
                    count: 4,
                },
            ],
            max_owners: 64,
            quota: 1024,
            class_share: 25,
        }
    }

    /// A small pool for tests and examples (a few hundred KiB).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{pool::{Pool, PoolConfig}, Region};
    ///
    /// let config = PoolConfig::small();
    /// assert!(Pool::bytes_for(&config) < 256 << 10);
    /// let region = Region::heap(Pool::bytes_for(&config));
    /// Pool::init(&region, &config)?;
    /// # Ok::<(), shm_ring::pool::PoolAttachError>(())
    /// ```
    pub fn small() -> PoolConfig {
        PoolConfig {
            classes: vec![
                SizeClass {
                    chunk_size: 256,
                    count: 64,
                },
                SizeClass {
                    chunk_size: 4096,
                    count: 16,
                },
            ],
            max_owners: 8,
            quota: 32,
            class_share: 100,
        }
    }
}

#[repr(C)]
#[derive(Debug)]
struct PoolHeader {
    magic: AtomicU32,
    version: AtomicU32,
    class_count: AtomicU32,
    max_owners: AtomicU32,
    quota: AtomicU32,
    class_share: AtomicU32,
    total_len: AtomicU64,
}

#[repr(C)]
#[derive(Debug)]
struct ClassHeader {
    /// Free-list head: tag | free count | index + 1.
    free: CachePadded<AtomicU64>,
    chunk_size: AtomicU64,
    headers_offset: AtomicU64,
    data_offset: AtomicU64,
    count: AtomicU32,
    /// Fewest free chunks ever seen (high-water mark of use = count - low_water).
    low_water: AtomicU32,
}

#[repr(C)]
#[derive(Debug)]
struct ChunkHeader {
    /// generation << 32 | owner id (0 = free).
    owner: AtomicU64,
    /// Next free chunk's index + 1 (0 = end), meaningful while free.
    next: AtomicU32,
    reserved: AtomicU32,
}

/// Loan-intent words per owner entry: at most this many threads loan for one owner at the same
/// instant (more wait for a free word, briefly).
///
/// # Examples
///
/// Threads that loan for one owner at the same time (a server's workers, say):
///
/// ```
/// use shm_ring::pool::INTENT_SLOTS;
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
///
/// std::thread::scope(|s| {
///     for _ in 0..INTENT_SLOTS {
///         s.spawn(|| pool.loan(me, 64).unwrap().as_mut_slice().fill(1));
///     }
/// });
/// assert_eq!(pool.held_by(me), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const INTENT_SLOTS: usize = 14;

/// Set in a claimed intent word; the rest is `class:8 (bits 56..) | index + 1 (bits 32..) |
/// generation`, or zero bits when no chunk is chosen yet.
const INTENT_BUSY: u64 = 1 << 63;

/// How many times one settling pass walks a free list before leaving an intent for a later pass.
const SETTLE_WALKS: usize = 4;

/// The token of an entry kept for a later reclaim pass: pid 0, which no process has, so it is
/// always dead.
const PARKED_TOKEN: u64 = 1;

/// How many rounds over an owner's intent words a loan waits for a free one.
const INTENT_WAIT_ROUNDS: u32 = 100_000;

/// The intent word of a loan about to pop chunk `index` of class `class` in generation
/// `generation`.
#[inline]
fn intent_word(class: usize, index: u32, generation: u32) -> u64 {
    INTENT_BUSY | ((class as u64) << 56) | (u64::from(index + 1) << 32) | u64::from(generation)
}

#[repr(C)]
#[derive(Debug)]
struct OwnerEntry {
    token: AtomicU64,
    in_use: AtomicU32,
    high_water: AtomicU32,
    /// Loan intents (0: free); see the module documentation.
    intents: [AtomicU64; INTENT_SLOTS],
}

/// Per owner, beside its [`OwnerEntry`]: whether it is held to the class shares, and how many
/// chunks of each class it holds (kept for capped owners only).
#[repr(C)]
#[derive(Debug)]
struct OwnerShares {
    /// 1: the owner is held to the class shares; 0: unlimited.
    capped: AtomicU32,
    held: [AtomicU32; MAX_CLASSES],
    reserved: AtomicU32,
}

#[cfg(not(shm_loom))]
const _: () = {
    assert!(std::mem::size_of::<OwnerShares>() == 72);
    assert!(std::mem::size_of::<PoolHeader>() == 32);
    assert!(std::mem::size_of::<ChunkHeader>() == 16);
    assert!(std::mem::size_of::<OwnerEntry>() == 128);
    assert!(std::mem::offset_of!(ClassHeader, chunk_size) == 128);
};

/// An owner of chunks: a registered process, or a client the runtime registered. Never 0.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::OwnerId;
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
///
/// let me: OwnerId = pool.register_owner()?;
/// let loan = pool.loan(me, 64)?;
/// assert_eq!(loan.owner(), me);
/// assert_eq!(pool.held_by(me), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(u32);

impl OwnerId {
    /// The raw id (1-based index into the owner table).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::OwnerId;
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    ///
    /// let me = pool.register_owner()?;
    /// let raw: u32 = me.get(); // e.g. sent to a peer in a message
    /// assert_eq!(OwnerId::from_raw(raw), Some(me));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(self) -> u32 {
        self.0
    }

    /// An id from its raw value (validated by the pool when used).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::{LoanError, OwnerId};
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    ///
    /// assert_eq!(OwnerId::from_raw(0), None);
    /// // Any other value is an id, checked where it is used:
    /// let stranger = OwnerId::from_raw(1000).unwrap(); // past the owner table
    /// assert_eq!(pool.loan(stranger, 64).unwrap_err(), LoanError::UnknownOwner(1000));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_raw(raw: u32) -> Option<OwnerId> {
        (raw != 0).then_some(OwnerId(raw))
    }
}

/// Names one loan of one chunk: `class:8 | index:24 | generation:32`. Safe to pass to other processes.
///
/// # Examples
///
/// A chunk's next loan has a new id; the old one is refused:
///
/// ```
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
/// let old = pool.loan(me, 64)?.into_id();
/// pool.release(old, me)?;
/// let new = pool.loan(me, 64)?.into_id(); // the same chunk, loaned again
/// assert_eq!((new.class(), new.index()), (old.class(), old.index()));
/// assert_ne!(new, old);
/// assert!(pool.release(old, me).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkId(u64);

impl ChunkId {
    fn new(class: u8, index: u32, generation: u32) -> ChunkId {
        ChunkId(
            (u64::from(class) << 56) | (u64::from(index & 0xFF_FFFF) << 32) | u64::from(generation),
        )
    }
    /// The raw value, e.g. for a ring descriptor.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::ChunkId;
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    ///
    /// let id = pool.loan(me, 64)?.into_id();
    /// let descriptor: u64 = id.raw(); // what a ring entry carries
    /// assert_eq!(ChunkId::from_raw(descriptor), id);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw(self) -> u64 {
        self.0
    }
    /// From a raw value (untrusted: the pool checks it on use).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::{ChunkError, ChunkId};
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    ///
    /// let received = ChunkId::from_raw(u64::MAX); // garbage from a peer
    /// let refused = pool.release(received, me);
    /// assert!(matches!(refused, Err(ChunkError::OutOfRange(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_raw(raw: u64) -> ChunkId {
        ChunkId(raw)
    }
    /// Size class index.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// // PoolConfig::small has classes of 256 and 4096 bytes:
    /// assert_eq!(pool.loan(me, 200)?.id().class(), 0);
    /// assert_eq!(pool.loan(me, 1000)?.id().class(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn class(self) -> u8 {
        (self.0 >> 56) as u8
    }
    /// Chunk index within the class.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let (a, b) = (pool.loan(me, 64)?, pool.loan(me, 64)?);
    /// assert_ne!(a.id().index(), b.id().index()); // two chunks of one class
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn index(self) -> u32 {
        ((self.0 >> 32) & 0xFF_FFFF) as u32
    }
    /// Generation of the loan.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let first = pool.loan(me, 64)?.into_id();
    /// pool.release(first, me)?;
    /// let again = pool.loan(me, 64)?.into_id(); // the same chunk, loaned again
    /// assert_eq!(again.index(), first.index());
    /// assert_eq!(again.generation(), first.generation() + 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn generation(self) -> u32 {
        self.0 as u32
    }
}

/// Why a pool could not be initialised or attached.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::{Pool, PoolAttachError, PoolConfig};
/// use shm_ring::Region;
///
/// let region = Region::heap(Pool::bytes_for(&PoolConfig::small()));
/// assert_eq!(Pool::attach(&region).unwrap_err(), PoolAttachError::NotInitialised(0));
/// let no_classes = PoolConfig { classes: vec![], ..PoolConfig::small() };
/// let refused = Pool::init(&region, &no_classes);
/// assert!(matches!(refused, Err(PoolAttachError::InvalidConfig(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolAttachError {
    /// The configuration is unusable.
    #[error("invalid pool configuration: {0}")]
    InvalidConfig(&'static str),
    /// The region is smaller than the pool needs.
    #[error("region of {available} bytes is too small; the pool needs {needed}")]
    RegionTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// No initialised pool there.
    #[error("no initialised pool in this region (magic {0:#x})")]
    NotInitialised(u32),
    /// The header contradicts itself or the region.
    #[error("pool header is corrupt: {0}")]
    Corrupt(&'static str),
}

/// Why a loan failed.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::LoanError;
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
///
/// let too_large = pool.loan(me, 1 << 20).unwrap_err();
/// assert_eq!(too_large, LoanError::TooLarge { size: 1 << 20, max: 4096 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoanError {
    /// Larger than the largest class.
    #[error("{size} bytes is larger than the largest chunk ({max} bytes)")]
    TooLarge {
        /// Requested size.
        size: usize,
        /// Largest chunk size.
        max: usize,
    },
    /// Every chunk of every fitting class is in use.
    #[error("the pool has no free chunk of {size} bytes or more")]
    Exhausted {
        /// Requested size.
        size: usize,
    },
    /// The owner already holds its quota.
    #[error("owner {owner} already holds its quota of {quota} chunks")]
    QuotaExceeded {
        /// Owner id.
        owner: u32,
        /// Its quota.
        quota: u32,
    },
    /// The owner already holds its share of every class that fits.
    #[error("owner {owner} already holds its share ({cap} chunks) of every class of {size} bytes or more")]
    ShareExceeded {
        /// Owner id.
        owner: u32,
        /// Requested size.
        size: usize,
        /// Its share of the smallest fitting class.
        cap: u32,
    },
    /// The owner id is not registered in this pool.
    #[error("owner {0} is not registered in this pool")]
    UnknownOwner(u32),
    /// The deadline passed while the pool stayed exhausted.
    #[error("timed out waiting for a free chunk of {size} bytes")]
    TimedOut {
        /// Requested size.
        size: usize,
    },
    /// The free list contradicts itself: a peer wrote garbage.
    #[error("the pool's free list is corrupt")]
    Corrupted,
    /// Every loan-intent word of the owner stayed taken: more than [`INTENT_SLOTS`] threads kept
    /// loaning for one owner at once, or a peer wrote garbage into the words.
    #[error("all {INTENT_SLOTS} loan-intent words of owner {0} stayed taken; use fewer threads per owner")]
    IntentsBusy(u32),
}

/// Why a chunk id was refused.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::ChunkError;
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
///
/// let id = pool.loan(me, 64)?.into_id();
/// pool.release(id, me)?;
/// let twice = pool.release(id, me); // harmless: refused
/// assert!(matches!(twice, Err(ChunkError::NotOwned { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Class or index out of range.
    #[error("chunk id {0:#x} is out of range")]
    OutOfRange(u64),
    /// The chunk is not held by the expected owner under that generation (stale, forged, or
    /// already released).
    #[error("chunk id {id:#x} is not held by owner {expected} (owner word {found:#x})")]
    NotOwned {
        /// The id.
        id: u64,
        /// Expected owner.
        expected: u32,
        /// Owner word found.
        found: u64,
    },
    /// The new owner is not registered.
    #[error("owner {0} is not registered in this pool")]
    UnknownOwner(u32),
    /// The chunk would move from an owner to itself.
    #[error("owner {0} cannot adopt a chunk from itself")]
    SameOwner(u32),
    /// The receiver already holds its share of the chunk's class.
    #[error("owner {owner} already holds its share of {chunk_size}-byte chunks ({cap})")]
    ShareExceeded {
        /// The receiver.
        owner: u32,
        /// The class's chunk size.
        chunk_size: usize,
        /// Its share of the class.
        cap: u32,
    },
    /// More bytes were asked for than the chunk holds.
    #[error("{wanted} bytes asked of a chunk of {size}")]
    TooLong {
        /// Bytes asked for.
        wanted: usize,
        /// The chunk's size.
        size: usize,
    },
}

/// Why an owner could not be registered.
///
/// # Examples
///
/// ```
/// use shm_ring::pool::{OwnersFull, PoolConfig};
/// # use shm_ring::pool::Pool;
/// # use shm_ring::Region;
///
/// let config = PoolConfig { max_owners: 1, ..PoolConfig::small() };
/// # let region = Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// let _me = pool.register_owner()?;
/// assert_eq!(pool.register_owner(), Err(OwnersFull(1)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {0} owner entries are held by live processes")]
pub struct OwnersFull(pub u32);

/// Per-class figures.
///
/// # Examples
///
/// ```
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
/// let loans = [pool.loan(me, 64)?, pool.loan(me, 64)?, pool.loan(me, 64)?];
/// drop(loans);
/// let small = pool.stats().classes[0];
/// assert_eq!((small.chunk_size, small.count, small.free), (256, 64, 64));
/// assert_eq!(small.high_water, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per chunk.
    pub chunk_size: usize,
    /// Chunks in the class.
    pub count: u32,
    /// Most chunks of the class one capped owner may hold.
    pub share: u32,
    /// Chunks free now.
    pub free: u32,
    /// Most chunks ever in use at once.
    pub high_water: u32,
}

/// A snapshot of a pool.
///
/// # Examples
///
/// ```
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// let me = pool.register_owner()?;
/// let _loan = pool.loan(me, 64)?;
/// let stats = pool.stats();
/// assert_eq!((stats.owners, stats.in_use(), stats.capacity()), (1, 1, 80));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// Per class, in class order.
    pub classes: Vec<ClassStats>,
    /// Registered owners.
    pub owners: u32,
}

impl PoolStats {
    /// Chunks in use over all classes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let loans = [pool.loan(me, 64)?, pool.loan(me, 4096)?];
    /// assert_eq!(pool.stats().in_use(), 2);
    /// drop(loans);
    /// assert_eq!(pool.stats().in_use(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_use(&self) -> u32 {
        self.classes.iter().map(|c| c.count - c.free).sum()
    }
    /// Chunks in all classes.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::PoolConfig;
    /// # use shm_ring::pool::Pool;
    /// # use shm_ring::Region;
    ///
    /// let config = PoolConfig::small(); // 64 chunks of 256 bytes, 16 of 4096
    /// # let region = Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// assert_eq!(pool.stats().capacity(), 80);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(&self) -> u32 {
        self.classes.iter().map(|c| c.count).sum()
    }
}

#[derive(Debug, Clone, Copy)]
struct ClassInfo {
    chunk_size: usize,
    count: u32,
    /// Most chunks of this class one capped owner may hold.
    share: u32,
    hdr: NonNull<ClassHeader>,
    headers: NonNull<ChunkHeader>,
    data: NonNull<u8>,
}

/// A handle to a pool in a region. Cheap to share between threads (`Send + Sync`).
///
/// # Examples
///
/// One handle, shared by threads:
///
/// ```
/// use shm_ring::{pool::{Pool, PoolConfig}, Region};
///
/// let config = PoolConfig::small();
/// let region = Region::heap(Pool::bytes_for(&config));
/// Pool::init(&region, &config)?;
/// let pool = Pool::attach(&region)?;
/// let me = pool.register_owner()?;
/// std::thread::scope(|s| {
///     for t in 0..4u8 {
///         let pool = &pool;
///         s.spawn(move || pool.loan(me, 200).unwrap().as_mut_slice().fill(t));
///     }
/// });
/// assert_eq!(pool.held_by(me), 0); // each loan went back when it dropped
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pool {
    _region: Region,
    owners: NonNull<OwnerEntry>,
    shares: NonNull<OwnerShares>,
    max_owners: u32,
    quota: u32,
    classes: Box<[ClassInfo]>,
}

// SAFETY: every shared word is an atomic; chunk data is reached only through a Loan, which owns the
// chunk exclusively (owner word), so handing &Pool to several threads is sound.
unsafe impl Send for Pool {}
// SAFETY: as for Send.
unsafe impl Sync for Pool {}

struct Layout {
    classes_off: usize,
    owners_off: usize,
    shares_off: usize,
    headers_off: Vec<usize>,
    data_off: Vec<usize>,
    total: usize,
}

fn layout(config: &PoolConfig) -> Layout {
    let classes_off = align_up(std::mem::size_of::<PoolHeader>(), REGION_ALIGN);
    let owners_off = align_up(
        classes_off + config.classes.len() * std::mem::size_of::<ClassHeader>(),
        REGION_ALIGN,
    );
    let shares_off = align_up(
        owners_off + config.max_owners as usize * std::mem::size_of::<OwnerEntry>(),
        REGION_ALIGN,
    );
    let mut at = align_up(
        shares_off + config.max_owners as usize * std::mem::size_of::<OwnerShares>(),
        REGION_ALIGN,
    );
    let mut headers_off = Vec::new();
    for c in &config.classes {
        headers_off.push(at);
        at = align_up(
            at + c.count as usize * std::mem::size_of::<ChunkHeader>(),
            REGION_ALIGN,
        );
    }
    let mut data_off = Vec::new();
    for c in &config.classes {
        data_off.push(at);
        at = align_up(
            at + c.count as usize * align_up(c.chunk_size, CHUNK_ALIGN),
            REGION_ALIGN,
        );
    }
    Layout {
        classes_off,
        owners_off,
        shares_off,
        headers_off,
        data_off,
        total: at,
    }
}

/// One capped owner's share of a class of `count` chunks: `percent` of it, at least one chunk.
fn share_of(count: u32, percent: u32) -> u32 {
    ((u64::from(count) * u64::from(percent) / 100) as u32).max(1)
}

fn check_config(config: &PoolConfig) -> Result<(), PoolAttachError> {
    let bad = PoolAttachError::InvalidConfig;
    if config.classes.is_empty() || config.classes.len() > MAX_CLASSES {
        return Err(bad("between 1 and 16 size classes"));
    }
    if config.max_owners == 0 || config.max_owners > 1 << 20 {
        return Err(bad("max_owners must be 1 ..= 2^20"));
    }
    if config.quota == 0 {
        return Err(bad("quota must be at least 1"));
    }
    if config.class_share == 0 || config.class_share > 100 {
        return Err(bad("class_share must be 1 ..= 100 (percent)"));
    }
    let mut prev = 0;
    for c in &config.classes {
        if c.count == 0 || c.count > MAX_CHUNKS_PER_CLASS {
            return Err(bad("every class needs 1 ..= 2^20-2 chunks"));
        }
        if c.chunk_size == 0 || c.chunk_size > 1 << 32 || c.chunk_size <= prev {
            return Err(bad(
                "chunk sizes must be increasing, non-zero, at most 4 GiB",
            ));
        }
        prev = c.chunk_size;
    }
    Ok(())
}

impl Pool {
    /// Bytes a pool of this shape needs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shm_ring::pool::{Pool, PoolConfig};
    /// use shm_ring::{CreateOptions, Region, Segment};
    ///
    /// let config = PoolConfig::small();
    /// let name = format!("doc-pool-bytes-for-{}", std::process::id());
    /// let seg = Segment::create(&name, &CreateOptions::new(Pool::bytes_for(&config)))?;
    /// let region = Region::new(Arc::new(seg));
    /// assert!(region.len() >= Pool::bytes_for(&config));
    /// Pool::init(&region, &config)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bytes_for(config: &PoolConfig) -> usize {
        layout(config).total
    }

    /// Writes a fresh pool (every chunk free) into `region`. Call once, before anyone attaches.
    ///
    /// # Errors
    ///
    /// [`PoolAttachError::InvalidConfig`] or [`PoolAttachError::RegionTooSmall`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{pool::{Pool, PoolAttachError, PoolConfig}, Region};
    ///
    /// let config = PoolConfig::small();
    /// let region = Region::heap(Pool::bytes_for(&config));
    /// Pool::init(&region, &config)?;
    /// assert_eq!(Pool::attach(&region)?.stats().in_use(), 0); // every chunk free
    ///
    /// let small = Region::heap(4096);
    /// let refused = Pool::init(&small, &config);
    /// assert!(matches!(refused, Err(PoolAttachError::RegionTooSmall { .. })));
    /// # Ok::<(), PoolAttachError>(())
    /// ```
    pub fn init(region: &Region, config: &PoolConfig) -> Result<(), PoolAttachError> {
        check_config(config)?;
        let l = layout(config);
        if region.len() < l.total {
            return Err(PoolAttachError::RegionTooSmall {
                needed: l.total,
                available: region.len(),
            });
        }
        let base = region.as_ptr().as_ptr();
        // SAFETY: every write below is inside `l.total <= region.len()` bytes at offsets aligned for
        // its type (layout() aligns each table to REGION_ALIGN and the region is REGION_ALIGN-aligned);
        // init runs before any handle attaches.
        unsafe {
            base.cast::<PoolHeader>().write(PoolHeader {
                magic: AtomicU32::new(0),
                version: AtomicU32::new(POOL_VERSION),
                class_count: AtomicU32::new(config.classes.len() as u32),
                max_owners: AtomicU32::new(config.max_owners),
                quota: AtomicU32::new(config.quota),
                class_share: AtomicU32::new(config.class_share),
                total_len: AtomicU64::new(l.total as u64),
            });
            for (ci, c) in config.classes.iter().enumerate() {
                let n = u64::from(c.count);
                base.add(l.classes_off)
                    .cast::<ClassHeader>()
                    .add(ci)
                    .write(ClassHeader {
                        // Free list 0 -> 1 -> ... -> n-1: head holds index 0 (+1), all n free.
                        free: CachePadded::new(AtomicU64::new(pack_head(0, n, 1))),
                        chunk_size: AtomicU64::new(align_up(c.chunk_size, CHUNK_ALIGN) as u64),
                        headers_offset: AtomicU64::new(l.headers_off[ci] as u64),
                        data_offset: AtomicU64::new(l.data_off[ci] as u64),
                        count: AtomicU32::new(c.count),
                        low_water: AtomicU32::new(c.count),
                    });
                let headers = base.add(l.headers_off[ci]).cast::<ChunkHeader>();
                for i in 0..c.count {
                    let next = if i + 1 < c.count { i + 2 } else { 0 };
                    headers.add(i as usize).write(ChunkHeader {
                        owner: AtomicU64::new(0),
                        next: AtomicU32::new(next),
                        reserved: AtomicU32::new(0),
                    });
                }
            }
            let owners = base.add(l.owners_off).cast::<OwnerEntry>();
            for i in 0..config.max_owners as usize {
                owners.add(i).write(OwnerEntry {
                    token: AtomicU64::new(0),
                    in_use: AtomicU32::new(0),
                    high_water: AtomicU32::new(0),
                    intents: std::array::from_fn(|_| AtomicU64::new(0)),
                });
                base.add(l.shares_off)
                    .cast::<OwnerShares>()
                    .add(i)
                    .write(OwnerShares {
                        capped: AtomicU32::new(1),
                        held: std::array::from_fn(|_| AtomicU32::new(0)),
                        reserved: AtomicU32::new(0),
                    });
            }
        }
        // SAFETY: the header was initialised above.
        let hdr = unsafe { &*base.cast::<PoolHeader>() };
        // SYNC(magic): Release publishes the initialised pool; pairs with the Acquire in `attach`.
        hdr.magic.store(POOL_MAGIC, Ordering::Release);
        Ok(())
    }

    /// Attaches to the pool initialised in `region`, copying and checking its shape once.
    ///
    /// # Errors
    ///
    /// [`PoolAttachError::NotInitialised`], [`PoolAttachError::Corrupt`] when the header contradicts
    /// itself or the region.
    ///
    /// # Examples
    ///
    /// The server initialises the pool in a segment; a client maps the segment and attaches:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shm_ring::pool::{Pool, PoolConfig};
    /// use shm_ring::{CreateOptions, Region, Segment};
    ///
    /// let name = format!("doc-pool-attach-{}", std::process::id());
    /// let config = PoolConfig::small();
    /// let opts = CreateOptions::new(Pool::bytes_for(&config));
    /// let server = Region::new(Arc::new(Segment::create(&name, &opts)?));
    /// Pool::init(&server, &config)?;
    ///
    /// let client = Region::new(Arc::new(Segment::open(&name)?));
    /// let pool = Pool::attach(&client)?;
    /// assert_eq!(pool.stats().capacity(), 80);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn attach(region: &Region) -> Result<Pool, PoolAttachError> {
        let hdr = region
            .ptr_at::<PoolHeader>(0)
            .ok_or(PoolAttachError::RegionTooSmall {
                needed: std::mem::size_of::<PoolHeader>(),
                available: region.len(),
            })?;
        // SAFETY: in bounds and aligned; atomics only.
        let h = unsafe { hdr.as_ref() };
        // SYNC(magic): Acquire pairs with the Release in `init`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != POOL_MAGIC {
            return Err(PoolAttachError::NotInitialised(magic));
        }
        if h.version.load(Ordering::Relaxed) != POOL_VERSION {
            return Err(PoolAttachError::Corrupt("unknown pool format version"));
        }
        let class_count = h.class_count.load(Ordering::Relaxed) as usize;
        let max_owners = h.max_owners.load(Ordering::Relaxed);
        let quota = h.quota.load(Ordering::Relaxed);
        let class_share = h.class_share.load(Ordering::Relaxed);
        if class_count == 0 || class_count > MAX_CLASSES || max_owners == 0 || max_owners > 1 << 20
        {
            return Err(PoolAttachError::Corrupt(
                "class or owner count out of range",
            ));
        }
        // Re-derive the layout from the (copied) shape and compare with what the header claims.
        let classes_off = align_up(std::mem::size_of::<PoolHeader>(), REGION_ALIGN);
        let mut config = PoolConfig {
            classes: Vec::new(),
            max_owners,
            quota,
            class_share,
        };
        for ci in 0..class_count {
            let c = region
                .ptr_at::<ClassHeader>(classes_off + ci * std::mem::size_of::<ClassHeader>())
                .ok_or(PoolAttachError::Corrupt("class table outside the region"))?;
            // SAFETY: in bounds and aligned (ptr_at); atomics only.
            let c = unsafe { c.as_ref() };
            config.classes.push(SizeClass {
                chunk_size: c.chunk_size.load(Ordering::Relaxed) as usize,
                count: c.count.load(Ordering::Relaxed),
            });
        }
        check_config(&config).map_err(|_| PoolAttachError::Corrupt("class shapes are invalid"))?;
        let l = layout(&config);
        if l.total > region.len() || h.total_len.load(Ordering::Relaxed) != l.total as u64 {
            return Err(PoolAttachError::Corrupt(
                "pool size disagrees with its classes",
            ));
        }
        let base = region.as_ptr();
        let mut classes = Vec::with_capacity(class_count);
        for (ci, c) in config.classes.iter().enumerate() {
            let chdr = region
                .ptr_at::<ClassHeader>(classes_off + ci * std::mem::size_of::<ClassHeader>())
                .ok_or(PoolAttachError::Corrupt("class table outside the region"))?;
            // SAFETY: as above.
            let ch = unsafe { chdr.as_ref() };
            if ch.headers_offset.load(Ordering::Relaxed) != l.headers_off[ci] as u64
                || ch.data_offset.load(Ordering::Relaxed) != l.data_off[ci] as u64
                || c.chunk_size % CHUNK_ALIGN != 0
            {
                return Err(PoolAttachError::Corrupt(
                    "class offsets disagree with the layout",
                ));
            }
            // SAFETY: both offsets lie inside l.total <= region.len().
            let (headers, data) = unsafe {
                (
                    base.add(l.headers_off[ci]).cast::<ChunkHeader>(),
                    base.add(l.data_off[ci]),
                )
            };
            classes.push(ClassInfo {
                chunk_size: c.chunk_size,
                count: c.count,
                share: share_of(c.count, class_share),
                hdr: chdr,
                headers,
                data,
            });
        }
        // SAFETY: owners_off lies inside the region (l.total checked).
        let owners = unsafe { base.add(l.owners_off).cast::<OwnerEntry>() };
        // SAFETY: shares_off lies inside the region (l.total checked).
        let shares = unsafe { base.add(l.shares_off).cast::<OwnerShares>() };
        Ok(Pool {
            _region: region.clone(),
            owners,
            shares,
            max_owners,
            quota,
            classes: classes.into_boxed_slice(),
        })
    }

    fn owner_entry(&self, owner: OwnerId) -> Option<&OwnerEntry> {
        let i = owner.0.checked_sub(1)?;
        if i >= self.max_owners {
            return None;
        }
        // SAFETY: i < max_owners; the owner table was checked to fit at attach.
        Some(unsafe { &*self.owners.as_ptr().add(i as usize) })
    }

    /// The share table entry of `owner` (same index as its owner entry).
    fn owner_shares(&self, owner: OwnerId) -> Option<&OwnerShares> {
        let i = owner.0.checked_sub(1)?;
        if i >= self.max_owners {
            return None;
        }
        // SAFETY: i < max_owners; the share table was checked to fit at attach.
        Some(unsafe { &*self.shares.as_ptr().add(i as usize) })
    }

    /// `owner`'s share entry if it is held to the class shares.
    #[inline]
    fn capped(&self, owner: OwnerId) -> Option<&OwnerShares> {
        self.owner_shares(owner)
            .filter(|s| s.capped.load(Ordering::Relaxed) != 0)
    }

    fn chunk_header(&self, class: &ClassInfo, index: u32) -> &ChunkHeader {
        debug_assert!(index < class.count);
        // SAFETY: callers pass index < class.count (checked against the local copy of count).
        unsafe { &*class.headers.as_ptr().add(index as usize) }
    }

    /// Registers the calling process as a new owner held to the class shares (taking over the
    /// entry of a dead one, after reclaiming its chunks).
    ///
    /// # Errors
    ///
    /// [`OwnersFull`] when every entry is held by a live process.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::{LoanError, PoolConfig};
    /// # use shm_ring::Region;
    /// # use shm_ring::pool::Pool;
    ///
    /// let config = PoolConfig { quota: 2, ..PoolConfig::small() };
    /// # let region = Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// let me = pool.register_owner()?;
    /// let (_a, _b) = (pool.loan(me, 64)?, pool.loan(me, 64)?);
    /// assert!(matches!(pool.loan(me, 64), Err(LoanError::QuotaExceeded { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_owner(&self) -> Result<OwnerId, OwnersFull> {
        self.register(true)
    }

    /// Registers the calling process as an owner with neither the class shares nor the quota: the
    /// process that serves the others and holds whatever they queue. Its per-class holding is not
    /// counted.
    ///
    /// # Errors
    ///
    /// [`OwnersFull`] when every entry is held by a live process.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::PoolConfig;
    /// # use shm_ring::Region;
    /// # use shm_ring::pool::Pool;
    ///
    /// let config = PoolConfig { quota: 2, ..PoolConfig::small() };
    /// # let region = Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// let server = pool.register_unlimited_owner()?;
    /// let _held: Vec<_> = (0..10).map(|_| pool.loan(server, 64)).collect::<Result<_, _>>()?;
    /// assert_eq!(pool.held_by(server), 10); // beyond the quota
    /// assert!(!pool.is_capped(server));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_unlimited_owner(&self) -> Result<OwnerId, OwnersFull> {
        self.register(false)
    }

    fn register(&self, capped: bool) -> Result<OwnerId, OwnersFull> {
        let me = ProcessToken::current();
        for i in 0..self.max_owners {
            let id = OwnerId(i + 1);
            let entry = self.owner_entry(id).expect("index in range");
            let shares = self.owner_shares(id).expect("index in range");
            match claim_slot(&entry.token, me) {
                // A free entry has no intent left: entries are freed only once all are settled.
                Ok(Claimed::Fresh) => {}
                Ok(Claimed::TookOver(holder)) => {
                    let (_, settled) = self.reclaim_entry(id, entry);
                    if !settled {
                        // An intent of the dead holder is still pending: the entry goes back to
                        // it for a later pass (see `reclaim_dead_owner`).
                        // SYNC(role): Release pairs with the Acquire of the next take-over.
                        entry.token.store(holder.raw(), Ordering::Release);
                        continue;
                    }
                }
                Err(_) => continue,
            }
            // Nothing is held under this id now (a fresh entry, or one just reclaimed): start the
            // counts afresh, so a count a dead process left half-moved does not outlive it.
            for held in &shares.held {
                held.store(0, Ordering::Relaxed);
            }
            shares.capped.store(u32::from(capped), Ordering::Relaxed);
            return Ok(id);
        }
        Err(OwnersFull(self.max_owners))
    }

    /// Returns every chunk `owner` holds and frees its entry (for an owner leaving cleanly, when
    /// none of its threads loans any more).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// let me = pool.register_owner()?;
    /// let _kept = pool.loan(me, 64)?.into_id(); // never released
    /// assert_eq!(pool.unregister_owner(me), 1); // returned on the way out
    /// assert_eq!(pool.stats().owners, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unregister_owner(&self, owner: OwnerId) -> usize {
        let Some(entry) = self.owner_entry(owner) else {
            return 0;
        };
        let (n, settled) = self.reclaim_entry(owner, entry);
        let me = ProcessToken::current();
        if settled {
            release_slot(&entry.token, me);
        } else {
            // A loan of a thread of ours was cut short (the owner left while a thread loaned):
            // park the entry under a token that is always dead, so a later `reclaim_dead` pass
            // settles the intent and frees the entry.
            // SYNC(role): Release pairs with the Acquire of that pass's take-over.
            let _ = entry.token.compare_exchange(
                me.raw(),
                PARKED_TOKEN,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
        n
    }

    /// Returns the chunks `owner` held, settles the loan intents its entry holds and resets its
    /// quota count (which may include a loan cut short). The caller holds the entry for a gone
    /// owner. Returns (chunks returned, whether every intent is settled).
    fn reclaim_entry(&self, owner: OwnerId, entry: &OwnerEntry) -> (usize, bool) {
        let mut n = self.reclaim(owner);
        let mut settled = true;
        for slot in &entry.intents {
            // SYNC(intent): Relaxed: intents are read only once their writer is gone (dead, or a
            // thread that has returned); see the store in `pop_free`.
            let raw = slot.load(Ordering::Relaxed);
            if raw == 0 {
                continue;
            }
            match self.settle_intent(raw) {
                Some(returned) => {
                    n += usize::from(returned);
                    slot.store(0, Ordering::Relaxed);
                }
                None => settled = false,
            }
        }
        entry.in_use.store(0, Ordering::Relaxed);
        entry.high_water.store(0, Ordering::Relaxed);
        (n, settled)
    }

    /// Settles one loan intent of a gone loaner: `Some(true)` when its chunk was in limbo and went
    /// back to the free list, `Some(false)` when there was nothing to do, `None` when no consistent
    /// walk of the free list could be made (try again later).
    fn settle_intent(&self, raw: u64) -> Option<bool> {
        let class_index = ((raw >> 56) & 0x7F) as usize;
        let index1 = (raw >> 32) & 0xFF_FFFF;
        let generation = raw as u32;
        let Some(class) = self.classes.get(class_index) else {
            return Some(false); // garbage: names no chunk
        };
        if raw & INTENT_BUSY == 0 || index1 == 0 || index1 > u64::from(class.count) {
            return Some(false); // no chunk chosen yet, or garbage
        }
        let index = (index1 - 1) as u32;
        let h = self.chunk_header(class, index);
        let free_word = u64::from(generation) << 32;
        for _ in 0..SETTLE_WALKS {
            // Read before the walk: a chunk pushed after the walk started was owned (or claimed)
            // in between, which changed its word, so the claim below fails.
            // SYNC(owner): Acquire pairs with the Release exchanges that free or claim a chunk.
            if h.owner.load(Ordering::Acquire) != free_word {
                return Some(false); // owned since: its owner word accounts for it
            }
            match self.free_list_holds(class_index, index) {
                Some(true) => return Some(false),
                Some(false) => {
                    // Free word of a generation in which it was on the list, and off the list
                    // now: popped and never owned. Claim it; a live loaner that popped it fails
                    // its own exchange and pops another.
                    // SYNC(owner): Release pairs with the Acquire load of the word in `pop_free`
                    // (a loaner validating the chunk on top sees the claim); failure Relaxed:
                    // nothing is read after it.
                    let claimed = u64::from(generation.wrapping_add(1)) << 32;
                    let won = h
                        .owner
                        .compare_exchange(free_word, claimed, Ordering::Release, Ordering::Relaxed)
                        .is_ok();
                    if won {
                        self.push_free(class_index, index);
                    }
                    return Some(won);
                }
                None => crate::sync::yield_now(),
            }
        }
        None
    }

    /// Whether chunk `index` is on class `ci`'s free list, from one walk that saw no push or pop
    /// (the head word, whose tag changes on each, is the same before and after); `None` when the
    /// list changed during the walk or is corrupt.
    fn free_list_holds(&self, ci: usize, index: u32) -> Option<bool> {
        let class = &self.classes[ci];
        // SAFETY: class headers were validated at attach and live as long as the region.
        let ch = unsafe { class.hdr.as_ref() };
        // SYNC(free): Acquire pairs with the Release exchange of every push before this head (the
        // head changes only by read-modify-writes, so each continues the pushes' release
        // sequences): every link on the list as of `first` is visible.
        let first = ch.free.load(Ordering::Acquire);
        let mut at = first & IDX_MASK;
        let mut found = false;
        let mut steps = 0u32;
        while at != 0 {
            let i = (at - 1) as u32;
            if i >= class.count || steps >= class.count {
                return None;
            }
            if i == index {
                found = true;
                break;
            }
            steps += 1;
            at = u64::from(self.chunk_header(class, i).next.load(Ordering::Relaxed));
        }
        // SYNC(free): the fence keeps the link reads above before the second read of the head. A
        // link written after `first` (by a push of a chunk popped since) is a Release store in
        // `push_free`: reading it synchronises with that push, which comes after the pop, so the
        // second read sees the head changed.
        fence(Ordering::Acquire);
        (ch.free.load(Ordering::Relaxed) == first).then_some(found)
    }

    /// Claims a free loan-intent word of `entry` for one loan.
    #[inline]
    fn claim_intent<'e>(&self, entry: &'e OwnerEntry) -> Option<&'e AtomicU64> {
        // The first word is free unless another thread loans for this owner right now.
        // SYNC(intent): Relaxed, as in `claim_intent_among`.
        let first = &entry.intents[0];
        if first
            .compare_exchange(0, INTENT_BUSY, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return Some(first);
        }
        Self::claim_intent_among(entry)
    }

    /// Claims any free loan-intent word of `entry`, waiting for one for a bounded time.
    #[cold]
    fn claim_intent_among(entry: &OwnerEntry) -> Option<&AtomicU64> {
        for _ in 0..INTENT_WAIT_ROUNDS {
            for slot in &entry.intents {
                // SYNC(intent): Relaxed: the word carries no data to another thread of this
                // process; only its owner reads it after the claim, and others after our death.
                if slot.load(Ordering::Relaxed) == 0
                    && slot
                        .compare_exchange(0, INTENT_BUSY, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    return Some(slot);
                }
            }
            crate::sync::yield_now();
        }
        None
    }

    /// The process token registered for `owner`, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::ProcessToken;
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    ///
    /// let me = pool.register_owner()?;
    /// assert_eq!(pool.owner_token(me), Some(ProcessToken::current()));
    /// pool.unregister_owner(me);
    /// assert_eq!(pool.owner_token(me), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn owner_token(&self, owner: OwnerId) -> Option<ProcessToken> {
        ProcessToken::from_raw(self.owner_entry(owner)?.token.load(Ordering::Acquire))
    }

    /// Chunks `owner` holds now.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let loan = pool.loan(me, 64)?;
    /// assert_eq!(pool.held_by(me), 1);
    /// drop(loan);
    /// assert_eq!(pool.held_by(me), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn held_by(&self, owner: OwnerId) -> u32 {
        self.owner_entry(owner)
            .map_or(0, |e| e.in_use.load(Ordering::Relaxed))
    }

    /// Chunks `owner` holds now in each class (in class order); zeros for an unlimited owner,
    /// whose holding per class is not counted.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// // PoolConfig::small has classes of 256 and 4096 bytes:
    /// let _loans = [pool.loan(me, 100)?, pool.loan(me, 200)?, pool.loan(me, 1000)?];
    /// assert_eq!(pool.held_by_class(me), [2, 1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn held_by_class(&self, owner: OwnerId) -> Vec<u32> {
        let Some(shares) = self.capped(owner) else {
            return vec![0; self.classes.len()];
        };
        (0..self.classes.len())
            .map(|ci| shares.held[ci].load(Ordering::Relaxed))
            .collect()
    }

    /// Whether `owner` is held to the class shares.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// let client = pool.register_owner()?;
    /// let server = pool.register_unlimited_owner()?;
    /// assert!(pool.is_capped(client) && !pool.is_capped(server));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_capped(&self, owner: OwnerId) -> bool {
        self.capped(owner).is_some()
    }

    /// Largest chunk size.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::LoanError;
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    ///
    /// let max = pool.max_chunk_size();
    /// assert_eq!(max, 4096);
    /// assert!(pool.loan(me, max).is_ok());
    /// assert!(matches!(pool.loan(me, max + 1), Err(LoanError::TooLarge { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_chunk_size(&self) -> usize {
        self.classes.last().map_or(0, |c| c.chunk_size)
    }

    /// Loans a chunk of at least `size` bytes to `owner`, from the smallest class that fits and has
    /// a free chunk. Never waits.
    ///
    /// # Errors
    ///
    /// [`LoanError::TooLarge`], [`LoanError::Exhausted`], [`LoanError::QuotaExceeded`],
    /// [`LoanError::UnknownOwner`], [`LoanError::Corrupted`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// let me = pool.register_owner()?;
    /// let mut loan = pool.loan(me, 300)?; // from the 4096-byte class: 256 is too small
    /// loan.as_mut_slice()[..5].copy_from_slice(b"hello");
    /// assert_eq!(loan.len(), 4096);
    /// drop(loan); // back to the pool
    /// assert_eq!(pool.held_by(me), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn loan(&self, owner: OwnerId, size: usize) -> Result<Loan<'_>, LoanError> {
        let entry = self
            .owner_entry(owner)
            .ok_or(LoanError::UnknownOwner(owner.0))?;
        let first = self
            .classes
            .iter()
            .position(|c| c.chunk_size >= size)
            .ok_or(LoanError::TooLarge {
                size,
                max: self.max_chunk_size(),
            })?;
        let shares = self.capped(owner);
        // Quota first: one RMW, undone if no chunk is found.
        let held = entry.in_use.fetch_add(1, Ordering::Relaxed);
        if held >= self.quota && shares.is_some() {
            entry.in_use.fetch_sub(1, Ordering::Relaxed);
            return Err(LoanError::QuotaExceeded {
                owner: owner.0,
                quota: self.quota,
            });
        }
        if held + 1 > entry.high_water.load(Ordering::Relaxed) {
            entry.high_water.fetch_max(held + 1, Ordering::Relaxed);
        }
        let Some(intent) = self.claim_intent(entry) else {
            entry.in_use.fetch_sub(1, Ordering::Relaxed);
            return Err(LoanError::IntentsBusy(owner.0));
        };
        let outcome = self.loan_with_intent(owner, shares, intent, first, size);
        // SYNC(intent): Relaxed, as in `claim_intent`.
        intent.store(0, Ordering::Relaxed);
        if outcome.is_err() {
            entry.in_use.fetch_sub(1, Ordering::Relaxed);
        }
        outcome
    }

    /// The part of [`loan`](Self::loan) that runs under a claimed intent word: the class shares
    /// of a capped owner (`shares`), the pop and the owner word.
    #[inline]
    fn loan_with_intent(
        &self,
        owner: OwnerId,
        shares: Option<&OwnerShares>,
        intent: &AtomicU64,
        first: usize,
        size: usize,
    ) -> Result<Loan<'_>, LoanError> {
        let mut over_share = false;
        for ci in first..self.classes.len() {
            // The class share of a capped owner: one more RMW, undone if the class has no chunk.
            if let Some(s) = shares {
                if s.held[ci].fetch_add(1, Ordering::Relaxed) >= self.classes[ci].share {
                    s.held[ci].fetch_sub(1, Ordering::Relaxed);
                    // A share of the whole class held: the class is simply exhausted.
                    over_share |= self.classes[ci].share < self.classes[ci].count;
                    continue;
                }
            }
            let undo_share = || {
                if let Some(s) = shares {
                    s.held[ci].fetch_sub(1, Ordering::Relaxed);
                }
            };
            loop {
                let (index, free_generation) = match self.pop_free(ci, intent) {
                    Ok(Some(popped)) => popped,
                    Ok(None) => {
                        undo_share();
                        break;
                    }
                    Err(e) => {
                        undo_share();
                        return Err(e);
                    }
                };
                #[cfg(all(test, not(shm_loom)))]
                tests::after_pop(self, ci, index, free_generation);
                let class = &self.classes[ci];
                let h = self.chunk_header(class, index);
                let generation = free_generation.wrapping_add(1);
                // From the free word of the generation read before the pop: a reclaim that found
                // the chunk in limbo (see `settle_intent`) has claimed it and pushes it back
                // itself, so on failure we pop another.
                // SYNC(owner): Release so a process that adopts this chunk by id (after receiving
                // the id through a ring, itself Release/Acquire) sees a consistent owner word;
                // failure Relaxed: we only pop again.
                if h.owner
                    .compare_exchange(
                        u64::from(free_generation) << 32,
                        (u64::from(generation) << 32) | u64::from(owner.0),
                        Ordering::Release,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Ok(Loan {
                        pool: self,
                        class: ci as u8,
                        index,
                        generation,
                        owner,
                    });
                }
            }
        }
        if over_share {
            return Err(LoanError::ShareExceeded {
                owner: owner.0,
                size,
                cap: self.classes[first].share,
            });
        }
        Err(LoanError::Exhausted { size })
    }

    /// [`loan`](Self::loan), waiting (with backoff, then short sleeps) while the pool is exhausted,
    /// until `deadline`.
    ///
    /// # Errors
    ///
    /// [`LoanError::TimedOut`] at the deadline; other errors of [`loan`](Self::loan) at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use shm_ring::pool::{LoanError, PoolConfig, SizeClass};
    /// # use shm_ring::Region;
    /// # use shm_ring::pool::Pool;
    ///
    /// let one_chunk = vec![SizeClass { chunk_size: 64, count: 1 }];
    /// let config = PoolConfig { classes: one_chunk, ..PoolConfig::small() };
    /// # let region = Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let only = pool.loan(me, 64)?;
    /// assert!(matches!(pool.loan(me, 64), Err(LoanError::Exhausted { .. })));
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// let next = std::thread::scope(|s| {
    ///     s.spawn(move || {
    ///         std::thread::sleep(Duration::from_millis(10));
    ///         drop(only);
    ///     });
    ///     pool.loan_until(me, 64, deadline) // waits for the release
    /// })?;
    /// assert_eq!(next.len(), 64);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn loan_until(
        &self,
        owner: OwnerId,
        size: usize,
        deadline: Instant,
    ) -> Result<Loan<'_>, LoanError> {
        let mut sleep = Duration::from_micros(1);
        loop {
            match self.loan(owner, size) {
                Err(
                    LoanError::Exhausted { .. }
                    | LoanError::QuotaExceeded { .. }
                    | LoanError::ShareExceeded { .. },
                ) => {}
                other => return other,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LoanError::TimedOut { size });
            }
            std::thread::sleep(sleep.min(deadline - now));
            sleep = (sleep * 2).min(Duration::from_millis(1));
        }
    }

    /// Pops a free chunk of class `ci`, recording each attempt in `intent` first: its index and
    /// the generation of its free word, or `Ok(None)` when the class is empty.
    #[inline]
    fn pop_free(&self, ci: usize, intent: &AtomicU64) -> Result<Option<(u32, u32)>, LoanError> {
        let class = &self.classes[ci];
        // SAFETY: class headers were validated at attach and live as long as the region.
        let ch = unsafe { class.hdr.as_ref() };
        // SYNC(free): Acquire pairs with the Release CAS in `push_free`, so the `next` link and the
        // owner word written before the push are visible.
        let mut head = ch.free.load(Ordering::Acquire);
        loop {
            let idx1 = head & IDX_MASK;
            if idx1 == 0 {
                return Ok(None);
            }
            let index = (idx1 - 1) as u32;
            if index >= class.count {
                return Err(LoanError::Corrupted);
            }
            let h = self.chunk_header(class, index);
            // May be stale if another thread pops this chunk meanwhile; the tag makes our CAS fail.
            let next = u64::from(h.next.load(Ordering::Relaxed));
            // SYNC(owner): Acquire pairs with the Release exchanges that free a chunk or claim one
            // from limbo (`free_owned`, `settle_intent`), and keeps the head's second read after it.
            let word = h.owner.load(Ordering::Acquire);
            // The chunk must still be on top after its word was read: then the word is the one
            // of the generation in which it is on the list, which is what makes a leftover intent
            // safe to settle (a chunk freed by a `release` but not yet pushed has the same kind of
            // word, and must not be taken for one in limbo).
            // SYNC(free): Acquire, as the first read.
            let again = ch.free.load(Ordering::Acquire);
            if again != head {
                head = again;
                continue;
            }
            let free = (head >> COUNT_SHIFT) & IDX_MASK;
            // An owned chunk on top of an unchanged list is garbage a peer wrote.
            if next > u64::from(class.count) || free == 0 || word as u32 != 0 {
                return Err(LoanError::Corrupted);
            }
            let free_generation = (word >> 32) as u32;
            // SYNC(intent): Relaxed: the intent is read only by a reclaim of this owner once its
            // process is dead (or by this thread); the kernel orders everything the process
            // stored before its death before any other process learns of it.
            intent.store(intent_word(ci, index, free_generation), Ordering::Relaxed);
            let tag = (head >> TAG_SHIFT).wrapping_add(1);
            let new = pack_head(tag, free - 1, next);
            // Failure ordering Acquire: we retry with the new head and read its `next` link.
            match ch
                .free
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    let free_now = (free - 1) as u32;
                    if free_now < ch.low_water.load(Ordering::Relaxed) {
                        ch.low_water.fetch_min(free_now, Ordering::Relaxed);
                    }
                    return Ok(Some((index, free_generation)));
                }
                Err(actual) => head = actual,
            }
        }
    }

    #[inline]
    fn push_free(&self, ci: usize, index: u32) {
        let class = &self.classes[ci];
        // SAFETY: as in pop_free.
        let ch = unsafe { class.hdr.as_ref() };
        let h = self.chunk_header(class, index);
        let mut head = ch.free.load(Ordering::Relaxed);
        loop {
            // SYNC(free): Release pairs with the fence in `free_list_holds`: a walker that reads
            // this link sees that the chunk was popped since its walk began.
            h.next.store((head & IDX_MASK) as u32, Ordering::Release);
            let free = ((head >> COUNT_SHIFT) & IDX_MASK) + 1;
            let tag = (head >> TAG_SHIFT).wrapping_add(1);
            let new = pack_head(tag, free, u64::from(index) + 1);
            // SYNC(free): Release publishes `next` (and the freed owner word) to `pop_free`'s Acquire.
            match ch
                .free
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    fn locate(&self, id: ChunkId) -> Result<(&ClassInfo, &ChunkHeader), ChunkError> {
        let class = self
            .classes
            .get(usize::from(id.class()))
            .ok_or(ChunkError::OutOfRange(id.0))?;
        if id.index() >= class.count {
            return Err(ChunkError::OutOfRange(id.0));
        }
        Ok((class, self.chunk_header(class, id.index())))
    }

    /// Moves chunk `id` from `from` to `to` (compare-exchange on its owner word) and returns it as a
    /// loan of `to`. This is how a receiver takes ownership of a chunk named in a descriptor.
    ///
    /// # Errors
    ///
    /// [`ChunkError::OutOfRange`] for a bad id, [`ChunkError::NotOwned`] when `from` does not hold it
    /// under that generation (stale, forged, already moved), [`ChunkError::UnknownOwner`],
    /// [`ChunkError::SameOwner`] when `from == to`.
    ///
    /// # Examples
    ///
    /// A client hands a request to the server:
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let (client, server) = (pool.register_owner()?, pool.register_unlimited_owner()?);
    /// let mut request = pool.loan(client, 64)?;
    /// request.as_mut_slice()[..4].copy_from_slice(b"ping");
    /// let id = request.into_id(); // sent to the server, e.g. in a ring entry
    ///
    /// let request = pool.adopt(id, client, server)?;
    /// assert_eq!(&request.as_slice()[..4], b"ping");
    /// assert_eq!((pool.held_by(client), pool.held_by(server)), (0, 1));
    /// assert!(pool.adopt(id, client, server).is_err()); // moved once only
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt(&self, id: ChunkId, from: OwnerId, to: OwnerId) -> Result<Loan<'_>, ChunkError> {
        self.transfer(id, from, to, false)
    }

    /// [`adopt`](Self::adopt), unless `to` is held to the class shares and already holds its
    /// share of the chunk's class: then [`ChunkError::ShareExceeded`] and the chunk stays with
    /// `from`. (For what a receiver may be made to wait for, such as the parts of a stream; what
    /// it must get, such as the one final answer to its request, goes by `adopt`.)
    ///
    /// # Errors
    ///
    /// As for [`adopt`](Self::adopt), and [`ChunkError::ShareExceeded`].
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::{ChunkError, PoolConfig};
    /// # use shm_ring::Region;
    /// # use shm_ring::pool::Pool;
    ///
    /// // One capped owner may hold 25% of a class: 4 of the 16 chunks of 4096 bytes.
    /// let config = PoolConfig { class_share: 25, ..PoolConfig::small() };
    /// # let region = Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let (client, server) = (pool.register_owner()?, pool.register_unlimited_owner()?);
    /// let _unread: Vec<_> = (0..4).map(|_| pool.loan(client, 4096)).collect::<Result<_, _>>()?;
    /// let part = pool.loan(server, 4096)?.into_id(); // a part of a stream for the client
    /// let refused = pool.adopt_within_share(part, server, client);
    /// assert!(matches!(refused, Err(ChunkError::ShareExceeded { cap: 4, .. })));
    /// assert_eq!(pool.held_by(server), 1); // still the server's: it sends it later
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn adopt_within_share(
        &self,
        id: ChunkId,
        from: OwnerId,
        to: OwnerId,
    ) -> Result<Loan<'_>, ChunkError> {
        self.transfer(id, from, to, true)
    }

    fn transfer(
        &self,
        id: ChunkId,
        from: OwnerId,
        to: OwnerId,
        within_share: bool,
    ) -> Result<Loan<'_>, ChunkError> {
        let (class, h) = self.locate(id)?;
        // Never from an owner to itself: the holder would get a second loan of a chunk it may be
        // writing through the first, and a receiver that trusted a peer's word for the sender (a
        // client entry naming the server's own owner id) would take its own chunks as input.
        if from == to {
            return Err(ChunkError::SameOwner(to.0));
        }
        let to_entry = self.owner_entry(to).ok_or(ChunkError::UnknownOwner(to.0))?;
        // A vacant owner entry cannot receive chunks: nobody would ever return them. (A receiver
        // that leaves between this check and the CAS is caught by `reclaim_orphans`.)
        if to_entry.token.load(Ordering::Acquire) == 0 {
            return Err(ChunkError::UnknownOwner(to.0));
        }
        let from_entry = self
            .owner_entry(from)
            .ok_or(ChunkError::UnknownOwner(from.0))?;
        let ci = usize::from(id.class());
        // The receiver's count moves first (and is undone if the chunk does not move), so that
        // two hand-overs racing for the last place in a share cannot both get it.
        let to_shares = self.capped(to);
        if let Some(s) = to_shares {
            let before = s.held[ci].fetch_add(1, Ordering::Relaxed);
            if within_share && before >= class.share {
                s.held[ci].fetch_sub(1, Ordering::Relaxed);
                return Err(ChunkError::ShareExceeded {
                    owner: to.0,
                    chunk_size: class.chunk_size,
                    cap: class.share,
                });
            }
        }
        let expected = (u64::from(id.generation()) << 32) | u64::from(from.0);
        let new = (u64::from(id.generation()) << 32) | u64::from(to.0);
        // SYNC(owner): AcqRel: acquire what the previous owner wrote into the chunk, release to the
        // next CAS on this word.
        if let Err(found) =
            h.owner
                .compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire)
        {
            if let Some(s) = to_shares {
                s.held[ci].fetch_sub(1, Ordering::Relaxed);
            }
            return Err(ChunkError::NotOwned {
                id: id.0,
                expected: from.0,
                found,
            });
        }
        if let Some(s) = self.capped(from) {
            s.held[ci].fetch_sub(1, Ordering::Relaxed);
        }
        from_entry.in_use.fetch_sub(1, Ordering::Relaxed);
        to_entry.in_use.fetch_add(1, Ordering::Relaxed);
        Ok(Loan {
            pool: self,
            class: id.class(),
            index: id.index(),
            generation: id.generation(),
            owner: to,
        })
    }

    /// The bytes of chunk `id`, if `owner` holds it under that generation (checked now; the caller
    /// keeps to the ownership protocol for as long as it uses them).
    ///
    /// # Errors
    ///
    /// As for [`adopt`](Self::adopt).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let (me, other) = (pool.register_owner()?, pool.register_owner()?);
    /// let mut loan = pool.loan(me, 64)?;
    /// loan.as_mut_slice()[..3].copy_from_slice(b"abc");
    /// let id = loan.into_id();
    /// assert_eq!(&pool.chunk_slice(id, me)?[..3], b"abc");
    /// assert!(pool.chunk_slice(id, other).is_err()); // not its chunk
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn chunk_slice(&self, id: ChunkId, owner: OwnerId) -> Result<&[u8], ChunkError> {
        let (base, size) = self.owned_chunk(id, owner)?;
        // SAFETY: `owned_chunk` gives the start and size of a chunk inside the data area, which
        // lives as long as `self`; the owner word says it is `owner`'s, and peers following the
        // protocol do not write it (a buggy peer writing here only changes bytes, which any &[u8]
        // content may be).
        unsafe { Ok(std::slice::from_raw_parts(base, size)) }
    }

    /// The start and size of chunk `id`, checked to be held by `owner` under that generation now.
    fn owned_chunk(&self, id: ChunkId, owner: OwnerId) -> Result<(*mut u8, usize), ChunkError> {
        let (class, h) = self.locate(id)?;
        let expected = (u64::from(id.generation()) << 32) | u64::from(owner.0);
        // SYNC(owner): Acquire pairs with the Release/AcqRel of the CAS that gave us the chunk, so
        // the previous owner's writes are visible.
        let found = h.owner.load(Ordering::Acquire);
        if found != expected {
            return Err(ChunkError::NotOwned {
                id: id.0,
                expected: owner.0,
                found,
            });
        }
        // SAFETY: index < count (locate), so the offset stays inside the data area.
        let base = unsafe {
            class
                .data
                .add(id.index() as usize * class.chunk_size)
                .as_ptr()
        };
        Ok((base, class.chunk_size))
    }

    /// Copies the first `dst.len()` words of chunk `id`, held by `owner`, into `dst`, one relaxed
    /// atomic load per 8-byte word. Sound while another process writes the chunk at the same time
    /// (a client that rewrites a request after submitting it): the loads are atomic, so the race is
    /// defined and each word is some value that word held; the copy may mix old and new words,
    /// which is why a receiver validates the copy, never the chunk. No reference to the chunk's
    /// bytes is formed.
    ///
    /// # Errors
    ///
    /// As for [`chunk_slice`](Self::chunk_slice), and [`ChunkError::TooLong`] when `dst` is larger
    /// than the chunk.
    ///
    /// # Examples
    ///
    /// The receiver copies a request out of shared memory before validating it:
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let mut loan = pool.loan(me, 16)?;
    /// loan.as_mut_slice()[..8].copy_from_slice(&42u64.to_ne_bytes());
    /// let id = loan.into_id();
    /// let mut words = [0u64; 2];
    /// pool.copy_chunk(id, me, &mut words)?;
    /// assert_eq!(words[0], 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn copy_chunk(
        &self,
        id: ChunkId,
        owner: OwnerId,
        dst: &mut [u64],
    ) -> Result<(), ChunkError> {
        let (base, size) = self.owned_chunk(id, owner)?;
        let wanted = dst.len() * 8;
        if wanted > size {
            return Err(ChunkError::TooLong { wanted, size });
        }
        for (i, word) in dst.iter_mut().enumerate() {
            // SAFETY: chunks are 64-byte aligned and `i * 8 + 8 <= wanted <= size`, so the word
            // is aligned and inside the chunk, which lives as long as `self`; this process reads
            // the chunk here only through atomic loads while another may write it, and a word
            // always holds some u64.
            let atomic =
                unsafe { std::sync::atomic::AtomicU64::from_ptr(base.add(i * 8).cast::<u64>()) };
            *word = atomic.load(std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Returns chunk `id` held by `owner` to the pool.
    ///
    /// # Errors
    ///
    /// As for [`adopt`](Self::adopt): an id not held by `owner` under that generation is refused, so
    /// a double release is harmless.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let id = pool.loan(me, 64)?.into_id(); // e.g. a response the client has read
    /// pool.release(id, me)?;
    /// assert_eq!(pool.held_by(me), 0);
    /// assert!(pool.release(id, me).is_err()); // a second release is refused
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release(&self, id: ChunkId, owner: OwnerId) -> Result<(), ChunkError> {
        let (_, h) = self.locate(id)?;
        self.free_owned(id.class(), id.index(), h, id.generation(), owner)
            .then_some(())
            .ok_or_else(|| ChunkError::NotOwned {
                id: id.0,
                expected: owner.0,
                found: h.owner.load(Ordering::Relaxed),
            })
    }

    #[inline]
    fn free_owned(
        &self,
        class: u8,
        index: u32,
        h: &ChunkHeader,
        generation: u32,
        owner: OwnerId,
    ) -> bool {
        let expected = (u64::from(generation) << 32) | u64::from(owner.0);
        // SYNC(owner): Release so the next loan's user sees our writes as finished; failure means
        // someone else released or reclaimed it (never push it twice).
        if h.owner
            .compare_exchange(
                expected,
                u64::from(generation) << 32,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        if let Some(e) = self.owner_entry(owner) {
            e.in_use.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(s) = self.capped(owner) {
            s.held[usize::from(class)].fetch_sub(1, Ordering::Relaxed);
        }
        self.push_free(usize::from(class), index);
        true
    }

    /// Returns every chunk held by `owner` to the pool; returns how many. Call it only for an owner
    /// that is gone (its process died, or it left): a live owner's loans would be pulled from under it.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::pool::Loan;
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    ///
    /// let client = pool.register_owner()?;
    /// for _ in 0..3 {
    ///     pool.loan(client, 64).map(Loan::into_id)?;
    /// }
    /// // The client has gone: take its chunks back.
    /// assert_eq!(pool.reclaim(client), 3);
    /// assert_eq!(pool.held_by(client), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reclaim(&self, owner: OwnerId) -> usize {
        let mut n = 0;
        for (ci, class) in self.classes.iter().enumerate() {
            for index in 0..class.count {
                let h = self.chunk_header(class, index);
                let w = h.owner.load(Ordering::Acquire);
                if w as u32 == owner.0
                    && self.free_owned(ci as u8, index, h, (w >> 32) as u32, owner)
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// Reclaims the chunks of every owner whose process is certainly dead (see
    /// [`Liveness`](crate::Liveness)), including a chunk a loan of it had popped but not yet owned
    /// when it died, and frees their entries. Returns (owners reclaimed, chunks returned). An
    /// entry whose loan intent could not be settled yet stays with its dead holder and is
    /// counted again by the pass that finishes it.
    ///
    /// # Examples
    ///
    /// A client process registered, loaned two chunks and was killed before returning them:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shm_ring::pool::{Pool, PoolConfig};
    /// use shm_ring::{CreateOptions, Region, Segment};
    /// # // The client: this program, run again as a child that dies holding two chunks.
    /// # if let Ok(name) = std::env::var("SHM_RING_DOC_KILLED_CLIENT") {
    /// #     let pool = Pool::attach(&Region::new(Arc::new(Segment::open(&name)?)))?;
    /// #     let me = pool.register_owner()?;
    /// #     let _ = (pool.loan(me, 64)?.into_id(), pool.loan(me, 64)?.into_id());
    /// #     std::process::exit(0);
    /// # }
    ///
    /// let name = format!("doc-reclaim-dead-{}", std::process::id());
    /// let config = PoolConfig::small();
    /// let opts = CreateOptions::new(Pool::bytes_for(&config));
    /// let region = Region::new(Arc::new(Segment::create(&name, &opts)?));
    /// Pool::init(&region, &config)?;
    /// let pool = Pool::attach(&region)?;
    /// # let client = std::process::Command::new(std::env::current_exe()?)
    /// #     .env("SHM_RING_DOC_KILLED_CLIENT", &name)
    /// #     .status()?;
    /// # assert!(client.success());
    ///
    /// assert_eq!(pool.stats().in_use(), 2);
    /// assert_eq!(pool.reclaim_dead(), (1, 2)); // one owner, two chunks
    /// assert_eq!(pool.stats().in_use(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reclaim_dead(&self) -> (usize, usize) {
        let (mut owners, mut chunks) = (0, 0);
        for i in 0..self.max_owners {
            let id = OwnerId(i + 1);
            let entry = self.owner_entry(id).expect("index in range");
            let raw = entry.token.load(Ordering::Acquire);
            if let Some(t) = ProcessToken::from_raw(raw) {
                if let Some(n) = self.reclaim_dead_owner(id, t) {
                    chunks += n;
                    owners += 1;
                }
            }
        }
        (owners, chunks)
    }

    /// Returns every chunk of `owner` and frees its entry, if the entry is still held by `holder`
    /// and `holder` is certainly dead; returns how many, or `None` when `holder` may live or no
    /// longer holds the entry (it was freed, or taken over by a process that returned the chunks
    /// itself). The chunks include one its loan had popped but not yet owned (a settled loan
    /// intent); when an intent cannot be settled yet, the entry goes back to `holder` for a later
    /// call.
    ///
    /// The caller holds the entry while the chunks go back: a process registering meanwhile
    /// cannot take it over and loan chunks under this id that the reclaim would then take from it.
    ///
    /// # Examples
    ///
    /// A server that registered a client's owner entry returns it once the client has died:
    ///
    /// ```
    /// use shm_ring::pool::OwnerId;
    /// # use std::sync::Arc;
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # use shm_ring::{CreateOptions, Region, Segment};
    /// # // The client: this program, run again as a child that dies holding two chunks.
    /// # if let Ok(name) = std::env::var("SHM_RING_DOC_KILLED_CLIENT") {
    /// #     let pool = Pool::attach(&Region::new(Arc::new(Segment::open(&name)?)))?;
    /// #     let me = pool.register_owner()?;
    /// #     let _ = (pool.loan(me, 64)?.into_id(), pool.loan(me, 64)?.into_id());
    /// #     std::process::exit(0);
    /// # }
    /// # let name = format!("doc-reclaim-dead-owner-{}", std::process::id());
    /// # let config = PoolConfig::small();
    /// # let opts = CreateOptions::new(Pool::bytes_for(&config));
    /// # let region = Region::new(Arc::new(Segment::create(&name, &opts)?));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let client = std::process::Command::new(std::env::current_exe()?)
    /// #     .env("SHM_RING_DOC_KILLED_CLIENT", &name)
    /// #     .status()?;
    /// # assert!(client.success());
    ///
    /// let client = OwnerId::from_raw(1).unwrap(); // the first (and only) entry registered
    /// let holder = pool.owner_token(client).unwrap();
    /// assert!(holder.is_dead());
    /// assert_eq!(pool.reclaim_dead_owner(client, holder), Some(2));
    /// assert_eq!(pool.owner_token(client), None); // the entry is free again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reclaim_dead_owner(&self, owner: OwnerId, holder: ProcessToken) -> Option<usize> {
        let entry = self.owner_entry(owner)?;
        let me = ProcessToken::current();
        if holder == me || !holder.is_dead() {
            return None;
        }
        // SYNC(role): Acquire, as in `claim_slot` (this is a take-over of a dead holder's entry);
        // failure ordering Relaxed: nothing is read after a failed exchange.
        entry
            .token
            .compare_exchange(holder.raw(), me.raw(), Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        let (n, settled) = self.reclaim_entry(owner, entry);
        if settled {
            release_slot(&entry.token, me);
        } else {
            // A loan intent could not be settled yet (its class's list changed during every
            // walk): the entry goes back to the dead holder, so the next pass of any process
            // tries again and nobody registers into an entry with a pending intent.
            // SYNC(role): Release pairs with the Acquire of the next take-over.
            entry.token.store(holder.raw(), Ordering::Release);
        }
        Some(n)
    }

    /// Returns every chunk whose owner entry is vacant (its owner left or was reclaimed while a
    /// chunk was being handed to it). Returns how many. Safe to run at any time: a chunk is freed
    /// only if its owner word still holds the generation observed while the entry was vacant, and a
    /// new loan always bumps the generation.
    ///
    /// # Examples
    ///
    /// A periodic pass leaves the chunks of registered owners alone:
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// let me = pool.register_owner()?;
    /// let _loan = pool.loan(me, 64)?;
    /// assert_eq!(pool.reclaim_orphans(), 0);
    /// assert_eq!(pool.held_by(me), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reclaim_orphans(&self) -> usize {
        let mut n = 0;
        for (ci, class) in self.classes.iter().enumerate() {
            for index in 0..class.count {
                let h = self.chunk_header(class, index);
                // SYNC(owner): Acquire, then the entry's token with Acquire: a loan by a newly
                // registered owner was made after its token store, so seeing the loan's owner word
                // implies seeing the token (and we skip the chunk).
                let w = h.owner.load(Ordering::Acquire);
                let owner = w as u32;
                if owner == 0 {
                    continue;
                }
                let vacant = OwnerId::from_raw(owner)
                    .and_then(|o| self.owner_entry(o))
                    .is_some_and(|e| e.token.load(Ordering::Acquire) == 0);
                if vacant && self.free_owned(ci as u8, index, h, (w >> 32) as u32, OwnerId(owner)) {
                    n += 1;
                }
            }
        }
        n
    }

    /// A snapshot: free chunks and high-water mark per class, registered owners.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// let me = pool.register_owner()?;
    /// let _loans = [pool.loan(me, 64)?, pool.loan(me, 64)?];
    /// let stats = pool.stats();
    /// assert_eq!((stats.owners, stats.in_use()), (1, 2));
    /// assert_eq!((stats.classes[0].free, stats.classes[0].high_water), (62, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        let classes = self
            .classes
            .iter()
            .map(|c| {
                // SAFETY: validated at attach.
                let ch = unsafe { c.hdr.as_ref() };
                let free = ((ch.free.load(Ordering::Relaxed) >> COUNT_SHIFT) & IDX_MASK) as u32;
                let low = ch.low_water.load(Ordering::Relaxed).min(c.count);
                ClassStats {
                    chunk_size: c.chunk_size,
                    count: c.count,
                    share: c.share,
                    free: free.min(c.count),
                    high_water: c.count - low,
                }
            })
            .collect();
        let owners = (0..self.max_owners)
            .filter(|i| self.owner_token(OwnerId(i + 1)).is_some())
            .count() as u32;
        PoolStats { classes, owners }
    }
}

/// A chunk on loan: exclusively this owner's until dropped (released), transferred, or turned into an
/// id with [`into_id`](Loan::into_id).
///
/// # Examples
///
/// ```
/// # use shm_ring::pool::{Pool, PoolConfig};
/// # let config = PoolConfig::small();
/// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
/// # Pool::init(&region, &config)?;
/// # let pool = Pool::attach(&region)?;
/// # let me = pool.register_owner()?;
/// let mut loan = pool.loan(me, 11)?;
/// loan.as_mut_slice()[..11].copy_from_slice(b"hello world");
/// assert_eq!(&loan.as_slice()[..5], b"hello");
/// drop(loan); // released
/// assert_eq!(pool.held_by(me), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Loan<'a> {
    pool: &'a Pool,
    class: u8,
    index: u32,
    generation: u32,
    owner: OwnerId,
}

impl<'a> Loan<'a> {
    fn data(&self) -> NonNull<u8> {
        let class = &self.pool.classes[usize::from(self.class)];
        // SAFETY: index < count (checked when the loan was made), so the chunk lies in the data area.
        unsafe { class.data.add(self.index as usize * class.chunk_size) }
    }

    /// Usable bytes (the class's chunk size, at least what was asked).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// assert_eq!(pool.loan(me, 100)?.len(), 256); // the whole chunk
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.pool.classes[usize::from(self.class)].chunk_size
    }

    /// Always false: chunks are never empty.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// assert!(!pool.loan(me, 0)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Start of the chunk (64-byte aligned).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let mut loan = pool.loan(me, 8)?;
    /// let p = loan.as_mut_ptr().cast::<u64>();
    /// // SAFETY: the chunk is ours (the loan), at least 8 bytes long and 64-byte aligned.
    /// unsafe { p.write(7) };
    /// assert_eq!(loan.as_slice()[..8], 7u64.to_ne_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.data().as_ptr()
    }

    /// The chunk's bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let (client, server) = (pool.register_owner()?, pool.register_unlimited_owner()?);
    /// # let mut request = pool.loan(client, 64)?;
    /// # request.as_mut_slice()[..4].copy_from_slice(b"ping");
    /// # let id = request.into_id();
    /// let request = pool.adopt(id, client, server)?;
    /// assert_eq!(&request.as_slice()[..4], b"ping");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the owner word makes this chunk ours alone for the life of the loan; peers that
        // follow the protocol do not touch it (a buggy peer writing here only changes bytes, which
        // any &[u8] content may be).
        unsafe { std::slice::from_raw_parts(self.data().as_ptr(), self.len()) }
    }

    /// The chunk's bytes, writable.
    ///
    /// # Examples
    ///
    /// ```u8
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let mut loan = pool.loan(me, 64)?;
    /// let body = b"{\"prompt\": \"hi\"}";
    /// loan.as_mut_slice()[..body.len()].copy_from_slice(body);
    /// assert!(loan.as_slice().starts_with(body));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for as_slice; &mut self makes this the only live view in this process.
        unsafe { std::slice::from_raw_parts_mut(self.data().as_ptr(), self.len()) }
    }

    /// The id naming this loan.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let loan = pool.loan(me, 64)?;
    /// let id = loan.id();
    /// assert_eq!(pool.chunk_slice(id, me)?.len(), loan.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn id(&self) -> ChunkId {
        ChunkId::new(self.class, self.index, self.generation)
    }

    /// The owner holding it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let (client, server) = (pool.register_owner()?, pool.register_unlimited_owner()?);
    /// let id = pool.loan(client, 64)?.into_id();
    /// let adopted = pool.adopt(id, client, server)?;
    /// assert_eq!(adopted.owner(), server);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn owner(&self) -> OwnerId {
        self.owner
    }

    /// Gives up the handle without releasing the chunk (it stays with its owner, e.g. to be adopted
    /// by another process through its id).
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_ring::pool::{Pool, PoolConfig};
    /// # let config = PoolConfig::small();
    /// # let region = shm_ring::Region::heap(Pool::bytes_for(&config));
    /// # Pool::init(&region, &config)?;
    /// # let pool = Pool::attach(&region)?;
    /// # let me = pool.register_owner()?;
    /// let id = pool.loan(me, 64)?.into_id();
    /// assert_eq!(pool.held_by(me), 1); // still held: the id is what travels
    /// pool.release(id, me)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_id(self) -> ChunkId {
        let id = self.id();
        std::mem::forget(self);
        id
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        let class = &self.pool.classes[usize::from(self.class)];
        let h = self.pool.chunk_header(class, self.index);
        // A failure means the chunk was reclaimed from under us (our owner was declared gone): it is
        // already back in the pool, so there is nothing to do.
        let _ = self
            .pool
            .free_owned(self.class, self.index, h, self.generation, self.owner);
    }
}

#[cfg(all(test, not(shm_loom)))]
mod tests {
    use super::*;

    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::sync::Arc;

    use shm_test_support::{unique_name, ChildProcess, ChildTask};

    use crate::{CreateOptions, Segment};

    type AfterPop = Box<dyn FnMut(&Pool, usize, u32, u32)>;

    thread_local! {
        /// What a loan of this thread does between its pop and its owner word (tests only).
        static AFTER_POP: RefCell<Option<AfterPop>> = const { RefCell::new(None) };
    }

    /// The fault-injection point of [`Pool::loan`], between the pop and the owner word; compiled
    /// into the crate's own tests only.
    pub(super) fn after_pop(pool: &Pool, ci: usize, index: u32, generation: u32) {
        if let Some(mut hook) = AFTER_POP.with(|h| h.borrow_mut().take()) {
            hook(pool, ci, index, generation);
            AFTER_POP.with(|h| *h.borrow_mut() = Some(hook));
        }
    }

    fn set_after_pop(hook: impl FnMut(&Pool, usize, u32, u32) + 'static) {
        AFTER_POP.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    fn pool(config: &PoolConfig) -> Pool {
        let region = Region::heap(Pool::bytes_for(config));
        Pool::init(&region, config).unwrap();
        Pool::attach(&region).unwrap()
    }

    /// One class of `count` 64-byte chunks, a quota that allows loaning them all.
    fn one_class(count: u32) -> PoolConfig {
        PoolConfig {
            classes: vec![SizeClass {
                chunk_size: 64,
                count,
            }],
            max_owners: 4,
            quota: 64,
            class_share: 100,
        }
    }

    /// How many chunks an owner word names an owner in.
    fn owned_chunks(p: &Pool) -> usize {
        p.classes
            .iter()
            .map(|c| {
                (0..c.count)
                    .filter(|&i| p.chunk_header(c, i).owner.load(Ordering::Relaxed) as u32 != 0)
                    .count()
            })
            .sum()
    }

    /// Loans every chunk of the pool: each once (all distinct), then the pool is exhausted.
    fn loan_everything_once(p: &Pool) {
        let me = p.register_owner().unwrap();
        let capacity = p.stats().capacity();
        let loans: Vec<_> = (0..capacity).map(|_| p.loan(me, 1).unwrap()).collect();
        let mut chunks: Vec<_> = loans.iter().map(|l| (l.class, l.index)).collect();
        chunks.sort_unstable();
        chunks.dedup();
        assert_eq!(chunks.len(), capacity as usize, "a chunk was loaned twice");
        assert_eq!(p.loan(me, 1).unwrap_err(), LoanError::Exhausted { size: 1 });
        drop(loans);
        p.unregister_owner(me);
        assert_eq!(p.stats().in_use(), 0);
    }

    fn intents(p: &Pool, owner: OwnerId) -> Vec<u64> {
        let e = p.owner_entry(owner).unwrap();
        e.intents
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|&w| w != 0)
            .collect()
    }

    /// The child side of the process tests of this module. Does nothing unless spawned by one.
    #[test]
    #[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
    fn child_entry() {
        let Some(task) = ChildTask::from_env() else {
            return;
        };
        match task.role.as_str() {
            "loan-and-die-after-pop" => {
                let seg = Segment::open(&task.name).unwrap();
                let pool = Pool::attach(&Region::new(Arc::new(seg))).unwrap();
                let me = pool.register_owner().unwrap();
                set_after_pop(|_, _, _, _| {
                    // SAFETY: raising SIGKILL on ourselves; never returns.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                });
                let _ = pool.loan(me, 1);
                unreachable!("killed between the pop and the owner word");
            }
            other => panic!("unknown role {other}"),
        }
    }

    #[test]
    fn a_loaner_killed_between_pop_and_owner_word_loses_no_chunk() {
        let config = one_class(8);
        let name = unique_name("pool-limbo");
        let seg = Segment::create(&name, &CreateOptions::new(Pool::bytes_for(&config))).unwrap();
        let region = Region::new(Arc::new(seg));
        Pool::init(&region, &config).unwrap();
        let p = Pool::attach(&region).unwrap();
        ChildProcess::role_at(
            "pool::tests::child_entry",
            "loan-and-die-after-pop",
            &name,
            "",
        )
        .wait_killed();
        let s = p.stats();
        assert_eq!(s.classes[0].free, 7, "the chunk was popped");
        assert_eq!(owned_chunks(&p), 0, "and nobody owns it");
        let dead = OwnerId(1);
        assert_eq!(s.owners, 1, "its loaner's entry is still registered");
        assert_eq!(
            p.held_by(dead),
            1,
            "counted against the dead loaner's quota only"
        );
        assert_eq!(intents(&p, dead), [intent_word(0, 0, 0)]);
        assert_eq!(
            p.reclaim_dead(),
            (1, 1),
            "the reclaim returns the chunk in limbo"
        );
        let s = p.stats();
        assert_eq!((s.classes[0].free, s.owners), (8, 0));
        assert_eq!(p.held_by(dead), 0);
        loan_everything_once(&p);
    }

    #[test]
    fn a_loan_whose_popped_chunk_a_reclaim_took_back_pops_it_again() {
        let p = pool(&one_class(4));
        let me = p.register_owner().unwrap();
        let popped = Rc::new(Cell::new(None));
        let seen = Rc::clone(&popped);
        set_after_pop(move |pool, ci, index, generation| {
            if seen.get().is_none() {
                seen.set(Some((index, generation)));
                // A reclaim settling a gone loaner's intent for this very chunk, while this live
                // loan holds it between its pop and its owner word.
                let settled = pool.settle_intent(intent_word(ci, index, generation));
                assert_eq!(settled, Some(true), "claimed from limbo and pushed back");
            }
        });
        let loan = p.loan(me, 1).unwrap();
        AFTER_POP.with(|h| h.borrow_mut().take());
        let (index, generation) = popped.get().unwrap();
        assert_eq!(
            loan.index, index,
            "the reclaim pushed it back on top of the list"
        );
        assert_eq!(
            loan.generation,
            generation + 2,
            "the reclaim's claim used one generation, this loan the next"
        );
        assert_eq!((p.stats().classes[0].free, p.held_by(me)), (3, 1));
        assert!(intents(&p, me).is_empty());
        drop(loan);
        loan_everything_once(&p);
    }

    #[test]
    fn a_stale_intent_never_frees_a_chunk_that_is_held_or_on_the_list() {
        let p = pool(&one_class(4));
        let dead = p.register_owner().unwrap();
        let live = p.register_owner().unwrap();
        let word = |i: u32| {
            p.chunk_header(&p.classes[0], i)
                .owner
                .load(Ordering::Relaxed)
        };
        let held = p.loan(live, 1).unwrap();
        // SAFETY: test-only read of the class header's atomics.
        let head = unsafe { p.classes[0].hdr.as_ref() }
            .free
            .load(Ordering::Relaxed);
        let on_top = (head & IDX_MASK) as u32 - 1;
        let e = p.owner_entry(dead).unwrap();
        let planted = [
            // What a loaner saw before the live owner popped this chunk (and died before its own
            // pop): the chunk is legitimately held now.
            intent_word(0, held.index, held.generation - 1),
            // A chunk still on the free list.
            intent_word(0, on_top, (word(on_top) >> 32) as u32),
            // Claimed, no chunk chosen yet.
            INTENT_BUSY,
            // A generation the chunk never had.
            intent_word(0, 3, 77),
            // Garbage.
            u64::MAX,
            INTENT_BUSY | (5 << 32),
        ];
        for (slot, v) in e.intents.iter().zip(planted) {
            slot.store(v, Ordering::Relaxed);
        }
        e.token.store(DEAD, Ordering::Relaxed);
        assert_eq!(p.reclaim_dead(), (1, 0), "nothing to return");
        assert!(intents(&p, dead).is_empty(), "every intent settled");
        assert_eq!(p.stats().classes[0].free, 3);
        assert_eq!(p.held_by(live), 1);
        assert_eq!(
            word(held.index),
            (u64::from(held.generation) << 32) | u64::from(live.0),
            "still the live owner's"
        );
        drop(held);
        p.unregister_owner(live);
        loan_everything_once(&p);
    }

    #[test]
    fn an_intent_that_cannot_be_settled_yet_keeps_the_dead_owners_entry_for_a_later_pass() {
        let mut config = one_class(4);
        config.max_owners = 2;
        let p = pool(&config);
        let dead = p.register_owner().unwrap();
        // The state a loaner killed right after its pop leaves: quota counted, intent written,
        // chunk off the list and unowned.
        let e = p.owner_entry(dead).unwrap();
        e.in_use.fetch_add(1, Ordering::Relaxed);
        let slot = p.claim_intent(e).unwrap();
        let (limbo, _) = p.pop_free(0, slot).unwrap().unwrap();
        e.token.store(DEAD, Ordering::Relaxed);
        // The rest of the list (1 -> 2 -> 3) made a cycle: no walk of it ever ends.
        let last = p.chunk_header(&p.classes[0], 3);
        assert_eq!(last.next.load(Ordering::Relaxed), 0);
        last.next.store(limbo + 2, Ordering::Relaxed);
        assert_eq!(p.reclaim_dead(), (1, 0));
        assert_eq!(
            p.owner_token(dead).map(ProcessToken::raw),
            Some(DEAD),
            "the entry waits for a later pass under its dead holder"
        );
        assert_eq!(p.stats().classes[0].free, 3);
        // Nobody registers into it meanwhile.
        let other = p.register_owner().unwrap();
        assert_ne!(other, dead);
        assert_eq!(p.register_owner(), Err(OwnersFull(2)));
        // Once the list can be walked, the next pass returns the chunk and frees the entry.
        last.next.store(0, Ordering::Relaxed);
        assert_eq!(p.reclaim_dead(), (1, 1));
        assert_eq!(p.owner_token(dead), None);
        assert_eq!(p.stats().classes[0].free, 4);
        p.unregister_owner(other);
        loan_everything_once(&p);
    }

    #[test]
    fn threads_loaning_for_one_owner_never_share_a_chunk() {
        let config = one_class(3);
        let p = pool(&config);
        let me = p.register_owner().unwrap();
        // More threads than intent words: some wait for one.
        let threads = INTENT_SLOTS + 2;
        let rounds = if cfg!(miri) { 10 } else { 3_000 };
        std::thread::scope(|scope| {
            for t in 0..threads {
                let p = &p;
                scope.spawn(move || {
                    for _ in 0..rounds {
                        let mut loan = match p.loan(me, 64) {
                            Ok(loan) => loan,
                            Err(LoanError::Exhausted { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        };
                        loan.as_mut_slice().fill(t as u8);
                        std::hint::black_box(&mut loan);
                        assert!(
                            loan.as_slice().iter().all(|&b| b == t as u8),
                            "chunk shared with another loan"
                        );
                    }
                });
            }
        });
        assert_eq!((p.held_by(me), p.stats().classes[0].free), (0, 3));
        assert!(intents(&p, me).is_empty());
        p.unregister_owner(me);
        loan_everything_once(&p);
    }

    #[test]
    fn loans_are_aligned_distinct_and_come_back() {
        let p = pool(&PoolConfig::small());
        let me = p.register_owner().unwrap();
        let mut loans: Vec<_> = (0..10).map(|_| p.loan(me, 200).unwrap()).collect();
        let mut ptrs: Vec<usize> = loans.iter_mut().map(|l| l.as_mut_ptr() as usize).collect();
        assert!(ptrs.iter().all(|a| a % CHUNK_ALIGN == 0));
        ptrs.sort();
        ptrs.dedup();
        assert_eq!(ptrs.len(), 10);
        assert_eq!(p.held_by(me), 10);
        assert_eq!(p.stats().classes[0].free, 54);
        drop(loans);
        let s = p.stats();
        assert_eq!(s.in_use(), 0);
        assert_eq!(s.classes[0].high_water, 10);
        assert_eq!(p.held_by(me), 0);
    }

    #[test]
    fn a_chunk_is_copied_word_by_word_only_by_its_owner_and_only_as_far_as_it_goes() {
        let p = pool(&PoolConfig::small());
        let me = p.register_owner().unwrap();
        let other = p.register_owner().unwrap();
        let mut loan = p.loan(me, 200).unwrap();
        let size = loan.as_mut_slice().len();
        for (i, b) in loan.as_mut_slice().iter_mut().enumerate() {
            *b = i as u8;
        }
        let id = loan.into_id();
        let mut words = vec![0u64; 5];
        p.copy_chunk(id, me, &mut words).unwrap();
        let want: Vec<u64> = (0..5u64)
            .map(|w| u64::from_le_bytes(std::array::from_fn(|k| (w * 8 + k as u64) as u8)))
            .collect();
        assert_eq!(words, want);
        assert!(matches!(
            p.copy_chunk(id, other, &mut words),
            Err(ChunkError::NotOwned { .. })
        ));
        let mut too_many = vec![0u64; size / 8 + 1];
        assert_eq!(
            p.copy_chunk(id, me, &mut too_many),
            Err(ChunkError::TooLong {
                wanted: size + 8,
                size
            })
        );
        p.release(id, me).unwrap();
        assert!(
            p.copy_chunk(id, me, &mut words).is_err(),
            "a released chunk is nobody's"
        );
    }

    #[test]
    fn picks_the_smallest_fitting_class_and_falls_back_to_larger() {
        let config = PoolConfig {
            classes: vec![
                SizeClass {
                    chunk_size: 64,
                    count: 1,
                },
                SizeClass {
                    chunk_size: 128,
                    count: 2,
                },
            ],
            max_owners: 2,
            quota: 10,
            class_share: 100,
        };
        let p = pool(&config);
        let me = p.register_owner().unwrap();
        let a = p.loan(me, 10).unwrap();
        assert_eq!(a.len(), 64);
        let b = p.loan(me, 10).unwrap();
        assert_eq!(b.len(), 128, "falls back to the next class");
        assert_eq!(
            p.loan(me, 129).unwrap_err(),
            LoanError::TooLarge {
                size: 129,
                max: 128
            }
        );
        let _c = p.loan(me, 100).unwrap();
        assert_eq!(p.loan(me, 1).unwrap_err(), LoanError::Exhausted { size: 1 });
        drop(a);
        let _d = p.loan(me, 1).unwrap();
        drop(b);
    }

    #[test]
    fn quota_is_enforced_per_owner() {
        let mut config = PoolConfig::small();
        config.quota = 3;
        let p = pool(&config);
        let a = p.register_owner().unwrap();
        let held: Vec<_> = (0..3).map(|_| p.loan(a, 1).unwrap()).collect();
        assert_eq!(
            p.loan(a, 1).unwrap_err(),
            LoanError::QuotaExceeded {
                owner: a.get(),
                quota: 3
            }
        );
        drop(held);
        assert!(p.loan(a, 1).is_ok());
    }

    #[test]
    fn a_capped_owner_holds_at_most_its_share_of_each_class_and_hand_overs_respect_it() {
        let mut config = PoolConfig {
            classes: vec![
                SizeClass {
                    chunk_size: 64,
                    count: 8,
                },
                SizeClass {
                    chunk_size: 128,
                    count: 8,
                },
            ],
            max_owners: 4,
            quota: 100,
            class_share: 25,
        };
        let p = pool(&config);
        let server = p.register_unlimited_owner().unwrap();
        let client = p.register_owner().unwrap();
        assert!(!p.is_capped(server) && p.is_capped(client));
        // A quarter of 8 is 2 per class: two small loans, then two from the larger class, then no
        // more, though the pool has chunks left.
        let loans: Vec<_> = (0..4).map(|_| p.loan(client, 10).unwrap()).collect();
        assert_eq!(p.held_by_class(client), vec![2, 2]);
        assert_eq!(
            p.loan(client, 10).unwrap_err(),
            LoanError::ShareExceeded {
                owner: client.get(),
                size: 10,
                cap: 2
            }
        );
        // The unlimited owner has no share and no quota: it can take the rest of the pool.
        let rest: Vec<_> = (0..12).map(|_| p.loan(server, 10).unwrap()).collect();
        assert_eq!(p.stats().in_use(), 16);
        drop(rest);
        // A hand-over within the share is refused past it and leaves the chunk with the sender;
        // a plain adopt goes through (and the count follows it).
        let answer = p.loan(server, 10).unwrap().into_id();
        assert_eq!(
            p.adopt_within_share(answer, server, client).unwrap_err(),
            ChunkError::ShareExceeded {
                owner: client.get(),
                chunk_size: 64,
                cap: 2
            }
        );
        assert_eq!(p.held_by_class(client), vec![2, 2]);
        let given = p.adopt(answer, server, client).unwrap();
        assert_eq!(p.held_by_class(client), vec![3, 2]);
        drop(given);
        drop(loans);
        assert_eq!(p.held_by_class(client), vec![0, 0]);
        let within = p.loan(server, 10).unwrap().into_id();
        let back = p.adopt_within_share(within, server, client).unwrap();
        assert_eq!(p.held_by_class(client), vec![1, 0]);
        // Handing it back to the server takes it off the client's count.
        let id = back.into_id();
        drop(p.adopt(id, client, server).unwrap());
        assert_eq!(p.held_by_class(client), vec![0, 0]);
        assert_eq!(p.stats().in_use(), 0);
        // A share is at least one chunk, whatever the percentage.
        config.class_share = 1;
        let p = pool(&config);
        let c = p.register_owner().unwrap();
        assert_eq!(p.stats().classes[0].share, 1);
        let one = p.loan(c, 10).unwrap();
        assert_eq!(one.len(), 64);
        assert_eq!(p.loan(c, 10).unwrap().len(), 128);
    }

    #[test]
    fn exhausted_pool_errors_at_once_or_times_out() {
        let config = PoolConfig {
            classes: vec![SizeClass {
                chunk_size: 64,
                count: 2,
            }],
            max_owners: 2,
            quota: 8,
            class_share: 100,
        };
        let p = pool(&config);
        let me = p.register_owner().unwrap();
        let _a = p.loan(me, 1).unwrap();
        let _b = p.loan(me, 1).unwrap();
        assert_eq!(p.loan(me, 1).unwrap_err(), LoanError::Exhausted { size: 1 });
        let start = Instant::now();
        let r = p.loan_until(me, 1, start + Duration::from_millis(20));
        assert_eq!(r.unwrap_err(), LoanError::TimedOut { size: 1 });
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn adopt_moves_ownership_once_and_refuses_stale_ids() {
        let p = pool(&PoolConfig::small());
        let client = p.register_owner().unwrap();
        let server = p.register_owner().unwrap();
        assert_ne!(client, server);
        let mut loan = p.loan(client, 10).unwrap();
        loan.as_mut_slice()[0] = 42;
        let id = loan.into_id();
        assert_eq!(p.held_by(client), 1);
        let got = p.adopt(id, client, server).unwrap();
        assert_eq!(got.as_slice()[0], 42);
        assert_eq!((p.held_by(client), p.held_by(server)), (0, 1));
        assert!(matches!(
            p.adopt(id, client, server),
            Err(ChunkError::NotOwned { .. })
        ));
        drop(got);
        assert!(
            matches!(p.release(id, server), Err(ChunkError::NotOwned { .. })),
            "double release refused"
        );
        // The free list is LIFO, so the same chunk comes back, under a new generation.
        let again = p.loan(client, 10).unwrap();
        assert_eq!(again.id().index(), id.index());
        assert_ne!(again.id().generation(), id.generation());
        assert!(p.adopt(id, client, server).is_err(), "an old id stays dead");
        assert!(matches!(
            p.adopt(ChunkId::from_raw(u64::MAX), client, server),
            Err(ChunkError::OutOfRange(_))
        ));
        assert!(matches!(
            p.adopt(again.id(), client, OwnerId(999)),
            Err(ChunkError::UnknownOwner(999))
        ));
    }

    #[test]
    fn adopt_from_the_holder_itself_is_refused() {
        let p = pool(&PoolConfig::small());
        let server = p.register_owner().unwrap();
        let mut writing = p.loan(server, 10).unwrap();
        let id = writing.id();
        // A descriptor naming the holder's own chunk, sent "from" the holder: no second loan.
        assert_eq!(
            p.adopt(id, server, server).unwrap_err(),
            ChunkError::SameOwner(server.get())
        );
        writing.as_mut_slice()[0] = 1;
        assert_eq!(p.held_by(server), 1);
        drop(writing);
        assert_eq!((p.held_by(server), p.stats().in_use()), (0, 0));
    }

    #[test]
    fn reclaim_returns_everything_an_owner_held() {
        let p = pool(&PoolConfig::small());
        let a = p.register_owner().unwrap();
        let b = p.register_owner().unwrap();
        let ids: Vec<_> = (0..5)
            .map(|i| {
                p.loan(a, if i % 2 == 0 { 10 } else { 1000 })
                    .unwrap()
                    .into_id()
            })
            .collect();
        let keep = p.loan(b, 10).unwrap();
        assert_eq!(p.stats().in_use(), 6);
        assert_eq!(p.reclaim(a), 5);
        assert_eq!(p.stats().in_use(), 1);
        assert_eq!(p.held_by(a), 0);
        for id in ids {
            assert!(p.release(id, a).is_err());
        }
        drop(keep);
        assert_eq!(p.stats().in_use(), 0);
    }

    const DEAD: u64 = 0xFFFF_FFFE_0000_0063; // pid 0xFFFFFFFE: no such process

    #[test]
    fn dead_owner_is_reclaimed_and_its_entry_freed() {
        let p = pool(&PoolConfig::small());
        let a = p.register_owner().unwrap();
        for _ in 0..4 {
            let _ = p.loan(a, 10).unwrap().into_id();
        }
        p.owner_entry(a)
            .unwrap()
            .token
            .store(DEAD, Ordering::Relaxed);
        assert_eq!(p.reclaim_dead(), (1, 4));
        let s = p.stats();
        assert_eq!((s.in_use(), s.owners), (0, 0));
    }

    #[test]
    fn taking_over_a_dead_owner_entry_reclaims_first() {
        let p = pool(&PoolConfig::small());
        let a = p.register_owner().unwrap();
        for _ in 0..3 {
            let _ = p.loan(a, 10).unwrap().into_id();
        }
        p.owner_entry(a)
            .unwrap()
            .token
            .store(DEAD, Ordering::Relaxed);
        let again = p.register_owner().unwrap();
        assert_eq!(again, a);
        assert_eq!(p.held_by(again), 0);
        assert_eq!(p.stats().in_use(), 0);
    }

    #[test]
    fn corrupt_free_list_is_reported_not_followed() {
        let p = pool(&PoolConfig::small());
        let me = p.register_owner().unwrap();
        // SAFETY: test-only write through the class header's atomics.
        let ch = unsafe { p.classes[0].hdr.as_ref() };
        ch.free.store(pack_head(0, 5, 1000), Ordering::Relaxed);
        assert_eq!(p.loan(me, 1).unwrap_err(), LoanError::Corrupted);
        assert_eq!(p.held_by(me), 0, "quota undone");
    }

    #[test]
    fn threads_share_a_small_class_without_double_loans() {
        let config = PoolConfig {
            classes: vec![SizeClass {
                chunk_size: 64,
                count: 3,
            }],
            max_owners: 4,
            quota: 8,
            class_share: 100,
        };
        let region = Region::heap(Pool::bytes_for(&config));
        Pool::init(&region, &config).unwrap();
        let rounds = if cfg!(miri) { 20 } else { 20_000 };
        let threads: Vec<_> = (0..3u8)
            .map(|t| {
                let region = region.clone();
                std::thread::spawn(move || {
                    let p = Pool::attach(&region).unwrap();
                    let me = p.register_owner().unwrap();
                    for _ in 0..rounds {
                        let Ok(mut loan) = p.loan(me, 64) else {
                            continue;
                        };
                        loan.as_mut_slice().fill(t);
                        std::hint::black_box(&mut loan);
                        assert!(
                            loan.as_slice().iter().all(|&b| b == t),
                            "chunk shared with another loan"
                        );
                    }
                    p.unregister_owner(me);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let p = Pool::attach(&region).unwrap();
        let s = p.stats();
        assert_eq!((s.in_use(), s.owners), (0, 0));
    }
}

/// loom models of a loan racing the settling of a gone loaner's intent. They stop a loan half-way
/// through the pool's internals, so they live here rather than in `tests/loom.rs`; `ci/loom.sh`
/// runs both.
#[cfg(all(test, shm_loom))]
mod loom_tests {
    use super::*;

    /// The chunks on class 0's free list, walked while nothing else runs.
    fn listed(p: &Pool) -> Vec<u32> {
        let class = &p.classes[0];
        // SAFETY: validated at attach; atomics only.
        let ch = unsafe { class.hdr.as_ref() };
        let mut at = ch.free.load(Ordering::Acquire) & IDX_MASK;
        let mut out = Vec::new();
        while at != 0 && out.len() <= class.count as usize {
            let i = (at - 1) as u32;
            out.push(i);
            at = u64::from(p.chunk_header(class, i).next.load(Ordering::Acquire));
        }
        out.sort_unstable();
        out
    }

    /// A loaner of owner `gone` stopped right after its pop (`after_pop`) or right after writing
    /// its intent, before its pop; a live loan and release of another owner runs while the intent
    /// is settled. Every chunk ends on the free list exactly once, unowned.
    fn model(after_pop: bool) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(move || {
            let config = PoolConfig {
                classes: vec![SizeClass {
                    chunk_size: 64,
                    count: 2,
                }],
                max_owners: 2,
                quota: 4,
                class_share: 100,
            };
            let region = Region::heap(Pool::bytes_for(&config));
            Pool::init(&region, &config).unwrap();
            let p = Pool::attach(&region).unwrap();
            let gone = p.register_owner().unwrap();
            let live = p.register_owner().unwrap();
            let slot = p.claim_intent(p.owner_entry(gone).unwrap()).unwrap();
            if after_pop {
                p.pop_free(0, slot).unwrap().unwrap();
            } else {
                // What `pop_free` writes before its exchange, for the chunk on top.
                // SAFETY: validated at attach; atomics only.
                let head = unsafe { p.classes[0].hdr.as_ref() }
                    .free
                    .load(Ordering::Acquire);
                let index = (head & IDX_MASK) as u32 - 1;
                let word = p
                    .chunk_header(&p.classes[0], index)
                    .owner
                    .load(Ordering::Acquire);
                slot.store(
                    intent_word(0, index, (word >> 32) as u32),
                    Ordering::Relaxed,
                );
            }
            let raw = slot.load(Ordering::Relaxed);
            let other = region.clone();
            let loaner = loom::thread::spawn(move || {
                let p = Pool::attach(&other).unwrap();
                drop(p.loan(live, 1).unwrap());
            });
            let other = region.clone();
            let reclaimer =
                loom::thread::spawn(move || Pool::attach(&other).unwrap().settle_intent(raw));
            loaner.join().unwrap();
            let mut settled = reclaimer.join().unwrap();
            if settled.is_none() {
                // Every walk raced the loan: a later pass, with nothing else running, settles it.
                settled = p.settle_intent(raw);
            }
            if after_pop {
                assert_eq!(settled, Some(true), "the chunk in limbo comes back");
            } else {
                assert!(settled.is_some());
            }
            assert_eq!(listed(&p), [0, 1], "each chunk on the free list once");
            assert_eq!(p.stats().classes[0].free, 2);
            for i in 0..2 {
                let w = p
                    .chunk_header(&p.classes[0], i)
                    .owner
                    .load(Ordering::Acquire);
                assert_eq!(w as u32, 0, "chunk {i} still owned");
            }
        });
    }

    #[test]
    fn a_loan_racing_the_settling_of_an_intent_left_after_a_pop() {
        model(true);
    }

    #[test]
    fn a_loan_racing_the_settling_of_an_intent_left_before_a_pop() {
        model(false);
    }
}
