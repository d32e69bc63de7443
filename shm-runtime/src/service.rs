//! The service segment: one named shared-memory segment per service, laid out as
//!
//! ```text
//! [ServiceHeader][ModelEntry x MAX_MODELS][LaneHeader x lanes][ClientEntry x max_clients]
//! [Stats][rings: per client, 1 response ring + 1 request ring per lane][pool]
//! ```
//!
//! Everything is placed at offsets computed from the header's sizes, which openers copy once and
//! check against the segment length. Every word is an atomic; names are stored as atomics too.
//!
//! # Safety (trust model)
//!
//! Any process of the same user may write any byte of the segment at any time. The server and the
//! clients read sizes once, bounds-check every index and never follow a pointer stored here.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use shm_ring::pool::{Pool, PoolConfig};
use shm_ring::wait::WaitWord;
use shm_ring::{mpmc, Region, Segment};

use crate::metrics::LaneMetrics;
use crate::protocol::{DescriptorWords, PROTOCOL_VERSION};

/// Magic of a service header ("SHMS").
pub const SERVICE_MAGIC: u32 = u32::from_le_bytes(*b"SHMS");
/// Mode of a service's segment file: the server creates it with exactly this mode and clients and
/// observers allow no more when they open it (`SegmentOpenOptions::allowed_mode`), so a segment that
/// another user created first under the service's name, or one whose mode was widened, is refused.
pub const SEGMENT_MODE: u32 = 0o600;
/// Most models one service serves.
pub const MAX_MODELS: usize = 32;
/// Most clients one service accepts at once (one bit each in the active mask).
pub const MAX_CLIENTS: usize = 64;
/// Longest model name, bytes.
pub const MAX_NAME: usize = 56;
/// Participants per ring: the client's threads and the server's workers.
pub const RING_PARTICIPANTS: usize = 16;

/// Server state in the header.
pub const STATE_STARTING: u32 = 0;
/// Accepting requests.
pub const STATE_RUNNING: u32 = 1;
/// Draining: new requests are answered `ShuttingDown`.
pub const STATE_DRAINING: u32 = 2;
/// Stopped.
pub const STATE_STOPPED: u32 = 3;

/// Lane states ([`LaneHeader::state`]): serving requests (the initial, zeroed value).
pub const LANE_SERVING: u32 = 0;
/// The lane's backend panicked more often than its restarts allow: every request to it is
/// answered with a `Backend` error at once.
pub const LANE_FAILED: u32 = 1;

/// Model states: loaded, its warm-up inference not done yet.
pub const MODEL_WARMING: u32 = 0;
/// Warmed up (one inference answered) and serving.
pub const MODEL_READY: u32 = 1;
/// Its warm-up inference failed.
pub const MODEL_FAILED: u32 = 2;

/// This crate's version as [`ServiceHeader::server_version`] holds it.
pub const fn packed_version() -> u32 {
    const fn num(s: &str) -> u32 {
        let b = s.as_bytes();
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            n = n * 10 + (b[i] - b'0') as u32;
            i += 1;
        }
        n
    }
    (num(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
        | (num(env!("CARGO_PKG_VERSION_MINOR")) << 8)
        | num(env!("CARGO_PKG_VERSION_PATCH"))
}

/// Client slot states.
pub const CLIENT_FREE: u32 = 0;
/// Attached and serving.
pub const CLIENT_ACTIVE: u32 = 1;
/// Disconnected by the server (it broke its rings); the slot stays its holder's until it closes
/// or dies, and the reason is in [`ClientEntry::ejected`].
pub const CLIENT_EJECTED: u32 = 2;

/// Why the server disconnected a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EjectReason {
    /// Its request ring's indices contradict its slots.
    CorruptRequestRing = 1,
    /// Its response ring's indices contradict its slots.
    CorruptResponseRing = 2,
}

impl EjectReason {
    /// The reason with value `v`, if any.
    pub fn from_u32(v: u32) -> Option<EjectReason> {
        match v {
            1 => Some(EjectReason::CorruptRequestRing),
            2 => Some(EjectReason::CorruptResponseRing),
            _ => None,
        }
    }
}

impl std::fmt::Display for EjectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EjectReason::CorruptRequestRing => {
                "its request ring's head and tail were written with impossible values"
            }
            EjectReason::CorruptResponseRing => {
                "its response ring's head and tail were written with impossible values"
            }
        })
    }
}

