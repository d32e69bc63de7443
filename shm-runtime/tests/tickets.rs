//! Tickets and cancels at the trust boundary: a ticket that wraps never names a request still in
//! flight (an answer is never delivered to the wrong request), a cancel never outlives its
//! request to cancel a later one, and a client's cancels beyond its limit are refused with a
//! notice instead of being dropped in silence. Every wait is bounded; a watchdog aborts the binary
//! if a test hangs anyway.

use std::time::Duration;

use shm_runtime::{Client, Error, ModelConfig, ResponseView, Server, ServerConfig, Ticket};
use shm_test_support::runtime::{final_of, generate, generated_text, sleep_model, RequestExt};
use shm_test_support::wait::Watchdog;
use shm_test_support::{unique_name, wait_for};

/// Tickets per connection before they wrap.
const WRAP: u32 = 1 << 24;

/// A server with `echo` and `slow` (the sleep backend, 100 ms per token, one worker: requests
/// queue behind each other).
fn server(svc: &str, max_inflight: u32, ring_capacity: usize) -> Server {
    let mut slow = sleep_model("slow", 100.0);
    slow.workers = Some(1);
    let mut cfg = ServerConfig::new(svc, vec![ModelConfig::new("echo", "echo"), slow]);
    cfg.max_inflight = max_inflight;
    cfg.ring_capacity = ring_capacity;
    Server::start(cfg).unwrap()
}

fn slow(id: u64, tokens: u32) -> shm_runtime::protocol::Request {
    generate("slow", "s").with_id(id).with_max_tokens(tokens)
}

fn is_generation_of(v: &ResponseView, id: u64) -> bool {
    v.response().is_ok_and(|r| r.id == id) && !generated_text(v).is_empty()
}

#[test]
fn a_wrapped_ticket_skips_the_request_still_in_flight_under_it() {
    let _watchdog = Watchdog::new(module_path!(), Duration::from_secs(60));
    let svc = unique_name("tickets-wrap");
    let _server = server(&svc, 64, 256);
    let client = Client::connect(&svc).unwrap();

    let long = client.submit(&slow(1, 8)).unwrap();
    // The next ticket would be `long`'s again.
    client.skip_tickets(WRAP - 1);
    let short = client
        .submit(&generate("echo", "short").with_id(2))
        .unwrap();
    assert_ne!(short, long, "a wrapped ticket named a request in flight");
    let answer = final_of(&client, short, Duration::from_secs(10)).unwrap();
    assert_eq!(generated_text(&answer), "short");
    let answer = final_of(&client, long, Duration::from_secs(10)).unwrap();
    assert!(
        is_generation_of(&answer, 1),
        "the long request got its own answer"
    );
    assert_eq!(client.stray_answers(), 0);
    assert_eq!(client.in_flight(), 0);
}

#[test]
fn an_abandoned_ticket_stays_taken_until_its_late_answer_arrives() {
    let _watchdog = Watchdog::new(module_path!(), Duration::from_secs(60));
    let svc = unique_name("tickets-abandon");
    let _server = server(&svc, 64, 256);
    let client = Client::connect(&svc).unwrap();
    let (_, total) = client.pool_free();

    // A 1.5 s request holds the model's only worker; the next one queues behind it, times out
    // in the client, is cancelled and abandoned: its answer (Cancelled) comes when it leaves the
    // queue, after the first.
    let blocker = client.submit(&slow(1, 15)).unwrap();
    let abandoned = Ticket(blocker.0 + 1);
    let r = client.infer_timeout(&slow(2, 1), Duration::from_millis(100));
    assert!(matches!(r, Err(Error::TimedOut)), "{:?}", r.map(|_| ()));
    assert!(
        client.request_chunk(abandoned).is_some(),
        "the abandoned ticket stays taken"
    );
    assert!(!client.is_in_flight(abandoned));

    // The next ticket would be the abandoned one's; its request is queued behind it, in the
    // same lane, where a cancel keyed by ticket alone would cancel it.
    client.skip_tickets(WRAP - 1);
    let next = client.submit(&slow(3, 1)).unwrap();
    assert_ne!(
        next, abandoned,
        "a wrapped ticket named an abandoned request"
    );
    let answer = final_of(&client, blocker, Duration::from_secs(10)).unwrap();
    assert!(is_generation_of(&answer, 1));
    drop(answer);
    let answer = final_of(&client, next, Duration::from_secs(10)).unwrap();
    assert!(
        is_generation_of(&answer, 3),
        "the request after the abandoned one ran and got its own answer"
    );
    drop(answer);
    // The abandoned request's answer arrived (before the next one's) and was returned unread; its
    // ticket is free again.
    assert!(client.request_chunk(abandoned).is_none());
    assert_eq!(
        client.stray_answers(),
        1,
        "the abandoned request's late answer"
    );
    wait_for("the pool to be full", Duration::from_secs(5), || {
        client.pool_free().0 == total
    });
}

