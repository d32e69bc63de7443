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
    assert!(stdout.contains("chunk 2: \"c\""), "{stdout}");
    assert!(stdout.contains("final: \"abc\""), "{stdout}");
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
