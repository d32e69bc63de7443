//! Target `headers`: a peer scribbles over the shared headers of a structure while this process
//! uses it.
//!
//! The first byte picks the structure (SPSC ring, MPMC ring, pool, service segment); a few bytes
//! give its shape; it is initialised in heap memory and attached. Then each command of the rest
//! of the input either overwrites bytes of the structure (its header, index words, slot stamps,
//! free lists, owner table, chunk headers: anything inside it) or runs one operation: attach again,
//! push, pop, loan, release, adopt, reclaim... At most [`MAX_OPS`] commands run, every wait has a
//! deadline that has already passed, and the `-timeout` of the fuzzer catches a loop that does not
//! end. An operation may fail; it must not panic, touch memory outside the structure, or hang.

use std::time::Instant;

use shm_ring::pool::{ChunkId, Loan, OwnerId, Pool, PoolConfig, SizeClass};
use shm_ring::{mpmc, spsc, Region, WaitStrategy};
use shm_runtime::protocol::{DescriptorWords, PROTOCOL_VERSION};
use shm_runtime::testing::{Layout, ServiceHeader, RING_PARTICIPANTS, SERVICE_MAGIC};

use crate::Bytes;

/// Most commands one input runs.
pub const MAX_OPS: usize = 256;

/// Structure kinds, the first byte of an input modulo 4.
pub const SPSC: u8 = 0;
/// See [`SPSC`].
pub const MPMC: u8 = 1;
/// See [`SPSC`].
pub const POOL: u8 = 2;
/// See [`SPSC`].
pub const SERVICE: u8 = 3;

/// Commands common to every structure (the command byte modulo the structure's command count).
pub const PATCH_BYTES: u8 = 0;
/// Adds a small signed delta to, sets or flips a bit of an aligned 64-bit word.
pub const PATCH_WORD: u8 = 1;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Bytes::new(data);
    match input.u8() % 4 {
        SPSC => spsc_ops(&mut input),
        MPMC => mpmc_ops(&mut input),
        POOL => pool_ops(&mut input),
        _ => service_ops(&mut input),
    }
}

/// Overwrites 1..=8 bytes at an offset below `span` with bytes of the input.
fn patch_bytes(region: &Region, span: usize, input: &mut Bytes<'_>) {
    let off = usize::from(input.u16());
    let n = usize::from(input.u8() % 8) + 1;
    let bytes = input.take(n);
    let span = span.min(region.len());
    if bytes.len() > span {
        return;
    }
    let at = off % (span - bytes.len() + 1);
    // SAFETY: at + bytes.len() <= span <= region.len(), so the write stays inside the region's
    // memory, which the region keeps alive. The structures reach these bytes through atomics and
    // raw pointers only, and no reference into them is live here (one thread, between operations),
    // so this stands for another process writing the shared bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            region.as_ptr().as_ptr().add(at),
            bytes.len(),
        );
    }
}

/// Changes one aligned 64-bit word below `span`: adds a small signed delta, sets it, or flips a bit.
fn patch_word(region: &Region, span: usize, input: &mut Bytes<'_>) {
    let words = span.min(region.len()) / 8;
    if words == 0 {
        return;
    }
    let at = usize::from(input.u16()) % words * 8;
    let mode = input.u8();
    let Some(p) = region.ptr_at::<u64>(at) else {
        return;
    };
    let p = p.as_ptr();
    // SAFETY: ptr_at checked bounds and alignment; as in `patch_bytes`, nothing else refers to
    // these bytes while the word changes.
    unsafe {
        let old = p.read();
        let new = match mode % 4 {
            0 => old.wrapping_add(u64::from(mode >> 2) + 1),
            1 => old.wrapping_sub(u64::from(mode >> 2) + 1),
            2 => old ^ (1 << (mode >> 2)),
            _ => input.u64(),
        };
        p.write(new);
    }
}

/// A deadline that has passed: every blocking call returns after one check.
fn now() -> Instant {
    Instant::now()
}

