//! The runtime end to end in one process: a real server (segment in /dev/shm, worker threads) and
//! real clients, with the built-in echo and sleep backends.

use std::time::{Duration, Instant};

use shm_runtime::protocol::{
    ArchivedBody, ArchivedTensorData, Input, Request, Task, Tensor, TensorData,
};
use shm_runtime::testing::Service;
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig};
use shm_test_support::runtime::{generate, request, sleep_model, RequestExt};
use shm_test_support::{unique_name, wait_for};

/// How long a test waits for a server's state (generously: the machine may be loaded).
const STATE_LIMIT: Duration = Duration::from_secs(20);

fn server(tag: &str, tweak: impl FnOnce(&mut ServerConfig)) -> (Server, Client) {
    let svc = unique_name(tag);
    let mut cfg = ServerConfig::new(
        &svc,
        vec![ModelConfig::new("echo", "echo"), sleep_model("slow", 20.0)],
    );
    tweak(&mut cfg);
    let server = Server::start(cfg).expect("server starts");
    let client = Client::connect(&svc).expect("client connects");
    (server, client)
}

/// The segment of the service [`server`] started for `tag` (its lane 0 is echo, lane 1 slow).
fn lane_of(tag: &str) -> Service {
    Service::open(&unique_name(tag)).expect("the service is up")
}

