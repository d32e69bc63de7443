//! The typed calls (`embed`, `classify`, `generate`, `chat`, `stream`, `chat_stream`) against
//! the echo and sleep backends: what each returns, that embeddings are read in place (their chunk
//! is held while they live), that a stream dropped early cancels its request, that no part of a
//! stop string split across tokens reaches a stream, and the errors.

use std::time::Duration;

use shm_runtime::{
    Client, Error, FinishReason, GenerateOptions, Message, ModelConfig, Server, ServerConfig,
    StreamEvent,
};
use shm_test_support::runtime::sleep_model;
use shm_test_support::wait::Watchdog;
use shm_test_support::{unique_name, wait_for};

fn start(tag: &str) -> (Server, Client) {
    let svc = unique_name(tag);
    let cfg = ServerConfig::new(
        &svc,
        vec![ModelConfig::new("echo", "echo"), sleep_model("slow", 20.0)],
    );
    let server = Server::start(cfg).unwrap();
    let client = Client::connect(&svc).unwrap();
    (server, client)
}

/// The echo backend's embedding of `text`: its bytes as floats, padded with zeros to `dim`.
fn echo_embedding(text: &str, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = text.bytes().map(f32::from).collect();
    v.resize(dim, 0.0);
    v
}

#[test]
fn embeddings_of_one_and_of_several_texts_are_read_in_place() {
    let _dog = Watchdog::new("typed embed", Duration::from_secs(60));
    let (_server, client) = start("typed-embed");
    let (free, total) = client.pool_free();
    assert_eq!(free, total);

    let one = client.embed("echo", &["abc"]).unwrap();
    assert_eq!((one.len(), one.dim()), (1, 3));
    assert_eq!(one.row(0), echo_embedding("abc", 3));
    assert_eq!(
        client.pool_free().0,
        total - 1,
        "the answer stays in its chunk while the embeddings live"
    );
    drop(one);
    assert_eq!(client.pool_free().0, total);

    let texts = ["a", "bcd", "ef"];
    let many = client.embed("echo", &texts).unwrap();
    assert_eq!((many.len(), many.dim()), (3, 3));
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(many.row(i), echo_embedding(t, 3), "row {i}");
    }
    assert_eq!(many.get(3), None);
    assert_eq!(many.iter().count(), 3);
    assert_eq!(many.as_flat().len(), 9);
    let copied = many.to_vec();
    assert_eq!(
        client.pool_free().0,
        total - 1,
        "one chunk for all three rows"
    );
    drop(many);
    assert_eq!(client.pool_free().0, total);
    assert_eq!(copied[1], echo_embedding("bcd", 3));
}

#[test]
fn classifications_generations_and_chats_come_back_typed() {
    let _dog = Watchdog::new("typed calls", Duration::from_secs(60));
    let (_server, client) = start("typed-calls");

    let c = client.classify("echo", &["yes", "no"]).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].label.as_str(), c[0].score), ("yes", 1.0));
    assert_eq!(c[1].scores, vec![("no".to_owned(), 1.0)]);
    let c = client.classify("echo", &["alone"]).unwrap();
    assert_eq!(c[0].label, "alone");

    let g = client
        .generate("echo", "hello there", &GenerateOptions::new().max_tokens(5))
        .unwrap();
    assert_eq!(g.text, "hello");
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.usage.completion_tokens, 5);

    let chat = [Message::system("be brief"), Message::user("hi")];
    let g = client
        .chat("echo", &chat, &GenerateOptions::default())
        .unwrap();
    assert_eq!(g.text, "be brief\nhi");
}

