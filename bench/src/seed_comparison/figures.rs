//! The report's figures: medians of batches of the primitives above.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::stats::median;

use super::*;

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
