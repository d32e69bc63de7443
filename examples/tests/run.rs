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
    // An unknown model: a failed run that says which.
    let (ok, stdout, stderr) = run(infer, &[&name, "nope", "embed", "x"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("nope"), "{stderr}");
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
