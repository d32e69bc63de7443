//! The performance report (BENCH.md): `cargo run --release -p shm-bench --bin report -- [--quick]
//! [--out DIR]`. Writes DIR/report.json, DIR/report.md and DIR/latency.png; prints progress.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use shm_bench::report::{at_least, at_most, fmt_num, Report, Row, Section};
use shm_bench::{child, ring_work};

struct Args {
    quick: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("report"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--out" => match it.next() {
                Some(d) => args.out = PathBuf::from(d),
                None => bail!("--out needs a directory"),
            },
            "-h" | "--help" => {
                println!("usage: report [--quick] [--out DIR]   (default DIR: ./report)");
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
    let mut floor = None;
    measure(
        report,
        "floor_pingpong_oneway_ns",
        "cache-line ping-pong floor (threads)",
        || {
            let p = ring_work::floor_pingpong(rounds)?;
            floor = Some(p);
            Ok(p.p50)
        },
    );
    if let Some(p) = floor {
        report.set("floor_pingpong_oneway_ns_p99", p.p99);
        report.latency("floor (1 line)", p.scaled(0.5));
    }
    let mut spsc = None;
    measure(
        report,
        "spsc_oneway_ns_p50",
        "SPSC ping-pong, two processes",
        || {
            let p = ring_work::spsc_pingpong(rounds)?;
            spsc = Some(p);
            Ok(p.p50)
        },
    );
    match spsc {
        Some(p) => {
            report.set("spsc_oneway_ns_p99", p.p99);
            report.set("spsc_oneway_ns_p999", p.p999);
            report.latency("spsc ring", p.scaled(0.5));
        }
        None => report.missing("spsc_oneway_ns_p99", "the SPSC ping-pong failed"),
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

    let floor50 = report.get("floor_pingpong_oneway_ns");
    let spsc_ratio = report
        .get("spsc_oneway_ns_p50")
        .zip(floor50)
        .map(|(s, f)| s / f);
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
            "Descriptors are 16 bytes (`[u64; 2]`). Ping-pong: two processes pinned to different cores, each busy-polling its inbound ring; every round trip is timed on its own (one clock read per round) and halved. The floor is the same loop on one 128-byte-aligned atomic between two pinned threads, read with the same clock, so the ratio compares like with like.".to_owned(),
            "Throughput: a producer process pinned to one core, the consumer (this process) on the other; every descriptor carries its sequence number and the consumer checks the order, so nothing can be skipped; each figure is the median of 3 runs. MPMC with 2 producers runs 3 busy processes on the available cores; when there are fewer cores than processes nothing is pinned and the figure includes the kernel's time slicing.".to_owned(),
            "Pool: `Pool::loan(owner, 200)` then drop (release) on one thread, in batches of 20,000 pairs; the figure is the median batch. Each pair is 4 atomic read-modify-writes: quota, free-list pop, free-list push, quota.".to_owned(),
        ],
    });
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
    rings(&mut report, args.quick);
    report.set("report_seconds", started.elapsed().as_secs_f64());
    report.write(&args.out)?;
    println!(
        "done in {:.0} s: {}/report.md, report.json, latency.png",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
