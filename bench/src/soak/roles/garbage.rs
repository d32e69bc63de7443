//! The `garbage` role: malformed bytes, wrong lengths, forged, foreign and stale chunk ids and raw
//! descriptors of every kind; each of its requests must still get exactly one answer.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shm_runtime::protocol::{encode_request, DescriptorWords};
use shm_runtime::ring::mpmc;
use shm_runtime::ring::pool::{ChunkId, OwnerId, Pool};
use shm_runtime::ring::process::ProcessToken;
use shm_runtime::testing::Service;
use shm_runtime::{Client, Error, ResponseView, Ticket};

use super::{client_arg, connect_retry, generate};
use crate::soak::lines::{say, watch_stdin};
use crate::soak::oracle::{wait_final, Tally};
use crate::soak::rng::Rng;
use crate::soak::LOST_AFTER;

/// What the garbage client's own pool handle and rings give it.
struct Raw {
    /// Kept for the mapping the pool and rings live in.
    _svc: Service,
    pool: Pool,
    /// The connection's own pool owner (read from its client entry).
    mine: OwnerId,
    /// A second owner registered by this process: its chunks are not the connection's.
    other: OwnerId,
    /// Producers on the connection's own request rings, one per lane.
    rings: Vec<mpmc::Producer<DescriptorWords>>,
}