/// The header at offset 0 of the user area.
#[repr(C)]
#[derive(Debug)]
pub struct ServiceHeader {
    /// [`SERVICE_MAGIC`], stored last at creation.
    pub magic: AtomicU32,
    /// [`PROTOCOL_VERSION`].
    pub protocol: AtomicU32,
    /// Client slots.
    pub max_clients: AtomicU32,
    /// Lanes (one per model).
    pub lanes: AtomicU32,
    /// Models in the model table.
    pub models: AtomicU32,
    /// Entries per ring.
    pub ring_capacity: AtomicU32,
    /// STATE_*.
    pub state: AtomicU32,
    /// Server pid.
    pub server_pid: AtomicU32,
    /// Bytes of one ring.
    pub ring_bytes: AtomicU64,
    /// Offset of the pool.
    pub pool_offset: AtomicU64,
    /// Bytes of the pool.
    pub pool_bytes: AtomicU64,
    /// Incremented by the server's housekeeper on every tick (about every 10 ms).
    pub heartbeat: AtomicU64,
    /// Most requests one client may have in flight.
    pub max_inflight: AtomicU32,
    /// Padding.
    pub _pad: AtomicU32,
    /// Bumped whenever a client slot changes state (connect, disconnect, reaped): workers re-read
    /// the client table only when it moves.
    pub clients_gen: AtomicU64,
    /// When the server started, milliseconds since the Unix epoch.
    pub started_unix_ms: AtomicU64,
    /// The server's crate version: major << 16 | minor << 8 | patch.
    pub server_version: AtomicU32,
    /// Padding.
    pub _pad2: AtomicU32,
    /// Bit i set: client slot i is active.
    pub active: CachePadded<AtomicU64>,
}

/// One model of the model table.
#[repr(C)]
#[derive(Debug)]
pub struct ModelEntry {
    /// Name length in bytes.
    pub name_len: AtomicU32,
    /// Lane serving it.
    pub lane: AtomicU32,
    /// Bit per [`Task`](crate::protocol::Task) the model accepts.
    pub tasks: AtomicU32,
    /// MODEL_* (warming, ready, failed to warm up).
    pub state: AtomicU32,
    /// Name bytes, little-endian packed.
    pub name: [AtomicU64; MAX_NAME / 8],
}

/// Per-lane shared state: the doorbell clients ring after pushing a request, and counters. Jobs
/// queued and running are derived (`accepted - started`, `started - completed`), so a job costs the
/// worker three counter updates, not five.
#[repr(C)]
#[derive(Debug)]
pub struct LaneHeader {
    /// Workers of the lane park here when every request ring is empty.
    pub doorbell: CachePadded<WaitWord>,
    /// Jobs accepted into the lane's schedulers.
    pub accepted: AtomicU64,
    /// Jobs taken out of a scheduler (to run, or to be answered without running, or dropped).
    pub started: AtomicU64,
    /// Jobs finished (answered or dropped).
    pub completed: AtomicU64,
    /// Backend calls that ran two or more requests together (dynamic batching).
    pub batches: AtomicU64,
    /// Requests run in those batches.
    pub batched: AtomicU64,
    /// Panics of the lane's backend that were contained (each ended the requests its call held
    /// with a `Backend` error).
    pub panics: AtomicU64,
    /// New instances of the lane's backend loaded after a panic.
    pub restarts: AtomicU64,
    /// LANE_* (protocol version 5).
    pub state: AtomicU32,
    /// Padding.
    pub _pad: AtomicU32,
}

impl LaneHeader {
    /// Jobs waiting in the lane's schedulers now.
    pub fn queued(&self) -> u64 {
        let started = self.started.load(Ordering::Acquire);
        self.accepted
            .load(Ordering::Acquire)
            .saturating_sub(started)
    }

    /// Jobs running now.
    pub fn running(&self) -> u64 {
        let completed = self.completed.load(Ordering::Acquire);
        self.started
            .load(Ordering::Acquire)
            .saturating_sub(completed)
    }
}

/// One client slot.
#[repr(C)]
#[derive(Debug)]
pub struct ClientEntry {
    /// Process token of the client (pid + start time), 0 when free.
    pub token: AtomicU64,
    /// Pool owner id of the client.
    pub owner: AtomicU32,
    /// Bumped on every connect.
    pub epoch: AtomicU32,
    /// CLIENT_*.
    pub state: AtomicU32,
    /// Requests accepted and not yet answered finally.
    pub inflight: AtomicU32,
    /// Requests the server accepted from this client.
    pub requests: AtomicU64,
    /// Error answers sent to this client.
    pub errors: AtomicU64,
    /// Why the server disconnected this client ([`EjectReason`] as u32), set before the state
    /// becomes [`CLIENT_EJECTED`].
    pub ejected: AtomicU32,
    /// Padding to 64 bytes.
    pub _pad32: AtomicU32,
    /// Padding to 64 bytes.
    pub _pad: [AtomicU64; 2],
}

