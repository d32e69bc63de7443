//! HTTP/1.1 peer: JSON bodies over one keep-alive loopback TCP connection. The server is hyper on a
//! current-thread tokio runtime in a child process; the client is a plain blocking `TcpStream`
//! writing requests with `Content-Length` and reading responses, with `TCP_NODELAY` on both sides.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};

use super::{measure, reap, unique, wait_up, PeerRequest, PeerResponse, RoundTrip};
use crate::process::{pin_to, ChildProcess};
use crate::stats::Percentiles;

/// Largest response body the client accepts.
const MAX_BODY: usize = 1 << 20;

/// A client keeping one HTTP/1.1 connection to a JSON echo server in a child process.
///
/// Dropping it closes the connection, kills the server if it is still running, reaps it and
/// removes the file the server announced its port in; [`close`](Self::close) lets the server exit on
/// its own instead.
#[derive(Debug)]
pub struct HttpClient {
    conn: BufReader<TcpStream>,
    head: String,
    req: PeerRequest,
    out: Vec<u8>,
    body: Vec<u8>,
    line: String,
    port_file: PathBuf,
    child: Option<ChildProcess>,
}

impl HttpClient {
    /// Starts the server (a child process pinned to the second CPU, listening on an ephemeral
    /// loopback port) and connects to it.
    ///
    /// # Errors
    ///
    /// When the child cannot be started or does not listen within 30 s.
    pub fn start() -> Result<HttpClient> {
        let port_file = std::env::temp_dir().join(unique("shm-bench-http-port"));
        let result = HttpClient::connect(&port_file);
        let _ = std::fs::remove_file(&port_file);
        let (stream, port, child) = result?;
        Ok(HttpClient {
            conn: BufReader::new(stream),
            head: format!(
                "POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Content-Type: application/json\r\nContent-Length: "
            ),
            req: PeerRequest::echo(0),
            out: Vec::with_capacity(512),
            body: Vec::with_capacity(512),
            line: String::with_capacity(128),
            port_file,
            child: Some(child),
        })
    }

    fn connect(port_file: &std::path::Path) -> Result<(TcpStream, u16, ChildProcess)> {
        let arg = port_file
            .to_str()
            .context("temporary directory is not UTF-8")?;
        let mut child = ChildProcess::spawn("peer-http-server", arg)?;
        let port = wait_up(&mut child, "http server", || {
            std::fs::read_to_string(port_file)
                .ok()?
                .trim()
                .parse::<u16>()
                .ok()
        })?;
        let stream = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        Ok((stream, port, child))
    }

    /// Closes the connection and waits for the server to exit.
    ///
    /// # Errors
    ///
    /// When the server failed or did not exit within 30 s.
    pub fn close(mut self) -> Result<()> {
        let _ = self.conn.get_ref().shutdown(Shutdown::Both);
        match self.child.take() {
            Some(child) => reap(child, "http server"),
            None => Ok(()),
        }
    }

    /// Reads one response's head and returns its `Content-Length`.
    fn read_head(&mut self) -> Result<usize> {
        self.line.clear();
        ensure!(
            self.conn.read_line(&mut self.line)? > 0,
            "http server hung up"
        );
        let status = self.line.split_ascii_whitespace().nth(1);
        ensure!(
            status == Some("200"),
            "http server answered {:?}",
            self.line.trim_end()
        );
        let mut length = None;
        loop {
            self.line.clear();
            ensure!(
                self.conn.read_line(&mut self.line)? > 0,
                "http server hung up"
            );
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("unexpected transfer encoding {}", value.trim());
                }
            }
        }
        let length = length.context("response without Content-Length")?;
        ensure!(length <= MAX_BODY, "response body of {length} bytes");
        Ok(length)
    }
}

impl RoundTrip for HttpClient {
    fn round_trip(&mut self) -> Result<()> {
        self.req.id += 1;
        self.body.clear();
        serde_json::to_writer(&mut self.body, &self.req)?;
        self.out.clear();
        self.out.extend_from_slice(self.head.as_bytes());
        write!(self.out, "{}\r\n\r\n", self.body.len())?;
        self.out.extend_from_slice(&self.body);
        self.conn.get_mut().write_all(&self.out)?;
        let length = self.read_head()?;
        self.body.resize(length, 0);
        self.conn.read_exact(&mut self.body)?;
        let resp: PeerResponse = serde_json::from_slice(&self.body)?;
        self.req.check(&resp)
    }
}

impl Drop for HttpClient {
    fn drop(&mut self) {
        let _ = self.conn.get_ref().shutdown(Shutdown::Both);
        drop(self.child.take());
        let _ = std::fs::remove_file(&self.port_file);
    }
}

/// Round trips of JSON requests over one HTTP/1.1 keep-alive loopback connection to a hyper echo
/// server in a child process (current-thread tokio runtime; blocking `std` client; `TCP_NODELAY`;
/// client on the first CPU, server on the second). Warms up with `rounds / 10 + 100` round trips,
/// then records `rounds`. Returns round-trip percentiles, ns.
///
/// # Errors
///
/// When the server cannot be started, a round trip fails or the server does not exit cleanly.
pub fn http_json(rounds: u64) -> Result<Percentiles> {
    let mut client = HttpClient::start()?;
    let p = measure(&mut client, rounds)?;
    client.close()?;
    Ok(p)
}

async fn answer(req: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>> {
    let body = req.into_body().collect().await?.to_bytes();
    let request: PeerRequest = serde_json::from_slice(&body)?;
    let out = serde_json::to_vec(&request.answer())?;
    Ok(hyper::Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(out)))?)
}

/// The server child: listens on an ephemeral loopback port, writes the port number to the file
/// `arg` (atomically, by renaming), and serves one connection until the client closes it.
pub(super) fn serve(arg: &str) -> Result<()> {
    let _pin = pin_to(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let tmp = format!("{arg}.tmp");
        std::fs::write(&tmp, port.to_string())?;
        std::fs::rename(&tmp, arg)?;
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(answer),
            )
            .await?;
        Ok(())
    })
}
