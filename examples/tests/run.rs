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
