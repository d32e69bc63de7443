//! The trust boundary on shared memory, with real processes: a client holds at most its share
//! of each pool class (a client that stops reading its streams cannot take memory from the
//! others), the server holds whatever is queued, and a client flooding invalid requests without
//! reading meets backpressure, not a growing backlog in the server. Every wait is bounded; a
//! watchdog aborts the binary if a test hangs anyway.

use std::time::{Duration, Instant};

use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig, Ticket};
use shm_test_support::runtime::{final_of, generate, generated_text, small_pool, RequestExt};
use shm_test_support::wait::Watchdog;
use shm_test_support::{say, unique_name, wait_for, ChildProcess, ChildTask};

/// A client process of this binary in `role`.
fn client(role: &str, service: &str, arg: &str) -> ChildProcess {
    ChildProcess::role(role, service, arg)
}

/// The sleep model as `name` (`step_ms` per token), with `slots` sequences stepped together.
fn sleep_model(name: &str, step_ms: f64, slots: i64) -> ModelConfig {
    let mut m = shm_test_support::runtime::sleep_model(name, step_ms);
    m.options.insert(
        "slots".into(),
        shm_runtime::config::OptionValue::Integer(slots),
    );
    m
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
        // Opens streams (`arg`: model,count,max_tokens,timeout_ms) and reads nothing until told
        // to on stdin; then reads each to its end and reports its parts and how it ended.
        "stream-hog" => {
            let mut args = task.arg.split(',');
            let model = args.next().unwrap().to_owned();
            let mut num = || args.next().unwrap().parse::<u32>().unwrap();
            let (count, max_tokens, timeout_ms) = (num(), num(), num());
            let client = Client::connect(service).unwrap();
            let tickets: Vec<Ticket> = (0..count)
                .map(|i| {
                    let mut r = generate(&model, &"s".repeat(max_tokens as usize))
                        .with_id(u64::from(i) + 1)
                        .with_max_tokens(max_tokens);
                    r.params.stream = true;
                    r.params.timeout_ms = timeout_ms;
                    client.submit(&r).unwrap()
                })
                .collect();
            say("OPENED");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            // Reads all its streams together, as a client of several streams must: a part of
            // one waits for room that only reading the others makes.
            let mut parts = vec![0u32; tickets.len()];
            let mut ends: Vec<Option<String>> = vec![None; tickets.len()];
            let give_up = Instant::now() + Duration::from_secs(15);
            while ends.iter().any(Option::is_none) {
                for (i, &t) in tickets.iter().enumerate() {
                    if ends[i].is_some() {
                        continue;
                    }
                    ends[i] = match client.recv(t, Duration::from_millis(2)) {
                        Ok(v) if !v.is_final() => {
                            parts[i] += 1;
                            None
                        }
                        Ok(_) => Some("complete".to_owned()),
                        // Nothing for this one yet (its deadline is far off).
                        Err(Error::TimedOut) if Instant::now() < give_up => None,
                        Err(Error::ResourceExhausted(_)) => Some("exhausted".to_owned()),
                        Err(e) => Some(format!("error {e:?}")),
                    };
                }
            }
            for (n, end) in parts.iter().zip(ends) {
                say(format!("STREAM {n} {}", end.unwrap()));
            }
            say("DONE");
        }
        // Sends `arg` invalid requests as fast as it can, reading no answer, then reports how
        // many went in and how many were refused Busy; told on stdin, reads every answer.
        "flood" => {
            let client = Client::connect(service).unwrap();
            let (mut sent, mut busy) = (Vec::new(), 0u64);
            for _ in 0..arg {
                match client.submit_bytes("echo", b"not an archived request", 23) {
                    Ok(t) => sent.push(t),
                    Err(Error::Busy(_)) => busy += 1,
                    Err(e) => panic!("submit: {e:?}"),
                }
            }
            say(format!("FLOOD {} {busy}", sent.len()));
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            for t in sent {
                match final_of(&client, t, Duration::from_secs(5)) {
                    Err(Error::InvalidRequest(_)) => {}
                    other => panic!("an invalid request answered {other:?}"),
                }
            }
            assert_eq!(client.in_flight(), 0);
            say("READ");
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Good clients' requests while `hog` holds its share: every one is answered (no `Busy`, no
/// `ResourceExhausted`), and a stream of theirs runs to its end.
fn good_client_is_served(good: &Client, model: &str, rounds: u64) {
    for i in 0..rounds {
        let v = good
            .infer_timeout(
                &generate(model, &format!("g{i}"))
                    .with_id(i + 1)
                    .with_max_tokens(4),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("good request {i}: {e:?}"));
        assert!(!generated_text(&v).is_empty());
    }
    let mut r = generate(model, "abcdefgh").with_id(1000).with_max_tokens(8);
    r.params.stream = true;
    let parts: Vec<_> = good
        .stream_request(&r)
        .unwrap()
        .map(|p| p.unwrap_or_else(|e| panic!("good stream: {e:?}")))
        .collect();
    assert_eq!(parts.len(), 9, "8 parts and the final answer");
}

/// The slot of the client process `pid` in `svc`'s status, and the chunks it holds per class.
fn held_by(svc: &str, pid: u32) -> Vec<u32> {
    let st = shm_runtime::status(svc).unwrap();
    st.clients
        .iter()
        .find(|c| c.pid == pid)
        .map(|c| c.held.clone())
        .unwrap_or_default()
}

#[test]
fn a_client_that_stops_reading_its_streams_holds_only_its_share_and_the_others_keep_full_service() {
    let _dog = Watchdog::new("stream share", Duration::from_secs(60));
    let svc = unique_name("share");
    let mut cfg = ServerConfig::new(
        &svc,
        vec![
            ModelConfig::new("echo", "echo"),
            sleep_model("steps", 1.0, 4),
        ],
    );
    // 64 chunks of 1 KiB; each client may hold a quarter of them.
    cfg.pool = small_pool(64);
    cfg.pool.class_share = 25;
    cfg.workers_per_lane = 2;
    let _server = Server::start(cfg).unwrap();
    let good = Client::connect(&svc).unwrap();
    let (_, total) = good.pool_free();
    let share = shm_runtime::status(&svc).unwrap().pool[0].share;
    assert_eq!(share, 16);

    // Streams run one backend call each (echo): a part that finds the client at its share waits
    // briefly, then the stream ends with ResourceExhausted.
    let mut hog = client("stream-hog", &svc, "echo,4,500,20000");
    hog.expect("OPENED");
    wait_for("the echo streams to end", Duration::from_secs(10), || {
        shm_runtime::status(&svc).unwrap().lanes[0].completed >= 4
    });
    // Its share of stream parts, and the final answer of each stream (a final answer always
    // goes: one per request in flight).
    let held = held_by(&svc, hog.pid());
    assert!(
        held[0] <= share + 4 && held[0] >= share,
        "the reader that stopped holds its share and its final answers, no more: {held:?}"
    );
    good_client_is_served(&good, "echo", 200);
    hog.tell("read");
    let mut parts = 0;
    for _ in 0..4 {
        let line = hog.expect("STREAM ");
        let (n, end) = line.split_once(' ').unwrap();
        assert_eq!(end, "exhausted", "an echo stream ended: {line}");
        parts += n.parse::<u32>().unwrap();
    }
    assert!(parts < 4 * 500 && parts >= share - 4, "{parts} parts came");
    hog.expect("DONE");
    hog.wait_success();

    // (30 tokens: the final answer of a generation reserves room for them in one 1 KiB chunk.)
    // Sequences decoded step by step pause instead: nothing more is decoded for them until
    // their client reads; then each goes on where it stopped and ends complete, every token in
    // order.
    let mut hog = client("stream-hog", &svc, "steps,4,30,20000");
    hog.expect("OPENED");
    wait_for("the hog to hold its share", Duration::from_secs(10), || {
        held_by(&svc, hog.pid())[0] >= share - 1
    });
    let completed = shm_runtime::status(&svc).unwrap().lanes[1].completed;
    good_client_is_served(&good, "steps", 20);
    let st = shm_runtime::status(&svc).unwrap();
    assert!(
        held_by(&svc, hog.pid())[0] <= share,
        "paused, holding no more than its share"
    );
    assert_eq!(
        st.lanes[1].completed,
        completed + 21,
        "only the good client's requests ended"
    );
    hog.tell("read");
    for _ in 0..4 {
        assert_eq!(hog.expect("STREAM "), "30 complete");
    }
    hog.expect("DONE");
    hog.wait_success();

    // A sequence of share + 1 tokens: its last part finds the client at its share just as the
    // stepper ends the sequence; the final answer waits behind that part, never overtakes it.
    let mut hog = client("stream-hog", &svc, &format!("steps,1,{},20000", share + 1));
    hog.expect("OPENED");
    wait_for("the last part to wait", Duration::from_secs(10), || {
        held_by(&svc, hog.pid())[0] >= share
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        held_by(&svc, hog.pid())[0],
        share,
        "the final answer went ahead of the waiting part"
    );
    hog.tell("read");
    assert_eq!(hog.expect("STREAM "), format!("{} complete", share + 1));
    hog.expect("DONE");
    hog.wait_success();
    let completed = completed + 1;

    // Paused past its deadline, a sequence ends with ResourceExhausted.
    let mut hog = client("stream-hog", &svc, "steps,4,30,500");
    hog.expect("OPENED");
    wait_for(
        "the paused streams to time out",
        Duration::from_secs(10),
        || shm_runtime::status(&svc).unwrap().lanes[1].completed >= completed + 21 + 4 + 4,
    );
    hog.tell("read");
    for _ in 0..4 {
        let line = hog.expect("STREAM ");
        assert!(line.ends_with(" exhausted"), "{line}");
    }
    hog.expect("DONE");
    hog.wait_success();
    wait_for("the pool to refill", Duration::from_secs(5), || {
        good.pool_free() == (total, total)
    });
}

/// This process's anonymous resident memory (heap, stacks), in KiB.
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/self/status")
}

#[test]
fn a_client_flooding_invalid_requests_without_reading_gets_busy_and_the_server_memory_stays_flat() {
    let _dog = Watchdog::new("flood", Duration::from_secs(60));
    let svc = unique_name("flood");
    let cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    let _server = Server::start(cfg).unwrap();
    let other = Client::connect(&svc).unwrap();
    let (_, total) = other.pool_free();
    let before = rss_anon_kib();
    let mut flood = client("flood", &svc, "300000");
    let line = flood.expect("FLOOD ");
    let (sent, busy) = line.split_once(' ').unwrap();
    let (sent, busy): (u64, u64) = (sent.parse().unwrap(), busy.parse().unwrap());
    // Its error answers stopped being taken once a backlog of them waited for it: the rest of
    // its requests met a full request ring.
    assert!(busy > 0, "{sent} accepted, none refused");
    assert!(sent < 10_000, "{sent} invalid requests were taken in");
    let grown = rss_anon_kib().saturating_sub(before);
    assert!(
        grown < 2048,
        "the server's memory grew by {grown} KiB for {sent} error answers"
    );
    // Another client is served meanwhile.
    let v = other.infer(&generate("echo", "still").with_id(5)).unwrap();
    assert_eq!(generated_text(&v), "still");
    drop(v);
    // Every request it did send gets exactly its one error answer when it reads.
    flood.tell("read");
    flood.expect("READ");
    flood.wait_success();
    wait_for("the pool to refill", Duration::from_secs(5), || {
        other.pool_free() == (total, total)
    });
}

#[test]
fn the_server_holds_more_queued_requests_than_any_client_quota() {
    let _dog = Watchdog::new("server quota", Duration::from_secs(60));
    let svc = unique_name("srvq");
    let mut cfg = ServerConfig::new(
        &svc,
        vec![shm_test_support::runtime::sleep_model("slow", 2.0)],
    );
    // Each client may hold 4 chunks; six clients queue 4 requests each: the server holds 24
    // request chunks and writes answers while holding them.
    cfg.pool = small_pool(4);
    let _server = Server::start(cfg).unwrap();
    std::thread::scope(|s| {
        for c in 0..6u64 {
            let svc = &svc;
            s.spawn(move || {
                let client = Client::connect(svc).unwrap();
                let tickets: Vec<Ticket> = (0..3)
                    .map(|i| {
                        client
                            .submit(
                                &generate("slow", "q")
                                    .with_id(c * 10 + i + 1)
                                    .with_max_tokens(2),
                            )
                            .unwrap()
                    })
                    .collect();
                for t in tickets {
                    let v = final_of(&client, t, Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("client {c}: {e:?}"));
                    assert_eq!(generated_text(&v), "t0 t1 ");
                }
            });
        }
    });
}
