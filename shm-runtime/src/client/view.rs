//! Answers read in place: a [`ResponseView`] holds its chunk until dropped; a [`Stream`] yields a
//! request's answers one by one.

use std::sync::Arc;
use std::time::Instant;

use shm_ring::pool::ChunkId;

use super::{Client, Connection, Ticket};
use crate::error::Error;
use crate::protocol::{access_response, ArchivedResponse};

/// An answer in shared memory, read in place; its chunk returns to the pool on drop.
pub struct ResponseView {
    pub(super) conn: Arc<Connection>,
    pub(super) chunk: ChunkId,
    pub(super) len: usize,
    pub(super) is_final: bool,
}

impl std::fmt::Debug for ResponseView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseView")
            .field("chunk", &self.chunk)
            .field("len", &self.len)
            .field("final", &self.is_final)
            .finish()
    }
}

impl ResponseView {
    /// The archived response (validated on every call: the bytes are in shared memory).
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] when the chunk is not ours or not a valid archive.
    pub fn response(&self) -> Result<&ArchivedResponse, Error> {
        access_response(self.bytes()?).map_err(|r| Error::Protocol(r.message))
    }

    /// The answer's bytes in its chunk.
    pub(super) fn bytes(&self) -> Result<&[u8], Error> {
        let bytes = self
            .conn
            .pool
            .chunk_slice(self.chunk, self.conn.owner)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        bytes
            .get(..self.len)
            .ok_or_else(|| Error::Protocol("answer longer than its chunk".into()))
    }

    /// Whether this is the final answer of its request.
    pub fn is_final(&self) -> bool {
        self.is_final
    }

    /// Size of the archived answer in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The raw id of the chunk this answer lies in: for tests.
    #[doc(hidden)]
    pub fn chunk_raw(&self) -> u64 {
        self.chunk.raw()
    }

    /// Whether the archive is empty (never, for a valid answer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for ResponseView {
    fn drop(&mut self) {
        let _ = self.conn.pool.release(self.chunk, self.conn.owner);
    }
}

/// The chunks of a streamed answer, then its final answer.
#[derive(Debug)]
pub struct Stream {
    pub(super) client: Client,
    pub(super) ticket: Ticket,
    pub(super) done: bool,
    pub(super) deadline: Instant,
}

impl Stream {
    /// The request's ticket (for [`Client::cancel`]).
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }
}

impl Drop for Stream {
    /// Cancels the request if its final answer has not been read; what still arrives for it is
    /// returned to the pool unread.
    fn drop(&mut self) {
        if !self.done && self.client.is_in_flight(self.ticket) {
            let _ = self.client.cancel(self.ticket);
            self.client.conn.abandon(self.ticket.0);
        }
    }
}

impl Iterator for Stream {
    type Item = Result<ResponseView, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let r = self.client.recv(self.ticket, left);
        match &r {
            Ok(v) if !v.is_final() => {}
            // Not the final answer: a refused cancel; the request goes on.
            Err(Error::Busy(_)) if self.client.is_in_flight(self.ticket) => {}
            // The stream's own deadline passed first: nobody will read the rest.
            Err(Error::TimedOut) if self.client.is_in_flight(self.ticket) => {
                let _ = self.client.cancel(self.ticket);
                self.client.conn.abandon(self.ticket.0);
                self.done = true;
            }
            _ => self.done = true,
        }
        Some(r)
    }
}
