//! Memory providers: where shared structures live.
//!
//! Every structure of this crate is placed in a [`Region`]: a byte range of some [`Memory`]. The
//! shared-memory provider is [`Segment`](crate::Segment); [`HeapMemory`] is the in-process provider
//! used by single-process users, by miri and by loom.
//!
//! # Examples
//!
//! One block of memory holding a ring and a pool side by side, each in a region of its own:
//!
//! ```
//! use std::sync::Arc;
//! use shm_ring::memory::{HeapMemory, Region, REGION_ALIGN};
//! use shm_ring::pool::{Pool, PoolConfig};
//! use shm_ring::spsc;
//!
//! let config = PoolConfig::small();
//! let ring_len = spsc::bytes_for::<u64>(64).next_multiple_of(REGION_ALIGN);
//! let pool_len = Pool::bytes_for(&config);
//! let block = Region::new(Arc::new(HeapMemory::new(ring_len + pool_len)));
//!
//! let ring = block.slice(0, ring_len)?;
//! let pool = block.slice(ring_len, pool_len)?;
//! spsc::init::<u64>(&ring, 64)?;
//! Pool::init(&pool, &config)?;
//! assert_eq!(pool.offset(), ring.offset() + ring.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment every [`Memory`] base address has (one page).
///
/// # Examples
///
/// ```
/// use shm_ring::memory::{HeapMemory, Memory, MEMORY_ALIGN};
///
/// let mem = HeapMemory::new(100);
/// assert_eq!(mem.base().as_ptr() as usize % MEMORY_ALIGN, 0);
/// assert_eq!(mem.len(), MEMORY_ALIGN); // never less than one page
/// ```
pub const MEMORY_ALIGN: usize = 4096;

/// Alignment every region handed to a structure must have (two cache lines, the `CachePadded` size).
///
/// # Examples
///
/// ```
/// use shm_ring::memory::{Region, REGION_ALIGN};
///
/// let region = Region::heap(4096);
/// assert!(region.slice(2 * REGION_ALIGN, 256).is_ok());
/// assert!(region.slice(REGION_ALIGN / 2, 256).is_err()); // misaligned
/// ```
pub const REGION_ALIGN: usize = 128;

/// A block of memory that shared structures can be built in.
///
/// # Safety
///
/// Implementors guarantee that [`base`](Memory::base) is aligned to [`MEMORY_ALIGN`], valid for reads
/// and writes of [`len`](Memory::len) bytes, and never moves or shrinks while the value lives. The
/// bytes may be written by other threads or processes at any time: users reach them only through
/// atomics and through ranges they own by protocol, never as plain references to shared bytes.
///
/// # Examples
///
/// A provider over an ordinary heap allocation (what [`HeapMemory`] does, in short):
///
/// ```
/// # use std::{cell::UnsafeCell, ptr::NonNull, sync::Arc};
/// use shm_ring::{memory::Memory, spsc, Region};
///
/// #[derive(Debug)]
/// #[repr(C, align(4096))]
/// struct Pages(UnsafeCell<[u8; 8192]>);
///
/// // SAFETY: the bytes are reached only through the structures built in them, which
/// // synchronise with atomics (the contract above).
/// unsafe impl Sync for Pages {}
///
/// // SAFETY: a box never moves its contents: one 4096-aligned block (repr), 8192 bytes,
/// // writable through the UnsafeCell, until the box drops.
/// unsafe impl Memory for Box<Pages> {
///     fn base(&self) -> NonNull<u8> {
///         NonNull::new(self.0.get().cast()).unwrap()
///     }
///     fn len(&self) -> usize {
///         8192
///     }
/// }
///
/// let region = Region::new(Arc::new(Box::new(Pages(UnsafeCell::new([0; 8192])))));
/// spsc::init::<u64>(&region, 64)?;
/// let mut tx = spsc::Producer::<u64>::attach(&region)?;
/// tx.push(7).unwrap();
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
pub unsafe trait Memory: Send + Sync + fmt::Debug {
    /// Start of the block.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::memory::{HeapMemory, Memory, MEMORY_ALIGN};
    ///
    /// let mem = HeapMemory::new(8192);
    /// assert_eq!(mem.base().as_ptr() as usize % MEMORY_ALIGN, 0);
    /// ```
    fn base(&self) -> NonNull<u8>;
    /// Length of the block in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::memory::{HeapMemory, Memory};
    ///
    /// assert_eq!(HeapMemory::new(10_000).len(), 10_000);
    /// ```
    fn len(&self) -> usize;
    /// Whether the block is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::memory::{HeapMemory, Memory};
    ///
    /// assert!(!HeapMemory::new(0).is_empty()); // at least one page
    /// ```
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Zeroed, page-aligned heap memory: the in-process [`Memory`].
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use shm_ring::memory::HeapMemory;
/// use shm_ring::pool::{Pool, PoolConfig};
/// use shm_ring::Region;
///
/// let config = PoolConfig::small();
/// let region = Region::new(Arc::new(HeapMemory::new(Pool::bytes_for(&config))));
/// Pool::init(&region, &config)?;
/// let pool = Pool::attach(&region)?;
/// assert_eq!(pool.stats().in_use(), 0);
/// # Ok::<(), shm_ring::pool::PoolAttachError>(())
/// ```
pub struct HeapMemory {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl fmt::Debug for HeapMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapMemory")
            .field("len", &self.layout.size())
            .finish()
    }
}

