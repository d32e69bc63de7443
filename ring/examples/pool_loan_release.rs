//! Times one pool loan of a 200-byte chunk plus its release, one thread, no contention: the hot
//! path of every request and answer. Prints the median, minimum and maximum over batches, in ns per
//! loan + release.
//!
//! ```text
//! cargo run --release -p shm-ring --example pool_loan_release [batches] [per_batch]
//! ```

use std::time::Instant;

use shm_ring::pool::{Pool, PoolConfig};
use shm_ring::Region;

fn main() {
    let mut args = std::env::args().skip(1);
    let batches: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let per_batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let config = PoolConfig::standard();
    let region = Region::heap(Pool::bytes_for(&config));
    Pool::init(&region, &config).expect("a standard pool fits its own size");
    let pool = Pool::attach(&region).expect("the pool was just initialised");
    let me = pool
        .register_owner()
        .expect("a fresh pool has free owner entries");
    let mut per_op = Vec::with_capacity(batches);
    // One warm-up batch, not counted.
    for batch in 0..=batches {
        let start = Instant::now();
        for _ in 0..per_batch {
            let loan = pool
                .loan(me, std::hint::black_box(200))
                .expect("one chunk at a time never exhausts the pool");
            drop(std::hint::black_box(loan));
        }
        if batch > 0 {
            per_op.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
        }
    }
    per_op.sort_by(f64::total_cmp);
    println!(
        "pool loan+release: median {:.1} ns, min {:.1} ns, max {:.1} ns ({batches} batches of {per_batch})",
        per_op[per_op.len() / 2],
        per_op[0],
        per_op[per_op.len() - 1]
    );
}
