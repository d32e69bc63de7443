//! What a client process checks in every answer: exactly one final answer per accepted request,
//! of a kind allowed for that request, with the payload the request implies; and the counters it
//! reports ([`Tally`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use shm_runtime::protocol::{ArchivedBody, ArchivedFinishReason};
use shm_runtime::{Client, Error, ResponseView, Ticket};

use super::lines::say;
use super::LOST_AFTER;

/// Counters of one client process, reported as `key=value` pairs.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) counts: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) printed: AtomicU64,
}

impl Tally {
    pub(super) fn add(&self, key: &'static str, n: u64) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += n;
    }

    pub(super) fn bump(&self, key: &'static str) {
        self.add(key, 1);
    }

    pub(super) fn get(&self, key: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn line(&self, head: &str) -> String {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = head.to_owned();
        for (k, v) in counts.iter() {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    /// Counts a violated invariant and reports it at once (the first 20 of a process in full).
    pub(super) fn violation(&self, who: &str, msg: &str) {
        self.bump("violations");
        if self.printed.fetch_add(1, Ordering::Relaxed) < 20 {
            say(&format!("VIOLATION {who}: {msg}"));
        }
    }

    /// Counts a final answer by kind.
    pub(super) fn final_kind(&self, r: &Result<ResponseView, Error>) {
        self.bump(match r {
            Ok(_) => "ok",
            Err(Error::TimedOut) => "timed_out",
            Err(Error::Cancelled) => "cancelled",
            Err(Error::Busy(_)) => "busy",
            Err(Error::ResourceExhausted(_)) => "resource_exhausted",
            Err(Error::InvalidRequest(_)) => "invalid",
            Err(Error::ModelNotFound(_)) => "model_not_found",
            Err(Error::Protocol(_)) => "protocol",
            Err(Error::ServerGone) => "server_gone",
            Err(Error::ShuttingDown) => "shutting_down",
            Err(_) => "other_error",
        });
    }
}

/// The final answer of a ticket, or `None` when none came by `deadline` (lost). Stream chunks on
/// the way go to `partial`.
pub(super) fn wait_final(
    client: &Client,
    t: Ticket,
    deadline: Instant,
    partial: &mut dyn FnMut(ResponseView),
) -> Option<Result<ResponseView, Error>> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        match client.recv(t, deadline - now) {
            Ok(v) if !v.is_final() => partial(v),
            Ok(v) => return Some(Ok(v)),
            // Before the wait's end, `TimedOut` can only be the server's answer.
            Err(Error::TimedOut) if Instant::now() < deadline => {
                return Some(Err(Error::TimedOut));
            }
            // At the end: the server's answer if the ticket is done, else the wait ran out
            // (cancelling costs nothing then: the request is lost anyway).
            Err(Error::TimedOut) => {
                return match client.cancel(t) {
                    Err(Error::UnknownTicket(_)) => Some(Err(Error::TimedOut)),
                    _ => None,
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// What a request of the mixed pipeline expects.
#[derive(Debug)]
pub(super) enum Expect {
    /// Echo generation of this text.
    Text(String),
    /// Echo embedding of these token ids.
    Embed(Vec<u32>),
    /// `slow` (run to completion) or `steps` (stepped) generation of `n` tokens.
    Gen { steps: bool, n: u32, cancel: bool },
}

pub(super) struct Open {
    pub(super) ticket: Ticket,
    pub(super) id: u64,
    pub(super) expect: Expect,
    pub(super) submitted: Instant,
}

/// The text `n` tokens of the sleep backend make.
pub(super) fn sleep_text(n: u32) -> String {
    (0..n).map(|i| format!("t{i} ")).collect()
}

/// Checks a successful final answer against what the request expects; `Err` names the mismatch.
pub(super) fn check_answer(
    v: &ResponseView,
    id: u64,
    expect: &Expect,
) -> Result<&'static str, String> {
    let r = v
        .response()
        .map_err(|e| format!("unreadable answer: {e}"))?;
    if r.id.to_native() != id {
        return Err(format!("answer carries id {} for request {id}", r.id));
    }
    match (expect, &r.body) {
        (Expect::Text(text), ArchivedBody::Generation(g)) => {
            if g.text.as_str() != text {
                return Err(format!(
                    "echo of {} bytes came back as {} different bytes",
                    text.len(),
                    g.text.len()
                ));
            }
            Ok("ok")
        }
        (Expect::Embed(tokens), ArchivedBody::Embedding(e)) => {
            let same = e.len() == tokens.len()
                && e.iter()
                    .zip(tokens)
                    .all(|(x, t)| x.to_native() == *t as f32);
            if !same {
                return Err(format!("embedding of {} ids came back wrong", tokens.len()));
            }
            Ok("ok")
        }
        (Expect::Gen { n, steps, .. }, ArchivedBody::Generation(g)) => {
            let got = g.tokens.len() as u32;
            let want = match g.finish {
                ArchivedFinishReason::Length => {
                    if got != *n {
                        return Err(format!("{got} tokens of {n} with finish Length"));
                    }
                    "ok"
                }
                // Only a stepped generation ends with its partial result at the deadline.
                ArchivedFinishReason::Timeout if got <= *n && *steps => "ok_timeout_finish",
                _ => return Err(format!("finish {:?} with {got} tokens of {n}", g.finish)),
            };
            let ids_ok = g
                .tokens
                .iter()
                .enumerate()
                .all(|(i, t)| t.to_native() == i as u32);
            if !ids_ok || g.text.as_str() != sleep_text(got) {
                return Err(format!(
                    "generation of {got} tokens has the wrong text or ids"
                ));
            }
            Ok(want)
        }
        (_, other) => Err(format!("unexpected answer body {other:?} for {expect:?}")),
    }
}

/// Judges one final answer of the mixed pipeline and counts it.
pub(super) fn judge(tally: &Tally, who: &str, o: &Open, r: Option<Result<ResponseView, Error>>) {
    let Some(r) = r else {
        tally.bump("lost");
        tally.violation(
            who,
            &format!(
                "request {:#x} ({:?}) got no final answer within {LOST_AFTER:?}",
                o.id, o.expect
            ),
        );
        return;
    };
    match &r {
        Ok(v) => match check_answer(v, o.id, &o.expect) {
            Ok(kind) => tally.bump(kind),
            Err(msg) => {
                tally.bump("wrong");
                tally.violation(who, &format!("request {:#x}: {msg}", o.id));
            }
        },
        Err(e) => {
            tally.final_kind(&r);
            let allowed = match e {
                Error::TimedOut | Error::Busy(_) => true,
                Error::Cancelled => matches!(o.expect, Expect::Gen { cancel: true, .. }),
                _ => false,
            };
            if !allowed {
                tally.violation(
                    who,
                    &format!("request {:#x} ({:?}) answered {e:?}", o.id, o.expect),
                );
            }
        }
    }
}
