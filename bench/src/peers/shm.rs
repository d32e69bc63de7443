//! The runtime's own round trip behind the [`RoundTrip`] interface: a [`Client`] of an
//! [`EchoServer`] in a child process, sending [`echo_request`] exactly as
//! [`rt_work::round_trips`](crate::rt_work::round_trips) does.

use anyhow::{anyhow, ensure, Result};
use shm_runtime::protocol::Request;
use shm_runtime::ring::WaitStrategy;
use shm_runtime::{Client, ClientOptions};

use super::{RoundTrip, PAYLOAD};
use crate::rt_work::{echo_request, EchoServer};

/// A runtime client connected to its own echo server in a child process (pinned to the second
/// CPU).
///
/// Dropping it disconnects and stops the server (SIGTERM, then it is reaped; the server removes
/// its segment); [`close`](Self::close) does the same and reports how the server exited.
#[derive(Debug)]
pub struct ShmPeer {
    client: Option<Client>,
    server: Option<EchoServer>,
    req: Request,
}

impl ShmPeer {
    /// Starts an echo server with wait strategy `server_wait` (`busy`, `park`...) and connects a
    /// client that waits for answers with `client_wait`.
    ///
    /// # Errors
    ///
    /// When the server does not come up within 10 s or the client cannot connect.
    pub fn start(server_wait: &str, client_wait: WaitStrategy) -> Result<ShmPeer> {
        let server = EchoServer::start(server_wait)?;
        let client = Client::connect_with(
            &server.name,
            ClientOptions {
                wait: client_wait,
                ..ClientOptions::default()
            },
        )?;
        Ok(ShmPeer {
            client: Some(client),
            server: Some(server),
            req: echo_request(),
        })
    }

    /// `shm_busy`: server and client busy-poll.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn busy() -> Result<ShmPeer> {
        ShmPeer::start("busy", WaitStrategy::BusySpin)
    }

    /// `shm_adaptive`: the default wait strategy on both sides (the server parks when idle).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn adaptive() -> Result<ShmPeer> {
        ShmPeer::start("park", WaitStrategy::default())
    }

    /// Disconnects and stops the server.
    ///
    /// # Errors
    ///
    /// When the server did not exit cleanly.
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        drop(self.client.take());
        match self.server.take() {
            Some(s) => s.stop(),
            None => Ok(()),
        }
    }
}

impl RoundTrip for ShmPeer {
    /// One [`Client::infer`] of [`echo_request`]; the answer must hold at least the payload.
    fn round_trip(&mut self) -> Result<()> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| anyhow!("client closed"))?;
        let answer = client.infer(&self.req)?;
        ensure!(answer.len() >= PAYLOAD, "short answer");
        Ok(())
    }
}

impl Drop for ShmPeer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
