//! Exhaustion with real shared memory and real processes: a full request ring, an exhausted pool or
//! quota, every client slot taken, oversized requests, and a client that never reads its answers.
//! Each case must end in a typed error or backpressure, never a hang, and must not cost another
//! client its answers. Every wait is bounded; a watchdog aborts the binary if a test hangs anyway.

use std::time::{Duration, Instant};

use shm_runtime::protocol::{Input, Task, Tensor, TensorData};
use shm_runtime::ring::pool::{PoolConfig, SizeClass};
use shm_runtime::testing::{Service, MAX_CLIENTS};
use shm_runtime::{Client, ConfigError, Error, ModelConfig, ResponseView, Server, ServerConfig};
use shm_test_support::runtime::{final_of, generate, generated_text, small_pool, RequestExt};
use shm_test_support::wait::Watchdog;
use shm_test_support::{say, unique_name, wait_for, ChildProcess, ChildTask};

/// A client process of this binary in `role`.
fn client(role: &str, service: &str, arg: &str) -> ChildProcess {
    ChildProcess::role(role, service, arg)
}

/// The sleep model as `name` (`step_ms` per token), with `slots` sequences stepped together.
fn sleep_model(name: &str, step_ms: f64, slots: Option<i64>) -> ModelConfig {
    let mut m = shm_test_support::runtime::sleep_model(name, step_ms);
    if let Some(n) = slots {
        m.options
            .insert("slots".into(), shm_runtime::config::OptionValue::Integer(n));
    }
    m
}

fn is_busy(e: &Error, cause: &str) -> bool {
    matches!(e, Error::Busy(m) if m.contains(cause))
}

