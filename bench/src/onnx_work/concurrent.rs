//! Concurrent clients: requests per second of several clients against a batching server and a
//! non-batching one, beside `ort` itself on whole batches.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use shm_runtime::Client;

use super::*;

/// Throughput of concurrent embedding clients against a batching server and a non-batching one.
#[derive(Debug, Clone, Copy)]
pub struct Concurrent {
    /// Requests per second with the backend's default batching (max_batch 8, max_delay_us 500).
    pub batched_rps: f64,
    /// Requests per second with max_batch 1.
    pub unbatched_rps: f64,
    /// Mean size of the batching server's batches of two or more requests.
    pub mean_batch: f64,
    /// Share of the batching server's requests that ran in such batches.
    pub batched_share: f64,
    /// CPU time of the client threads during the batched windows, percent of one core (`None`
    /// when /proc cannot tell).
    pub clients_cpu_pct: Option<f64>,
    /// Texts per second of this process running `ort` directly on batches of `clients` copies of
    /// the sentence, back to back (what batching can reach on this machine).
    pub direct_batch_rps: f64,
}

/// Requests per second of `clients` concurrent embedding clients for `window`, against a server
/// with the backend's default batching and one with max_batch 1 (both unpinned), and texts per
/// second of [`Direct::run_batch`] on batches of `clients` texts for `window`, alternating over
/// `rounds` rounds; medians.
///
/// # Errors
///
/// When a server or a request fails.
pub fn concurrent(rounds: usize, clients: usize, window: Duration) -> Result<Concurrent> {
    let mut direct = Direct::load(Kind::Embed)?;
    let texts = vec![SENTENCE; clients];
    let batched = OnnxServer::start(Kind::Embed, None, None)?;
    let single = OnnxServer::start(Kind::Embed, Some(1), None)?;
    let svc = shm_runtime::testing::Service::open(&batched.name).map_err(anyhow::Error::msg)?;
    let lane = svc.lane(0);
    let (mut b, mut s, mut d, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Some(Vec::new()));
    let counts = || {
        (
            lane.batches.load(Ordering::Relaxed),
            lane.batched.load(Ordering::Relaxed),
            lane.completed.load(Ordering::Relaxed),
        )
    };
    let before = counts();
    for r in 0..rounds {
        for arm in 0..3 {
            match (arm + r) % 3 {
                0 => {
                    let (rps, pct) = concurrent_rps(&batched, clients, window)?;
                    b.push(rps);
                    cpu = cpu.zip(pct).map(|(mut v, p)| {
                        v.push(p);
                        v
                    });
                }
                1 => s.push(concurrent_rps(&single, clients, window)?.0),
                _ => {
                    std::thread::sleep(SETTLE);
                    std::hint::black_box(direct.run_batch(&texts)?);
                    let t0 = Instant::now();
                    let mut done = 0;
                    while t0.elapsed() < window {
                        std::hint::black_box(direct.run_batch(&texts)?);
                        done += texts.len();
                    }
                    d.push(done as f64 / t0.elapsed().as_secs_f64());
                }
            }
        }
    }
    let after = counts();
    drop(svc);
    batched.stop()?;
    single.stop()?;
    let (batches, in_batches, done) = (
        (after.0 - before.0) as f64,
        (after.1 - before.1) as f64,
        (after.2 - before.2) as f64,
    );
    Ok(Concurrent {
        batched_rps: crate::stats::median(&mut b),
        unbatched_rps: crate::stats::median(&mut s),
        mean_batch: if batches > 0.0 {
            in_batches / batches
        } else {
            1.0
        },
        batched_share: if done > 0.0 { in_batches / done } else { 0.0 },
        clients_cpu_pct: cpu.map(|mut v| crate::stats::median(&mut v)),
        direct_batch_rps: crate::stats::median(&mut d),
    })
}

/// Requests per second of `clients` threads of this process, each with its own connection,
/// sending the request back to back for `window` (after a few unrecorded requests each), and the
/// CPU time of those threads over the window in percent of one core (`None` when /proc cannot
/// tell).
///
/// # Errors
///
/// When a connection or request fails.
fn concurrent_rps(
    server: &OnnxServer,
    clients: usize,
    window: Duration,
) -> Result<(f64, Option<f64>)> {
    let start = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let start = start.clone();
            let name = server.name.clone();
            let req = server.request();
            std::thread::spawn(move || -> Result<(u64, Instant, Option<u64>)> {
                let connected = Client::connect(&name);
                let warmed = connected.map_err(anyhow::Error::from).and_then(|c| {
                    for _ in 0..3 {
                        drop(c.infer(&req)?);
                    }
                    Ok(c)
                });
                start.wait();
                let client = warmed?;
                let (t0, ticks) = (Instant::now(), thread_cpu_ticks());
                let mut done = 0u64;
                while t0.elapsed() < window {
                    drop(client.infer(&req)?);
                    done += 1;
                }
                let ticks = ticks.zip(thread_cpu_ticks()).map(|(a, b)| b - a);
                Ok((done, Instant::now(), ticks))
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut total = 0;
    let mut last = t0;
    let mut cpu_ticks = Some(0);
    for t in threads {
        let (done, end, ticks) = t
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
        total += done;
        last = last.max(end);
        cpu_ticks = cpu_ticks.zip(ticks).map(|(a, b)| a + b);
    }
    let secs = (last - t0).as_secs_f64();
    Ok((
        total as f64 / secs,
        cpu_ticks.map(|t| t as f64 / ticks_per_second() / secs * 100.0),
    ))
}
