//! The examples run end to end.

use std::process::Command;

use shm_runtime::{ModelConfig, Server, ServerConfig};

#[test]
fn microbench_runs_against_its_own_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_microbench"))
        .args(["--n", "2000", "--wait", "park"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2000 round trips"), "{stdout}");
    assert!(stdout.contains("requests/s"), "{stdout}");
}

#[test]
fn echo_client_gets_its_answer_and_its_stream() {
    let name = format!("examples-echo-{}", std::process::id());
    let _server = Server::start(ServerConfig::new(
        &name,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_echo-client"))
        .args([&name, "hello"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "answer: \"hello\"");
    let out = Command::new(env!("CARGO_BIN_EXE_echo-client"))
        .args([&name, "abc", "--stream"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chunk 2: \"c\""), "{stdout}");
    assert!(stdout.contains("final: \"abc\""), "{stdout}");
}

/// Runs an example binary; returns (success, stdout, stderr).
fn run(exe: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(exe).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn infer_classifies_and_embeds_through_a_running_service() {
    let name = format!("examples-infer-{}", std::process::id());
    let _server = Server::start(ServerConfig::new(
        &name,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let infer = env!("CARGO_BIN_EXE_infer");
    // The echo model classifies a text as itself, with score 1.
    let (ok, stdout, stderr) = run(infer, &[&name, "echo", "classify", "pos", "--repeat", "3"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("\"pos\" -> pos 1.000"), "{stdout}");
    assert!(stdout.contains("3 requests: p50"), "{stdout}");
    // ...and embeds it as its bytes.
    let (ok, stdout, stderr) = run(infer, &[&name, "echo", "embed", "ab", "ba"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("\"ab\" -> 2 floats [+97.0000, +98.0000, ...]"),
        "{stdout}"
    );
    assert!(stdout.contains("cosine similarity:"), "{stdout}");
    // An unknown model: a failed run that says which, in one line with its causes.
    let (ok, stdout, stderr) = run(infer, &[&name, "nope", "embed", "x"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn generate_streams_the_answer_through_a_running_service() {
    let name = format!("examples-generate-{}", std::process::id());
    let _server = Server::start(ServerConfig::new(
        &name,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let generate = env!("CARGO_BIN_EXE_generate");
    // The prompt, then the echo model's stream of it, then the summary line.
    let (ok, stdout, stderr) = run(generate, &[&name, "echo", "abc", "--max-tokens", "8"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("abcabc\n["), "{stdout}");
    assert!(stdout.contains("generated tokens"), "{stdout}");
    let (ok, stdout, stderr) = run(generate, &[&name, "echo", "abc", "--max-tokens", "0"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("max_tokens"), "{stderr}");
}

#[test]
fn ring_pingpong_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_ring-pingpong"))
        .arg("2000")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("2000 round trips"));
}

#[test]
fn a_custom_backend_is_served_to_a_client_in_another_process() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    use shm_runtime::{Client, GenerateOptions, StreamEvent};

    let name = format!("examples-custom-{}", std::process::id());
    let mut server = Command::new(env!("CARGO_BIN_EXE_custom-backend"))
        .arg(&name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("serving"), "{line:?}");

    let client = Client::connect(&name).unwrap();
    let g = client
        .generate("reverse", "hello shared world", &GenerateOptions::default())
        .unwrap();
    assert_eq!(g.text, "dlrow derahs olleh");
    let mut parts = Vec::new();
    for event in client
        .stream("reverse", "one two three", &GenerateOptions::default())
        .unwrap()
    {
        match event.unwrap() {
            StreamEvent::Delta { text, .. } => parts.push(text),
            StreamEvent::Done(g) => assert_eq!(g.text, parts.concat()),
        }
    }
    assert_eq!(parts, ["eerht ", "owt ", "eno"]);
    // It refuses what it does not do, with its own sentence.
    match client.embed("reverse", &["x"]) {
        Err(shm_runtime::Error::ModelNotFound(m)) => assert!(m.contains("reverse"), "{m}"),
        other => panic!("{:?}", other.map(|e| e.len())),
    }
    drop(client);
    writeln!(server.stdin.take().unwrap()).unwrap();
    assert!(server.wait().unwrap().success());
}

const EXAMPLES: [&str; 6] = [
    env!("CARGO_BIN_EXE_infer"),
    env!("CARGO_BIN_EXE_generate"),
    env!("CARGO_BIN_EXE_echo-client"),
    env!("CARGO_BIN_EXE_microbench"),
    env!("CARGO_BIN_EXE_ring-pingpong"),
    env!("CARGO_BIN_EXE_custom-backend"),
];

#[test]
fn every_example_has_help_that_exits_zero() {
    for exe in EXAMPLES {
        let (ok, stdout, stderr) = run(exe, &["--help"]);
        assert!(ok, "{exe} --help: {stderr}");
        assert!(stdout.contains("Usage:"), "{exe} --help: {stdout}");
    }
    let (_, help, _) = run(env!("CARGO_BIN_EXE_infer"), &["--help"]);
    for flag in ["<TASK>", "--repeat <N>", "--batch", "--json"] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

#[test]
fn bad_arguments_are_usage_errors_that_say_what_is_wrong() {
    let infer = env!("CARGO_BIN_EXE_infer");
    let generate = env!("CARGO_BIN_EXE_generate");
    let microbench = env!("CARGO_BIN_EXE_microbench");
    for (exe, args, says) in [
        (
            infer,
            &["svc", "m", "summarize", "x"][..],
            "invalid value 'summarize'",
        ),
        (infer, &["svc", "m", "embed"], "<TEXTS>..."),
        (
            infer,
            &["svc", "m", "embed", "x", "--repeat", "many"],
            "--repeat",
        ),
        (
            generate,
            &["svc", "m", "hi", "--max-tokens", "lots"],
            "--max-tokens",
        ),
        (generate, &["svc", "m"], "<PROMPT>"),
        (microbench, &["--n", "0"], "--n"),
        (
            microbench,
            &["--wait", "sometimes"],
            "unknown wait strategy",
        ),
        (env!("CARGO_BIN_EXE_ring-pingpong"), &["many"], "ROUNDS"),
    ] {
        let out = Command::new(exe).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{exe} {args:?}: {stderr}");
        assert!(stderr.contains(says), "{exe} {args:?}: {stderr}");
    }
}

#[test]
fn infer_and_generate_print_json_and_infer_sends_a_batch() {
    let name = format!("examples-json-{}", std::process::id());
    let _server = Server::start(ServerConfig::new(
        &name,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let infer = env!("CARGO_BIN_EXE_infer");
    let json = |args: &[&str], exe: &str| -> serde_json::Value {
        let (ok, stdout, stderr) = run(exe, args);
        assert!(ok, "{args:?}: {stdout}\n{stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    };
    // Two texts in one request: the echo model embeds each as its bytes.
    let v = json(
        &[
            &name, "echo", "embed", "ab", "ba", "--batch", "--json", "--repeat", "2",
        ],
        infer,
    );
    assert_eq!(
        v["results"][0]["embedding"],
        serde_json::json!([97.0, 98.0])
    );
    assert_eq!(v["results"][1]["text"], "ba");
    assert_eq!(v["similarities"].as_array().unwrap().len(), 1);
    assert_eq!(v["latency"]["requests"], 2, "one request per repeat");
    let v = json(&[&name, "echo", "classify", "pos", "neg", "--json"], infer);
    assert_eq!(v["results"][1]["label"], "neg");
    assert_eq!(v["results"][1]["score"], 1.0);
    let v = json(
        &[&name, "echo", "abc", "--max-tokens", "8", "--json"],
        env!("CARGO_BIN_EXE_generate"),
    );
    assert_eq!(v["text"], "abc");
    assert_eq!(v["completion_tokens"], 3);
    assert!(v["finish_reason"].is_string(), "{v}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let name = format!("examples-pipe-{}", std::process::id());
    let _server = Server::start(ServerConfig::new(
        &name,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    // The reader is gone before the first write: SIGPIPE ends the program, as it ends `cat`.
    for (exe, args) in [
        (
            env!("CARGO_BIN_EXE_infer"),
            &[&name[..], "echo", "embed", "a", "b", "c"][..],
        ),
        (env!("CARGO_BIN_EXE_generate"), &[&name, "echo", "abc"]),
        (
            env!("CARGO_BIN_EXE_echo-client"),
            &[&name, "abc", "--stream"],
        ),
    ] {
        let mut child = Command::new(exe)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{exe}: {:?}: {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{exe}: {stderr}");
    }
}

#[test]
fn microbench_prints_json_with_an_unpinned_server() {
    let (ok, stdout, stderr) = run(
        env!("CARGO_BIN_EXE_microbench"),
        &["--n", "1000", "--wait", "park", "--no-pin", "--json"],
    );
    assert!(ok, "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["round_trips"], 1000);
    assert_eq!(v["server_pinned"], false);
    assert!(v["p50_ns"].as_u64().unwrap() > 0);
    assert!(v["pipelined_rps"].as_f64().unwrap() > 0.0);
}
