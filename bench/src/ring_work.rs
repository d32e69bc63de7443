//! Workloads of the ring crate: the cache-line ping-pong floor, SPSC ping-pong and throughput
//! between two processes, MPMC throughput with two producer processes, pool loan + release.
//!
//! Every cross-process workload creates its own segment, starts its children through
//! [`ChildProcess`] and meets them at a start line in a small control block, so that
//! start-up never lands inside a measurement.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use shm_ring::pool::{Pool, PoolConfig};
use shm_ring::{mpmc, spsc, CreateOptions, Region, Segment};

use crate::child::{pin_to, ChildProcess};
use crate::stats::{median, Latencies, Percentiles};

/// Entry type of the ring workloads: a 16-byte descriptor, the runtime's main use.
pub type Desc = [u64; 2];

/// How long any side waits for the other before giving up (a benchmark must never hang).
const PATIENCE: Duration = Duration::from_secs(30);
/// Bytes reserved at the start of each benchmark segment for the control block.
const CONTROL_BYTES: usize = 4096;

/// The start line: children count themselves in, the parent fires the start.
struct Control {
    region: Region,
}

impl Control {
    fn new(region: &Region) -> Result<Control> {
        Ok(Control {
            region: region.slice(0, CONTROL_BYTES)?,
        })
    }

    fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < 16);
        // SAFETY: the control block is CONTROL_BYTES long and REGION_ALIGN aligned, so word i (< 16)
        // is in bounds and 4-aligned; segment memory starts zeroed, a valid AtomicU32; the region
        // (and so the mapping) lives as long as `self`; all access to it is atomic.
        unsafe { &*self.region.as_ptr().as_ptr().cast::<AtomicU32>().add(i) }
    }

    fn ready(&self) -> &AtomicU32 {
        self.word(0)
    }

    fn go(&self) -> &AtomicU32 {
        self.word(1)
    }

    fn wait_for(&self, word: &AtomicU32, value: u32) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while word.load(Ordering::Acquire) < value {
            ensure!(Instant::now() < deadline, "peer did not arrive in time");
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    /// Waits (spinning) for the start signal.
    fn wait_go(&self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        let mut i = 0u32;
        while self.go().load(Ordering::Acquire) == 0 {
            spin_loop();
            i = i.wrapping_add(1);
            if i % 4096 == 0 {
                ensure!(Instant::now() < deadline, "no start signal in time");
            }
        }
        Ok(())
    }
}

struct Bench {
    region: Region,
    name: String,
}

impl Bench {
    fn create(kind: &str, bytes: usize) -> Result<Bench> {
        let name = format!("bench-{kind}-{}", std::process::id());
        let seg = Segment::create(&name, &CreateOptions::new(CONTROL_BYTES + bytes))
            .with_context(|| format!("creating segment {name}"))?;
        Ok(Bench {
            region: Region::new(Arc::new(seg)),
            name,
        })
    }

    fn open(name: &str) -> Result<Bench> {
        let seg = Segment::open(name).with_context(|| format!("opening segment {name}"))?;
        Ok(Bench {
            region: Region::new(Arc::new(seg)),
            name: name.to_owned(),
        })
    }

    fn control(&self) -> Result<Control> {
        Control::new(&self.region)
    }

    fn part(&self, index: usize, bytes: usize) -> Result<Region> {
        Ok(self.region.slice(CONTROL_BYTES + index * bytes, bytes)?)
    }
}

/// Spins until `f` yields a value, failing after [`PATIENCE`].
#[inline]
fn spin_for<T>(mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let mut i = 0u32;
    let mut deadline = None;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        spin_loop();
        i = i.wrapping_add(1);
        if i % (1 << 16) == 0 {
            let d = *deadline.get_or_insert_with(|| Instant::now() + PATIENCE);
            ensure!(Instant::now() < d, "peer stopped answering");
        }
    }
}

