//! The GGUF section: SmolLM2 generation with llama.cpp, direct against served by the runtime.

use super::figures::row;
use super::{Report, Section};

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

pub(super) fn gguf(report: &mut Report, quick: bool) {
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
const GGUF_PROMPT: &str = crate::gguf_work::PROMPT;
#[cfg(not(feature = "gguf"))]
const GGUF_PROMPT: &str = "a story prompt";

#[cfg(feature = "gguf")]
fn gguf_measure(report: &mut Report, quick: bool) {
    use crate::gguf_work::{self, GgufServer};
    use anyhow::Result;
    use std::time::Instant;
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
                crate::stats::median(&mut x)
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
            report.set("gguf_tok_s_2streams", crate::stats::median(&mut two));
            let (a, b, c) = (
                med(&r, |x| x.tok_s),
                med(&d, |x| x.tok_s),
                report.get("gguf_tok_s_2streams").unwrap_or(0.0),
            );
            // Ratios of the runs made side by side in each round, then their median: the VM's
            // speed drifts between rounds by more than the differences measured.
            let mut over: Vec<f64> = r.iter().zip(&d).map(|(r, d)| r.tok_s / d.tok_s).collect();
            let mut gain: Vec<f64> = two.iter().zip(&r).map(|(t, r)| t / r.tok_s).collect();
            report.set("gguf_runtime_over_direct", crate::stats::median(&mut over));
            report.set(
                "gguf_2streams_over_runtime",
                crate::stats::median(&mut gain),
            );
            // llama.cpp's own gain from decoding two sequences per step, in-process: the ceiling
            // of continuous batching on this machine.
            let mut ceiling: Vec<f64> = d2.iter().zip(&d).map(|(t, d)| t / d.tok_s).collect();
            report.set(
                "gguf_tok_s_direct_2seq",
                crate::stats::median(&mut d2.clone()),
            );
            report.set(
                "gguf_direct_2seq_over_direct",
                crate::stats::median(&mut ceiling),
            );
            // One sequence on both cores (two llama.cpp threads): the other way to spend the
            // second core, against which the two streams' total is also set.
            let mut t2: Vec<f64> = dt2.iter().zip(&d).map(|(t, d)| t.tok_s / d.tok_s).collect();
            let mut two_over_t2: Vec<f64> =
                two.iter().zip(&dt2).map(|(t, d)| t / d.tok_s).collect();
            report.set("gguf_tok_s_direct_2threads", med(&dt2, |x| x.tok_s));
            report.set(
                "gguf_direct_2threads_over_direct",
                crate::stats::median(&mut t2),
            );
            report.set(
                "gguf_2streams_over_direct_2threads",
                crate::stats::median(&mut two_over_t2),
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
