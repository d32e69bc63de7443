//! The runtime section: round trips through the runtime's echo server under each wait strategy,
//! pipelined throughput, idle CPU and the in-process costs of validation, result writing and
//! scheduling; then the [peers](super::peers) section, measured in the same rounds.

use std::time::Duration;

use anyhow::Result;
use shm_runtime::ring::WaitStrategy;

use super::figures::{measure, median_of, median_p, row};
use super::{at_least, at_most, fmt_num, Report, Section};
use crate::stats::Percentiles;
use crate::{gateway_work, peers, runtime_work};

/// A round-trip transport of the report: the runtime's own (server wait, client wait, pause between
/// requests, round trips) or a peer's measurement function and its round trips.
enum Transport {
    Shm(&'static str, WaitStrategy, Option<Duration>, usize),
    Peer(fn(u64) -> Result<Percentiles>, u64),
}

pub(super) fn runtime(report: &mut Report, quick: bool) {
    println!("runtime round trips (echo backend, 64-byte payload, server in another process)");
    let n = if quick { 100_000 } else { 500_000 };
    let mut extra: Vec<(&str, f64)> = Vec::new();
    let peer_n = if quick { 60_000 } else { 300_000 };
    let transports: [(&str, Transport); 8] = [
        (
            "shm_busy",
            Transport::Shm("busy", WaitStrategy::BusySpin, None, n),
        ),
        (
            "shm_adaptive",
            Transport::Shm("park", WaitStrategy::default(), None, n),
        ),
        (
            "shm_cold",
            Transport::Shm(
                "park",
                WaitStrategy::default(),
                Some(Duration::from_millis(1)),
                if quick { 500 } else { 3000 },
            ),
        ),
        ("iceoryx2", Transport::Peer(peers::iceoryx2, peer_n)),
        ("uds_bincode", Transport::Peer(peers::uds_bincode, peer_n)),
        ("http_json", Transport::Peer(peers::http_json, peer_n)),
        // The OpenAI-compatible gateway onto the runtime: a completion of the same 64 bytes.
        (
            "gateway_http",
            Transport::Peer(gateway_work::gateway_rtt, peer_n / 2),
        ),
        (
            "inproc_channel",
            Transport::Peer(peers::inproc_channel, peer_n),
        ),
    ];
    // The transports alternate, 3 rounds each, medians (the VM's speed drifts in phases).
    let mut runs: Vec<Vec<crate::stats::Percentiles>> = vec![Vec::new(); transports.len()];
    measure(
        report,
        "rtt_ns_shm_busy_p50",
        "round trips over every transport, 3 interleaved rounds",
        || {
            // One server at a time: a busy-polling server would steal the core of the next.
            for _ in 0..3 {
                for (k, (_, t)) in transports.iter().enumerate() {
                    let r = match *t {
                        Transport::Shm(server_wait, client_wait, pause, n) => {
                            let server = runtime_work::EchoServer::start(server_wait)?;
                            let r = runtime_work::round_trips(&server, client_wait, n / 3, pause);
                            server.stop()?;
                            r?
                        }
                        Transport::Peer(f, n) => f(n / 3)?,
                    };
                    runs[k].push(r);
                }
            }
            Ok(median_p(runs[0].iter().copied()).p50)
        },
    );
    for (k, (t, ..)) in transports.iter().enumerate() {
        if runs[k].len() == 3 {
            let p = median_p(runs[k].iter().copied());
            report.set(&format!("rtt_ns_{t}_p50"), p.p50);
            report.set(&format!("rtt_ns_{t}_p99"), p.p99);
            report.set(&format!("rtt_ns_{t}_p999"), p.p999);
            println!(
                "    {t}: p50 {} ns, p99 {} ns, p99.9 {} ns",
                fmt_num(p.p50),
                fmt_num(p.p99),
                fmt_num(p.p999)
            );
            report.latency(t, p);
        } else {
            for q in ["p50", "p99", "p999"] {
                report.missing(&format!("rtt_ns_{t}_{q}"), "the round trips failed");
            }
        }
    }
    // The safe default (each request copied before validation) vs a server trusting its clients
    // (requests read in place), interleaved (3 runs each, medians): the VM's speed drifts between
    // runs by more than the difference being measured.
    measure(
        report,
        "rtt_ns_shm_busy_inplace_p50",
        "shm_busy round trip, default (copy) vs trusted clients (in place), interleaved",
        || {
            let (mut a, mut b, mut typed) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..3 {
                for (trusted_clients, out) in [(false, &mut a), (true, &mut b)] {
                    let server = runtime_work::EchoServer::start_with("busy", trusted_clients)?;
                    let r = runtime_work::round_trips(&server, WaitStrategy::BusySpin, n / 3, None);
                    // The typed call, on the default server, in the same rounds.
                    let t = (!trusted_clients).then(|| {
                        runtime_work::typed_round_trips(&server, WaitStrategy::BusySpin, n / 3)
                    });
                    server.stop()?;
                    out.push(r?.p50);
                    if let Some(t) = t {
                        typed.push(t?.p50);
                    }
                }
            }
            let plain_p50 = crate::stats::median(&mut a);
            extra.push(("rtt_ns_shm_busy_p50_interleaved", plain_p50));
            extra.push((
                "rtt_ns_typed_generate_p50",
                crate::stats::median(&mut typed),
            ));
            Ok(crate::stats::median(&mut b))
        },
    );
    for (k, v) in extra.drain(..) {
        report.set(k, v);
    }
    if let Some(p50) = report.get("rtt_ns_gateway_http_p50") {
        report.set("gateway_rtt_us_p50", p50 / 1000.0);
    }
    if let Some(p99) = report.get("rtt_ns_gateway_http_p99") {
        report.set("gateway_rtt_us_p99", p99 / 1000.0);
    }
    measure(
        report,
        "gateway_rps",
        "gateway requests per second, 16 keep-alive connections, median of 3",
        || {
            median_of(3, || {
                gateway_work::gateway_rps(16, Duration::from_secs(if quick { 1 } else { 3 }))
            })
        },
    );
    pinning(report, n);
    for (key, what, trusted_clients) in [
        (
            "throughput_rps_shm_pipelined",
            "pipelined, 64 in flight, median of 3",
            false,
        ),
        (
            "throughput_rps_shm_pipelined_inplace",
            "pipelined, 64 in flight, trusted clients (in place), median of 3",
            true,
        ),
    ] {
        measure(report, key, what, || {
            median_of(3, || {
                let server = runtime_work::EchoServer::start_with("busy", trusted_clients)?;
                let r =
                    runtime_work::pipelined(&server, if quick { 300_000 } else { 2_000_000 }, 64);
                server.stop()?;
                r
            })
        });
    }
    measure(
        report,
        "idle_server_cpu_pct",
        "idle server CPU over 2 s",
        || {
            let server = runtime_work::EchoServer::start("park")?;
            let r = runtime_work::idle_cpu_pct(server.pid, Duration::from_secs(2));
            server.stop()?;
            r
        },
    );
    println!("runtime internals (one thread)");
    measure(
        report,
        "validate_ns_1000",
        "validate a 1000-token request",
        || runtime_work::validate_ns(1000),
    );
    for (bytes, key) in [
        (64, "request_copy_ns_64"),
        (1024, "request_copy_ns_1k"),
        (16 << 10, "request_copy_ns_16k"),
    ] {
        let mut plain = None;
        measure(
            report,
            key,
            "copy a request out of its chunk (atomic words vs memcpy)",
            || {
                let (copy, memcpy) = runtime_work::request_copy_ns(bytes)?;
                plain = Some(memcpy);
                Ok(copy)
            },
        );
        if let Some(v) = plain {
            report.set(&key.replace("copy", "memcpy"), v);
        }
    }
    measure(
        report,
        "result_create_ns",
        "write a 200-token result in place",
        runtime_work::result_create_ns,
    );
    measure(
        report,
        "scheduler_mops",
        "scheduler enqueue + dequeue",
        || Ok(runtime_work::scheduler_mops()),
    );
    let g = |k: &str| report.get(k);
    report.section(Section {
        title: "Runtime: round trips and internals".to_owned(),
        rows: vec![
            row("round trip, busy-poll both sides, p50", "rtt_ns_shm_busy_p50", "ns", "<= 1000; seed's claimed overhead ~19,400 ns", at_most(g("rtt_ns_shm_busy_p50"), 1000.0)),
            row("round trip, busy-poll both sides, p99", "rtt_ns_shm_busy_p99", "ns", "<= 5000", at_most(g("rtt_ns_shm_busy_p99"), 5000.0)),
            row("round trip, busy-poll both sides, p99.9", "rtt_ns_shm_busy_p999", "ns", "", String::new()),
            row(
                "round trip, busy-poll, server trusting its clients (request read in place, no copy), p50",
                "rtt_ns_shm_busy_inplace_p50",
                "ns",
                "default (copy) <= 1.10 x in place",
                match (g("rtt_ns_shm_busy_inplace_p50"), g("rtt_ns_shm_busy_p50_interleaved")) {
                    (Some(i), Some(d)) => format!(
                        "the default (copy) is {:.2} x in place ({:+.0} ns), interleaved runs: {}",
                        d / i,
                        d - i,
                        if d <= 1.10 * i { "met" } else { "NOT met" }
                    ),
                    _ => "not measured".to_owned(),
                },
            ),
            row(
                "round trip through the typed call (`Client::generate`, echo, busy-poll), p50",
                "rtt_ns_typed_generate_p50",
                "ns",
                "<= 1.10 x the raw call (`infer`), same interleaved rounds",
                match (g("rtt_ns_typed_generate_p50"), g("rtt_ns_shm_busy_p50_interleaved")) {
                    (Some(t), Some(d)) => format!(
                        "{:.2} x the raw call ({:+.0} ns): {}",
                        t / d,
                        t - d,
                        if t <= 1.10 * d { "met" } else { "NOT met" }
                    ),
                    _ => "not measured".to_owned(),
                },
            ),
            row("round trip from an unpinned client, busy-poll, worker pinned to the second CPU, p50", "rtt_ns_shm_busy_p50_pinned", "ns", "default: a busy-polling worker is pinned only with 2 CPUs left", pinned_vs(g("rtt_ns_shm_busy_p50_pinned"), g("rtt_ns_shm_busy_p50_unpinned"))),
            row("same, worker not pinned, p50", "rtt_ns_shm_busy_p50_unpinned", "ns", "", String::new()),
            row("same, busy-poll, worker pinned / not pinned, p99", "rtt_ns_shm_busy_p99_pinned", "ns", "", pinned_vs(g("rtt_ns_shm_busy_p99_pinned"), g("rtt_ns_shm_busy_p99_unpinned"))),
            row("same, default wait, worker pinned / not pinned, p50", "rtt_ns_shm_adaptive_p50_pinned", "ns", "default: a parking worker is pinned with 1 CPU left", pinned_vs(g("rtt_ns_shm_adaptive_p50_pinned"), g("rtt_ns_shm_adaptive_p50_unpinned"))),
            row("same, default wait, worker pinned / not pinned, p99", "rtt_ns_shm_adaptive_p99_pinned", "ns", "", pinned_vs(g("rtt_ns_shm_adaptive_p99_pinned"), g("rtt_ns_shm_adaptive_p99_unpinned"))),
            row("round trip, default wait (spin 50 us then park), back to back, p50", "rtt_ns_shm_adaptive_p50", "ns", "", String::new()),
            row("round trip, default wait, back to back, p99", "rtt_ns_shm_adaptive_p99", "ns", "", String::new()),
            row("round trip, default wait, 1 ms pauses (worker parked), p50", "rtt_ns_shm_cold_p50", "ns", "futex wake ~40 us one way here", String::new()),
            row("round trip, default wait, 1 ms pauses, p99", "rtt_ns_shm_cold_p99", "ns", "", String::new()),
            row("pipelined, 64 in flight, one client", "throughput_rps_shm_pipelined", "req/s", ">= 2,000,000", at_least(g("throughput_rps_shm_pipelined"), 2e6)),
            row("pipelined, 64 in flight, one client, trusted clients (in place)", "throughput_rps_shm_pipelined_inplace", "req/s", "", match (g("throughput_rps_shm_pipelined"), g("throughput_rps_shm_pipelined_inplace")) {
                (Some(d), Some(i)) => format!("the default (copy) is {:.2} x in place", d / i),
                _ => String::new(),
            }),
            row("idle server CPU over 2 s (default wait)", "idle_server_cpu_pct", "%", "<= 2", at_most(g("idle_server_cpu_pct"), 2.0)),
            row("validation of a 1000-token request (bytecheck + limits)", "validate_ns_1000", "ns", "<= 100; seed 2.9-4.3 ns (no archive check)", at_most(g("validate_ns_1000"), 100.0)),
            row("copy of a 64 B request out of its chunk (relaxed atomic words)", "request_copy_ns_64", "ns", "beside memcpy", copy_vs(g("request_copy_ns_64"), g("request_memcpy_ns_64"))),
            row("copy of a 1 KiB request", "request_copy_ns_1k", "ns", "beside memcpy", copy_vs(g("request_copy_ns_1k"), g("request_memcpy_ns_1k"))),
            row("copy of a 16 KiB request", "request_copy_ns_16k", "ns", "beside memcpy", copy_vs(g("request_copy_ns_16k"), g("request_memcpy_ns_16k"))),
            row("200-token generation result written in place", "result_create_ns", "ns", "<= 50; seed 85-113 ns", at_most(g("result_create_ns"), 50.0)),
            row("scheduler enqueue + dequeue", "scheduler_mops", "M pairs/s", ">= 50; seed 2-5", at_least(g("scheduler_mops"), 50.0)),
        ],
        notes: vec![
            "Round trips: the busy, adaptive and cold series alternate, 3 rounds each, one server at a time; figures are per-percentile medians of the rounds. `Client::infer` of a Generate request with 64 bytes of text to the echo backend, measured by the client: loan a chunk, serialize into it, push a descriptor, worker pops, adopts, reads the request head and schedules it, validates the archive once (bytecheck + limits) when it runs, runs echo, serializes the answer into a new chunk, pushes it; client pops, validates the answer, drops the view (chunk released). Server in its own process with its worker pinned to the second CPU, client pinned to the first.".to_owned(),
            "Pinning: the same round trip from a client that does not pin itself (as most do), to a server whose one worker is pinned to the second CPU or left to the OS scheduler, busy-poll and default wait, the four alternating, 3 rounds each, medians. The server's default follows from it (`ServerConfig::pin`): workers that park when idle (the default wait) are pinned when the CPUs the server may use outnumber them, one CPU each, the first left to clients (one worker on two CPUs: the pinned case here), since a parked worker leaves its CPU to a client the scheduler puts there; busy-polling workers never leave it, so they are pinned only with two CPUs left (one worker on two CPUs: the unpinned case here).".to_owned(),
            "Internals: validation is `rkyv::access` (bytecheck) plus the semantic checks on a 1000-token request; result creation is `encode_into` of a Generation with 200 token ids and the seed's `\"generated \".repeat(200)` text into a 64-byte aligned buffer; the scheduler is a worker's scheduler (4 priority levels, round-robin over clients), push then pop, jobs from 8 clients at mixed priorities.".to_owned(),
        ],
    });
    super::peers::peers_section(report);
}

/// Round trips from an unpinned client to a server whose worker is pinned or not, busy-poll and
/// default wait, alternating (3 rounds each, per-percentile medians): the figures behind the
/// default of `ServerConfig::pin`.
fn pinning(report: &mut Report, n: usize) {
    let variants: [(&str, &str, WaitStrategy, bool); 4] = [
        ("busy", "busy", WaitStrategy::BusySpin, true),
        ("busy", "busy", WaitStrategy::BusySpin, false),
        ("adaptive", "park", WaitStrategy::default(), true),
        ("adaptive", "park", WaitStrategy::default(), false),
    ];
    let mut runs: Vec<Vec<Percentiles>> = vec![Vec::new(); variants.len()];
    measure(
        report,
        "rtt_ns_shm_busy_p50_pinned",
        "round trips from an unpinned client, worker pinned vs not, interleaved",
        || {
            for _ in 0..3 {
                for (k, &(_, server_wait, client_wait, pinned)) in variants.iter().enumerate() {
                    let server = if pinned {
                        runtime_work::EchoServer::start(server_wait)?
                    } else {
                        runtime_work::EchoServer::start_unpinned(server_wait)?
                    };
                    let r = runtime_work::round_trips_from(&server, client_wait, n / 3, None, None);
                    server.stop()?;
                    runs[k].push(r?);
                }
            }
            Ok(median_p(runs[0].iter().copied()).p50)
        },
    );
    for (k, &(series, _, _, pinned)) in variants.iter().enumerate() {
        if runs[k].len() < 3 {
            continue;
        }
        let p = median_p(runs[k].iter().copied());
        let side = if pinned { "pinned" } else { "unpinned" };
        report.set(&format!("rtt_ns_shm_{series}_p50_{side}"), p.p50);
        report.set(&format!("rtt_ns_shm_{series}_p99_{side}"), p.p99);
        println!(
            "    {series}, worker {side}: p50 {} ns, p99 {} ns",
            fmt_num(p.p50),
            fmt_num(p.p99)
        );
    }
}

/// "pinned is R x not pinned".
fn pinned_vs(pinned: Option<f64>, unpinned: Option<f64>) -> String {
    match (pinned, unpinned) {
        (Some(p), Some(u)) => format!("pinned is {:.2} x not pinned ({:+.0} ns)", p / u, p - u),
        _ => String::new(),
    }
}

/// "memcpy N ns (R x)": the server's atomic word copy beside a plain memcpy of the same bytes.
fn copy_vs(copy: Option<f64>, memcpy: Option<f64>) -> String {
    match (copy, memcpy) {
        (Some(c), Some(m)) => format!("memcpy {m:.1} ns ({:.2} x)", c / m),
        _ => String::new(),
    }
}
