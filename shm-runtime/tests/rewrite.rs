//! A request rewritten by its client while it is in flight: the server validates and runs its own
//! copy. `ci/tsan.sh` runs this file under ThreadSanitizer.

use std::time::Duration;

use shm_runtime::testing::Service;
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig};
use shm_test_support::runtime::generate;
use shm_test_support::{unique_name, wait_for};

/// How long the test waits for an answer or the pool (generously: the machine may be loaded).
const STATE_LIMIT: Duration = Duration::from_secs(20);

/// A client thread keeps rewriting each request while it is in flight, with atomic stores, beside
/// the worker copying it: under ThreadSanitizer (`ci/tsan.sh` runs this file) any read of the
/// request chunk by the server that is not the atomic copy would be reported as a race. Each
/// request gets exactly one answer, and the server lives with every chunk back.
#[test]
fn a_request_rewritten_while_in_flight_is_answered_once_from_the_servers_copy() {
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
    use std::sync::Arc;

    use shm_runtime::protocol::encode_request;
    use shm_runtime::ring::pool::OwnerId;
    use shm_runtime::ring::ProcessToken;

    let name = unique_name("scribble");
    let server = Server::start(ServerConfig::new(
        &name,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let client = Client::connect(&name).unwrap();
    let svc = Service::open(&name).unwrap();
    let (_, total) = client.pool_free();
    // This test's service has one client: this connection.
    let me = ProcessToken::current().raw();
    let slot = (0..svc.layout.max_clients)
        .find(|&c| svc.client(c).token.load(Ordering::Acquire) == me)
        .expect("this connection's slot");
    let owner = OwnerId::from_raw(svc.client(slot).owner.load(Ordering::Acquire)).unwrap();
    // The server's own mapping: the writes below land at the addresses its workers read, where
    // ThreadSanitizer can compare them (the segment is mapped once per handle in this process).
    let pool = server.pool();
    // The chunk being rewritten (its address, 0 for none), its length, whether the scribbler is
    // writing it now, and the end of the test. `writing` and `chunk` form a Dekker handshake
    // (SeqCst): once the requester has cleared `chunk` and then seen `writing` false, no write to
    // the old chunk is under way or still to come.
    struct Target {
        chunk: AtomicUsize,
        len: AtomicUsize,
        writing: AtomicBool,
        done: AtomicBool,
    }
    let target = Arc::new(Target {
        chunk: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        writing: AtomicBool::new(false),
        done: AtomicBool::new(false),
    });
    let scribbler = {
        let t = target.clone();
        std::thread::spawn(move || {
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            while !t.done.load(Ordering::Acquire) {
                t.writing.store(true, Ordering::SeqCst);
                let at = t.chunk.load(Ordering::SeqCst);
                if at != 0 {
                    let n = t.len.load(Ordering::Acquire);
                    for _ in 0..32 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = (x % n as u64) as usize;
                        // SAFETY: k < n <= the chunk's size; the chunk stays mapped while the
                        // pool lives; every write to it while it is in flight is this atomic
                        // store.
                        unsafe { AtomicU8::from_ptr((at + k) as *mut u8) }
                            .store((x >> 32) as u8, Ordering::Relaxed);
                    }
                }
                t.writing.store(false, Ordering::Release);
                std::hint::spin_loop();
            }
        })
    };
    let req = generate("echo", &"rewritten while in flight; ".repeat(6));
    let (mut answered, mut refused) = (0, 0);
    for i in 0..1000 {
        let mut loan = pool.loan(owner, 16 << 10).unwrap();
        let n = encode_request(&req, loan.as_mut_slice()).unwrap();
        let at = loan.as_mut_ptr() as usize;
        let id = loan.into_id();
        let ticket = client
            .submit_descriptor("echo", id.raw(), n as u32)
            .unwrap();
        target.len.store(n, Ordering::Release);
        target.chunk.store(at, Ordering::SeqCst);
        let answer = client.recv(ticket, STATE_LIMIT);
        // Stop the writes before the chunk can be this thread's again (the next loan).
        target.chunk.store(0, Ordering::SeqCst);
        while target.writing.load(Ordering::SeqCst) {
            std::hint::spin_loop();
        }
        match answer {
            Ok(v) => {
                assert!(v.is_final(), "request {i}");
                answered += 1;
            }
            Err(Error::InvalidRequest(_) | Error::ModelNotFound(_)) => refused += 1,
            // A rewrite of the request's id: its answer names another request.
            Err(Error::Protocol(m)) if m.contains("answer for request") => refused += 1,
            Err(e) => panic!("request {i}: {e}"),
        }
    }
    target.done.store(true, Ordering::Release);
    scribbler.join().unwrap();
    assert_eq!(answered + refused, 1000);
    assert_eq!(client.in_flight(), 0);
    // The server lives, serves, and has every chunk back.
    let v = client.infer(&generate("echo", "after")).unwrap();
    assert!(v.is_final());
    drop(v);
    wait_for("the pool to refill", STATE_LIMIT, || {
        client.pool_free() == (total, total)
    });
}
