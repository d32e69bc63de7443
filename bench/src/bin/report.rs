//! The performance report (BENCH.md): `cargo run --release -p shm-bench --bin report -- [--quick]
//! [--out DIR]`. Writes DIR/report.json, DIR/report.md and DIR/latency.png; prints progress.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shm_bench::report::{at_least, at_most, fmt_num, Report, Row, Section};
use shm_bench::stats::Percentiles;
use shm_bench::{child, peers, ring_work, runtime_work};
use shm_runtime::ring::WaitStrategy;

struct Args {
    quick: bool,
    out: PathBuf,
    /// Parts to run (all when empty).
    only: Vec<String>,
}

/// The report's parts, in the order they run.
const PARTS: [&str; 5] = ["rings", "runtime", "seed", "onnx", "gguf"];

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("report"),
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--out" => match it.next() {
                Some(d) => args.out = PathBuf::from(d),
                None => bail!("--out needs a directory"),
            },
            "--only" => match it.next() {
                Some(list) => {
                    for part in list.split(',') {
                        if !PARTS.contains(&part) {
                            bail!("unknown part {part:?}: the parts are {}", PARTS.join(", "));
                        }
                        args.only.push(part.to_owned());
                    }
                }
                None => bail!("--only needs a list of parts ({})", PARTS.join(",")),
            },
            "-h" | "--help" => {
                println!(
                    "usage: report [--quick] [--out DIR] [--only PART,...]   (default DIR: ./report; parts: {})",
                    PARTS.join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn row(figure: &str, key: &str, unit: &str, reference: &str, verdict: String) -> Row {
    Row {
        figure: figure.to_owned(),
        key: Some(key.to_owned()),
        unit: unit.to_owned(),
        reference: reference.to_owned(),
        verdict,
    }
}

/// Runs `f`, recording its figure under `key`, or null with the error as the reason.
fn measure(report: &mut Report, key: &str, what: &str, f: impl FnOnce() -> Result<f64>) {
    let t = Instant::now();
    print!("  {what} ... ");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    match f() {
        Ok(v) => {
            println!("{} ({:.1} s)", fmt_num(v), t.elapsed().as_secs_f64());
            report.set(key, v);
        }
        Err(e) => {
            println!("failed: {e:#}");
            report.missing(key, &format!("measurement failed: {e:#}"));
        }
    }
}

/// Per-percentile medians of several runs.
fn median_p(
    runs: impl Iterator<Item = shm_bench::stats::Percentiles>,
) -> shm_bench::stats::Percentiles {
    let runs: Vec<_> = runs.collect();
    let med = |f: fn(&shm_bench::stats::Percentiles) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        shm_bench::stats::median(&mut v)
    };
    shm_bench::stats::Percentiles {
        p50: med(|p| p.p50),
        p99: med(|p| p.p99),
        p999: med(|p| p.p999),
        samples: runs.iter().map(|p| p.samples).sum(),
    }
}

/// Median of `n` runs of a throughput measurement (the runs are short; the median resists a run
/// disturbed by another process on this shared machine).
fn median_of(n: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut runs = (0..n).map(|_| f()).collect::<Result<Vec<_>>>()?;
    Ok(shm_bench::stats::median(&mut runs))
}

fn rings(report: &mut Report, quick: bool) {
    println!("floor and rings");
    let scale = if quick { 1 } else { 5 };
    let rounds = 1_000_000 * scale;
    // Floor and SPSC ping-pong alternate, 3 rounds each: this VM's speed drifts by up to 3x
    // between phases, so each ratio compares runs made side by side, and the figures are medians.
    let mut pairs = Vec::new();
    measure(
        report,
        "floor_pingpong_oneway_ns",
        "floor (threads) and SPSC (processes) ping-pong, 3 interleaved rounds",
        || {
            for _ in 0..3 {
                let f = ring_work::floor_pingpong(rounds / 3)?;
                let s = ring_work::spsc_pingpong(rounds / 3)?;
                pairs.push((f, s));
            }
            Ok(median_p(pairs.iter().map(|p| p.0)).p50)
        },
    );
    if pairs.is_empty() {
        report.missing("spsc_oneway_ns_p50", "the ping-pong failed");
        report.missing("spsc_oneway_ns_p99", "the ping-pong failed");
    } else {
        let floor = median_p(pairs.iter().map(|p| p.0));
        let spsc = median_p(pairs.iter().map(|p| p.1));
        let mut ratios: Vec<f64> = pairs.iter().map(|(f, s)| s.p50 / f.p50).collect();
        report.set("floor_pingpong_oneway_ns_p99", floor.p99);
        report.set("spsc_oneway_ns_p50", spsc.p50);
        report.set("spsc_oneway_ns_p99", spsc.p99);
        report.set("spsc_oneway_ns_p999", spsc.p999);
        report.set("spsc_over_floor_p50", shm_bench::stats::median(&mut ratios));
        println!(
            "    SPSC one way {} ns, {:.2} x floor",
            fmt_num(spsc.p50),
            report.get("spsc_over_floor_p50").unwrap_or(f64::NAN)
        );
        report.latency("floor (1 line)", floor.scaled(0.5));
        report.latency("spsc ring", spsc.scaled(0.5));
    }
    measure(
        report,
        "spsc_throughput_mops",
        "SPSC throughput, batches of 64",
        || median_of(3, || ring_work::spsc_throughput(50_000_000 * scale, 64)),
    );
    measure(
        report,
        "spsc_throughput_mops_single",
        "SPSC throughput, one at a time",
        || median_of(3, || ring_work::spsc_throughput(5_000_000 * scale, 1)),
    );
    measure(
        report,
        "mpmc_throughput_mops",
        "MPMC throughput, 2 producer processes",
        || median_of(3, || ring_work::mpmc_throughput(5_000_000 * scale, 2)),
    );
    measure(
        report,
        "mpmc_throughput_mops_1p",
        "MPMC throughput, 1 producer process",
        || median_of(3, || ring_work::mpmc_throughput(10_000_000 * scale, 1)),
    );
    measure(
        report,
        "pool_loan_release_ns",
        "pool loan + release",
        || ring_work::pool_loan_release(100 * scale as usize, 20_000),
    );

    let spsc_ratio = report.get("spsc_over_floor_p50");
    report.section(Section {
        title: "Floor and rings".to_owned(),
        rows: vec![
            row("cache-line ping-pong, one way, p50", "floor_pingpong_oneway_ns", "ns", "the physical floor", String::new()),
            row(
                "SPSC descriptor ping-pong, one way, p50",
                "spsc_oneway_ns_p50",
                "ns",
                "<= 1.5 x floor",
                match spsc_ratio {
                    Some(r) if r <= 1.5 => format!("{r:.2} x floor: meets"),
                    Some(r) => format!("{r:.2} x floor: **misses**"),
                    None => "not measured".to_owned(),
                },
            ),
            row("SPSC descriptor ping-pong, one way, p99", "spsc_oneway_ns_p99", "ns", "", String::new()),
            row("SPSC throughput, batches of 64", "spsc_throughput_mops", "M desc/s", ">= 100", at_least(report.get("spsc_throughput_mops"), 100.0)),
            row("SPSC throughput, one push/pop per descriptor", "spsc_throughput_mops_single", "M desc/s", "", String::new()),
            row("MPMC throughput, 2 producers -> 1 consumer", "mpmc_throughput_mops", "M desc/s", ">= 20", at_least(report.get("mpmc_throughput_mops"), 20.0)),
            row("MPMC throughput, 1 producer -> 1 consumer", "mpmc_throughput_mops_1p", "M desc/s", "", String::new()),
            row("pool loan + release (200 B), p50 of batches", "pool_loan_release_ns", "ns", "<= 25; seed's mutex pool 1050 ns", at_most(report.get("pool_loan_release_ns"), 25.0)),
        ],
        notes: vec![
            "Descriptors are 16 bytes (`[u64; 2]`). Ping-pong: two processes pinned to different cores, each busy-polling its inbound ring; every round trip is timed on its own (one clock read per round) and halved. The floor is the same loop on one 128-byte-aligned atomic between two pinned threads, read with the same clock, so the ratio compares like with like. Floor and SPSC runs alternate (3 rounds each); the figures are medians and the ratio is the median of the per-round ratios.".to_owned(),
            "Throughput: a producer process pinned to one core, the consumer (this process) on the other; every descriptor carries its sequence number and the consumer checks the order, so nothing can be skipped; each figure is the median of 3 runs. MPMC with 2 producers runs 3 busy processes on the available cores; when there are fewer cores than processes nothing is pinned and the figure includes the kernel's time slicing.".to_owned(),
            "Pool: `Pool::loan(owner, 200)` then drop (release) on one thread, in batches of 20,000 pairs; the figure is the median batch. Each pair is 4 atomic read-modify-writes: quota, free-list pop, free-list push, quota.".to_owned(),
        ],
    });
}

/// A round-trip transport of the report: the runtime's own (server wait, client wait, pause between
/// requests, round trips) or a peer's measurement function and its round trips.
enum Transport {
    Shm(&'static str, WaitStrategy, Option<Duration>, usize),
    Peer(fn(u64) -> Result<Percentiles>, u64),
}

fn runtime(report: &mut Report, quick: bool) {
    println!("runtime round trips (echo backend, 64-byte payload, server in another process)");
    let n = if quick { 100_000 } else { 500_000 };
    let mut extra: Vec<(&str, f64)> = Vec::new();
    let peer_n = if quick { 60_000 } else { 300_000 };
    let transports: [(&str, Transport); 7] = [
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
        (
            "inproc_channel",
            Transport::Peer(peers::inproc_channel, peer_n),
        ),
    ];
    // The transports alternate, 3 rounds each, medians (the VM's speed drifts in phases).
    let mut runs: Vec<Vec<shm_bench::stats::Percentiles>> = vec![Vec::new(); transports.len()];
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
    // Hardened vs default, interleaved (3 runs each, medians): the VM's speed drifts between
    // runs by more than the difference being measured.
    measure(
        report,
        "rtt_ns_shm_busy_hardened_p50",
        "shm_busy round trip, hardened vs default, interleaved",
        || {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                for (hardened, out) in [(false, &mut a), (true, &mut b)] {
                    let server = runtime_work::EchoServer::start_with("busy", hardened)?;
                    let r = runtime_work::round_trips(&server, WaitStrategy::BusySpin, n / 3, None);
                    server.stop()?;
                    out.push(r?.p50);
                }
            }
            let plain_p50 = shm_bench::stats::median(&mut a);
            extra.push(("rtt_ns_shm_busy_p50_interleaved", plain_p50));
            Ok(shm_bench::stats::median(&mut b))
        },
    );
    for (k, v) in extra.drain(..) {
        report.set(k, v);
    }
    measure(
        report,
        "throughput_rps_shm_pipelined",
        "pipelined, 64 in flight, median of 3",
        || {
            median_of(3, || {
                let server = runtime_work::EchoServer::start("busy")?;
                let r =
                    runtime_work::pipelined(&server, if quick { 300_000 } else { 2_000_000 }, 64);
                server.stop()?;
                r
            })
        },
    );
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
                "round trip, busy-poll, hardened server (request copied before validation), p50",
                "rtt_ns_shm_busy_hardened_p50",
                "ns",
                "what hardened mode costs",
                match (g("rtt_ns_shm_busy_hardened_p50"), g("rtt_ns_shm_busy_p50_interleaved")) {
                    (Some(h), Some(b)) => format!("{:+.0} ns vs default mode, interleaved runs ({:.2} x)", h - b, h / b),
                    _ => "not measured".to_owned(),
                },
            ),
            row("round trip, default wait (spin 50 us then park), back to back, p50", "rtt_ns_shm_adaptive_p50", "ns", "", String::new()),
            row("round trip, default wait, back to back, p99", "rtt_ns_shm_adaptive_p99", "ns", "", String::new()),
            row("round trip, default wait, 1 ms pauses (worker parked), p50", "rtt_ns_shm_cold_p50", "ns", "futex wake ~40 us one way here", String::new()),
            row("round trip, default wait, 1 ms pauses, p99", "rtt_ns_shm_cold_p99", "ns", "", String::new()),
            row("pipelined, 64 in flight, one client", "throughput_rps_shm_pipelined", "req/s", ">= 2,000,000", at_least(g("throughput_rps_shm_pipelined"), 2e6)),
            row("idle server CPU over 2 s (default wait)", "idle_server_cpu_pct", "%", "<= 2", at_most(g("idle_server_cpu_pct"), 2.0)),
            row("validation of a 1000-token request (bytecheck + limits)", "validate_ns_1000", "ns", "<= 100; seed 2.9-4.3 ns (no archive check)", at_most(g("validate_ns_1000"), 100.0)),
            row("200-token generation result written in place", "result_create_ns", "ns", "<= 50; seed 85-113 ns", at_most(g("result_create_ns"), 50.0)),
            row("scheduler enqueue + dequeue", "scheduler_mops", "M pairs/s", ">= 50; seed 2-5", at_least(g("scheduler_mops"), 50.0)),
        ],
        notes: vec![
            "Round trips: the busy, adaptive and cold series alternate, 3 rounds each, one server at a time; figures are per-percentile medians of the rounds. `Client::infer` of a Generate request with 64 bytes of text to the echo backend, measured by the client: loan a chunk, serialize into it, push a descriptor, worker pops, adopts, reads the request head and schedules it, validates the archive once (bytecheck + limits) when it runs, runs echo, serializes the answer into a new chunk, pushes it; client pops, validates the answer, drops the view (chunk released). Server in its own process with its worker pinned to the second CPU, client pinned to the first.".to_owned(),
            "Internals: validation is `rkyv::access` (bytecheck) plus the semantic checks on a 1000-token request; result creation is `encode_into` of a Generation with 200 token ids and the seed's `\"generated \".repeat(200)` text into a 64-byte aligned buffer; the scheduler is a worker's scheduler (4 priority levels, round-robin over clients), push then pop, jobs from 8 clients at mixed priorities.".to_owned(),
        ],
    });
    peers_section(report);
}

