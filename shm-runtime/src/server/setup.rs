//! Lays out a new service segment: the header, every client's rings, the pool and the model
//! table, then publishes it (the magic, last).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use shm_ring::pool::Pool;
use shm_ring::{mpmc, Segment};

use super::state::ModelLane;
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::protocol::{DescriptorWords, PROTOCOL_VERSION};
use crate::service::{self, Layout, Service, RING_PARTICIPANTS, SERVICE_MAGIC};

/// Writes the service structures into `seg` (just created, zero-filled) and publishes them.
pub(super) fn init_segment(
    seg: Arc<Segment>,
    layout: &Layout,
    c: &ServerConfig,
    lanes: &[ModelLane],
) -> Result<Service, ServerError> {
    let region = shm_ring::Region::new(seg.clone());
    let hdr = region
        .ptr_at::<service::ServiceHeader>(0)
        .ok_or_else(|| ServerError::setup("the segment is smaller than its header", None))?;
    // SAFETY: the segment was just created by us, is zero-filled and nobody can attach before the
    // magic is published; the header is atomics only (zero is a valid value of each).
    let h = unsafe { hdr.as_ref() };
    h.protocol.store(PROTOCOL_VERSION, Ordering::Relaxed);
    h.max_clients
        .store(layout.max_clients as u32, Ordering::Relaxed);
    h.lanes.store(layout.lanes as u32, Ordering::Relaxed);
    h.models.store(lanes.len() as u32, Ordering::Relaxed);
    h.ring_capacity.store(
        layout.ring_capacity.next_power_of_two() as u32,
        Ordering::Relaxed,
    );
    h.server_pid.store(std::process::id(), Ordering::Relaxed);
    h.ring_bytes
        .store(layout.ring_bytes as u64, Ordering::Relaxed);
    h.pool_offset.store(layout.pool as u64, Ordering::Relaxed);
    h.pool_bytes
        .store(layout.pool_bytes as u64, Ordering::Relaxed);
    h.max_inflight.store(c.max_inflight, Ordering::Relaxed);
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.started_unix_ms
        .store(since_epoch.as_millis() as u64, Ordering::Relaxed);
    h.server_version
        .store(service::packed_version(), Ordering::Relaxed);
    let ring = |offset: usize| -> Result<(), ServerError> {
        let r = region
            .slice(offset, layout.ring_bytes)
            .map_err(|e| ServerError::setup("a ring lies outside the segment", Some(e.into())))?;
        mpmc::init::<DescriptorWords>(&r, layout.ring_capacity, RING_PARTICIPANTS)
            .map_err(|e| ServerError::setup("cannot lay out a ring", Some(e.into())))
    };
    for slot in 0..layout.max_clients {
        ring(layout.response_ring(slot))?;
        for l in 0..layout.lanes {
            ring(layout.request_ring(slot, l))?;
        }
    }
    let pool_region = region
        .slice(layout.pool, layout.pool_bytes)
        .map_err(|e| ServerError::setup("the pool lies outside the segment", Some(e.into())))?;
    Pool::init(&pool_region, &c.pool)
        .map_err(|e| ServerError::setup("cannot lay out the pool", Some(e.into())))?;
    // Publish: Service::attach checks the magic, so build a Service over the unpublished segment
    // by hand for the model table.
    let unpublished = Service {
        region: region.clone(),
        segment: seg.clone(),
        layout: *layout,
    };
    for (i, lane) in lanes.iter().enumerate() {
        let m = unpublished.model(i);
        service::write_name(m, &lane.name);
        m.lane.store(i as u32, Ordering::Relaxed);
        m.tasks.store(lane.tasks, Ordering::Relaxed);
    }
    // SYNC(magic): Release publishes everything above; pairs with the Acquire in Service::attach.
    h.magic.store(SERVICE_MAGIC, Ordering::Release);
    Service::attach(seg)
        .map_err(|e| ServerError::setup("cannot attach to the new segment", Some(e.into())))
}
