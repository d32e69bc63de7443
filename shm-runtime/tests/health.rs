//! `Client::health`: every lane answers a ping (no model involved, also while its model is busy),
//! and each model is `ready` once its warm-up inference at start has answered, `failed` when it
//! could not.

use std::time::Duration;

use shm_runtime::backend::writer::Out;
use shm_runtime::backend::{Backend, BackendError, RunContext};
use shm_runtime::protocol::{ArchivedRequest, Task};
use shm_runtime::{Client, GenerateOptions, ModelConfig, ModelState, ServerBuilder};
use shm_test_support::runtime::sleep_model;
use shm_test_support::unique_name;
use shm_test_support::wait::Watchdog;

/// A backend whose every run fails: its warm-up fails.
struct Broken;

impl Backend for Broken {
    fn tasks(&self) -> &[Task] {
        &[Task::Generate]
    }

    fn run(
        &self,
        _: &ArchivedRequest,
        _: &mut dyn RunContext,
        _: &mut Out<'_>,
    ) -> Result<(), BackendError> {
        Err(BackendError::Failed("this model never works".into()))
    }
}

#[test]
fn health_reports_the_server_and_each_models_state_and_answers_while_a_model_is_busy() {
    let _dog = Watchdog::new("health", Duration::from_secs(60));
    let svc = unique_name("health");
    let server = ServerBuilder::new(&svc)
        .backend("broken", |_: &ModelConfig| Ok::<_, String>(Broken))
        .model(ModelConfig::new("echo", "echo"))
        .model(sleep_model("slow", 20.0))
        .model(ModelConfig::new("bad", "broken"))
        .start()
        .unwrap();
    let client = Client::connect(&svc).unwrap();

    let h = client.health(Duration::from_secs(5)).unwrap();
    assert_eq!(h.server_pid, std::process::id());
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
    assert!(h.uptime < Duration::from_secs(60), "{:?}", h.uptime);
    let states: Vec<_> = h
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.state))
        .collect();
    assert_eq!(
        states,
        [
            ("echo", ModelState::Ready),
            ("slow", ModelState::Ready),
            ("bad", ModelState::Failed)
        ]
    );
    assert!(!h.is_ready(), "one model failed its warm-up");

    // The only worker of `slow` runs a 10 s generation: its lane still answers the ping, between
    // two steps, well before the generation ends.
    let long = client
        .stream("slow", "x", &GenerateOptions::new().max_tokens(500))
        .unwrap();
    let h = client.health(Duration::from_secs(3));
    assert!(h.is_ok(), "the busy lane did not answer its ping: {h:?}");
    drop(long);
    assert_eq!(client.in_flight(), 0);
    drop(server);
}
