//! The worker's client table: for each client slot, the handles to the slot's request ring of
//! this lane and its response ring, taken when the slot's current holder connected.

use std::sync::atomic::Ordering;

use shm_ring::mpmc;
use shm_ring::pool::OwnerId;

use super::outbox::BACKLOG_PER_CLIENT;
use super::Desk;
use crate::protocol::DescriptorWords;
use crate::scheduler::ReplyTo;
use crate::service::CLIENT_ACTIVE;

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
}

impl ClientTable {
    pub(super) fn new(slots: usize) -> ClientTable {
        ClientTable {
            slots: (0..slots).map(|_| None).collect(),
            attached: Vec::new(),
            seen_gen: u64::MAX,
            last_request: vec![0; slots],
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
                && self.clients.get(s).is_some_and(|h| !h.requests.is_empty())
        })
    }
}
