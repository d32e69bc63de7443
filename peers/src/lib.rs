//! Round-trip peers of the shm-runtime benchmarks: other ways of sending a small request to a
//! server and getting its answer back, measured by the same workload as the runtime's own round
//! trip (`shm_bench::runtime_work::round_trips`): an echo server, a 64-byte payload, one request
//! at a time, client and server on different cores. A crate of its own so that its transports'
//! dependencies (iceoryx2, hyper, tokio, bincode, crossbeam-channel) stay out of the product's
//! build; `shm-bench` measures them beside the runtime.
//!
//! Each transport has a connected client type implementing [`RoundTrip`] (one request out, its
//! answer in and checked) and a function that starts it, warms it up, records `rounds` round trips
//! into an HdrHistogram and returns the percentiles in nanoseconds:
//!
//! | function | transport | server |
//! |---|---|---|
//! | [`uds_bincode`] | Unix domain socket, `u32` length-prefixed bincode frames | child process, blocking I/O |
//! | [`http_json`] | HTTP/1.1 keep-alive on loopback TCP, JSON bodies | child process, hyper on a current-thread tokio runtime |
//! | [`iceoryx2()`] | iceoryx2 request-response, 64-byte POD both ways | child process, busy-polling |
//! | [`inproc_channel`] | two bounded crossbeam channels | a thread of this process |
//!
//! Measure one transport at a time: a busy-polling server (`iceoryx2`, the runtime's `shm_busy`)
//! keeps the second CPU busy until its client is closed. With `rounds` = 20 000 each function takes
//! well under a second on loopback transports (plus ~0.1 s to start its server); for a stable p99.9
//! use 100 000 or more.
//!
//! The runtime's own round trip implements [`RoundTrip`] in `shm_bench::peers::ShmPeer`, so
//! criterion suites can time every transport through one trait.
//!
//! The client always runs on the first online CPU and the server on the second (see
//! [`process::pin_to`]). Child processes are started through
//! [`process::ChildProcess`], so a binary using this crate must hand its process to
//! [`process::dispatch`] with a runner that knows [`run_child`]'s roles first thing in `main`.
//! Every child is reaped when its client is dropped, also on error paths, and files a transport
//! creates (socket paths, port files, iceoryx2's shared memory and its directory) carry the process
//! id and a per-run counter in their names and are removed when the client is dropped.
//!
//! [`stats`] holds the latency recorder and percentiles every benchmark of the project reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use crate::process::{pin_to, ChildProcess};
use crate::stats::{Latencies, Percentiles};

mod channel;
mod http;
mod iox;
pub mod process;
pub mod stats;
mod uds;

pub use channel::{inproc_channel, ChannelClient};
pub use http::{http_json, HttpClient};
pub use iox::{iceoryx2, iceoryx2_with, IceoryxClient, IceoryxWait};
pub use uds::{uds_bincode, UdsClient};

/// Payload bytes of every round trip (the request's text; the echo answers it back).
pub const PAYLOAD: usize = 64;

/// How long a client waits for a server to come up or to answer before giving up.
const PATIENCE: Duration = Duration::from_secs(30);

/// One connected client of a transport: sends one request and waits for its answer.
pub trait RoundTrip {
    /// Sends one request, waits for the answer and checks that it echoes the request.
    ///
    /// # Errors
    ///
    /// When the transport fails or the answer is not the echo of the request.
    fn round_trip(&mut self) -> Result<()>;
}

/// The request of the serialising peers, shaped like the runtime's `Request`: an id, the model's
/// name, a task, the input text ([`PAYLOAD`] bytes) and the sampling parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRequest {
    /// Request id, echoed in the response.
    pub id: u64,
    /// Model name (`"echo"`).
    pub model: String,
    /// What to do with the input.
    pub task: PeerTask,
    /// The input text.
    pub text: String,
    /// Generation parameters.
    pub params: PeerParams,
}

/// The task of a [`PeerRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerTask {
    /// Text generation (the echo backend answers with the input).
    Generate,
    /// Embedding.
    Embed,
}

/// The parameters of a [`PeerRequest`], the scalar ones of the runtime's `Params`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeerParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Sampling seed.
    pub seed: u64,
    /// Priority, 0 (most urgent) ..= 3.
    pub priority: u8,
}

/// The response of the serialising peers: the request's id, the generated text and usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerResponse {
    /// The request's id.
    pub id: u64,
    /// The generated text (the echo: the request's text).
    pub text: String,
    /// Why generation stopped.
    pub finish: PeerFinish,
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFinish {
    /// The model ended the text.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// The message of the peers that move plain bytes instead of serialising ([`iceoryx2()`],
/// [`inproc_channel`]): [`PAYLOAD`] bytes, a request id and the payload proper, both ways.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pod64 {
    /// Request id, echoed in the response.
    pub id: u64,
    /// The payload proper.
    pub data: [u8; PAYLOAD - 8],
}

// SAFETY: `#[repr(C)]` with only an integer and bytes: no pointers or references, every bit
// pattern valid, the same layout in every process of this binary (the type name iceoryx2 compares
// between its sides is the default, this type's path).
unsafe impl iceoryx2::prelude::ZeroCopySend for Pod64 {}

const _: () = assert!(std::mem::size_of::<Pod64>() == PAYLOAD);

