//! The lanes' metrics in the segment, as another reader sees them through `status`: latency
//! histograms per model (queue, run, end to end) and, for generations, time to first token,
//! inter-token latency, token counters and finish reasons.

use std::time::Duration;

use shm_runtime::metrics::bucket_bound_seconds;
use shm_runtime::{status, Client, GenerateOptions, ModelConfig, Server, ServerConfig};
use shm_test_support::runtime::{generate, sleep_model};
use shm_test_support::unique_name;
use shm_test_support::wait::wait_for;

#[test]
fn each_model_keeps_its_latency_histograms_and_generation_counters() {
    let name = unique_name("metrics");
    // The stepping sleep backend: 20 ms per token, continuous batching over 4 sequences.
    let mut slow = sleep_model("slow", 20.0);
    slow.options
        .insert("slots".into(), shm_runtime::config::OptionValue::Integer(4));
    let mut config = ServerConfig::new(&name, vec![ModelConfig::new("echo", "echo"), slow]);
    config.pin = false;
    let _server = Server::start(config).unwrap();
    // Each model's warm-up request is counted a moment after its answer (and `start`) returned.
    wait_for(
        "the warm-up requests counted",
        Duration::from_secs(2),
        || {
            let s = status(&name).unwrap();
            s.lanes.iter().all(|l| l.metrics.end_to_end.count == 1)
        },
    );
    let before = status(&name).unwrap();
    let client = Client::connect(&name).unwrap();
    for text in ["one", "three"] {
        client.embed("echo", &[text]).unwrap();
    }
    let g = client
        .generate("slow", "x", &GenerateOptions::new().max_tokens(5))
        .unwrap();
    assert_eq!(g.usage.completion_tokens, 5);
    // Past its deadline, the server ends the generation with what it has (finish `timeout`).
    let mut req = generate("slow", "x");
    req.params.max_tokens = 50;
    req.params.timeout_ms = 150;
    let t = client.submit(&req).unwrap();
    let answer = client.recv(t, Duration::from_secs(5)).unwrap();
    assert!(answer.is_final());
    let lane = |s: &shm_runtime::ServiceStatus, model: &str| {
        s.lanes
            .iter()
            .find(|l| l.model.as_deref() == Some(model))
            .unwrap()
            .metrics
            .clone()
    };
    let finish = |m: &shm_runtime::metrics::LaneMetricsSnapshot, reason: &str| {
        m.finish.iter().find(|(r, _)| r == reason).unwrap().1
    };
    let timeouts = finish(&lane(&before, "slow"), "timeout");
    wait_for(
        "the timed-out generation counted",
        Duration::from_secs(2),
        || finish(&lane(&status(&name).unwrap(), "slow"), "timeout") == timeouts + 1,
    );
    // A request is counted once its answer is on its way: a moment after the client has it.
    let counted = |s: &shm_runtime::ServiceStatus| {
        let e2e = |m: &str| lane(s, m).end_to_end.count;
        (e2e("echo"), e2e("slow"))
    };
    let (echo_before, slow_before) = counted(&before);
    wait_for("every request counted", Duration::from_secs(2), || {
        counted(&status(&name).unwrap()) == (echo_before + 2, slow_before + 2)
    });
    let after = status(&name).unwrap();
    let (echo0, echo1) = (lane(&before, "echo"), lane(&after, "echo"));
    // Two more requests on echo, in each histogram; no generation.
    for (h0, h1) in [
        (&echo0.queue, &echo1.queue),
        (&echo0.run, &echo1.run),
        (&echo0.end_to_end, &echo1.end_to_end),
    ] {
        assert_eq!(h1.count - h0.count, 2);
        assert_eq!(h1.buckets.iter().sum::<u64>(), h1.count);
    }
    assert_eq!(echo1.generated_tokens, echo0.generated_tokens);

    let (slow0, slow1) = (lane(&before, "slow"), lane(&after, "slow"));
    assert_eq!(slow1.end_to_end.count - slow0.end_to_end.count, 2);
    // The 5-token generation ran for at least 5 steps of 20 ms: the slowest run is in a bucket
    // of 0.1 s or more, and the end-to-end time is never below the run.
    assert!(slow1.run.quantile(1.0).unwrap() >= 0.1, "{:?}", slow1.run);
    assert!(slow1.end_to_end.sum_ns >= slow1.run.sum_ns);
    let gained = slow1.generated_tokens - slow0.generated_tokens;
    assert!(
        gained > 5,
        "5 tokens, then at least one before the deadline: {gained}"
    );
    assert_eq!(finish(&slow1, "length") - finish(&slow0, "length"), 1);
    assert_eq!(finish(&slow1, "timeout") - finish(&slow0, "timeout"), 1);
    assert_eq!(
        slow1.time_to_first_token.count - slow0.time_to_first_token.count,
        2
    );
    // 20 ms between tokens: the mean gap of each generation falls in the 16-32 ms bucket.
    let gaps = slow1
        .inter_token
        .buckets
        .iter()
        .zip(&slow0.inter_token.buckets)
        .map(|(a, b)| a - b);
    let (bucket, _) = gaps.enumerate().rfind(|(_, n)| *n > 0).unwrap();
    assert_eq!(
        bucket_bound_seconds(bucket),
        0.032768,
        "{:?}",
        slow1.inter_token
    );
}
