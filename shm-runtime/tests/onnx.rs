//! The ONNX backend with real ONNX Runtime and real model files: answers through the runtime
//! equal direct in-process `ort` runs, batching keeps each client's row, the real MiniLM models
//! behave, and bad input gets typed errors.
//!
//! Needs ONNX Runtime and the models: `scripts/setup.sh` fetches and builds them (the tiny models
//! are in the repository under `models/tiny`). A test whose library or model is missing fails and
//! says so.
#![cfg(feature = "onnx")]

use std::path::PathBuf;
use std::sync::{Arc, Barrier};

use ort::session::Session;
use ort::value::TensorRef;
use shm_runtime::backend::onnx::environment;
use shm_runtime::config::cache_dir;
use shm_runtime::protocol::{ArchivedBody, Input, Request, Task, Tensor, TensorData};
use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
use shm_test_support::runtime::{request, Want};
use shm_test_support::{say, unique_name, ChildTask};

const SETUP: &str = "run scripts/setup.sh (it fetches ONNX Runtime and the models)";

fn tiny(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tiny")
        .join(file)
}

fn cached(rel: &str) -> PathBuf {
    let p = cache_dir().join(rel);
    assert!(p.is_file(), "{} is missing: {SETUP}", p.display());
    p
}

fn model(
    name: &str,
    task: &str,
    path: PathBuf,
    options: &[(&str, shm_runtime::config::OptionValue)],
) -> ModelConfig {
    let mut m = ModelConfig::new(name, "onnx");
    m.task = Some(task.into());
    m.path = Some(path);
    for (k, v) in options {
        m.options.insert((*k).into(), v.clone());
    }
    m
}

fn tiny_models() -> Vec<ModelConfig> {
    vec![
        model(
            "embed",
            "embed",
            tiny("embed.onnx"),
            &[("max_length", shm_runtime::config::OptionValue::Integer(64))],
        ),
        model(
            "classify",
            "classify",
            tiny("classify.onnx"),
            &[
                ("max_length", shm_runtime::config::OptionValue::Integer(64)),
                (
                    "labels_file",
                    shm_runtime::config::OptionValue::String("classify.labels.txt".into()),
                ),
            ],
        ),
        model("affine", "tensors", tiny("affine.onnx"), &[]),
    ]
}

fn start(tag: &str, models: Vec<ModelConfig>) -> (Server, String) {
    environment().unwrap_or_else(|e| panic!("{e}"));
    let svc = unique_name(tag);
    let server = Server::start(ServerConfig::new(&svc, models)).expect("server starts");
    (server, svc)
}

/// A direct, in-process run of a BERT-shaped model on one text, as the backend does it.
struct Direct {
    session: Session,
    tokenizer: tokenizers::Tokenizer,
}

impl Direct {
    fn new(model: &PathBuf, tokenizer: &PathBuf, max_len: usize) -> Direct {
        let env = environment().unwrap_or_else(|e| panic!("{e}"));
        let session = Session::builder(env)
            .unwrap()
            .commit_from_file(model)
            .unwrap();
        let mut tokenizer = tokenizers::Tokenizer::from_file(tokenizer).unwrap();
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .unwrap();
        // Some tokenizer.json files pad every text to a fixed length; one text needs no padding.
        tokenizer.with_padding(None);
        Direct { session, tokenizer }
    }

    /// The named output for `text`, with its shape, and the token count.
    fn run(&mut self, text: &str, output: &str) -> (Vec<i64>, Vec<f32>, usize) {
        let enc = self.tokenizer.encode(text, true).unwrap();
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        let n = ids.len();
        let mask = vec![1i64; n];
        let types = vec![0i64; n];
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        let names: Vec<String> = self
            .session
            .inputs()
            .iter()
            .map(|i| i.name().to_owned())
            .collect();
        for nm in names {
            let data = match nm.as_str() {
                "input_ids" => &ids,
                "attention_mask" => &mask,
                _ => &types,
            };
            inputs.push((
                nm,
                TensorRef::from_array_view((vec![1i64, n as i64], data.as_slice()))
                    .unwrap()
                    .into(),
            ));
        }
        let out = self.session.run(inputs).unwrap();
        let (shape, data) = out[output].try_extract_tensor::<f32>().unwrap();
        (shape.to_vec(), data.to_vec(), n)
    }

