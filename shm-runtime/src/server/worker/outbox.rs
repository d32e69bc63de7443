//! Answers: serializing a response into a fresh chunk, giving the chunk to its client's pool
//! owner, and announcing it on the client's response ring, or keeping the announcement in the
//! backlog while that ring is full.
//!
//! A client's answers leave in order: while some wait, its later ones wait behind them. Other
//! clients' answers never wait behind a slow client's.

use std::collections::VecDeque;

use shm_ring::pool::{ChunkError, Loan};

use super::clients::ClientTable;
use super::Desk;
use crate::backend::writer::Out;
use crate::protocol::{
    Body, Descriptor, DescriptorKind, DescriptorWords, ErrorBody, ErrorCode, InlineReason, Refusal,
    Response,
};
use crate::scheduler::ReplyTo;

/// Announcements that did not fit in their client's response ring yet.
#[derive(Debug)]
pub(super) struct Outbox {
    /// Oldest first: (client slot, connection epoch, descriptor).
    backlog: VecDeque<(usize, u32, DescriptorWords)>,
    /// Bit `slot % 64` set: that client has announcements in `backlog`.
    backlogged: u64,
    /// Per client slot (at most 64): its announcements in `backlog`.
    waiting: [u32; 64],
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox {
            backlog: VecDeque::new(),
            backlogged: 0,
            waiting: [0; 64],
        }
    }
}

/// A worker takes no more descriptors from a client with this many announcements waiting for
/// room in its response ring: its further requests stay in its request ring (and it gets `Busy`
/// when that is full) until it reads. This bounds the backlog, whatever the client sends: error
/// answers to a flood of invalid requests cannot pile up in the server's memory.
pub(super) const BACKLOG_PER_CLIENT: u32 = 256;

impl Outbox {
    /// Announcements waiting for client `slot`.
    pub(super) fn waiting_for(&self, slot: usize) -> u32 {
        self.waiting[slot % 64]
    }

    pub(super) fn is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    /// Sends `d` to `slot` with `push`, unless the client already has announcements waiting or the
    /// push fails (a full ring): then `d` waits behind them.
    pub(super) fn send(
        &mut self,
        slot: usize,
        epoch: u32,
        d: DescriptorWords,
        push: impl FnOnce(usize, u32, DescriptorWords) -> bool,
    ) {
        let bit = 1u64 << (slot % 64);
        if self.backlogged & bit != 0 || !push(slot, epoch, d) {
            self.backlog.push_back((slot, epoch, d));
            self.backlogged |= bit;
            self.waiting[slot % 64] += 1;
        }
    }

    /// Retries the waiting announcements, oldest first. Once a client's push fails, the rest of
    /// its announcements stay (in order) without another try: one failed push per client per
    /// pass.
    pub(super) fn flush(&mut self, mut push: impl FnMut(usize, u32, DescriptorWords) -> bool) {
        if self.backlog.is_empty() {
            return;
        }
        let mut blocked = 0u64;
        let waiting = &mut self.waiting;
        self.backlog.retain(|&(slot, epoch, d)| {
            let bit = 1u64 << (slot % 64);
            if blocked & bit != 0 || !push(slot, epoch, d) {
                blocked |= bit;
                return true;
            }
            waiting[slot % 64] -= 1;
            false
        });
        self.backlogged = blocked;
    }
}

/// Pushes `d` to `slot`'s response ring through `clients`. False when the ring is full; true when
/// it went, or when it cannot ever go (the client left: its chunks go back with its owner; or it
/// broke its ring: the answer is dropped, and the slot is named in `broken` to be disconnected).
fn try_push(
    clients: &ClientTable,
    slot: usize,
    epoch: u32,
    d: DescriptorWords,
    broken: &mut Option<usize>,
) -> bool {
    match clients.get(slot) {
        Some(h) if h.epoch == epoch => match h.responses.push(d) {
            Ok(()) => true,
            Err(shm_ring::PushError::Corrupted(_)) => {
                *broken = Some(slot);
                true
            }
            Err(_) => false,
        },
        _ => true,
    }
}

