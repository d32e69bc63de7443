//! The chaos soak: a server and client processes under random SIGKILLs, one client scribbling
//! garbage into its own chunks and descriptors, and a server killed while clients wait.
//!
//! ```text
//! cargo run --release -p shm-bench --bin soak -- --seconds 120 [--kill-every-ms 200] [--clients 6]
//! ```
//!
//! Phase 1 (chaos): a server process serves `echo` (echo backend), `slow` (sleep backend, one
//! request at a time, 1 ms per token) and `steps` (sleep backend on two workers, each stepping 2
//! slots, 2 ms per step: new requests go to the less loaded worker, queued ones are handed over).
//! Each client process runs two threads on one connection: a pipeline of mixed requests (echo text
//! and embeddings with their payload checked, slow and stepped generations, random priorities,
//! deadlines that expire, cancels mid-way) and a series of streams (chunk indices and text checked
//! against the final answer, some cancelled after a few chunks). Every client checks itself as it
//! goes: exactly one final answer per accepted request, of a kind allowed for that request, and no
//! answer for a ticket not in flight (`Client::stray_answers`). It reports its counts every 250 ms
//! and a violation the moment it sees one. The supervisor's chaos thread SIGKILLs a random client
//! process every `--kill-every-ms` (jittered) and restarts it; `--witnesses` clients are never
//! killed, so some requests are followed through the whole run. A garbage client (killed too)
//! sends malformed bytes, wrong lengths, forged, foreign and stale chunk ids and raw descriptors of
//! every kind; each of its requests must still get one answer. At the end: survivors drain and
//! report; the server must be alive, answer a fresh client's echo, have as many open files as at
//! the start, and its pool and client table must return to full.
//!
//! Phase 2 (server kill, `--server-kill-rounds`, default 3; `--server-kill` runs only this phase):
//! waiter processes block in a long request, a stream and a loop of echoes; the server is
//! SIGKILLed; every waiting call must fail with `Error::ServerGone` within [`GONE_BOUND`]. A new
//! server then replaces the stale segment under the same name and serves the reconnecting waiters
//! and a fresh client.
//!
//! The soak exits nonzero, naming each violated invariant, when anything goes wrong; it leaves no
//! process and no `/dev/shm` file of its own behind.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shm_runtime::protocol::{
    encode_request, ArchivedBody, ArchivedFinishReason, DescriptorWords, Input, Params, Request,
    Task,
};
use shm_runtime::ring::pool::{ChunkId, OwnerId, Pool};
use shm_runtime::ring::process::ProcessToken;
use shm_runtime::ring::{mpmc, SegmentOpenOptions};
use shm_runtime::service::Service;
use shm_runtime::{Client, Error, ModelConfig, ResponseView, Server, ServerConfig, Ticket};

const ROLE_VAR: &str = "SHM_SOAK_ROLE";
const SERVICE_VAR: &str = "SHM_SOAK_SERVICE";
const ARG_VAR: &str = "SHM_SOAK_ARG";

/// A request with no final answer this long after it was submitted is lost.
const LOST_AFTER: Duration = Duration::from_secs(20);
/// Every call waiting on a SIGKILLed server must fail with `ServerGone` within this bound.
const GONE_BOUND: Duration = Duration::from_secs(2);
/// How long the supervisor waits for the housekeeper to reap dead clients and refill the pool.
const REAP_BOUND: Duration = Duration::from_secs(5);
/// How long surviving clients may take to drain and report at the end.
const DRAIN_BOUND: Duration = Duration::from_secs(40);

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        let service = std::env::var(SERVICE_VAR).unwrap_or_default();
        let arg = std::env::var(ARG_VAR).unwrap_or_default();
        return match run_role(&role, &service, &arg) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("soak {role} {arg}: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match supervise() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_role(role: &str, service: &str, arg: &str) -> Result<ExitCode> {
    match role {
        "server" => role_server(service).map(|()| ExitCode::SUCCESS),
        "client" => role_client(service, arg),
        "garbage" => role_garbage(service, arg),
        "waiter" => role_waiter(service),
        other => bail!("unknown role {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by every process.

/// xorshift64*: reproducible pseudo-random choices without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }

    fn text(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(self.range(0x20, 0x7F) as u8))
            .collect()
    }
}

/// One line to the supervisor. A closed pipe means the supervisor has gone: leave.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Watches stdin: `stop` sets `stop`, other lines go to `lines`; at end of input (the supervisor
/// has gone) the process exits at once, unless `eof_stops` (then it only sets `stop`).
fn watch_stdin(stop: Arc<AtomicBool>, lines: Option<mpsc::Sender<String>>, eof_stops: bool) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "stop" {
                stop.store(true, Ordering::Release);
            } else if let Some(tx) = &lines {
                let _ = tx.send(line.trim().to_owned());
            }
        }
        if eof_stops {
            stop.store(true, Ordering::Release);
        } else {
            std::process::exit(3);
        }
    });
}