#[test]
fn every_task_round_trips_through_shared_memory() {
    let (_server, client) = server("tasks", |_| {});
    let v = client.infer(&generate("echo", "hello")).unwrap();
    match &v.response().unwrap().body {
        ArchivedBody::Generation(g) => assert_eq!(g.text.as_str(), "hello"),
        other => panic!("unexpected {other:?}"),
    }
    let v = client
        .infer(&request("echo", Task::Embed, Input::Tokens(vec![1, 2, 3])))
        .unwrap();
    match &v.response().unwrap().body {
        ArchivedBody::Embedding(e) => {
            assert_eq!(
                e.iter().map(|x| x.to_native()).collect::<Vec<_>>(),
                [1.0, 2.0, 3.0]
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    let v = client
        .infer(&request("echo", Task::Classify, Input::Text("pos".into())))
        .unwrap();
    match &v.response().unwrap().body {
        ArchivedBody::Classification(c) => assert_eq!(c[0].label.as_str(), "pos"),
        other => panic!("unexpected {other:?}"),
    }
    let t = Tensor {
        name: "x".into(),
        shape: vec![2, 2],
        data: TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]),
    };
    let v = client
        .infer(&request("echo", Task::Tensors, Input::Tensors(vec![t])))
        .unwrap();
    match &v.response().unwrap().body {
        ArchivedBody::Tensors(ts) => match &ts[0].data {
            ArchivedTensorData::F32(d) => assert_eq!(d[3].to_native(), 4.0),
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn dropping_views_returns_every_chunk() {
    let (_server, client) = server("chunks", |_| {});
    let (free0, total) = client.pool_free();
    let views: Vec<_> = (0..50)
        .map(|i| client.infer(&generate("echo", &format!("n{i}"))).unwrap())
        .collect();
    assert_eq!(
        client.pool_free().0,
        free0 - 50,
        "each view holds its chunk"
    );
    drop(views);
    assert_eq!(client.pool_free(), (free0, total));
}

#[test]
fn streams_arrive_in_order_then_the_final_answer() {
    let (_server, client) = server("stream", |_| {});
    let mut r = generate("echo", "abcdef");
    r.params.max_tokens = 100;
    let items: Vec<_> = client.stream_request(&r).unwrap().collect();
    assert_eq!(items.len(), 7);
    for (i, item) in items[..6].iter().enumerate() {
        let v = item.as_ref().unwrap();
        assert!(!v.is_final());
        match &v.response().unwrap().body {
            ArchivedBody::Chunk(c) => {
                assert_eq!(c.index, i as u32);
                assert_eq!(c.text.as_str(), &"abcdef"[i..=i]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(items[6].as_ref().unwrap().is_final());
}

#[test]
fn bad_requests_get_typed_errors_and_the_server_keeps_serving() {
    bad_requests("bad", false);
}

#[test]
fn a_server_trusting_its_clients_gives_bad_requests_the_same_typed_errors() {
    bad_requests("bad-trusted", true);
}

/// Unknown models, refused parameters, garbage bytes, impossible lengths and forged chunk ids,
/// against a server that copies each request before validating it (the default) or validates in
/// place (`trusted_clients`).
fn bad_requests(tag: &str, trusted_clients: bool) {
    let (_server, client) = server(tag, |c| c.trusted_clients = trusted_clients);
    let unknown = client.infer(&generate("nope", "x"));
    assert!(
        matches!(unknown, Err(Error::ModelNotFound(_))),
        "{unknown:?}"
    );
    let mut r = generate("echo", "x");
    r.params.temperature = -1.0;
    assert!(matches!(client.infer(&r), Err(Error::InvalidRequest(m)) if m.contains("temperature")));
    r.params.temperature = 0.0;
    r.params.max_tokens = 0;
    assert!(matches!(client.infer(&r), Err(Error::InvalidRequest(m)) if m.contains("max_tokens")));
    let big = generate("echo", &"x".repeat(300 << 10));
    assert!(matches!(client.infer(&big), Err(Error::InvalidRequest(m)) if m.contains("exceeds")));
    // Garbage bytes where an archive should be.
    let t = client.submit_bytes("echo", &[0xAB; 300], 300).unwrap();
    assert!(matches!(
        client.recv(t, Duration::from_secs(5)),
        Err(Error::InvalidRequest(_))
    ));
    // A declared length beyond the chunk.
    let t = client.submit_bytes("echo", &[0; 16], 1 << 20).unwrap();
    assert!(matches!(
        client.recv(t, Duration::from_secs(5)),
        Err(Error::InvalidRequest(_))
    ));
    // A chunk id the client does not hold (forged or stale).
    for forged in [0u64, u64::MAX, 0x0100_0003_0000_0007] {
        let t = client.submit_descriptor("echo", forged, 64).unwrap();
        match client.recv(t, Duration::from_secs(5)) {
            // Answered inline (no chunk): the client says why in the server's place.
            Err(Error::InvalidRequest(m)) => {
                assert!(m.contains("does not hold"), "forged id {forged:#x}: {m}")
            }
            other => panic!("forged id {forged:#x}: {:?}", other.map(|_| ())),
        }
    }
    let ok = client.infer(&generate("echo", "still here")).unwrap();
    assert!(
        matches!(&ok.response().unwrap().body, ArchivedBody::Generation(g) if g.text == "still here")
    );
}

#[test]
fn deadlines_cancel_and_quota() {
    let (_server, client) = server("deadline", |c| c.max_inflight = 3);
    // Runs 10 x 20 ms but may take 60 ms: stopped at the deadline, not run to the end (its
    // chunks show how far it got).
    let mut r = generate("slow", "x");
    r.params.max_tokens = 10;
    r.params.timeout_ms = 60;
    let items: Vec<_> = client.stream_request(&r).unwrap().collect();
    let (end, chunks) = items.split_last().unwrap();
    assert_eq!(end.as_ref().unwrap_err(), &Error::TimedOut);
    assert!(chunks
        .iter()
        .all(|c| c.as_ref().is_ok_and(|v| !v.is_final())));
    assert!(chunks.len() < 10, "ran all {} steps", chunks.len());
    r.params.stream = false;
    // Cancel a running stream after its first chunk.
    r.params.timeout_ms = 0;
    r.params.max_tokens = 200;
    let mut s = client.stream_request(&r).unwrap();
    let first = s.next().unwrap().unwrap();
    assert!(!first.is_final());
    client.cancel(s.ticket()).unwrap();
    let rest: Vec<_> = s.collect();
    assert!(
        rest.len() <= 5,
        "stopped within a few chunks, got {}",
        rest.len()
    );
    assert_eq!(
        rest.last().unwrap().as_ref().unwrap_err(),
        &Error::Cancelled
    );
    // Quota: 3 in flight at most; the 4th and 5th are Busy at once.
    r.params.max_tokens = 3;
    let tickets: Vec<_> = (0..5).map(|_| client.submit(&r).unwrap()).collect();
    let results: Vec<_> = tickets
        .iter()
        .map(|t| loop {
            match client.recv(*t, Duration::from_secs(10)) {
                Ok(v) if !v.is_final() => continue,
                other => break other.map(|_| ()),
            }
        })
        .collect();
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Busy(_))))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((ok, busy), (3, 2), "{results:?}");
}

#[test]
fn more_urgent_requests_run_first() {
    let (_server, client) = server("prio", |_| {});
    let mut blocker = generate("slow", "x");
    blocker.params.max_tokens = 5;
    let b = client.submit(&blocker).unwrap();
    let svc = lane_of("prio");
    wait_for("the blocker to run", STATE_LIMIT, || {
        svc.lane(1).running() == 1
    });
    let mut tickets = Vec::new();
    for p in [3u8, 2, 1, 0] {
        let mut r = generate("slow", "x");
        r.params.max_tokens = 1;
        r.params.priority = p;
        tickets.push((p, client.submit(&r).unwrap()));
    }
    let waiters: Vec<_> = tickets
        .into_iter()
        .map(|(p, t)| {
            let client = client.clone();
            std::thread::spawn(move || {
                client.recv(t, Duration::from_secs(5)).unwrap();
                (p, Instant::now())
            })
        })
        .collect();
    client.recv(b, Duration::from_secs(5)).unwrap();
    let mut done: Vec<(u8, Instant)> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    done.sort_by_key(|(_, at)| *at);
    let order: Vec<u8> = done.iter().map(|(p, _)| *p).collect();
    assert_eq!(order, vec![0, 1, 2, 3]);
}

#[test]
fn threads_share_one_client() {
    let (_server, client) = server("threads", |c| c.max_inflight = 64);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let text = format!("t{t}-{i}");
                    let v = client.infer(&generate("echo", &text)).unwrap();
                    match &v.response().unwrap().body {
                        ArchivedBody::Generation(g) => assert_eq!(g.text.as_str(), text),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn shutdown_answers_what_it_cannot_finish() {
    let (server, client) = server("drain", |_| {});
    let mut r = generate("slow", "x");
    r.params.max_tokens = 50;
    let tickets: Vec<_> = (0..4).map(|_| client.submit(&r).unwrap()).collect();
    let svc = lane_of("drain");
    wait_for("one running, three queued", STATE_LIMIT, || {
        svc.lane(1).running() == 1 && svc.lane(1).queued() == 3
    });
    let c2 = client.clone();
    let waiter = std::thread::spawn(move || {
        tickets
            .iter()
            .map(|t| loop {
                match c2.recv(*t, Duration::from_secs(10)) {
                    Ok(v) if !v.is_final() => continue,
                    other => break other.map(|_| ()),
                }
            })
            .collect::<Vec<_>>()
    });
    server.shutdown(Duration::from_millis(100));
    let results = waiter.join().unwrap();
    // 50 steps of 20 ms outlast the 100 ms grace: the running request and the three queued ones
    // are each answered before the server goes (not left to fail with ServerGone).
    for r in &results {
        assert!(
            matches!(r, Err(Error::ShuttingDown) | Err(Error::Cancelled)),
            "{results:?}"
        );
    }
    assert_eq!(
        client.submit(&generate("echo", "late")),
        Err(Error::ServerGone)
    );
}

#[test]
fn connect_errors_are_typed() {
    assert_eq!(
        Client::connect("no-such-service-xyz").unwrap_err(),
        Error::ServiceNotFound("no-such-service-xyz".into())
    );
    let (_server, _client) = server("dup", |_| {});
    let again = Server::start(ServerConfig::new(
        &unique_name("dup"),
        vec![ModelConfig::new("e", "echo")],
    ));
    assert!(
        matches!(
            again,
            Err(shm_runtime::ServerError::Segment {
                source: shm_runtime::ring::CreateError::AlreadyExists { .. },
                ..
            })
        ),
        "a live server's name is refused: {:?}",
        again.map(|_| ())
    );
    let bad = Server::start(ServerConfig::new(
        &unique_name("badmodel"),
        vec![ModelConfig::new("m", "no-such-backend")],
    ));
    assert!(matches!(bad, Err(shm_runtime::ServerError::Model { .. })));
}

#[test]
fn a_flooding_client_does_not_starve_another() {
    let svc = unique_name("fair");
    let mut slow = sleep_model("slow", 5.0);
    slow.name = "slow".into();
    let mut cfg = ServerConfig::new(&svc, vec![slow]);
    cfg.max_inflight = 64;
    let _server = Server::start(cfg).unwrap();
    let flooder = Client::connect(&svc).unwrap();
    let polite = Client::connect(&svc).unwrap();
    let mut r = generate("slow", "x");
    r.params.max_tokens = 1;
    let flood: Vec<_> = (0..40).map(|_| flooder.submit(&r).unwrap()).collect();
    let lanes = Service::open(&svc).unwrap();
    wait_for("the flood to start", STATE_LIMIT, || {
        lanes
            .lane(0)
            .started
            .load(std::sync::atomic::Ordering::Acquire)
            >= 1
    });
    let t = polite.submit(&r).unwrap();
    polite.recv(t, Duration::from_secs(5)).unwrap();
    // The polite request waited for at most a few rounds of the flood, not all 40 (200 ms).
    let mut done_before = 0;
    for f in flood {
        match flooder.recv(f, Duration::from_millis(0)) {
            Ok(_) => done_before += 1,
            Err(Error::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(done_before <= 12, "{done_before} flood requests ran first");
}

fn stepping(tag: &str, slots: i64, step_ms: f64) -> (Server, String) {
    let svc = unique_name(tag);
    let mut m = sleep_model("gen", step_ms);
    m.options.insert(
        "slots".into(),
        shm_runtime::config::OptionValue::Integer(slots),
    );
    let server = Server::start(ServerConfig::new(&svc, vec![m])).expect("server starts");
    (server, svc)
}

/// A Generate request to the stepping model `gen` for `max_tokens` tokens.
fn gen_req(max_tokens: u32) -> Request {
    generate("gen", "go").with_max_tokens(max_tokens)
}

#[test]
fn continuous_batching_interleaves_two_streams() {
    let (_server, svc) = stepping("interleave", 4, 5.0);
    // b starts once a's sequence runs.
    let run = |svc: String, after_running: u64| {
        std::thread::spawn(move || {
            let client = Client::connect(&svc).unwrap();
            let lanes = Service::open(&svc).unwrap();
            wait_for("the other stream to start", STATE_LIMIT, || {
                lanes.lane(0).running() >= after_running
            });
            let mut times = Vec::new();
            let mut indexes = Vec::new();
            let mut final_text = String::new();
            for item in client.stream_request(&gen_req(20)).unwrap() {
                let v = item.unwrap();
                match &v.response().unwrap().body {
                    ArchivedBody::Chunk(c) => {
                        times.push(Instant::now());
                        indexes.push(c.index.to_native());
                    }
                    ArchivedBody::Generation(g) => final_text = g.text.as_str().to_owned(),
                    other => panic!("unexpected {other:?}"),
                }
            }
            (times, indexes, final_text)
        })
    };
    let a = run(svc.clone(), 0);
    let b = run(svc.clone(), 1);
    let (ta, ia, fa) = a.join().unwrap();
    let (tb, ib, fb) = b.join().unwrap();
    let want: Vec<u32> = (0..20).collect();
    assert_eq!(ia, want, "stream a in order, complete");
    assert_eq!(ib, want, "stream b in order, complete");
    let text: String = (0..20).map(|i| format!("t{i} ")).collect();
    assert_eq!((fa, fb), (text.clone(), text));
    // Interleaved, not one after the other: b's first token came before a's last.
    assert!(
        tb[0] < *ta.last().unwrap(),
        "b waited for a to finish: b started {:?} after a's end",
        tb[0] - *ta.last().unwrap()
    );
    let svc = Service::open(&svc).unwrap();
    assert_eq!(svc.lane(0).running(), 0);
}

/// A server whose stepping model `gen` has two workers of one slot each (5 ms per step).
fn one_slot_workers(svc: &str) -> Server {
    let mut m = sleep_model("gen", 5.0);
    m.options
        .insert("slots".into(), shm_runtime::config::OptionValue::Integer(1));
    m.workers = Some(2);
    Server::start(ServerConfig::new(svc, vec![m])).expect("server starts")
}

/// Chunk arrival times of a stream of `n` tokens from a new connection, after `go` opens; checks
/// that every chunk came, in order.
fn timed_stream(svc: &str, n: u32, go: std::sync::Arc<std::sync::Barrier>) -> Vec<Instant> {
    let client = Client::connect(svc).unwrap();
    go.wait();
    let mut times = Vec::new();
    for item in client.stream_request(&gen_req(n)).unwrap() {
        let v = item.unwrap();
        if let ArchivedBody::Chunk(c) = &v.response().unwrap().body {
            assert_eq!(c.index.to_native() as usize, times.len(), "chunks in order");
            times.push(Instant::now());
        }
    }
    assert_eq!(times.len(), n as usize, "every chunk of the stream");
    times
}

#[test]
fn stepping_workers_share_streams_and_hand_over_queued_ones() {
    // Two workers of one slot each: a second stream can only overlap the first on the other
    // worker, and a third must queue.
    let svc = unique_name("handover");
    let _server = one_slot_workers(&svc);
    for round in 0..3 {
        // a: long, started first; b: short, on the other worker; c: short, queued behind one of
        // them, and it must start when b's worker frees up, not wait for a.
        let go = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (s1, g1) = (svc.clone(), go.clone());
        let a = std::thread::spawn(move || timed_stream(&s1, 60, g1));
        go.wait();
        let lanes = Service::open(&svc).unwrap();
        wait_for("stream a to start", STATE_LIMIT, || {
            lanes.lane(0).running() == 1
        });
        let go = std::sync::Arc::new(std::sync::Barrier::new(3));
        let (s2, g2) = (svc.clone(), go.clone());
        let b = std::thread::spawn(move || timed_stream(&s2, 6, g2));
        let (s3, g3) = (svc.clone(), go.clone());
        let c = std::thread::spawn(move || timed_stream(&s3, 6, g3));
        go.wait();
        let (ta, tb, tc) = (a.join().unwrap(), b.join().unwrap(), c.join().unwrap());
        // Of b and c, the one that started first ran beside a; the other waited for it.
        let (first, second) = if tb[0] <= tc[0] {
            (&tb, &tc)
        } else {
            (&tc, &tb)
        };
        let a_end = *ta.last().unwrap();
        assert!(first[0] < a_end, "round {round}: no stream ran beside a");
        assert!(
            second[0] >= *first.last().unwrap(),
            "round {round}: three streams ran at once on two one-slot workers"
        );
        assert!(
            second[0] < a_end,
            "round {round}: the queued stream waited for a although the other worker was free"
        );
    }
}

#[test]
fn a_cancel_reaches_a_stream_while_every_stepping_worker_is_full() {
    let svc = unique_name("fullcancel");
    let _server = one_slot_workers(&svc);
    let client = Client::connect(&svc).unwrap();
    // Two long streams fill both workers; a third request queues.
    let mut s1 = client.stream_request(&gen_req(400)).unwrap();
    let mut s2 = client.stream_request(&gen_req(400)).unwrap();
    for s in [&mut s1, &mut s2] {
        assert!(!s.next().unwrap().unwrap().is_final());
    }
    let queued = client.submit(&gen_req(3)).unwrap();
    client.cancel(s1.ticket()).unwrap();
    let mut after_cancel = 0;
    let end = s1
        .find(|i| {
            after_cancel += 1;
            !matches!(i, Ok(v) if !v.is_final())
        })
        .unwrap();
    assert!(
        matches!(end, Err(Error::Cancelled)),
        "{:?}",
        end.map(|_| ())
    );
    // Taken in between steps: a few more tokens at most, not the rest of the 400.
    assert!(after_cancel <= 10, "{after_cancel} chunks after the cancel");
    // The freed worker takes the queued request at once, while s2 still runs.
    let v = client.recv(queued, Duration::from_secs(5)).unwrap();
    assert!(matches!(
        &v.response().unwrap().body,
        ArchivedBody::Generation(g) if g.tokens.len() == 3
    ));
    assert!(!s2.next().unwrap().unwrap().is_final(), "s2 still running");
    client.cancel(s2.ticket()).unwrap();
    let end = s2.find(|i| !matches!(i, Ok(v) if !v.is_final())).unwrap();
    assert!(
        matches!(end, Err(Error::Cancelled)),
        "{:?}",
        end.map(|_| ())
    );
}

#[test]
fn a_stepped_sequence_stops_on_cancel_deadline_and_stop_sequence() {
    let (_server, svc) = stepping("stops", 2, 5.0);
    let client = Client::connect(&svc).unwrap();
    // Cancel mid-stream: the stream ends with Cancelled within a few tokens.
    let mut s = client.stream_request(&gen_req(1000)).unwrap();
    let mut seen = 0;
    let mut cancelled_at = None;
    let end = loop {
        match s.next().expect("the stream ends with a final answer") {
            Ok(v) if !v.is_final() => {
                seen += 1;
                if seen == 3 {
                    client.cancel(s.ticket()).unwrap();
                    cancelled_at = Some(seen);
                }
            }
            other => break other,
        }
    };
    assert!(
        matches!(end, Err(Error::Cancelled)),
        "{:?}",
        end.map(|_| ())
    );
    assert!(
        seen <= cancelled_at.unwrap() + 3,
        "{seen} tokens after the cancel"
    );
    // A deadline mid-generation: the partial result with finish Timeout.
    let mut r = gen_req(1000);
    r.params.timeout_ms = 60;
    let v = client.infer(&r).unwrap();
    match &v.response().unwrap().body {
        ArchivedBody::Generation(g) => {
            assert_eq!(
                g.finish,
                shm_runtime::protocol::ArchivedFinishReason::Timeout
            );
            let n = g.usage.generated_tokens.to_native();
            assert!(n > 0 && n < 1000, "{n} tokens");
            assert_eq!(g.tokens.len() as u32, n);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A stop sequence: the text ends before it.
    let mut r = gen_req(50);
    r.params.stop = vec!["t4 ".into()];
    let v = client.infer(&r).unwrap();
    match &v.response().unwrap().body {
        ArchivedBody::Generation(g) => {
            assert_eq!(g.text.as_str(), "t0 t1 t2 t3 ");
            assert_eq!(g.finish, shm_runtime::protocol::ArchivedFinishReason::Stop);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Bad params are refused at admission; the slots are free for the next request.
    let err = client.infer(&gen_req(0)).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    let v = client.infer(&gen_req(3)).unwrap();
    assert!(matches!(
        &v.response().unwrap().body,
        ArchivedBody::Generation(g) if g.tokens.len() == 3
    ));
}