impl Raw {
    fn attach(service: &str) -> Result<Raw> {
        let svc = Service::open(service).map_err(anyhow::Error::msg)?;
        let me = ProcessToken::current().raw();
        let slot = (0..svc.layout.max_clients)
            .find(|&c| svc.client(c).token.load(Ordering::Acquire) == me)
            .context("finding this process's client slot")?;
        let pool = Pool::attach(&svc.pool_region())?;
        let mine = OwnerId::from_raw(svc.client(slot).owner.load(Ordering::Acquire))
            .context("reading the connection's owner")?;
        let other = pool.register_owner()?;
        let rings = (0..svc.layout.lanes)
            .map(|l| mpmc::Producer::attach(&svc.request_ring(slot, l)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Raw {
            _svc: svc,
            pool,
            mine,
            other,
            rings,
        })
    }
}

const MODELS: [&str; 4] = ["echo", "slow", "steps", "echo"];

pub(crate) fn role_garbage(service: &str, arg: &str) -> Result<ExitCode> {
    let (index, gen, seed) = client_arg(arg);
    let who = format!("garbage client {index}.{gen} (pid {})", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    watch_stdin(stop.clone(), None, false);
    let client = connect_retry(service, Duration::from_secs(10))?;
    let raw = Raw::attach(service)?;
    let tally = Arc::new(Tally::default());
    {
        let (client, tally) = (client.clone(), tally.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            say(&tally.line(&format!("STAT strays={}", client.stray_answers())));
        });
    }
    let mut rng = Rng::new(seed);
    let mut open: VecDeque<(Ticket, Instant, &'static str)> = VecDeque::new();
    let mut stale: Vec<ChunkId> = Vec::new();
    let mut raw_ticket = 0x8000_0000u32 | rng.range(0, 1 << 30) as u32;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        while !stopping && open.len() < 8 {
            tally.bump("garbage");
            let model = MODELS[rng.range(0, 4) as usize];
            let (what, submitted) = garbage_once(&client, &raw, &mut rng, model, &mut stale);
            for r in submitted {
                match r {
                    Ok(t) => {
                        tally.bump("submitted");
                        open.push_back((t, Instant::now(), what));
                    }
                    Err(Error::Busy(_)) => tally.bump("submit_busy"),
                    Err(e) => tally.violation(&who, &format!("{what}: submit failed: {e}")),
                }
            }
            // Raw descriptors of any kind on the connection's own request ring.
            if rng.pct(30) {
                let lane = rng.range(0, raw.rings.len() as u64) as usize;
                let kinds = [0u8, 1, 2, 3, 4, 5, 6, 0x7F, 0xFF];
                let kind = kinds[rng.range(0, kinds.len() as u64) as usize];
                raw_ticket = raw_ticket.wrapping_add(1) | 0x8000_0000;
                let len = rng.range(0, 1 << 24);
                let d: DescriptorWords = [
                    rng.next(),
                    (u64::from(kind) << 56) | (len << 32) | u64::from(raw_ticket),
                ];
                if raw.rings[lane].push(d).is_ok() {
                    tally.bump("garbage");
                    tally.bump("raw_descriptors");
                }
            }
        }
        let Some((t, at, what)) = open.pop_front() else {
            if stopping {
                break;
            }
            continue;
        };
        let mut partial = |_v: ResponseView| tally.bump("partials");
        match wait_final(&client, t, at + LOST_AFTER, &mut partial) {
            None => {
                tally.bump("lost");
                tally.violation(&who, &format!("{what}: no final answer"));
            }
            Some(r) => {
                tally.final_kind(&r);
                if matches!(r, Err(Error::ServerGone | Error::UnknownTicket(_))) {
                    tally.violation(&who, &format!("{what}: answered {:?}", r.err()));
                }
            }
        }
    }
    if client.in_flight() != 0 {
        tally.violation(
            &who,
            &format!(
                "{} requests still in flight after draining",
                client.in_flight()
            ),
        );
    }
    for id in stale.drain(..) {
        let _ = raw.pool.release(id, raw.other);
    }
    say(&tally.line(&format!("DONE strays={}", client.stray_answers())));
    Ok(if tally.get("violations") == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One piece of garbage; returns what it was and, when it went through the connection's API,
/// the ticket it got.
fn garbage_once(
    client: &Client,
    raw: &Raw,
    rng: &mut Rng,
    model: &str,
    stale: &mut Vec<ChunkId>,
) -> (&'static str, Vec<Result<Ticket, Error>>) {
    let valid = {
        let len = rng.range(0, 64) as usize;
        let mut r = generate(0, model, &rng.text(len), 4);
        r.params.priority = rng.range(0, 4) as u8;
        let mut buf = vec![0u8; 1024];
        let n = encode_request(&r, &mut buf).expect("a small request fits 1 KiB");
        buf.truncate(n);
        buf
    };
    match rng.range(0, 8) {
        0 => {
            // Random bytes, with a length that may not match them.
            let bytes: Vec<u8> = (0..rng.range(0, 700)).map(|_| rng.next() as u8).collect();
            let declared = wrong_len(rng, bytes.len());
            (
                "random bytes",
                vec![client.submit_bytes(model, &bytes, declared)],
            )
        }
        1 => {
            // A valid request with a few bytes flipped (head or archive).
            let mut bytes = valid;
            for _ in 0..rng.range(1, 9) {
                let at = rng.range(0, bytes.len() as u64) as usize;
                bytes[at] ^= (rng.range(1, 256)) as u8;
            }
            let declared = if rng.pct(70) {
                bytes.len() as u32
            } else {
                wrong_len(rng, bytes.len())
            };
            (
                "flipped request",
                vec![client.submit_bytes(model, &bytes, declared)],
            )
        }
        2 => {
            // A valid head, then garbage; or a valid request cut short.
            let mut bytes = valid;
            if rng.pct(50) {
                for b in &mut bytes[16..] {
                    *b = rng.next() as u8;
                }
            } else {
                let keep = rng.range(0, bytes.len() as u64) as usize;
                bytes.truncate(keep);
            }
            let declared = bytes.len() as u32;
            (
                "truncated request",
                vec![client.submit_bytes(model, &bytes, declared)],
            )
        }
        3 => {
            // A forged chunk id.
            let len = rng.range(0, 1 << 24) as u32;
            (
                "forged chunk id",
                vec![client.submit_descriptor(model, rng.next(), len)],
            )
        }
        4 => {
            // A chunk of another owner of this process, holding a valid request: not the
            // connection's to hand over.
            match raw.pool.loan(raw.other, valid.len()) {
                Ok(mut loan) => {
                    loan.as_mut_slice()[..valid.len()].copy_from_slice(&valid);
                    let id = loan.into_id();
                    stale.push(id);
                    let r = client.submit_descriptor(model, id.raw(), valid.len() as u32);
                    ("foreign chunk", vec![r])
                }
                Err(_) => ("foreign chunk (no memory)", Vec::new()),
            }
        }
        5 => {
            // A released chunk, named again (stale generation).
            match stale.pop() {
                Some(id) => {
                    let _ = raw.pool.release(id, raw.other);
                    let len = rng.range(0, 4096) as u32;
                    (
                        "stale chunk id",
                        vec![client.submit_descriptor(model, id.raw(), len)],
                    )
                }
                None => ("stale chunk id (none yet)", Vec::new()),
            }
        }
        6 => {
            // The connection's own chunk, scribbled, then named twice (the second is a double
            // use) or with an oversized length.
            let size = rng.range(16, 2048) as usize;
            match raw.pool.loan(raw.mine, size) {
                Ok(mut loan) => {
                    let slice = loan.as_mut_slice();
                    if rng.pct(50) && slice.len() >= valid.len() {
                        slice[..valid.len()].copy_from_slice(&valid);
                        let at = rng.range(16, valid.len() as u64) as usize;
                        slice[at] ^= 0xA5;
                    } else {
                        slice.iter_mut().for_each(|b| *b = rng.next() as u8);
                    }
                    let len = if rng.pct(50) {
                        rng.range(slice.len() as u64, 1 << 24) as u32
                    } else {
                        valid.len() as u32
                    };
                    let id = loan.into_id();
                    let first = client.submit_descriptor(model, id.raw(), len);
                    if first.is_ok() && rng.pct(50) {
                        // The second naming is tracked like any request: it must be refused.
                        let second = client.submit_descriptor(model, id.raw(), len);
                        return ("double use", vec![first, second]);
                    }
                    ("scribbled own chunk", vec![first])
                }
                Err(_) => ("scribbled own chunk (no memory)", Vec::new()),
            }
        }
        _ => {
            // A valid request with a lane that does not serve its model (the descriptor goes to
            // `model`'s lane, the archive names another).
            let other = MODELS[rng.range(0, 3) as usize];
            let mut r = generate(0, other, "x", 2);
            r.params.priority = rng.range(0, 4) as u8;
            let mut buf = vec![0u8; 256];
            let n = encode_request(&r, &mut buf).expect("a tiny request fits");
            (
                "wrong lane",
                vec![client.submit_bytes(model, &buf[..n], n as u32)],
            )
        }
    }
}

/// A declared length that may disagree with `real`: exact, short, long, zero, or huge.
fn wrong_len(rng: &mut Rng, real: usize) -> u32 {
    match rng.range(0, 5) {
        0 => real as u32,
        1 => rng.range(0, real as u64 + 1) as u32,
        2 => (real as u64 + rng.range(1, 4096)) as u32,
        3 => rng.range(0, 17) as u32,
        _ => rng.range(0, 1 << 24) as u32,
    }
}
