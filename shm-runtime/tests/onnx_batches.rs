//! Several texts in one request through the ONNX backend (real ONNX Runtime, the MiniLM models
//! the setup fetches): the batch's rows equal each text sent alone, in order, across sub-batches
//! of `max_batch` rows, and a bad text among them gets an error naming it.
//!
//! Needs ONNX Runtime and the models: `scripts/setup.sh` fetches them. A test whose library or
//! model is missing fails and says so.
#![cfg(feature = "onnx")]

use std::path::PathBuf;

use shm_runtime::backend::onnx::environment;
use shm_runtime::config::{cache_dir, OptionValue};
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig};
use shm_test_support::unique_name;

const SETUP: &str = "run scripts/setup.sh (it fetches ONNX Runtime and the models)";

fn cached(rel: &str) -> PathBuf {
    let p = cache_dir().join(rel);
    assert!(p.is_file(), "{} is missing: {SETUP}", p.display());
    p
}

/// MiniLM as an embedder and the MiniLM sentiment classifier, at most `max_batch` rows a run.
fn start(tag: &str, max_batch: i64) -> (Server, Client) {
    environment().unwrap_or_else(|e| panic!("{e}"));
    let mut models = Vec::new();
    for (name, task, dir) in [
        ("minilm", "embed", "models/minilm"),
        ("sentiment", "classify", "models/minilm-sentiment"),
    ] {
        cached(&format!("{dir}/tokenizer.json"));
        let mut m = ModelConfig::new(name, "onnx");
        m.task = Some(task.into());
        m.path = Some(cached(&format!("{dir}/model.onnx")));
        m.options
            .insert("max_batch".into(), OptionValue::Integer(max_batch));
        models.push(m);
    }
    let svc = unique_name(tag);
    let server = Server::start(ServerConfig::new(&svc, models)).expect("server starts");
    let client = Client::connect(&svc).unwrap();
    (server, client)
}

/// Sentences of different lengths (so rows are padded differently alone and together).
fn sentences(n: usize) -> Vec<String> {
    let words = [
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "rain",
        "falls", "on", "quiet", "streets", "and", "markets", "close", "early", "today",
    ];
    (0..n)
        .map(|i| {
            let len = 2 + (i * 7) % 15;
            (0..len)
                .map(|k| words[(i * 3 + k * 5) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_batch_of_texts_equals_each_text_alone_in_order() {
    // 37 rows in runs of 8: five runs, the last one short.
    let (_server, client) = start("onnx-batch", 8);
    let texts = sentences(37);
    let batch = client.embed("minilm", &texts).unwrap();
    assert_eq!((batch.len(), batch.dim()), (37, 384));
    for (i, t) in texts.iter().enumerate() {
        let alone = client.embed("minilm", &[t]).unwrap();
        let d = max_diff(batch.row(i), alone.row(0));
        // Alone and in a batch, a row is padded to different lengths (masked out): the same
        // numbers up to float rounding.
        assert!(d < 1e-4, "row {i} differs from its text alone by {d}");
    }

    let labels = client.classify("sentiment", &texts).unwrap();
    assert_eq!(labels.len(), 37);
    for (i, t) in texts.iter().enumerate() {
        let alone = &client.classify("sentiment", &[t]).unwrap()[0];
        assert_eq!(labels[i].label, alone.label, "row {i}");
        assert!((labels[i].score - alone.score).abs() < 1e-4, "row {i}");
        assert_eq!(labels[i].scores.len(), alone.scores.len());
    }
}

#[test]
fn a_bad_text_among_many_is_named() {
    let (_server, client) = start("onnx-batch-bad", 4);
    let texts = ["fine", "also fine", "   ", "fine again"];
    match client.embed("minilm", &texts) {
        Err(Error::InvalidRequest(m)) => assert!(m.contains("text 2"), "{m}"),
        other => panic!(
            "wanted the empty text named, got {:?}",
            other.map(|e| e.len())
        ),
    }
    // The next batch is served.
    assert_eq!(client.embed("minilm", &texts[..2]).unwrap().len(), 2);
}
