//! The Python package's figures: `bench/python/py_bench.py` run by the project's venv Python
//! (scripts/setup.sh installs the package there), one part at a time, against servers this
//! process starts: echo round trips through the package beside the Rust client's on the same
//! server, the same bytes through a `multiprocessing` pipe and through the HTTP gateway, and a
//! MiniLM embedding through the package beside `onnxruntime` called in the Python process.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::gateway_work::GatewayBench;
use crate::runtime_work::{round_trips, EchoServer};

/// The script, in this crate's sources.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/py_bench.py")
}

/// The venv's Python when it imports the package, else why not.
///
/// # Errors
///
/// When the venv or the package is missing: the message says how to get them.
pub fn python() -> Result<PathBuf> {
    let py = shm_runtime::config::cache_dir().join("venv/bin/python");
    if !py.is_file() {
        bail!(
            "no Python environment at {} (scripts/setup.sh python makes it)",
            py.display()
        );
    }
    let ok = Command::new(&py)
        .args(["-c", "import shm_runtime, numpy"])
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !ok.status.success() {
        bail!(
            "{} cannot import shm_runtime (scripts/setup.sh python builds it): {}",
            py.display(),
            String::from_utf8_lossy(&ok.stderr).trim()
        );
    }
    Ok(py)
}

/// Runs one part of the script and parses what it prints.
fn part(py: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new(py)
        .arg(script())
        .args(args)
        .output()
        .with_context(|| format!("running {}", script().display()))?;
    if !out.status.success() {
        bail!(
            "py_bench.py {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "py_bench.py printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A number at `path` (keys) of `v`.
fn num(v: &Value, path: &[&str]) -> Result<f64> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("no {} in {v}", path.join(".")))
}

/// The first online CPU, where the clients of the round trips run.
fn client_cpu() -> String {
    shm_peers::process::online_cpus()
        .first()
        .map_or("0".to_owned(), ToString::to_string)
}

/// One round of echo round trips on one busy-polling echo server: the Rust client's (`BusySpin`
/// as `rtt_ns_shm_busy`), then the Python package's, both pinned to the first CPU. Returns
/// (Rust p50, Python p50, Python p99) in microseconds.
///
/// # Errors
///
/// When the server does not start or a round trip fails.
pub fn rtt_round(py: &Path, n: usize) -> Result<(f64, f64, f64)> {
    let server = EchoServer::start("busy")?;
    let rust = round_trips(&server, shm_runtime::ring::WaitStrategy::BusySpin, n, None);
    let ours = part(
        py,
        &[
            "rtt",
            "--service",
            &server.name,
            "--n",
            &n.to_string(),
            "--cpu",
            &client_cpu(),
        ],
    );
    server.stop()?;
    let (rust, ours) = (rust?, ours?);
    Ok((
        rust.p50 / 1000.0,
        num(&ours, &["p50"])?,
        num(&ours, &["p99"])?,
    ))
}

/// One round through a `multiprocessing` pipe: p50 in microseconds.
///
/// # Errors
///
/// When the script fails.
pub fn pipe_round(py: &Path, n: usize) -> Result<f64> {
    let v = part(py, &["pipe", "--n", &n.to_string(), "--cpu", &client_cpu()])?;
    num(&v, &["p50"])
}

/// One round through the HTTP gateway (onto an echo server, the defaults of `gateway_rtt`):
/// p50 in microseconds.
///
/// # Errors
///
/// When the gateway does not start or a request fails.
pub fn http_round(py: &Path, n: usize) -> Result<f64> {
    let bench = GatewayBench::start()?;
    let v = part(
        py,
        &[
            "http",
            "--port",
            &bench.port().to_string(),
            "--n",
            &n.to_string(),
            "--cpu",
            &client_cpu(),
        ],
    );
    bench.stop()?;
    num(&v?, &["p50"])
}

/// One round of one-sentence embeddings, the package against `onnxruntime` in the Python
/// process, taking turns: (runtime p50, direct p50) in microseconds.
///
/// # Errors
///
/// When the server does not start, the two answers differ or a call fails.
#[cfg(feature = "onnx")]
pub fn embed_round(py: &Path, n: usize) -> Result<(f64, f64)> {
    use crate::onnx_work::{model_path, Kind, OnnxServer};
    let server = OnnxServer::start(Kind::Embed, None, None)?;
    let model = model_path(Kind::Embed);
    let v = part(
        py,
        &[
            "embed",
            "--service",
            &server.name,
            "--model",
            &model.to_string_lossy(),
            "--n",
            &n.to_string(),
        ],
    );
    server.stop()?;
    let v = v?;
    Ok((num(&v, &["runtime", "p50"])?, num(&v, &["direct", "p50"])?))
}
