//! Criterion suite of request -> server -> response round trips, one at a time, 64-byte payload,
//! echo server, client on the first CPU and server on the second: the runtime (`shm_busy`,
//! `shm_adaptive`) and its peers (`uds_bincode`, `http_json`, `iceoryx2`, `iceoryx2_event`,
//! `inproc_channel`), all through `shm_bench::peers` (the workload code the report uses).
//!
//! Every transport but `inproc_channel` has its server in a child process of this binary, so
//! `main` hands the process to [`shm_bench::child::dispatch`] first. One server runs at a time (a
//! busy-polling server would steal the next one's core).

use std::time::Duration;

use anyhow::Result;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use shm_bench::peers::{self, IceoryxWait, RoundTrip};

/// Times `iters` round trips of `peer` for criterion's `iter_custom`; a failing transport ends the
/// run with its error (criterion offers no way to return one).
fn timed(peer: &mut dyn RoundTrip, iters: u64) -> Duration {
    match peers::time_round_trips(peer, iters) {
        Ok(d) => d,
        Err(e) => panic!("round trips failed: {e:#}"),
    }
}

/// Benchmarks one transport: `start` connects a client (and starts its server), which lives for
/// the whole benchmark and is closed after it.
fn transport<T, S, C>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, start: S, close: C)
where
    T: RoundTrip,
    S: FnOnce() -> Result<T>,
    C: FnOnce(T) -> Result<()>,
{
    let mut peer = match start() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{name}: skipped, the transport did not start: {e:#}");
            return;
        }
    };
    group.bench_function(name, |b| b.iter_custom(|iters| timed(&mut peer, iters)));
    if let Err(e) = close(peer) {
        eprintln!("{name}: the server did not stop cleanly: {e:#}");
    }
}

fn round_trips(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    transport(
        &mut group,
        "shm_busy",
        peers::ShmPeer::busy,
        peers::ShmPeer::close,
    );
    transport(
        &mut group,
        "shm_adaptive",
        peers::ShmPeer::adaptive,
        peers::ShmPeer::close,
    );
    transport(
        &mut group,
        "uds_bincode",
        peers::UdsClient::start,
        peers::UdsClient::close,
    );
    transport(
        &mut group,
        "http_json",
        peers::HttpClient::start,
        peers::HttpClient::close,
    );
    transport(
        &mut group,
        "iceoryx2",
        || peers::IceoryxClient::start(IceoryxWait::Busy),
        peers::IceoryxClient::close,
    );
    transport(
        &mut group,
        "iceoryx2_event",
        || peers::IceoryxClient::start(IceoryxWait::Event),
        peers::IceoryxClient::close,
    );
    transport(
        &mut group,
        "inproc_channel",
        peers::ChannelClient::start,
        peers::ChannelClient::close,
    );
    group.finish();
}

fn main() {
    shm_bench::child::dispatch();
    let mut c = Criterion::default().configure_from_args();
    round_trips(&mut c);
    c.final_summary();
}
