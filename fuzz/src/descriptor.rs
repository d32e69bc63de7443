//! Target `descriptor`: arbitrary ring descriptors, resolved to chunks of a heap-backed pool the
//! way the server (and the client, for answers) resolves them.
//!
//! The pool holds three registered owners: the server, client A and client B. Client A starts with
//! chunks holding valid requests, client B with one chunk of garbage, and the server holds one chunk
//! throughout (an answer another worker is writing). Each 24-byte record of the
//! input is one descriptor and the owner id the server would read from the sender's client entry
//! (also untrusted):
//!
//! ```text
//! [0] chunk: bit 7 set -> known id (bits 0..3, modulo 5) XOR bytes 8..16; clear -> bytes 8..16 as they are
//! [1] owner: 0 server, 1 client A, 2 client B, 3 an unregistered id, else bytes 4..8 (server
//!     path); the receiving client, A or B by bit 0 (client path)
//! [2] path: bit 0 clear -> the server's accept + validate; set -> the client's answer path
//! [3] answer length for the server's answer (x 8 bytes)
//! [4..8]   raw owner id
//! [8..16]  descriptor word 0 (chunk id)
//! [16..24] descriptor word 1 (kind:8 | len:24 | ticket:32)
//! ```
//!
//! Server path (`Desk::accept`, `request_bytes`, `validate`, `Desk::give_to_client`): parse the descriptor,
//! adopt the chunk from the sender's owner, read the head from the first `len` bytes, validate the
//! whole chunk, answer with a fresh chunk adopted to the sender's owner (released when that fails),
//! release the request chunk. Client path (`Client::view`, `ResponseView`): parse, decode an
//! inline error code, check the chunk is the owner's, validate the answer, release it.
//!
//! The server must never take the chunk it is writing as a request; after every record it must hold
//! only that chunk, and the pool's count of chunks in use must
//! equal what the owners hold.

use shm_ring::pool::{ChunkId, OwnerId, Pool, PoolConfig, SizeClass};
use shm_ring::Region;
use shm_runtime::protocol::{
    access_request_body, access_response, encode_into, encode_request, read_request_head, Body,
    Descriptor, DescriptorKind, ErrorBody, ErrorCode, Input, Limits, Params, Request, Response,
    Task,
};

use crate::Bytes;

/// The pool every input starts from: two small classes.
pub fn config() -> PoolConfig {
    PoolConfig {
        classes: vec![
            SizeClass {
                chunk_size: 256,
                count: 8,
            },
            SizeClass {
                chunk_size: 4096,
                count: 4,
            },
        ],
        max_owners: 4,
        quota: 8,
        class_share: 100,
    }
}

/// The requests client A's chunks start with.
pub fn initial_requests() -> Vec<Request> {
    vec![
        Request {
            id: 1,
            model: "echo".into(),
            task: Task::Generate,
            input: Input::Text("hello".into()),
            params: Params::default(),
        },
        Request {
            id: 2,
            model: "echo".into(),
            task: Task::Embed,
            input: Input::Tokens(vec![1, 2, 3]),
            params: Params {
                priority: 3,
                timeout_ms: 500,
                ..Params::default()
            },
        },
        Request {
            id: 3,
            model: "m".into(),
            task: Task::Classify,
            input: Input::Text("x".repeat(300)),
            params: Params::default(),
        },
    ]
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let config = config();
    let region = Region::heap(Pool::bytes_for(&config));
    Pool::init(&region, &config).expect("the pool fits its region");
    let pool = Pool::attach(&region).expect("a fresh pool attaches");
    let server = pool.register_owner().expect("owner");
    let a = pool.register_owner().expect("owner");
    let b = pool.register_owner().expect("owner");
    let limits = Limits::default();

    // Known ids: client A's requests (with their lengths), then client B's garbage chunk.
    let mut known: Vec<(ChunkId, u32)> = Vec::new();
    for req in initial_requests() {
        let mut loan = pool.loan(a, 600).expect("room for the initial requests");
        let n = encode_request(&req, loan.as_mut_slice()).expect("fits");
        known.push((loan.into_id(), n as u32));
    }
    let mut loan = pool.loan(b, 1).expect("room");
    loan.as_mut_slice().fill(0xA5);
    known.push((loan.into_id(), 256));
    let busy = pool.loan(server, 1).expect("room");
    known.push((busy.id(), 0));

    let mut input = Bytes::new(data);
    while !input.is_empty() {
        let sel = input.u8();
        let who = input.u8();
        let path = input.u8();
        let answer_len = usize::from(input.u8()) * 8;
        let raw_owner = input.u32();
        let mut d = [input.u64(), input.u64()];
        if sel & 0x80 != 0 {
            d[0] ^= known[usize::from(sel & 7) % known.len()].0.raw();
        }
        let owner = match who {
            0 => Some(server),
            1 => Some(a),
            2 => Some(b),
            3 => OwnerId::from_raw(4),
            _ => OwnerId::from_raw(raw_owner),
        };
        if path & 1 == 0 {
            serve(&pool, server, busy.id(), owner, d, answer_len, &limits);
        } else {
            // A client knows its own owner id: A or B.
            receive(&pool, if who & 1 == 0 { a } else { b }, d);
        }
        assert_eq!(
            pool.held_by(server),
            1,
            "the server keeps only the chunk it writes"
        );
        let held: u32 = [server, a, b]
            .iter()
            .chain(OwnerId::from_raw(4).as_ref())
            .map(|&o| pool.held_by(o))
            .sum();
        assert_eq!(pool.stats().in_use(), held, "chunks in use = chunks held");
    }
}