fn spsc_ops(input: &mut Bytes<'_>) {
    let cap = 1usize << (input.u8() % 5);
    let span = spsc::bytes_for::<DescriptorWords>(cap);
    let region = Region::heap(span);
    spsc::init::<DescriptorWords>(&region, cap).expect("the region fits the ring");
    let mut tx = spsc::Producer::<DescriptorWords>::attach(&region).ok();
    let mut rx = spsc::Consumer::<DescriptorWords>::attach(&region).ok();
    let mut next = 0u64;
    let mut out = [[0u64; 2]; 24];
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 12 {
            PATCH_BYTES => patch_bytes(&region, span, input),
            PATCH_WORD => patch_word(&region, span, input),
            2 => {
                drop(tx.take());
                tx = spsc::Producer::attach(&region).ok();
            }
            3 => {
                drop(rx.take());
                rx = spsc::Consumer::attach(&region).ok();
            }
            4 => {
                if let Some(tx) = &mut tx {
                    next += 1;
                    let _ = tx.push([next, !next]);
                }
            }
            5 => {
                if let Some(rx) = &mut rx {
                    let _ = rx.pop();
                }
            }
            6 => {
                let n = usize::from(input.u8()) % out.len();
                if let Some(tx) = &mut tx {
                    let values: Vec<DescriptorWords> =
                        (0..n as u64).map(|i| [next + i, 0]).collect();
                    next += n as u64;
                    assert!(tx.push_slice(&values) <= n);
                }
            }
            7 => {
                let n = usize::from(input.u8()) % out.len();
                if let Some(rx) = &mut rx {
                    assert!(rx.pop_into(&mut out[..n]) <= n);
                }
            }
            8 => {
                if let Some(tx) = &mut tx {
                    let _ = tx.push_blocking([next, 1], &WaitStrategy::BusySpin, now());
                }
            }
            9 => {
                if let Some(rx) = &mut rx {
                    let _ = rx.pop_blocking(&WaitStrategy::default(), now());
                }
            }
            10 => {
                if let Some(tx) = &mut tx {
                    assert!(tx.free_slots() <= tx.capacity());
                    let _ = (tx.is_abandoned(), tx.parked_consumers());
                }
                if let Some(rx) = &mut rx {
                    assert!(rx.len() <= rx.capacity());
                    let _ = (rx.is_empty(), rx.is_abandoned());
                }
            }
            _ => {
                if input.u8() & 1 == 0 {
                    tx = None;
                } else {
                    rx = None;
                }
            }
        }
    }
}

fn mpmc_ops(input: &mut Bytes<'_>) {
    let cap = 2usize << (input.u8() % 4);
    let participants = 1 + usize::from(input.u8() % 4);
    let span = mpmc::bytes_for::<DescriptorWords>(cap, participants);
    let region = Region::heap(span);
    mpmc::init::<DescriptorWords>(&region, cap, participants).expect("the region fits the ring");
    let mut producers: [Option<mpmc::Producer<DescriptorWords>>; 2] =
        [mpmc::Producer::attach(&region).ok(), None];
    let mut consumers: [Option<mpmc::Consumer<DescriptorWords>>; 2] =
        [mpmc::Consumer::attach(&region).ok(), None];
    let mut next = 0u64;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let k = usize::from(op >> 7);
        match op % 11 {
            PATCH_BYTES => patch_bytes(&region, span, input),
            PATCH_WORD => patch_word(&region, span, input),
            2 => {
                drop(producers[k].take());
                producers[k] = mpmc::Producer::attach(&region).ok();
            }
            3 => {
                drop(consumers[k].take());
                consumers[k] = mpmc::Consumer::attach(&region).ok();
            }
            4 => {
                if let Some(p) = &producers[k] {
                    next += 1;
                    let _ = p.push([next, !next]);
                }
            }
            5 => {
                if let Some(p) = &producers[k] {
                    next += 1;
                    let v = next;
                    let _ = p.push_with(|slot| *slot = [v, 0]);
                }
            }
            6 => {
                if let Some(c) = &consumers[k] {
                    let _ = c.pop();
                }
            }
            7 => {
                if let Some(p) = &producers[k] {
                    let _ = p.push_blocking([next, 2], &WaitStrategy::BusySpin, now());
                }
            }
            8 => {
                if let Some(c) = &consumers[k] {
                    let _ = c.pop_blocking(&WaitStrategy::default(), now());
                }
            }
            9 => {
                if let Some(p) = &producers[k] {
                    // A patched header may name more participants than at init.
                    assert!(usize::from(p.participant_index()) < mpmc::MAX_PARTICIPANTS);
                    let _ = p.capacity();
                }
                if let Some(c) = &consumers[k] {
                    let _ = (c.is_empty(), c.clear_parked_consumers(), c.capacity());
                }
            }
            _ => {
                if input.u8() & 1 == 0 {
                    producers[k] = None;
                } else {
                    consumers[k] = None;
                }
            }
        }
    }
}