/// Why an answer was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Undelivered {
    /// The client has gone (or its slot changed hands).
    Gone,
    /// No chunk could be had for it (the pool is empty, or the answer is larger than a chunk).
    NoChunk,
    /// A stream part would take the client past its share of the chunk's class (it is not
    /// reading its stream): the reason, for the client.
    OverShare(String),
}

impl Desk<'_> {
    /// Answers `reply` with an error response (`id`, `refusal`), or an inline error when no chunk
    /// can be had.
    pub(super) fn answer_error(&mut self, reply: ReplyTo, id: u64, refusal: Refusal) {
        let state = self.state;
        let code = refusal.code;
        state.svc.stats().errors[code as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state
            .svc
            .client(reply.slot())
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = Response {
            id,
            body: Body::Error(ErrorBody {
                code,
                message: refusal.message,
            }),
        };
        if self.answer(reply, DescriptorKind::Final, &resp).is_err() {
            self.answer_inline(reply, code, InlineReason::NoChunkForMessage);
        }
    }

    /// An error answer with no chunk: its code, and why it came inline (the client's message).
    pub(super) fn answer_inline(&mut self, reply: ReplyTo, code: ErrorCode, why: InlineReason) {
        let d = Descriptor::new(
            DescriptorKind::InlineError,
            why as u64,
            code as u32,
            reply.ticket,
        );
        self.deliver(reply, d);
    }

    /// Answers a ping.
    pub(super) fn pong(&mut self, reply: ReplyTo) {
        let d = Descriptor::new(DescriptorKind::Pong, 0, 0, reply.ticket);
        self.deliver(reply, d);
    }

    /// Tells `reply`'s client that its cancel was not recorded (a notice, not an answer).
    pub(super) fn refuse_cancel(&mut self, reply: ReplyTo) {
        let d = Descriptor::new(DescriptorKind::CancelRefused, 0, 0, reply.ticket);
        self.deliver(reply, d);
    }

    /// Serializes `resp` into a fresh chunk, gives it to the client and announces it.
    ///
    /// # Errors
    ///
    /// Why it was not delivered ([`Undelivered`]).
    pub(super) fn answer(
        &mut self,
        reply: ReplyTo,
        kind: DescriptorKind,
        resp: &Response,
    ) -> Result<(), Undelivered> {
        let state = self.state;
        if self.clients.current(reply).is_none() {
            return Err(Undelivered::Gone);
        }
        let mut out = Out::in_pool(&state.pool, state.owner, resp.id);
        if let Err(e) = out.response(resp) {
            tracing::warn!(%e, "no chunk for an answer");
            return Err(Undelivered::NoChunk);
        }
        match out.take_loan() {
            Some((loan, len)) => self.give_to_client(reply, kind, loan, len),
            None => Err(Undelivered::NoChunk),
        }
    }

    /// Gives the answer in `loan` (`len` bytes) to `reply`'s client and announces it. A stream
    /// part ([`DescriptorKind::Partial`]) goes only within the client's share of the chunk's
    /// class; a final answer always goes (a client has at most one per request in flight).
    ///
    /// # Errors
    ///
    /// [`Undelivered::Gone`] when the client has gone, [`Undelivered::OverShare`] when a stream
    /// part would take the client past its share; the chunk then goes back to the pool.
    pub(super) fn give_to_client(
        &mut self,
        reply: ReplyTo,
        kind: DescriptorKind,
        loan: Loan<'_>,
        len: usize,
    ) -> Result<(), Undelivered> {
        let state = self.state;
        // The slot's current epoch too: this worker's handles may be older than a reconnect, and
        // the departed client's owner id may belong to another process by now.
        let client_owner = match self.clients.current(reply) {
            Some(h) if self.client_alive(reply) => h.owner,
            _ => return Err(Undelivered::Gone),
        };
        let id = loan.into_id();
        let moved = if kind == DescriptorKind::Partial {
            state.pool.adopt_within_share(id, state.owner, client_owner)
        } else {
            state.pool.adopt(id, state.owner, client_owner)
        };
        match moved {
            Ok(l) => {
                l.into_id();
            }
            Err(e) => {
                let _ = state.pool.release(id, state.owner);
                return Err(match e {
                    ChunkError::ShareExceeded { .. } => Undelivered::OverShare(e.to_string()),
                    _ => Undelivered::Gone,
                });
            }
        }
        self.deliver(
            reply,
            Descriptor::new(kind, id.raw(), len as u32, reply.ticket),
        );
        Ok(())
    }

    /// Announces `d` on `reply`'s response ring, or keeps it for later if the ring is full (a
    /// client that does not read its answers gets them when it does).
    fn deliver(&mut self, reply: ReplyTo, d: Descriptor) {
        let clients = &self.clients;
        let mut broken = None;
        self.outbox
            .send(reply.slot(), reply.epoch, d.to_words(), |s, e, d| {
                try_push(clients, s, e, d, &mut broken)
            });
        self.eject_broken(broken);
    }

    /// Retries the announcements waiting for room in their rings.
    pub(super) fn flush_backlog(&mut self) {
        let clients = &self.clients;
        let mut broken = None;
        self.outbox
            .flush(|s, e, d| try_push(clients, s, e, d, &mut broken));
        self.eject_broken(broken);
    }

    /// Disconnects the client whose response ring a push found corrupted, if any.
    fn eject_broken(&mut self, broken: Option<usize>) {
        if let Some(slot) = broken {
            self.eject(slot, crate::service::EjectReason::CorruptResponseRing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Outbox;

    fn d(n: u64) -> [u64; 2] {
        [n, 0]
    }

    #[test]
    fn a_full_ring_keeps_the_answer_and_later_ones_queue_behind_it() {
        let mut outbox = Outbox::default();
        let mut sent = Vec::new();
        outbox.send(3, 1, d(1), |_, _, _| false);
        // The ring has room again, but the second answer must not overtake the first.
        outbox.send(3, 1, d(2), |_, _, d| {
            sent.push(d[0]);
            true
        });
        assert!(sent.is_empty(), "an answer overtook a waiting one");
        outbox.flush(|_, _, d| {
            sent.push(d[0]);
            true
        });
        assert_eq!(sent, vec![1, 2]);
        assert!(outbox.is_empty());
        // With the backlog empty, the next answer goes straight out.
        outbox.send(3, 1, d(3), |_, _, d| {
            sent.push(d[0]);
            true
        });
        assert_eq!(sent, vec![1, 2, 3]);
    }

    #[test]
    fn a_slow_client_does_not_hold_up_another() {
        let mut outbox = Outbox::default();
        let mut sent = Vec::new();
        outbox.send(1, 1, d(10), |_, _, _| false);
        outbox.send(2, 1, d(20), |s, _, d| {
            sent.push((s, d[0]));
            true
        });
        assert_eq!(sent, vec![(2, 20)]);
        outbox.send(1, 1, d(11), |_, _, _| true);
        // Client 1's ring is still full: one failed try, and its second answer is not tried.
        let mut tries = Vec::new();
        outbox.flush(|s, _, d| {
            tries.push((s, d[0]));
            false
        });
        assert_eq!(tries, vec![(1, 10)]);
        outbox.flush(|s, _, d| {
            sent.push((s, d[0]));
            true
        });
        assert_eq!(sent, vec![(2, 20), (1, 10), (1, 11)]);
    }

    #[test]
    fn the_backlog_keeps_each_clients_order_across_passes() {
        let mut outbox = Outbox::default();
        for n in 0..4 {
            outbox.send((n % 2) as usize, 1, d(n), |_, _, _| false);
        }
        // Client 0's ring takes one answer per pass; client 1's takes all.
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut room0 = 1;
            outbox.flush(|s, _, d| {
                if s == 0 {
                    if room0 == 0 {
                        return false;
                    }
                    room0 -= 1;
                }
                got.push(d[0]);
                true
            });
        }
        assert_eq!(got, vec![0, 1, 3, 2]);
        assert!(outbox.is_empty());
    }
}
