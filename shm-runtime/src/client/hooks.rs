//! Doc-hidden hooks for tests and fuzzing: raw bytes and descriptors sent past the client's own
//! checks, the connection's ticket counter moved, the pool's free count, strays counted. Not a
//! stable interface.

use std::sync::atomic::Ordering;

use shm_ring::pool::ChunkId;

use super::submit::{loan_error, ring_full};
use super::{Client, Ticket};
use crate::error::Error;
use crate::protocol::{Descriptor, DescriptorKind};

impl Client {
    /// Sends arbitrary bytes as the archived request for `model`'s lane, bypassing serialization:
    /// for tests and fuzzing of the server's validation. The server must answer with an error (or,
    /// for bytes that happen to be a valid request, an answer).
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit).
    #[doc(hidden)]
    pub fn submit_bytes(
        &self,
        model: &str,
        bytes: &[u8],
        declared_len: u32,
    ) -> Result<Ticket, Error> {
        let conn = &*self.conn;
        let (lane, _) = conn
            .find_model(model)
            .ok_or_else(|| Error::ModelNotFound(model.to_owned()))?;
        let mut loan = conn
            .pool
            .loan(conn.owner, bytes.len().max(1))
            .map_err(|e| loan_error(e, "the request"))?;
        loan.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
        let chunk = loan.into_id();
        self.push_request(lane, chunk, declared_len, 0)
    }

    /// Pushes a raw request descriptor naming any chunk id: for tests of the server's ownership
    /// checks.
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit).
    #[doc(hidden)]
    pub fn submit_descriptor(&self, model: &str, chunk: u64, len: u32) -> Result<Ticket, Error> {
        let (lane, _) = self
            .conn
            .find_model(model)
            .ok_or_else(|| Error::ModelNotFound(model.to_owned()))?;
        self.push_request(lane, ChunkId::from_raw(chunk), len, 0)
    }

    /// Pushes a cancel of `ticket` naming request chunk `chunk` on `model`'s lane, whatever this
    /// client has in flight: for tests of the server's cancel set.
    ///
    /// # Errors
    ///
    /// As for [`cancel`](Self::cancel).
    #[doc(hidden)]
    pub fn send_cancel(&self, model: &str, ticket: u32, chunk: u64) -> Result<(), Error> {
        let conn = &*self.conn;
        let (lane, _) = conn
            .find_model(model)
            .ok_or_else(|| Error::ModelNotFound(model.to_owned()))?;
        conn.requests[lane]
            .push(Descriptor::new(DescriptorKind::Cancel, chunk, 0, ticket).to_words())
            .map_err(|e| ring_full(lane, conn.requests[lane].capacity(), e))?;
        conn.svc.lane(lane).doorbell.notify();
        Ok(())
    }

    /// The raw id of the request chunk of `ticket` in flight: for tests of cancels.
    #[doc(hidden)]
    pub fn request_chunk(&self, ticket: Ticket) -> Option<u64> {
        self.conn.inbox().pending.get(&ticket.0).map(|p| p.chunk)
    }

    /// Moves this connection's ticket counter `n` tickets on: for tests of the tickets' wrap.
    #[doc(hidden)]
    pub fn skip_tickets(&self, n: u32) {
        self.conn.next_ticket.fetch_add(n, Ordering::Relaxed);
    }

    /// The pool's free chunks now, over all classes (for tests and status).
    #[doc(hidden)]
    pub fn pool_free(&self) -> (u32, u32) {
        let st = self.conn.pool.stats();
        (
            st.classes.iter().map(|c| c.free).sum(),
            st.classes.iter().map(|c| c.count).sum(),
        )
    }

    /// Answers that arrived for a ticket not in flight and were returned unread: late answers of
    /// requests abandoned after a client-side timeout ([`infer_timeout`](Self::infer_timeout)), or
    /// answers that were never this client's. A client that never abandons a request expects 0
    /// (for tests of exactly-once delivery).
    #[doc(hidden)]
    pub fn stray_answers(&self) -> u64 {
        self.conn.strays.load(Ordering::Relaxed)
    }
}
