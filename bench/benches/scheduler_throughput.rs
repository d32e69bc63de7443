//! The seed's scheduler benchmark: enqueue + dequeue through a scheduler of 4 priority levels, this
//! project's worker scheduler beside the seed's binary heap. `pair`: one push then one pop (the
//! queue stays short); `burst_1000`: 1000 pushes, then 1000 pops.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shm_bench::seed_comparison::{OurScheduler, SeedHeap};

fn pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_pair");
    g.throughput(Throughput::Elements(1));
    let mut ours = OurScheduler::new();
    let mut i = 0u32;
    g.bench_function("shm_scheduler", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ours.pair(i)
        })
    });
    let mut seed = SeedHeap::new();
    g.bench_function("seed_binary_heap", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            seed.pair(i)
        })
    });
    g.finish();
}

fn bursts(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_burst_1000");
    g.throughput(Throughput::Elements(1000));
    let mut ours = OurScheduler::new();
    g.bench_function("shm_scheduler", |b| b.iter(|| ours.burst(1000)));
    let mut seed = SeedHeap::new();
    g.bench_function("seed_binary_heap", |b| b.iter(|| seed.burst(1000)));
    g.finish();
}

criterion_group!(benches, pairs, bursts);
criterion_main!(benches);