/// Service-wide counters.
#[repr(C)]
#[derive(Debug)]
pub struct Stats {
    /// Requests accepted.
    pub requests: AtomicU64,
    /// Successful final answers.
    pub ok: AtomicU64,
    /// Error answers by [`ErrorCode`](crate::protocol::ErrorCode) (index = code).
    pub errors: [AtomicU64; 16],
    /// Queue-to-answer latency histogram: bucket i counts answers in [2^i, 2^(i+1)) microseconds.
    pub latency_us_log2: [AtomicU64; 32],
    /// Clients whose death the server noticed and cleaned up.
    pub clients_reaped: AtomicU64,
    /// Chunks returned by the housekeeper (dead or vacant owners).
    pub chunks_reclaimed: AtomicU64,
    /// Clients the server disconnected because they broke their rings.
    pub clients_ejected: AtomicU64,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<ServiceHeader>() == 256);
    assert!(std::mem::size_of::<ModelEntry>() == 72);
    assert!(std::mem::size_of::<ClientEntry>() == 64);
    assert!(std::mem::offset_of!(ServiceHeader, ring_bytes) == 32);
    assert!(std::mem::offset_of!(ServiceHeader, server_version) == 88);
    // The doorbell's line, then the counters: the panic counters and the state fit in the
    // lane's 256 bytes (the layout rounds each lane header up to 128 bytes).
    assert!(std::mem::size_of::<LaneHeader>() == 256);
    assert!(std::mem::offset_of!(LaneHeader, panics) == 168);
    assert!(std::mem::offset_of!(LaneHeader, state) == 184);
};

const ALIGN: usize = 128;

fn up(x: usize) -> usize {
    (x + ALIGN - 1) & !(ALIGN - 1)
}

/// Offsets of every part, computed from the sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Client slots.
    pub max_clients: usize,
    /// Lanes.
    pub lanes: usize,
    /// Entries per ring.
    pub ring_capacity: usize,
    /// Offset of the model table.
    pub models: usize,
    /// Offset of the lane headers.
    pub lane_headers: usize,
    /// Offset of the lanes' metrics.
    pub lane_metrics: usize,
    /// Offset of the client table.
    pub clients: usize,
    /// Offset of the stats.
    pub stats: usize,
    /// Offset of the first ring.
    pub rings: usize,
    /// Bytes of one ring.
    pub ring_bytes: usize,
    /// Offset of the pool.
    pub pool: usize,
    /// Bytes of the pool.
    pub pool_bytes: usize,
    /// Total bytes.
    pub total: usize,
}

impl Layout {
    /// The layout for these sizes.
    pub fn new(
        max_clients: usize,
        lanes: usize,
        ring_capacity: usize,
        pool: &PoolConfig,
    ) -> Layout {
        let models = up(std::mem::size_of::<ServiceHeader>());
        let lane_headers = up(models + MAX_MODELS * std::mem::size_of::<ModelEntry>());
        let lane_metrics = up(lane_headers + lanes * up(std::mem::size_of::<LaneHeader>()));
        let clients = up(lane_metrics + lanes * up(std::mem::size_of::<LaneMetrics>()));
        let stats = up(clients + max_clients * std::mem::size_of::<ClientEntry>());
        let rings = up(stats + std::mem::size_of::<Stats>());
        let ring_bytes = up(mpmc::bytes_for::<DescriptorWords>(
            ring_capacity,
            RING_PARTICIPANTS,
        ));
        let pool_off = up(rings + max_clients * (lanes + 1) * ring_bytes);
        let pool_bytes = Pool::bytes_for(pool);
        Layout {
            max_clients,
            lanes,
            ring_capacity,
            models,
            lane_headers,
            lane_metrics,
            clients,
            stats,
            rings,
            ring_bytes,
            pool: pool_off,
            pool_bytes,
            total: up(pool_off + pool_bytes),
        }
    }

