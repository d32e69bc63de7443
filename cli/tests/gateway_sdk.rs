//! The gateway with real clients: the official OpenAI Python SDK (installed pinned by
//! scripts/setup.sh into the project's venv) against `shm-runtime serve --http` serving the demo's
//! real models, its answers checked against the runtime's own through the Rust client (the same
//! greedy text, embeddings within 1e-6), its streams and errors as the SDK parses them, and
//! `/metrics` parsed by Prometheus' own text parser; `curl -N` reads a stream as it comes.
#![cfg(all(feature = "onnx", feature = "gguf"))]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shm_runtime::{Client, GenerateOptions, Message};
use shm_test_support::names::unique_name;
use shm_test_support::wait::wait_for;

const SETUP: &str = "run scripts/setup.sh (it fetches the models and installs the Python packages)";

/// `shm-runtime serve --config examples/demo.toml --http 127.0.0.1:0`, stopped on drop.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(name: &str) -> Serve {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml");
        let mut child = Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--name", name, "--http", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start shm-runtime serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some((_, url)) = line.split_once(" on ") {
                        break url.trim().to_owned();
                    }
                }
                _ => panic!(
                    "shm-runtime serve ended before its gateway listened (models missing? {SETUP})"
                ),
            }
        };
        Serve { child, url }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(args)
        .output()
        .expect("curl (Debian package curl) is needed by this test")
}

fn ready(url: &str) -> bool {
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/health"),
    ]);
    out.stdout == b"200"
}

#[test]
fn the_openai_sdk_gets_what_the_runtime_answers() {
    let venv = shm_runtime::config::cache_dir().join("venv/bin/python");
    assert!(
        venv.exists(),
        "no Python environment at {}: {SETUP}",
        venv.display()
    );
    let name = unique_name("gw-sdk");
    let serve = Serve::start(&name);
    wait_for(
        "every model ready behind the gateway",
        Duration::from_secs(120),
        || ready(&serve.url),
    );

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_sdk.py");
    let out = Command::new(&venv)
        .arg(&script)
        .arg(&serve.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK script failed ({}; if openai is missing: {SETUP}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The runtime's own answers, through the Rust client.
    let client = Client::connect(&name).unwrap();
    let greedy = GenerateOptions::new().temperature(0.0).max_tokens(24);
    let chat = client
        .chat("smollm2", &[Message::user("Name three colours.")], &greedy)
        .unwrap();
    assert!(!chat.text.is_empty());
    assert_eq!(got["chat"]["text"], chat.text);
    assert_eq!(
        got["chat"]["completion_tokens"],
        chat.usage.completion_tokens
    );
    assert_eq!(got["chat"]["prompt_tokens"], chat.usage.prompt_tokens);
    assert_eq!(got["chat_stream"]["text"], chat.text);
    assert_eq!(
        got["chat_stream"]["completion_tokens"],
        chat.usage.completion_tokens
    );
    let finish = if chat.finish_reason == shm_runtime::FinishReason::Length {
        "length"
    } else {
        "stop"
    };
    assert_eq!(got["chat"]["finish_reason"], finish);
    assert_eq!(got["chat_stream"]["finish_reason"], finish);

    let g = client
        .generate(
            "smollm2",
            "Once upon a time",
            &GenerateOptions::new().temperature(0.0).max_tokens(16),
        )
        .unwrap();
    assert_eq!(got["completion"]["text"], g.text);
    assert_eq!(got["completion_stream"]["text"], g.text);

    let texts = ["a cat sat on the mat", "the stock market fell today"];
    let e = client.embed("minilm", &texts).unwrap();
    for key in ["embeddings_base64", "embeddings_float"] {
        for (i, row) in e.iter().enumerate() {
            let sdk: Vec<f64> = serde_json::from_value(got[key][i].clone()).unwrap();
            assert_eq!(sdk.len(), row.len(), "{key} row {i}");
            let worst = sdk
                .iter()
                .zip(row)
                .map(|(a, b)| (a - f64::from(*b)).abs())
                .fold(0.0, f64::max);
            assert!(worst <= 1e-6, "{key} row {i} differs by {worst}");
        }
    }

    let errors = &got["errors"];
    assert_eq!(
        errors["unknown_model"]["class"], "NotFoundError",
        "{errors}"
    );
    assert_eq!(errors["n_2"]["class"], "BadRequestError", "{errors}");
    assert_eq!(
        errors["bad_dimensions"]["class"], "BadRequestError",
        "{errors}"
    );
    assert!(
        errors["n_2"]["message"].as_str().unwrap().contains("n = 2"),
        "{errors}"
    );

    assert_eq!(
        got["models"],
        serde_json::json!(["echo", "minilm", "sentiment", "smollm2"])
    );
    // prometheus_client names counter families without `_total`.
    let families = &got["metric_families"];
    for (family, kind) in [
        ("shm_runtime_up", "gauge"),
        ("shm_runtime_requests", "counter"),
        ("shm_runtime_model_requests", "counter"),
        ("shm_runtime_gateway_http_requests", "counter"),
        (
            "shm_runtime_gateway_http_request_duration_seconds",
            "histogram",
        ),
    ] {
        assert_eq!(families[family], kind, "{family} in {families}");
    }
}

#[test]
fn curl_reads_a_stream_as_it_comes() {
    let name = unique_name("gw-curl");
    let serve = Serve::start(&name);
    wait_for(
        "every model ready behind the gateway",
        Duration::from_secs(120),
        || ready(&serve.url),
    );
    let body = r#"{"model":"smollm2","messages":[{"role":"user","content":"Count to five."}],"temperature":0,"max_tokens":12,"stream":true}"#;
    let out = curl(&[
        "-sN",
        &format!("{}/v1/chat/completions", serve.url),
        "-H",
        "content-type: application/json",
        "-d",
        body,
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    assert!(
        events.len() >= 4,
        "a role chunk, content chunks, a finish chunk: {text}"
    );
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let client = Client::connect(&name).unwrap();
    let want = client
        .chat(
            "smollm2",
            &[Message::user("Count to five.")],
            &GenerateOptions::new().temperature(0.0).max_tokens(12),
        )
        .unwrap();
    assert_eq!(content, want.text);
}