/// The pool shapes tried: the descriptor target's, and one with three classes and more owners.
fn pool_config(choice: u8) -> PoolConfig {
    if choice & 1 == 0 {
        crate::descriptor::config()
    } else {
        PoolConfig {
            classes: vec![
                SizeClass {
                    chunk_size: 64,
                    count: 5,
                },
                SizeClass {
                    chunk_size: 192,
                    count: 3,
                },
                SizeClass {
                    chunk_size: 1024,
                    count: 2,
                },
            ],
            max_owners: 6,
            quota: 4,
            class_share: 100,
        }
    }
}

fn pick_owner(input: &mut Bytes<'_>, owners: &[OwnerId]) -> OwnerId {
    let b = input.u8();
    if b & 0x80 == 0 && !owners.is_empty() {
        owners[usize::from(b) % owners.len()]
    } else if b == 0xFF {
        OwnerId::from_raw(input.u32()).unwrap_or(OwnerId::from_raw(1).expect("non-zero"))
    } else {
        OwnerId::from_raw(u32::from(b & 0x0F) + 1).expect("non-zero")
    }
}

fn pick_id(input: &mut Bytes<'_>, ids: &[ChunkId]) -> ChunkId {
    let b = input.u8();
    let base = if ids.is_empty() {
        0
    } else {
        ids[usize::from(b & 0x3F) % ids.len()].raw()
    };
    if b & 0x80 != 0 {
        ChunkId::from_raw(base ^ input.u64())
    } else if b & 0x40 != 0 {
        // Another generation of the same chunk.
        ChunkId::from_raw(base ^ u64::from(input.u8()))
    } else {
        ChunkId::from_raw(base)
    }
}

fn pool_ops(input: &mut Bytes<'_>) {
    let config = pool_config(input.u8());
    let span = Pool::bytes_for(&config);
    let region = Region::heap(span);
    Pool::init(&region, &config).expect("the region fits the pool");
    let mut owners: Vec<OwnerId> = Vec::new();
    let mut ids: Vec<ChunkId> = Vec::new();
    let mut ops = 0;
    'attach: while ops < MAX_OPS && !input.is_empty() {
        let pool = Pool::attach(&region);
        let mut loans: Vec<Loan<'_>> = Vec::new();
        while ops < MAX_OPS && !input.is_empty() {
            ops += 1;
            let op = input.u8() % 16;
            match op {
                PATCH_BYTES => patch_bytes(&region, span, input),
                PATCH_WORD => patch_word(&region, span, input),
                2 => continue 'attach,
                _ => {}
            }
            let Ok(pool) = &pool else { continue };
            match op {
                3 if owners.len() < 8 => {
                    if let Ok(o) = pool.register_owner() {
                        owners.push(o);
                    }
                }
                4 => {
                    let o = pick_owner(input, &owners);
                    pool.unregister_owner(o);
                }
                5 => {
                    let o = pick_owner(input, &owners);
                    let size = usize::from(input.u16());
                    if let Ok(l) = pool.loan(o, size) {
                        assert!(l.len() >= size);
                        if loans.len() < 32 {
                            loans.push(l);
                        }
                    }
                }
                6 if !loans.is_empty() => {
                    let i = usize::from(input.u8()) % loans.len();
                    drop(loans.swap_remove(i));
                }
                7 if !loans.is_empty() => {
                    let i = usize::from(input.u8()) % loans.len();
                    let id = loans.swap_remove(i).into_id();
                    if ids.len() < 32 {
                        ids.push(id);
                    }
                }
                8 if !loans.is_empty() => {
                    let i = usize::from(input.u8()) % loans.len();
                    let v = input.u8();
                    let s = loans[i].as_mut_slice();
                    let last = s.len() - 1;
                    s[0] = v;
                    s[last] = v;
                }
                9 => {
                    let id = pick_id(input, &ids);
                    let from = pick_owner(input, &owners);
                    let to = pick_owner(input, &owners);
                    if let Ok(l) = pool.adopt(id, from, to) {
                        if loans.len() < 32 {
                            loans.push(l);
                        }
                    }
                }
                10 => {
                    let id = pick_id(input, &ids);
                    let o = pick_owner(input, &owners);
                    let _ = pool.release(id, o);
                }
                11 => {
                    let id = pick_id(input, &ids);
                    let o = pick_owner(input, &owners);
                    if let Ok(s) = pool.chunk_slice(id, o) {
                        std::hint::black_box((s[0], s[s.len() - 1]));
                    }
                }
                12 => {
                    let o = pick_owner(input, &owners);
                    pool.reclaim(o);
                }
                13 => {
                    pool.reclaim_dead();
                    pool.reclaim_orphans();
                }
                14 => {
                    let s = pool.stats();
                    assert!(s.in_use() <= s.capacity());
                    assert!(s.classes.iter().all(|c| c.free <= c.count));
                    let o = pick_owner(input, &owners);
                    let _ = (pool.held_by(o), pool.owner_token(o), pool.max_chunk_size());
                }
                15 => {
                    let o = pick_owner(input, &owners);
                    let size = usize::from(input.u16());
                    if let Ok(l) = pool.loan_until(o, size, now()) {
                        if loans.len() < 32 {
                            loans.push(l);
                        }
                    }
                }
                _ => {}
            }
        }
        break;
    }
}

