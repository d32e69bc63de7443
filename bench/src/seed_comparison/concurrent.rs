//! Concurrent load: the seed's `Mutex<BinaryHeap>` under producer threads, and echo clients of
//! this project's server.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};

use super::*;

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
