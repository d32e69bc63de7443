//! The async client (feature `async`) from a current-thread tokio runtime: a thousand requests in
//! flight at once from one task set, with no thread per request (the process's thread count stays
//! where the connection left it: its one waiter thread), streams as `futures_core::Stream`, and a
//! future dropped before its answer cancels its request.
#![cfg(feature = "async")]

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use shm_runtime::{AsyncClient, GenerateOptions, ModelConfig, Server, ServerConfig, StreamEvent};
use shm_test_support::runtime::sleep_model;
use shm_test_support::wait::Watchdog;
use shm_test_support::{unique_name, wait_for};

/// The tests of this binary take turns: one counts the process's threads.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn start(tag: &str) -> Server {
    let mut cfg = ServerConfig::new(
        &unique_name(tag),
        vec![ModelConfig::new("echo", "echo"), sleep_model("slow", 20.0)],
    );
    cfg.max_inflight = 1024;
    cfg.ring_capacity = 1024;
    // A thousand requests of ~270 bytes sit in the 1 KiB class (2048 chunks); the default share
    // (25 %, 512 of them) would refuse the ones past it whenever the server falls behind.
    cfg.pool.class_share = 100;
    Server::start(cfg).unwrap()
}

#[test]
fn a_thousand_requests_in_flight_from_one_thread_without_a_thread_each() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let _dog = Watchdog::new("async thousand", Duration::from_secs(120));
    let server = start("async-1000");
    let client = AsyncClient::connect(server.name()).unwrap();
    let (_, total) = client.blocking().pool_free();
    let connected = threads();
    let most = Arc::new(AtomicUsize::new(connected));
    let done = Arc::new(AtomicBool::new(false));
    let rt = runtime();
    rt.block_on(async {
        // Watches the thread count while the requests are in flight.
        let sampler = {
            let (most, done) = (most.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    most.fetch_max(threads(), Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let prompt = format!("request {i}");
                    let opts = GenerateOptions::new().max_tokens(100);
                    client
                        .generate("echo", &prompt, &opts)
                        .await
                        .map(|g| (prompt, g.text))
                })
            })
            .collect();
        for t in tasks {
            let (prompt, text) = t.await.unwrap().unwrap();
            assert_eq!(text, prompt);
        }
        done.store(true, Ordering::Relaxed);
        sampler.await.unwrap();
    });
    assert!(
        most.load(Ordering::Relaxed) <= connected,
        "{} threads while the requests were in flight, {connected} before",
        most.load(Ordering::Relaxed)
    );
    assert_eq!(client.blocking().in_flight(), 0);
    assert_eq!(client.blocking().pool_free().0, total);
}

#[test]
fn streams_are_futures_streams_and_dropped_futures_cancel_their_requests() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let _dog = Watchdog::new("async streams", Duration::from_secs(60));
    let server = start("async-stream");
    let client = AsyncClient::connect(server.name()).unwrap();
    let (_, total) = client.blocking().pool_free();
    let rt = runtime();
    rt.block_on(async {
        let mut s = client
            .stream("slow", "abcdef", &GenerateOptions::new().max_tokens(6))
            .unwrap();
        let mut text = String::new();
        let mut whole = None;
        while let Some(event) = poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await {
            match event.unwrap() {
                StreamEvent::Delta { text: t, .. } => text.push_str(&t),
                StreamEvent::Done(g) => whole = Some(g.text),
            }
        }
        assert_eq!(whole.as_deref(), Some(text.as_str()));

        // A 1000-token generation (20 s) given up after 100 ms: its future is dropped.
        let long = GenerateOptions::new().max_tokens(1000);
        let slow = client.generate("slow", "x", &long);
        let r = tokio::time::timeout(Duration::from_millis(100), slow).await;
        assert!(r.is_err(), "the 20 s generation finished in 100 ms");
        assert_eq!(client.blocking().in_flight(), 0);
    });
    wait_for("the server to cancel it", Duration::from_secs(5), || {
        shm_runtime::status(server.name())
            .unwrap()
            .errors
            .get("cancelled")
            == Some(&1)
    });
    // Its late answer went back to the pool when the waiter thread filed it.
    wait_for("the pool to be full", Duration::from_secs(5), || {
        client.blocking().pool_free().0 == total
    });
}