/// A figure's measurement function.
type Measurement = fn() -> Result<f64>;

/// The seed's tier-1 microbenchmarks (its request shapes and methods), ours beside them, in
/// interleaved rounds.
fn seed(report: &mut Report, quick: bool) {
    use shm_bench::seed_work as sw;
    println!(
        "seed suite: encode, decode and validation of N-token requests, scheduler, pool, results"
    );
    let rounds = if quick { 3 } else { 5 };
    let mut rows = Vec::new();
    for n in sw::SEED_SIZES {
        let keys = [
            format!("encode_melem_s_{n}"),
            format!("decode_melem_s_{n}"),
            format!("seed_json_encode_melem_s_{n}"),
            format!("seed_json_decode_melem_s_{n}"),
        ];
        let mut runs: [Vec<f64>; 4] = Default::default();
        measure(
            report,
            &keys[0],
            &format!("N = {n}: ours and seed JSON encode and decode, {rounds} interleaved rounds"),
            || {
                let fs: [fn(usize) -> Result<f64>; 4] = [
                    sw::encode_melem_s,
                    sw::decode_melem_s,
                    sw::seed_json_encode_melem_s,
                    sw::seed_json_decode_melem_s,
                ];
                for _ in 0..rounds {
                    for (k, f) in fs.iter().enumerate() {
                        runs[k].push(f(n)?);
                    }
                }
                Ok(shm_bench::stats::median(&mut runs[0]))
            },
        );
        for (k, key) in keys.iter().enumerate().skip(1) {
            if runs[k].is_empty() {
                report.missing(key, "the measurement failed");
            } else {
                report.set(key, shm_bench::stats::median(&mut runs[k]));
            }
        }
        let g = |k: &str| report.get(k);
        let (enc, dec, senc, sdec) = (g(&keys[0]), g(&keys[1]), g(&keys[2]), g(&keys[3]));
        let times = |a: Option<f64>, b: Option<f64>, bar: f64| match (a, b) {
            (Some(a), Some(b)) if a / b >= bar => {
                format!("{:.0} x seed JSON: meets (>= {bar} x)", a / b)
            }
            (Some(a), Some(b)) => format!("{:.1} x seed JSON: **misses** (>= {bar} x)", a / b),
            _ => "not measured".to_owned(),
        };
        let past = match (dec, enc) {
            (Some(d), Some(e)) if d > e => format!(
                "{:.2} x encode: meets (decode > encode); {}",
                d / e,
                times(dec, sdec, 100.0)
            ),
            (Some(d), Some(e)) => format!(
                "{:.2} x encode: **misses** (decode > encode); {}",
                d / e,
                times(dec, sdec, 100.0)
            ),
            _ => "not measured".to_owned(),
        };
        let seed_ref = |k: &str| match k {
            "encode" => "seed's published 104-135 Melem/s".to_owned(),
            _ => "seed's published 23.6 Melem/s".to_owned(),
        };
        rows.push(row(
            &format!("encode, N = {n} tokens, into a pool chunk"),
            &keys[0],
            "Melem/s",
            &format!(">= 10 x seed JSON; {}", seed_ref("encode")),
            times(enc, senc, 10.0),
        ));
        rows.push(row(
            &format!("decode, N = {n}: full validation + sum of every token, in place"),
            &keys[1],
            "Melem/s",
            &format!("> encode, >= 100 x seed JSON; {}", seed_ref("decode")),
            past,
        ));
        rows.push(row(
            &format!("seed method: serde_json encode, N = {n}"),
            &keys[2],
            "Melem/s",
            "measured here",
            String::new(),
        ));
        rows.push(row(
            &format!("seed method: serde_json decode + sum, N = {n}"),
            &keys[3],
            "Melem/s",
            "measured here",
            String::new(),
        ));
    }
    let pairs: [(&str, &str, Measurement); 4] = [
        (
            "seed_validate_ns_1000",
            "seed-style validation (JSON parse + the same limits), 1000 tokens",
            || sw::seed_validate_ns(1000),
        ),
        (
            "seed_scheduler_mops",
            "seed-style scheduler (binary heap, 4 levels), push + pop",
            || Ok(sw::seed_scheduler_mops()),
        ),
        (
            "seed_pool_acquire_release_ns",
            "seed-style pool (mutex over 4 KiB buffers), acquire + release",
            || Ok(sw::seed_pool_acquire_release_ns()),
        ),
        (
            "seed_result_create_ns",
            "seed-style result (`\"generated \".repeat(200)` into a String)",
            || Ok(sw::seed_result_create_ns()),
        ),
    ];
    for (key, what, f) in pairs {
        measure(report, key, what, || median_of(rounds, f));
    }
    let g = |k: &str| report.get(k);
    let vs = |ours: Option<f64>, seed: Option<f64>, lower_is_better: bool| match (ours, seed) {
        (Some(o), Some(s)) if lower_is_better => format!(
            "ours {} ns: {:.2} x the seed method's time",
            fmt_num(o),
            o / s
        ),
        (Some(o), Some(s)) => format!(
            "ours {} M/s: {:.2} x the seed method's rate",
            fmt_num(o),
            o / s
        ),
        _ => "not measured".to_owned(),
    };
    rows.push(row(
        "seed-style validation, 1000 tokens",
        "seed_validate_ns_1000",
        "ns",
        "seed's published 2.9-4.3 ns (a length check, no parse)",
        vs(g("validate_ns_1000"), g("seed_validate_ns_1000"), true),
    ));
    rows.push(row(
        "seed-style scheduler, push + pop",
        "seed_scheduler_mops",
        "M pairs/s",
        "seed's published 2-5 Melem/s",
        vs(g("scheduler_mops"), g("seed_scheduler_mops"), false),
    ));
    rows.push(row(
        "seed-style pool, acquire + release",
        "seed_pool_acquire_release_ns",
        "ns",
        "seed's published 1.05 us",
        vs(
            g("pool_loan_release_ns"),
            g("seed_pool_acquire_release_ns"),
            true,
        ),
    ));
    rows.push(row(
        "seed-style result creation, 200 tokens",
        "seed_result_create_ns",
        "ns",
        "seed's published 85-113 ns",
        vs(g("result_create_ns"), g("seed_result_create_ns"), true),
    ));
    report.section(Section {
        title: "The seed's microbenchmarks, reproduced side by side".to_owned(),
        rows,
        notes: vec![
            "Request shape as the seed's: request id, model id, N prompt tokens (u32, from a 32k vocabulary), parameters (max_tokens, temperature, top_p, top_k, stream, timeout_ms); one element = one token. The seed method is serde_json of an internally tagged enum (`#[serde(tag = \"type\")]`) with those fields, into a reused Vec, and `from_slice` back plus a sum of every token; no transport, as the seed measured. Ours: encode = loan a chunk from the shared-memory pool, write the 16-byte request head and the rkyv archive straight into it, release the chunk (the client's path); decode = exactly what the server does to a request chunk (ownership, head, bytecheck of the archive, semantic limits, head agreement) plus the same 16-lane sum of every token read in place. Encoded sizes: 512 / 4,112 / 16,112 bytes (ours) against 752 / 5,839 / 22,805 bytes of JSON for N = 100 / 1,000 / 4,000. Each figure is the median of 31 batches of ~2 ms; ours and the seed's alternate in rounds, and the figure is the median of the rounds.".to_owned(),
            "The seed's other figures are rebuilt from its description: a binary heap over 4 priority levels (push then pop), a mutex-guarded pool of 4 KiB buffers (acquire then release, one thread, uncontended), and a result whose text is `\"generated \".repeat(200)` in a String. Uncontended on one thread, the mutex pool is faster than ours, which is lock-free across processes and checks ownership and generations (two compare-exchanges and two counter updates per loan); the seed's published 1.05 us does not reproduce with a plain mutex pool.".to_owned(),
        ],
    });
}