fn service_ops(input: &mut Bytes<'_>) {
    let max_clients = 1 + usize::from(input.u8() % 2);
    let lanes = 1 + usize::from(input.u8() % 2);
    let cap = 2usize << (input.u8() % 3);
    let pool_config = crate::descriptor::config();
    let layout = Layout::new(max_clients, lanes, cap, &pool_config);
    let region = Region::heap(layout.total);
    // What the server writes at creation (`init_segment`), magic last.
    {
        let h = region
            .ptr_at::<ServiceHeader>(0)
            .expect("the region holds the header");
        // SAFETY: in bounds and aligned (ptr_at); the header is atomics only.
        let h = unsafe { h.as_ref() };
        use std::sync::atomic::Ordering::{Relaxed, Release};
        h.protocol.store(PROTOCOL_VERSION, Relaxed);
        h.max_clients.store(max_clients as u32, Relaxed);
        h.lanes.store(lanes as u32, Relaxed);
        h.ring_capacity.store(cap as u32, Relaxed);
        h.ring_bytes.store(layout.ring_bytes as u64, Relaxed);
        h.pool_offset.store(layout.pool as u64, Relaxed);
        h.pool_bytes.store(layout.pool_bytes as u64, Relaxed);
        h.max_inflight.store(8, Relaxed);
        h.magic.store(SERVICE_MAGIC, Release);
    }
    for c in 0..max_clients {
        let ring = |off| region.slice(off, layout.ring_bytes).expect("inside");
        mpmc::init::<DescriptorWords>(&ring(layout.response_ring(c)), cap, RING_PARTICIPANTS)
            .expect("fits");
        for l in 0..lanes {
            mpmc::init::<DescriptorWords>(&ring(layout.request_ring(c, l)), cap, RING_PARTICIPANTS)
                .expect("fits");
        }
    }
    let pool_region = region
        .slice(layout.pool, layout.pool_bytes)
        .expect("inside");
    Pool::init(&pool_region, &pool_config).expect("fits");
    // Patches land in the tables before the rings half of the time.
    let tables = layout.rings;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let span = if op & 0x80 == 0 { tables } else { layout.total };
        match op % 3 {
            PATCH_BYTES => patch_bytes(&region, span, input),
            PATCH_WORD => patch_word(&region, span, input),
            _ => open_service(&region, input),
        }
    }
}

/// What an opener of the segment does: read the layout, then reach each part through it.
fn open_service(region: &Region, input: &mut Bytes<'_>) {
    let Ok(layout) = Layout::read(region) else {
        return;
    };
    let which = input.u8();
    for c in 0..layout.max_clients {
        let resp = region
            .slice(layout.response_ring(c), layout.ring_bytes)
            .expect("a validated layout keeps every ring inside the segment");
        if let Ok(p) = mpmc::Producer::<DescriptorWords>::attach(&resp) {
            let _ = p.push([c as u64, 0]);
        }
        for l in 0..layout.lanes {
            let req = region
                .slice(layout.request_ring(c, l), layout.ring_bytes)
                .expect("a validated layout keeps every ring inside the segment");
            if let Ok(cons) = mpmc::Consumer::<DescriptorWords>::attach(&req) {
                for _ in 0..(which % 4) {
                    let _ = cons.pop();
                }
            }
        }
    }
    let pool_region = region
        .slice(layout.pool, layout.pool_bytes)
        .expect("a validated layout keeps the pool inside the segment");
    if let Ok(pool) = Pool::attach(&pool_region) {
        if let Ok(me) = pool.register_owner() {
            if let Ok(mut l) = pool.loan(me, usize::from(which) * 8) {
                l.as_mut_slice()[0] = which;
            }
            pool.unregister_owner(me);
        }
    }
}
