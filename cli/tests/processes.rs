//! The runtime across real processes: client processes (this test binary re-executed) against a
//! server, clients and servers killed with SIGKILL.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use shm_runtime::protocol::{Params, Request};
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig, Ticket};
use shm_test_support::runtime::{generate, sleep_model, RequestExt, StaleSegment};
use shm_test_support::{say, unique_name, wait_for, ChildProcess, ChildTask};

/// A client process of this binary in `role`.
fn client(role: &str, service: &str, arg: &str) -> ChildProcess {
    ChildProcess::role(role, service, arg)
}

/// `shm-runtime serve` with an echo and a sleep model.
fn start_server(service: &str) -> ChildProcess {
    start_server_with(service, &[])
}

/// `shm-runtime serve` with an echo and a sleep model, and `extra` arguments.
fn start_server_with(service: &str, extra: &[&str]) -> ChildProcess {
    ChildProcess::spawn(
        Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
            .args([
                "serve",
                "--name",
                service,
                "--model",
                "echo=echo",
                "--model",
                "slow=sleep",
            ])
            .args(extra)
            .env("RUST_LOG", "warn"),
    )
}

/// xorshift64*: reproducible pseudo-random choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Sends `n` requests with up to 16 in flight, random priorities and timeouts, to the echo model
/// and (one in 50) to the slow one with a deadline it cannot meet; checks that each gets exactly
/// one final answer of an allowed kind. Prints progress, then "ok <answered>".
fn load(service: &str, n: u64, seed: u64) {
    let client = Client::connect(service).unwrap();
    let mut rng = Rng(seed | 1);
    // Ticket -> (request number, sent to the slow model).
    let mut open: HashMap<Ticket, (u64, bool)> = HashMap::new();
    let mut finished: HashSet<Ticket> = HashSet::new();
    let (mut sent, mut answered, mut timed_out) = (0u64, 0u64, 0u64);
    while answered < n {
        while sent < n && open.len() < 16 {
            let slow = rng.next() % 50 == 0;
            let mut params = Params {
                priority: (rng.next() % 4) as u8,
                timeout_ms: if slow {
                    5
                } else {
                    5_000 + (rng.next() % 1000) as u32
                },
                ..Params::default()
            };
            if slow {
                params.max_tokens = 100;
            }
            let req = Request {
                params,
                ..generate(
                    if slow { "slow" } else { "echo" },
                    &format!("request {sent}"),
                )
            };
            let t = client.submit(&req).unwrap();
            assert!(
                open.insert(t, (sent, slow)).is_none(),
                "ticket {t:?} issued twice"
            );
            sent += 1;
        }
        let (&t, &(i, slow)) = open.iter().next().unwrap();
        match client.recv(t, Duration::from_secs(20)) {
            Ok(v) if !v.is_final() => continue,
            Ok(_) => {}
            // The server's answer for a deadline it could not meet (a client-side timeout would
            // leave the request in flight, caught below).
            Err(Error::TimedOut) if slow => timed_out += 1,
            Err(e) => panic!("request {i} (slow: {slow}): unexpected {e}"),
        }
        open.remove(&t);
        assert!(finished.insert(t), "request {i}: a second final answer");
        answered += 1;
        if answered % 1000 == 0 {
            say(format!("progress {answered}"));
        }
    }
    assert_eq!(finished.len() as u64, n);
    // A final answer removes its ticket from `open`, so a second answer for it (or an answer for a
    // ticket never sent) is not read above: the client returns it unread and counts it as a
    // stray. One request per lane after all the others, answered in turn, brings in whatever the
    // workers sent before.
    for model in ["echo", "slow"] {
        let mut r = generate(model, "last");
        r.params.max_tokens = 1;
        assert!(client.infer(&r).unwrap().is_final());
    }
    assert_eq!(
        client.stray_answers(),
        0,
        "answers for tickets not in flight"
    );
    assert_eq!(client.in_flight(), 0);
    say(format!("ok {answered} timed_out {timed_out}"));
}

