//! The Python section: the `shm_runtime` package's echo round trip beside the Rust client's,
//! `multiprocessing` pipes and the HTTP gateway, and a MiniLM embedding beside `onnxruntime`
//! called in-process from Python.

use super::figures::{median_of_values, row};
use super::{at_least, at_most, fmt_num, Report, Section};
use crate::python_work;

/// Every key of the section.
const KEYS: [&str; 9] = [
    "py_rtt_us_p50",
    "py_rtt_us_p99",
    "py_rtt_us_rust_p50",
    "py_rtt_us_mp_pipe_p50",
    "py_rtt_us_http_p50",
    "py_rtt_mp_pipe_over_py",
    "py_embed_p50_us",
    "py_embed_p50_us_direct",
    "py_embed_over_direct",
];

pub(super) fn python(report: &mut Report, quick: bool) {
    println!("Python package (shm_runtime; bench/python/py_bench.py)");
    match python_work::python() {
        Ok(py) => measure(report, &py, quick),
        Err(e) => {
            println!("  {e:#}");
            for k in KEYS {
                report.missing(k, &format!("{e:#}"));
            }
        }
    }
    section(report);
}

fn measure(report: &mut Report, py: &std::path::Path, quick: bool) {
    let rounds = if quick { 1 } else { 3 };
    let (n, http_n, embed_n) = if quick {
        (5_000, 2_000, 60)
    } else {
        (20_000, 5_000, 200)
    };
    let mut rtt: Vec<(f64, f64, f64)> = Vec::new();
    let (mut pipe, mut http, mut embed) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed: Vec<(&[&str], String)> = Vec::new();
    print!("  {rounds} interleaved round(s) ... ");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        match python_work::rtt_round(py, n) {
            Ok(r) => rtt.push(r),
            Err(e) => failed.push((&KEYS[..3], format!("{e:#}"))),
        }
        match python_work::pipe_round(py, n) {
            Ok(r) => pipe.push(r),
            Err(e) => failed.push((&KEYS[3..4], format!("{e:#}"))),
        }
        match python_work::http_round(py, http_n) {
            Ok(r) => http.push(r),
            Err(e) => failed.push((&KEYS[4..5], format!("{e:#}"))),
        }
        #[cfg(feature = "onnx")]
        match python_work::embed_round(py, embed_n) {
            Ok(r) => embed.push(r),
            Err(e) => failed.push((&KEYS[6..9], format!("{e:#}"))),
        }
    }
    println!("{:.1} s", t.elapsed().as_secs_f64());
    #[cfg(not(feature = "onnx"))]
    {
        let _ = (&mut embed, embed_n);
        failed.push((
            &KEYS[6..9],
            "built without the onnx feature (cargo run --release -p shm-bench --features onnx --bin report)".to_owned(),
        ));
    }
    for (keys, why) in &failed {
        println!("  failed: {why}");
        for k in *keys {
            report.missing(k, why);
        }
    }
    let mut set = |key: &str, values: Vec<f64>| {
        if let Some(v) = median_of_values(values) {
            report.set(key, v);
        }
    };
    set("py_rtt_us_rust_p50", rtt.iter().map(|r| r.0).collect());
    set("py_rtt_us_p50", rtt.iter().map(|r| r.1).collect());
    set("py_rtt_us_p99", rtt.iter().map(|r| r.2).collect());
    set("py_rtt_us_mp_pipe_p50", pipe.clone());
    set("py_rtt_us_http_p50", http);
    set(
        "py_embed_p50_us",
        embed.iter().map(|r: &(f64, f64)| r.0).collect(),
    );
    set(
        "py_embed_p50_us_direct",
        embed.iter().map(|r| r.1).collect(),
    );
    set(
        "py_embed_over_direct",
        embed.iter().map(|r| r.0 / r.1).collect(),
    );
    if let (Some(p), Some(ours)) = (
        report.get("py_rtt_us_mp_pipe_p50"),
        report.get("py_rtt_us_p50"),
    ) {
        report.set("py_rtt_mp_pipe_over_py", p / ours);
    }
    for k in KEYS {
        if let Some(v) = report.get(k) {
            println!("  {k}: {}", fmt_num(v));
        }
    }
}

