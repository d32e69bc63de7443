//! The `scribbler` role: a client that keeps rewriting its own requests after submitting them, as
//! a use-after-submit bug (or a client in another language) would. While a request is in flight
//! it writes into its chunk in a tight loop: the whole request again, a version with flipped bytes
//! (lengths, relative offsets, string bytes), and single words at random places. The server must
//! live and answer each request exactly once (a result or an error: what it answers depends on
//! what it copied); the good clients beside it must see no difference.
//!
//! Its chunks are 16 KiB, a class the other roles and the echo answers do not use: a write that
//! lands after the server released a chunk (between the release and the answer's arrival) hits a
//! free chunk of that class, or the scribbler's own next request, never another client's request
//! or answer.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shm_runtime::protocol::encode_request;
use shm_runtime::ring::pool::{OwnerId, Pool};
use shm_runtime::ring::process::ProcessToken;
use shm_runtime::testing::Service;
use shm_runtime::Error;

use super::{client_arg, connect_retry, generate, report_done};
use crate::soak::lines::{say, watch_stdin};
use crate::soak::oracle::Tally;
use crate::soak::rng::Rng;
use crate::soak::LOST_AFTER;

/// Bytes of each of the scribbler's chunks (see the module docs).
const CHUNK: usize = 16 << 10;

pub(crate) fn role_scribbler(service: &str, arg: &str) -> Result<ExitCode> {
    let (index, gen, seed) = client_arg(arg);
    let who = format!("scribbler {index}.{gen} (pid {})", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    watch_stdin(stop.clone(), None, false);
    let client = connect_retry(service, Duration::from_secs(10))?;
    let svc = Service::open(service).map_err(anyhow::Error::msg)?;
    let me = ProcessToken::current().raw();
    let slot = (0..svc.layout.max_clients)
        .find(|&c| svc.client(c).token.load(Ordering::Acquire) == me)
        .context("finding this process's client slot")?;
    let pool = Pool::attach(&svc.pool_region())?;
    let mine = OwnerId::from_raw(svc.client(slot).owner.load(Ordering::Acquire))
        .context("reading the connection's owner")?;
    let tally = Arc::new(Tally::default());
    {
        let tally = tally.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            say(&tally.line("STAT"));
        });
    }
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Acquire) {
        // A request with an out-of-line string (a relative pointer and a length to corrupt).
        let text_len = rng.range(24, 400) as usize;
        let valid = {
            let r = generate(0, "echo", &rng.text(text_len), 4);
            let mut buf = vec![0u8; CHUNK];
            let n = encode_request(&r, &mut buf).expect("a small request fits its chunk");
            buf.truncate(n);
            buf
        };
        let mut flipped = valid.clone();
        for _ in 0..rng.range(1, 9) {
            let at = rng.range(0, flipped.len() as u64) as usize;
            flipped[at] ^= rng.range(1, 256) as u8;
        }
        let mut loan = match pool.loan(mine, CHUNK) {
            Ok(l) => l,
            Err(_) => {
                tally.bump("loan_busy");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        loan.as_mut_slice()[..valid.len()].copy_from_slice(&valid);
        let at = loan.as_mut_ptr();
        let id = loan.into_id();
        let ticket = match client.submit_descriptor("echo", id.raw(), valid.len() as u32) {
            Ok(t) => t,
            Err(Error::Busy(_)) => {
                tally.bump("submit_busy");
                let _ = pool.release(id, mine);
                continue;
            }
            Err(e) => {
                tally.violation(&who, &format!("submit failed: {e}"));
                let _ = pool.release(id, mine);
                continue;
            }
        };
        tally.bump("submitted");
        let deadline = Instant::now() + LOST_AFTER;
        let answer = loop {
            for _ in 0..64 {
                let (src, k) = match rng.range(0, 3) {
                    0 => (&valid[..], 0),
                    1 => (&flipped[..], 0),
                    _ => {
                        let k = rng.range(0, valid.len() as u64 / 8) as usize * 8;
                        (&valid[k..k + 8], k)
                    }
                };
                for (i, &b) in src.iter().enumerate() {
                    // SAFETY: k + i < valid.len() <= CHUNK, inside the chunk loaned above, and
                    // the segment stays mapped while `pool` lives. The server may be copying these
                    // bytes at this moment (or may have released the chunk): that race is what
                    // this role exercises; the volatile write keeps it from being elided.
                    unsafe { at.add(k + i).write_volatile(b) };
                }
                tally.bump("rewrites");
            }
            match client.recv(ticket, Duration::ZERO) {
                Err(Error::TimedOut) if Instant::now() < deadline => continue,
                // A rewrite can turn streaming on: the chunks come first, then the final answer.
                Ok(v) if !v.is_final() => tally.bump("partials"),
                other => break other,
            }
        };
        match &answer {
            Err(Error::TimedOut) => {
                tally.bump("lost");
                tally.violation(&who, "no final answer");
                continue;
            }
            Err(e @ (Error::ServerGone | Error::UnknownTicket(_))) => {
                tally.violation(&who, &format!("answered {e}"));
            }
            _ => {}
        }
        // Any answer is right here (what the server copied decides it); exactly one is required.
        tally.final_kind(&answer);
    }
    Ok(report_done(&client, &tally, &who))
}