// SAFETY: HeapMemory owns its allocation; concurrent access to the bytes is governed by the
// structures built in it, which use atomics and ownership protocols exactly as in shared memory.
unsafe impl Send for HeapMemory {}
// SAFETY: as for Send: &HeapMemory only hands out the base pointer and the length.
unsafe impl Sync for HeapMemory {}

impl HeapMemory {
    /// Allocates `len` zeroed bytes (at least one page).
    ///
    /// # Panics
    ///
    /// Panics if `len` overflows a layout, and aborts if the allocation fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::memory::{HeapMemory, Memory, MEMORY_ALIGN};
    ///
    /// assert_eq!(HeapMemory::new(10_000).len(), 10_000);
    /// assert_eq!(HeapMemory::new(1).len(), MEMORY_ALIGN); // at least one page
    /// ```
    pub fn new(len: usize) -> HeapMemory {
        let layout = Layout::from_size_align(len.max(MEMORY_ALIGN), MEMORY_ALIGN)
            .expect("heap memory size overflows");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapMemory { ptr, layout }
    }
}

impl Drop for HeapMemory {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated in `new` with exactly this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the allocation is MEMORY_ALIGN-aligned, `layout.size()` bytes long and owned until drop.
unsafe impl Memory for HeapMemory {
    fn base(&self) -> NonNull<u8> {
        self.ptr
    }
    fn len(&self) -> usize {
        self.layout.size()
    }
}

/// A bounds-checked byte range of a [`Memory`], keeping the memory alive.
///
/// # Examples
///
/// ```
/// use shm_ring::{spsc, Region};
///
/// let region = Region::heap(spsc::bytes_for::<u32>(16));
/// spsc::init::<u32>(&region, 16)?;
/// let mut tx = spsc::Producer::<u32>::attach(&region)?;
/// let mut rx = spsc::Consumer::<u32>::attach(&region)?;
/// drop(region); // the handles keep the memory alive
/// tx.push(5).unwrap();
/// assert_eq!(rx.pop(), Ok(5));
/// # Ok::<(), shm_ring::AttachError>(())
/// ```
#[derive(Clone)]
pub struct Region {
    mem: Arc<dyn Memory>,
    offset: usize,
    len: usize,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("mem", &self.mem)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// A region that does not fit its memory or is misaligned.
///
/// # Examples
///
/// ```
/// use shm_ring::{Region, RegionError};
///
/// let region = Region::heap(4096);
/// let err = region.slice(4096, 128).unwrap_err();
/// assert_eq!(err, RegionError { offset: 4096, len: 128, available: 4096 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "region {offset}+{len} does not fit in {available} bytes or is not {REGION_ALIGN}-byte aligned"
)]
pub struct RegionError {
    /// Requested offset.
    pub offset: usize,
    /// Requested length.
    pub len: usize,
    /// Bytes available.
    pub available: usize,
}

impl Region {
    /// The whole of `mem`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use shm_ring::{memory::HeapMemory, Region};
    ///
    /// let region = Region::new(Arc::new(HeapMemory::new(1 << 16)));
    /// assert_eq!((region.offset(), region.len()), (0, 1 << 16));
    /// ```
    pub fn new(mem: Arc<dyn Memory>) -> Region {
        let len = mem.len();
        Region {
            mem,
            offset: 0,
            len,
        }
    }

