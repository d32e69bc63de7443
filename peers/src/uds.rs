//! Unix domain socket peer: `u32` little-endian length-prefixed frames holding bincode-encoded
//! [`PeerRequest`]s and [`PeerResponse`]s, blocking I/O on both sides, one connection.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{measure, reap, unique, wait_up, PeerRequest, PeerResponse, RoundTrip};
use crate::process::{pin_to, ChildProcess};
use crate::stats::Percentiles;

/// Largest frame either side accepts.
const MAX_FRAME: usize = 1 << 20;

fn codec() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` behind a length prefix into `buf` and writes the frame with one call.
fn write_frame<T: Serialize>(out: &mut impl Write, buf: &mut Vec<u8>, value: &T) -> Result<()> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    bincode::serde::encode_into_std_write(value, buf, codec())?;
    let len = u32::try_from(buf.len() - 4).context("frame too long")?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    out.write_all(buf)?;
    Ok(())
}

/// Reads one frame into `buf` and decodes it; `Ok(None)` when the peer closed the connection
/// between frames.
fn read_frame<T: DeserializeOwned>(input: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<T>> {
    let mut len = [0; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    ensure!(len <= MAX_FRAME, "frame of {len} bytes");
    buf.resize(len, 0);
    input.read_exact(buf)?;
    let (value, used) = bincode::serde::decode_from_slice(buf, codec())?;
    ensure!(
        used == len,
        "frame of {len} bytes holds {used} bytes of message"
    );
    Ok(Some(value))
}

/// A client connected to an echo server in a child process over a Unix domain socket.
///
/// Dropping it closes the connection, kills the server if it is still running, reaps it and
/// removes the socket's path; [`close`](Self::close) lets the server exit on its own instead.
#[derive(Debug)]
pub struct UdsClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    req: PeerRequest,
    buf: Vec<u8>,
    path: PathBuf,
    child: Option<ChildProcess>,
}

impl UdsClient {
    /// Starts the server (a child process pinned to the second CPU) and connects to it.
    ///
    /// # Errors
    ///
    /// When the child cannot be started or does not listen within 30 s.
    pub fn start() -> Result<UdsClient> {
        let path = std::env::temp_dir().join(format!("{}.sock", unique("shm-bench-uds")));
        let arg = path.to_str().context("temporary directory is not UTF-8")?;
        let mut child = ChildProcess::spawn("peer-uds-server", arg)?;
        let connected = wait_up(&mut child, "uds server", || UnixStream::connect(&path).ok());
        let writer = match connected {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        Ok(UdsClient {
            reader: BufReader::new(writer.try_clone()?),
            writer,
            req: PeerRequest::echo(0),
            buf: Vec::with_capacity(256),
            path,
            child: Some(child),
        })
    }

    /// Closes the connection and waits for the server to exit.
    ///
    /// # Errors
    ///
    /// When the server failed or did not exit within 30 s.
    pub fn close(mut self) -> Result<()> {
        let _ = self.writer.shutdown(Shutdown::Both);
        match self.child.take() {
            Some(child) => reap(child, "uds server"),
            None => Ok(()),
        }
    }
}

impl RoundTrip for UdsClient {
    fn round_trip(&mut self) -> Result<()> {
        self.req.id += 1;
        write_frame(&mut self.writer, &mut self.buf, &self.req)?;
        let resp: PeerResponse =
            read_frame(&mut self.reader, &mut self.buf)?.context("uds server hung up")?;
        self.req.check(&resp)
    }
}

impl Drop for UdsClient {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Both);
        drop(self.child.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Round trips over a Unix domain socket with bincode frames to an echo server in a child process
/// (blocking reads and writes on both sides, one connection, client on the first CPU, server on the
/// second). Warms up with `rounds / 10 + 100` round trips, then records `rounds`. Returns
/// round-trip percentiles, ns.
///
/// # Errors
///
/// When the server cannot be started, a round trip fails or the server does not exit cleanly.
pub fn uds_bincode(rounds: u64) -> Result<Percentiles> {
    let mut client = UdsClient::start()?;
    let p = measure(&mut client, rounds)?;
    client.close()?;
    Ok(p)
}

/// The server child: listens at the path `arg`, serves one connection until the client closes it.
pub(super) fn serve(arg: &str) -> Result<()> {
    let _pin = pin_to(1);
    let listener = UnixListener::bind(arg).with_context(|| format!("binding {arg}"))?;
    let accepted = listener.accept();
    let _ = std::fs::remove_file(arg);
    let (stream, _) = accepted?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let (mut inbuf, mut outbuf) = (Vec::with_capacity(256), Vec::with_capacity(256));
    while let Some(req) = read_frame::<PeerRequest>(&mut reader, &mut inbuf)? {
        write_frame(&mut writer, &mut outbuf, &req.answer())?;
    }
    Ok(())
}
