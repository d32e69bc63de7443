//! Memory: the seed's mutex pool of 4 KiB buffers and this project's slab pool.

use std::hint::black_box;
use std::sync::Mutex;

use anyhow::{anyhow, Result};
use shm_ring::pool::{OwnerId, Pool, PoolConfig};
use shm_ring::Region;

/// Bytes of one buffer of the seed's pool.
pub const SEED_BUFFER: usize = 4096;

/// The seed's memory pool: 4 KiB buffers behind a mutex.
#[derive(Debug)]
pub struct SeedPool {
    free: Mutex<Vec<Box<[u8; SEED_BUFFER]>>>,
}

impl SeedPool {
    /// A pool of `count` zeroed buffers.
    pub fn new(count: usize) -> SeedPool {
        SeedPool {
            free: Mutex::new((0..count).map(|_| Box::new([0; SEED_BUFFER])).collect()),
        }
    }

    /// Takes a buffer (a fresh one when the pool is empty).
    #[inline]
    pub fn acquire(&self) -> Box<[u8; SEED_BUFFER]> {
        let got = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        got.unwrap_or_else(|| Box::new([0; SEED_BUFFER]))
    }

    /// Gives a buffer back.
    #[inline]
    pub fn release(&self, buf: Box<[u8; SEED_BUFFER]>) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buf);
    }

    /// One acquire + release pair, touching the buffer once.
    #[inline]
    pub fn acquire_release(&self) {
        let mut b = self.acquire();
        b[0] = 1;
        self.release(black_box(b));
    }
}

/// This project's slab pool (standard shape, heap-backed) and a registered owner.
#[derive(Debug)]
pub struct OurPool {
    pool: Pool,
    owner: OwnerId,
}

impl OurPool {
    /// A pool of the service's standard shape.
    ///
    /// # Errors
    ///
    /// When the pool cannot be set up.
    pub fn new() -> Result<OurPool> {
        let config = PoolConfig::standard();
        let region = Region::heap(Pool::bytes_for(&config));
        Pool::init(&region, &config)?;
        let pool = Pool::attach(&region)?;
        let owner = pool
            .register_owner()
            .map_err(|e| anyhow!("register: {e}"))?;
        Ok(OurPool { pool, owner })
    }

    /// One loan of `size` bytes + release, touching the chunk once.
    ///
    /// # Errors
    ///
    /// When the loan fails.
    #[inline]
    pub fn loan_release(&self, size: usize) -> Result<()> {
        let mut loan = self.pool.loan(self.owner, black_box(size))?;
        loan.as_mut_slice()[0] = 1;
        drop(black_box(loan));
        Ok(())
    }
}
