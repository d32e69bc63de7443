//! The latency comparison: direct `ort` calls against the same model through the runtime, and
//! the diagnostic paths in between, in interleaved rounds.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use shm_runtime::backend::writer::Out;
use shm_runtime::protocol::{access_request, encode_into};
use shm_runtime::ring::WaitStrategy;
use shm_runtime::{Client, ClientOptions};

use super::*;

/// The paths [`compare`] measures, in the order of [`Compared::rounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// [`Direct::run`] in this process.
    Direct,
    /// The runtime's own ONNX backend loaded in this process, called with an archived request and
    /// writing into a buffer: the backend's work without the runtime around it.
    Backend,
    /// Through the runtime: a server in a child process, a client here with default options.
    Runtime,
    /// Through the runtime, the client parking at once when it waits (no 50 us spin).
    RuntimeParkingClient,
}

impl Path {
    /// Every path, in the order of [`Compared::rounds`].
    pub const ALL: [Path; 4] = [
        Path::Direct,
        Path::Backend,
        Path::Runtime,
        Path::RuntimeParkingClient,
    ];
}

/// Latencies of one model on each [`Path`], measured side by side.
#[derive(Debug, Clone, Default)]
pub struct Compared {
    /// Per round, per path (in [`Path::ALL`] order): p50 and p95, in microseconds.
    pub rounds: Vec<[[f64; 2]; 4]>,
    /// Largest difference between a value of the direct answer and of the runtime's.
    pub max_diff: f32,
    /// Tokens of the sentence (with the special tokens).
    pub tokens: usize,
    /// CPU time of the client's thread while it waits for the runtime's answers, percent of the
    /// wall time, for the default client and the parking one (`None` when /proc cannot tell).
    pub client_cpu_pct: [Option<f64>; 2],
}

impl Compared {
    /// Median over the rounds of `path`'s p50 (`p95` false) or p95.
    pub fn median(&self, path: Path, p95: bool) -> f64 {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r[path as usize][usize::from(p95)])
            .collect();
        crate::stats::median(&mut v)
    }

    /// Median over the rounds of `path`'s p50 / the direct p50.
    pub fn ratio(&self, path: Path) -> f64 {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r[path as usize][0] / r[Path::Direct as usize][0])
            .collect();
        crate::stats::median(&mut v)
    }
}

/// A run context that never stops the backend (for calling it outside a server).
struct NoStop;

impl shm_runtime::backend::RunContext for NoStop {
    fn should_stop(&mut self) -> Option<shm_runtime::backend::Stop> {
        None
    }
    fn emit(
        &mut self,
        _chunk: shm_runtime::protocol::StreamChunk,
    ) -> Result<(), shm_runtime::backend::Stop> {
        Ok(())
    }
    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }
}

/// 64-byte aligned room for an archived request or answer.
#[repr(C, align(64))]
struct Buf([u8; 64 << 10]);