impl Pod64 {
    /// The round-trip message with id `id`.
    pub fn echo(id: u64) -> Pod64 {
        Pod64 {
            id,
            data: [b'x'; PAYLOAD - 8],
        }
    }
}

impl PeerRequest {
    /// The round-trip request with id `id`: [`PAYLOAD`] bytes of text to the echo model.
    pub fn echo(id: u64) -> PeerRequest {
        PeerRequest {
            id,
            model: "echo".into(),
            task: PeerTask::Generate,
            text: "x".repeat(PAYLOAD),
            params: PeerParams {
                max_tokens: 16,
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                priority: 1,
            },
        }
    }

    /// What the echo server answers to this request.
    pub fn answer(&self) -> PeerResponse {
        PeerResponse {
            id: self.id,
            text: self.text.clone(),
            finish: PeerFinish::Stop,
            prompt_tokens: self.text.len() as u32,
            generated_tokens: self.text.len() as u32,
        }
    }

    /// Checks that `resp` is this request's echo.
    ///
    /// # Errors
    ///
    /// When the id or the text differ.
    pub fn check(&self, resp: &PeerResponse) -> Result<()> {
        ensure!(
            resp.id == self.id,
            "answer for request {} arrived where {} was due",
            resp.id,
            self.id
        );
        ensure!(resp.text == self.text, "the echo changed the text");
        Ok(())
    }
}

/// Warms `peer` up with `rounds / 10 + 100` round trips, then records `rounds` of them on the first
/// CPU. Returns round-trip percentiles, ns.
///
/// # Errors
///
/// When a round trip fails.
pub fn measure<T: RoundTrip + ?Sized>(peer: &mut T, rounds: u64) -> Result<Percentiles> {
    let _pin = pin_to(0);
    for _ in 0..rounds / 10 + 100 {
        peer.round_trip()?;
    }
    let mut lat = Latencies::new();
    for _ in 0..rounds {
        let t = Instant::now();
        peer.round_trip()?;
        lat.record(t.elapsed().as_nanos() as u64);
    }
    Ok(lat.percentiles())
}

/// Times `iters` back-to-back round trips on the first CPU (for criterion's `iter_custom`).
///
/// # Errors
///
/// When a round trip fails.
pub fn time_round_trips<T: RoundTrip + ?Sized>(peer: &mut T, iters: u64) -> Result<Duration> {
    let _pin = pin_to(0);
    let t = Instant::now();
    for _ in 0..iters {
        peer.round_trip()?;
    }
    Ok(t.elapsed())
}

/// A name unique to this process and call: `{kind}-{pid}-{counter}`.
fn unique(kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` every millisecond until it yields a value, failing after [`PATIENCE`] or when `child`
/// exits first.
fn wait_up<T>(child: &mut ChildProcess, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let end = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if let Some(status) = child.exit_status() {
            bail!("{what} exited with {status} before it was ready");
        }
        ensure!(Instant::now() < end, "{what} did not come up in time");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits up to [`PATIENCE`] for `child` to exit on its own and fails unless it succeeded; a child
/// still running then is killed and reaped when `child` drops.
fn reap(mut child: ChildProcess, what: &str) -> Result<()> {
    let end = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.exit_status() {
            ensure!(status.success(), "{what} exited with {status}");
            return Ok(());
        }
        ensure!(Instant::now() < end, "{what} did not exit in time");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the peer child `role` (a transport's server) with `arg`; `Ok(false)` when the role is not
/// one of this crate's.
///
/// # Errors
///
/// When the server fails.
pub fn run_child(role: &str, arg: &str) -> Result<bool> {
    match role {
        "peer-uds-server" => uds::serve(arg)?,
        "peer-http-server" => http::serve(arg)?,
        "peer-iceoryx2-server" => iox::serve(arg)?,
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test binary has libtest's `main`, which knows nothing of benchmark children: a child that a
    /// test starts (the test binary re-executed with its role in the environment) runs its role from
    /// here, before `main`, and exits.
    #[used]
    #[link_section = ".init_array"]
    static RUN_CHILD_ROLE: extern "C" fn() = run_child_role;

    extern "C" fn run_child_role() {
        process::dispatch(run_child);
    }

    /// A peer started, ~1000 round trips with checked echoes, stopped.
    fn exercise(mut peer: impl RoundTrip) {
        for _ in 0..1000 {
            peer.round_trip().expect("round trip");
        }
    }

    #[test]
    fn uds_bincode_echoes() {
        exercise(UdsClient::start().expect("start"));
    }

    #[test]
    fn http_json_echoes() {
        exercise(HttpClient::start().expect("start"));
    }

    #[test]
    fn iceoryx2_echoes() {
        for wait in [IceoryxWait::Busy, IceoryxWait::Event] {
            exercise(IceoryxClient::start(wait).expect("start"));
        }
    }

    #[test]
    fn inproc_channel_echoes() {
        exercise(ChannelClient::start().expect("start"));
    }

    #[test]
    fn request_answer_check() {
        let req = PeerRequest::echo(7);
        assert_eq!(req.text.len(), PAYLOAD);
        req.check(&req.answer()).expect("own answer");
        let mut other = req.answer();
        other.id = 8;
        assert!(req.check(&other).is_err());
    }
}
