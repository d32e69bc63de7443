//! Ring descriptors: the 16 bytes that travel on the rings and name a chunk.
//!
//! On a ring a descriptor is two words, [`DescriptorWords`]: `[chunk id, kind:8 | len:24 |
//! ticket:32]`. [`Descriptor`] is the same thing with named fields; everything in it is
//! untrusted on receipt (the chunk id and length are checked against the pool before use).

/// What a descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DescriptorKind {
    /// Client -> server: a request in the named chunk.
    Request = 1,
    /// Client -> server: cancel the request with this ticket, whose request chunk was `chunk` (the
    /// raw id, generation included: a cancel that arrives after its request ended never matches
    /// a later request that reuses the ticket).
    Cancel = 2,
    /// Server -> client: a non-final response (stream chunk) in the named chunk.
    Partial = 3,
    /// Server -> client: the final response in the named chunk.
    Final = 4,
    /// Server -> client: the final answer is an error whose code is in `len` and whose
    /// [`InlineReason`] is in the chunk word; no chunk.
    InlineError = 5,
    /// Server -> client: a cancel of this ticket was not recorded, because the client has as many
    /// cancels pending as it may; the request goes on. Not final; no chunk.
    CancelRefused = 6,
    /// Client -> server: answer at once with a [`Pong`](DescriptorKind::Pong) (a health check of
    /// the lane, no model involved); no chunk.
    Ping = 7,
    /// Server -> client: the final answer to a [`Ping`](DescriptorKind::Ping); no chunk.
    Pong = 8,
}

impl DescriptorKind {
    /// The kind with wire value `v`, if any.
    #[inline]
    pub fn from_u8(v: u8) -> Option<DescriptorKind> {
        Some(match v {
            1 => DescriptorKind::Request,
            2 => DescriptorKind::Cancel,
            3 => DescriptorKind::Partial,
            4 => DescriptorKind::Final,
            5 => DescriptorKind::InlineError,
            6 => DescriptorKind::CancelRefused,
            7 => DescriptorKind::Ping,
            8 => DescriptorKind::Pong,
            _ => return None,
        })
    }
}

/// Why an error answer came inline (in the descriptor, without a chunk): the sentence the client
/// shows in place of the server's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum InlineReason {
    /// Not said (an older server).
    Unspecified = 0,
    /// The descriptor's kind is unknown, or not one a client sends.
    BadDescriptor = 1,
    /// The descriptor names a chunk the client does not hold (stale, forged, or sent twice).
    ChunkNotHeld = 2,
    /// The server is draining and takes no new requests.
    Draining = 3,
    /// The server had no chunk to write its message in.
    NoChunkForMessage = 4,
}

impl InlineReason {
    /// The reason with wire value `v`; [`InlineReason::Unspecified`] for an unknown one.
    pub fn from_u64(v: u64) -> InlineReason {
        match v {
            1 => InlineReason::BadDescriptor,
            2 => InlineReason::ChunkNotHeld,
            3 => InlineReason::Draining,
            4 => InlineReason::NoChunkForMessage,
            _ => InlineReason::Unspecified,
        }
    }

    /// What the client says for an error of `code` that came inline for this reason.
    pub fn message(self, code: super::ErrorCode) -> String {
        match self {
            InlineReason::Unspecified => code.to_string(),
            InlineReason::BadDescriptor => {
                "the server could not read the request's descriptor (an unknown kind)".into()
            }
            InlineReason::ChunkNotHeld => "the request's descriptor names shared memory this \
                 client does not hold (a chunk already sent, released, or never loaned)"
                .into(),
            InlineReason::Draining => {
                "the server is shutting down and takes no new requests".into()
            }
            InlineReason::NoChunkForMessage => format!(
                "{code}; the server had no shared memory left to say more (the pool is exhausted)"
            ),
        }
    }
}

/// Largest length a descriptor can carry (24 bits), hence the largest usable chunk.
pub const MAX_DESC_LEN: usize = 0xFF_FFFF;

/// A descriptor as it sits on a ring: `[chunk id, kind:8 | len:24 | ticket:32]`.
pub type DescriptorWords = [u64; 2];

/// A ring descriptor: a request, a cancellation or an answer, naming a chunk of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// What it says.
    pub kind: DescriptorKind,
    /// The raw id of the chunk it names (0 when it names none).
    pub chunk: u64,
    /// Bytes used in the chunk; for [`DescriptorKind::InlineError`], the error code. Only the
    /// low 24 bits travel ([`MAX_DESC_LEN`]).
    pub len: u32,
    /// The ticket of the request it belongs to (see [`ticket`]).
    pub ticket: u32,
}

impl Descriptor {
    /// A descriptor of `kind` for `ticket` naming `len` bytes of chunk `chunk`.
    #[inline]
    pub fn new(kind: DescriptorKind, chunk: u64, len: u32, ticket: u32) -> Descriptor {
        Descriptor {
            kind,
            chunk,
            len,
            ticket,
        }
    }

    /// The two words that go on a ring.
    #[inline]
    pub fn to_words(self) -> DescriptorWords {
        [
            self.chunk,
            (u64::from(self.kind as u8) << 56)
                | (u64::from(self.len & 0xFF_FFFF) << 32)
                | u64::from(self.ticket),
        ]
    }

    /// The ticket in two words taken from a ring, whatever their kind.
    #[inline]
    pub fn ticket_of(words: DescriptorWords) -> u32 {
        words[1] as u32
    }

    /// Reads two words taken from a ring; `None` for an unknown kind.
    #[inline]
    pub fn from_words(words: DescriptorWords) -> Option<Descriptor> {
        Some(Descriptor {
            kind: DescriptorKind::from_u8((words[1] >> 56) as u8)?,
            chunk: words[0],
            len: ((words[1] >> 32) & 0xFF_FFFF) as u32,
            ticket: words[1] as u32,
        })
    }
}

/// The ticket of a connection's `seq`-th request: the low 8 bits of the connection's epoch (its
/// client slot's epoch when it connected) in the top 8 bits, `seq` in the low 24. A client slot's
/// rings outlive its holders, so descriptors of a previous holder (left in a request ring, or an
/// answer delivered late) are told from the current holder's by their ticket alone.
#[inline]
pub fn ticket(epoch: u32, seq: u32) -> u32 {
    (epoch << 24) | (seq & 0xFF_FFFF)
}

/// Whether `ticket` was issued by the connection of epoch `epoch` (see [`ticket`]).
#[inline]
pub fn ticket_of_epoch(ticket: u32, epoch: u32) -> bool {
    ticket >> 24 == epoch & 0xFF
}