/// Like [`spin_for`], but yields the core after a short spin: for workloads with more busy processes
/// than cores, where a spinning waiter would burn the time slice its peer needs.
#[inline]
fn spin_then_yield_for<T>(mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let mut spins = 0u32;
    spin_for(|| {
        let r = f();
        if r.is_none() {
            spins += 1;
            if spins > 64 {
                std::thread::yield_now();
            }
        }
        r
    })
}

/// The floor: one cache line bounced between two threads pinned to different cores. Returns the
/// one-way latency percentiles (round trip / 2), ns.
///
/// # Errors
///
/// When the echo thread stops answering.
pub fn floor_pingpong(rounds: u64) -> Result<Percentiles> {
    #[repr(align(128))]
    struct Line(AtomicU64);
    let line = Arc::new(Line(AtomicU64::new(0)));
    let peer = Arc::clone(&line);
    let total = rounds + rounds / 10;
    let echo = std::thread::spawn(move || -> Result<()> {
        let _pin = pin_to(1);
        for i in 0..total {
            let want = 2 * i + 1;
            spin_for(|| (peer.0.load(Ordering::Acquire) == want).then_some(()))?;
            peer.0.store(want + 1, Ordering::Release);
        }
        Ok(())
    });
    let _pin = pin_to(0);
    let mut lat = Latencies::new();
    let mut last = Instant::now();
    for i in 0..total {
        line.0.store(2 * i + 1, Ordering::Release);
        spin_for(|| (line.0.load(Ordering::Acquire) == 2 * i + 2).then_some(()))?;
        let now = Instant::now();
        if i >= rounds / 10 {
            lat.record((now - last).as_nanos() as u64);
        }
        last = now;
    }
    echo.join().map_err(|_| anyhow!("echo thread panicked"))??;
    Ok(lat.percentiles().scaled(2.0))
}

const SPSC_CAP: usize = 4096;

/// Descriptor ping-pong over two SPSC rings between this process and a child, pinned to different
/// cores, busy-polling. Returns one-way latency percentiles (round trip / 2), ns.
///
/// # Errors
///
/// When the segment or the child cannot be set up or the child stops answering.
pub fn spsc_pingpong(rounds: u64) -> Result<Percentiles> {
    let part = spsc::bytes_for::<Desc>(SPSC_CAP);
    let b = Bench::create("pingpong", 2 * part)?;
    spsc::init::<Desc>(&b.part(0, part)?, SPSC_CAP)?;
    spsc::init::<Desc>(&b.part(1, part)?, SPSC_CAP)?;
    let mut tx = spsc::Producer::<Desc>::attach(&b.part(0, part)?)?;
    let mut rx = spsc::Consumer::<Desc>::attach(&b.part(1, part)?)?;
    let total = rounds + rounds / 10;
    let child = ChildProcess::spawn("spsc-echo", &format!("{},{total}", b.name))?;
    let ctl = b.control()?;
    ctl.wait_for(ctl.ready(), 1)?;
    let _pin = pin_to(0);
    ctl.go().store(1, Ordering::Release);
    let mut lat = Latencies::new();
    let mut last = Instant::now();
    for i in 0..total {
        tx.push([i, !i]).map_err(|e| anyhow!("push: {e}"))?;
        let back = spin_for(|| rx.pop().ok())?;
        ensure!(back == [i, !i], "echo returned {back:?} for {i}");
        let now = Instant::now();
        if i >= rounds / 10 {
            lat.record((now - last).as_nanos() as u64);
        }
        last = now;
    }
    child.join()?;
    Ok(lat.percentiles().scaled(2.0))
}

