//! Criterion suite for the ring crate: SPSC and MPMC push+pop, pool loan+release (single thread).

use criterion::{criterion_group, criterion_main, Criterion};
use shm_ring::pool::{Pool, PoolConfig};
use shm_ring::{mpmc, spsc, Region};

fn rings(c: &mut Criterion) {
    let (mut tx, mut rx) = spsc::heap::<[u64; 2]>(1024);
    c.bench_function("spsc_push_pop", |b| {
        b.iter(|| {
            tx.push(std::hint::black_box([1, 2])).unwrap();
            std::hint::black_box(rx.pop().unwrap());
        })
    });
    let region = Region::heap(mpmc::bytes_for::<[u64; 2]>(1024, 4));
    mpmc::init::<[u64; 2]>(&region, 1024, 4).unwrap();
    let mtx = mpmc::Producer::<[u64; 2]>::attach(&region).unwrap();
    let mrx = mpmc::Consumer::<[u64; 2]>::attach(&region).unwrap();
    c.bench_function("mpmc_push_pop", |b| {
        b.iter(|| {
            mtx.push(std::hint::black_box([1, 2])).unwrap();
            std::hint::black_box(mrx.pop().unwrap());
        })
    });
}

fn pool(c: &mut Criterion) {
    let config = PoolConfig::standard();
    let region = Region::heap(Pool::bytes_for(&config));
    Pool::init(&region, &config).unwrap();
    let pool = Pool::attach(&region).unwrap();
    let me = pool.register_owner().unwrap();
    c.bench_function("pool_loan_release", |b| {
        b.iter(|| {
            drop(std::hint::black_box(
                pool.loan(me, std::hint::black_box(200)).unwrap(),
            ))
        })
    });
}

criterion_group!(benches, rings, pool);
criterion_main!(benches);
