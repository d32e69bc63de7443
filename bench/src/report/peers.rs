//! The peers section: the runtime's busy round trip against every other transport.

use super::figures::row;
use super::{Report, Section};

/// The runtime's busy round trip against every other transport, measured in the same interleaved
/// rounds.
pub(super) fn peers_section(report: &mut Report) {
    let g = |k: &str| report.get(k);
    let shm = g("rtt_ns_shm_busy_p50");
    // (peer, what it is, how many times slower than shm_busy it must be, or no bar)
    let peers: [(&str, &str, Option<f64>); 4] = [
        (
            "iceoryx2",
            "iceoryx2 0.10 request-response, busy-polling both sides",
            Some(1.0),
        ),
        (
            "uds_bincode",
            "Unix socket, length-prefixed bincode frames",
            Some(10.0),
        ),
        (
            "http_json",
            "HTTP/1.1 keep-alive, JSON, loopback (hyper server)",
            Some(50.0),
        ),
        (
            "inproc_channel",
            "crossbeam channels between two threads (no process boundary)",
            None,
        ),
    ];
    let mut rows = vec![row(
        "this runtime, busy-poll both sides, p50",
        "rtt_ns_shm_busy_p50",
        "ns",
        "",
        String::new(),
    )];
    for (t, what, bar) in peers {
        let p50 = format!("rtt_ns_{t}_p50");
        let verdict = match (g(&p50), shm) {
            (Some(peer), Some(ours)) => {
                let x = peer / ours;
                match bar {
                    Some(b) if x >= b => format!("{x:.1} x this runtime's p50: meets (>= {b} x)"),
                    Some(b) => format!("{x:.1} x this runtime's p50: **misses** (>= {b} x)"),
                    None => format!("{x:.2} x this runtime's p50"),
                }
            }
            _ => "not measured".to_owned(),
        };
        let reference = match bar {
            Some(b) => format!("this runtime's p50 <= peer / {b}"),
            None => "in-process floor of a channel".to_owned(),
        };
        rows.push(row(
            &format!("{what}, p50"),
            &p50,
            "ns",
            &reference,
            verdict,
        ));
        rows.push(row(
            &format!("{what}, p99"),
            &format!("rtt_ns_{t}_p99"),
            "ns",
            "",
            String::new(),
        ));
    }
    report.section(Section {
        title: "Round trips: this runtime against other local transports".to_owned(),
        rows,
        notes: vec![
            "Same workload for every transport (peers/, crate shm-peers): one request at a time with a 64-byte payload to an echo server, the answer checked, client pinned to the first CPU and the server to the second, in its own process except for the channel. All seven transports (three of the runtime's waits, four peers) alternate in 3 rounds, one server at a time; figures are per-percentile medians of the rounds. p99.9 is in report.json.".to_owned(),
            "uds_bincode: a blocking Unix stream socket, each message a u32 length then bincode 2 of a request struct shaped like the runtime's (id, model name, task, the payload as text, parameters). http_json: hyper 1 on a current-thread tokio runtime, one keep-alive connection, a blocking std client writing HTTP/1.1 with Content-Length and TCP_NODELAY, serde_json bodies of the same structs. iceoryx2: request-response of a 64-byte POD each way, both sides busy-polling (its fastest configuration; with event-based waiting it is tens of microseconds). inproc_channel: bounded crossbeam channels of capacity 1 between two threads.".to_owned(),
        ],
    });
}
