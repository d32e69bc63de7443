//! Classifies or embeds texts through a running service and prints the answers with their
//! round-trip latencies.
//!
//! ```text
//! infer SERVICE MODEL classify "a text" ["another text" ...] [--repeat N]
//! infer SERVICE MODEL embed "a text" ["another text" ...] [--repeat N]
//! ```
//!
//! `classify` prints each text's labels and scores; `embed` prints each embedding's size and first
//! values, then the cosine similarity of every pair of texts. With `--repeat N`, each text is sent N
//! more times and the latency percentiles are printed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shm_runtime::protocol::{ArchivedBody, Input, Params, Request, Task};
use shm_runtime::Client;

const USAGE: &str = "usage: infer SERVICE MODEL classify|embed TEXT... [--repeat N]";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let service = args.next().context(USAGE)?;
    let model = args.next().context(USAGE)?;
    let task = match args.next().context(USAGE)?.as_str() {
        "classify" => Task::Classify,
        "embed" => Task::Embed,
        other => bail!("unknown task {other:?}; {USAGE}"),
    };
    let (mut texts, mut repeat) = (Vec::new(), 0usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => repeat = args.next().context("--repeat N")?.parse()?,
            _ => texts.push(a),
        }
    }
    if texts.is_empty() {
        bail!("no texts; {USAGE}");
    }
    let client = Client::connect(&service)?;
    let request = |text: &str| Request {
        id: 0,
        model: model.clone(),
        task,
        input: Input::Text(text.to_owned()),
        params: Params::default(),
    };
    let mut embeddings: Vec<Vec<f32>> = Vec::new();
    for text in &texts {
        let t = Instant::now();
        let view = client.infer(&request(text))?;
        let took = t.elapsed();
        match &view.response()?.body {
            ArchivedBody::Classification(scores) => {
                let shown: Vec<String> = scores
                    .iter()
                    .map(|s| format!("{} {:.3}", s.label.as_str(), s.score.to_native()))
                    .collect();
                println!("{:>9}  {text:?} -> {}", fmt_us(took), shown.join(", "));
            }
            ArchivedBody::Embedding(v) => {
                let v: Vec<f32> = v.iter().map(|x| x.to_native()).collect();
                let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
                println!(
                    "{:>9}  {text:?} -> {} floats [{}, ...]",
                    fmt_us(took),
                    v.len(),
                    head.join(", ")
                );
                embeddings.push(v);
            }
            ArchivedBody::Error(e) => {
                bail!("{text:?}: {:?}: {}", e.code, e.message.as_str())
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
    if embeddings.len() > 1 {
        println!("cosine similarity:");
        for i in 0..embeddings.len() {
            for j in i + 1..embeddings.len() {
                println!(
                    "  {:.3}  {:?} ~ {:?}",
                    cosine(&embeddings[i], &embeddings[j]),
                    texts[i],
                    texts[j]
                );
            }
        }
    }
    if repeat > 0 {
        let mut lat = Vec::with_capacity(repeat * texts.len());
        for _ in 0..repeat {
            for text in &texts {
                let req = request(text);
                let t = Instant::now();
                let view = client.infer(&req)?;
                lat.push(t.elapsed());
                drop(view);
            }
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        println!(
            "{} requests: p50 {}  p95 {}  p99 {}",
            lat.len(),
            fmt_us(p(0.50)),
            fmt_us(p(0.95)),
            fmt_us(p(0.99))
        );
    }
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

fn fmt_us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}