/// Measures `kind` on every [`Path`] (server worker and clients unpinned), one request at a time:
/// `rounds` rounds of `warm` unrecorded requests on each path, then `n` recorded on each path in
/// blocks of `block`, the paths taking turns (so all see the same phases of this machine's speed).
/// Each block starts after a pause of 40 ms and one unrecorded request, so that no path is measured
/// while another's ONNX Runtime threads still spin. First checks that direct and runtime give the
/// same answer.
///
/// # Errors
///
/// When loading, starting the server or a request fails, or the answers differ.
pub fn compare(kind: Kind, rounds: usize, warm: usize, n: usize, block: usize) -> Result<Compared> {
    use shm_runtime::backend::Backend as _;
    let mut direct = Direct::load(kind)?;
    let backend = shm_runtime::backend::onnx::Onnx::load(&model_config(kind, None))
        .map_err(|e| anyhow!("loading the backend in this process: {e}"))?;
    let server = OnnxServer::start(kind, None, None)?;
    let client = Client::connect(&server.name)?;
    // Its own server: a batching worker waits up to max_delay for more requests while another
    // client of the lane sent one in the last 100 ms, which would delay the first requests of a
    // block that follows the other client's.
    let parking_server = OnnxServer::start(kind, None, None)?;
    let parking = Client::connect_with(
        &parking_server.name,
        ClientOptions {
            wait: WaitStrategy::SpinThenPark {
                spin: Duration::ZERO,
            },
            ..ClientOptions::default()
        },
    )?;
    let req = server.request();
    let mut req_buf = Box::new(Buf([0; 64 << 10]));
    let req_len = encode_into(&req, &mut req_buf.0)?;
    let mut out_buf = Box::new(Buf([0; 64 << 10]));
    let mut c = Compared {
        max_diff: same_answers(kind, &mut direct, &server, &client)?,
        tokens: direct
            .tokenizer
            .encode(SENTENCE, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .len(),
        ..Compared::default()
    };
    let mut one = |path: Path| -> Result<f64> {
        let t = Instant::now();
        match path {
            Path::Direct => {
                std::hint::black_box(direct.run(std::hint::black_box(SENTENCE))?);
            }
            Path::Backend => {
                let r = access_request(&req_buf.0[..req_len]).map_err(anyhow::Error::msg)?;
                let mut out = Out::in_buffer(&mut out_buf.0, 1);
                backend
                    .run(r, &mut NoStop, &mut out)
                    .map_err(|e| anyhow!("backend: {e}"))?;
                std::hint::black_box(out.written());
            }
            Path::Runtime | Path::RuntimeParkingClient => {
                let who = if path == Path::Runtime {
                    &client
                } else {
                    &parking
                };
                let v = who.infer(&req)?;
                if v.len() < 16 {
                    bail!("short answer");
                }
            }
        }
        Ok(t.elapsed().as_secs_f64() * 1e6)
    };
    // Client CPU (ticks, wall) for the two runtime paths.
    let mut client_cpu = [(Some(0u64), Duration::ZERO); 2];
    for r in 0..rounds {
        let mut lat: [Vec<f64>; 4] = Default::default();
        for _ in 0..warm {
            for path in Path::ALL {
                one(path)?;
            }
        }
        for b in 0..n.div_ceil(block) {
            let m = block.min(n - b * block);
            for k in 0..Path::ALL.len() {
                let path = Path::ALL[(k + b + r) % Path::ALL.len()];
                // Let the previous path's ONNX Runtime pool go quiet (its thread spins for ~25 ms
                // after its last work, on the CPU every pool thread here is pinned to), then wake
                // this path with one unrecorded request.
                std::thread::sleep(SETTLE);
                one(path)?;
                let (ticks, wall) = (thread_cpu_ticks(), Instant::now());
                for _ in 0..m {
                    lat[path as usize].push(one(path)?);
                }
                if let Some(i) = (path as usize).checked_sub(Path::Runtime as usize) {
                    let (sum, w) = &mut client_cpu[i];
                    *w += wall.elapsed();
                    *sum = match (*sum, ticks, thread_cpu_ticks()) {
                        (Some(sum), Some(a), Some(b)) => Some(sum + (b - a)),
                        _ => None,
                    };
                }
            }
        }
        c.rounds
            .push(lat.map(|mut l| [quantile(&mut l, 0.5), quantile(&mut l, 0.95)]));
    }
    drop((client, parking));
    server.stop()?;
    parking_server.stop()?;
    c.client_cpu_pct =
        client_cpu.map(|(t, w)| t.map(|t| t as f64 / ticks_per_second() / w.as_secs_f64() * 100.0));
    Ok(c)
}

/// The largest difference between the direct answer and the runtime's (classification scores
/// compared label by label, in `labels.txt` order).
fn same_answers(
    kind: Kind,
    direct: &mut Direct,
    server: &OnnxServer,
    client: &Client,
) -> Result<f32> {
    let d = direct.run(SENTENCE)?;
    let (r, labels) = server.answer(client)?;
    let r = match kind {
        Kind::Embed => r,
        Kind::Classify => {
            let order = std::fs::read_to_string(model_path(kind).with_file_name("labels.txt"))?;
            order
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| {
                    labels
                        .iter()
                        .position(|x| x == l)
                        .map(|i| r[i])
                        .ok_or_else(|| anyhow!("the runtime gave no score for {l:?}"))
                })
                .collect::<Result<Vec<f32>>>()?
        }
    };
    if d.len() != r.len() {
        bail!(
            "direct answer has {} values, the runtime's {}",
            d.len(),
            r.len()
        );
    }
    let diff = d
        .iter()
        .zip(&r)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    if diff > 1e-3 {
        bail!("the direct and runtime answers differ by up to {diff}");
    }
    Ok(diff)
}
