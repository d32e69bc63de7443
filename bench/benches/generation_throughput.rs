//! The seed's result-creation benchmark: a 200-token generation result. This project writes it in
//! place (text, token ids, archive root) into a chunk-sized buffer; the seed builds a struct
//! holding `"generated ".repeat(200)` (and drops it).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shm_bench::seed_comparison::{seed_result_create, InPlaceResult, RESULT_TOKENS};

fn results(c: &mut Criterion) {
    let mut g = c.benchmark_group("generation_result_200_tokens");
    g.throughput(Throughput::Elements(RESULT_TOKENS as u64));
    let mut ours = InPlaceResult::new();
    g.bench_function("shm_in_place", |b| b.iter(|| ours.create().expect("fits")));
    let mut id = 0u64;
    g.bench_function("seed_string", |b| {
        b.iter(|| {
            id += 1;
            seed_result_create(id)
        })
    });
    g.finish();
}

criterion_group!(benches, results);
criterion_main!(benches);
