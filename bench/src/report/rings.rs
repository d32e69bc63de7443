//! The rings section: shm-ring's SPSC and MPMC rings and its slab pool, on their own.

use super::figures::{measure, median_of, median_p, row};
use super::{at_least, at_most, fmt_num, Report, Section};
use crate::ring_work;

pub(super) fn rings(report: &mut Report, quick: bool) {
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
        report.set("spsc_over_floor_p50", crate::stats::median(&mut ratios));
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
