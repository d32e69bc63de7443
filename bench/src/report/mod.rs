//! The performance report (BENCH.md): `cargo run --release -p shm-bench --bin report -- [--quick]
//! [--out DIR]`. Writes DIR/report.json, DIR/report.md and DIR/latency.png; prints progress.
//!
//! [`main`] runs the sections the command line asks for, in order, each adding its figures and a
//! table to one [`Report`], which [`Report::write`] turns into the three files:
//!
//! | module | section |
//! |---|---|
//! | `rings` | shm-ring's rings and pool on their own |
//! | `runtime` | the runtime's round trips, throughput, idle CPU and internal costs |
//! | `peers` | the runtime's round trip beside other transports ([`shm_peers`]) |
//! | `seed` | the seed's microbenchmarks beside this project's path |
//! | `onnx` | ONNX models, direct and through the runtime (feature `onnx`) |
//! | `gguf` | GGUF generation, direct and through the runtime (feature `gguf`) |
//!
//! `document` holds the report itself (figures, tables, the Markdown and JSON writers) and `plot`
//! its latency chart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};

mod document;
mod figures;
mod gguf;
mod onnx;
mod peers;
mod plot;
mod python;
mod rings;
mod runtime;
mod seed;

pub use document::{at_least, at_most, fmt_num, Report, Row, Section};

struct Args {
    quick: bool,
    out: PathBuf,
    /// Parts to run (all when empty).
    only: Vec<String>,
}

/// The report's parts, in the order they run.
const PARTS: [&str; 6] = ["rings", "runtime", "seed", "onnx", "gguf", "python"];

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

/// Runs the report: parses the command line, measures the parts asked for and writes the report.
///
/// # Errors
///
/// When the command line is wrong or the report cannot be written (a figure that fails to measure
/// is recorded as missing, not an error).
pub fn main() -> Result<()> {
    crate::child::dispatch();
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
        rings::rings(&mut report, args.quick);
    }
    if run("runtime") {
        runtime::runtime(&mut report, args.quick);
    }
    if run("seed") {
        seed::seed(&mut report, args.quick);
    }
    if run("onnx") {
        onnx::onnx(&mut report, args.quick);
    }
    if run("gguf") {
        gguf::gguf(&mut report, args.quick);
    }
    if run("python") {
        python::python(&mut report, args.quick);
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
