//! The seed's memory benchmark: acquire + release of a request buffer, single thread. This
//! project's slab pool (loan of a 4 KiB chunk, and of a 200-byte one) beside the seed's
//! `Mutex<Vec<Box<[u8; 4096]>>>`.

use criterion::{criterion_group, criterion_main, Criterion};
use shm_bench::seed_comparison::{OurPool, SeedPool, SEED_BUFFER};

fn acquire_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_acquire_release");
    let ours = OurPool::new().expect("pool");
    g.bench_function("shm_pool_4k", |b| {
        b.iter(|| ours.loan_release(SEED_BUFFER).expect("loan"))
    });
    g.bench_function("shm_pool_200b", |b| {
        b.iter(|| ours.loan_release(200).expect("loan"))
    });
    let seed = SeedPool::new(64);
    g.bench_function("seed_mutex_pool_4k", |b| b.iter(|| seed.acquire_release()));
    g.finish();
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