fn section(report: &mut Report) {
    let g = |k: &str| report.get(k);
    let rust_plus_3 = g("py_rtt_us_rust_p50").map(|r| r + 3.0);
    let rows = vec![
        row(
            "Echo round trip through the Python package (`Client.generate`), p50",
            "py_rtt_us_p50",
            "us",
            "<= the Rust client's p50 + 3 us, same rounds; >= 10 x faster than a multiprocessing pipe",
            match (g("py_rtt_us_p50"), rust_plus_3) {
                (Some(_), Some(bound)) => format!(
                    "{}; {}",
                    at_most(g("py_rtt_us_p50"), bound),
                    at_least(g("py_rtt_mp_pipe_over_py"), 10.0)
                ),
                _ => "not measured".to_owned(),
            },
        ),
        row("The same, p99", "py_rtt_us_p99", "us", "", String::new()),
        row(
            "The Rust client on the same server in the same rounds (`BusySpin`), p50",
            "py_rtt_us_rust_p50",
            "us",
            "the floor",
            String::new(),
        ),
        row(
            "The same 64 bytes through a `multiprocessing` Pipe to another process and back, p50",
            "py_rtt_us_mp_pipe_p50",
            "us",
            "the peer",
            match g("py_rtt_mp_pipe_over_py") {
                Some(r) => format!("{r:.1} x the package's round trip"),
                None => String::new(),
            },
        ),
        row(
            "The echo completion through the HTTP gateway (`http.client`, keep-alive, JSON), p50",
            "py_rtt_us_http_p50",
            "us",
            "the peer",
            match (g("py_rtt_us_http_p50"), g("py_rtt_us_p50")) {
                (Some(h), Some(p)) => format!("{:.1} x the package's round trip", h / p),
                _ => String::new(),
            },
        ),
        row(
            "MiniLM embedding of one sentence through the package (to a numpy view), p50",
            "py_embed_p50_us",
            "us",
            "<= 1.10 x onnxruntime in-process",
            match g("py_embed_over_direct") {
                Some(r) if r <= 1.10 => format!("{r:.3} x direct: meets"),
                Some(r) => format!("{r:.3} x direct: **misses**"),
                None => "not measured".to_owned(),
            },
        ),
        row(
            "The same with `onnxruntime` and `tokenizers` in the Python process, p50",
            "py_embed_p50_us_direct",
            "us",
            "the peer",
            String::new(),
        ),
    ];
    report.section(Section {
        title: "Python package".to_owned(),
        rows,
        notes: vec![
            "Each round starts its own servers and runs `bench/python/py_bench.py` with the project's venv Python (scripts/setup.sh installs the package there) once per part, the parts taking turns: (1) a busy-polling echo server (as `rtt_ns_shm_busy`), first the Rust client (`Client::infer`, `BusySpin`) and then the package's `Client.generate` of the same 64-byte prompt (its default wait: spin, then park), both pinned to the first CPU; (2) the same 64 bytes through a `multiprocessing.Pipe` (`send_bytes` / `recv_bytes`) to a child process that sends them back; (3) the echo completion through the HTTP gateway onto an echo server (the gateway's defaults, as `gateway_rtt`), with `http.client` on one keep-alive connection, the JSON answer decoded; (4) a MiniLM server (the onnx backend's defaults) and, in the same Python process, `onnxruntime` on the same model file with the same session options (graph optimisation all, default thread pools), the same `tokenizer.json` with the server's settings (truncation at 256, no padding), mean pooling and L2 normalisation in numpy. The two embedding paths are first checked equal within 1e-4, then take turns in blocks of 20 after a 40 ms pause (ONNX Runtime's pool threads spin for about 25 ms after their last work). Round trips: 20,000 recorded per part and round (HTTP 5,000, embeddings 200) after a tenth as many unrecorded; figures are medians over 3 rounds (1 with --quick; 5,000, 2,000 and 60 recorded).".to_owned(),
        ],
    });
}