/// The runtime's busy round trip against every other transport, measured in the same interleaved
/// rounds.
fn peers_section(report: &mut Report) {
    let g = |k: &str| report.get(k);
    let shm = g("rtt_ns_shm_busy_p50");
    // (peer, what it is, how many times slower than shm_busy it must be, or no bar)
    let peers: [(&str, &str, Option<f64>); 4] = [
        (
            "iceoryx2",
            "iceoryx2 0.10 request-response, busy-polling both sides",
            Some(1.0),
        ),
        (
            "uds_bincode",
            "Unix socket, length-prefixed bincode frames",
            Some(10.0),
        ),
        (
            "http_json",
            "HTTP/1.1 keep-alive, JSON, loopback (hyper server)",
            Some(50.0),
        ),
        (
            "inproc_channel",
            "crossbeam channels between two threads (no process boundary)",
            None,
        ),
    ];
    let mut rows = vec![row(
        "this runtime, busy-poll both sides, p50",
        "rtt_ns_shm_busy_p50",
        "ns",
        "",
        String::new(),
    )];
    for (t, what, bar) in peers {
        let p50 = format!("rtt_ns_{t}_p50");
        let verdict = match (g(&p50), shm) {
            (Some(peer), Some(ours)) => {
                let x = peer / ours;
                match bar {
                    Some(b) if x >= b => format!("{x:.1} x this runtime's p50: meets (>= {b} x)"),
                    Some(b) => format!("{x:.1} x this runtime's p50: **misses** (>= {b} x)"),
                    None => format!("{x:.2} x this runtime's p50"),
                }
            }
            _ => "not measured".to_owned(),
        };
        let reference = match bar {
            Some(b) => format!("this runtime's p50 <= peer / {b}"),
            None => "in-process floor of a channel".to_owned(),
        };
        rows.push(row(
            &format!("{what}, p50"),
            &p50,
            "ns",
            &reference,
            verdict,
        ));
        rows.push(row(
            &format!("{what}, p99"),
            &format!("rtt_ns_{t}_p99"),
            "ns",
            "",
            String::new(),
        ));
    }
    report.section(Section {
        title: "Round trips: this runtime against other local transports".to_owned(),
        rows,
        notes: vec![
            "Same workload for every transport (bench/src/peers): one request at a time with a 64-byte payload to an echo server, the answer checked, client pinned to the first CPU and the server to the second, in its own process except for the channel. All seven transports (three of the runtime's waits, four peers) alternate in 3 rounds, one server at a time; figures are per-percentile medians of the rounds. p99.9 is in report.json.".to_owned(),
            "uds_bincode: a blocking Unix stream socket, each message a u32 length then bincode 2 of a request struct shaped like the runtime's (id, model name, task, the payload as text, parameters). http_json: hyper 1 on a current-thread tokio runtime, one keep-alive connection, a blocking std client writing HTTP/1.1 with Content-Length and TCP_NODELAY, serde_json bodies of the same structs. iceoryx2: request-response of a 64-byte POD each way, both sides busy-polling (its fastest configuration; with event-based waiting it is tens of microseconds). inproc_channel: bounded crossbeam channels of capacity 1 between two threads.".to_owned(),
        ],
    });
}

