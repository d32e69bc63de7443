//! The housekeeper thread: notices dead clients about every 10 ms and takes back what they held
//! (their slot, queued cancels, pool chunks); also returns chunks of dead or vacant pool owners.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shm_ring::pool::OwnerId;
use shm_ring::process::ProcessToken;

use super::state::ServerState;
use crate::service::CLIENT_FREE;

/// Runs until the server exits.
pub(super) fn run(state: &ServerState) {
    let mut tick: u64 = 0;
    while !state.exit.load(Ordering::Acquire) {
        tick += 1;
        state.svc.header().heartbeat.fetch_add(1, Ordering::Relaxed);
        for slot in 0..state.svc.layout.max_clients {
            let raw = state.svc.client(slot).token.load(Ordering::Acquire);
            let Some(token) = ProcessToken::from_raw(raw) else {
                continue;
            };
            // Only a certainly dead client is reaped: an unknown verdict (say, this process is out of
            // file descriptors) waits for a later pass.
            if token.is_dead() {
                reap_client(state, slot, raw);
            }
        }
        let (owners, chunks) = state.pool.reclaim_dead();
        let orphans = if tick % 10 == 0 {
            state.pool.reclaim_orphans()
        } else {
            0
        };
        if chunks + orphans > 0 {
            state
                .svc
                .stats()
                .chunks_reclaimed
                .fetch_add((chunks + orphans) as u64, Ordering::Relaxed);
            tracing::info!(owners, chunks, orphans, "reclaimed chunks of dead owners");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Frees client slot `slot`, whose holder (process token `raw`) died.
fn reap_client(state: &ServerState, slot: usize, raw: u64) {
    let entry = state.svc.client(slot);
    tracing::info!(
        client = slot,
        pid = raw >> 32,
        "client died; reclaiming its slot"
    );
    entry.state.store(CLIENT_FREE, Ordering::Release);
    state
        .svc
        .header()
        .active
        .fetch_and(!(1u64 << slot), Ordering::AcqRel);
    // Jobs of the dead epoch are dropped by workers (epoch check); bump it so late answers are not
    // delivered to a successor.
    entry.epoch.fetch_add(1, Ordering::AcqRel);
    entry.inflight.store(0, Ordering::Release);
    state
        .svc
        .header()
        .clients_gen
        .fetch_add(1, Ordering::AcqRel);
    for lane in &state.lanes {
        lane.cancels.remove_slot(slot, None);
    }
    // The entry is the client's to write: an owner id naming the server itself would take back
    // every chunk the server holds (answers being written, requests being validated).
    let owner =
        OwnerId::from_raw(entry.owner.load(Ordering::Acquire)).filter(|&o| o != state.owner);
    // Only while the owner entry is still the dead client's: a process started since may have
    // taken it over (registering before this slot was reaped), and its chunks are its own.
    if let (Some(owner), Some(token)) = (owner, ProcessToken::from_raw(raw)) {
        state.pool.reclaim_dead_owner(owner, token);
    }
    state
        .svc
        .stats()
        .clients_reaped
        .fetch_add(1, Ordering::Relaxed);
    // Free the slot last, and only if nobody took it over meanwhile.
    let _ = entry
        .token
        .compare_exchange(raw, 0, Ordering::AcqRel, Ordering::Relaxed);
}
