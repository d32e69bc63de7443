//! The worker's client table: for each client slot, the handles to the slot's request ring of
//! this lane and its response ring, taken when the slot's current holder connected.

use std::sync::atomic::Ordering;

use shm_ring::mpmc;
use shm_ring::pool::OwnerId;

use super::outbox::BACKLOG_PER_CLIENT;
use super::Desk;
use crate::protocol::DescriptorWords;
use crate::scheduler::ReplyTo;
use crate::service::{EjectReason, CLIENT_ACTIVE, CLIENT_EJECTED};

/// A worker's view of one connected client.
pub(super) struct ClientHandles {
    /// The slot's epoch when the client connected.
    pub(super) epoch: u32,
    /// The client's pool owner: request chunks are taken from it, answers given to it.
    pub(super) owner: OwnerId,
    pub(super) requests: mpmc::Consumer<DescriptorWords>,
    pub(super) responses: mpmc::Producer<DescriptorWords>,
}

/// Handles by client slot.
pub(super) struct ClientTable {
    slots: Vec<Option<ClientHandles>>,
    /// Slots with handles, in slot order.
    pub(super) attached: Vec<usize>,
    /// `clients_gen` when the table was last read from the segment.
    seen_gen: u64,
    /// Per slot: when it last sent this lane a request (`now` clock), for batching.
    pub(super) last_request: Vec<u64>,
    /// Per slot: its request ring calls itself non-empty but yields nothing (see [`Stall`]).
    stalls: Vec<Option<Stall>>,
}

/// A request ring that [`is_empty`](mpmc::Consumer::is_empty) calls non-empty while `pop` finds
/// nothing: a producer between its claim and its publication (a moment, unless it is stopped),
/// or indices a client wrote with impossible values (for ever).
#[derive(Debug, Clone, Copy)]
struct Stall {
    /// When it was first seen (`now` clock).
    since: u64,
    /// Looks at the ring since then, and how many of them found its indices inconsistent.
    looks: u32,
    inconsistent: u32,
}

/// A stalled ring is left out of the readiness check after this long (the worker then looks at
/// it when its park times out, every 20 ms, instead of spinning on it).
const STALL_QUIET_NS: u64 = 1_000_000;
/// A client whose ring was inconsistent at every look for this long, and at least
/// [`STALL_EJECT_LOOKS`] looks, is disconnected.
const STALL_EJECT_NS: u64 = 10_000_000;
const STALL_EJECT_LOOKS: u32 = 8;

impl ClientTable {
    pub(super) fn new(slots: usize) -> ClientTable {
        ClientTable {
            slots: (0..slots).map(|_| None).collect(),
            attached: Vec::new(),
            seen_gen: u64::MAX,
            last_request: vec![0; slots],
            stalls: vec![None; slots],
        }
    }

    pub(super) fn get(&self, slot: usize) -> Option<&ClientHandles> {
        self.slots.get(slot)?.as_ref()
    }

    /// The handles of `reply`'s connection, if this table still has that connection.
    pub(super) fn current(&self, reply: ReplyTo) -> Option<&ClientHandles> {
        self.get(reply.slot()).filter(|h| h.epoch == reply.epoch)
    }

    /// Makes the next `sync_clients` read the segment's table even if nothing seems to have moved.
    pub(super) fn mark_stale(&mut self) {
        self.seen_gen = u64::MAX;
    }
}

