//! A backend that panics is contained: the test-only `panic` model (feature `test-backends`, on
//! for the integration tests) panics on the text "panic" in each execution mode (one request per
//! call, a batch, a step of continuous batching), and each case must end in exactly one `Backend`
//! error answer per request the panicking call held, long before the request's 30 s deadline,
//! with the pool full again and the lane restarted (its next requests served by a new instance:
//! the old one answers every call with an error once it panicked) or, past its restarts, failed.
//! A watchdog aborts the binary when an answer never comes.

use std::time::{Duration, Instant};

use shm_runtime::backend::panicking::{ADMIT_TRIGGER, MESSAGE, TRIGGER};
use shm_runtime::config::OptionValue;
use shm_runtime::protocol::ArchivedBody;
use shm_runtime::{
    status, Client, Error, LaneState, ModelConfig, Server, ServerConfig, ServerError, Ticket,
};
use shm_test_support::runtime::{generate, generated_text, small_pool};
use shm_test_support::wait::Watchdog;
use shm_test_support::{unique_name, wait_for};

/// Every request's deadline: the answers must come long before it.
const TIMEOUT_MS: u32 = 30_000;

/// What "long before the deadline" means here (a restart of the panic model loads nothing).
const PROMPT: Duration = Duration::from_secs(3);

/// How long each test may run before the watchdog aborts the binary.
const WATCHDOG: Duration = Duration::from_secs(15);

/// The `panic` model as `name`, with integer `options`.
fn panic_model(name: &str, options: &[(&str, i64)]) -> ModelConfig {
    let mut m = ModelConfig::new(name, "panic");
    for &(k, v) in options {
        m.options.insert(k.into(), OptionValue::Integer(v));
    }
    m
}

/// A server named after `tag` of `models` with a pool of 64 chunks of 1 KiB, each client may
/// hold all of them.
fn serve(tag: &str, models: Vec<ModelConfig>) -> (Server, Client) {
    let name = unique_name(tag);
    let mut cfg = ServerConfig::new(&name, models);
    cfg.pool = small_pool(64);
    let server = Server::start(cfg).unwrap();
    let client = Client::connect(&name).unwrap();
    (server, client)
}

/// Submits a generation of `text` for `model`, with the 30 s deadline.
fn submit(client: &Client, model: &str, text: &str, stream: bool) -> Ticket {
    let mut r = generate(model, text);
    r.params.timeout_ms = TIMEOUT_MS;
    r.params.stream = stream;
    client.submit(&r).unwrap()
}

/// The stream parts of `t` (their text) and its final answer, which must come within
/// [`PROMPT`] of the call.
fn parts_and_final(client: &Client, t: Ticket) -> (Vec<String>, Result<String, Error>) {
    let start = Instant::now();
    let mut parts = Vec::new();
    loop {
        let got = client.recv(t, Duration::from_millis(u64::from(TIMEOUT_MS)));
        assert!(
            start.elapsed() < PROMPT,
            "an answer took {:?} (deadline {TIMEOUT_MS} ms): {got:?}",
            start.elapsed()
        );
        match got {
            Ok(v) if !v.is_final() => match &v.response().unwrap().body {
                ArchivedBody::Chunk(c) => parts.push(c.text.as_str().to_owned()),
                other => panic!("a stream part that is not a chunk: {other:?}"),
            },
            Ok(v) => return (parts, Ok(generated_text(&v))),
            Err(e) => return (parts, Err(e)),
        }
    }
}

/// The final answer of `t` (no stream parts expected).
fn final_text(client: &Client, t: Ticket) -> Result<String, Error> {
    let (parts, answer) = parts_and_final(client, t);
    assert!(
        parts.is_empty(),
        "stream parts for a plain request: {parts:?}"
    );
    answer
}

/// Asserts that `answer` is the `Backend` error of a contained panic.
fn assert_panic_error(what: &str, answer: &Result<String, Error>) {
    match answer {
        Err(Error::Backend(m)) if m.contains("the backend panicked") && m.contains(MESSAGE) => {}
        other => panic!("{what}: wanted the backend's panic as a Backend error, got {other:?}"),
    }
}

/// Good requests to `model` are answered by a working instance (the one that panicked would
/// answer an error).
fn assert_serves(client: &Client, model: &str) {
    for i in 0..3 {
        let text = format!("good {i}");
        let t = submit(client, model, &text, false);
        assert_eq!(
            final_text(client, t),
            Ok(text),
            "request {i} after the panic"
        );
    }
}