/// The server's handling of descriptor `d` from a client whose entry names `client` as its owner.
fn serve(
    pool: &Pool,
    server: OwnerId,
    busy: ChunkId,
    client: Option<OwnerId>,
    d: [u64; 2],
    answer_len: usize,
    limits: &Limits,
) {
    // sync_clients: no owner id, no attachment.
    let Some(client) = client else { return };
    let Some(Descriptor {
        kind, chunk, len, ..
    }) = Descriptor::from_words(d)
    else {
        return;
    };
    if kind != DescriptorKind::Request {
        return;
    }
    // accept(): take the chunk (refused unless the client holds it under that generation).
    let Ok(loan) = pool.adopt(ChunkId::from_raw(chunk), client, server) else {
        return;
    };
    let id = loan.into_id();
    assert!(
        (id.class(), id.index()) != (busy.class(), busy.index()),
        "the server took the chunk it is writing as a request"
    );
    let head = pool
        .chunk_slice(id, server)
        .map_err(|e| e.to_string())
        .and_then(|b| match b.get(..len as usize) {
            Some(b) => read_request_head(b, limits).map_err(|r| r.message),
            None => Err("descriptor length exceeds the chunk".to_owned()),
        });
    if head.is_ok() {
        // validate() via request_bytes(): length against the chunk, then the archive against
        // the head read at intake.
        let bytes = pool.chunk_slice(id, server).expect("the server holds it");
        if let (Some(bytes), Ok(head)) = (bytes.get(..len as usize), &head) {
            let _ =
                access_request_body(bytes, head, limits).map(|r| (r.id, r.model.as_str().len()));
        }
    }
    // give_to_client(): an answer in a fresh chunk, given to the client's owner.
    answer(pool, server, client, answer_len);
    // finish_request(): the request chunk goes back.
    pool.release(id, server)
        .expect("the server releases what it adopted");
}

fn answer(pool: &Pool, server: OwnerId, client: OwnerId, answer_len: usize) {
    let Ok(mut out) = pool.loan(server, answer_len.max(64)) else {
        return;
    };
    let resp = Response {
        id: 0,
        body: Body::Error(ErrorBody {
            code: ErrorCode::InvalidRequest,
            message: "x".repeat(answer_len / 2),
        }),
    };
    if encode_into(&resp, out.as_mut_slice()).is_err() {
        return;
    }
    let id = out.into_id();
    if pool.adopt(id, server, client).map(|l| l.into_id()).is_err() {
        pool.release(id, server)
            .expect("the server releases an answer it could not hand over");
    }
}

/// The client's handling of answer descriptor `d`.
fn receive(pool: &Pool, owner: OwnerId, d: [u64; 2]) {
    let Some(Descriptor {
        kind, chunk, len, ..
    }) = Descriptor::from_words(d)
    else {
        return;
    };
    if kind == DescriptorKind::InlineError {
        let _ = ErrorCode::from_u8(len as u8);
        return;
    }
    let id = ChunkId::from_raw(chunk);
    if let Ok(bytes) = pool.chunk_slice(id, owner) {
        if let Some(bytes) = bytes.get(..len as usize) {
            let _ = access_response(bytes).map(|r| r.id.to_native());
        }
    }
    // ResponseView::drop.
    let _ = pool.release(id, owner);
}
