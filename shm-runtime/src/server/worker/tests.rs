//! The desk's rules, one worker driven step by step in this process: a real service segment and a
//! real client, no worker threads, so that each counter move and each answer can be checked
//! between two steps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Desk;
use crate::config::{ModelConfig, OptionValue, ServerConfig};
use crate::protocol::{ErrorCode, Input, Params, Request, Task};
use crate::server::recovery::Instance;
use crate::server::state::ServerState;
use crate::service::{LaneHeader, STATE_RUNNING};
use crate::{Client, Error};

/// A prepared server (segment, pool, models) whose workers the test drives itself.
struct Fixture {
    state: Arc<ServerState>,
}

impl Fixture {
    fn new(models: Vec<ModelConfig>) -> Fixture {
        Fixture::with(models, |_| {})
    }

    fn with(models: Vec<ModelConfig>, adjust: impl FnOnce(&mut ServerConfig)) -> Fixture {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "desk-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut config = ServerConfig::new(&name, models);
        adjust(&mut config);
        let state = Arc::new(super::super::prepare(config).unwrap());
        state
            .svc
            .header()
            .state
            .store(STATE_RUNNING, Ordering::Release);
        Fixture { state }
    }

    fn echo() -> Fixture {
        Fixture::new(vec![ModelConfig::new("echo", "echo")])
    }

    fn desk(&self, lane: usize, index: usize) -> Desk<'_> {
        Desk::new(&self.state, lane, index)
    }

    fn instance(&self, lane: usize) -> Instance {
        self.state.lanes[lane].backend.current()
    }

    fn client(&self) -> Client {
        Client::connect(&self.state.config.name).unwrap()
    }

    fn counters(&self, lane: usize) -> &LaneHeader {
        self.state.svc.lane(lane)
    }
}

fn echo(text: &str) -> Request {
    Request {
        id: 7,
        model: "echo".into(),
        task: Task::Generate,
        input: Input::Text(text.into()),
        params: Params::default(),
    }
}

/// (accepted, started, completed) of a lane.
fn books(c: &LaneHeader) -> (u64, u64, u64) {
    (
        c.accepted.load(Ordering::Acquire),
        c.started.load(Ordering::Acquire),
        c.completed.load(Ordering::Acquire),
    )
}

const NOW: Duration = Duration::ZERO;

#[test]
fn a_request_is_queued_counted_run_and_answered_once() {
    let f = Fixture::echo();
    let client = f.client();
    let free = client.pool_free();
    let mut w = f.desk(0, 0);
    let ticket = client.submit(&echo("hello")).unwrap();
    w.sync_clients();
    assert_eq!(w.ingest(None, usize::MAX), 1);
    assert_eq!(books(f.counters(0)), (1, 0, 0));
    assert_eq!(f.counters(0).queued(), 1);
    let job = w.queue.pop().unwrap();
    w.run_job(job, &f.instance(0));
    assert_eq!(books(f.counters(0)), (1, 1, 1));
    let answer = client.recv(ticket, NOW).unwrap();
    assert!(answer.is_final());
    assert_eq!(answer.response().unwrap().id, 7);
    drop(answer);
    // Exactly one answer: nothing more arrives for it, and every chunk is back.
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.pool_free(), free);
    assert_eq!(client.stray_answers(), 0);
}

#[test]
fn a_bad_descriptor_gets_one_inline_error_and_is_never_queued() {
    let f = Fixture::echo();
    let client = f.client();
    let mut w = f.desk(0, 0);
    // A chunk id the client does not hold.
    let ticket = client.submit_descriptor("echo", 12345, 64).unwrap();
    w.sync_clients();
    w.ingest(None, usize::MAX);
    assert_eq!(books(f.counters(0)), (0, 0, 0));
    assert!(w.queue.is_empty());
    assert!(matches!(
        client.recv(ticket, NOW),
        Err(Error::InvalidRequest(_))
    ));
}

#[test]
fn a_departed_clients_queued_jobs_are_dropped_without_an_answer() {
    let f = Fixture::echo();
    let watcher = f.client();
    let free = watcher.pool_free();
    let mut w = f.desk(0, 0);
    let client = f.client();
    for i in 0..3 {
        client.submit(&echo(&format!("r{i}"))).unwrap();
    }
    w.sync_clients();
    assert_eq!(w.ingest(None, usize::MAX), 3);
    assert_eq!(books(f.counters(0)), (3, 0, 0));
    drop(client);
    w.sync_clients();
    // Started and completed move together for a job that leaves without running.
    assert_eq!(books(f.counters(0)), (3, 3, 3));
    assert!(w.queue.is_empty());
    assert!(w.outbox.is_empty(), "nobody to answer");
    assert_eq!(watcher.pool_free(), free, "the request chunks went back");
}

