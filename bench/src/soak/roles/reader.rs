//! The `reader` role: a client that opens several long streams at once and reads them slowly,
//! stopping for seconds at a time, as a client stuck behind a slow consumer would. The server
//! charges each stream part to it: it may hold only its share of each pool class, so its streams
//! pause (or, on a backend that runs a request in one call, end with `ResourceExhausted`) while
//! it does not read, and the good clients beside it must see neither `Busy` nor
//! `ResourceExhausted` because of it.
//!
//! Every stream it reads is checked: parts in order with the text they must carry, and one final
//! answer, a complete generation or `ResourceExhausted` / `TimedOut`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use shm_runtime::protocol::{ArchivedBody, ArchivedFinishReason};
use shm_runtime::{Error, ResponseView, Ticket};

use super::{client_arg, connect_retry, generate, report_done};
use crate::soak::lines::{say, watch_stdin};
use crate::soak::oracle::Tally;
use crate::soak::rng::Rng;
use crate::soak::LOST_AFTER;

/// Streams it keeps open at once.
const OPEN: usize = 6;

/// One stream being read.
struct Open {
    ticket: Ticket,
    id: u64,
    /// The parts' texts, in order.
    want: Vec<String>,
    parts: usize,
    submitted: Instant,
}

pub(crate) fn role_reader(service: &str, arg: &str) -> Result<ExitCode> {
    let (index, gen, seed) = client_arg(arg);
    let who = format!("reader {index}.{gen} (pid {})", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    watch_stdin(stop.clone(), None, false);
    let client = connect_retry(service, Duration::from_secs(10))?;
    let tally = Arc::new(Tally::default());
    {
        let tally = tally.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            say(&tally.line("STAT"));
        });
    }
    let mut rng = Rng::new(seed);
    let mut open: Vec<Open> = Vec::new();
    let mut next_id = (index << 40) | (gen << 32);
    // Alternates between reading (slowly) and not reading at all.
    let mut reading_until = Instant::now();
    let mut idle_until = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if stopping && open.is_empty() {
            break;
        }
        while !stopping && open.len() < OPEN {
            next_id += 1;
            let (model, text, want) = if rng.pct(50) {
                let len = rng.range(500, 1500) as usize;
                let text = rng.text(len);
                let want: Vec<String> = text.chars().map(String::from).collect();
                ("echo", text, want)
            } else {
                let n = rng.range(100, 300) as u32;
                let want = (0..n).map(|i| format!("t{i} ")).collect();
                ("steps", "s".to_owned(), want)
            };
            let mut req = generate(next_id, model, &text, want.len() as u32);
            req.params.stream = true;
            req.params.timeout_ms = 10_000;
            match client.submit(&req) {
                Ok(ticket) => {
                    tally.bump("submitted");
                    open.push(Open {
                        ticket,
                        id: next_id,
                        want,
                        parts: 0,
                        submitted: Instant::now(),
                    });
                }
                Err(Error::Busy(_)) => {
                    tally.bump("submit_busy");
                    break;
                }
                Err(e) => {
                    tally.violation(&who, &format!("stream submit failed: {e}"));
                    break;
                }
            }
        }
        let now = Instant::now();
        if now < idle_until && !stopping {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if now >= reading_until && !stopping {
            // Stop reading for 0.5 to 3 s, then read for up to a second.
            idle_until = now + Duration::from_millis(rng.range(500, 3000));
            reading_until = idle_until + Duration::from_millis(rng.range(100, 1000));
            tally.bump("pauses");
            continue;
        }
        // One part of each open stream, with a short pause: slower than the server produces.
        let mut i = 0;
        while i < open.len() {
            let o = &mut open[i];
            let in_flight = client.in_flight();
            let done = match client.recv(o.ticket, Duration::from_millis(1)) {
                Ok(v) if !v.is_final() => {
                    check_part(&tally, &who, o, &v);
                    false
                }
                Ok(v) => {
                    check_final(&tally, &who, o, &v);
                    true
                }
                // The server's TimedOut answer ends the request (one fewer in flight); else the
                // wait ran out with nothing yet.
                Err(Error::TimedOut) if client.in_flight() < in_flight => {
                    tally.bump("timed_out");
                    true
                }
                Err(Error::TimedOut) if o.submitted.elapsed() < LOST_AFTER => false,
                Err(Error::TimedOut) => {
                    tally.bump("lost");
                    tally.violation(&who, &format!("stream {:#x} got no final answer", o.id));
                    true
                }
                Err(e @ Error::ResourceExhausted(_)) => {
                    tally.final_kind(&Err(e));
                    true
                }
                Err(e) => {
                    tally.final_kind(&Err(e.clone()));
                    tally.violation(&who, &format!("stream {:#x} answered {e:?}", o.id));
                    true
                }
            };
            if done {
                open.swap_remove(i);
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(report_done(&client, &tally, &who))
}

/// A stream part: the next index, with the text it must carry.
fn check_part(tally: &Tally, who: &str, o: &mut Open, v: &ResponseView) {
    tally.bump("partials");
    let ok = match v.response() {
        Ok(r) => match &r.body {
            ArchivedBody::Chunk(c) => {
                c.index.to_native() as usize == o.parts
                    && o.want.get(o.parts).map(String::as_str) == Some(c.text.as_str())
            }
            _ => false,
        },
        Err(_) => false,
    };
    if !ok {
        tally.bump("wrong");
        tally.violation(
            who,
            &format!("stream {:#x}: part {} is wrong", o.id, o.parts),
        );
    }
    o.parts += 1;
}

/// A final answer: every part came before it, and it carries the whole text.
fn check_final(tally: &Tally, who: &str, o: &Open, v: &ResponseView) {
    let want: String = o.want.concat();
    let ok = v.response().is_ok_and(|r| match &r.body {
        ArchivedBody::Generation(g) => {
            r.id.to_native() == o.id
                && g.finish == ArchivedFinishReason::Length
                && o.parts == o.want.len()
                && g.text.as_str() == want
        }
        _ => false,
    });
    if ok {
        tally.bump("ok");
    } else {
        tally.bump("wrong");
        tally.violation(
            who,
            &format!(
                "stream {:#x}: final answer after {} of {} parts does not match",
                o.id,
                o.parts,
                o.want.len()
            ),
        );
    }
}
