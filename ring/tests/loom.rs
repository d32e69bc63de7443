//! loom models of the lock-free algorithms. Run with `bash ci/loom.sh` (`--cfg shm_loom`).
#![cfg(shm_loom)]

use std::time::{Duration, Instant};

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use shm_ring::pool::{Pool, PoolConfig, SizeClass};
use shm_ring::{mpmc, spsc, Region, WaitStrategy};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

#[test]
fn spsc_delivers_in_order_across_wraparound() {
    loom::model(|| {
        let region = Region::heap(spsc::bytes_for::<u64>(2));
        spsc::init::<u64>(&region, 2).unwrap();
        let mut tx = spsc::Producer::<u64>::attach(&region).unwrap();
        let mut rx = spsc::Consumer::<u64>::attach(&region).unwrap();
        let t = thread::spawn(move || {
            for i in 0..3 {
                while tx.push(i).is_err() {
                    thread::yield_now();
                }
            }
        });
        for i in 0..3 {
            loop {
                match rx.pop() {
                    Ok(v) => {
                        assert_eq!(v, i);
                        break;
                    }
                    Err(_) => thread::yield_now(),
                }
            }
        }
        t.join().unwrap();
    });
}

#[test]
fn spsc_parked_consumer_is_never_left_asleep() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::heap::<u64>(2);
        let t = thread::spawn(move || tx.push(7).unwrap());
        let strategy = WaitStrategy::SpinThenPark {
            spin: Duration::ZERO,
        };
        assert_eq!(rx.pop_blocking(&strategy, far()), Ok(7));
        t.join().unwrap();
    });
}

#[test]
fn mpmc_two_producers_one_consumer() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let region = Region::heap(mpmc::bytes_for::<u64>(2, 4));
        mpmc::init::<u64>(&region, 2, 4).unwrap();
        let rx = mpmc::Consumer::<u64>::attach(&region).unwrap();
        let producers: Vec<_> = (1..=2u64)
            .map(|v| {
                let region = region.clone();
                thread::spawn(move || {
                    let tx = mpmc::Producer::<u64>::attach(&region).unwrap();
                    while tx.push(v).is_err() {
                        thread::yield_now();
                    }
                })
            })
            .collect();
        let mut sum = 0;
        for _ in 0..2 {
            loop {
                match rx.pop() {
                    Ok(v) => {
                        sum += v;
                        break;
                    }
                    Err(_) => thread::yield_now(),
                }
            }
        }
        assert_eq!(sum, 3, "each item exactly once");
        for p in producers {
            p.join().unwrap();
        }
    });
}

#[test]
fn pool_never_loans_one_chunk_twice() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let config = PoolConfig {
            classes: vec![SizeClass {
                chunk_size: 64,
                count: 2,
            }],
            max_owners: 2,
            quota: 4,
            class_share: 100,
        };
        let region = Region::heap(Pool::bytes_for(&config));
        Pool::init(&region, &config).unwrap();
        // Bit N is set while chunk N is out on a loan: a second loan of it finds the bit set.
        let loaned = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let region = region.clone();
                let loaned = Arc::clone(&loaned);
                thread::spawn(move || {
                    let pool = Pool::attach(&region).unwrap();
                    let me = pool.register_owner().unwrap();
                    // Both loans are held across the other thread's loans and releases.
                    let mut held = Vec::new();
                    for _ in 0..2 {
                        if let Ok(loan) = pool.loan(me, 64) {
                            let n = loan.id().index();
                            assert!(n < 64, "chunk index {n} out of the bitmap");
                            let before = loaned.fetch_or(1 << n, Ordering::SeqCst);
                            assert_eq!(before & (1 << n), 0, "chunk {n} loaned twice");
                            held.push(loan);
                        }
                    }
                    for loan in held {
                        // Cleared before the chunk goes back, so its next loan finds it clear.
                        let n = loan.id().index();
                        loaned.fetch_and(!(1 << n), Ordering::SeqCst);
                        drop(loan);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(loaned.load(Ordering::SeqCst), 0);
        let pool = Pool::attach(&region).unwrap();
        assert_eq!(pool.stats().in_use(), 0);
        assert_eq!(pool.stats().classes[0].free, 2);
    });
}