    fn embed(&mut self, text: &str) -> Vec<f32> {
        let (shape, data, n) = self.run(text, "last_hidden_state");
        let h = shape[2] as usize;
        let mut v = vec![0f32; h];
        for t in 0..n {
            v.iter_mut()
                .zip(&data[t * h..(t + 1) * h])
                .for_each(|(a, b)| *a += b);
        }
        v.iter_mut().for_each(|x| *x /= n as f32);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    fn probabilities(&mut self, text: &str) -> Vec<f32> {
        let (_, logits, _) = self.run(text, "logits");
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        logits.iter().map(|l| (l - max).exp() / sum).collect()
    }
}

fn embedding(client: &Client, model: &str, text: &str) -> Vec<f32> {
    let v = client
        .infer(&request(model, Task::Embed, Input::Text(text.into())))
        .unwrap_or_else(|e| panic!("embed {text:?}: {e}"));
    match &v.response().unwrap().body {
        ArchivedBody::Embedding(e) => e.iter().map(|x| x.to_native()).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn labels(client: &Client, model: &str, text: &str) -> Vec<(String, f32)> {
    let v = client
        .infer(&request(model, Task::Classify, Input::Text(text.into())))
        .unwrap_or_else(|e| panic!("classify {text:?}: {e}"));
    match &v.response().unwrap().body {
        ArchivedBody::Classification(s) => s
            .iter()
            .map(|s| (s.label.as_str().to_owned(), s.score.to_native()))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
        * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

const TEXTS: [&str; 5] = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "a",
    "shared memory makes inference fast",
    "this sentence is a little longer than the others, with a comma and more words in it",
];

#[test]
fn tiny_models_through_the_runtime_equal_direct_ort() {
    let (_server, svc) = start("tiny", tiny_models());
    let client = Client::connect(&svc).unwrap();
    let tok = tiny("tokenizer.json");
    let mut embed = Direct::new(&tiny("embed.onnx"), &tok, 64);
    let mut classify = Direct::new(&tiny("classify.onnx"), &tok, 64);
    let label_names = ["negative", "neutral", "positive"];
    for text in TEXTS {
        let got = embedding(&client, "embed", text);
        let want = embed.embed(text);
        let d = max_diff(&got, &want);
        assert!(d <= 1e-5, "embedding of {text:?} differs by {d}");

        let got = labels(&client, "classify", text);
        let want = classify.probabilities(text);
        assert_eq!(got.len(), 3);
        for (label, score) in got {
            let c = label_names.iter().position(|l| *l == label).unwrap();
            assert!(
                (score - want[c]).abs() <= 1e-5,
                "{text:?} {label}: {score} vs {}",
                want[c]
            );
        }
    }
    // Token ids are accepted directly and give the text's answer.
    let ids: Vec<u32> = embed
        .tokenizer
        .encode(TEXTS[1], true)
        .unwrap()
        .get_ids()
        .to_vec();
    let v = client
        .infer(&request("embed", Task::Embed, Input::Tokens(ids)))
        .unwrap();
    let ArchivedBody::Embedding(e) = &v.response().unwrap().body else {
        panic!("not an embedding");
    };
    let got: Vec<f32> = e.iter().map(|x| x.to_native()).collect();
    assert!(max_diff(&got, &embed.embed(TEXTS[1])) <= 1e-5);
}

#[test]
fn named_tensors_run_on_the_request_data_and_come_back_exactly() {
    let (_server, svc) = start("tensors", tiny_models());
    let client = Client::connect(&svc).unwrap();
    let x: Vec<f32> = (0..3 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    let bias = vec![0.5f32, -1.0, 0.25, 2.0];
    let v = client
        .infer(&request(
            "affine",
            Task::Tensors,
            Input::Tensors(vec![
                Tensor {
                    name: "x".into(),
                    shape: vec![3, 8],
                    data: TensorData::F32(x.clone()),
                },
                Tensor {
                    name: "bias".into(),
                    shape: vec![4],
                    data: TensorData::F32(bias.clone()),
                },
            ]),
        ))
        .unwrap();
    let ArchivedBody::Tensors(ts) = &v.response().unwrap().body else {
        panic!("not tensors");
    };
    // Direct run.
    let env = environment().unwrap();
    let mut s = Session::builder(env)
        .unwrap()
        .commit_from_file(tiny("affine.onnx"))
        .unwrap();
    let out = s
        .run(vec![
            (
                "x",
                ort::session::SessionInputValue::from(
                    TensorRef::from_array_view((vec![3i64, 8], x.as_slice())).unwrap(),
                ),
            ),
            (
                "bias",
                TensorRef::from_array_view((vec![4i64], bias.as_slice()))
                    .unwrap()
                    .into(),
            ),
        ])
        .unwrap();
    assert_eq!(ts.len(), 2);
    for t in ts.iter() {
        let (shape, want) = out[t.name.as_str()].try_extract_tensor::<f32>().unwrap();
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        assert_eq!(
            t.shape.iter().map(|d| d.to_native()).collect::<Vec<_>>(),
            shape
        );
        let shm_runtime::protocol::ArchivedTensorData::F32(got) = &t.data else {
            panic!("{} is not f32", t.name.as_str());
        };
        let got: Vec<f32> = got.iter().map(|x| x.to_native()).collect();
        assert!(max_diff(&got, want) <= 1e-6, "{}", t.name.as_str());
    }
}

#[test]
fn concurrent_requests_are_batched_and_each_client_gets_its_own_row() {
    let mut models = tiny_models();
    models[0].options.insert(
        "max_delay_us".into(),
        shm_runtime::config::OptionValue::Integer(20_000),
    );
    let (_server, svc) = start("batch", models);
    let want: Vec<Vec<f32>> = {
        let mut d = Direct::new(&tiny("embed.onnx"), &tiny("tokenizer.json"), 64);
        TEXTS.iter().map(|t| d.embed(t)).collect()
    };
    let clients = 6;
    let rounds = 20;
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let (svc, want, barrier) = (svc.clone(), want.clone(), barrier.clone());
            std::thread::spawn(move || {
                let client = Client::connect(&svc).unwrap();
                for r in 0..rounds {
                    let i = (k + r) % TEXTS.len();
                    barrier.wait();
                    let got = embedding(&client, "embed", TEXTS[i]);
                    let d = max_diff(&got, &want[i]);
                    assert!(
                        d <= 1e-5,
                        "client {k} round {r}: {:?} differs by {d}",
                        TEXTS[i]
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let svc = shm_runtime::testing::Service::open(&svc).unwrap();
    let lane = svc.lane(0);
    let (batches, batched) = (
        lane.batches.load(std::sync::atomic::Ordering::Relaxed),
        lane.batched.load(std::sync::atomic::Ordering::Relaxed),
    );
    println!(
        "{batched} of {} requests ran in {batches} batches",
        clients * rounds
    );
    assert!(
        batches > 0 && batched >= 2 * batches,
        "no batching: {batched} requests in {batches} batches"
    );
}

#[test]
fn minilm_puts_a_paraphrase_closer_than_an_unrelated_sentence() {
    let path = cached("models/minilm/model.onnx");
    cached("models/minilm/tokenizer.json");
    let (_server, svc) = start("minilm", vec![model("minilm", "embed", path.clone(), &[])]);
    let client = Client::connect(&svc).unwrap();
    let a = embedding(&client, "minilm", "A man is playing a guitar.");
    let b = embedding(&client, "minilm", "Someone is strumming a guitar.");
    let c = embedding(&client, "minilm", "The stock market fell sharply today.");
    assert_eq!(a.len(), 384);
    let (ab, ac) = (cosine(&a, &b), cosine(&a, &c));
    println!("paraphrase {ab:.3}, unrelated {ac:.3}");
    assert!(ab > ac + 0.3, "paraphrase {ab} vs unrelated {ac}");
    // And it is the model itself speaking: equal to a direct run.
    let mut d = Direct::new(
        &path,
        &cache_dir().join("models/minilm/tokenizer.json"),
        256,
    );
    let dd = max_diff(&a, &d.embed("A man is playing a guitar."));
    assert!(dd <= 1e-5, "runtime vs direct: {dd}");
}

#[test]
fn the_sentiment_classifier_labels_held_out_sentences() {
    let path = cached("models/minilm-sentiment/model.onnx");
    let (_server, svc) = start(
        "sentiment",
        vec![model(
            "sentiment",
            "classify",
            path,
            &[(
                "output",
                shm_runtime::config::OptionValue::String("logits".into()),
            )],
        )],
    );
    let client = Client::connect(&svc).unwrap();
    let heldout = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/models/sentiment_heldout.tsv"),
    )
    .unwrap();
    let (mut right, mut total) = (0, 0);
    for line in heldout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (label, text) = line.split_once('\t').expect("label<TAB>sentence");
        let got = labels(&client, "sentiment", text);
        total += 1;
        if got[0].0 == label {
            right += 1;
        } else {
            println!("wrong: {text:?} is {label}, got {got:?}");
        }
    }
    println!("{right}/{total} held-out sentences right");
    assert!(total >= 20);
    assert!(right * 10 >= total * 9, "{right}/{total} right");
}

#[test]
fn bad_input_gets_typed_errors() {
    let (_server, svc) = start("bad", tiny_models());
    let client = Client::connect(&svc).unwrap();
    let tensor = |name: &str, shape: Vec<u64>, data: TensorData| Tensor {
        name: name.into(),
        shape,
        data,
    };
    let bias = || tensor("bias", vec![4], TensorData::F32(vec![0.0; 4]));
    let cases: Vec<(&str, Request, Want)> = vec![
        (
            "unknown model",
            request("nope", Task::Embed, Input::Text("hi".into())),
            Want::NoModel("nope"),
        ),
        (
            "task the model does not do",
            request("embed", Task::Classify, Input::Text("hi".into())),
            Want::NoModel("does not do Classify"),
        ),
        (
            "empty text",
            request("embed", Task::Embed, Input::Text("  ".into())),
            Want::Invalid("the text is empty"),
        ),
        (
            "oversized text",
            request("embed", Task::Embed, Input::Text("word ".repeat(1 << 20))),
            Want::Invalid("does not fit the largest chunk"),
        ),
        (
            "token id outside the vocabulary",
            request("embed", Task::Embed, Input::Tokens(vec![1, 999_999])),
            Want::Invalid("outside the vocabulary"),
        ),
        (
            "tensors to a text model",
            request("embed", Task::Embed, Input::Tensors(vec![bias()])),
            Want::Invalid("text or token ids"),
        ),
        (
            "wrong tensor name",
            request(
                "affine",
                Task::Tensors,
                Input::Tensors(vec![
                    tensor("y", vec![1, 8], TensorData::F32(vec![0.0; 8])),
                    bias(),
                ]),
            ),
            Want::Invalid("has no input \"y\""),
        ),
        (
            "wrong tensor shape",
            request(
                "affine",
                Task::Tensors,
                Input::Tensors(vec![
                    tensor("x", vec![1, 7], TensorData::F32(vec![0.0; 7])),
                    bias(),
                ]),
            ),
            Want::Invalid("has shape [1, 7]"),
        ),
        (
            "shape and data disagree",
            request(
                "affine",
                Task::Tensors,
                Input::Tensors(vec![
                    tensor("x", vec![2, 8], TensorData::F32(vec![0.0; 8])),
                    bias(),
                ]),
            ),
            Want::Invalid("holds 16 elements"),
        ),
        (
            "wrong tensor dtype",
            request(
                "affine",
                Task::Tensors,
                Input::Tensors(vec![
                    tensor("x", vec![1, 8], TensorData::I64(vec![0; 8])),
                    bias(),
                ]),
            ),
            Want::Invalid("is i64, the model wants"),
        ),
        (
            "missing input",
            request(
                "affine",
                Task::Tensors,
                Input::Tensors(vec![tensor("x", vec![1, 8], TensorData::F32(vec![0.0; 8]))]),
            ),
            Want::Invalid("input \"bias\" is missing"),
        ),
        (
            "text to a tensors model",
            request("affine", Task::Tensors, Input::Text("hi".into())),
            Want::Invalid("this model takes tensors (Input::Tensors)"),
        ),
    ];
    for (what, r, want) in cases {
        want.check(what, client.infer(&r));
    }
    // The server still answers after all that.
    assert_eq!(embedding(&client, "embed", "still here").len(), 32);
}

#[test]
fn a_missing_model_or_library_fails_with_a_message_saying_how_to_get_it() {
    let svc = unique_name("missing");
    let err = Server::start(ServerConfig::new(
        &svc,
        vec![model(
            "m",
            "embed",
            PathBuf::from("/nonexistent/model.onnx"),
            &[],
        )],
    ))
    .unwrap_err();
    // The error names the model; its source says what is missing and how to get it.
    let err = error_chain(&err);
    assert!(
        err.contains("not found") && err.contains("scripts/setup.sh"),
        "{err}"
    );

    // The library: in a child process, so this process's ONNX Runtime stays loaded.
    let dir = std::env::temp_dir().join(format!("onnx-missing-{}", std::process::id()));
    let out = ChildTask::command("start-without-library", &format!("{svc}-lib"), "")
        .env("ORT_DYLIB_PATH", dir.join("no-such-libonnxruntime.so"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("REFUSED"),
        "served without a library: {stdout}"
    );
    assert!(stdout.contains("ORT_DYLIB_PATH"), "{stdout}");
}

#[test]
#[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
fn child_entry() {
    let Some(task) = ChildTask::from_env() else {
        return;
    };
    match task.role.as_str() {
        // Starts a server of the tiny embedding model with the environment it was given, and says
        // how that went.
        "start-without-library" => {
            let config = ServerConfig::new(
                &task.name,
                vec![model("e", "embed", tiny("embed.onnx"), &[])],
            );
            match Server::start(config) {
                Ok(_) => say("SERVED"),
                Err(e) => say(format!("REFUSED {}", error_chain(&e))),
            }
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// An error and its sources, one after another.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