fn spsc_echo(name: &str, total: u64) -> Result<()> {
    let b = Bench::open(name)?;
    let part = spsc::bytes_for::<Desc>(SPSC_CAP);
    let mut rx = spsc::Consumer::<Desc>::attach(&b.part(0, part)?)?;
    let mut tx = spsc::Producer::<Desc>::attach(&b.part(1, part)?)?;
    let _pin = pin_to(1);
    let ctl = b.control()?;
    ctl.ready().fetch_add(1, Ordering::AcqRel);
    ctl.wait_go()?;
    for _ in 0..total {
        let v = spin_for(|| rx.pop().ok())?;
        tx.push(v).map_err(|e| anyhow!("push: {e}"))?;
    }
    Ok(())
}

/// Descriptors per second from a producer process to this (consumer) process through one SPSC
/// ring, both pinned, pushing and popping in batches of `batch`. Every descriptor is checked for
/// order. Returns millions per second.
///
/// # Errors
///
/// As for [`spsc_pingpong`]; also when a descriptor arrives out of order.
pub fn spsc_throughput(items: u64, batch: usize) -> Result<f64> {
    let part = spsc::bytes_for::<Desc>(SPSC_CAP);
    let b = Bench::create("spsc-tput", part)?;
    spsc::init::<Desc>(&b.part(0, part)?, SPSC_CAP)?;
    let mut rx = spsc::Consumer::<Desc>::attach(&b.part(0, part)?)?;
    let child = ChildProcess::spawn("spsc-producer", &format!("{},{items},{batch}", b.name))?;
    let ctl = b.control()?;
    ctl.wait_for(ctl.ready(), 1)?;
    let _pin = pin_to(0);
    let mut buf = vec![[0u64; 2]; batch];
    let mut next = 0u64;
    let start = Instant::now();
    ctl.go().store(1, Ordering::Release);
    while next < items {
        let n = spin_for(|| match rx.pop_into(&mut buf) {
            0 => None,
            n => Some(n),
        })?;
        for d in &buf[..n] {
            if d[0] != next {
                bail!("descriptor {} arrived where {next} was due", d[0]);
            }
            next += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    child.join()?;
    Ok(items as f64 / secs / 1e6)
}

fn spsc_producer(name: &str, items: u64, batch: usize) -> Result<()> {
    let b = Bench::open(name)?;
    let part = spsc::bytes_for::<Desc>(SPSC_CAP);
    let mut tx = spsc::Producer::<Desc>::attach(&b.part(0, part)?)?;
    let _pin = pin_to(1);
    let ctl = b.control()?;
    ctl.ready().fetch_add(1, Ordering::AcqRel);
    ctl.wait_go()?;
    let mut buf = vec![[0u64; 2]; batch];
    let mut next = 0u64;
    while next < items {
        let n = (items - next).min(batch as u64) as usize;
        for (k, d) in buf[..n].iter_mut().enumerate() {
            *d = [next + k as u64, 0];
        }
        let mut sent = 0;
        while sent < n {
            sent += spin_for(|| match tx.push_slice(&buf[sent..n]) {
                0 => None,
                k => Some(k),
            })?;
        }
        next += n as u64;
    }
    Ok(())
}

const MPMC_CAP: usize = 4096;

/// Descriptors per second through one MPMC ring from `producers` producer processes to this
/// (consumer) process. Every descriptor is checked for per-producer order. Returns millions per
/// second.
///
/// With more processes than cores the producers share cores with the consumer; they are not pinned
/// then, and the figure includes the scheduler's time slicing.
///
/// # Errors
///
/// As for [`spsc_throughput`].
pub fn mpmc_throughput(items_per_producer: u64, producers: usize) -> Result<f64> {
    let part = mpmc::bytes_for::<Desc>(MPMC_CAP, producers + 2);
    let b = Bench::create("mpmc-tput", part)?;
    mpmc::init::<Desc>(&b.part(0, part)?, MPMC_CAP, producers + 2)?;
    let rx = mpmc::Consumer::<Desc>::attach(&b.part(0, part)?)?;
    let kids = (0..producers)
        .map(|p| {
            ChildProcess::spawn(
                "mpmc-producer",
                &format!("{},{items_per_producer},{p},{producers}", b.name),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let ctl = b.control()?;
    ctl.wait_for(ctl.ready(), producers as u32)?;
    let _pin = (producers < num_cores()).then(|| pin_to(0));
    let oversubscribed = producers >= num_cores();
    let wait = |f: &mut dyn FnMut() -> Option<Desc>| {
        if oversubscribed {
            spin_then_yield_for(f)
        } else {
            spin_for(f)
        }
    };
    let mut next = vec![0u64; producers];
    let total = items_per_producer * producers as u64;
    let start = Instant::now();
    ctl.go().store(1, Ordering::Release);
    for _ in 0..total {
        let d = wait(&mut || rx.pop().ok())?;
        let p = d[1] as usize;
        ensure!(p < producers, "descriptor from unknown producer {p}");
        ensure!(
            d[0] == next[p],
            "producer {p}: {} arrived where {} was due",
            d[0],
            next[p]
        );
        next[p] += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    for k in kids {
        k.join()?;
    }
    Ok(total as f64 / secs / 1e6)
}

fn mpmc_producer(name: &str, items: u64, id: u64, producers: usize) -> Result<()> {
    let b = Bench::open(name)?;
    let part = mpmc::bytes_for::<Desc>(MPMC_CAP, producers + 2);
    let tx = mpmc::Producer::<Desc>::attach(&b.part(0, part)?)?;
    let _pin = (producers < num_cores()).then(|| pin_to(1 + id as usize));
    let ctl = b.control()?;
    ctl.ready().fetch_add(1, Ordering::AcqRel);
    ctl.wait_go()?;
    let oversubscribed = producers >= num_cores();
    for i in 0..items {
        if oversubscribed {
            spin_then_yield_for(|| tx.push([i, id]).ok())?;
        } else {
            spin_for(|| tx.push([i, id]).ok())?;
        }
    }
    Ok(())
}

/// Cores this process may run on.
pub fn num_cores() -> usize {
    crate::child::online_cpus().len()
}

/// Slab pool loan of a 200-byte request chunk plus its release, one thread, no contention. Runs
/// `batches` batches of `per_batch` pairs and returns the median batch's ns per pair.
///
/// # Errors
///
/// When the pool cannot be set up or a loan fails.
pub fn pool_loan_release(batches: usize, per_batch: usize) -> Result<f64> {
    let config = PoolConfig::standard();
    let region = Region::heap(Pool::bytes_for(&config));
    Pool::init(&region, &config)?;
    let pool = Pool::attach(&region)?;
    let me = pool
        .register_owner()
        .map_err(|e| anyhow!("register: {e}"))?;
    let mut per_op = Vec::with_capacity(batches);
    for _ in 0..batches + 1 {
        let start = Instant::now();
        for _ in 0..per_batch {
            let loan = pool.loan(me, std::hint::black_box(200))?;
            drop(std::hint::black_box(loan));
        }
        per_op.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    per_op.remove(0);
    Ok(median(&mut per_op))
}

/// Runs the ring child `role`; `Ok(false)` when the role is not one of this module's.
pub(crate) fn run_child(role: &str, arg: &str) -> Result<bool> {
    let parts: Vec<&str> = arg.split(',').collect();
    let num = |i: usize| -> Result<u64> {
        parts
            .get(i)
            .ok_or_else(|| anyhow!("missing argument {i} in {arg:?}"))?
            .parse::<u64>()
            .with_context(|| format!("argument {i} of {arg:?}"))
    };
    match role {
        "spsc-echo" => spsc_echo(parts[0], num(1)?)?,
        "spsc-producer" => spsc_producer(parts[0], num(1)?, num(2)? as usize)?,
        "mpmc-producer" => mpmc_producer(parts[0], num(1)?, num(2)?, num(3)? as usize)?,
        _ => return Ok(false),
    }
    Ok(true)
}