/// The ONNX keys of one model (`embed` or `classify`) measured by the latency comparison.
fn onnx_latency_keys(name: &str) -> Vec<String> {
    [
        "p50_us_direct",
        "p95_us_direct",
        "p50_us_runtime",
        "p95_us_runtime",
        "runtime_over_direct",
        "p50_us_backend_inproc",
        "backend_over_direct",
        "p50_us_runtime_parking_client",
        "parking_client_over_direct",
    ]
    .iter()
    .map(|k| format!("onnx_{name}_{k}"))
    .collect()
}

/// The ONNX keys of the concurrent-clients measurement.
const ONNX_CONCURRENT_KEYS: [&str; 5] = [
    "onnx_embed_batched_rps",
    "onnx_embed_unbatched_rps",
    "onnx_embed_mean_batch",
    "onnx_embed_direct_batch8_rps",
    "onnx_embed_batched_clients_cpu_pct",
];

/// Every ONNX key, null together when the part is not built or a dependency is missing.
fn onnx_keys() -> Vec<String> {
    let mut keys = onnx_latency_keys("embed");
    keys.extend(onnx_latency_keys("classify"));
    keys.extend(ONNX_CONCURRENT_KEYS.iter().map(|k| (*k).to_owned()));
    keys.extend(
        [
            "onnx_embed_batched_over_sequential",
            "onnx_client_wait_cpu_pct",
            "onnx_client_wait_cpu_pct_parking",
        ]
        .map(str::to_owned),
    );
    keys
}