#[test]
fn a_cancel_that_arrives_after_its_request_ended_is_not_kept_and_cancels_nothing_later() {
    let _watchdog = Watchdog::new(module_path!(), Duration::from_secs(60));
    let svc = unique_name("tickets-late-cancel");
    let server = server(&svc, 64, 256);
    let client = Client::connect(&svc).unwrap();

    let first = client.submit(&slow(1, 1)).unwrap();
    let chunk = client.request_chunk(first).unwrap();
    let answer = final_of(&client, first, Duration::from_secs(10)).unwrap();
    assert!(is_generation_of(&answer, 1));
    drop(answer);
    // A cancel sent just too late (as a client whose cancel crossed the answer does).
    client.send_cancel("slow", first.0, chunk).unwrap();
    // One worker takes the lane's ring in order: once the next request is answered, the cancel
    // has been taken in.
    let probe = client.submit(&slow(2, 1)).unwrap();
    assert!(is_generation_of(
        &final_of(&client, probe, Duration::from_secs(10)).unwrap(),
        2
    ));
    assert_eq!(
        server.cancels_pending(),
        0,
        "a cancel of an ended request was kept"
    );

    // The ticket comes round again, on the same lane.
    client.skip_tickets(WRAP - 2);
    let again = client.submit(&slow(3, 1)).unwrap();
    assert_eq!(again, first, "the ticket was reused");
    let answer = final_of(&client, again, Duration::from_secs(10));
    assert!(
        answer.as_ref().is_ok_and(|v| is_generation_of(v, 3)),
        "the later request was cancelled by the earlier one's cancel: {:?}",
        answer.map(|_| ())
    );
}

#[test]
fn cancels_beyond_a_clients_limit_are_refused_with_a_notice_and_the_others_still_cancel() {
    let _watchdog = Watchdog::new(module_path!(), Duration::from_secs(60));
    let svc = unique_name("tickets-cancel-limit");
    // At most 4 + 8 = 12 cancels pending per client.
    let server = server(&svc, 4, 8);
    let flooder = Client::connect(&svc).unwrap();
    let other = Client::connect(&svc).unwrap();
    let (_, total) = other.pool_free();

    // Twelve cancels naming chunks the flooder holds (answers it keeps) and tickets it never
    // sent: the server cannot tell them from cancels of requests on their way, and keeps them.
    let kept: Vec<ResponseView> = (0..12)
        .map(|i| {
            flooder
                .infer(&generate("echo", "x").with_id(i + 1))
                .unwrap()
        })
        .collect();
    let base = flooder
        .submit(&generate("echo", "base").with_id(100))
        .unwrap();
    final_of(&flooder, base, Duration::from_secs(5)).unwrap();
    for (i, v) in kept.iter().enumerate() {
        // The lane's ring holds 8: wait for room.
        while let Err(e) = flooder.send_cancel("slow", base.0 + 1000 + i as u32, v.chunk_raw()) {
            assert!(matches!(e, Error::Busy(_)), "{e}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    wait_for("twelve cancels kept", Duration::from_secs(5), || {
        server.cancels_pending() == 12
    });

    // The flooder's cancel of a real request is refused, and it hears so.
    let refused = flooder.submit(&slow(200, 3)).unwrap();
    flooder.cancel(refused).unwrap();
    match flooder.recv(refused, Duration::from_secs(10)) {
        Err(Error::Busy(m)) => assert!(m.contains("cancel"), "{m}"),
        other => panic!("wanted the refusal notice, got {:?}", other.map(|_| ())),
    }
    assert!(flooder.is_in_flight(refused), "a notice is not the answer");
    let answer = final_of(&flooder, refused, Duration::from_secs(10)).unwrap();
    assert!(is_generation_of(&answer, 200), "the request went on");
    drop(answer);

    // Another client's cancel is recorded.
    let cancelled = other.submit(&slow(300, 30)).unwrap();
    other.cancel(cancelled).unwrap();
    let r = final_of(&other, cancelled, Duration::from_secs(10));
    assert!(matches!(r, Err(Error::Cancelled)), "{:?}", r.map(|_| ()));

    // Once the flooder lets go of the chunks its cancels named, they are forgotten when its next
    // cancel finds no room, and that cancel is recorded.
    drop(kept);
    let cancelled = flooder.submit(&slow(400, 30)).unwrap();
    flooder.cancel(cancelled).unwrap();
    let r = final_of(&flooder, cancelled, Duration::from_secs(10));
    assert!(matches!(r, Err(Error::Cancelled)), "{:?}", r.map(|_| ()));
    wait_for("no cancel kept", Duration::from_secs(5), || {
        server.cancels_pending() == 0
    });
    wait_for("the pool to be full", Duration::from_secs(5), || {
        other.pool_free().0 == total
    });
}
