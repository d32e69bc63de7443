//! Classifies or embeds texts through a running service and prints the answers with their
//! round-trip latencies.
//!
//! ```text
//! infer SERVICE MODEL classify "a text" ["another text" ...] [--repeat N] [--batch] [--json]
//! infer SERVICE MODEL embed "a text" ["another text" ...] [--repeat N] [--batch] [--json]
//! ```
//!
//! `classify` prints each text's labels and scores; `embed` prints each embedding's size and first
//! values, then the cosine similarity of every pair of texts. Each text is one request, unless
//! `--batch` sends them all in one. With `--repeat N`, the requests are sent N more times and the
//! latency percentiles are printed. `--json` prints all of it as one JSON document.

#[path = "support.rs"]
mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;
use shm_runtime::{Classification, Client};

/// Classifies or embeds texts through a running service, with round-trip latencies.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Service name.
    service: String,
    /// Model to ask (a `classify` or `embed` model).
    model: String,
    /// What to ask of it.
    task: Task,
    /// The texts.
    #[arg(required = true)]
    texts: Vec<String>,
    /// Send the requests this many more times and print latency percentiles.
    #[arg(long, value_name = "N", default_value_t = 0)]
    repeat: usize,
    /// Send all texts in one request (the server runs them as a batch) instead of one each.
    #[arg(long)]
    batch: bool,
    /// Print the answers, similarities and latencies as one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Labels with scores.
    Classify,
    /// A vector per text.
    Embed,
}

/// One text's answer.
enum Answer {
    Labels(Classification),
    Embedding(Vec<f32>),
}

/// Asks `model` about `texts` in one request.
fn ask(client: &Client, model: &str, task: Task, texts: &[&str]) -> Result<Vec<Answer>> {
    let answers = match task {
        Task::Classify => client
            .classify(model, texts)?
            .into_iter()
            .map(Answer::Labels)
            .collect(),
        Task::Embed => client
            .embed(model, texts)?
            .iter()
            .map(|row| Answer::Embedding(row.to_vec()))
            .collect(),
    };
    Ok(answers)
}

fn main() -> ExitCode {
    support::main_with(run)
}

fn run(args: Args) -> Result<()> {
    let client = Client::connect(&args.service)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    // The requests: every text alone, or all of them together.
    let requests: Vec<&[&str]> = if args.batch {
        vec![&texts[..]]
    } else {
        texts.chunks(1).collect()
    };
    let mut answers = Vec::new();
    for group in &requests {
        let t = Instant::now();
        let got = ask(&client, &args.model, args.task, group)
            .with_context(|| format!("asking {:?} about {group:?}", args.model))?;
        let took = t.elapsed();
        answers.extend(got.into_iter().map(|a| (took, a)));
    }
    let embeddings: Vec<&[f32]> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Answer::Embedding(v) => Some(&v[..]),
            Answer::Labels(_) => None,
        })
        .collect();
    let mut similarities = Vec::new();
    for i in 0..embeddings.len() {
        for j in i + 1..embeddings.len() {
            similarities.push((i, j, cosine(embeddings[i], embeddings[j])));
        }
    }
    let mut lat = Vec::with_capacity(args.repeat * requests.len());
    for _ in 0..args.repeat {
        for group in &requests {
            let t = Instant::now();
            ask(&client, &args.model, args.task, group)?;
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    if args.json {
        let results: Vec<_> = texts
            .iter()
            .zip(&answers)
            .map(|(text, (took, answer))| {
                let mut r = json!({ "text": text, "latency_us": us(*took) });
                match answer {
                    Answer::Labels(c) => {
                        r["label"] = json!(c.label);
                        r["score"] = json!(c.score);
                        r["scores"] = c
                            .scores
                            .iter()
                            .map(|(label, score)| json!({ "label": label, "score": score }))
                            .collect();
                    }
                    Answer::Embedding(v) => r["embedding"] = json!(v),
                }
                r
            })
            .collect();
        let mut doc = json!({
            "model": args.model,
            "results": results,
            "similarities": similarities
                .iter()
                .map(|&(a, b, cosine)| json!({ "a": a, "b": b, "cosine": cosine }))
                .collect::<Vec<_>>(),
        });
        if !lat.is_empty() {
            doc["latency"] = json!({
                "requests": lat.len(),
                "p50_us": us(p(0.50)),
                "p95_us": us(p(0.95)),
                "p99_us": us(p(0.99)),
            });
        }
        println!("{doc:#}");
        return Ok(());
    }
    for (text, (took, answer)) in texts.iter().zip(&answers) {
        match answer {
            Answer::Labels(c) => {
                let shown: Vec<String> = c
                    .scores
                    .iter()
                    .map(|(label, score)| format!("{label} {score:.3}"))
                    .collect();
                println!("{:>9}  {text:?} -> {}", fmt_us(*took), shown.join(", "));
            }
            Answer::Embedding(v) => {
                let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
                println!(
                    "{:>9}  {text:?} -> {} floats [{}, ...]",
                    fmt_us(*took),
                    v.len(),
                    head.join(", ")
                );
            }
        }
    }
    if !similarities.is_empty() {
        println!("cosine similarity:");
        for (i, j, cosine) in similarities {
            println!("  {cosine:.3}  {:?} ~ {:?}", texts[i], texts[j]);
        }
    }
    if !lat.is_empty() {
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

fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

fn fmt_us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}
