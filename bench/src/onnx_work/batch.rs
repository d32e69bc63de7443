//! Many texts in one request: texts per second of 32 texts per request through the runtime
//! (one client, the typed `embed`), beside `ort` in-process on the same 32 texts split into the
//! same sub-batches as the backend's `max_batch`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shm_runtime::Client;

use super::*;

/// Texts per request.
pub const BATCH_TEXTS: usize = 32;

/// Texts per second, 32 texts per request.
#[derive(Debug, Clone, Copy)]
pub struct Batch32 {
    /// Through the runtime: `Client::embed` of 32 texts, back to back.
    pub runtime_tps: f64,
    /// `ort` in this process on the same texts, in runs of the backend's default `max_batch`.
    pub direct_tps: f64,
    /// Largest difference between a runtime row and the direct row of the same text.
    pub max_diff: f32,
}

/// 32 sentences of 6 to 20 words (rows are padded within each run, as real batches are).
pub fn batch_texts() -> Vec<String> {
    let words = SENTENCE
        .split_whitespace()
        .chain("while the rain kept falling on the quiet streets of the old town".split(' '))
        .collect::<Vec<_>>();
    (0..BATCH_TEXTS)
        .map(|i| {
            let len = 6 + (i * 5) % 15;
            (0..len)
                .map(|k| words[(i * 7 + k * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Both rates for `window` each, taking turns over `rounds` rounds; medians.
///
/// # Errors
///
/// When the server or a request fails, or the two paths' answers differ beyond 1e-4.
pub fn batch32(rounds: usize, window: Duration) -> Result<Batch32> {
    let texts = batch_texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let max_batch = shm_runtime::backend::onnx::DEFAULT_MAX_BATCH;
    let mut direct = Direct::load(Kind::Embed)?;
    let server = OnnxServer::start(Kind::Embed, None, None)?;
    let client = Client::connect(&server.name)?;
    let model = Kind::Embed.model_name();
    // The same numbers both ways, first.
    let served = client.embed(model, &refs)?;
    let mut max_diff = 0f32;
    for (i, part) in refs.chunks(max_batch).enumerate() {
        for (j, row) in direct.run_batch(part)?.iter().enumerate() {
            let got = served.row(i * max_batch + j);
            for (a, b) in got.iter().zip(row) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
    }
    drop(served);
    if max_diff > 1e-4 {
        bail!("the runtime's batch differs from ort's by {max_diff}");
    }
    let (mut rt, mut d) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        for arm in 0..2 {
            std::thread::sleep(SETTLE);
            let t0 = Instant::now();
            let mut done = 0;
            if (arm + r) % 2 == 0 {
                while t0.elapsed() < window {
                    std::hint::black_box(client.embed(model, &refs)?);
                    done += refs.len();
                }
                rt.push(done as f64 / t0.elapsed().as_secs_f64());
            } else {
                while t0.elapsed() < window {
                    for part in refs.chunks(max_batch) {
                        std::hint::black_box(direct.run_batch(part)?);
                    }
                    done += refs.len();
                }
                d.push(done as f64 / t0.elapsed().as_secs_f64());
            }
        }
    }
    drop(client);
    server.stop()?;
    Ok(Batch32 {
        runtime_tps: crate::stats::median(&mut rt),
        direct_tps: crate::stats::median(&mut d),
        max_diff,
    })
}