fn onnx(report: &mut Report, quick: bool) {
    println!("ONNX models (MiniLM embedding and sentiment classification)");
    #[cfg(feature = "onnx")]
    onnx_measure(report, quick);
    #[cfg(not(feature = "onnx"))]
    {
        let _ = quick;
        println!("  built without the onnx feature: skipped");
        for k in onnx_keys() {
            report.missing(
                &k,
                "built without the onnx feature (cargo run --release -p shm-bench --features onnx --bin report)",
            );
        }
    }
    let g = |k: &str| report.get(k);
    let vs_direct = |ratio: &str, bar: bool| match g(ratio) {
        Some(r) if !bar => format!("{r:.3} x direct"),
        Some(r) if r <= 1.05 => format!("{r:.3} x direct: meets"),
        Some(r) => format!("{r:.3} x direct: **misses**"),
        None => "not measured".to_owned(),
    };
    let sequential_rps = g("onnx_embed_p50_us_runtime").map(|us| 1e6 / us);
    let mut rows = Vec::new();
    for (name, what) in [
        ("embed", "MiniLM embedding of one sentence"),
        ("classify", "sentiment classification of one sentence"),
    ] {
        let k = |s: &str| format!("onnx_{name}_{s}");
        rows.push(row(
            &format!("{what}, in-process `ort`, p50"),
            &k("p50_us_direct"),
            "us",
            "the peer",
            String::new(),
        ));
        rows.push(row(
            &format!("{what} through the runtime, round trip, p50"),
            &k("p50_us_runtime"),
            "us",
            if name == "classify" {
                "<= 1.05 x direct; well under 5 ms"
            } else {
                "<= 1.05 x direct"
            },
            if name == "classify" {
                format!(
                    "{}; {}",
                    vs_direct(&k("runtime_over_direct"), true),
                    at_most(g(&k("p50_us_runtime")), 5000.0)
                )
            } else {
                vs_direct(&k("runtime_over_direct"), true)
            },
        ));
        rows.push(row(
            &format!("{what}, in-process `ort`, p95"),
            &k("p95_us_direct"),
            "us",
            "",
            String::new(),
        ));
        rows.push(row(
            &format!("{what} through the runtime, p95"),
            &k("p95_us_runtime"),
            "us",
            if name == "classify" { "reported" } else { "" },
            String::new(),
        ));
        rows.push(row(
            &format!("{what}: the runtime's ONNX backend called in-process (no IPC), p50"),
            &k("p50_us_backend_inproc"),
            "us",
            "diagnostic: the backend's own work",
            vs_direct(&k("backend_over_direct"), false),
        ));
        rows.push(row(
            &format!("{what} through the runtime, client parks at once (no 50 us spin), p50"),
            &k("p50_us_runtime_parking_client"),
            "us",
            "diagnostic: the default client's waiting",
            vs_direct(&k("parking_client_over_direct"), false),
        ));
    }
    rows.extend([
        row(
            "CPU of the client's thread while it waits (embedding, default client)",
            "onnx_client_wait_cpu_pct",
            "% of a core",
            "",
            String::new(),
        ),
        row(
            "CPU of the client's thread while it waits (embedding, parking client)",
            "onnx_client_wait_cpu_pct_parking",
            "% of a core",
            "",
            String::new(),
        ),
        row(
            "MiniLM embedding, 8 concurrent clients, batching on (max_batch 8, max_delay 500 us)",
            "onnx_embed_batched_rps",
            "req/s",
            &match sequential_rps {
                Some(r) => format!(
                    ">= 1.5 x sequential ({} req/s = 1e6 / runtime p50)",
                    fmt_num(r)
                ),
                None => ">= 1.5 x sequential (1e6 / runtime p50)".to_owned(),
            },
            match (g("onnx_embed_batched_rps"), sequential_rps) {
                (Some(b), Some(r)) if b >= 1.5 * r => format!("{:.2} x sequential: meets", b / r),
                (Some(b), Some(r)) => format!("{:.2} x sequential: **misses**", b / r),
                _ => "not measured".to_owned(),
            },
        ),
        row(
            "MiniLM embedding, 8 concurrent clients, max_batch 1",
            "onnx_embed_unbatched_rps",
            "req/s",
            "what batching buys",
            match (g("onnx_embed_batched_rps"), g("onnx_embed_unbatched_rps")) {
                (Some(b), Some(u)) => format!("batching: {:.2} x", b / u),
                _ => "not measured".to_owned(),
            },
        ),
        row(
            "mean size of the batches of 2 or more requests (batching server)",
            "onnx_embed_mean_batch",
            "requests",
            "",
            String::new(),
        ),
        row(
            "MiniLM embedding, in-process `ort`, batches of 8 back to back",
            "onnx_embed_direct_batch8_rps",
            "texts/s",
            "what batching can reach here",
            match (
                g("onnx_embed_direct_batch8_rps"),
                g("onnx_embed_p50_us_direct"),
                g("onnx_embed_batched_rps"),
            ) {
                (Some(d), Some(us), Some(b)) => format!(
                    "{:.2} x sequential direct; the runtime's batched rate is {:.2} x this",
                    d * us / 1e6,
                    b / d
                ),
                _ => String::new(),
            },
        ),
        row(
            "CPU of the 8 client threads during the batched runs",
            "onnx_embed_batched_clients_cpu_pct",
            "% of a core",
            "",
            String::new(),
        ),
    ]);
    report.section(Section {
        title: "ONNX models".to_owned(),
        rows,
        notes: vec![
            format!(
                "One short sentence ({:?}), embedded by all-MiniLM-L6-v2 (int8, output `last_hidden_state`, mean pooling with the attention mask, L2 normalisation) or classified by the MiniLM sentiment model (output `logits`, softmax), one request at a time. Direct: this process calls `ort` itself with the same model file, the same `tokenizer.json` (truncation at 256 tokens, no padding), the same session options as the backend's defaults (graph optimisation `All`, ONNX Runtime's default thread pools) and the same pooling or softmax in Rust; the figure covers text in -> tokenize -> run -> pooled vector or scores out. Runtime: `Client::infer` of `Task::Embed` / `Task::Classify` with `Input::Text` to a server in another process (onnx backend, default options plus `output`), timed by the client: request into shared memory, worker tokenizes, runs and pools or scores into the answer chunk, client gets the validated view. Before measuring, the report checks that both paths give the same answer (within 1e-3).",
                shm_bench_sentence()
            ),
            "Two diagnostic paths locate any gap between runtime and direct: the runtime's own ONNX backend loaded in this process and called on an archived request, writing into a buffer (its tokenizing, run, pooling and in-place answer, without IPC, scheduling or waiting), and the runtime with a client that parks at once when it waits (`ClientOptions::wait` = `SpinThenPark` with no spin) instead of the default 50 us spin, through a second server of the same configuration (one client per server: a batching worker holds a partial batch for up to max_delay while another client of the lane sent a request in the last 100 ms, so two clients taking turns on one server would delay each other's first requests).".to_owned(),
            "Side by side: each round sends warm-up requests on all four paths, then the paths take turns in blocks of requests (30; 20 with --quick), so all see the same phases of this VM's speed; per-round p50 and p95, figures and ratios are medians over 3 rounds (1 with --quick): 300 recorded requests per path and round (60 with --quick). Each block starts after a 40 ms pause and one unrecorded request, because ONNX Runtime's pool thread spins for about 25 ms after its last work, on the same CPU in every session: without the pause the first 4-5 requests of every block ran up to 1.8 x slower on either path, which dominated the P95s. Other load on this shared machine moves these figures by more than the differences measured (under a foreign load of a full core, direct ran 2-3 x slower and the ratios swung both ways); the report is meant to run on an otherwise idle machine.".to_owned(),
            "Threads and pinning: both sides use ONNX Runtime's default intra-op pool, one thread per core (2 here): the calling thread plus one pool thread that ONNX Runtime itself pins to the second CPU, in the report process and in the server alike (one thread alone took 6.6-7.5 ms instead of 4.4-5.7 ms here). Nothing else is pinned here, unlike the echo round trips: pinning the server's worker to the second CPU would put both ONNX Runtime threads of the server on one core (in trials the runtime then took 2.3-3.5 x as long as direct). Unpinned, the server's worker runs ONNX Runtime exactly as this process's main thread does for the direct figure. Server and client wait with the default strategy (spin 50 us, then park) unless said otherwise.".to_owned(),
            "Client CPU: user + system time of the client threads (/proc, clock ticks) over the wall time of the runtime's blocks of embedding requests (one client), or of the batched windows (8 clients, summed). The client's blocking pop on its response ring waits in 1 ms slices (to notice a dead producer) and spins 50 us in the first slice only, then parks (each slice used to start with a spin, about 8% of a core per waiting client); on this 2-core machine what the clients use is taken from the server's model thread.".to_owned(),
            "Concurrent clients: 8 threads of this process, each with its own `Client::connect` (8 client slots), send the embedding request back to back for 3 s (1 s with --quick) after 3 unrecorded requests each; req/s = answers / elapsed. Against a server with the backend's default batching (max_batch 8, max_delay_us 500: a partial batch waits up to 500 us for more while other clients are active) and against one with max_batch = 1; the in-process ceiling is this process running `ort` on batches of 8 copies of the sentence (each tokenized on its own, mean-pooled per row) back to back for the same window. The three take turns, medians of 3 rounds (1 with --quick). The sequential rate of the bar is 1e6 / runtime p50 of one client.".to_owned(),
        ],
    });
}