#[test]
fn a_stream_yields_deltas_then_the_whole_and_cancels_when_dropped_early() {
    let _dog = Watchdog::new("typed stream", Duration::from_secs(60));
    let (server, client) = start("typed-stream");
    let (_, total) = client.pool_free();

    let mut text = String::new();
    let mut done = None;
    for event in client
        .stream("slow", "abcdef", &GenerateOptions::new().max_tokens(6))
        .unwrap()
    {
        match event.unwrap() {
            StreamEvent::Delta { text: t, .. } => text.push_str(&t),
            StreamEvent::Done(g) => done = Some(g),
        }
    }
    let done = done.expect("a final summary");
    assert_eq!(done.text, text);
    assert_eq!(done.usage.completion_tokens, 6);

    let chat = [Message::user("tell me")];
    let mut s = client
        .chat_stream("slow", &chat, &GenerateOptions::new().max_tokens(1000))
        .unwrap();
    assert!(matches!(s.next(), Some(Ok(StreamEvent::Delta { .. }))));
    assert_eq!(client.in_flight(), 1);
    drop(s);
    assert_eq!(client.in_flight(), 0, "dropped: no longer the caller's");
    // The server stops the 1000-token request (20 s at 20 ms a token) within a step or so.
    wait_for(
        "the server to cancel the stream",
        Duration::from_secs(5),
        || {
            let status = shm_runtime::status(server.name()).unwrap();
            status.errors.get("cancelled") == Some(&1) && server.cancels_pending() == 0
        },
    );
    // What arrived for it meanwhile goes back when the client next reads its ring.
    client
        .generate("echo", "x", &GenerateOptions::default())
        .unwrap();
    assert_eq!(client.pool_free().0, total);
}

#[test]
fn typed_calls_say_what_went_wrong() {
    let _dog = Watchdog::new("typed errors", Duration::from_secs(60));
    let (_server, client) = start("typed-errors");
    let none: [&str; 0] = [];
    assert!(matches!(
        client.embed("echo", &none),
        Err(Error::InvalidRequest(_))
    ));
    match client.embed("nope", &["x"]) {
        Err(Error::ModelNotFound(m)) => assert!(m.contains("nope"), "{m}"),
        other => panic!("{other:?}"),
    }
    let r = client.generate(
        "slow",
        "x",
        &GenerateOptions::new()
            .max_tokens(1000)
            .timeout(Duration::from_millis(100)),
    );
    assert!(matches!(r, Err(Error::TimedOut)), "{r:?}");
}

/// The deltas' texts and the final generation of a stream.
fn streamed(
    client: &Client,
    model: &str,
    opts: &GenerateOptions,
) -> (Vec<String>, shm_runtime::Generation) {
    let mut deltas = Vec::new();
    let mut done = None;
    for event in client.stream(model, "go", opts).unwrap() {
        match event.unwrap() {
            StreamEvent::Delta { text, .. } => deltas.push(text),
            StreamEvent::Done(g) => done = Some(g),
        }
    }
    (deltas, done.expect("a final summary"))
}

#[test]
fn no_part_of_a_stop_string_split_across_tokens_is_streamed() {
    let _dog = Watchdog::new("typed stops", Duration::from_secs(60));
    // The stepping sleep backend generates "t0 t1 t2 ...", one "tN " per token.
    let svc = unique_name("typed-stops");
    let mut m = sleep_model("steps", 2.0);
    m.options
        .insert("slots".into(), shm_runtime::config::OptionValue::Integer(2));
    let _server = Server::start(ServerConfig::new(&svc, vec![m])).unwrap();
    let client = Client::connect(&svc).unwrap();

    // "2 t3" begins in the third token and ends in the fourth.
    let opts = GenerateOptions::new().max_tokens(50).stop(["2 t3", "zzz"]);
    let (deltas, g) = streamed(&client, "steps", &opts);
    assert_eq!(g.text, "t0 t1 t");
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(deltas.concat(), g.text, "the deltas make up the answer");
    assert!(deltas.iter().all(|d| !d.contains('2')), "{deltas:?}");
    assert_eq!(
        g.tokens,
        [0, 1, 2, 3],
        "the stop string's tokens are counted"
    );
    let whole = client.generate("steps", "go", &opts).unwrap();
    assert_eq!(whole.text, g.text);

    // A stop string that begins but never completes: what was held back comes at the end.
    let opts = GenerateOptions::new().max_tokens(3).stop(["2 tx"]);
    let (deltas, g) = streamed(&client, "steps", &opts);
    assert_eq!(g.text, "t0 t1 t2 ");
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(deltas, ["t0 ", "t1 ", "t", "2 "]);
}