    /// Reads the layout from the service header at the start of `region` (a service segment's user
    /// area), copying every size once, and checks that every part it names lies inside `region`.
    /// [`Service::attach`] does this; it takes any region so that it also runs on heap memory.
    ///
    /// # Errors
    ///
    /// [`LayoutError`] when the header is missing, of another version, or inconsistent.
    pub fn read(region: &Region) -> Result<Layout, LayoutError> {
        let h = region
            .ptr_at::<ServiceHeader>(0)
            .ok_or_else(|| LayoutError::Corrupt("segment smaller than the header".into()))?;
        // SAFETY: in bounds and aligned (ptr_at); atomics only; lives as long as `region`.
        let h = unsafe { h.as_ref() };
        // SYNC(magic): Acquire pairs with the Release store in `Service::create`.
        if h.magic.load(Ordering::Acquire) != SERVICE_MAGIC {
            return Err(LayoutError::NotReady);
        }
        let protocol = h.protocol.load(Ordering::Relaxed);
        if protocol != PROTOCOL_VERSION {
            return Err(LayoutError::Version {
                found: protocol,
                expected: PROTOCOL_VERSION,
            });
        }
        let max_clients = h.max_clients.load(Ordering::Relaxed) as usize;
        let lanes = h.lanes.load(Ordering::Relaxed) as usize;
        let cap = h.ring_capacity.load(Ordering::Relaxed) as usize;
        if max_clients == 0 || max_clients > MAX_CLIENTS || lanes == 0 || lanes > MAX_MODELS {
            return Err(LayoutError::Corrupt(format!(
                "{max_clients} clients, {lanes} lanes"
            )));
        }
        if cap == 0 || cap > (1 << 20) || !cap.is_power_of_two() {
            return Err(LayoutError::Corrupt(format!("ring capacity {cap}")));
        }
        let pool_bytes = h.pool_bytes.load(Ordering::Relaxed) as usize;
        let pool_off = h.pool_offset.load(Ordering::Relaxed) as usize;
        let base = Layout::new(max_clients, lanes, cap, &PoolConfig::small());
        let layout = Layout {
            pool: base.pool,
            pool_bytes,
            total: base.pool.saturating_add(pool_bytes),
            ..base
        };
        if pool_off != layout.pool
            || h.ring_bytes.load(Ordering::Relaxed) as usize != layout.ring_bytes
            || layout.total > region.len()
        {
            return Err(LayoutError::Corrupt(format!(
                "layout does not fit: pool at {pool_off} (expected {}), {} bytes needed, {} present",
                layout.pool,
                layout.total,
                region.len()
            )));
        }
        Ok(layout)
    }

    /// Offset of client `c`'s response ring.
    pub fn response_ring(&self, c: usize) -> usize {
        self.rings + c * (self.lanes + 1) * self.ring_bytes
    }

    /// Offset of client `c`'s request ring for lane `l`.
    pub fn request_ring(&self, c: usize, l: usize) -> usize {
        self.response_ring(c) + (1 + l) * self.ring_bytes
    }
}

/// Why a service segment could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The header says something impossible or does not fit the segment.
    #[error("the service segment is corrupt: {0}")]
    Corrupt(String),
    /// Not initialised yet.
    #[error("the service segment is not initialised yet")]
    NotReady,
    /// Another protocol version.
    #[error("the service speaks protocol {found}, this library {expected}")]
    Version {
        /// In the segment.
        found: u32,
        /// Ours.
        expected: u32,
    },
}

/// An attached service segment: the validated layout and typed access to its parts.
#[derive(Debug, Clone)]
pub struct Service {
    /// The whole user area.
    pub region: Region,
    /// The segment (for liveness of its creator).
    pub segment: Arc<Segment>,
    /// Validated layout.
    pub layout: Layout,
}

impl Service {
    /// Opens service `name` to observe it (counters, clients), also when its server has died.
    ///
    /// # Errors
    ///
    /// When there is no such segment or it is not a service of this protocol.
    pub fn open(name: &str) -> Result<Service, String> {
        let seg = Segment::open_with(
            name,
            &shm_ring::SegmentOpenOptions {
                allow_stale: true,
                allowed_mode: SEGMENT_MODE,
                ..shm_ring::SegmentOpenOptions::default()
            },
        )
        .map_err(|e| format!("opening service {name:?}: {e}"))?;
        Service::attach(Arc::new(seg)).map_err(|e| format!("reading service {name:?}: {e}"))
    }

