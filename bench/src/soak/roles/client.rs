//! The `client` role: a pipeline of mixed requests and a series of streams on one connection,
//! every answer checked by the [`oracle`](crate::soak::oracle).

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use shm_runtime::protocol::{ArchivedBody, ArchivedFinishReason, Input, Params, Request, Task};
use shm_runtime::{Client, Error, ResponseView, Ticket};

use super::{client_arg, connect_retry, generate};
use crate::soak::lines::{say, watch_stdin};
use crate::soak::oracle::{judge, wait_final, Expect, Open, Tally};
use crate::soak::rng::Rng;
use crate::soak::LOST_AFTER;

/// Cancels tickets when they come due (for the mixed pipeline, which waits on the oldest ticket).
struct Canceller {
    due: Mutex<Vec<(Instant, Ticket)>>,
}

pub(crate) fn role_client(service: &str, arg: &str) -> Result<ExitCode> {
    let (index, gen, seed) = client_arg(arg);
    let who = format!("client {index}.{gen} (pid {})", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    watch_stdin(stop.clone(), None, false);
    let client = connect_retry(service, Duration::from_secs(10))?;
    let tally = Arc::new(Tally::default());
    let id_base = ((index + 1) << 56) | ((gen & 0xFF) << 48);
    let canceller = Arc::new(Canceller {
        due: Mutex::new(Vec::new()),
    });
    let pipeline_done = Arc::new(AtomicBool::new(false));
    let threads = vec![
        {
            let (client, tally, stop, who, canceller) = (
                client.clone(),
                tally.clone(),
                stop.clone(),
                who.clone(),
                canceller.clone(),
            );
            std::thread::spawn(move || {
                mixed(&client, &tally, &stop, &who, &canceller, id_base, seed)
            })
        },
        {
            let (client, tally, stop, who) =
                (client.clone(), tally.clone(), stop.clone(), who.clone());
            std::thread::spawn(move || {
                streams(
                    &client,
                    &tally,
                    &stop,
                    &who,
                    id_base | (1 << 40),
                    seed ^ 0x55,
                )
            })
        },
    ];
    {
        let (client, tally, canceller, done) = (
            client.clone(),
            tally.clone(),
            canceller.clone(),
            pipeline_done.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let now = Instant::now();
                let due: Vec<Ticket> = {
                    let mut d = canceller.due.lock().unwrap_or_else(|p| p.into_inner());
                    let (now_due, later): (Vec<_>, Vec<_>) =
                        d.drain(..).partition(|(at, _)| *at <= now);
                    *d = later;
                    now_due.into_iter().map(|(_, t)| t).collect()
                };
                for t in due {
                    if client.cancel(t).is_ok() {
                        tally.bump("cancels_sent");
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }
    {
        let (client, tally) = (client.clone(), tally.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            say(&tally.line(&format!("STAT strays={}", client.stray_answers())));
        });
    }
    for t in threads {
        if t.join().is_err() {
            tally.violation(&who, "a client thread panicked");
        }
    }
    pipeline_done.store(true, Ordering::Release);
    if client.in_flight() != 0 {
        tally.violation(
            &who,
            &format!(
                "{} requests still in flight after draining",
                client.in_flight()
            ),
        );
    }
    let strays = client.stray_answers();
    if strays != 0 {
        tally.violation(
            &who,
            &format!(
                "{strays} answers arrived for tickets not in flight (duplicates or misrouted)"
            ),
        );
    }
    say(&tally.line(&format!("DONE strays={strays}")));
    Ok(if tally.get("violations") == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The mixed pipeline: keeps `depth` requests in flight until stopped, then drains.
fn mixed(
    client: &Client,
    tally: &Tally,
    stop: &AtomicBool,
    who: &str,
    canceller: &Canceller,
    id_base: u64,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let depth = rng.range(4, 17) as usize;
    let mut open: VecDeque<Open> = VecDeque::new();
    let mut seq = 0u64;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        while !stopping && open.len() < depth {
            seq += 1;
            let id = id_base | seq;
            let mut params = Params {
                priority: rng.range(0, 4) as u8,
                timeout_ms: rng.range(3_000, 8_000) as u32,
                ..Params::default()
            };
            let roll = rng.range(0, 100);
            let mut cancel_in = None;
            let (model, task, input, expect) = if roll < 45 {
                let len = rng.range(0, 400) as usize;
                let text = rng.text(len);
                params.max_tokens = text.len().max(1) as u32;
                (
                    "echo",
                    Task::Generate,
                    Input::Text(text.clone()),
                    Expect::Text(text),
                )
            } else if roll < 55 {
                let tokens: Vec<u32> = (0..rng.range(1, 64))
                    .map(|_| rng.range(0, 50_000) as u32)
                    .collect();
                (
                    "echo",
                    Task::Embed,
                    Input::Tokens(tokens.clone()),
                    Expect::Embed(tokens),
                )
            } else {
                let steps = roll >= 78;
                let n = if steps {
                    rng.range(1, 40)
                } else {
                    rng.range(1, 25)
                } as u32;
                params.max_tokens = n;
                if rng.pct(25) {
                    // A deadline that usually expires before the generation ends.
                    params.timeout_ms = rng.range(1, 2 * u64::from(n) + 2) as u32;
                }
                let cancel = rng.pct(20);
                if cancel {
                    cancel_in = Some(Duration::from_micros(rng.range(0, 3_000 * u64::from(n))));
                }
                (
                    if steps { "steps" } else { "slow" },
                    Task::Generate,
                    Input::Text(format!("{id:x}")),
                    Expect::Gen { steps, n, cancel },
                )
            };
            let req = Request {
                id,
                model: model.into(),
                task,
                input,
                params,
            };
            match client.submit(&req) {
                Ok(ticket) => {
                    tally.bump("submitted");
                    let now = Instant::now();
                    if let Some(after) = cancel_in {
                        canceller
                            .due
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((now + after, ticket));
                    }
                    open.push_back(Open {
                        ticket,
                        id,
                        expect,
                        submitted: now,
                    });
                }
                Err(Error::Busy(_)) => {
                    tally.bump("submit_busy");
                    std::thread::sleep(Duration::from_millis(1));
                    break;
                }
                Err(e) => {
                    tally.violation(who, &format!("submit failed: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        let Some(o) = open.pop_front() else {
            if stopping {
                return;
            }
            continue;
        };
        let mut partial = |_v: ResponseView| {
            tally.violation(
                who,
                &format!("stream chunk for non-stream request {:#x}", o.id),
            );
        };
        let r = wait_final(client, o.ticket, o.submitted + LOST_AFTER, &mut partial);
        judge(tally, who, &o, r);
    }
}

/// Streams one after another until stopped: echo, `slow` and `steps`, some cancelled after a few
/// chunks, some with deadlines that expire.
fn streams(client: &Client, tally: &Tally, stop: &AtomicBool, who: &str, id_base: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        let id = id_base | seq;
        let roll = rng.range(0, 3);
        let (model, text, n) = match roll {
            0 => {
                let len = rng.range(3, 30) as usize;
                let text = rng.text(len);
                let n = text.len() as u32;
                ("echo", text, n)
            }
            1 => ("slow", String::from("s"), rng.range(3, 30) as u32),
            _ => ("steps", String::from("s"), rng.range(3, 40) as u32),
        };
        let mut req = generate(id, model, &text, n);
        req.params.stream = true;
        req.params.priority = rng.range(0, 4) as u8;
        if rng.pct(15) {
            req.params.timeout_ms = rng.range(1, 2 * u64::from(n) + 2) as u32;
        }
        let cancel_after = rng.pct(25).then(|| rng.range(0, u64::from(n)) as u32);
        let t = match client.submit(&req) {
            Ok(t) => t,
            Err(Error::Busy(_)) => {
                tally.bump("submit_busy");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => {
                tally.violation(who, &format!("stream submit failed: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        tally.bump("submitted");
        let mut chunks = 0u32;
        let mut joined = String::new();
        let mut cancelled = false;
        let chars: Vec<char> = text.chars().collect();
        if cancel_after == Some(0) {
            cancelled = client.cancel(t).is_ok();
        }
        let mut partial = |v: ResponseView| {
            tally.bump("partials");
            let r = match v.response() {
                Ok(r) => r,
                Err(e) => return tally.violation(who, &format!("unreadable stream chunk: {e}")),
            };
            let ArchivedBody::Chunk(c) = &r.body else {
                return tally.violation(who, "a non-final answer that is not a stream chunk");
            };
            let want = if model == "echo" {
                chars.get(chunks as usize).map(|c| c.to_string())
            } else {
                Some(format!("t{chunks} "))
            };
            if c.index.to_native() != chunks || want.as_deref() != Some(c.text.as_str()) {
                tally.violation(
                    who,
                    &format!(
                        "stream {id:#x} chunk {} {:?}, expected {chunks} {want:?}",
                        c.index, c.text
                    ),
                );
            }
            joined.push_str(c.text.as_str());
            chunks += 1;
            if cancel_after == Some(chunks) && client.cancel(t).is_ok() {
                cancelled = true;
            }
        };
        let r = wait_final(client, t, Instant::now() + LOST_AFTER, &mut partial);
        if cancelled {
            tally.bump("cancels_sent");
        }
        let Some(r) = r else {
            tally.bump("lost");
            tally.violation(who, &format!("stream {id:#x} got no final answer"));
            continue;
        };
        match &r {
            Ok(v) => {
                let check = v.response().map_err(|e| e.to_string()).and_then(|resp| {
                    let ArchivedBody::Generation(g) = &resp.body else {
                        return Err(format!("final body {:?}", resp.body));
                    };
                    if resp.id.to_native() != id {
                        return Err(format!("final answer carries id {}", resp.id));
                    }
                    let finish_ok = match g.finish {
                        ArchivedFinishReason::Length => chunks == n,
                        ArchivedFinishReason::Timeout => chunks <= n,
                        _ => false,
                    };
                    let want_text = if model == "echo" { &text } else { &joined };
                    if !finish_ok || g.text.as_str() != want_text {
                        return Err(format!(
                            "final {:?} after {chunks} of {n} chunks, text {} bytes (chunks {})",
                            g.finish,
                            g.text.len(),
                            joined.len()
                        ));
                    }
                    if model != "echo" && g.tokens.len() as u32 != chunks {
                        return Err(format!(
                            "{} tokens in the final answer, {chunks} chunks",
                            g.tokens.len()
                        ));
                    }
                    Ok(matches!(g.finish, ArchivedFinishReason::Timeout))
                });
                match check {
                    Ok(true) => tally.bump("ok_timeout_finish"),
                    Ok(false) => tally.bump("ok"),
                    Err(msg) => {
                        tally.bump("wrong");
                        tally.violation(who, &format!("stream {id:#x}: {msg}"));
                    }
                }
            }
            Err(e) => {
                tally.final_kind(&r);
                let allowed = match e {
                    Error::TimedOut | Error::Busy(_) => true,
                    Error::Cancelled => cancelled,
                    _ => false,
                };
                if !allowed {
                    tally.violation(who, &format!("stream {id:#x} answered {e:?}"));
                }
            }
        }
    }
}
