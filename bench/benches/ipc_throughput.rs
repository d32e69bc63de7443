//! The seed's IPC benchmark: encode and decode of an inference request of N prompt tokens
//! (N = 100, 1000, 4000; one element = one token), this project's shared-memory path beside the
//! seed's `serde_json` of an internally tagged enum. Decode reads every token on both sides.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shm_bench::seed_comparison::{expected_sum, SeedJson, ShmCodec, SEED_SIZES};

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc_encode");
    for n in SEED_SIZES {
        g.throughput(Throughput::Elements(n as u64));
        let mut ours = ShmCodec::new(n).expect("shared-memory pool");
        g.bench_function(BenchmarkId::new("shm_chunk", n), |b| {
            b.iter(|| ours.encode().expect("encode"))
        });
        let mut seed = SeedJson::new(n);
        g.bench_function(BenchmarkId::new("seed_json", n), |b| {
            b.iter(|| seed.encode())
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc_decode");
    for n in SEED_SIZES {
        g.throughput(Throughput::Elements(n as u64));
        let want = expected_sum(n);
        let ours = ShmCodec::new(n).expect("shared-memory pool");
        assert_eq!(ours.decode().expect("decode"), want);
        g.bench_function(BenchmarkId::new("shm_validated", n), |b| {
            b.iter(|| ours.decode().expect("decode"))
        });
        let seed = SeedJson::new(n);
        assert_eq!(seed.decode().expect("decode"), want);
        g.bench_function(BenchmarkId::new("seed_json", n), |b| {
            b.iter(|| seed.decode().expect("decode"))
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
