//! Ring descriptors: the 16 bytes that travel on the rings and name a chunk.
//!
//! On a ring a descriptor is two words, [`DescriptorWords`]: `[chunk id, kind:8 | len:24 |
//! ticket:32]`. [`Descriptor`] is the same thing with named fields; everything in it is
//! untrusted on receipt (the chunk id and length are checked against the pool before use).

/// What a descriptor says.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{Descriptor, DescriptorKind};
///
/// /// Whether a descriptor from the answer ring ends its request.
/// fn is_final(d: &Descriptor) -> bool {
///     use DescriptorKind::*;
///     matches!(d.kind, Final | InlineError | Pong)
/// }
/// assert!(!is_final(&Descriptor::new(DescriptorKind::Partial, 0x2a, 64, 1)));
/// assert!(is_final(&Descriptor::new(DescriptorKind::Final, 0x2b, 96, 1)));
/// assert_eq!(DescriptorKind::Final as u8, 4); // the wire value
/// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::DescriptorKind;
    ///
    /// assert_eq!(DescriptorKind::from_u8(2), Some(DescriptorKind::Cancel));
    /// assert_eq!(DescriptorKind::from_u8(0), None); // untrusted: unknown kinds are refused
    /// ```
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
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{Descriptor, DescriptorKind, ErrorCode, InlineReason};
///
/// // A draining server refuses a request inline: the code in `len`, the reason in the chunk word.
/// let code = ErrorCode::ShuttingDown as u32;
/// let sent = Descriptor::new(DescriptorKind::InlineError, InlineReason::Draining as u64, code, 9);
/// // What the client reads.
/// let d = Descriptor::from_words(sent.to_words()).unwrap();
/// let code = ErrorCode::from_u8(d.len as u8).unwrap();
/// let why = InlineReason::from_u64(d.chunk);
/// assert_eq!(why, InlineReason::Draining);
/// assert_eq!(why.message(code), "the server is shutting down and takes no new requests");
/// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::InlineReason;
    ///
    /// assert_eq!(InlineReason::from_u64(2), InlineReason::ChunkNotHeld);
    /// // A reason this client does not know (a newer server's):
    /// assert_eq!(InlineReason::from_u64(99), InlineReason::Unspecified);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{ErrorCode, InlineReason};
    ///
    /// // Without a reason, the code's own sentence.
    /// assert_eq!(InlineReason::Unspecified.message(ErrorCode::Busy), "the service is busy");
    /// let m = InlineReason::NoChunkForMessage.message(ErrorCode::Backend);
    /// assert!(m.starts_with("the model failed; the server had no shared memory left"));
    /// ```
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
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{Descriptor, DescriptorKind, MAX_DESC_LEN};
///
/// let largest = Descriptor::new(DescriptorKind::Final, 0x2a, MAX_DESC_LEN as u32, 1);
/// assert_eq!(Descriptor::from_words(largest.to_words()), Some(largest));
/// // One byte more does not travel (servers refuse chunks this large at start).
/// let over = Descriptor::new(DescriptorKind::Final, 0x2a, MAX_DESC_LEN as u32 + 1, 1);
/// assert_eq!(Descriptor::from_words(over.to_words()).unwrap().len, 0);
/// ```
pub const MAX_DESC_LEN: usize = 0xFF_FFFF;

/// A descriptor as it sits on a ring: `[chunk id, kind:8 | len:24 | ticket:32]`.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{Descriptor, DescriptorKind, DescriptorWords};
///
/// let words: DescriptorWords = Descriptor::new(DescriptorKind::Request, 0x2a, 300, 42).to_words();
/// assert_eq!(words[0], 0x2a); // the chunk id
/// assert_eq!(words[1], (1 << 56) | (300 << 32) | 42); // kind:8 | len:24 | ticket:32
/// ```
pub type DescriptorWords = [u64; 2];

/// A ring descriptor: a request, a cancellation or an answer, naming a chunk of the pool.
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{ticket, Descriptor, DescriptorKind};
///
/// // A client's 3rd request: 180 bytes of chunk 0x2a, pushed on a ring as two words ...
/// let d = Descriptor::new(DescriptorKind::Request, 0x2a, 180, ticket(1, 3));
/// let words = d.to_words();
/// // ... and read back by the server, untrusted: an unknown kind is `None`.
/// assert_eq!(Descriptor::from_words(words), Some(d));
/// assert_eq!(Descriptor::from_words([0x2a, 0xff << 56]), None);
/// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{Descriptor, DescriptorKind};
    ///
    /// // A health check names no chunk.
    /// let ping = Descriptor::new(DescriptorKind::Ping, 0, 0, 17);
    /// assert_eq!(ping.to_words(), [0, (7 << 56) | 17]);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{Descriptor, DescriptorKind};
    ///
    /// let words = Descriptor::new(DescriptorKind::Final, 0x2a, 96, 7).to_words();
    /// assert_eq!(words[0], 0x2a);
    /// assert_eq!(words[1] >> 56, DescriptorKind::Final as u64);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::Descriptor;
    ///
    /// // Garbage of an unknown kind still names the request it claims to belong to.
    /// let words = [0x2a, (0xee << 56) | 12];
    /// assert_eq!(Descriptor::from_words(words), None);
    /// assert_eq!(Descriptor::ticket_of(words), 12);
    /// ```
    #[inline]
    pub fn ticket_of(words: DescriptorWords) -> u32 {
        words[1] as u32
    }

    /// Reads two words taken from a ring; `None` for an unknown kind.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_runtime::protocol::{Descriptor, DescriptorKind};
    ///
    /// let d = Descriptor::from_words([0x2a, (4 << 56) | (96 << 32) | 7]).unwrap();
    /// assert_eq!(d, Descriptor::new(DescriptorKind::Final, 0x2a, 96, 7));
    /// assert_eq!(Descriptor::from_words([0, 0]), None); // kind 0 is no kind
    /// ```
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
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{ticket, ticket_of_epoch};
///
/// let t = ticket(3, 41);
/// assert_eq!(t, (3 << 24) | 41);
/// assert!(ticket_of_epoch(t, 3));
/// // The slot's previous holder (epoch 2) left a descriptor behind: told apart by its ticket.
/// assert!(!ticket_of_epoch(ticket(2, 41), 3));
/// ```
#[inline]
pub fn ticket(epoch: u32, seq: u32) -> u32 {
    (epoch << 24) | (seq & 0xFF_FFFF)
}

/// Whether `ticket` was issued by the connection of epoch `epoch` (see [`ticket`]).
///
/// # Examples
///
/// ```
/// use shm_runtime::protocol::{ticket, ticket_of_epoch};
///
/// assert!(ticket_of_epoch(ticket(7, 1), 7));
/// // Only the epoch's low 8 bits travel: epochs 256 apart share their tickets.
/// assert!(ticket_of_epoch(ticket(7, 1), 7 + 256));
/// ```
#[inline]
pub fn ticket_of_epoch(ticket: u32, epoch: u32) -> bool {
    ticket >> 24 == epoch & 0xFF
}
