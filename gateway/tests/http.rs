//! The gateway over real HTTP against a real server (built-in backends): the API's answers and
//! errors, streams, a client that disconnects, the runtime restarting, the bounded queue.

mod common;

use std::time::{Duration, Instant};

use common::{read_until, TestGateway};
use serde_json::json;
use shm_runtime::{ModelConfig, Server, ServerConfig};
use shm_runtime_gateway::GatewayOptions;
use shm_test_support::names::unique_name;
use shm_test_support::runtime::sleep_model;
use shm_test_support::wait::wait_for;

fn server(name: &str) -> Server {
    let mut c = ServerConfig::new(
        name,
        vec![ModelConfig::new("echo", "echo"), sleep_model("slow", 10.0)],
    );
    c.pin = false;
    Server::start(c).unwrap()
}

#[test]
fn chat_completions_answer_and_stream_as_the_api_says() {
    let name = unique_name("gw-chat");
    let _server = server(&name);
    let gw = TestGateway::start(&name, GatewayOptions::default());

    let a = gw.post(
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "unknown_field": 1}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "hello");
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap()
            + v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(a.header("x-request-id").is_some());

    // Streamed with include_usage: chunks with usage null, one extra chunk with empty choices
    // and the usage, then [DONE].
    let a = gw.post(
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": [{"role": "user", "content": "hi there"}], "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(a.header("x-accel-buffering"), Some("no"));
    let events = a.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(rest
        .iter()
        .all(|c| c["usage"].is_null() && c["object"] == "chat.completion.chunk"));
    assert_eq!(rest[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = rest
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "hi there");
    assert!(rest.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // Without include_usage: no usage field at all, no usage chunk.
    let a = gw.post(
        "/v1/chat/completions",
        &json!({"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": true}),
    );
    let events = a.events();
    assert!(events[..events.len() - 1].iter().all(|e| {
        let c: serde_json::Value = serde_json::from_str(e).unwrap();
        c.get("usage").is_none() && !c["choices"].as_array().unwrap().is_empty()
    }));
}

#[test]
fn completions_embeddings_classify_models_and_errors() {
    let name = unique_name("gw-misc");
    let _server = server(&name);
    let gw = TestGateway::start(
        &name,
        GatewayOptions {
            max_body: 4096,
            ..GatewayOptions::default()
        },
    );
    let v = gw
        .post(
            "/v1/completions",
            &json!({"model": "echo", "prompt": "abc", "echo": true}),
        )
        .json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "abcabc");

    // Embeddings: float and base64 (little-endian f32) carry the same values.
    let float = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "echo", "input": ["ab", "c"]}),
        )
        .json();
    assert_eq!(float["data"][0]["embedding"], json!([97.0, 98.0]));
    assert_eq!(float["data"][1]["index"], 1);
    let b64 = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "echo", "input": "ab", "encoding_format": "base64"}),
        )
        .json();
    let bytes = base64_decode(b64["data"][0]["embedding"].as_str().unwrap());
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats, vec![97.0, 98.0]);
    // dimensions: cut and scaled back to unit length.
    let short = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "echo", "input": "ab", "dimensions": 1}),
        )
        .json();
    assert_eq!(short["data"][0]["embedding"], json!([1.0]));
    let a = gw.post(
        "/v1/embeddings",
        &json!({"model": "echo", "input": "ab", "dimensions": 3}),
    );
    assert_eq!(
        (a.status, a.json()["error"]["param"].clone()),
        (400, json!("dimensions"))
    );

    let models = gw.call("GET", "/v1/models", None).json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["echo", "slow"]);
    assert_eq!(gw.call("GET", "/v1/models/echo", None).status, 200);
    assert_eq!(gw.call("GET", "/v1/models/nope", None).status, 404);
    assert_eq!(gw.call("GET", "/livez", None).status, 200);
    let h = gw.call("GET", "/health", None);
    assert_eq!((h.status, h.json()["status"].clone()), (200, json!("ok")));

    // Errors in the API's shape, with the status that says what to do.
    let cases = [
        (
            json!({"model": "nope", "prompt": "x"}),
            "/v1/completions",
            404,
            Some("model_not_found"),
        ),
        (
            json!({"model": "echo", "prompt": "x", "n": 2}),
            "/v1/completions",
            400,
            None,
        ),
        (
            json!({"model": "echo", "messages": []}),
            "/v1/chat/completions",
            400,
            None,
        ),
        (
            json!({"model": "echo", "input": []}),
            "/v1/embeddings",
            400,
            None,
        ),
        (json!({"prompt": "x"}), "/v1/completions", 400, None),
        (
            json!({"model": "echo", "prompt": "x".repeat(5000)}),
            "/v1/completions",
            413,
            Some("request_too_large"),
        ),
    ];
    for (body, path, status, code) in cases {
        let a = gw.post(path, &body);
        assert_eq!(a.status, status, "{path} {body}: {}", a.body);
        let e = &a.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            a.body
        );
        assert!(e["type"].is_string());
        if let Some(code) = code {
            assert_eq!(e["code"], code);
        }
    }
    let a = gw.call("POST", "/v1/completions", Some("{not json"));
    assert_eq!(a.status, 400);
    let a = gw.call("GET", "/v2/nothing", None);
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (404, json!("unknown_url"))
    );
    // The client's request id comes back.
    let mut s = gw.send("GET", "/livez", None, &[("x-request-id", "abc-123")]);
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
    assert_eq!(
        common::Answer::parse(&raw).header("x-request-id"),
        Some("abc-123")
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Cancelled requests of service `name` so far, and whether its lanes are idle.
fn cancelled_and_idle(name: &str) -> (u64, bool) {
    let s = shm_runtime::status(name).unwrap();
    let cancelled = s.errors.get("cancelled").copied().unwrap_or(0);
    let idle = s.lanes.iter().all(|l| l.running == 0 && l.queued == 0);
    (cancelled, idle)
}

#[test]
fn a_client_that_disconnects_cancels_its_request() {
    let name = unique_name("gw-cancel");
    let _server = server(&name);
    let gw = TestGateway::start(&name, GatewayOptions::default());
    // 1000 tokens at 10 ms each: 10 s unless cancelled.
    let long = |stream: bool| {
        json!({"model": "slow", "prompt": "x", "max_tokens": 1000, "stream": stream}).to_string()
    };

    // A stream: read its first token, then hang up.
    let s = gw.send("POST", "/v1/completions", Some(&long(true)), &[]);
    read_until(&s, "data: ");
    drop(s);
    let start = Instant::now();
    wait_for(
        "the streamed request cancelled and the lane idle",
        Duration::from_secs(2),
        || cancelled_and_idle(&name) == (1, true),
    );
    let stream_cancel = start.elapsed();

    // A plain request: hang up while it runs.
    let s = gw.send("POST", "/v1/completions", Some(&long(false)), &[]);
    wait_for("the plain request running", Duration::from_secs(2), || {
        !cancelled_and_idle(&name).1
    });
    drop(s);
    let start = Instant::now();
    wait_for(
        "the plain request cancelled and the lane idle",
        Duration::from_secs(2),
        || cancelled_and_idle(&name) == (2, true),
    );
    eprintln!(
        "idle after the hang-up: stream {stream_cancel:?}, plain {:?}",
        start.elapsed()
    );
}

#[test]
fn the_gateway_survives_the_runtime_restarting() {
    let name = unique_name("gw-restart");
    let gw = TestGateway::start(&name, GatewayOptions::default());
    let chat = json!({"model": "echo", "messages": [{"role": "user", "content": "again"}]});
    // No runtime yet: 503, and /health says so; /livez does not care.
    let a = gw.post("/v1/chat/completions", &chat);
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (503, json!("service_unavailable"))
    );
    assert_eq!(gw.call("GET", "/health", None).status, 503);
    assert_eq!(gw.call("GET", "/livez", None).status, 200);

    for round in 0..2 {
        let server = server(&name);
        wait_for("the gateway reconnected", Duration::from_secs(3), || {
            gw.post("/v1/chat/completions", &chat).status == 200
        });
        assert_eq!(gw.call("GET", "/health", None).status, 200, "round {round}");
        server.shutdown(Duration::from_secs(1));
        wait_for(
            "503 once the runtime stopped",
            Duration::from_secs(3),
            || gw.post("/v1/chat/completions", &chat).status == 503,
        );
        assert_eq!(gw.call("GET", "/health", None).status, 503);
    }
}