#[test]
fn a_job_cancelled_or_expired_while_queued_is_answered_without_running() {
    let f = Fixture::echo();
    let client = f.client();
    let mut w = f.desk(0, 0);
    let cancelled = client.submit(&echo("a")).unwrap();
    let expired = client.submit(&echo("b")).unwrap();
    w.sync_clients();
    w.ingest(None, usize::MAX);
    client.cancel(cancelled).unwrap();
    w.ingest(None, usize::MAX);
    let mut first = w.queue.pop().unwrap();
    assert!(!w.begin(&mut first), "a cancelled job does not run");
    let mut second = w.queue.pop().unwrap();
    w.now = second.deadline_ns;
    assert!(!w.begin(&mut second), "an expired job does not run");
    assert_eq!(books(f.counters(0)), (2, 2, 2));
    assert!(matches!(client.recv(cancelled, NOW), Err(Error::Cancelled)));
    assert!(matches!(client.recv(expired, NOW), Err(Error::TimedOut)));
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn at_exit_every_queued_job_is_answered_shutting_down() {
    let f = Fixture::echo();
    let client = f.client();
    let free = client.pool_free();
    let mut w = f.desk(0, 0);
    let tickets: Vec<_> = (0..3)
        .map(|i| client.submit(&echo(&format!("r{i}"))).unwrap())
        .collect();
    w.sync_clients();
    w.ingest(None, usize::MAX);
    w.answer_all_queued(ErrorCode::ShuttingDown);
    assert_eq!(books(f.counters(0)), (3, 3, 3));
    for t in tickets {
        assert!(matches!(client.recv(t, NOW), Err(Error::ShuttingDown)));
    }
    assert_eq!(client.pool_free(), free);
}

#[test]
fn answers_wait_in_the_backlog_in_order_while_the_ring_is_full() {
    let f = Fixture::with(vec![ModelConfig::new("echo", "echo")], |c| {
        c.ring_capacity = 8;
        c.max_inflight = 16;
    });
    let client = f.client();
    let mut w = f.desk(0, 0);
    // More answers than the response ring holds: the rest wait in the outbox.
    let n = f.state.svc.layout.ring_capacity + 3;
    w.sync_clients();
    let tickets: Vec<_> = (0..n)
        .map(|i| {
            let mut r = echo(&format!("r{i}"));
            r.id = i as u64;
            let t = client.submit(&r).unwrap();
            w.ingest(None, usize::MAX);
            t
        })
        .collect();
    assert_eq!(w.queue.len(), n);
    while let Some(job) = w.queue.pop() {
        w.run_job(job, &f.instance(0));
    }
    assert!(!w.outbox.is_empty());
    // The client reads in submission order; the worker flushes as room appears.
    for (i, t) in tickets.into_iter().enumerate() {
        w.flush_backlog();
        let answer = client.recv(t, Duration::from_secs(1)).unwrap();
        assert_eq!(answer.response().unwrap().id, i as u64);
    }
    assert!(w.outbox.is_empty());
}

#[test]
fn only_a_least_loaded_worker_of_a_stepping_lane_takes_requests() {
    let mut steps = ModelConfig::new("steps", "sleep");
    steps
        .options
        .insert("slots".into(), OptionValue::Integer(2));
    steps.workers = Some(2);
    let f = Fixture::new(vec![steps]);
    let mut a = f.desk(0, 0);
    let mut b = f.desk(0, 1);
    // (A worker sets this when it makes its stepper.)
    a.stepping = true;
    b.stepping = true;
    // Both idle: each may take one request per round.
    assert_eq!(a.ingest_limit(), 1);
    assert_eq!(b.ingest_limit(), 1);
    // Once `a` holds a sequence, only `b` takes the next.
    a.running = 1;
    a.publish_load();
    assert_eq!(a.ingest_limit(), 0);
    assert_eq!(b.ingest_limit(), 1);
}

#[test]
fn a_worker_with_jobs_it_cannot_start_hands_one_to_a_worker_with_a_free_slot() {
    let mut steps = ModelConfig::new("steps", "sleep");
    steps
        .options
        .insert("slots".into(), OptionValue::Integer(1));
    steps.workers = Some(2);
    let f = Fixture::new(vec![steps]);
    let client = f.client();
    let mut a = f.desk(0, 0);
    let mut b = f.desk(0, 1);
    for i in 0..2 {
        let mut r = echo(&format!("r{i}"));
        r.model = "steps".into();
        client.submit(&r).unwrap();
    }
    a.sync_clients();
    while a.ingest(None, usize::MAX) > 0 {}
    assert_eq!(a.queue.len(), 2);
    // `a` runs one sequence in its only slot: of its two queued jobs, one goes to `b`.
    a.running = 1;
    b.publish_load();
    a.balance(1);
    assert_eq!(a.queue.len(), 1);
    assert_eq!(f.state.lanes[0].transfers.len(), 1);
    b.balance(1);
    assert_eq!(b.queue.len(), 1);
    assert_eq!(f.state.lanes[0].transfers.len(), 0);
    // Moving between workers is not a counter move.
    assert_eq!(books(f.counters(0)), (2, 0, 0));
}

/// The `panic` test backend as model `p`.
fn panicking() -> Fixture {
    Fixture::new(vec![ModelConfig::new("p", "panic")])
}

fn to_p(text: &str) -> Request {
    Request {
        model: "p".into(),
        ..echo(text)
    }
}

#[test]
fn a_job_whose_backend_panics_is_answered_once_and_the_lane_moves_to_a_new_instance() {
    let f = panicking();
    let client = f.client();
    let free = client.pool_free();
    let mut w = f.desk(0, 0);
    let old = f.instance(0);
    let ticket = client
        .submit(&to_p(crate::backend::panicking::TRIGGER))
        .unwrap();
    w.sync_clients();
    w.ingest(None, usize::MAX);
    let job = w.queue.pop().unwrap();
    w.run_job(job, &old);
    assert_eq!(books(f.counters(0)), (1, 1, 1));
    match client.recv(ticket, NOW) {
        Err(Error::Backend(m)) => assert!(m.contains("the backend panicked"), "{m}"),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.pool_free(), free);
    let counters = f.counters(0);
    assert_eq!(counters.panics.load(Ordering::Relaxed), 1);
    assert_eq!(counters.restarts.load(Ordering::Relaxed), 1);
    let new = f.instance(0);
    assert_eq!((old.generation, new.generation), (0, 1));
    assert_eq!(f.state.lanes[0].backend.generation(), 1);
    // A second panic of the instance already replaced counts, and restarts nothing more.
    let again = crate::server::recovery::Panicked("again".into());
    assert!(f.state.lanes[0]
        .backend
        .panicked(0, &again, counters)
        .is_none());
    assert_eq!(f.instance(0).generation, 1);
    assert_eq!(counters.panics.load(Ordering::Relaxed), 2);
    assert_eq!(counters.restarts.load(Ordering::Relaxed), 1);
}

#[test]
fn past_its_restarts_a_lane_fails_and_answers_every_job_with_the_failure() {
    use crate::server::recovery::{Panicked, RESTART_LIMIT};
    use crate::service::LANE_FAILED;
    let f = panicking();
    let lane = &f.state.lanes[0].backend;
    let counters = f.counters(0);
    for g in 0..=RESTART_LIMIT as u64 {
        lane.panicked(g, &Panicked("boom".into()), counters)
            .expect("the current instance")
            .finish();
        assert_eq!(lane.generation(), g + 1);
    }
    assert_eq!(
        counters.restarts.load(Ordering::Relaxed),
        RESTART_LIMIT as u64
    );
    assert_eq!(counters.state.load(Ordering::Relaxed), LANE_FAILED);
    let failed = f.instance(0);
    let why = failed.backend.as_ref().err().expect("no instance");
    assert!(why.contains("has failed") && why.contains("boom"), "{why}");

    let client = f.client();
    let mut w = f.desk(0, 0);
    let ticket = client.submit(&to_p("good")).unwrap();
    w.sync_clients();
    w.ingest(None, usize::MAX);
    let job = w.queue.pop().unwrap();
    w.run_job(job, &failed);
    assert_eq!(books(f.counters(0)), (1, 1, 1));
    assert!(matches!(client.recv(ticket, NOW), Err(Error::Backend(m)) if m.contains("has failed")));
    assert_eq!(client.in_flight(), 0);
}