#[test]
#[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
fn child_entry() {
    let Some(task) = ChildTask::from_env() else {
        return;
    };
    let (service, arg) = (task.name.as_str(), task.number());
    match task.role.as_str() {
        "load" => load(service, arg, std::process::id() as u64),
        "stream-and-hang" => {
            let client = Client::connect(service).unwrap();
            let mut r = generate("slow", "x");
            r.params.max_tokens = 10_000;
            let mut s = client.stream_request(&r).unwrap();
            let first = s.next().unwrap().unwrap();
            // Hold a view (a chunk) and keep requests queued, then wait to be killed.
            for _ in 0..8 {
                client.submit(&r).unwrap();
            }
            say("STREAMING");
            std::thread::sleep(Duration::from_secs(60));
            drop(first);
        }
        "rewrite-after-submit" => rewrite_after_submit(service, arg, std::process::id() as u64),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// A use-after-submit bug: sends `n` echo requests through chunks it keeps writing random bytes
/// into after submitting them (racing the server's read), and checks that each gets one final
/// answer: the echo, or an `InvalidRequest` refusal. Prints "ok <answered> <refused> <renamed>".
fn rewrite_after_submit(service: &str, n: u64, seed: u64) {
    use shm_runtime::protocol::encode_request;
    use shm_runtime::ring::pool::{OwnerId, Pool};
    use shm_runtime::ring::ProcessToken;
    use shm_runtime::testing::Service;
    use std::sync::atomic::Ordering;

    let client = Client::connect(service).unwrap();
    let svc = Service::open(service).unwrap();
    let me = ProcessToken::current().raw();
    let slot = (0..svc.layout.max_clients)
        .find(|&c| svc.client(c).token.load(Ordering::Acquire) == me)
        .expect("this process's client slot");
    let owner = OwnerId::from_raw(svc.client(slot).owner.load(Ordering::Acquire))
        .expect("the client's pool owner id");
    let pool = Pool::attach(&svc.pool_region()).unwrap();
    // Longer than an inline string, so the archive holds a relative pointer and a length to
    // corrupt. Request id 0: the client then checks nothing of the answer's id.
    let req = generate("echo", &"rewritten after submit; ".repeat(4));
    let mut rng = Rng(seed | 1);
    let (mut answered, mut refused, mut renamed) = (0u64, 0u64, 0u64);
    for i in 0..n {
        // A 16 KiB chunk: echo answers of ~100 bytes come from the small classes, so a write that
        // lands after the server released the chunk hits a free chunk, never an answer.
        let mut loan = pool.loan(owner, 16 << 10).unwrap();
        let len = encode_request(&req, loan.as_mut_slice()).unwrap();
        let at = loan.as_mut_ptr();
        let id = loan.into_id();
        let t = client
            .submit_descriptor("echo", id.raw(), len as u32)
            .unwrap();
        for _ in 0..16 {
            let k = (rng.next() % len as u64) as usize;
            // SAFETY: k < len <= the chunk's 16 KiB, and the segment stays mapped while `pool`
            // lives. The server reads these bytes meanwhile: that race is what is under test (the
            // copy it validates); the volatile write keeps it from being elided.
            unsafe { at.add(k).write_volatile(rng.next() as u8) };
        }
        match client.recv(t, Duration::from_secs(10)) {
            Ok(v) => {
                assert!(v.is_final(), "request {i}: an echo is one final answer");
                answered += 1;
            }
            Err(Error::InvalidRequest(_)) => refused += 1,
            // A rewrite of the model's name: the request then names a model this lane does not
            // serve, which is refused as such.
            Err(Error::ModelNotFound(_)) => refused += 1,
            // A rewrite of the request id that the server read: its answer names that id.
            Err(Error::Protocol(m)) if m.contains("answer for request") => renamed += 1,
            Err(e) => panic!("request {i}: {e}"),
        }
    }
    assert_eq!(client.in_flight(), 0);
    say(format!("ok {answered} {refused} {renamed}"));
}

#[test]
fn four_clients_one_killed_every_survivor_request_answered_and_the_pool_refills() {
    let service = unique_name("load");
    let slow = sleep_model("slow", 1.0);
    let mut cfg = ServerConfig::new(&service, vec![ModelConfig::new("echo", "echo"), slow]);
    cfg.max_inflight = 32;
    let _server = Server::start(cfg).unwrap();
    let observer = Client::connect(&service).unwrap();
    let (_, total) = observer.pool_free();
    let mut kids: Vec<ChildProcess> = (0..4).map(|_| client("load", &service, "10000")).collect();
    kids[0].expect("progress 1000");
    kids[0].kill9();
    for k in kids.drain(1..) {
        let mut k = k;
        let line = k.expect("ok ");
        assert!(line.starts_with("10000"), "{line}");
        k.wait_success();
    }
    // The dead client's slot, queued work and chunks come back.
    wait_for("the pool to refill", Duration::from_secs(5), || {
        observer.pool_free() == (total, total)
    });
    let ok = observer.infer(&generate("echo", "after")).unwrap();
    assert!(ok.is_final());
}

#[test]
fn a_client_killed_mid_stream_is_cleaned_up() {
    let service = unique_name("midstream");
    let slow = sleep_model("slow", 5.0);
    let _server = Server::start(ServerConfig::new(
        &service,
        vec![ModelConfig::new("echo", "echo"), slow],
    ))
    .unwrap();
    let observer = Client::connect(&service).unwrap();
    let (_, total) = observer.pool_free();
    let mut kid = client("stream-and-hang", &service, "0");
    kid.expect("STREAMING");
    assert!(observer.pool_free().0 < total, "the child holds chunks");
    kid.kill9();
    wait_for("the pool to refill", Duration::from_secs(5), || {
        observer.pool_free() == (total, total)
    });
    // The lane dropped the dead client's running stream and queued requests (10,000 tokens of
    // 5 ms each would run for 50 s), and serves again.
    let svc = shm_runtime::testing::Service::open(&service).unwrap();
    wait_for(
        "the lane to drop the dead client's work",
        Duration::from_secs(10),
        || svc.lane(1).running() == 0 && svc.lane(1).queued() == 0,
    );
    let mut r = generate("slow", "x");
    r.params.max_tokens = 1;
    observer.infer(&r).unwrap();
}

#[test]
fn a_killed_server_gives_server_gone_and_a_restarted_one_serves_again() {
    let service = unique_name("srvkill");
    let _cleanup = StaleSegment(service.clone());
    let mut server = start_server(&service);
    server.expect("serving");
    let client = Client::connect(&service).unwrap();
    let mut r = generate("slow", "x");
    r.params.max_tokens = 1000;
    let t = client.submit(&r).unwrap();
    server.kill9();
    // Noticed well before the request's own end (1000 steps of 10 ms) and the wait's: ServerGone,
    // not TimedOut. (How fast: the soak's server-kill phase measures it.)
    assert_eq!(
        client.recv(t, Duration::from_secs(5)).unwrap_err(),
        Error::ServerGone
    );
    assert_eq!(client.submit(&r).unwrap_err(), Error::ServerGone);
    drop(client);
    // A new server takes over the stale name; clients reconnect.
    let mut server = start_server(&service);
    server.expect("serving");
    let client = Client::connect(&service).unwrap();
    r.params.max_tokens = 1;
    client.infer(&r).unwrap();
    server.kill9();
    drop(client);
    // `cleanup` removes the dead server's segment (and would refuse a live one).
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(["cleanup", &service])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        Client::connect(&service).unwrap_err(),
        Error::ServiceNotFound(service.clone())
    );
}

#[test]
fn cli_ping_status_and_sigterm_drain() {
    let service = unique_name("sigterm");
    let _cleanup = StaleSegment(service.clone());
    let mut server = start_server(&service);
    server.expect("serving");
    let client = Client::connect(&service).unwrap();
    client
        .infer(&generate("echo", "counted").with_id(1))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(["ping", &service, "-c", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("pong 0:") && text.contains("pong 1:") && text.contains("echo ready"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(["status", &service, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(
        v["requests"], 3,
        "the two models' warm-ups at start and one infer (pings reach no model)"
    );
    assert_eq!(v["ok"], 3);
    assert_eq!(v["lanes"][1]["model_state"], "ready");
    assert_eq!(v["clients"].as_array().unwrap().len(), 1);
    assert_eq!(v["lanes"][0]["model"], "echo");
    // A request that takes 100 ms is running when SIGTERM arrives: it finishes (grace 5 s), then
    // the server exits cleanly and removes its segment.
    let mut r = generate("slow", "x").with_id(2);
    r.params.max_tokens = 10;
    let t = client.submit(&r).unwrap();
    let svc = shm_runtime::testing::Service::open(&service).unwrap();
    wait_for("the slow request to start", Duration::from_secs(10), || {
        svc.lane(1).running() == 1
    });
    server.signal(libc::SIGTERM);
    let answer = client.recv(t, Duration::from_secs(10)).unwrap();
    assert!(answer.is_final());
    server.wait_success();
    assert!(matches!(client.submit(&r), Err(Error::ServerGone)));
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(["status", &service])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found")
            || String::from_utf8_lossy(&out.stderr).contains("no segment"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_status_shows_each_lanes_panics_restarts_and_failure() {
    use shm_runtime::backend::panicking::TRIGGER;
    // An in-process server with two `panic` models (a test-only backend): one panics once and
    // is restarted, the other panics past its restarts and fails.
    let service = unique_name("panic-status");
    let server = Server::start(ServerConfig::new(
        &service,
        vec![
            ModelConfig::new("once", "panic"),
            ModelConfig::new("always", "panic"),
        ],
    ))
    .unwrap();
    let client = Client::connect(&service).unwrap();
    for (model, panics) in [("once", 1), ("always", 4)] {
        for _ in 0..panics {
            let answer = client.infer(&generate(model, TRIGGER));
            assert!(matches!(answer, Err(Error::Backend(_))), "{answer:?}");
        }
    }
    // The answer goes first, then the worker restarts the backend (or marks the lane failed).
    wait_for(
        "the restart and the failure",
        Duration::from_secs(5),
        || {
            let st = shm_runtime::status(&service).unwrap();
            st.lanes[0].restarts == 1 && st.lanes[1].state == shm_runtime::LaneState::Failed
        },
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(["status", &service])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lane = |model: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("lane {model}:")))
            .unwrap_or_else(|| panic!("no lane {model} in {text}"))
            .to_owned()
    };
    assert!(lane("once").contains(", lane serving,"), "{text}");
    assert!(
        lane("once").ends_with("backend panics 1 restarts 1"),
        "{text}"
    );
    assert!(
        lane("always").contains(": model failed, lane failed,"),
        "{text}"
    );
    assert!(
        lane("always").ends_with("backend panics 4 restarts 3"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(["status", &service, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lanes"][0]["state"], "serving");
    assert_eq!(v["lanes"][1]["state"], "failed");
    assert_eq!(v["lanes"][1]["panics"], 4);
    assert_eq!(v["lanes"][1]["restarts"], 3);
    drop(client);
    server.shutdown(Duration::from_secs(1));
}

#[test]
fn the_deprecated_hardened_flag_is_accepted_with_a_warning() {
    // An invalid name: the server refuses to start right after reading its arguments.
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args([
            "serve",
            "--name",
            "a/b",
            "--model",
            "echo=echo",
            "--hardened",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--hardened is deprecated"), "{stderr}");
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
}

#[test]
fn a_server_survives_a_client_that_rewrites_its_requests_after_submitting() {
    let service = unique_name("rewrite");
    let _cleanup = StaleSegment(service.clone());
    // The default: each request is copied before it is validated.
    let mut server = start_server_with(&service, &[]);
    server.expect("serving");
    let observer = Client::connect(&service).unwrap();
    let (_, total) = observer.pool_free();
    let mut kid = client("rewrite-after-submit", &service, "20000");
    let line = kid.expect("ok ");
    kid.wait_success();
    let counts: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(counts.iter().sum::<u64>(), 20_000, "{line}");
    assert!(counts[1] > 0, "no rewrite was ever refused: {line}");
    // The server lives, serves, and has every chunk back.
    let v = observer.infer(&generate("echo", "after")).unwrap();
    assert!(v.is_final());
    drop(v);
    wait_for("the pool to refill", Duration::from_secs(5), || {
        observer.pool_free() == (total, total)
    });
    server.kill9();
}
