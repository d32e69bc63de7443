//! `status(name)`: a service's state and counters as another process reads them.

use std::time::Duration;

use shm_runtime::{status, Client, Error, ModelConfig, Server, ServerConfig, ServiceState};
use shm_test_support::runtime::generate;
use shm_test_support::unique_name;

#[test]
fn status_reports_the_state_lanes_clients_counters_and_pool_of_a_service() {
    let name = unique_name("status");
    let server = Server::start(ServerConfig::new(
        &name,
        vec![
            ModelConfig::new("echo", "echo"),
            ModelConfig::new("slow", "sleep"),
        ],
    ))
    .unwrap();
    let client = Client::connect(&name).unwrap();
    for i in 0..3 {
        drop(client.infer(&generate("echo", &format!("r{i}"))).unwrap());
    }
    let refused = client.infer(&generate("echo", &"x".repeat(300 << 10)));
    assert!(
        matches!(refused, Err(Error::InvalidRequest(_))),
        "{refused:?}"
    );

    // The latency histogram is written once an answer is on its way: the last one lands a moment
    // after its client has the answer.
    shm_test_support::wait::wait_for(
        "the last answer in the latency histogram",
        Duration::from_secs(1),
        || {
            status(&name)
                .unwrap()
                .latency_us_log2_buckets
                .iter()
                .sum::<u64>()
                == 2 + 4
        },
    );
    let st = status(&name).unwrap();
    assert_eq!(st.service, name);
    assert_eq!(st.state, ServiceState::Running);
    assert!(st.server_alive);
    assert_eq!(st.server_pid, std::process::id());
    // Each model's warm-up at start (one request each) counts too.
    assert_eq!(st.requests, 2 + 4);
    assert_eq!(st.ok, 2 + 3);
    assert_eq!(st.errors["invalid_request"], 1);
    assert_eq!(st.errors.values().sum::<u64>(), 1);
    assert_eq!(st.latency_us_log2_buckets.iter().sum::<u64>(), 2 + 4);
    let models: Vec<_> = st.lanes.iter().map(|l| l.model.as_deref()).collect();
    assert_eq!(models, [Some("echo"), Some("slow")]);
    assert!(
        st.lanes
            .iter()
            .all(|l| l.model_state == shm_runtime::ModelState::Ready),
        "both warmed up at start"
    );
    assert_eq!(
        (st.lanes[0].accepted, st.lanes[0].completed),
        (1 + 4, 1 + 4)
    );
    assert_eq!((st.lanes[0].queued, st.lanes[0].running), (0, 0));
    assert_eq!(st.clients.len(), 1);
    assert_eq!(st.clients[0].pid, std::process::id());
    assert_eq!(st.clients[0].requests, 4);
    assert_eq!(st.clients[0].errors, 1);
    assert_eq!(st.pool_owners, 2, "the server and the client");
    assert!(st.pool.iter().all(|c| c.free == c.count), "{:?}", st.pool);
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["state"], "running");
    assert_eq!(json["lanes"][1]["model"], "slow");
    assert_eq!(json["lanes"][1]["model_state"], "ready");

    drop(client);
    assert!(status(&name).unwrap().clients.is_empty());
    server.shutdown(Duration::from_secs(1));
    assert!(matches!(status(&name), Err(Error::Attach(_))));
}
