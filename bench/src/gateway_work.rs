//! The HTTP gateway's figures: echo round trips and requests per second through
//! `shm-runtime-gateway` (a child process with the gateway's default options, as
//! `shm-runtime gateway` runs it) onto an echo server (another child, the server's default wait
//! strategy), from blocking HTTP/1.1 keep-alive clients like the `http_json` peer's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shm_peers::stats::Percentiles;
use shm_peers::RoundTrip;

use crate::child::ChildProcess;
use crate::runtime_work::EchoServer;

/// The prompt of each request: 64 bytes, like the other transports' payload.
const PROMPT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// An echo server and a gateway in front of it, each in a child process.
#[derive(Debug)]
pub struct GatewayBench {
    server: EchoServer,
    gateway: ChildProcess,
    gateway_pid: u32,
    port: u16,
}

impl GatewayBench {
    /// Starts both and waits until the gateway listens.
    ///
    /// # Errors
    ///
    /// When either does not come up within 30 s.
    pub fn start() -> Result<GatewayBench> {
        let server = EchoServer::start("park")?;
        let port_file = std::env::temp_dir().join(format!("shm-bench-gw-{}", std::process::id()));
        let _ = std::fs::remove_file(&port_file);
        let arg = format!("{},{}", server.name, port_file.display());
        let gateway = ChildProcess::spawn("gateway", &arg)?;
        let end = Instant::now() + Duration::from_secs(30);
        let (port, pid) = loop {
            if let Some(line) = std::fs::read_to_string(&port_file)
                .ok()
                .filter(|s| s.ends_with('\n'))
            {
                let (port, pid) = line.trim().split_once(' ').context("port file")?;
                break (port.parse::<u16>()?, pid.parse::<u32>()?);
            }
            ensure!(
                Instant::now() < end,
                "the gateway did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = std::fs::remove_file(&port_file);
        Ok(GatewayBench {
            server,
            gateway,
            gateway_pid: pid,
            port,
        })
    }

    /// The port the gateway listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client on a new keep-alive connection.
    ///
    /// # Errors
    ///
    /// When it cannot connect.
    pub fn client(&self) -> Result<GatewayClient> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_nodelay(true)?;
        let body = serde_json::json!({
            "model": "echo",
            "prompt": PROMPT,
            "max_tokens": 64,
            "temperature": 0,
        })
        .to_string();
        let request = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        Ok(GatewayClient {
            conn: BufReader::new(stream),
            request: request.into_bytes(),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// Stops the gateway, then the server.
    ///
    /// # Errors
    ///
    /// When either did not exit cleanly.
    pub fn stop(self) -> Result<()> {
        // SAFETY: signals our own child; no memory involved.
        unsafe { libc::kill(self.gateway_pid as libc::pid_t, libc::SIGTERM) };
        self.gateway.join()?;
        self.server.stop()
    }
}

/// One keep-alive connection to the gateway, sending the same completion request each time.
#[derive(Debug)]
pub struct GatewayClient {
    conn: BufReader<TcpStream>,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl RoundTrip for GatewayClient {
    fn round_trip(&mut self) -> Result<()> {
        self.conn.get_mut().write_all(&self.request)?;
        self.line.clear();
        ensure!(
            self.conn.read_line(&mut self.line)? > 0,
            "the gateway hung up"
        );
        let ok = self.line.split_ascii_whitespace().nth(1) == Some("200");
        let mut length = None;
        loop {
            self.line.clear();
            ensure!(
                self.conn.read_line(&mut self.line)? > 0,
                "the gateway hung up"
            );
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                }
            }
        }
        let length = length.context("an answer without Content-Length")?;
        self.body.resize(length, 0);
        self.conn.read_exact(&mut self.body)?;
        if !ok {
            bail!(
                "the gateway answered {}",
                String::from_utf8_lossy(&self.body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&self.body)?;
        ensure!(v["choices"][0]["text"] == PROMPT, "not the echo: {v}");
        Ok(())
    }
}

impl Drop for GatewayClient {
    fn drop(&mut self) {
        let _ = self.conn.get_ref().shutdown(Shutdown::Both);
    }
}

/// Round trips of one completion request at a time over one keep-alive connection (client on
/// the first CPU). Warms up with `rounds / 10 + 100`, then records `rounds`; percentiles in ns.
///
/// # Errors
///
/// When a process does not start or a round trip fails.
pub fn gateway_rtt(rounds: u64) -> Result<Percentiles> {
    let bench = GatewayBench::start()?;
    let p = shm_peers::measure(&mut bench.client()?, rounds);
    bench.stop()?;
    p
}

/// Requests per second from `connections` keep-alive connections, each a thread sending one
/// request after another, for `window` (after a warm-up of a tenth of it).
///
/// # Errors
///
/// When a process does not start or a request fails.
pub fn gateway_rps(connections: usize, window: Duration) -> Result<f64> {
    let bench = GatewayBench::start()?;
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let mut client = bench.client()?;
            let (counting, stop, done) = (counting.clone(), stop.clone(), done.clone());
            Ok(std::thread::spawn(move || -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    client.round_trip()?;
                    if counting.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            }))
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(window / 10);
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(window);
    counting.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
    }
    bench.stop()?;
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// The gateway child: `arg` is `SERVICE,PORT_FILE`; serves with the default options until
/// SIGTERM, after writing `PORT PID` and a newline to the port file.
fn serve_gateway(arg: &str) -> Result<()> {
    let (service, port_file) = arg
        .split_once(',')
        .context("gateway wants SERVICE,PORT_FILE")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let tmp = format!("{port_file}.tmp");
        std::fs::write(&tmp, format!("{port} {}\n", std::process::id()))?;
        std::fs::rename(&tmp, port_file)?;
        let gw = shm_runtime_gateway::Gateway::new(
            service,
            shm_runtime_gateway::GatewayOptions::default(),
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        gw.serve(listener, async move {
            term.recv().await;
        })
        .await?;
        Ok(())
    })
}

/// Runs the gateway child `role`; `Ok(false)` when the role is not this module's.
pub(crate) fn run_child(role: &str, arg: &str) -> Result<bool> {
    match role {
        "gateway" => {
            serve_gateway(arg)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