fn server_config(service: &str) -> ServerConfig {
    let mut slow = ModelConfig::new("slow", "sleep");
    slow.options
        .insert("step_ms".into(), toml::Value::Float(1.0));
    let mut steps = ModelConfig::new("steps", "sleep");
    steps
        .options
        .insert("step_ms".into(), toml::Value::Float(2.0));
    steps
        .options
        .insert("slots".into(), toml::Value::Integer(2));
    steps.workers = Some(2);
    ServerConfig::new(service, vec![ModelConfig::new("echo", "echo"), slow, steps])
}

/// Serves until SIGTERM or the end of stdin, then drains for a second and stops.
fn role_server(service: &str) -> Result<()> {
    // The runtime's warnings (a ring it could not attach to, an answer with no chunk), on stderr
    // beside the supervisor's report.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let server = Server::start(server_config(service))?;
    watch_stdin(stop.clone(), None, true);
    say("READY");
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.shutdown(Duration::from_secs(1));
    Ok(())
}

fn generate(id: u64, model: &str, text: &str, max_tokens: u32) -> Request {
    Request {
        id,
        model: model.into(),
        task: Task::Generate,
        input: Input::Text(text.into()),
        params: Params {
            max_tokens,
            ..Params::default()
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Client processes.

/// Counters of one client process, reported as `key=value` pairs.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<&'static str, u64>>,
    printed: AtomicU64,
}

impl Tally {
    fn add(&self, key: &'static str, n: u64) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += n;
    }

    fn bump(&self, key: &'static str) {
        self.add(key, 1);
    }

    fn get(&self, key: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    fn line(&self, head: &str) -> String {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = head.to_owned();
        for (k, v) in counts.iter() {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    /// Counts a violated invariant and reports it at once (the first 20 of a process in full).
    fn violation(&self, who: &str, msg: &str) {
        self.bump("violations");
        if self.printed.fetch_add(1, Ordering::Relaxed) < 20 {
            say(&format!("VIOLATION {who}: {msg}"));
        }
    }

    /// Counts a final answer by kind.
    fn final_kind(&self, r: &Result<ResponseView, Error>) {
        self.bump(match r {
            Ok(_) => "ok",
            Err(Error::TimedOut) => "timed_out",
            Err(Error::Cancelled) => "cancelled",
            Err(Error::Busy(_)) => "busy",
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
fn wait_final(
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
enum Expect {
    /// Echo generation of this text.
    Text(String),
    /// Echo embedding of these token ids.
    Embed(Vec<u32>),
    /// `slow` (run to completion) or `steps` (stepped) generation of `n` tokens.
    Gen { steps: bool, n: u32, cancel: bool },
}

struct Open {
    ticket: Ticket,
    id: u64,
    expect: Expect,
    submitted: Instant,
}

/// The text `n` tokens of the sleep backend make.
fn sleep_text(n: u32) -> String {
    (0..n).map(|i| format!("t{i} ")).collect()
}

/// Checks a successful final answer against what the request expects; `Err` names the mismatch.
fn check_answer(v: &ResponseView, id: u64, expect: &Expect) -> Result<&'static str, String> {
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
fn judge(tally: &Tally, who: &str, o: &Open, r: Option<Result<ResponseView, Error>>) {
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

/// Cancels tickets when they come due (for the mixed pipeline, which waits on the oldest ticket).
struct Canceller {
    due: Mutex<Vec<(Instant, Ticket)>>,
}

fn role_client(service: &str, arg: &str) -> Result<ExitCode> {
    let mut parts = arg.split(',').map(|p| p.parse::<u64>().unwrap_or(0));
    let (index, gen, seed) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(1),
    );
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

fn connect_retry(service: &str, bound: Duration) -> Result<Client> {
    let end = Instant::now() + bound;
    loop {
        match Client::connect(service) {
            Ok(c) => return Ok(c),
            // Slots of killed clients come back when the housekeeper reaps them.
            Err(e) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("connecting"),
        }
    }
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

// ---------------------------------------------------------------------------------------------
// The garbage client.

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

fn role_garbage(service: &str, arg: &str) -> Result<ExitCode> {
    let mut parts = arg.split(',').map(|p| p.parse::<u64>().unwrap_or(0));
    let (index, gen, seed) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(1),
    );
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

// ---------------------------------------------------------------------------------------------
// Waiters of the server-kill phase.

/// Blocks in a long request, a stream and a loop of echoes; each must end with `ServerGone` when
/// the server is killed. Then waits for `again`, reconnects and is served.
fn role_waiter(service: &str) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    watch_stdin(stop, Some(tx), false);
    let client = connect_retry(service, Duration::from_secs(10))?;
    let long = 20_000;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut threads = Vec::new();
    {
        let (client, ready) = (client.clone(), ready_tx.clone());
        threads.push(std::thread::spawn(move || -> String {
            let r = generate(1, "slow", "x", long);
            let t = match client.submit(&r) {
                Ok(t) => t,
                Err(e) => return format!("submit {e:?}"),
            };
            let _ = ready.send(());
            let first = match client.recv(t, Duration::from_secs(60)) {
                Err(Error::ServerGone) => "ServerGone".to_owned(),
                Ok(v) => format!("an answer: {:?}", v.response().map(|r| format!("{r:?}"))),
                Err(e) => format!("{e:?}"),
            };
            match client.submit(&r) {
                Err(Error::ServerGone) => first,
                other => format!(
                    "{first}, then a submit gave {:?} instead of ServerGone",
                    other.err()
                ),
            }
        }));
    }
    {
        let (client, ready) = (client.clone(), ready_tx.clone());
        threads.push(std::thread::spawn(move || -> String {
            let mut r = generate(2, "steps", "x", long);
            r.params.stream = true;
            let t = match client.submit(&r) {
                Ok(t) => t,
                Err(e) => return format!("submit {e:?}"),
            };
            let mut told = false;
            loop {
                match client.recv(t, Duration::from_secs(60)) {
                    Ok(v) if !v.is_final() => {
                        if !told {
                            let _ = ready.send(());
                            told = true;
                        }
                    }
                    Err(Error::ServerGone) => return "ServerGone".to_owned(),
                    other => return format!("{:?}", other.map(|v| v.is_final())),
                }
            }
        }));
    }
    {
        let (client, ready) = (client.clone(), ready_tx);
        threads.push(std::thread::spawn(move || -> String {
            let mut told = false;
            let mut i = 3u64;
            loop {
                let r = generate(i, "echo", "ping", 8);
                i += 1;
                match client.infer_timeout(&r, Duration::from_secs(60)) {
                    Ok(_) => {
                        if !told {
                            let _ = ready.send(());
                            told = true;
                        }
                    }
                    Err(Error::ServerGone) => return "ServerGone".to_owned(),
                    Err(e) => return format!("{e:?}"),
                }
            }
        }));
    }
    for _ in 0..3 {
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("waiting for the three calls to be under way")?;
    }
    say("WAITING");
    for (i, t) in threads.into_iter().enumerate() {
        let outcome = t.join().unwrap_or_else(|_| "panic".to_owned());
        say(&format!("GONE {i} {outcome}"));
    }
    drop(client);
    say("ALLGONE");
    loop {
        match rx.recv() {
            Ok(line) if line == "again" => break,
            Ok(_) => continue,
            Err(_) => return Ok(ExitCode::from(3)),
        }
    }
    let client = connect_retry(service, Duration::from_secs(10))?;
    let v = client.infer(&generate(9, "echo", "again", 8))?;
    let ok =
        matches!(&v.response()?.body, ArchivedBody::Generation(g) if g.text.as_str() == "again");
    drop(v);
    say(if ok {
        "RECONNECTED"
    } else {
        "RECONNECTED wrong"
    });
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// The supervisor.

#[derive(Debug, Clone)]
struct Opts {
    seconds: f64,
    kill_every: Option<Duration>,
    clients: usize,
    witnesses: usize,
    seed: u64,
    chaos: bool,
    server_kill_rounds: usize,
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        seconds: 60.0,
        kill_every: Some(Duration::from_millis(200)),
        clients: 6,
        witnesses: 2,
        seed: std::process::id() as u64,
        chaos: true,
        server_kill_rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = val("--seconds")?.parse()?,
            "--kill-every-ms" => {
                let ms: u64 = val("--kill-every-ms")?.parse()?;
                o.kill_every = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--clients" => o.clients = val("--clients")?.parse()?,
            "--witnesses" => o.witnesses = val("--witnesses")?.parse()?,
            "--seed" => o.seed = val("--seed")?.parse()?,
            "--server-kill" => o.chaos = false,
            "--server-kill-rounds" => {
                o.server_kill_rounds = val("--server-kill-rounds")?.parse()?
            }
            "--no-server-kill" => o.server_kill_rounds = 0,
            "-h" | "--help" => {
                println!(
                    "soak [--seconds S] [--kill-every-ms MS (0: no kills)] [--clients N] \
                     [--witnesses W] [--seed X] [--server-kill (that phase only)] \
                     [--server-kill-rounds R] [--no-server-kill]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if o.clients == 0 || o.clients > 24 {
        bail!("--clients must be 1..=24");
    }
    o.witnesses = o.witnesses.min(o.clients);
    Ok(o)
}

/// A line from a child process (`None`: its stdout closed), stamped when it arrived.
struct Ev {
    slot: usize,
    gen: u64,
    line: Option<String>,
    at: Instant,
}

/// A child process of the soak; killed and reaped on drop if still running.
struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    slot: usize,
    gen: u64,
    reaped: bool,
}

impl Kid {
    fn spawn(
        role: &str,
        service: &str,
        slot: usize,
        gen: u64,
        arg: &str,
        tx: &mpsc::Sender<Ev>,
    ) -> Result<Kid> {
        let exe = std::env::current_exe().context("finding the current executable")?;
        let mut child = Command::new(exe)
            .env(ROLE_VAR, role)
            .env(SERVICE_VAR, service)
            .env(ARG_VAR, arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {role} process"))?;
        let out = child.stdout.take().context("child stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let ev = Ev {
                    slot,
                    gen,
                    line: Some(line),
                    at: Instant::now(),
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ev {
                slot,
                gen,
                line: None,
                at: Instant::now(),
            });
        });
        Ok(Kid {
            stdin: child.stdin.take(),
            child,
            slot,
            gen,
            reaped: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tell(&mut self, line: &str) {
        if let Some(s) = &mut self.stdin {
            let _ = writeln!(s, "{line}").and_then(|()| s.flush());
        }
    }

    fn signal(&mut self, sig: libc::c_int) {
        if !self.reaped {
            // SAFETY: sends a signal to our own child, which is not reaped yet (so the pid cannot
            // have been reused); no memory is involved.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Waits up to `bound` for the child to exit; `None` if it did not (it is then killed).
    fn wait_bounded(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + bound;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = true;
                return Some(st);
            }
            if Instant::now() >= end {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        let st = self.child.try_wait().ok().flatten();
        if st.is_some() {
            self.reaped = true;
        }
        st
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `key=value` pairs of a STAT or DONE line.
fn parse_counts(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn add_counts(total: &mut BTreeMap<String, u64>, c: &BTreeMap<String, u64>) {
    for (k, v) in c {
        *total.entry(k.clone()).or_default() += v;
    }
}

/// `/dev/shm` files of this soak's services (segments and their temporary names).
fn shm_files(prefix: &str) -> Vec<String> {
    let dir = SegmentOpenOptions::default().dir;
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("shmr.") && n.contains(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Everything the supervisor learns.
#[derive(Default)]
struct Report {
    violations: Vec<String>,
    /// Last STAT of each (slot, generation) still running.
    latest: HashMap<(usize, u64), BTreeMap<String, u64>>,
    /// Counts of killed processes (their last STAT).
    killed: BTreeMap<String, u64>,
    /// Counts of surviving processes (their DONE line).
    survived: BTreeMap<String, u64>,
    done: HashSet<(usize, u64)>,
    closed: HashSet<(usize, u64)>,
}

impl Report {
    fn violation(&mut self, msg: String) {
        eprintln!("soak: VIOLATION {msg}");
        self.violations.push(msg);
    }

    fn on_event(&mut self, ev: Ev) -> Option<(usize, u64, String, Instant)> {
        let key = (ev.slot, ev.gen);
        let Some(line) = ev.line else {
            self.closed.insert(key);
            return None;
        };
        if line.starts_with("STAT ") {
            self.latest.insert(key, parse_counts(&line));
        } else if line.starts_with("DONE ") {
            let c = parse_counts(&line);
            add_counts(&mut self.survived, &c);
            self.latest.remove(&key);
            self.done.insert(key);
        } else if let Some(msg) = line.strip_prefix("VIOLATION ") {
            self.violation(msg.to_owned());
        } else {
            return Some((ev.slot, ev.gen, line, ev.at));
        }
        None
    }
}

fn supervise() -> Result<bool> {
    let opts = parse_opts()?;
    let prefix = format!("soak-{}", std::process::id());
    let shm_before = shm_files(&prefix);
    if !shm_before.is_empty() {
        bail!("/dev/shm already holds files of this soak: {shm_before:?}");
    }
    let started = Instant::now();
    let mut report = Report::default();
    let services = [format!("{prefix}-chaos"), format!("{prefix}-srvkill")];
    let mut run = || -> Result<()> {
        if opts.chaos {
            chaos_phase(&opts, &services[0], &mut report)?;
        }
        if opts.server_kill_rounds > 0 {
            server_kill_phase(&opts, &services[1], &mut report)?;
        }
        Ok(())
    };
    let outcome = run();
    // Every child has been reaped by now (dropped `Kid`s kill and reap theirs).
    let left = shm_files(&prefix);
    if !left.is_empty() {
        report.violation(format!("/dev/shm files left behind: {left:?}"));
        // A server killed by a failed phase leaves its segment: remove it (never a live one).
        let dir = SegmentOpenOptions::default().dir;
        for name in &services {
            let _ = shm_runtime::ring::Segment::remove(name, &dir);
        }
    }
    outcome?;
    println!(
        "soak: total {:.1} s, {} violation(s)",
        started.elapsed().as_secs_f64(),
        report.violations.len()
    );
    for v in &report.violations {
        println!("  violated: {v}");
    }
    Ok(report.violations.is_empty())
}

/// Lines of the child processes that are not reports (those go to the [`Report`] as they
/// arrive), held until someone asks for them.
struct Mailbox {
    rx: mpsc::Receiver<Ev>,
    held: VecDeque<(usize, u64, String, Instant)>,
}

impl Mailbox {
    fn new(rx: mpsc::Receiver<Ev>) -> Mailbox {
        Mailbox {
            rx,
            held: VecDeque::new(),
        }
    }

    /// The next line, waiting up to `timeout`.
    fn next(
        &mut self,
        report: &mut Report,
        timeout: Duration,
    ) -> Option<(usize, u64, String, Instant)> {
        if let Some(l) = self.held.pop_front() {
            return Some(l);
        }
        let ev = self.rx.recv_timeout(timeout).ok()?;
        report.on_event(ev)
    }

    /// Feeds everything that has arrived to the report.
    fn drain(&mut self, report: &mut Report) {
        while let Ok(ev) = self.rx.try_recv() {
            if let Some(l) = report.on_event(ev) {
                self.held.push_back(l);
            }
        }
    }

    /// Waits for a line starting with `prefix` from child `key` (slot, generation).
    fn expect(
        &mut self,
        report: &mut Report,
        key: (usize, u64),
        prefix: &str,
        bound: Duration,
    ) -> Result<(String, Instant)> {
        let end = Instant::now() + bound;
        loop {
            let found = self
                .held
                .iter()
                .position(|(s, g, l, _)| (*s, *g) == key && l.starts_with(prefix));
            if let Some((_, _, line, at)) = found.and_then(|i| self.held.remove(i)) {
                return Ok((line, at));
            }
            // A child's lines all arrive before the end of its output.
            if report.closed.contains(&key) {
                bail!("child {}.{} exited before saying {prefix:?}", key.0, key.1);
            }
            let left = end.saturating_duration_since(Instant::now());
            let ev = self.rx.recv_timeout(left).with_context(|| {
                format!(
                    "waiting {bound:?} for {prefix:?} from child {}.{}",
                    key.0, key.1
                )
            })?;
            if let Some(l) = report.on_event(ev) {
                self.held.push_back(l);
            }
        }
    }
}

const SERVER_SLOT: usize = 1000;
/// Waiter processes of the server-kill phase are children `WAITER_SLOT + i`.
const WAITER_SLOT: usize = 100;

/// Waits until every client slot is free, every chunk is back in the pool and no job is queued or
/// running; `Err` says what is still missing at the bound.
fn wait_full(service: &str, bound: Duration) -> Result<(usize, u32), String> {
    let end = Instant::now() + bound;
    loop {
        let svc = Service::open(service)?;
        let pool = Pool::attach(&svc.pool_region()).map_err(|e| e.to_string())?;
        let st = pool.stats();
        let (free, total): (u32, u32) = st
            .classes
            .iter()
            .fold((0, 0), |(f, t), c| (f + c.free, t + c.count));
        let clients = (0..svc.layout.max_clients)
            .filter(|&c| svc.client(c).token.load(Ordering::Acquire) != 0)
            .count();
        let busy: u64 = (0..svc.layout.lanes)
            .map(|l| svc.lane(l).queued() + svc.lane(l).running())
            .sum();
        if free == total && clients == 0 && busy == 0 && st.owners == 1 {
            return Ok((svc.layout.max_clients, total));
        }
        if Instant::now() >= end {
            return Err(format!(
                "after {bound:?}: {free} of {total} chunks free, {clients} client slots held, \
                 {busy} jobs queued or running, {} pool owners (the server's is 1)",
                st.owners
            ));
        }
        drop(svc);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh connection's echo must come back intact.
fn fresh_echo(service: &str) -> Result<(), String> {
    let client = Client::connect(service).map_err(|e| format!("connecting: {e}"))?;
    let text = "the fresh client's echo";
    let v = client
        .infer_timeout(&generate(7, "echo", text, 64), Duration::from_secs(10))
        .map_err(|e| format!("echo: {e}"))?;
    let r = v.response().map_err(|e| e.to_string())?;
    match &r.body {
        ArchivedBody::Generation(g) if g.text.as_str() == text && r.id.to_native() == 7 => Ok(()),
        other => Err(format!("echo came back as {other:?}")),
    }
}

fn chaos_phase(opts: &Opts, service: &str, report: &mut Report) -> Result<()> {
    let (tx, rx) = mpsc::channel::<Ev>();
    let mut mb = Mailbox::new(rx);
    let mut server = Kid::spawn("server", service, SERVER_SLOT, 0, "", &tx)?;
    mb.expect(report, (SERVER_SLOT, 0), "READY", Duration::from_secs(20))?;
    let server_pid = server.pid();
    let fds_start = open_fds(server_pid).context("counting the server's open files")?;
    let n = opts.clients;
    let garbage_slot = n;
    let spawn_client = |slot: usize, gen: u64| -> Result<Kid> {
        let seed = opts
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add((slot as u64) << 32 | gen);
        let role = if slot == garbage_slot {
            "garbage"
        } else {
            "client"
        };
        Kid::spawn(
            role,
            service,
            slot,
            gen,
            &format!("{slot},{gen},{seed}"),
            &tx,
        )
    };
    let kids: Vec<Kid> = (0..=n).map(|s| spawn_client(s, 0)).collect::<Result<_>>()?;
    let kids = Arc::new(Mutex::new(kids));
    let kills = Arc::new(AtomicU64::new(0));
    let restarts = Arc::new(AtomicU64::new(0));
    let stop_chaos = Arc::new(AtomicBool::new(false));
    let killed_keys = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
    println!(
        "soak: chaos phase {:.0} s on {service}: server pid {server_pid}, {n} clients ({} never \
         killed) + 1 garbage client, kill every {:?}",
        opts.seconds, opts.witnesses, opts.kill_every
    );
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(opts.seconds);
    let chaos_result: Result<()> = std::thread::scope(|s| {
        let chaos = s.spawn(|| -> Result<()> {
            let Some(every) = opts.kill_every else {
                return Ok(());
            };
            let mut rng = Rng::new(opts.seed ^ 0xC4A05);
            let victims: Vec<usize> = (opts.witnesses..=n).collect();
            while !stop_chaos.load(Ordering::Acquire) {
                let pause = rng.range(
                    every.as_micros() as u64 / 2,
                    every.as_micros() as u64 * 3 / 2 + 1,
                );
                std::thread::sleep(Duration::from_micros(pause));
                if stop_chaos.load(Ordering::Acquire) {
                    break;
                }
                let slot = victims[rng.range(0, victims.len() as u64) as usize];
                let mut kids = kids.lock().unwrap_or_else(|p| p.into_inner());
                let kid = &mut kids[slot];
                kid.kill9();
                kills.fetch_add(1, Ordering::Relaxed);
                killed_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((slot, kid.gen));
                let gen = kid.gen + 1;
                kids[slot] = spawn_client(slot, gen)?;
                restarts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        // Meanwhile: collect reports, watch the server and unexpected client exits.
        let mut last_print = Instant::now();
        while Instant::now() < end {
            if let Some((slot, gen, line, _)) = mb.next(report, Duration::from_millis(20)) {
                println!("soak: child {slot}.{gen}: {line}");
            }
            for key in killed_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                if let Some(c) = report.latest.remove(&key) {
                    add_counts(&mut report.killed, &c);
                }
            }
            if let Some(st) = server.exited() {
                report.violation(format!("the server exited during the chaos phase: {st}"));
                break;
            }
            {
                let mut kids = kids.lock().unwrap_or_else(|p| p.into_inner());
                for k in kids.iter_mut() {
                    if let Some(st) = k.exited() {
                        report.violation(format!(
                            "client {}.{} exited on its own during the chaos: {st}",
                            k.slot, k.gen
                        ));
                    }
                }
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                println!(
                    "soak: {:.0} s: kills {}, {} violation(s)",
                    started.elapsed().as_secs_f64(),
                    kills.load(Ordering::Relaxed),
                    report.violations.len()
                );
            }
        }
        stop_chaos.store(true, Ordering::Release);
        chaos.join().expect("the chaos thread does not panic")
    });
    chaos_result?;
    let chaos_secs = started.elapsed().as_secs_f64();
    for key in killed_keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
    {
        if let Some(c) = report.latest.remove(&key) {
            add_counts(&mut report.killed, &c);
        }
    }
    // Survivors drain and report.
    let mut kids = std::mem::take(&mut *kids.lock().unwrap_or_else(|p| p.into_inner()));
    for k in kids.iter_mut() {
        k.tell("stop");
    }
    let drain_end = Instant::now() + DRAIN_BOUND;
    let keys: Vec<(usize, u64)> = kids.iter().map(|k| (k.slot, k.gen)).collect();
    while keys.iter().any(|k| !report.closed.contains(k)) && Instant::now() < drain_end {
        if let Some((slot, gen, line, _)) = mb.next(report, Duration::from_millis(20)) {
            println!("soak: child {slot}.{gen}: {line}");
        }
    }
    for k in kids.iter_mut() {
        let left = drain_end.saturating_duration_since(Instant::now());
        match k.wait_bounded(left.max(Duration::from_millis(100))) {
            None => report.violation(format!(
                "client {}.{} did not finish draining within {DRAIN_BOUND:?}",
                k.slot, k.gen
            )),
            Some(st) if !st.success() => report.violation(format!(
                "client {}.{} failed its own checks ({st})",
                k.slot, k.gen
            )),
            Some(_) => {}
        }
        if !report.done.contains(&(k.slot, k.gen)) {
            report.violation(format!("client {}.{} sent no final report", k.slot, k.gen));
        }
    }
    drop(kids);
    mb.drain(report);
    // The server: alive, back to full, serving, no leaked files.
    if let Some(st) = server.exited() {
        report.violation(format!("the server died: {st}"));
    } else {
        let reaped_in = Instant::now();
        match wait_full(service, REAP_BOUND) {
            Ok((slots, chunks)) => println!(
                "soak: pool ({chunks} chunks) and client table ({slots} slots) back to full {:.0} ms \
                 after the clients ended",
                reaped_in.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => report.violation(format!("the pool or client table did not return to full: {e}")),
        }
        if let Err(e) = fresh_echo(service) {
            report.violation(format!("a fresh client was not served: {e}"));
        }
        if let Err(e) = wait_full(service, REAP_BOUND) {
            report.violation(format!("after the fresh client: {e}"));
        }
        let fds_end = open_fds(server_pid).unwrap_or(0);
        println!("soak: server open files: {fds_start} at the start, {fds_end} at the end");
        if fds_end != fds_start {
            report.violation(format!(
                "the server's open files went from {fds_start} to {fds_end}"
            ));
        }
        if let Ok(svc) = Service::open(service) {
            let st = svc.stats();
            println!(
                "soak: server counters: requests {}, ok {}, clients reaped {}, chunks reclaimed {}",
                st.requests.load(Ordering::Relaxed),
                st.ok.load(Ordering::Relaxed),
                st.clients_reaped.load(Ordering::Relaxed),
                st.chunks_reclaimed.load(Ordering::Relaxed)
            );
        }
        server.signal(libc::SIGTERM);
        match server.wait_bounded(Duration::from_secs(15)) {
            Some(st) if st.success() => {}
            Some(st) => report.violation(format!("the server's drain failed: {st}")),
            None => report.violation("the server did not stop within 15 s of SIGTERM".into()),
        }
    }
    let left = shm_files(service);
    if !left.is_empty() {
        report.violation(format!("segments left after the server stopped: {left:?}"));
    }
    // Leftover STATs of processes killed at the very end.
    for (_, c) in report.latest.drain() {
        add_counts(&mut report.killed, &c);
    }
    let mut all = report.killed.clone();
    add_counts(&mut all, &report.survived);
    let g = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let finals = |m: &BTreeMap<String, u64>| {
        [
            "ok",
            "ok_timeout_finish",
            "timed_out",
            "cancelled",
            "busy",
            "invalid",
            "model_not_found",
            "protocol",
            "server_gone",
            "shutting_down",
            "other_error",
            "wrong",
            "lost",
        ]
        .iter()
        .map(|k| g(m, k))
        .sum::<u64>()
    };
    println!("soak: chaos phase results ({chaos_secs:.1} s of chaos)");
    println!(
        "  requests submitted: {} (surviving processes {}, killed processes {})",
        g(&all, "submitted"),
        g(&report.survived, "submitted"),
        g(&report.killed, "submitted")
    );
    println!(
        "  final answers: {} = ok {} + ok with finish Timeout {} + timed out {} + cancelled {} + \
         busy {} + invalid {} + model not found {} + protocol {} + other {}",
        finals(&all),
        g(&all, "ok"),
        g(&all, "ok_timeout_finish"),
        g(&all, "timed_out"),
        g(&all, "cancelled"),
        g(&all, "busy"),
        g(&all, "invalid"),
        g(&all, "model_not_found"),
        g(&all, "protocol"),
        g(&all, "other_error") + g(&all, "server_gone") + g(&all, "shutting_down"),
    );
    println!(
        "  stream chunks {}, cancels sent {}, submits refused busy {}, wrong answers {}, lost {}",
        g(&all, "partials"),
        g(&all, "cancels_sent"),
        g(&all, "submit_busy"),
        g(&all, "wrong"),
        g(&all, "lost")
    );
    println!(
        "  surviving processes: {} submitted, {} final answers; killed processes: {} submitted, \
         {} answered before their death (last report)",
        g(&report.survived, "submitted"),
        finals(&report.survived),
        g(&report.killed, "submitted"),
        finals(&report.killed)
    );
    println!(
        "  kills {}, restarts {}, garbage writes {} ({} raw descriptors)",
        kills.load(Ordering::Relaxed),
        restarts.load(Ordering::Relaxed),
        g(&all, "garbage"),
        g(&all, "raw_descriptors")
    );
    if g(&report.survived, "submitted") != finals(&report.survived) {
        report.violation(format!(
            "surviving processes submitted {} requests but got {} final answers",
            g(&report.survived, "submitted"),
            finals(&report.survived)
        ));
    }
    Ok(())
}

fn server_kill_phase(opts: &Opts, service: &str, report: &mut Report) -> Result<()> {
    const WAITERS: usize = 3;
    let (tx, rx) = mpsc::channel::<Ev>();
    let mut mb = Mailbox::new(rx);
    let violations_before = report.violations.len();
    let mut rng = Rng::new(opts.seed ^ 0x5E4E);
    let mut worst = Duration::ZERO;
    let mut gen = 0u64;
    let mut server = Kid::spawn("server", service, SERVER_SLOT, gen, "", &tx)?;
    mb.expect(report, (SERVER_SLOT, gen), "READY", Duration::from_secs(20))?;
    println!(
        "soak: server-kill phase on {service}: {} rounds, {WAITERS} waiter processes x 3 calls, \
         bound {GONE_BOUND:?}",
        opts.server_kill_rounds
    );
    for round in 0..opts.server_kill_rounds {
        let mut waiters: Vec<Kid> = (0..WAITERS)
            .map(|w| Kid::spawn("waiter", service, WAITER_SLOT + w, round as u64, "", &tx))
            .collect::<Result<_>>()?;
        for w in 0..WAITERS {
            mb.expect(
                report,
                (WAITER_SLOT + w, round as u64),
                "WAITING",
                Duration::from_secs(20),
            )?;
        }
        std::thread::sleep(Duration::from_millis(rng.range(20, 300)));
        server.kill9();
        let killed_at = Instant::now();
        let mut gone = 0;
        let mut all_gone = 0;
        let end = killed_at + GONE_BOUND + Duration::from_secs(10);
        while all_gone < WAITERS && Instant::now() < end {
            let Some((slot, _, line, at)) = mb.next(report, Duration::from_millis(50)) else {
                continue;
            };
            if let Some(rest) = line.strip_prefix("GONE ") {
                gone += 1;
                let took = at.saturating_duration_since(killed_at);
                worst = worst.max(took);
                if !rest.ends_with(" ServerGone") {
                    report.violation(format!(
                        "round {round}: waiter {slot} call ended with {rest:?}, not ServerGone"
                    ));
                } else if took > GONE_BOUND {
                    report.violation(format!(
                        "round {round}: waiter {slot} saw ServerGone after {took:?} (bound {GONE_BOUND:?})"
                    ));
                }
            } else if line == "ALLGONE" {
                all_gone += 1;
            }
        }
        if all_gone < WAITERS || gone < 3 * WAITERS {
            report.violation(format!(
                "round {round}: {gone} of {} waiting calls ended within {:?}",
                3 * WAITERS,
                end - killed_at
            ));
        }
        // The dead server's segment is stale, and a new server takes its name over.
        match Service::open(service) {
            Ok(svc) if !svc.server_alive() => {}
            Ok(_) => report.violation(format!("round {round}: the killed server looks alive")),
            Err(e) => report.violation(format!("round {round}: the stale segment is gone: {e}")),
        }
        gen += 1;
        server = Kid::spawn("server", service, SERVER_SLOT, gen, "", &tx)?;
        mb.expect(report, (SERVER_SLOT, gen), "READY", Duration::from_secs(20))?;
        for w in waiters.iter_mut() {
            w.tell("again");
        }
        for w in 0..WAITERS {
            match mb.expect(
                report,
                (WAITER_SLOT + w, round as u64),
                "RECONNECTED",
                Duration::from_secs(20),
            ) {
                Ok((line, _)) if line == "RECONNECTED" => {}
                Ok((line, _)) => report.violation(format!("round {round}: waiter {w}: {line}")),
                Err(e) => report.violation(format!("round {round}: waiter {w}: {e:#}")),
            }
        }
        for w in waiters.iter_mut() {
            match w.wait_bounded(Duration::from_secs(10)) {
                Some(st) if st.success() => {}
                other => report.violation(format!(
                    "round {round}: waiter {} ended with {other:?}",
                    w.slot
                )),
            }
        }
        if let Err(e) = fresh_echo(service) {
            report.violation(format!("round {round}: the restarted server: {e}"));
        }
    }
    server.signal(libc::SIGTERM);
    match server.wait_bounded(Duration::from_secs(15)) {
        Some(st) if st.success() => {}
        other => report.violation(format!("the last server's drain ended with {other:?}")),
    }
    mb.drain(report);
    let failed = report.violations.len() - violations_before;
    println!(
        "soak: server-kill phase: {} rounds x {} waiting calls; slowest ServerGone after {:.0} ms \
         (bound {GONE_BOUND:?}); {}",
        opts.server_kill_rounds,
        3 * WAITERS,
        worst.as_secs_f64() * 1e3,
        if failed == 0 {
            "every call got ServerGone in time, and each restarted server took over the stale \
             segment and served the reconnecting waiters and a fresh client"
                .to_owned()
        } else {
            format!("{failed} violation(s)")
        }
    );
    Ok(())
}