    /// A fresh heap-backed region of `len` bytes (for in-process use and tests).
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{mpmc, Region};
    ///
    /// let region = Region::heap(mpmc::bytes_for::<u64>(32, 4));
    /// mpmc::init::<u64>(&region, 32, 4)?;
    /// let rx = mpmc::Consumer::<u64>::attach(&region)?;
    /// assert!(rx.is_empty());
    /// # Ok::<(), shm_ring::AttachError>(())
    /// ```
    pub fn heap(len: usize) -> Region {
        Region::new(Arc::new(HeapMemory::new(len)))
    }

    /// The sub-range `offset .. offset + len` of this region; `offset` must be a multiple of
    /// [`REGION_ALIGN`].
    ///
    /// # Errors
    ///
    /// [`RegionError`] when the range does not fit or is misaligned.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::Region;
    /// # use shm_ring::RegionError;
    ///
    /// let region = Region::heap(8192);
    /// let second_half = region.slice(4096, 4096)?;
    /// assert_eq!((second_half.offset(), second_half.len()), (4096, 4096));
    /// assert!(region.slice(4096, 4097).is_err()); // past the end
    /// assert!(region.slice(100, 64).is_err()); // not a multiple of REGION_ALIGN
    /// # Ok::<(), RegionError>(())
    /// ```
    pub fn slice(&self, offset: usize, len: usize) -> Result<Region, RegionError> {
        let err = RegionError {
            offset,
            len,
            available: self.len,
        };
        let end = offset.checked_add(len).ok_or(err)?;
        if end > self.len || offset % REGION_ALIGN != 0 {
            return Err(err);
        }
        Ok(Region {
            mem: Arc::clone(&self.mem),
            offset: self.offset + offset,
            len,
        })
    }

    /// Start of the region.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::Region;
    ///
    /// let region = Region::heap(8192);
    /// let tail = region.slice(4096, 4096)?;
    /// assert_eq!(tail.as_ptr().as_ptr(), region.as_ptr().as_ptr().wrapping_add(4096));
    /// # Ok::<(), shm_ring::RegionError>(())
    /// ```
    pub fn as_ptr(&self) -> NonNull<u8> {
        // SAFETY: offset <= mem.len() was checked when the region was built, so the result stays
        // inside (or one past) the allocation and cannot be null.
        unsafe { NonNull::new_unchecked(self.mem.base().as_ptr().add(self.offset)) }
    }

    /// Length in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::Region;
    ///
    /// let region = Region::heap(8192);
    /// assert_eq!(region.len(), 8192);
    /// assert_eq!(region.slice(0, 1000)?.len(), 1000);
    /// # Ok::<(), shm_ring::RegionError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::Region;
    ///
    /// let region = Region::heap(4096);
    /// assert!(!region.is_empty());
    /// assert!(region.slice(128, 0)?.is_empty());
    /// # Ok::<(), shm_ring::RegionError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of this region from the start of its memory.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::Region;
    ///
    /// let region = Region::heap(8192);
    /// // Offsets count from the start of the memory, not of the parent region:
    /// let inner = region.slice(256, 4096)?.slice(128, 64)?;
    /// assert_eq!(inner.offset(), 384);
    /// # Ok::<(), shm_ring::RegionError>(())
    /// ```
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Pointer to a `T` at `offset` inside the region, checked for bounds and alignment.
    ///
    /// # Examples
    ///
    /// A counter of one's own in a region:
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use shm_ring::Region;
    ///
    /// let region = Region::heap(4096);
    /// let slot = region.ptr_at::<AtomicU64>(64).unwrap();
    /// // SAFETY: in bounds and aligned (checked by ptr_at), not yet seen by anyone else.
    /// unsafe { slot.as_ptr().write(AtomicU64::new(0)) };
    /// // SAFETY: initialised just above, and the region outlives the reference.
    /// let counter = unsafe { slot.as_ref() };
    /// counter.fetch_add(1, Ordering::Relaxed);
    /// assert_eq!(counter.load(Ordering::Relaxed), 1);
    ///
    /// assert!(region.ptr_at::<AtomicU64>(4).is_none()); // misaligned
    /// assert!(region.ptr_at::<AtomicU64>(4092).is_none()); // out of bounds
    /// ```
    pub fn ptr_at<T>(&self, offset: usize) -> Option<NonNull<T>> {
        let end = offset.checked_add(std::mem::size_of::<T>())?;
        if end > self.len || (self.offset + offset) % std::mem::align_of::<T>() != 0 {
            return None;
        }
        // SAFETY: in bounds of the region (checked above), hence of the memory.
        Some(unsafe { NonNull::new_unchecked(self.as_ptr().as_ptr().add(offset).cast()) })
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub(crate) const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}