/// Child processes: this binary re-executed in a role.
#[test]
#[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
fn child_entry() {
    let Some(task) = ChildTask::from_env() else {
        return;
    };
    let (service, arg) = (task.name.as_str(), task.number());
    match task.role.as_str() {
        // Connects, says so, and waits to be killed.
        "idle" => {
            let _client = Client::connect(service).unwrap();
            say("CONNECTED");
            std::thread::sleep(Duration::from_secs(60));
        }
        // Takes every chunk it can (keeping each answer), then reports how it was stopped.
        "hog" => {
            let client = Client::connect(service).unwrap();
            let mut views = Vec::new();
            let how = loop {
                assert!(views.len() < 100_000, "the pool never ran out");
                let t = match client.submit(&generate("echo", "hog")) {
                    Ok(t) => t,
                    Err(e) => break format!("submit {e}"),
                };
                match final_of(&client, t, Duration::from_secs(5)) {
                    Ok(v) => views.push(v),
                    Err(e) => break format!("answer {e}"),
                }
            };
            say(format!("HOG {} {how}", views.len()));
            std::thread::sleep(Duration::from_secs(60));
        }
        // Sends `arg` requests and reads no answer until told to on stdin; then reads them all.
        "no-read" => {
            let client = Client::connect(service).unwrap();
            let mut tickets = Vec::new();
            let end = Instant::now() + Duration::from_secs(10);
            for i in 0..arg {
                let r = generate("slow", &format!("s{i}"))
                    .with_id(i + 1)
                    .with_max_tokens(1);
                loop {
                    match client.submit(&r) {
                        Ok(t) => break tickets.push(t),
                        // Backpressure from the request ring: retry shortly.
                        Err(e) if is_busy(&e, "the request ring of lane") => {
                            assert!(Instant::now() < end, "the request ring never drained");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => panic!("submit {i}: {e}"),
                    }
                }
            }
            say("SUBMITTED");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            for (i, t) in tickets.into_iter().enumerate() {
                // The answer's id is checked against the request's by the client.
                let v = final_of(&client, t, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("answer {i}: {e}"));
                assert_eq!(generated_text(&v), "t0 ");
            }
            assert_eq!(client.in_flight(), 0);
            say(format!("READ {arg}"));
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn a_full_request_ring_answers_busy_and_every_accepted_request_gets_its_answer() {
    let _dog = Watchdog::new("full request ring", Duration::from_secs(30));
    let svc = unique_name("ring");
    // A stepping model takes in requests only between its 150 ms steps, so a burst fills the ring.
    let mut cfg = ServerConfig::new(&svc, vec![sleep_model("steps", 150.0, Some(64))]);
    cfg.ring_capacity = 16;
    cfg.max_inflight = 1024;
    let _server = Server::start(cfg).unwrap();
    let client = Client::connect(&svc).unwrap();
    let (_, total) = client.pool_free();

    let mut first = generate("steps", "first").with_id(1).with_max_tokens(4);
    first.params.stream = true;
    let t0 = client.submit(&first).unwrap();
    let v = client.recv(t0, Duration::from_secs(5)).unwrap();
    assert!(!v.is_final(), "the first step's stream chunk");
    drop(v);

    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..2000u64 {
        match client.submit(
            &generate("steps", "burst")
                .with_id(100 + i)
                .with_max_tokens(1),
        ) {
            Ok(t) => accepted.push((t, 100 + i)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the ring filled up");
    assert!(
        is_busy(&refused, "the request ring of lane"),
        "expected Busy (ring full), got {refused:?}"
    );
    assert!(
        accepted.len() >= 16,
        "the ring holds 16: {}",
        accepted.len()
    );
    // The refused request left nothing behind: not in flight, its chunk back in the pool.
    assert_eq!(client.in_flight(), accepted.len() + 1);

    // Every accepted request gets its own final answer once the worker drains the ring.
    for (t, id) in &accepted {
        let v = final_of(&client, *t, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("request {id}: {e}"));
        assert_eq!(v.response().unwrap().id, *id);
        assert_eq!(generated_text(&v), "t0 ");
    }
    let v = final_of(&client, t0, Duration::from_secs(5)).unwrap();
    assert_eq!(generated_text(&v), "t0 t1 t2 t3 ");
    drop(v);

    // Drained: submits succeed again.
    let later: Vec<_> = (0..16)
        .map(|i| {
            client
                .submit(
                    &generate("steps", "later")
                        .with_id(5000 + i)
                        .with_max_tokens(1),
                )
                .unwrap()
        })
        .collect();
    for t in later {
        final_of(&client, t, Duration::from_secs(5)).unwrap();
    }
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.pool_free(), (total, total), "no chunk leaked");
}

#[test]
fn a_client_at_its_quota_gets_busy_and_the_others_are_still_served() {
    let _dog = Watchdog::new("quota", Duration::from_secs(30));
    let svc = unique_name("quota");
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    cfg.pool = small_pool(16);
    let _server = Server::start(cfg).unwrap();
    let greedy = Client::connect(&svc).unwrap();
    let other = Client::connect(&svc).unwrap();
    let (_, total) = other.pool_free();

    // Keep every answer: each holds one chunk, until the quota refuses the next loan.
    let mut kept = Vec::new();
    let refused = loop {
        assert!(kept.len() <= 16, "the quota of 16 was not enforced");
        let i = kept.len();
        match greedy.infer(&generate("echo", &format!("g{i}")).with_id(i as u64 + 1)) {
            Ok(v) => kept.push(v),
            Err(e) => break e,
        }
    };
    // Its own quota used up: waiting alone would not help, so not `Busy`.
    assert!(
        matches!(&refused, Error::ResourceExhausted(m) if m.contains("quota")),
        "expected ResourceExhausted (quota), got {refused:?}"
    );
    assert_eq!(kept.len(), 16);
    assert_eq!(greedy.in_flight(), 0);

    // The other client is served, many times over, while the greedy one sits at its quota.
    for i in 0..100 {
        let v = other
            .infer_timeout(
                &generate("echo", &format!("o{i}")).with_id(i + 1),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(generated_text(&v), format!("o{i}"));
    }
    // The greedy client's answers were not touched.
    for (i, v) in kept.iter().enumerate() {
        assert_eq!(generated_text(v), format!("g{i}"));
    }
    // Giving back one answer lets it send one more request.
    kept.pop();
    greedy
        .infer(&generate("echo", "again").with_id(99))
        .unwrap();
    drop(kept);
    assert_eq!(other.pool_free(), (total, total));
}

#[test]
fn an_exhausted_pool_answers_busy_without_hanging_and_recovers_when_the_hog_dies() {
    let _dog = Watchdog::new("exhausted pool", Duration::from_secs(30));
    let svc = unique_name("pool");
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    // A quota above the pool's size: one client can take everything.
    cfg.pool = small_pool(1000);
    let _server = Server::start(cfg).unwrap();
    let other = Client::connect(&svc).unwrap();
    let (_, total) = other.pool_free();
    let before = other.infer(&generate("echo", "held").with_id(7)).unwrap();

    let mut hog = client("hog", &svc, "0");
    let line = hog.expect("HOG ");
    let (held, how) = line.split_once(' ').unwrap();
    let held: u32 = held.parse().unwrap();
    // Stopped by a typed error: Busy, no memory for its request; or (its last request took the
    // last chunk) none for the answer, which then comes as a ResourceExhausted error answer.
    assert!(
        how.contains("busy") || how.contains("no chunk for the answer"),
        "the hog was stopped by: {how}"
    );
    assert!(
        held + 2 >= total,
        "the hog holds nearly every chunk: {held} of {total}"
    );
    assert!(other.pool_free().0 <= 1);

    // Everyone else gets a typed Busy, not a hang: at submit when no chunk is left, else as the
    // answer (which then finds no chunk); `final_of` fails if none comes within 5 s.
    match other.submit(&generate("echo", "starved").with_id(8)) {
        Err(e) => assert!(is_busy(&e, "no shared memory"), "{e:?}"),
        Ok(t) => {
            // No chunk for the answer: the error answer says memory ran out.
            let e = final_of(&other, t, Duration::from_secs(5)).unwrap_err();
            assert!(
                matches!(&e, Error::ResourceExhausted(m) if m.contains("no chunk")),
                "{e:?}"
            );
        }
    }
    assert_eq!(other.in_flight(), 0);
    // What it already held is intact.
    assert_eq!(generated_text(&before), "held");

    // The hog dies: its chunks come back and the others are served again.
    hog.kill9();
    wait_for("the hog's chunks to return", Duration::from_secs(5), || {
        other.pool_free().0 == total - 1
    });
    let v = other.infer(&generate("echo", "fed").with_id(9)).unwrap();
    assert_eq!(generated_text(&v), "fed");
    drop((v, before));
    assert_eq!(other.pool_free(), (total, total));
}

#[test]
fn connect_beyond_max_clients_is_refused_until_a_client_leaves_or_dies() {
    let _dog = Watchdog::new("max clients", Duration::from_secs(30));
    let svc = unique_name("maxcl");
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    cfg.max_clients = 2;
    let _server = Server::start(cfg).unwrap();
    let a = Client::connect(&svc).unwrap();
    let mut b = client("idle", &svc, "0");
    b.expect("CONNECTED");

    let e = Client::connect(&svc).unwrap_err();
    assert!(
        is_busy(&e, "client slots of the service are taken"),
        "{e:?}"
    );
    // The connected ones are served meanwhile.
    a.infer(&generate("echo", "a").with_id(1)).unwrap();

    // One leaves cleanly: its slot is free at once.
    drop(a);
    let c = Client::connect(&svc).unwrap();
    assert!(is_busy(
        &Client::connect(&svc).unwrap_err(),
        "client slots of the service are taken"
    ));

    // One dies: the housekeeper frees its slot within a few ticks.
    b.kill9();
    let mut d = None;
    wait_for(
        "the dead client's slot",
        Duration::from_secs(5),
        || match Client::connect(&svc) {
            Ok(cl) => {
                d = Some(cl);
                true
            }
            Err(e) => {
                assert!(
                    is_busy(&e, "client slots of the service are taken"),
                    "{e:?}"
                );
                false
            }
        },
    );
    let d = d.unwrap();
    let v = d.infer(&generate("echo", "d").with_id(2)).unwrap();
    assert_eq!(generated_text(&v), "d");
    c.infer(&generate("echo", "c").with_id(3)).unwrap();
}

#[test]
fn every_one_of_max_clients_slots_can_be_used() {
    let _dog = Watchdog::new("all slots", Duration::from_secs(30));
    let svc = unique_name("allslots");
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    cfg.max_clients = MAX_CLIENTS;
    cfg.ring_capacity = 16;
    let _server = Server::start(cfg).unwrap();
    let clients: Vec<Client> = (0..MAX_CLIENTS)
        .map(|i| Client::connect(&svc).unwrap_or_else(|e| panic!("client {i}: {e}")))
        .collect();
    // The 65th is refused (no slot, and no pool owner entry either: both are Busy).
    let e = Client::connect(&svc).unwrap_err();
    assert!(matches!(e, Error::Busy(_)), "{e:?}");
    for (i, c) in clients.iter().enumerate() {
        let v = c
            .infer(&generate("echo", &format!("c{i}")).with_id(1))
            .unwrap();
        assert_eq!(generated_text(&v), format!("c{i}"));
    }
}

#[test]
fn oversized_requests_get_invalid_request_and_the_server_keeps_serving() {
    let _dog = Watchdog::new("oversized", Duration::from_secs(30));
    let svc = unique_name("big");
    let _server = Server::start(ServerConfig::new(
        &svc,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let client = Client::connect(&svc).unwrap();
    let (_, total) = client.pool_free();
    let invalid = |r: Result<ResponseView, Error>, what: &str| match r {
        Err(Error::InvalidRequest(m)) => assert!(m.contains(what), "{what}: {m}"),
        other => panic!("expected InvalidRequest ({what}), got {other:?}"),
    };

    // Larger than the largest chunk: refused before it leaves the client.
    let huge = "x".repeat(2 << 20);
    match client.submit(&generate("echo", &huge).with_id(1)) {
        Err(Error::InvalidRequest(m)) => assert!(m.contains("largest chunk"), "{m}"),
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.pool_free(), (total, total));

    // Fits a chunk but breaks a limit: the server refuses it.
    let long = "y".repeat(300 << 10);
    invalid(
        client.infer(&generate("echo", &long).with_id(2)),
        "exceeds the limit",
    );
    let mut r = generate("echo", "").with_id(3);
    r.input = Input::Tokens(vec![1; 40 << 10]);
    invalid(client.infer(&r), "exceed the limit");
    invalid(
        client.infer(
            &generate("echo", "many tokens")
                .with_id(4)
                .with_max_tokens((32 << 10) + 1),
        ),
        "max_tokens",
    );
    let mut r = generate("echo", "").with_id(5);
    r.task = Task::Tensors;
    r.input = Input::Tensors(
        (0..17)
            .map(|i| Tensor {
                name: format!("t{i}"),
                shape: vec![1],
                data: TensorData::F32(vec![0.0]),
            })
            .collect(),
    );
    invalid(client.infer(&r), "tensors");
    let mut r = generate("echo", "late").with_id(6);
    r.params.timeout_ms = u32::MAX;
    invalid(client.infer(&r), "timeout_ms");
    let mut r = generate("echo", "").with_id(7);
    r.params.stop = (0..17).map(|i| format!("s{i}")).collect();
    invalid(client.infer(&r), "stop");
    // A descriptor claiming more bytes than its chunk has.
    let t = client.submit_bytes("echo", &[0u8; 64], 1 << 20).unwrap();
    invalid(client.recv(t, Duration::from_secs(5)), "exceeds the chunk");

    // The server is fine and nothing leaked.
    let v = client
        .infer(&generate("echo", "still here").with_id(8))
        .unwrap();
    assert_eq!(generated_text(&v), "still here");
    drop(v);
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.pool_free(), (total, total));
}

#[test]
fn an_answer_larger_than_any_chunk_is_an_error_answer_not_a_hang() {
    let _dog = Watchdog::new("oversized answer", Duration::from_secs(30));
    let svc = unique_name("bigans");
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    cfg.pool = PoolConfig {
        classes: vec![SizeClass {
            chunk_size: 4096,
            count: 16,
        }],
        max_owners: 8,
        quota: 16,
        class_share: 100,
    };
    let _server = Server::start(cfg).unwrap();
    let client = Client::connect(&svc).unwrap();
    let (_, total) = client.pool_free();
    // 3000 bytes of text fit a 4 KiB chunk; their embedding (3000 f32) does not.
    let mut r = generate("echo", &"e".repeat(3000)).with_id(1);
    r.task = Task::Embed;
    match client.infer_timeout(&r, Duration::from_secs(5)) {
        Err(Error::ResourceExhausted(m)) => assert!(m.contains("chunk"), "{m}"),
        other => panic!("expected a typed error, got {other:?}"),
    }
    let v = client.infer(&generate("echo", "small").with_id(2)).unwrap();
    assert_eq!(generated_text(&v), "small");
    drop(v);
    assert_eq!(client.pool_free(), (total, total));
}

#[test]
fn a_client_that_never_reads_stalls_nobody_and_its_answers_wait_for_it() {
    let _dog = Watchdog::new("slow reader", Duration::from_secs(40));
    let svc = unique_name("noread");
    let mut cfg = ServerConfig::new(&svc, vec![sleep_model("slow", 5.0, None)]);
    cfg.ring_capacity = 16;
    let _server = Server::start(cfg).unwrap();
    let observer = Service::open(&svc).unwrap();
    let completed = || {
        observer
            .lane(0)
            .completed
            .load(std::sync::atomic::Ordering::Acquire)
    };
    let fast = Client::connect(&svc).unwrap();
    let (_, total) = fast.pool_free();

    // 48 answers for a response ring of 16: 32 of them cannot be delivered until it reads.
    let mut slow = client("no-read", &svc, "48");
    slow.expect("SUBMITTED");
    wait_for(
        "the slow client's requests to run",
        Duration::from_secs(5),
        || completed() >= 48,
    );

    // Another client of the same model is answered, in full, many times over, while the slow
    // client's 32 undelivered answers wait (it reads nothing until told below: a worker stuck
    // on its full ring would leave these unanswered).
    for i in 0..50u64 {
        let v = fast
            .infer_timeout(
                &generate("slow", "f").with_id(i + 1).with_max_tokens(1),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("answer {i}: {e}"));
        assert_eq!(generated_text(&v), "t0 ");
    }
    // Its stream chunks flow while the model runs, not all at the end: the first one arrives
    // while the request is still running.
    let mut r = generate("slow", "stream").with_id(100).with_max_tokens(100);
    r.params.stream = true;
    let mut chunks = fast.stream_request(&r).unwrap();
    let first = chunks.next().unwrap().unwrap();
    assert!(!first.is_final());
    assert_eq!(
        observer.lane(0).running(),
        1,
        "the first chunk came after the end"
    );
    drop(first);
    let rest: Vec<_> = chunks.map(Result::unwrap).collect();
    assert_eq!(rest.len(), 100, "99 more chunks and the final answer");
    assert!(rest.last().unwrap().is_final());
    drop(rest);

    // The slow client's answers were kept, not dropped: it reads all 48 now.
    slow.tell("read");
    slow.expect("READ 48");
    slow.wait_success();

    // One that never reads and dies: whatever waited for it is returned.
    let mut dead = client("no-read", &svc, "48");
    dead.expect("SUBMITTED");
    wait_for(
        "the second slow client's requests to run",
        Duration::from_secs(5),
        || completed() >= 48 + 50 + 1 + 48,
    );
    assert!(fast.pool_free().0 < total, "its answers hold chunks");
    dead.kill9();
    wait_for("the pool to refill", Duration::from_secs(5), || {
        fast.pool_free() == (total, total)
    });
    fast.infer(&generate("slow", "after").with_id(200).with_max_tokens(1))
        .unwrap();
}

#[test]
fn configurations_that_could_never_serve_are_refused_at_start() {
    let svc = unique_name("badcfg");
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    // Chunks larger than a descriptor's 24-bit length could not carry their answers.
    cfg.pool = PoolConfig {
        classes: vec![SizeClass {
            chunk_size: 32 << 20,
            count: 1,
        }],
        max_owners: 8,
        quota: 4,
        class_share: 100,
    };
    match Server::start(cfg) {
        Err(shm_runtime::ServerError::Config(ConfigError::ChunkTooLarge(size))) => {
            assert_eq!(size, 32 << 20)
        }
        other => panic!("expected a chunk size error, got {other:?}"),
    }
    // A ring of one entry could never be attached by a client.
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    cfg.ring_capacity = 1;
    assert!(matches!(
        Server::start(cfg),
        Err(shm_runtime::ServerError::Config(ConfigError::RingCapacity(
            1
        )))
    ));
    // A client's share of each pool class is a percentage: none at all would serve nobody.
    for share in [0, 101] {
        let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
        cfg.pool.class_share = share;
        match Server::start(cfg) {
            Err(shm_runtime::ServerError::Config(ConfigError::ClientShare(n))) => {
                assert_eq!(n, share)
            }
            other => panic!("share {share}: expected a configuration error, got {other:?}"),
        }
    }
    // A model with no worker would never answer; more workers than a ring has participants could
    // not all attach.
    for workers in [0, 15] {
        let mut m = ModelConfig::new("echo", "echo");
        m.workers = Some(workers);
        match Server::start(ServerConfig::new(&svc, vec![m])) {
            Err(shm_runtime::ServerError::Config(ConfigError::Workers(n))) => {
                assert_eq!(n, workers)
            }
            other => panic!("workers = {workers}: expected a configuration error, got {other:?}"),
        }
    }
    assert!(!std::path::Path::new(&format!("/dev/shm/shmr.{svc}")).exists());
}
