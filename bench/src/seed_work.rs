//! The seed's tier-1 microbenchmarks, reproduced with the seed's method and measured beside this
//! project's equivalent path in the same run.
//!
//! The seed's shapes: an inference request of N prompt tokens (N = 100, 1000, 4000; one element =
//! one token) with a model name and sampling parameters; a scheduler of 4 priority levels; a pool of
//! 4 KiB buffers; a 200-token generation result.
//!
//! | what | the seed's method (`seed_*`) | this project |
//! |---|---|---|
//! | encode | `serde_json` of an internally tagged enum into a reused `Vec` | loan a shared-memory pool chunk, [`encode_request`] into it, release it |
//! | decode | `serde_json::from_slice`, then sum every token | full validation as the server does it ([`access_request_chunk`]: head, bytecheck, semantic [`Limits`], head agreement), then sum every token in place |
//! | scheduler | `BinaryHeap` ordered by (priority, arrival) | the worker's [`Scheduler`] |
//! | memory | `Mutex<Vec<Box<[u8; 4096]>>>` acquire + release | pool loan + release |
//! | result | a struct holding `"generated ".repeat(200)` | a 200-token generation written in place ([`Out::generation`]) |
//!
//! Each measurement is one per-iteration primitive (a method on a small state type) that the
//! criterion suites call from `iter`/`iter_custom` and the report's batch-median functions call in
//! a loop, so both run the same code. Nothing is cached between iterations: every decode parses or
//! validates the whole message again.

use std::collections::BinaryHeap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use shm_ring::pool::{ChunkId, OwnerId, Pool, PoolConfig};
use shm_ring::{CreateOptions, Region, Segment};
use shm_runtime::backend::writer::Out;
use shm_runtime::protocol::{
    access_request_chunk, encode_request, tokens_native, ArchivedInput, FinishReason, Input,
    Limits, Params, Request, Task, Usage,
};
use shm_runtime::scheduler::{Job, ReplyTo, Scheduler};

use crate::stats::median;

/// Prompt sizes of the seed's IPC benchmarks, in tokens.
pub const SEED_SIZES: [usize; 3] = [100, 1000, 4000];

/// Model name carried by both request shapes.
const MODEL: &str = "bench-model";

/// The `i`-th prompt token of every benchmark request: ids spread over a 32k vocabulary, so JSON
/// carries the 1..5 digit numbers of a real prompt.
fn token(i: usize) -> u32 {
    ((i as u64 * 7919 + 13) % 32_000) as u32
}

/// How both decoders read every token: a wrapping `u32` sum in one pass (16 independent lanes,
/// which the compiler turns into vector adds; the same code on both sides).
#[inline]
pub fn token_sum(tokens: &[u32]) -> u32 {
    let mut lanes = [0u32; 16];
    let mut chunks = tokens.chunks_exact(16);
    for c in &mut chunks {
        for (l, &t) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(t);
        }
    }
    let rest = chunks
        .remainder()
        .iter()
        .fold(0u32, |a, &t| a.wrapping_add(t));
    lanes.iter().fold(rest, |a, &l| a.wrapping_add(l))
}

/// Sum of the first `n` prompt tokens as [`token_sum`] computes it: what every decode must find.
pub fn expected_sum(n: usize) -> u32 {
    let tokens: Vec<u32> = (0..n).map(token).collect();
    token_sum(&tokens)
}

// ---------------------------------------------------------------------------------------------
// Request shapes
// ---------------------------------------------------------------------------------------------

/// The seed's sampling parameters.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SeedParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Top-k sampling.
    pub top_k: u32,
    /// Stream the answer.
    pub stream: bool,
    /// Deadline, milliseconds.
    pub timeout_ms: u64,
}