#[test]
fn requests_beyond_the_runtime_limit_queue_and_a_full_queue_gets_429() {
    let name = unique_name("gw-queue");
    let mut c = ServerConfig::new(&name, vec![sleep_model("slow", 50.0)]);
    c.pin = false;
    c.max_inflight = 1;
    let _server = Server::start(c).unwrap();
    let mut options = GatewayOptions::default();
    options.runtime.connections = 1;
    options.runtime.queue = 1;
    let gw = TestGateway::start(&name, options);
    let body = json!({"model": "slow", "prompt": "x", "max_tokens": 4}).to_string();
    // One runs (the runtime's limit for the one connection), one waits in the queue, the third
    // finds the queue full.
    let first = gw.send("POST", "/v1/completions", Some(&body), &[]);
    wait_for("the first request running", Duration::from_secs(2), || {
        shm_runtime::status(&name).unwrap().lanes[0].running == 1
    });
    let second = gw.send("POST", "/v1/completions", Some(&body), &[]);
    std::thread::sleep(Duration::from_millis(50));
    let third = gw.post(
        "/v1/completions",
        &json!({"model": "slow", "prompt": "x", "max_tokens": 4}),
    );
    assert_eq!(third.status, 429, "{}", third.body);
    assert_eq!(third.json()["error"]["code"], "rate_limit_exceeded");
    for s in [first, second] {
        let mut s = s;
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
        let a = common::Answer::parse(&raw);
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // No runtime request was refused as busy: the gateway kept within the limit.
    let status = shm_runtime::status(&name).unwrap();
    assert_eq!(status.errors.get("busy").copied().unwrap_or(0), 0);
}

#[test]
fn metrics_are_prometheus_text() {
    let name = unique_name("gw-metrics");
    let _server = server(&name);
    let gw = TestGateway::start(&name, GatewayOptions::default());
    gw.post("/v1/completions", &json!({"model": "echo", "prompt": "x"}));
    let a = gw.call("GET", "/metrics", None);
    assert_eq!(a.status, 200);
    assert!(a.header("content-type").unwrap().starts_with("text/plain"));
    for family in [
        "shm_runtime_up",
        "shm_runtime_requests_total",
        "shm_runtime_model_requests_total",
        "shm_runtime_pool_chunks_free",
        "shm_runtime_gateway_http_requests_total",
        "shm_runtime_gateway_http_request_duration_seconds_bucket",
    ] {
        assert!(
            a.body.lines().any(|l| l.starts_with(family)),
            "no {family} in:\n{}",
            a.body
        );
    }
    assert!(a
        .body
        .contains(&format!("shm_runtime_up{{service=\"{name}\"}} 1")));
}

#[test]
fn every_metric_of_the_grafana_dashboard_is_in_a_live_scrape() {
    let name = unique_name("gw-dash");
    // A stepping model, so that the generation metrics have values too.
    let mut slow = sleep_model("slow", 1.0);
    slow.options
        .insert("slots".into(), shm_runtime::config::OptionValue::Integer(2));
    let mut c = ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo"), slow]);
    c.pin = false;
    let _server = Server::start(c).unwrap();
    let gw = TestGateway::start(&name, GatewayOptions::default());
    for model in ["echo", "slow"] {
        let a = gw.post(
            "/v1/completions",
            &json!({"model": model, "prompt": "abc", "max_tokens": 3}),
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    // Every `shm_runtime_*` name the queries use.
    let mut names: Vec<String> = exprs
        .iter()
        .flat_map(|e| {
            e.match_indices("shm_runtime_").map(move |(i, _)| {
                e[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 12, "{names:?}");
    let scrape = gw.call("GET", "/metrics", None).body;
    let series: std::collections::HashSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !series.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses {missing:?}, not in the scrape:\n{scrape}"
    );
}

#[test]
fn a_queued_request_whose_client_leaves_frees_its_place_in_the_queue() {
    let name = unique_name("gw-queue-leave");
    let mut c = ServerConfig::new(&name, vec![sleep_model("slow", 20.0)]);
    c.pin = false;
    c.max_inflight = 1;
    let _server = Server::start(c).unwrap();
    let mut options = GatewayOptions::default();
    options.runtime.connections = 1;
    options.runtime.queue = 1;
    let gw = TestGateway::start(&name, options);
    let body = |n: u32| json!({"model": "slow", "prompt": "x", "max_tokens": n}).to_string();
    for _ in 0..3 {
        // One runs; one waits in the queue, then its client leaves.
        let running = gw.send("POST", "/v1/completions", Some(&body(10)), &[]);
        wait_for("a request running", Duration::from_secs(2), || {
            shm_runtime::status(&name).unwrap().lanes[0].running == 1
        });
        let queued = gw.send("POST", "/v1/completions", Some(&body(10)), &[]);
        std::thread::sleep(Duration::from_millis(30));
        drop(queued);
        let mut running = running;
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut running, &mut raw).unwrap();
        assert_eq!(common::Answer::parse(&raw).status, 200);
    }
    // The queue holds nobody: a request that has to wait is queued, not refused.
    let running = gw.send("POST", "/v1/completions", Some(&body(10)), &[]);
    wait_for("a request running", Duration::from_secs(2), || {
        shm_runtime::status(&name).unwrap().lanes[0].running == 1
    });
    let a = gw.post(
        "/v1/completions",
        &json!({"model": "slow", "prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    drop(running);
}

#[test]
fn the_request_deadline_is_the_gateways() {
    let name = unique_name("gw-deadline");
    let _server = server(&name);
    let mut options = GatewayOptions::default();
    options.runtime.client.timeout = Duration::from_millis(300);
    let gw = TestGateway::start(&name, options);
    let start = Instant::now();
    // 1000 tokens at 10 ms: 10 s, unless the deadline of 0.3 s ends it.
    let a = gw.post(
        "/v1/completions",
        &json!({"model": "slow", "prompt": "x", "max_tokens": 1000}),
    );
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "answered after {took:?}: {}",
        a.body
    );
    // The server ends a generation past its deadline with what it has (finish `length` is not
    // reached): a 200 with the partial text, or a 504 when nothing was generated.
    assert!(
        a.status == 200 || a.status == 504,
        "{}: {}",
        a.status,
        a.body
    );
    if a.status == 200 {
        let text = a.json()["choices"][0]["text"].as_str().unwrap().to_owned();
        assert!(text.len() < 1000, "{text}");
    }
}