/// The sentence the ONNX figures use.
fn shm_bench_sentence() -> &'static str {
    #[cfg(feature = "onnx")]
    {
        shm_bench::onnx_work::SENTENCE
    }
    #[cfg(not(feature = "onnx"))]
    {
        "one short sentence"
    }
}

#[cfg(feature = "onnx")]
fn onnx_measure(report: &mut Report, quick: bool) {
    use shm_bench::onnx_work::{self, Kind, Path};
    use std::io::Write as _;
    if let Err(why) = onnx_work::check() {
        println!("  skipped: {why}");
        for k in onnx_keys() {
            report.missing(&k, &why);
        }
        return;
    }
    let (rounds, warm, n, block) = if quick {
        (1, 10, 60, 20)
    } else {
        (3, 30, 300, 30)
    };
    for (kind, name) in [(Kind::Embed, "embed"), (Kind::Classify, "classify")] {
        let t = Instant::now();
        print!("  {name}: direct, backend in-process, runtime, runtime with a parking client; {rounds} interleaved round(s) of {n} each ... ");
        let _ = std::io::stdout().flush();
        match onnx_work::compare(kind, rounds, warm, n, block) {
            Ok(c) => {
                let k = |s: &str| format!("onnx_{name}_{s}");
                report.set(&k("p50_us_direct"), c.median(Path::Direct, false));
                report.set(&k("p95_us_direct"), c.median(Path::Direct, true));
                report.set(&k("p50_us_runtime"), c.median(Path::Runtime, false));
                report.set(&k("p95_us_runtime"), c.median(Path::Runtime, true));
                report.set(&k("runtime_over_direct"), c.ratio(Path::Runtime));
                report.set(&k("p50_us_backend_inproc"), c.median(Path::Backend, false));
                report.set(&k("backend_over_direct"), c.ratio(Path::Backend));
                report.set(
                    &k("p50_us_runtime_parking_client"),
                    c.median(Path::RuntimeParkingClient, false),
                );
                report.set(
                    &k("parking_client_over_direct"),
                    c.ratio(Path::RuntimeParkingClient),
                );
                if kind == Kind::Embed {
                    for (key, v) in [
                        "onnx_client_wait_cpu_pct",
                        "onnx_client_wait_cpu_pct_parking",
                    ]
                    .iter()
                    .zip(c.client_cpu_pct)
                    {
                        match v {
                            Some(p) => report.set(key, p),
                            None => report.missing(key, "/proc/thread-self/stat is not readable"),
                        }
                    }
                }
                println!(
                    "p50 direct {} us, runtime {} us ({:.3} x); backend in-process {:.3} x, parking client {:.3} x; p95 direct {} us, runtime {} us; {} tokens, answers within {:.1e} ({:.1} s)",
                    fmt_num(c.median(Path::Direct, false)),
                    fmt_num(c.median(Path::Runtime, false)),
                    c.ratio(Path::Runtime),
                    c.ratio(Path::Backend),
                    c.ratio(Path::RuntimeParkingClient),
                    fmt_num(c.median(Path::Direct, true)),
                    fmt_num(c.median(Path::Runtime, true)),
                    c.tokens,
                    c.max_diff,
                    t.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                println!("failed: {e:#}");
                let mut failed = onnx_latency_keys(name);
                if kind == Kind::Embed {
                    failed.extend(
                        [
                            "onnx_client_wait_cpu_pct",
                            "onnx_client_wait_cpu_pct_parking",
                        ]
                        .map(str::to_owned),
                    );
                }
                for k in &failed {
                    report.missing(k, &format!("measurement failed: {e:#}"));
                }
            }
        }
    }
    let t = Instant::now();
    let window = Duration::from_secs(if quick { 1 } else { 3 });
    print!("  embed: 8 concurrent clients, batching on vs max_batch 1 vs in-process batches, {rounds} round(s) ... ");
    let _ = std::io::stdout().flush();
    match onnx_work::concurrent(rounds, 8, window) {
        Ok(c) => {
            report.set("onnx_embed_batched_rps", c.batched_rps);
            report.set("onnx_embed_unbatched_rps", c.unbatched_rps);
            report.set("onnx_embed_mean_batch", c.mean_batch);
            report.set("onnx_embed_direct_batch8_rps", c.direct_batch_rps);
            match c.clients_cpu_pct {
                Some(p) => report.set("onnx_embed_batched_clients_cpu_pct", p),
                None => report.missing(
                    "onnx_embed_batched_clients_cpu_pct",
                    "/proc/thread-self/stat is not readable",
                ),
            }
            println!(
                "{} req/s batched, {} unbatched, {} texts/s in-process batches of 8; mean batch {:.1}, {:.0}% of requests batched; clients' CPU {} % of a core ({:.1} s)",
                fmt_num(c.batched_rps),
                fmt_num(c.unbatched_rps),
                fmt_num(c.direct_batch_rps),
                c.mean_batch,
                c.batched_share * 100.0,
                c.clients_cpu_pct.map_or("?".to_owned(), fmt_num),
                t.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            println!("failed: {e:#}");
            for k in ONNX_CONCURRENT_KEYS {
                report.missing(k, &format!("measurement failed: {e:#}"));
            }
        }
    }
    match (
        report.get("onnx_embed_batched_rps"),
        report.get("onnx_embed_p50_us_runtime"),
    ) {
        (Some(b), Some(us)) => report.set("onnx_embed_batched_over_sequential", b * us / 1e6),
        _ => report.missing(
            "onnx_embed_batched_over_sequential",
            "needs onnx_embed_batched_rps and onnx_embed_p50_us_runtime",
        ),
    }
}

const GGUF_KEYS: [&str; 14] = [
    "gguf_tok_s_direct",
    "gguf_tok_s_runtime",
    "gguf_ttft_ms_runtime",
    "gguf_ttft_ms_direct",
    "gguf_ttft_ms_server",
    "gguf_tok_s_server",
    "gguf_tok_s_direct_2seq",
    "gguf_direct_2seq_over_direct",
    "gguf_tok_s_2streams",
    "gguf_runtime_over_direct",
    "gguf_2streams_over_runtime",
    "gguf_tok_s_direct_2threads",
    "gguf_direct_2threads_over_direct",
    "gguf_2streams_over_direct_2threads",
];

fn gguf(report: &mut Report, quick: bool) {
    println!("GGUF generation (SmolLM2-135M-Instruct Q4_1, llama.cpp)");
    #[cfg(feature = "gguf")]
    gguf_measure(report, quick);
    #[cfg(not(feature = "gguf"))]
    {
        let _ = quick;
        println!("  built without the gguf feature: skipped");
        for k in GGUF_KEYS {
            report.missing(
                k,
                "built without the gguf feature (cargo run --release -p shm-bench --features onnx,gguf --bin report)",
            );
        }
    }
    let g = |k: &str| report.get(k);
    let over = g("gguf_runtime_over_direct");
    let two = g("gguf_2streams_over_runtime");
    let verdict = |r: Option<f64>, bar: f64, what: &str| match r {
        Some(r) if r >= bar => format!("{r:.3} x {what}: meets"),
        Some(r) => format!("{r:.3} x {what}: **misses**"),
        None => String::new(),
    };
    let tier = match g("gguf_tok_s_runtime") {
        Some(t) if t >= 50.0 => format!("{t:.0} tok/s: meets 10, 25 and 50"),
        Some(t) if t >= 25.0 => format!("{t:.0} tok/s: meets 10 and 25, not 50"),
        Some(t) if t >= 10.0 => format!("{t:.0} tok/s: meets 10 only"),
        Some(t) => format!("{t:.0} tok/s: **misses** 10"),
        None => String::new(),
    };
    report.section(Section {
        title: "GGUF generation".to_owned(),
        rows: vec![
            row("greedy decoding in-process, llama-cpp-2 directly", "gguf_tok_s_direct", "tok/s", "the peer", String::new()),
            row("greedy decoding through the runtime, streamed to a client process", "gguf_tok_s_runtime", "tok/s", ">= 0.97 x direct; seed's tiers 10 / 25 / 50 tok/s", format!("{}; {tier}", verdict(over, 0.97, "direct"))),
            row("decoding inside the server (its usage figures)", "gguf_tok_s_server", "tok/s", "", "the rate before transport to the client".to_owned()),
            row("time to first token through the runtime (prompt of 15 tokens)", "gguf_ttft_ms_runtime", "ms", "", String::new()),
            row("time to first token in-process", "gguf_ttft_ms_direct", "ms", "", String::new()),
            row("time to first token inside the server (admission to first sample)", "gguf_ttft_ms_server", "ms", "", String::new()),
            row("two streams at once (one per worker), total", "gguf_tok_s_2streams", "tok/s", ">= 1.3 x one stream", verdict(two, 1.3, "one stream")),
            row(
                "two sequences per decode step in one context on one thread, in-process, total",
                "gguf_tok_s_direct_2seq",
                "tok/s",
                "llama.cpp's own gain from batching on one core",
                match g("gguf_direct_2seq_over_direct") {
                    Some(x) => format!("{x:.2} x one sequence in-process"),
                    None => "not measured".to_owned(),
                },
            ),
            row(
                "one sequence on two llama.cpp threads, in-process",
                "gguf_tok_s_direct_2threads",
                "tok/s",
                "the other use of the second core",
                match (
                    g("gguf_direct_2threads_over_direct"),
                    g("gguf_2streams_over_direct_2threads"),
                ) {
                    (Some(x), Some(y)) => format!(
                        "{x:.2} x one thread; two streams give {y:.2} x this"
                    ),
                    _ => "not measured".to_owned(),
                },
            ),
        ],
        notes: vec![
            format!("SmolLM2-135M-Instruct (Q4_1) continues the same prompt ({:?}) greedily for up to {} tokens ({} with --quick). Direct: this process loads the model with llama-cpp-2 and decodes one sequence (one llama.cpp thread, a context of 4096 tokens, as large as the server's). Runtime: a server in another process (gguf backend, `workers = 2`, each worker with its own context of `parallel = 2` sequences of `context = 2048` tokens, so 4096, and one llama.cpp thread, the default) streams the tokens to a client here, one stream chunk per token through the shared-memory rings; the client times each chunk's arrival. Rates are decode rates: tokens after the first over the time from the first token to the last; the time to first token covers the prompt; the server's own time to first token (from its usage figures) runs from admitting the request to sampling the first token, so the difference to the client's is transport, queueing and validation. Two streams: two client threads stream the same request at once; the server gives each to its own worker (the least loaded takes a new request), so they decode on the two cores; the total rate counts all tokens after each stream's first over the time from the first token of either to the last token of either. Two sequences in one batch: llama.cpp's gain from decoding two sequences per step on one thread (on this CPU, small; the decode of a 135M model is compute-bound). One sequence on two threads: the same decode as direct with two llama.cpp threads, the alternative to two workers for a machine serving one stream at a time. Direct, runtime, two streams and the in-process variants alternate in 7 rounds (3 with --quick); each figure is the median of its rounds, and each ratio the median of the ratios within a round.", GGUF_PROMPT, 64, 32),
        ],
    });
}

#[cfg(feature = "gguf")]
const GGUF_PROMPT: &str = shm_bench::gguf_work::PROMPT;
#[cfg(not(feature = "gguf"))]
const GGUF_PROMPT: &str = "a story prompt";

#[cfg(feature = "gguf")]
fn gguf_measure(report: &mut Report, quick: bool) {
    use shm_bench::gguf_work::{self, GgufServer};
    let missing = |report: &mut Report, why: &str| {
        for k in GGUF_KEYS {
            report.missing(k, why);
        }
    };
    let path = match gguf_work::smollm2() {
        Ok(p) => p,
        Err(e) => {
            println!("  skipped: {e:#}");
            return missing(report, &format!("{e:#}"));
        }
    };
    let (rounds, n) = if quick { (3, 32) } else { (7, 64) };
    let t = Instant::now();
    type Runs = (
        Vec<gguf_work::Rate>,
        Vec<gguf_work::Rate>,
        Vec<f64>,
        Vec<f64>,
        Vec<gguf_work::Rate>,
    );
    let run = || -> Result<Runs> {
        let server = GgufServer::start(2, 1, 2)?;
        server.stream(8)?;
        let (mut d, mut r, mut two, mut d2, mut dt2) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            // The server's context holds `parallel` sequences: the direct side gets one as large.
            d.push(gguf_work::direct(
                &path,
                n as usize,
                1,
                2 * gguf_work::CONTEXT,
            )?);
            r.push(server.stream(n)?);
            two.push(server.two_streams(n)?);
            d2.push(gguf_work::direct_batched(&path, n as usize, 1, 2)?);
            dt2.push(gguf_work::direct(
                &path,
                n as usize,
                2,
                2 * gguf_work::CONTEXT,
            )?);
        }
        server.stop()?;
        Ok((d, r, two, d2, dt2))
    };
    match run() {
        Ok((d, r, mut two, d2, dt2)) => {
            let med = |v: &[gguf_work::Rate], f: fn(&gguf_work::Rate) -> f64| {
                let mut x: Vec<f64> = v.iter().map(f).collect();
                shm_bench::stats::median(&mut x)
            };
            report.set("gguf_tok_s_direct", med(&d, |x| x.tok_s));
            report.set("gguf_ttft_ms_direct", med(&d, |x| x.ttft_ms));
            report.set("gguf_tok_s_runtime", med(&r, |x| x.tok_s));
            report.set("gguf_ttft_ms_runtime", med(&r, |x| x.ttft_ms));
            report.set(
                "gguf_ttft_ms_server",
                med(&r, |x| x.server_ttft_ms.unwrap_or(f64::NAN)),
            );
            report.set(
                "gguf_tok_s_server",
                med(&r, |x| x.server_tok_s.unwrap_or(f64::NAN)),
            );
            report.set("gguf_tok_s_2streams", shm_bench::stats::median(&mut two));
            let (a, b, c) = (
                med(&r, |x| x.tok_s),
                med(&d, |x| x.tok_s),
                report.get("gguf_tok_s_2streams").unwrap_or(0.0),
            );
            // Ratios of the runs made side by side in each round, then their median: the VM's
            // speed drifts between rounds by more than the differences measured.
            let mut over: Vec<f64> = r.iter().zip(&d).map(|(r, d)| r.tok_s / d.tok_s).collect();
            let mut gain: Vec<f64> = two.iter().zip(&r).map(|(t, r)| t / r.tok_s).collect();
            report.set(
                "gguf_runtime_over_direct",
                shm_bench::stats::median(&mut over),
            );
            report.set(
                "gguf_2streams_over_runtime",
                shm_bench::stats::median(&mut gain),
            );
            // llama.cpp's own gain from decoding two sequences per step, in-process: the ceiling
            // of continuous batching on this machine.
            let mut ceiling: Vec<f64> = d2.iter().zip(&d).map(|(t, d)| t / d.tok_s).collect();
            report.set(
                "gguf_tok_s_direct_2seq",
                shm_bench::stats::median(&mut d2.clone()),
            );
            report.set(
                "gguf_direct_2seq_over_direct",
                shm_bench::stats::median(&mut ceiling),
            );
            // One sequence on both cores (two llama.cpp threads): the other way to spend the
            // second core, against which the two streams' total is also set.
            let mut t2: Vec<f64> = dt2.iter().zip(&d).map(|(t, d)| t.tok_s / d.tok_s).collect();
            let mut two_over_t2: Vec<f64> =
                two.iter().zip(&dt2).map(|(t, d)| t / d.tok_s).collect();
            report.set("gguf_tok_s_direct_2threads", med(&dt2, |x| x.tok_s));
            report.set(
                "gguf_direct_2threads_over_direct",
                shm_bench::stats::median(&mut t2),
            );
            report.set(
                "gguf_2streams_over_direct_2threads",
                shm_bench::stats::median(&mut two_over_t2),
            );
            println!(
                "  direct {b:.1} tok/s, runtime {a:.1} tok/s ({:.3} x; inside the server {:.1}), two streams {c:.1} tok/s ({:.2} x), in-process two sequences in one batch {:.1} tok/s ({:.2} x direct), one sequence on two threads {:.1} tok/s ({:.2} x direct; two streams {:.2} x that) ({:.1} s)",
                report.get("gguf_runtime_over_direct").unwrap_or(f64::NAN),
                report.get("gguf_tok_s_server").unwrap_or(f64::NAN),
                report.get("gguf_2streams_over_runtime").unwrap_or(f64::NAN),
                report.get("gguf_tok_s_direct_2seq").unwrap_or(f64::NAN),
                report.get("gguf_direct_2seq_over_direct").unwrap_or(f64::NAN),
                report.get("gguf_tok_s_direct_2threads").unwrap_or(f64::NAN),
                report.get("gguf_direct_2threads_over_direct").unwrap_or(f64::NAN),
                report.get("gguf_2streams_over_direct_2threads").unwrap_or(f64::NAN),
                t.elapsed().as_secs_f64()
            );
        }
        Err(e) => {
            println!("  failed: {e:#}");
            missing(report, &format!("measurement failed: {e:#}"));
        }
    }
}

fn main() -> Result<()> {
    child::dispatch();
    let args = parse_args()?;
    let started = Instant::now();
    println!(
        "shm-runtime report ({}), writing to {}",
        if args.quick { "quick" } else { "full" },
        args.out.display()
    );
    let mut report = Report::new();
    let run = |part: &str| args.only.is_empty() || args.only.iter().any(|p| p == part);
    if run("rings") {
        rings(&mut report, args.quick);
    }
    if run("runtime") {
        runtime(&mut report, args.quick);
    }
    if run("seed") {
        seed(&mut report, args.quick);
    }
    if run("onnx") {
        onnx(&mut report, args.quick);
    }
    if run("gguf") {
        gguf(&mut report, args.quick);
    }
    report.set("report_seconds", started.elapsed().as_secs_f64());
    report.write(&args.out)?;
    println!(
        "done in {:.0} s: {}/report.md, report.json, latency.png",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