    /// Wraps a segment whose header is initialised, validating every size against its length.
    ///
    /// # Errors
    ///
    /// [`LayoutError`] when the header is missing, of another version, or inconsistent.
    pub fn attach(segment: Arc<Segment>) -> Result<Service, LayoutError> {
        let region = Region::new(segment.clone());
        let layout = Layout::read(&region)?;
        Ok(Service {
            region,
            segment,
            layout,
        })
    }

    /// The header.
    pub fn header(&self) -> &ServiceHeader {
        // SAFETY: validated in `attach`/`create`; atomics only; the region outlives the borrow.
        unsafe {
            self.region
                .ptr_at::<ServiceHeader>(0)
                .expect("checked")
                .as_ref()
        }
    }

    fn at<T>(&self, offset: usize) -> &T {
        // SAFETY: every caller passes an offset inside the validated layout, ALIGN-aligned or a
        // multiple of size_of::<T>() past such an offset; T is made of atomics only.
        unsafe {
            self.region
                .ptr_at::<T>(offset)
                .expect("offset inside the layout")
                .as_ref()
        }
    }

    /// Model entry `i` (< MAX_MODELS).
    pub fn model(&self, i: usize) -> &ModelEntry {
        assert!(i < MAX_MODELS);
        self.at(self.layout.models + i * std::mem::size_of::<ModelEntry>())
    }

    /// Lane header `l` (< lanes).
    pub fn lane(&self, l: usize) -> &LaneHeader {
        assert!(l < self.layout.lanes);
        self.at(self.layout.lane_headers + l * up(std::mem::size_of::<LaneHeader>()))
    }

    /// The metrics of lane `l` (< lanes).
    pub fn lane_metrics(&self, l: usize) -> &LaneMetrics {
        assert!(l < self.layout.lanes);
        self.at(self.layout.lane_metrics + l * up(std::mem::size_of::<LaneMetrics>()))
    }

    /// Client entry `c` (< max_clients).
    pub fn client(&self, c: usize) -> &ClientEntry {
        assert!(c < self.layout.max_clients);
        self.at(self.layout.clients + c * std::mem::size_of::<ClientEntry>())
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        self.at(self.layout.stats)
    }

    /// Region of client `c`'s response ring.
    pub fn response_ring(&self, c: usize) -> Region {
        self.region
            .slice(self.layout.response_ring(c), self.layout.ring_bytes)
            .expect("inside the layout")
    }

    /// Region of client `c`'s request ring for lane `l`.
    pub fn request_ring(&self, c: usize, l: usize) -> Region {
        self.region
            .slice(self.layout.request_ring(c, l), self.layout.ring_bytes)
            .expect("inside the layout")
    }

    /// Region of the pool.
    pub fn pool_region(&self) -> Region {
        self.region
            .slice(self.layout.pool, self.layout.pool_bytes)
            .expect("inside the layout")
    }

    /// The name of model `i`, if it is valid UTF-8 of a sane length.
    pub fn model_name(&self, i: usize) -> Option<String> {
        let m = self.model(i);
        let len = m.name_len.load(Ordering::Relaxed) as usize;
        if len == 0 || len > MAX_NAME {
            return None;
        }
        let mut bytes = Vec::with_capacity(MAX_NAME);
        for w in &m.name {
            bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes.truncate(len);
        String::from_utf8(bytes).ok()
    }

    /// The model table: (name, lane, task mask) of each well-formed entry whose lane exists. It
    /// never changes while a server lives, so clients read it once.
    pub fn models(&self) -> Vec<(String, usize, u32)> {
        let n = (self.header().models.load(Ordering::Acquire) as usize).min(MAX_MODELS);
        (0..n)
            .filter_map(|i| {
                let m = self.model(i);
                Some((
                    self.model_name(i)?,
                    m.lane.load(Ordering::Relaxed) as usize,
                    m.tasks.load(Ordering::Relaxed),
                ))
            })
            .filter(|(_, lane, _)| *lane < self.layout.lanes)
            .collect()
    }

    /// Whether the server looks alive: its segment lock is held and it is not stopped.
    pub fn server_alive(&self) -> bool {
        self.header().state.load(Ordering::Acquire) != STATE_STOPPED && self.segment.creator_alive()
    }
}

/// Writes a model name into an entry (server side, before publishing).
pub(crate) fn write_name(entry: &ModelEntry, name: &str) {
    let mut bytes = [0u8; MAX_NAME];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    for (i, w) in entry.name.iter().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    entry.name_len.store(name.len() as u32, Ordering::Relaxed);
}