/// Nothing in flight, no answer that was not waited for, and every chunk back in the pool.
fn assert_clean(client: &Client) {
    assert_eq!(client.in_flight(), 0);
    wait_for(
        "every chunk back in the pool",
        Duration::from_secs(5),
        || {
            let (free, total) = client.pool_free();
            free == total
        },
    );
    assert_eq!(client.stray_answers(), 0, "an answer came twice");
}

#[test]
fn a_panic_in_a_run_is_a_backend_error_and_the_next_requests_are_served_by_a_new_instance() {
    let _dog = Watchdog::new("panic in run", WATCHDOG);
    let (server, client) = serve("panic-run", vec![panic_model("p", &[])]);
    let t = submit(&client, "p", "before", false);
    assert_eq!(final_text(&client, t), Ok("before".into()));

    let t = submit(&client, "p", TRIGGER, false);
    assert_panic_error("the panicking request", &final_text(&client, t));
    assert_serves(&client, "p");

    let st = status(server.name()).unwrap();
    assert_eq!(st.lanes[0].state, LaneState::Serving);
    assert_eq!((st.lanes[0].panics, st.lanes[0].restarts), (1, 1));
    assert_eq!(st.errors["backend"], 1);
    // The warm-up at start, then five.
    assert_eq!((st.lanes[0].accepted, st.lanes[0].completed), (6, 6));
    assert_clean(&client);
}

#[test]
fn a_stream_that_panics_keeps_the_parts_it_sent_and_ends_with_one_backend_error() {
    let _dog = Watchdog::new("panic in a stream", WATCHDOG);
    let (server, client) = serve("panic-stream", vec![panic_model("p", &[])]);
    let t = submit(&client, "p", TRIGGER, true);
    let (parts, answer) = parts_and_final(&client, t);
    assert_eq!(parts, ["p", "a"], "the parts sent before the panic");
    assert_panic_error("the panicking stream", &answer);
    assert_serves(&client, "p");
    let t = submit(&client, "p", "whole", true);
    let (parts, answer) = parts_and_final(&client, t);
    assert_eq!(
        (parts.concat(), answer),
        ("whole".into(), Ok("whole".into()))
    );
    assert_eq!(status(server.name()).unwrap().lanes[0].restarts, 1);
    assert_clean(&client);
}

#[test]
fn a_panic_in_a_batch_answers_every_request_of_the_batch_once() {
    let _dog = Watchdog::new("panic in a batch", WATCHDOG);
    // Each batch call takes 300 ms: the two requests sent while the first runs meet in the next.
    let (server, client) = serve(
        "panic-batch",
        vec![panic_model("b", &[("batch", 4), ("step_ms", 300)])],
    );
    let first = submit(&client, "b", "first", false);
    let svc = shm_runtime::testing::Service::open(server.name()).unwrap();
    wait_for("the first batch to run", Duration::from_secs(5), || {
        svc.lane(0).running() == 1
    });
    // The good request comes first in the batch: its answer is written before the panic, and
    // must not leak.
    let good = submit(&client, "b", "good", false);
    let bad = submit(&client, "b", TRIGGER, false);
    assert_eq!(final_text(&client, first), Ok("first".into()));
    assert_panic_error("the good request of the batch", &final_text(&client, good));
    assert_panic_error("the panicking request", &final_text(&client, bad));
    let st = status(server.name()).unwrap();
    assert_eq!(
        (st.lanes[0].batches, st.lanes[0].batched),
        (1, 2),
        "the two ran in one batch"
    );
    assert_serves(&client, "b");
    let st = status(server.name()).unwrap();
    assert_eq!((st.lanes[0].panics, st.lanes[0].restarts), (1, 1));
    assert_clean(&client);
}

