//! Memory providers: where shared structures live.
//!
//! Every structure of this crate is placed in a [`Region`]: a byte range of some [`Memory`]. The
//! shared-memory provider is [`Segment`](crate::Segment); [`HeapMemory`] is the in-process provider
//! used by single-process users, by miri and by loom.

use std::alloc::Layout;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment every [`Memory`] base address has (one page).
pub const MEMORY_ALIGN: usize = 4096;

/// Alignment every region handed to a structure must have (two cache lines, the `CachePadded` size).
pub const REGION_ALIGN: usize = 128;

/// A block of memory that shared structures can be built in.
///
/// # Safety
///
/// Implementors guarantee that [`base`](Memory::base) is aligned to [`MEMORY_ALIGN`], valid for reads
/// and writes of [`len`](Memory::len) bytes, and never moves or shrinks while the value lives. The
/// bytes may be written by other threads or processes at any time: users reach them only through
/// atomics and through ranges they own by protocol, never as plain references to shared bytes.
pub unsafe trait Memory: Send + Sync + fmt::Debug {
    /// Start of the block.
    fn base(&self) -> NonNull<u8>;
    /// Length of the block in bytes.
    fn len(&self) -> usize;
    /// Whether the block is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Zeroed, page-aligned heap memory: the in-process [`Memory`].
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
    pub fn new(mem: Arc<dyn Memory>) -> Region {
        let len = mem.len();
        Region {
            mem,
            offset: 0,
            len,
        }
    }

    /// A fresh heap-backed region of `len` bytes (for in-process use and tests).
    pub fn heap(len: usize) -> Region {
        Region::new(Arc::new(HeapMemory::new(len)))
    }

    /// The sub-range `offset .. offset + len` of this region; `offset` must be a multiple of
    /// [`REGION_ALIGN`].
    ///
    /// # Errors
    ///
    /// [`RegionError`] when the range does not fit or is misaligned.
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
    pub fn as_ptr(&self) -> NonNull<u8> {
        // SAFETY: offset <= mem.len() was checked when the region was built, so the result stays
        // inside (or one past) the allocation and cannot be null.
        unsafe { NonNull::new_unchecked(self.mem.base().as_ptr().add(self.offset)) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of this region from the start of its memory.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Pointer to a `T` at `offset` inside the region, checked for bounds and alignment.
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
