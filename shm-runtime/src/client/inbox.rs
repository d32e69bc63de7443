//! Where answers wait for their callers: the tickets in flight, the answers filed under them, and
//! the leader role (one waiting thread pops the response ring and routes what it finds).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shm_ring::pool::ChunkId;

use super::Connection;
use crate::error::Error;
use crate::protocol::{ticket_of_epoch, Descriptor, DescriptorKind, DescriptorWords};

/// A ticket in flight: a request sent whose final answer has not arrived.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) lane: usize,
    pub(super) request_id: u64,
    /// The raw id of the request's chunk, which a cancel names.
    pub(super) chunk: u64,
    /// Nobody waits for it any more (a client-side timeout): what arrives is returned unread.
    /// The ticket stays taken until the final answer arrives, so that no later request reuses it
    /// while the server may still answer this one.
    pub(super) abandoned: bool,
    pub(super) arrived: VecDeque<DescriptorWords>,
    /// The async task waiting for what arrives (feature `async`).
    pub(super) waker: Option<std::task::Waker>,
}

/// Tickets are sequential u32s from this process: a multiplicative hash spreads them well enough
/// (SipHash would cost more than the rest of a lookup).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TicketHasher(u64);

impl std::hash::Hasher for TicketHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(super) type Tickets = HashMap<u32, Pending, std::hash::BuildHasherDefault<TicketHasher>>;

#[derive(Debug, Default)]
pub(super) struct Inbox {
    pub(super) leader: bool,
    /// An async waiter thread reads the ring for good (feature `async`).
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(super) waiter: bool,
    /// Threads waiting on the condvar (notify only when there are some: a notify is a syscall).
    pub(super) sleepers: usize,
    pub(super) pending: Tickets,
}

/// Whether `d` is the last answer of its ticket.
pub(super) fn is_final(d: DescriptorWords) -> bool {
    matches!(
        Descriptor::from_words(d).map(|d| d.kind),
        Some(DescriptorKind::Final | DescriptorKind::InlineError | DescriptorKind::Pong)
    )
}

impl Connection {
    /// Files an answer under its ticket, or returns its chunk if nobody waits for it: abandoned
    /// after a timeout (the ticket is freed by its final answer), answering no ticket in flight
    /// (both counted as strays), or a previous holder's of the slot (not counted).
    pub(super) fn route(&self, inbox: &mut Inbox, d: DescriptorWords) {
        let t = Descriptor::ticket_of(d);
        match inbox.pending.get_mut(&t) {
            Some(p) if p.abandoned => {
                if is_final(d) {
                    inbox.pending.remove(&t);
                }
                self.discard(d);
            }
            Some(p) => {
                p.arrived.push_back(d);
                if let Some(w) = p.waker.take() {
                    w.wake();
                }
            }
            None if !ticket_of_epoch(t, self.epoch) => self.release_answer(d),
            None => self.discard(d),
        }
    }

    /// Gives up waiting for `ticket`: what arrived for it goes back now, what arrives later when
    /// it arrives, and the ticket stays taken until its final answer.
    pub(super) fn abandon(&self, ticket: u32) {
        let mut inbox = self.inbox();
        if let Some(p) = inbox.pending.get_mut(&ticket) {
            p.abandoned = true;
            let arrived = std::mem::take(&mut p.arrived);
            if arrived.iter().any(|&d| is_final(d)) {
                inbox.pending.remove(&ticket);
            }
            arrived.into_iter().for_each(|d| self.discard(d));
        }
    }

    /// Returns the chunk of an answer nobody waits for, counting it as a stray.
    pub(super) fn discard(&self, d: DescriptorWords) {
        self.strays.fetch_add(1, Ordering::Relaxed);
        self.release_answer(d);
    }

    /// Returns an answer's chunk (if it has one and it is ours).
    pub(super) fn release_answer(&self, d: DescriptorWords) {
        if let Some(d) = Descriptor::from_words(d) {
            if matches!(d.kind, DescriptorKind::Partial | DescriptorKind::Final) {
                let _ = self.pool.release(ChunkId::from_raw(d.chunk), self.owner);
            }
        }
    }

    pub(super) fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the next descriptor of `ticket`, taking the leader role (popping the ring and
    /// routing) when nobody holds it.
    pub(super) fn next_for(
        &self,
        ticket: u32,
        deadline: Instant,
    ) -> Result<DescriptorWords, Error> {
        let mut inbox = self.inbox();
        loop {
            match inbox.pending.get_mut(&ticket) {
                None => return Err(Error::UnknownTicket(ticket)),
                Some(p) if p.abandoned => return Err(Error::UnknownTicket(ticket)),
                Some(p) => {
                    if let Some(d) = p.arrived.pop_front() {
                        return Ok(d);
                    }
                }
            }
            if !inbox.leader {
                // Fast path: the answer may be there already; no clock, no wait.
                if let Ok(d) = self.responses.pop() {
                    self.route(&mut inbox, d);
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::TimedOut);
            }
            if inbox.leader {
                let slice = (deadline - now).min(Duration::from_millis(20));
                inbox.sleepers += 1;
                inbox = self
                    .arrived
                    .wait_timeout(inbox, slice)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                inbox.sleepers -= 1;
                continue;
            }
            inbox.leader = true;
            drop(inbox);
            let slice = deadline.min(now + Duration::from_millis(20));
            let popped = self.responses.pop_blocking(&self.options.wait, slice);
            inbox = self.inbox();
            inbox.leader = false;
            match popped {
                Ok(d) => self.route(&mut inbox, d),
                Err(_) => {
                    if let Err(e) = self.check_connected() {
                        self.arrived.notify_all();
                        return Err(e);
                    }
                    if self.server_gone.load(Ordering::Relaxed) || !self.svc.server_alive() {
                        self.server_gone.store(true, Ordering::Relaxed);
                        self.arrived.notify_all();
                        return Err(Error::ServerGone);
                    }
                }
            }
            // Wake the others to check their tickets and take over as leader.
            if inbox.sleepers > 0 {
                self.arrived.notify_all();
            }
        }
    }
}
