//! The runtime across real processes: client processes (this test binary re-executed) against a
//! server, clients and servers killed with SIGKILL.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shm_runtime::protocol::{Input, Params, Request, Task};
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig, Ticket};

const ROLE: &str = "SHM_RUNTIME_TEST_ROLE";
const SERVICE: &str = "SHM_RUNTIME_TEST_SERVICE";
const ARG: &str = "SHM_RUNTIME_TEST_ARG";

mod common;
use common::{say, Kid};

/// A client process of this binary in `role`.
fn client(role: &str, service: &str, arg: &str) -> Kid {
    Kid::role(&[(ROLE, role), (SERVICE, service), (ARG, arg)])
}

/// `shm-runtime serve` with an echo and a sleep model.
fn start_server(service: &str) -> Kid {
    Kid::from(
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
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A Generate request with default parameters.
fn generate(id: u64, model: &str, text: &str) -> Request {
    Request {
        id,
        model: model.into(),
        task: Task::Generate,
        input: Input::Text(text.into()),
        params: Params::default(),
    }
}

/// Removes a service's segment when dropped if its server is dead (a failing test that killed a
/// server must not leave its segment in /dev/shm; a live one is never removed).
struct StaleSegment(String);

impl Drop for StaleSegment {
    fn drop(&mut self) {
        let _ = shm_runtime::ring::Segment::remove(
            &self.0,
            &shm_runtime::ring::SegmentOpenOptions::default().dir,
        );
    }
}

fn unique(tag: &str) -> String {
    format!("p-{tag}-{}", std::process::id())
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
    let mut open: HashMap<Ticket, u64> = HashMap::new();
    let mut finals: HashMap<u64, u32> = HashMap::new();
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
                id: 0,
                model: if slow { "slow" } else { "echo" }.into(),
                task: Task::Generate,
                input: Input::Text(format!("request {sent}")),
                params,
            };
            let t = client.submit(&req).unwrap();
            open.insert(t, sent);
            sent += 1;
        }
        let (&t, &i) = open.iter().next().unwrap();
        match client.recv(t, Duration::from_secs(20)) {
            Ok(v) if !v.is_final() => continue,
            Ok(_) => {}
            Err(Error::TimedOut) => timed_out += 1,
            Err(e) => panic!("request {i}: unexpected {e}"),
        }
        open.remove(&t);
        *finals.entry(i).or_default() += 1;
        answered += 1;
        if answered % 1000 == 0 {
            say(format!("progress {answered}"));
        }
    }
    assert_eq!(finals.len() as u64, n);
    assert!(finals.values().all(|&c| c == 1));
    assert_eq!(client.in_flight(), 0);
    say(format!("ok {answered} timed_out {timed_out}"));
}

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let service = std::env::var(SERVICE).unwrap();
    let arg: u64 = std::env::var(ARG).unwrap().parse().unwrap_or(0);
    match role.as_str() {
        "load" => load(&service, arg, std::process::id() as u64),
        "stream-and-hang" => {
            let client = Client::connect(&service).unwrap();
            let mut r = generate(0, "slow", "x");
            r.params.max_tokens = 10_000;
            let mut s = client.stream(&r).unwrap();
            let first = s.next().unwrap().unwrap();
            // Hold a view (a chunk) and keep requests queued, then wait to be killed.
            for _ in 0..8 {
                client.submit(&r).unwrap();
            }
            say("STREAMING".into());
            std::thread::sleep(Duration::from_secs(60));
            drop(first);
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn four_clients_one_killed_every_survivor_request_answered_and_the_pool_refills() {
    let service = unique("load");
    let mut slow = ModelConfig::new("slow", "sleep");
    slow.options
        .insert("step_ms".into(), toml::Value::Float(1.0));
    let mut cfg = ServerConfig::new(&service, vec![ModelConfig::new("echo", "echo"), slow]);
    cfg.max_inflight = 32;
    let _server = Server::start(cfg).unwrap();
    let observer = Client::connect(&service).unwrap();
    let (_, total) = observer.pool_free();
    let mut kids: Vec<Kid> = (0..4).map(|_| client("load", &service, "10000")).collect();
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
    let ok = observer.infer(&generate(0, "echo", "after")).unwrap();
    assert!(ok.is_final());
}

#[test]
fn a_client_killed_mid_stream_is_cleaned_up() {
    let service = unique("midstream");
    let mut slow = ModelConfig::new("slow", "sleep");
    slow.options
        .insert("step_ms".into(), toml::Value::Float(5.0));
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
    // The lane is free again: a short request is answered promptly.
    let t = Instant::now();
    let mut r = generate(0, "slow", "x");
    r.params.max_tokens = 1;
    observer.infer(&r).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_killed_server_gives_server_gone_and_a_restarted_one_serves_again() {
    let service = unique("srvkill");
    let _cleanup = StaleSegment(service.clone());
    let mut server = start_server(&service);
    server.expect("serving");
    let client = Client::connect(&service).unwrap();
    let mut r = generate(0, "slow", "x");
    r.params.max_tokens = 1000;
    let t = client.submit(&r).unwrap();
    server.kill9();
    let start = Instant::now();
    assert_eq!(
        client.recv(t, Duration::from_secs(30)).unwrap_err(),
        Error::ServerGone
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "ServerGone took {:?}",
        start.elapsed()
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
    let service = unique("sigterm");
    let _cleanup = StaleSegment(service.clone());
    let mut server = start_server(&service);
    server.expect("serving");
    let client = Client::connect(&service).unwrap();
    client.infer(&generate(1, "echo", "counted")).unwrap();
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
        text.contains("answer 0:") && text.contains("answer 1:"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(["status", &service, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["requests"], 3, "one infer and two pings");
    assert_eq!(v["ok"], 3);
    assert_eq!(v["clients"].as_array().unwrap().len(), 1);
    assert_eq!(v["lanes"][0]["model"], "echo");
    // A request that takes 100 ms is running when SIGTERM arrives: it finishes (grace 5 s), then
    // the server exits cleanly and removes its segment.
    let mut r = generate(2, "slow", "x");
    r.params.max_tokens = 10;
    let t = client.submit(&r).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: signals our own child; no memory involved.
    let rc = unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
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