impl Desk<'_> {
    /// Attaches to newly active clients and lets go of departed ones (dropping their queued jobs),
    /// when the segment's client table moved.
    pub(super) fn sync_clients(&mut self) {
        let header = self.state.svc.header();
        let gen = header.clients_gen.load(Ordering::Acquire);
        if gen == self.clients.seen_gen {
            return;
        }
        self.clients.seen_gen = gen;
        let active = header.active.load(Ordering::Acquire);
        for slot in 0..self.clients.slots.len() {
            let entry = self.state.svc.client(slot);
            let on =
                active & (1 << slot) != 0 && entry.state.load(Ordering::Acquire) == CLIENT_ACTIVE;
            let epoch = entry.epoch.load(Ordering::Acquire);
            match (&self.clients.slots[slot], on) {
                (Some(h), true) if h.epoch == epoch => {}
                (_, true) => {
                    self.drop_pending(slot);
                    self.lane.cancels.remove_slot(slot, Some(epoch));
                    let owner = OwnerId::from_raw(entry.owner.load(Ordering::Acquire));
                    let svc = &self.state.svc;
                    let requests = mpmc::Consumer::attach(&svc.request_ring(slot, self.lane_index));
                    let responses = mpmc::Producer::attach(&svc.response_ring(slot));
                    self.clients.slots[slot] = match (owner, requests, responses) {
                        (Some(owner), Ok(requests), Ok(responses)) => Some(ClientHandles {
                            epoch,
                            owner,
                            requests,
                            responses,
                        }),
                        _ => {
                            tracing::warn!(client = slot, "cannot attach to a client's rings");
                            None
                        }
                    };
                }
                (Some(_), false) => {
                    self.clients.slots[slot] = None;
                    self.drop_pending(slot);
                    self.lane.cancels.remove_slot(slot, None);
                }
                (None, false) => {}
            }
        }
        let slots = &self.clients.slots;
        self.clients.attached = (0..slots.len()).filter(|&s| slots[s].is_some()).collect();
    }

    /// Notes what a round of intake found in `slot`'s request ring: `took` descriptors, then an
    /// empty `pop`. A ring that stays non-empty without yielding, and whose indices are
    /// inconsistent at every look for [`STALL_EJECT_NS`], gets its client disconnected.
    pub(super) fn note_intake(&mut self, slot: usize, took: usize) {
        let Some(h) = self.clients.get(slot) else {
            return;
        };
        if took > 0 || h.requests.is_empty() {
            self.clients.stalls[slot] = None;
            return;
        }
        let consistent = h.requests.looks_consistent();
        let now = self.now;
        let stall = self.clients.stalls[slot].get_or_insert(Stall {
            since: now,
            looks: 0,
            inconsistent: 0,
        });
        stall.looks += 1;
        stall.inconsistent += u32::from(!consistent);
        if stall.inconsistent == stall.looks
            && stall.looks >= STALL_EJECT_LOOKS
            && now.saturating_sub(stall.since) >= STALL_EJECT_NS
        {
            self.eject(slot, EjectReason::CorruptRequestRing);
        }
    }

    /// Disconnects the client in `slot` (this worker's connection to it) for `why`: marks its
    /// entry ejected with the reason, takes it out of the active set, and lets every worker drop
    /// it (its queued jobs are dropped, running ones stop as for a departed client). The slot and
    /// the client's chunks stay its own until it closes or dies; its library reports the reason.
    pub(super) fn eject(&mut self, slot: usize, why: EjectReason) {
        let Some(epoch) = self.clients.get(slot).map(|h| h.epoch) else {
            return;
        };
        let svc = &self.state.svc;
        let entry = svc.client(slot);
        if entry.epoch.load(Ordering::Acquire) == epoch {
            entry.ejected.store(why as u32, Ordering::Release);
            // SYNC(state): Release publishes the reason to the client's Acquire of the state.
            if entry
                .state
                .compare_exchange(
                    CLIENT_ACTIVE,
                    CLIENT_EJECTED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                let token = entry.token.load(Ordering::Relaxed);
                tracing::warn!(client = slot, pid = token >> 32, reason = %why, "disconnecting a client");
                svc.header()
                    .active
                    .fetch_and(!(1u64 << slot), Ordering::AcqRel);
                svc.stats().clients_ejected.fetch_add(1, Ordering::Relaxed);
                // SYNC(clients_gen): as at connect: after the state and the mask.
                svc.header().clients_gen.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.clients.stalls[slot] = None;
        self.clients.mark_stale();
        self.sync_clients();
    }

    /// Whether `reply`'s connection still holds its slot (in the segment, not this table).
    pub(super) fn client_alive(&self, reply: ReplyTo) -> bool {
        let entry = self.state.svc.client(reply.slot());
        entry.epoch.load(Ordering::Acquire) == reply.epoch
            && entry.state.load(Ordering::Acquire) == CLIENT_ACTIVE
    }

    /// Whether an attached client's request ring has something in it that this worker would
    /// take now (not from a client with a full backlog of answers: see `BACKLOG_PER_CLIENT`).
    pub(super) fn any_request_waiting(&self) -> bool {
        self.clients.attached.iter().any(|&s| {
            self.outbox.waiting_for(s) < BACKLOG_PER_CLIENT
                && self.clients.stalls[s]
                    .is_none_or(|st| self.now.saturating_sub(st.since) < STALL_QUIET_NS)
                && self.clients.get(s).is_some_and(|h| !h.requests.is_empty())
        })
    }
}