/// The seed's IPC message: an internally tagged enum (`{"type": "InferenceRequest", ...}`), as the
/// seed encoded it with `serde_json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type")]
pub enum SeedMessage {
    /// An inference request.
    InferenceRequest {
        /// Chosen by the client.
        request_id: u64,
        /// The model's name.
        model_id: String,
        /// The prompt, as token ids.
        prompt_tokens: Vec<u32>,
        /// Sampling parameters.
        params: SeedParams,
    },
    /// A cancellation.
    Cancel {
        /// The request to cancel.
        request_id: u64,
    },
}

/// The seed-shaped request of `n` prompt tokens.
pub fn seed_request(n: usize) -> SeedMessage {
    SeedMessage::InferenceRequest {
        request_id: 42,
        model_id: MODEL.to_owned(),
        prompt_tokens: (0..n).map(token).collect(),
        params: SeedParams {
            max_tokens: 256,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            stream: false,
            timeout_ms: 30_000,
        },
    }
}

/// This project's request with the same content as [`seed_request`]`(n)`.
pub fn our_request(n: usize) -> Request {
    Request {
        id: 42,
        model: MODEL.to_owned(),
        task: Task::Generate,
        input: Input::Tokens((0..n).map(token).collect()),
        params: Params {
            max_tokens: 256,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            stream: false,
            timeout_ms: 30_000,
            ..Params::default()
        },
    }
}

