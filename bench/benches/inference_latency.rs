//! The seed's validation benchmark, at the IPC sizes: full validation of an N-token request as the
//! server does it (ownership, head, bytecheck, semantic limits) beside the seed's way
//! (`serde_json` parse, then the same semantic checks on the parsed struct).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shm_bench::seed_comparison::{SeedJson, ShmCodec, SEED_SIZES};

fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("inference_latency_validate");
    for n in SEED_SIZES {
        let ours = ShmCodec::new(n).expect("shared-memory pool");
        g.bench_function(BenchmarkId::new("shm_validate", n), |b| {
            b.iter(|| ours.validate().expect("valid"))
        });
        let seed = SeedJson::new(n);
        g.bench_function(BenchmarkId::new("seed_json_parse_check", n), |b| {
            b.iter(|| seed.validate().expect("valid"))
        });
    }
    g.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
