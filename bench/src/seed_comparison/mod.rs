//! The seed's tier-1 microbenchmarks, reproduced with the seed's method and measured beside this
//! project's equivalent path in the same run.
//!
//! The seed's shapes: an inference request of N prompt tokens (N = 100, 1000, 4000; one element =
//! one token) with a model name and sampling parameters; a scheduler of 4 priority levels; a pool of
//! 4 KiB buffers; a 200-token generation result.
//!
//! | what | the seed's method (`seed_*`) | this project |
//! |---|---|---|
//! | encode | `serde_json` of an internally tagged enum into a reused `Vec` | loan a shared-memory pool chunk, [`encode_request`](shm_runtime::protocol::encode_request) into it, release it |
//! | decode | `serde_json::from_slice`, then sum every token | full validation as the server does it ([`access_request_chunk`](shm_runtime::protocol::access_request_chunk): head, bytecheck, semantic [`Limits`](shm_runtime::protocol::Limits), head agreement), then sum every token in place |
//! | scheduler | `BinaryHeap` ordered by (priority, arrival) | the worker's [`Scheduler`](shm_runtime::testing::Scheduler) |
//! | memory | `Mutex<Vec<Box<[u8; 4096]>>>` acquire + release | pool loan + release |
//! | result | a struct holding `"generated ".repeat(200)` | a 200-token generation written in place ([`Out::generation`](shm_runtime::backend::writer::Out::generation)) |
//!
//! Each measurement is one per-iteration primitive (a method on a small state type) that the
//! criterion suites call from `iter`/`iter_custom` and the report's batch-median functions call in
//! a loop, so both run the same code. Nothing is cached between iterations: every decode parses or
//! validates the whole message again.
//!
//! One module per row of the table (`requests`, `codec`, `scheduler`, `memory`, `result`), plus
//! `concurrent` (the concurrent load) and `figures` (the report's batch medians); everything is
//! re-exported here.

mod codec;
mod concurrent;
mod figures;
mod memory;
mod requests;
mod result;
mod scheduler;

pub use codec::{SeedJson, ShmCodec};
pub use concurrent::{echo_clients, seed_concurrent_heap};
pub use figures::{
    decode_melem_s, encode_melem_s, pool_loan_release_ns, seed_json_decode_melem_s,
    seed_json_encode_melem_s, seed_pool_acquire_release_ns, seed_result_create_ns,
    seed_scheduler_mops, seed_validate_ns, validate_chunk_ns,
};
pub use memory::{OurPool, SeedPool, SEED_BUFFER};
pub use requests::{our_request, seed_check, seed_request, SeedMessage, SeedParams};
pub use result::{seed_result_create, InPlaceResult, SeedResult, RESULT_TOKENS};
pub use scheduler::{OurScheduler, SeedHeap, SeedQueued};

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

#[cfg(test)]
mod tests {
    use super::*;
    use shm_runtime::protocol::Limits;
    use std::time::Duration;

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
