//! Shared-memory building blocks for cross-process IPC: named segments, lock-free SPSC and MPMC rings
//! of POD entries, a slab pool of chunks, and wait strategies. Knows nothing about inference.
//!
//! # What it guarantees
//!
//! * **Nothing in shared memory is trusted.** Every size, index, offset and id read from shared memory
//!   is copied into the handle once and bounds-checked; ring indices are masked before every slot
//!   access. A buggy peer can make an operation fail with a `Corrupted` error; it cannot make this
//!   crate read or write outside its region.
//! * **Offsets, never pointers**, in shared memory. Headers are `#[repr(C)]`, made of atomics only,
//!   with const-asserted layouts and a magic number published last with Release.
//! * **Roles and ownership are recorded in shared memory** with the holder's [`ProcessToken`] (pid +
//!   start time): an SPSC role, an MPMC participant slot, a pool owner entry. When the holder dies
//!   (even by `kill -9`), the next claimant takes over after cleaning up: no ring stays blocked, no
//!   chunk leaks.
//! * **No syscall on the hot path.** A producer wakes a parked consumer (futex) only if the consumer
//!   announced it parked; the announcement is a Dekker handshake, so no wake-up is lost.
//!
//! # Layers
//!
//! * [`Memory`] providers: [`Segment`] (a file in `/dev/shm`, mapped) and [`HeapMemory`] (for
//!   in-process use, miri and loom). A [`Region`] is a checked byte range of one.
//! * Structures placed in regions: [`spsc`], [`mpmc`], [`pool`]; the [`wait`] protocol they park on.
//!
//! # Example: two processes
//!
//! ```no_run
//! use std::sync::Arc;
//! use shm_ring::{spsc, CreateOptions, Region, Segment};
//!
//! // Process A (creates the segment and the ring, then produces):
//! let seg = Segment::create("demo", &CreateOptions::new(1 << 20))?;
//! let region = Region::new(Arc::new(seg));
//! spsc::init::<u64>(&region, 1024)?;
//! let mut tx = spsc::Producer::<u64>::attach(&region)?;
//! tx.push(42).unwrap();
//!
//! // Process B (opens it by name and consumes):
//! let region = Region::new(Arc::new(Segment::open("demo")?));
//! let mut rx = spsc::Consumer::<u64>::attach(&region)?;
//! assert_eq!(rx.pop(), Ok(42));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
pub mod memory;
pub mod mpmc;
pub mod pool;
pub mod process;
pub mod segment;
pub mod spsc;
mod sync;
pub mod wait;

pub use error::{AttachError, PopError, PushError};
pub use memory::{HeapMemory, Memory, Region, RegionError};
pub use process::{Liveness, ProcessToken};
pub use segment::{
    CreateError, CreateOptions, OpenError, RemoveError, Segment, SegmentOpenOptions,
};
pub use wait::{WaitStrategy, WaitTimedOut, WaitWord};
