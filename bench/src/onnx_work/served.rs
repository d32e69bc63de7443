//! The runtime's path: an ONNX server in a child process, and the child role that runs it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use shm_runtime::protocol::{ArchivedBody, Input, Params, Request};
use shm_runtime::{Client, ServerConfig};

use crate::child::{online_cpus, ChildProcess};

use super::*;

/// An ONNX server in a child process serving one model.
#[derive(Debug)]
pub struct OnnxServer {
    child: ChildProcess,
    /// Its service name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    kind: Kind,
}

impl OnnxServer {
    /// Starts a server of `kind` (batching as [`model_config`] says for `max_batch`), its worker
    /// pinned to the `pin`-th online CPU when given, and waits until it answers.
    ///
    /// # Errors
    ///
    /// When it fails to load its model or does not come up within 60 s.
    pub fn start(kind: Kind, max_batch: Option<i64>, pin: Option<usize>) -> Result<OnnxServer> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "bench-onnx-{}-{}-{}",
            kind.arg(),
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let arg = format!(
            "{name},{},{},{}",
            kind.arg(),
            max_batch.unwrap_or(0),
            pin.map_or("none".to_owned(), |p| p.to_string())
        );
        let mut child = ChildProcess::spawn("onnx-server", &arg)?;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match Client::connect(&name) {
                Ok(c) => {
                    let pid = c.server_pid().ok_or_else(|| anyhow!("no server pid"))?;
                    return Ok(OnnxServer {
                        child,
                        name,
                        pid,
                        kind,
                    });
                }
                Err(e) => {
                    if let Some(status) = child.exit_status() {
                        bail!("the onnx server exited ({status}) before it answered");
                    }
                    if Instant::now() >= end {
                        bail!("the onnx server did not come up: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// The request every measurement sends to it.
    pub fn request(&self) -> Request {
        Request {
            id: 0,
            model: self.kind.model_name().into(),
            task: self.kind.task(),
            input: Input::Text(SENTENCE.into()),
            params: Params::default(),
        }
    }

    /// The answer to one request: the embedding, or the scores in label order as the backend
    /// sorts them (highest first) with their labels.
    ///
    /// # Errors
    ///
    /// When the request fails.
    pub fn answer(&self, client: &Client) -> Result<(Vec<f32>, Vec<String>)> {
        let view = client.infer(&self.request())?;
        match &view.response()?.body {
            ArchivedBody::Embedding(v) => Ok((v.iter().map(|x| x.to_native()).collect(), vec![])),
            ArchivedBody::Classification(s) => Ok((
                s.iter().map(|s| s.score.to_native()).collect(),
                s.iter().map(|s| s.label.as_str().to_owned()).collect(),
            )),
            ArchivedBody::Error(e) => bail!("{:?}: {}", e.code, e.message.as_str()),
            _ => bail!("unexpected answer"),
        }
    }

    /// Stops it.
    ///
    /// # Errors
    ///
    /// When it did not exit cleanly.
    pub fn stop(self) -> Result<()> {
        // SAFETY: signals our own child; no memory involved.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        self.child.join()
    }
}

fn serve(name: &str, kind: Kind, max_batch: Option<i64>, pin: Option<usize>) -> Result<()> {
    let mut cfg = ServerConfig::new(name, vec![model_config(kind, max_batch)]);
    if let Some(p) = pin {
        let cpus = online_cpus();
        cfg.cores = vec![cpus[p % cpus.len()]];
    }
    crate::child::serve_until_sigterm(cfg)
}

/// Runs the ONNX child `role`; `Ok(false)` when the role is not one of this module's.
pub(crate) fn run_child(role: &str, arg: &str) -> Result<bool> {
    match role {
        "onnx-server" => {
            let parts: Vec<&str> = arg.split(',').collect();
            let [name, kind, max_batch, pin] = parts[..] else {
                bail!("onnx-server wants NAME,KIND,MAX_BATCH,PIN, got {arg:?}");
            };
            let kind = match kind {
                "embed" => Kind::Embed,
                "classify" => Kind::Classify,
                other => bail!("unknown onnx model kind {other:?}"),
            };
            let max_batch = match max_batch.parse::<i64>()? {
                0 => None,
                b => Some(b),
            };
            let pin = match pin {
                "none" => None,
                p => Some(p.parse::<usize>()?),
            };
            serve(name, kind, max_batch, pin)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