/// The seed-style semantic check of a parsed request: the same rules and limits as
/// [`check_request`](shm_runtime::protocol::check_request) applies to the equivalent fields.
///
/// # Errors
///
/// A sentence naming the first violated rule.
pub fn seed_check(msg: &SeedMessage, limits: &Limits) -> Result<()> {
    let SeedMessage::InferenceRequest {
        model_id,
        prompt_tokens,
        params,
        ..
    } = msg
    else {
        bail!("not an inference request");
    };
    ensure!(
        !model_id.is_empty() && model_id.len() <= limits.max_model_name,
        "model name must be 1..={} bytes",
        limits.max_model_name
    );
    ensure!(
        prompt_tokens.len() <= limits.max_tokens_in,
        "too many prompt tokens"
    );
    ensure!(
        params.temperature.is_finite() && (0.0..=10.0).contains(&params.temperature),
        "temperature out of range"
    );
    ensure!(
        params.top_p > 0.0 && params.top_p <= 1.0,
        "top_p out of range"
    );
    ensure!(
        (1..=limits.max_new_tokens).contains(&params.max_tokens),
        "max_tokens out of range"
    );
    ensure!(
        params.timeout_ms <= u64::from(limits.max_timeout_ms),
        "timeout_ms out of range"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encode / decode primitives
// ---------------------------------------------------------------------------------------------

/// The seed's codec: `serde_json` of [`SeedMessage`] with a reused output buffer.
#[derive(Debug)]
pub struct SeedJson {
    msg: SeedMessage,
    out: Vec<u8>,
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

// ---------------------------------------------------------------------------------------------
// Scheduler primitives
// ---------------------------------------------------------------------------------------------

/// A queued request in the seed's scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedQueued {
    /// 0 (most urgent) ..= 3.
    pub priority: u8,
    /// Arrival order (FIFO within a level).
    pub seq: u64,
    /// The request's id.
    pub request_id: u64,
}

impl Ord for SeedQueued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Max-heap: the most urgent level, then the earliest arrival, is the greatest.
        other
            .priority
            .cmp(&self.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for SeedQueued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The seed's scheduler: one binary heap over 4 priority levels, FIFO within a level.
#[derive(Debug, Default)]
pub struct SeedHeap {
    heap: BinaryHeap<SeedQueued>,
    seq: u64,
}

impl SeedHeap {
    /// An empty scheduler.
    pub fn new() -> SeedHeap {
        SeedHeap::default()
    }

    /// Queues request `id` at `priority`.
    #[inline]
    pub fn push(&mut self, id: u64, priority: u8) {
        self.seq += 1;
        self.heap.push(SeedQueued {
            priority: priority & 3,
            seq: self.seq,
            request_id: id,
        });
    }

    /// The most urgent, oldest request.
    #[inline]
    pub fn pop(&mut self) -> Option<SeedQueued> {
        self.heap.pop()
    }

    /// One enqueue + dequeue pair, the `i`-th (priority `i & 3`), as [`OurScheduler::pair`].
    #[inline]
    pub fn pair(&mut self, i: u32) -> Option<u64> {
        self.push(u64::from(i), (i & 3) as u8);
        self.pop().map(|q| q.request_id)
    }

    /// A burst: `k` requests queued (priorities `i & 3`), then all popped; returns the sum of the
    /// popped ids.
    #[inline]
    pub fn burst(&mut self, k: u32) -> u64 {
        for i in 0..k {
            self.push(u64::from(i), (i & 3) as u8);
        }
        std::iter::from_fn(|| self.pop())
            .map(|q| q.request_id)
            .sum()
    }
}

/// This project's worker scheduler with the job shape of [`runtime_work::scheduler_mops`]
/// (32 client slots, jobs of 8 clients at 4 priority levels).
///
/// [`runtime_work::scheduler_mops`]: crate::runtime_work::scheduler_mops
#[derive(Debug)]
pub struct OurScheduler {
    s: Scheduler,
    job: Job,
}

impl Default for OurScheduler {
    fn default() -> Self {
        OurScheduler::new()
    }
}

impl OurScheduler {
    /// An empty scheduler of 32 client slots.
    pub fn new() -> OurScheduler {
        let now = shm_runtime::scheduler::now_ns();
        OurScheduler {
            s: Scheduler::new(32),
            job: Job {
                reply: ReplyTo {
                    slot: 0,
                    epoch: 1,
                    ticket: 0,
                },
                chunk: ChunkId::from_raw(0),
                len: 0,
                request_id: 0,
                priority: 1,
                deadline_ns: now,
                accepted_ns: now,
            },
        }
    }

    /// One enqueue + dequeue pair, the `i`-th (client `i % 8`, priority `i & 3`).
    #[inline]
    pub fn pair(&mut self, i: u32) -> Option<u64> {
        let _ = self.s.push(Job {
            reply: ReplyTo {
                slot: (i % 8) as u16,
                epoch: 1,
                ticket: i,
            },
            request_id: u64::from(i),
            priority: (i & 3) as u8,
            ..self.job
        });
        self.s.pop().map(|j| j.request_id)
    }

    /// A burst: `k` requests queued (client `i % 8`, priority `i & 3`), then all popped; returns
    /// the sum of the popped ids.
    #[inline]
    pub fn burst(&mut self, k: u32) -> u64 {
        for i in 0..k {
            let _ = self.s.push(Job {
                reply: ReplyTo {
                    slot: (i % 8) as u16,
                    epoch: 1,
                    ticket: i,
                },
                request_id: u64::from(i),
                priority: (i & 3) as u8,
                ..self.job
            });
        }
        std::iter::from_fn(|| self.s.pop())
            .map(|j| j.request_id)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Memory primitives
// ---------------------------------------------------------------------------------------------

/// Bytes of one buffer of the seed's pool.
pub const SEED_BUFFER: usize = 4096;

/// The seed's memory pool: 4 KiB buffers behind a mutex.
#[derive(Debug)]
pub struct SeedPool {
    free: Mutex<Vec<Box<[u8; SEED_BUFFER]>>>,
}

impl SeedPool {
    /// A pool of `count` zeroed buffers.
    pub fn new(count: usize) -> SeedPool {
        SeedPool {
            free: Mutex::new((0..count).map(|_| Box::new([0; SEED_BUFFER])).collect()),
        }
    }

    /// Takes a buffer (a fresh one when the pool is empty).
    #[inline]
    pub fn acquire(&self) -> Box<[u8; SEED_BUFFER]> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        got.unwrap_or_else(|| Box::new([0; SEED_BUFFER]))
    }

    /// Gives a buffer back.
    #[inline]
    pub fn release(&self, buf: Box<[u8; SEED_BUFFER]>) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
    }

    /// One acquire + release pair, touching the buffer once.
    #[inline]
    pub fn acquire_release(&self) {
        let mut b = self.acquire();
        b[0] = 1;
        self.release(black_box(b));
    }
}

/// This project's slab pool (standard shape, heap-backed) and a registered owner.
#[derive(Debug)]
pub struct OurPool {
    pool: Pool,
    owner: OwnerId,
}

impl OurPool {
    /// A pool of the service's standard shape.
    ///
    /// # Errors
    ///
    /// When the pool cannot be set up.
    pub fn new() -> Result<OurPool> {
        let config = PoolConfig::standard();
        let region = Region::heap(Pool::bytes_for(&config));
        Pool::init(&region, &config)?;
        let pool = Pool::attach(&region)?;
        let owner = pool
            .register_owner()
            .map_err(|e| anyhow!("register: {e}"))?;
        Ok(OurPool { pool, owner })
    }

    /// One loan of `size` bytes + release, touching the chunk once.
    ///
    /// # Errors
    ///
    /// When the loan fails.
    #[inline]
    pub fn loan_release(&self, size: usize) -> Result<()> {
        let mut loan = self.pool.loan(self.owner, black_box(size))?;
        loan.as_mut_slice()[0] = 1;
        drop(black_box(loan));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Result creation primitives
// ---------------------------------------------------------------------------------------------

/// Tokens of the benchmark generation result.
pub const RESULT_TOKENS: usize = 200;

/// The seed's inference result: an owned struct with the generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedResult {
    /// The request's id.
    pub request_id: u64,
    /// Generated text.
    pub output: String,
    /// Generated tokens.
    pub tokens_generated: u32,
    /// Whether the generation finished.
    pub finished: bool,
}

/// One seed-style result creation: `"generated ".repeat(200)` into a [`SeedResult`].
#[inline]
pub fn seed_result_create(request_id: u64) -> SeedResult {
    SeedResult {
        request_id,
        output: "generated ".repeat(black_box(RESULT_TOKENS)),
        tokens_generated: RESULT_TOKENS as u32,
        finished: true,
    }
}

#[repr(C, align(64))]
struct ResultBuf([u8; 64 << 10]);

/// A 200-token generation written in place, the work of [`runtime_work::result_create_ns`]: the text
/// (2000 bytes) and 200 token ids appended through [`Out::generation`], then the archive's root.
///
/// [`runtime_work::result_create_ns`]: crate::runtime_work::result_create_ns
pub struct InPlaceResult {
    buf: Box<ResultBuf>,
    text: String,
    tokens: Vec<u32>,
    usage: Usage,
}

impl std::fmt::Debug for InPlaceResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlaceResult")
            .field("text_bytes", &self.text.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Default for InPlaceResult {
    fn default() -> Self {
        InPlaceResult::new()
    }
}

impl InPlaceResult {
    /// A 64 KiB chunk-like buffer and the generation to write.
    pub fn new() -> InPlaceResult {
        InPlaceResult {
            buf: Box::new(ResultBuf([0; 64 << 10])),
            text: "generated ".repeat(RESULT_TOKENS),
            tokens: (0..RESULT_TOKENS as u32).collect(),
            usage: Usage {
                prompt_tokens: 1,
                generated_tokens: RESULT_TOKENS as u32,
                ..Usage::default()
            },
        }
    }

    /// Writes the result once; returns the bytes of the answer.
    ///
    /// # Errors
    ///
    /// When the buffer is too small.
    #[inline]
    pub fn create(&mut self) -> Result<usize> {
        let mut out = Out::in_buffer(&mut self.buf.0, 1);
        let mut g = out
            .generation(RESULT_TOKENS, self.text.len())
            .map_err(anyhow::Error::msg)?;
        g.push_text(black_box(&self.text))
            .map_err(anyhow::Error::msg)?;
        g.push_tokens(black_box(&self.tokens))
            .map_err(anyhow::Error::msg)?;
        g.finish(FinishReason::Length, self.usage)
            .map_err(anyhow::Error::msg)?;
        let len = out.written().ok_or_else(|| anyhow!("nothing written"))?;
        Ok(black_box(len))
    }

    /// The bytes written by the last [`create`](Self::create) of `len` bytes.
    pub fn bytes(&self, len: usize) -> &[u8] {
        &self.buf.0[..len]
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent load
// ---------------------------------------------------------------------------------------------

/// The seed's concurrent load: `producers` threads push `per_producer` requests each into one
/// `Mutex<BinaryHeap>` scheduler while one consumer thread pops them all. Returns the wall time
/// from the start signal until the last request is popped.
pub fn seed_concurrent_heap(per_producer: u64, producers: usize) -> Duration {
    let heap = Arc::new(Mutex::new(SeedHeap::new()));
    let start = Arc::new(std::sync::Barrier::new(producers + 1));
    let total = per_producer * producers as u64;
    let consumer = {
        let (heap, start) = (Arc::clone(&heap), Arc::clone(&start));
        std::thread::spawn(move || {
            start.wait();
            let t = Instant::now();
            let mut got = 0;
            while got < total {
                match heap.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                    Some(q) => {
                        black_box(q);
                        got += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
            t.elapsed()
        })
    };
    let kids: Vec<_> = (0..producers)
        .map(|p| {
            let (heap, start) = (Arc::clone(&heap), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                for i in 0..per_producer {
                    heap.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(i, ((i + p as u64) & 3) as u8);
                }
            })
        })
        .collect();
    for k in kids {
        k.join().expect("producer thread");
    }
    consumer.join().expect("consumer thread")
}

/// Wall time for `clients` client threads, each with its own connection (default wait strategy,
/// unpinned), to complete `per_client` echo requests each through `server`, keeping up to 16 in
/// flight per client. Connecting is outside the timed part.
///
/// # Errors
///
/// When a connection or a request fails.
pub fn echo_clients(
    server: &crate::runtime_work::EchoServer,
    clients: usize,
    per_client: usize,
) -> Result<Duration> {
    let conns = (0..clients)
        .map(|_| shm_runtime::Client::connect(&server.name))
        .collect::<Result<Vec<_>, _>>()?;
    let start = std::sync::Barrier::new(clients + 1);
    std::thread::scope(|s| {
        let kids: Vec<_> = conns
            .iter()
            .map(|client| {
                let start = &start;
                s.spawn(move || -> Result<()> {
                    let req = crate::runtime_work::echo_request();
                    let mut open = std::collections::VecDeque::with_capacity(16);
                    start.wait();
                    let (mut sent, mut done) = (0, 0);
                    while done < per_client {
                        while sent < per_client && open.len() < 16 {
                            open.push_back(client.submit(&req)?);
                            sent += 1;
                        }
                        let t = open.pop_front().expect("in flight");
                        let v = client.recv(t, Duration::from_secs(10))?;
                        ensure!(v.len() >= 64, "short answer");
                        done += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for k in kids {
            k.join().map_err(|_| anyhow!("client thread panicked"))??;
        }
        Ok(t.elapsed())
    })
}

// ---------------------------------------------------------------------------------------------
// Report figures: medians of batches
// ---------------------------------------------------------------------------------------------

/// Median ns per call of `f` over 31 batches, each batch sized to take about 2 ms.
fn median_ns(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut per_batch = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..per_batch {
            f()?;
        }
        if t.elapsed() >= Duration::from_millis(2) || per_batch >= 1 << 24 {
            break;
        }
        per_batch *= 2;
    }
    let mut per = Vec::with_capacity(31);
    for _ in 0..31 {
        let t = Instant::now();
        for _ in 0..per_batch {
            f()?;
        }
        per.push(t.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    Ok(median(&mut per))
}

fn melem_s(n: usize, ns: f64) -> f64 {
    n as f64 / ns * 1e3
}

/// Million prompt tokens per second encoding seed-style: `serde_json::to_writer` of a
/// [`SeedMessage`] of `n` tokens into a reused `Vec`. Median of 31 batches.
///
/// # Errors
///
/// Never in practice (kept fallible like its peers).
pub fn seed_json_encode_melem_s(n: usize) -> Result<f64> {
    let mut s = SeedJson::new(n);
    Ok(melem_s(
        n,
        median_ns(|| {
            s.encode();
            Ok(())
        })?,
    ))
}

/// Million prompt tokens per second decoding seed-style: `serde_json::from_slice` of a
/// [`SeedMessage`] of `n` tokens, then the sum of every token (checked). Median of 31 batches.
///
/// # Errors
///
/// When a decode fails or sums wrong.
pub fn seed_json_decode_melem_s(n: usize) -> Result<f64> {
    let s = SeedJson::new(n);
    let want = expected_sum(n);
    Ok(melem_s(
        n,
        median_ns(|| {
            ensure!(s.decode()? == want, "wrong token sum");
            Ok(())
        })?,
    ))
}

/// Million prompt tokens per second encoding this project's way: loan a chunk of a shared-memory
/// pool, serialize the `n`-token request (head and archive) into it, release it. Median of 31
/// batches.
///
/// # Errors
///
/// When the pool cannot be set up or an encode fails.
pub fn encode_melem_s(n: usize) -> Result<f64> {
    let mut s = ShmCodec::new(n)?;
    Ok(melem_s(n, median_ns(|| s.encode().map(drop))?))
}

/// Million prompt tokens per second decoding this project's way: full validation of the
/// `n`-token request in its shared chunk (ownership, head, bytecheck, semantic limits, head
/// agreement), then the sum of every token read in place (checked). Median of 31 batches.
///
/// # Errors
///
/// When the pool cannot be set up or a decode fails or sums wrong.
pub fn decode_melem_s(n: usize) -> Result<f64> {
    let s = ShmCodec::new(n)?;
    let want = expected_sum(n);
    Ok(melem_s(
        n,
        median_ns(|| {
            ensure!(s.decode()? == want, "wrong token sum");
            Ok(())
        })?,
    ))
}

/// Median ns of one seed-style validation of an `n`-token request: `serde_json::from_slice` and
/// [`seed_check`].
///
/// # Errors
///
/// When validation fails.
pub fn seed_validate_ns(n: usize) -> Result<f64> {
    let s = SeedJson::new(n);
    median_ns(|| s.validate())
}

/// Median ns of one validation of an `n`-token request in its shared chunk, as the server does it
/// (see [`ShmCodec::validate`]).
///
/// # Errors
///
/// When validation fails.
pub fn validate_chunk_ns(n: usize) -> Result<f64> {
    let s = ShmCodec::new(n)?;
    median_ns(|| s.validate())
}

/// Millions of enqueue + dequeue pairs per second through the seed's binary-heap scheduler (4
/// priority levels), the same pattern as [`runtime_work::scheduler_mops`]. Median of 31 batches.
///
/// [`runtime_work::scheduler_mops`]: crate::runtime_work::scheduler_mops
pub fn seed_scheduler_mops() -> f64 {
    let mut h = SeedHeap::new();
    let mut i = 0u32;
    let ns = median_ns(|| {
        i = i.wrapping_add(1);
        black_box(h.pair(i));
        Ok(())
    })
    .expect("infallible");
    1e3 / ns
}

/// Median ns of one acquire + release of a 4 KiB buffer from the seed's mutex pool (single thread,
/// uncontended).
pub fn seed_pool_acquire_release_ns() -> f64 {
    let p = SeedPool::new(64);
    median_ns(|| {
        p.acquire_release();
        Ok(())
    })
    .expect("infallible")
}

/// Median ns of one loan + release of a `size`-byte chunk from this project's pool (single thread,
/// uncontended); `size` = [`SEED_BUFFER`] matches the seed's buffers.
///
/// # Errors
///
/// When the pool cannot be set up or a loan fails.
pub fn pool_loan_release_ns(size: usize) -> Result<f64> {
    let p = OurPool::new()?;
    median_ns(|| p.loan_release(size))
}

/// Median ns of one seed-style result creation (`"generated ".repeat(200)` into a
/// [`SeedResult`], dropped afterwards).
pub fn seed_result_create_ns() -> f64 {
    let mut id = 0u64;
    median_ns(|| {
        id += 1;
        drop(black_box(seed_result_create(id)));
        Ok(())
    })
    .expect("infallible")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_json_round_trips_and_sums() {
        for n in [0, 1, 100] {
            let mut s = SeedJson::new(n);
            let len = s.encode();
            assert_eq!(&s.out[..len], s.wire());
            let back: SeedMessage = serde_json::from_slice(s.wire()).unwrap();
            assert_eq!(back, seed_request(n));
            assert_eq!(s.decode().unwrap(), expected_sum(n));
            s.validate().unwrap();
        }
        let text = String::from_utf8(SeedJson::new(2).wire().to_vec()).unwrap();
        assert!(text.starts_with(r#"{"type":"InferenceRequest""#), "{text}");
    }

    #[test]
    fn token_sum_reads_every_token() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let v: Vec<u32> = (0..n as u32).map(|i| i * 3 + 1).collect();
            let plain = v.iter().fold(0u32, |a, &t| a.wrapping_add(t));
            assert_eq!(token_sum(&v), plain, "n = {n}");
        }
    }

    #[test]
    fn seed_check_refuses_bad_parameters() {
        let mut m = seed_request(3);
        if let SeedMessage::InferenceRequest { params, .. } = &mut m {
            params.top_p = 0.0;
        }
        assert!(seed_check(&m, &Limits::default()).is_err());
        assert!(seed_check(&SeedMessage::Cancel { request_id: 1 }, &Limits::default()).is_err());
    }

    #[test]
    fn our_decode_sums_the_sent_tokens() {
        for n in SEED_SIZES {
            let mut c = ShmCodec::new(n).unwrap();
            assert_eq!(c.decode().unwrap(), expected_sum(n));
            c.validate().unwrap();
            let len = c.encode().unwrap();
            assert_eq!(len, c.encoded_len());
            assert_eq!(c.decode().unwrap(), expected_sum(n));
        }
    }

    #[test]
    fn schedulers_pop_most_urgent_first() {
        let mut h = SeedHeap::new();
        for (id, p) in [(1, 3), (2, 1), (3, 0), (4, 1)] {
            h.push(id, p);
        }
        let order: Vec<u64> = std::iter::from_fn(|| h.pop())
            .map(|q| q.request_id)
            .collect();
        assert_eq!(order, vec![3, 2, 4, 1]);
        let mut ours = OurScheduler::new();
        let mut seed = SeedHeap::new();
        for i in 0..100 {
            assert_eq!(ours.pair(i), Some(u64::from(i)));
            assert_eq!(seed.pair(i), Some(u64::from(i)));
        }
        assert_eq!(ours.burst(1000), 499_500);
        assert_eq!(seed.burst(1000), 499_500);
    }

    #[test]
    fn pools_and_results_work() {
        let p = SeedPool::new(1);
        p.acquire_release();
        let (a, b) = (p.acquire(), p.acquire());
        p.release(a);
        p.release(b);
        OurPool::new().unwrap().loan_release(SEED_BUFFER).unwrap();
        let r = seed_result_create(9);
        assert_eq!(r.output.len(), 2000);
        let mut g = InPlaceResult::new();
        let len = g.create().unwrap();
        let resp = shm_runtime::protocol::access_response(g.bytes(len)).unwrap();
        match &resp.body {
            shm_runtime::protocol::ArchivedBody::Generation(gen) => {
                assert_eq!(gen.text.as_str(), "generated ".repeat(200));
                assert_eq!(gen.tokens.len(), 200);
            }
            other => panic!("wrong body {other:?}"),
        }
    }

    #[test]
    fn the_seed_concurrent_heap_delivers_everything() {
        let d = seed_concurrent_heap(1000, 2);
        assert!(d > Duration::ZERO);
    }
}