#[test]
fn a_panic_in_a_step_ends_every_sequence_of_the_stepper_once_and_a_new_stepper_serves() {
    let _dog = Watchdog::new("panic in a step", WATCHDOG);
    let (server, client) = serve(
        "panic-step",
        vec![panic_model("s", &[("slots", 4), ("step_ms", 20)])],
    );
    // A long stream runs (26 steps of 20 ms) when the panicking one joins it.
    let long = submit(&client, "s", "abcdefghijklmnopqrstuvwxyz", true);
    match client.recv(long, Duration::from_secs(5)) {
        Ok(v) => assert!(!v.is_final(), "the long stream ended at once"),
        Err(e) => panic!("the long stream's first part: {e}"),
    }
    let bad = submit(&client, "s", TRIGGER, true);
    let (parts, answer) = parts_and_final(&client, bad);
    assert_eq!(parts, ["p", "a"]);
    assert_panic_error("the panicking sequence", &answer);
    let (parts, answer) = parts_and_final(&client, long);
    assert_panic_error("the sequence that shared the step", &answer);
    assert!(
        parts.len() < 25,
        "the long stream was cut by the panic: {parts:?}"
    );
    assert_serves(&client, "s");

    // A panic while admitting a request: it alone was held; the lane restarts again.
    let t = submit(&client, "s", ADMIT_TRIGGER, false);
    assert_panic_error("the request being admitted", &final_text(&client, t));
    assert_serves(&client, "s");
    let st = status(server.name()).unwrap();
    assert_eq!(st.lanes[0].state, LaneState::Serving);
    assert_eq!((st.lanes[0].panics, st.lanes[0].restarts), (2, 2));
    assert_clean(&client);
}

#[test]
fn every_worker_of_the_lane_moves_to_the_new_instance() {
    let _dog = Watchdog::new("two workers", WATCHDOG);
    let mut one_call = panic_model("p", &[]);
    one_call.workers = Some(2);
    let mut stepped = panic_model("s", &[("slots", 2), ("step_ms", 5)]);
    stepped.workers = Some(2);
    let (server, client) = serve("panic-workers", vec![one_call, stepped]);
    for (lane, model) in ["p", "s"].into_iter().enumerate() {
        let t = submit(&client, model, TRIGGER, false);
        assert_panic_error(model, &final_text(&client, t));
        // Requests sent together spread over both workers: the one that did not panic must
        // have left the old instance too (it answers every call with an error).
        for round in 0..4 {
            let texts: Vec<String> = (0..4).map(|i| format!("{model} {round}.{i}")).collect();
            let tickets: Vec<Ticket> = texts
                .iter()
                .map(|text| submit(&client, model, text, false))
                .collect();
            for (t, text) in tickets.into_iter().zip(texts) {
                assert_eq!(final_text(&client, t), Ok(text));
            }
        }
        let st = status(server.name()).unwrap();
        assert_eq!((st.lanes[lane].panics, st.lanes[lane].restarts), (1, 1));
    }
    assert_clean(&client);
}

#[test]
fn a_lane_that_keeps_panicking_is_marked_failed_and_answers_every_request_at_once() {
    let _dog = Watchdog::new("failed lane", WATCHDOG);
    let (server, client) = serve(
        "panic-failed",
        vec![
            panic_model("p", &[]),
            panic_model("s", &[("slots", 2)]),
            ModelConfig::new("echo", "echo"),
        ],
    );
    // Three restarts are allowed within a minute; the fourth panic fails the lane.
    for model in ["p", "s"] {
        for i in 0..4 {
            let t = submit(&client, model, TRIGGER, false);
            assert_panic_error(&format!("panic {i} of {model}"), &final_text(&client, t));
        }
        for i in 0..3 {
            let t = submit(&client, model, "good", i == 0);
            match parts_and_final(&client, t) {
                (parts, Err(Error::Backend(m))) if parts.is_empty() && m.contains("has failed") => {
                }
                other => panic!("request {i} to the failed lane {model}: {other:?}"),
            }
        }
    }
    let st = status(server.name()).unwrap();
    for lane in &st.lanes[..2] {
        assert_eq!(lane.state, LaneState::Failed, "{lane:?}");
        assert_eq!((lane.panics, lane.restarts), (4, 3), "{lane:?}");
        assert_eq!((lane.queued, lane.running), (0, 0), "{lane:?}");
    }
    // The other models are not touched.
    assert_eq!(st.lanes[2].state, LaneState::Serving);
    assert_serves(&client, "echo");
    assert_clean(&client);
}

#[test]
fn a_backend_that_panics_while_loading_fails_the_start_with_a_model_error() {
    let mut m = panic_model("p", &[]);
    m.options
        .insert("panic_on_load".into(), OptionValue::Boolean(true));
    let err = Server::start(ServerConfig::new(&unique_name("panic-load"), vec![m])).unwrap_err();
    match &err {
        ServerError::Model { name, source } => {
            assert_eq!(name, "p");
            assert!(
                source.to_string().contains("the backend panicked"),
                "{source}"
            );
        }
        other => panic!("wanted a model error, got {other:?}"),
    }
}
