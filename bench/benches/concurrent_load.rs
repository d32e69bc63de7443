//! The seed's concurrent-load benchmark, made really concurrent: several producers push requests
//! at once into one shared structure, with a consumer draining it.
//!
//! - `shm_mpmc_ring/K`: K producer **processes** push 16-byte request descriptors into one
//!   shared-memory MPMC ring, this process consumes (and checks per-producer order).
//! - `shm_echo_service/K`: K clients (threads of this process, one connection each, up to 16
//!   requests in flight) against an echo server in another process: full request -> worker ->
//!   response round trips.
//! - `seed_mutex_heap/K`: the seed's shape, K producer threads pushing into one
//!   `Mutex<BinaryHeap>` scheduler while one thread pops.
//!
//! Element = one request. Process and thread start-up are outside the timed part.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use shm_bench::ring_work::mpmc_throughput;
use shm_bench::runtime_work::EchoServer;
use shm_bench::seed_comparison::{echo_clients, seed_concurrent_heap};

const PRODUCERS: [usize; 2] = [2, 4];

/// Scales a run of `done` elements that took `took` to the `iters` criterion asked for.
fn scaled(took: Duration, done: u64, iters: u64) -> Duration {
    took.mul_f64(iters as f64 / done as f64)
}

fn concurrent(c: &mut Criterion) {
    let mut g = c.benchmark_group("concurrent_load");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    for k in PRODUCERS {
        g.bench_function(BenchmarkId::new("shm_mpmc_ring", k), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(k as u64).max(1);
                let mops = mpmc_throughput(per, k).expect("mpmc run");
                let done = per * k as u64;
                scaled(
                    Duration::from_secs_f64(done as f64 / (mops * 1e6)),
                    done,
                    iters,
                )
            })
        });
    }
    let server = EchoServer::start("park").expect("echo server");
    for k in PRODUCERS {
        g.bench_function(BenchmarkId::new("shm_echo_service", k), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(k as u64).max(1);
                let took = echo_clients(&server, k, per as usize).expect("echo run");
                scaled(took, per * k as u64, iters)
            })
        });
    }
    server.stop().expect("echo server stops");
    for k in PRODUCERS {
        g.bench_function(BenchmarkId::new("seed_mutex_heap", k), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(k as u64).max(1);
                scaled(seed_concurrent_heap(per, k), per * k as u64, iters)
            })
        });
    }
    g.finish();
}

fn main() {
    shm_bench::child::dispatch();
    let mut c = Criterion::default().configure_from_args();
    concurrent(&mut c);
    c.final_summary();
}
