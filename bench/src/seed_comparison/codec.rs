//! Encode and decode: the seed's `serde_json` codec and this project's shared-memory codec.

use std::hint::black_box;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use shm_ring::pool::{ChunkId, OwnerId, Pool, PoolConfig};
use shm_ring::{CreateOptions, Region, Segment};
use shm_runtime::protocol::{
    access_request_chunk, encode_request, tokens_native, ArchivedInput, Limits, Request,
};

use super::*;

/// The seed's codec: `serde_json` of [`SeedMessage`] with a reused output buffer.
#[derive(Debug)]
pub struct SeedJson {
    msg: SeedMessage,
    pub(super) out: Vec<u8>,
    wire: Vec<u8>,
    limits: Limits,
    n: usize,
}

impl SeedJson {
    /// State for requests of `n` prompt tokens; the wire bytes to decode are encoded once here.
    pub fn new(n: usize) -> SeedJson {
        let msg = seed_request(n);
        let wire = serde_json::to_vec(&msg).expect("a seed request serializes");
        SeedJson {
            msg,
            out: Vec::with_capacity(wire.len()),
            wire,
            limits: Limits::default(),
            n,
        }
    }

    /// Prompt tokens per request.
    pub fn tokens(&self) -> usize {
        self.n
    }

    /// The encoded message that [`decode`](Self::decode) parses.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// One encode: `serde_json::to_writer` into the reused buffer (cleared, capacity kept).
    /// Returns the bytes written.
    #[inline]
    pub fn encode(&mut self) -> usize {
        self.out.clear();
        serde_json::to_writer(&mut self.out, black_box(&self.msg))
            .expect("writing to a Vec cannot fail");
        black_box(&self.out);
        self.out.len()
    }

    /// One decode: `serde_json::from_slice` of the whole message, then the sum of every prompt
    /// token.
    ///
    /// # Errors
    ///
    /// When the bytes do not parse as a request.
    #[inline]
    pub fn decode(&self) -> Result<u32> {
        let msg: SeedMessage = serde_json::from_slice(black_box(&self.wire))?;
        match msg {
            SeedMessage::InferenceRequest { prompt_tokens, .. } => {
                Ok(black_box(token_sum(&prompt_tokens)))
            }
            SeedMessage::Cancel { .. } => bail!("not an inference request"),
        }
    }

    /// One validation: parse, then [`seed_check`] (the tokens are not read beyond parsing).
    ///
    /// # Errors
    ///
    /// When the bytes do not parse or break a limit.
    #[inline]
    pub fn validate(&self) -> Result<()> {
        let msg: SeedMessage = serde_json::from_slice(black_box(&self.wire))?;
        seed_check(&msg, &self.limits)?;
        black_box(&msg);
        Ok(())
    }
}

/// This project's codec on its real path: requests live in chunks of a shared-memory pool (a
/// `/dev/shm` segment, the service's standard pool shape).
#[derive(Debug)]
pub struct ShmCodec {
    pool: Pool,
    owner: OwnerId,
    req: Request,
    loan_size: usize,
    /// The chunk holding the request that `decode` validates, and its length.
    held: ChunkId,
    held_len: usize,
    limits: Limits,
    n: usize,
}

impl ShmCodec {
    /// A pool in a fresh shared-memory segment and a request of `n` prompt tokens, encoded once
    /// into a held chunk for [`decode`](Self::decode).
    ///
    /// # Errors
    ///
    /// When the segment or pool cannot be made or the request does not fit.
    pub fn new(n: usize) -> Result<ShmCodec> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let config = PoolConfig::standard();
        let name = format!(
            "bench-seed-codec-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let seg = Segment::create(&name, &CreateOptions::new(Pool::bytes_for(&config)))
            .with_context(|| format!("creating segment {name}"))?;
        let region = Region::new(Arc::new(seg));
        Pool::init(&region, &config)?;
        let pool = Pool::attach(&region)?;
        let owner = pool
            .register_owner()
            .map_err(|e| anyhow!("register: {e}"))?;
        let req = our_request(n);
        // The client's sizing: 4 bytes a token plus room for the rest.
        let loan_size = n * 4 + req.model.len() + 256;
        let mut loan = pool.loan(owner, loan_size)?;
        let held_len = encode_request(&req, loan.as_mut_slice())?;
        let held = loan.into_id();
        Ok(ShmCodec {
            pool,
            owner,
            req,
            loan_size,
            held,
            held_len,
            limits: Limits::default(),
            n,
        })
    }

    /// Prompt tokens per request.
    pub fn tokens(&self) -> usize {
        self.n
    }

    /// Bytes of the encoded request (16-byte head and archive).
    pub fn encoded_len(&self) -> usize {
        self.held_len
    }

    /// One encode, as the client submits: loan a chunk, serialize the request head and archive
    /// straight into it, release the chunk. Returns the bytes written.
    ///
    /// # Errors
    ///
    /// When no chunk can be had or the request does not fit it.
    #[inline]
    pub fn encode(&mut self) -> Result<usize> {
        let mut loan = self.pool.loan(self.owner, black_box(self.loan_size))?;
        let len = encode_request(black_box(&self.req), loan.as_mut_slice())?;
        black_box(loan.as_slice());
        Ok(len)
    }

    /// One validation, as the server does it before a request runs: the chunk's ownership, the
    /// request head, bytecheck of the archive, the semantic limits, head agreement.
    ///
    /// # Errors
    ///
    /// When the request does not validate.
    #[inline]
    pub fn validate(&self) -> Result<()> {
        let chunk = self.pool.chunk_slice(self.held, self.owner)?;
        let bytes = black_box(&chunk[..self.held_len]);
        let (_, req) = access_request_chunk(bytes, &self.limits).map_err(anyhow::Error::msg)?;
        black_box(req);
        Ok(())
    }

    /// One decode: [`validate`](Self::validate), then the sum of every prompt token read in place.
    ///
    /// # Errors
    ///
    /// When the request does not validate or carries no tokens.
    #[inline]
    pub fn decode(&self) -> Result<u32> {
        let chunk = self.pool.chunk_slice(self.held, self.owner)?;
        let bytes = black_box(&chunk[..self.held_len]);
        let (_, req) = access_request_chunk(bytes, &self.limits).map_err(anyhow::Error::msg)?;
        match &req.input {
            ArchivedInput::Tokens(t) => Ok(black_box(token_sum(tokens_native(t)))),
            _ => bail!("not a token request"),
        }
    }
}
