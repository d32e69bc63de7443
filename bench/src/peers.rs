//! Every transport of the round-trip comparison through one [`RoundTrip`] interface: the runtime's
//! own ([`ShmPeer`], defined here: it needs this crate's echo server) and the peers of
//! [`shm_peers`], re-exported.
//!
//! [`ShmPeer`] is a [`Client`] of an [`EchoServer`] in a child process, sending [`echo_request`]
//! exactly as [`runtime_work::round_trips`](crate::runtime_work::round_trips) does.

use anyhow::{anyhow, ensure, Result};
use shm_runtime::protocol::Request;
use shm_runtime::ring::WaitStrategy;
use shm_runtime::{Client, ClientOptions};

pub use shm_peers::{
    http_json, iceoryx2, iceoryx2_with, inproc_channel, measure, time_round_trips, uds_bincode,
    ChannelClient, HttpClient, IceoryxClient, IceoryxWait, RoundTrip, UdsClient, PAYLOAD,
};

use crate::runtime_work::{echo_request, EchoServer};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    /// A test binary has libtest's `main`, which knows nothing of benchmark children: a child that a
    /// test starts (the test binary re-executed with its role in the environment) runs its role from
    /// here, before `main`, and exits.
    #[used]
    #[link_section = ".init_array"]
    static RUN_CHILD_ROLE: extern "C" fn() = run_child_role;

    extern "C" fn run_child_role() {
        crate::child::dispatch();
    }

    /// Prints each transport's percentiles (`cargo test --release -p shm-bench --lib
    /// peers::tests::figures -- --ignored --nocapture`); checks nothing about timing.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn figures() {
        let rounds = 20_000;
        let show = |name: &str, p: Result<Percentiles>| match p {
            Ok(p) => println!(
                "{name:>16}: p50 {:>8.0} ns  p99 {:>8.0} ns  p99.9 {:>8.0} ns  ({} samples)",
                p.p50, p.p99, p.p999, p.samples
            ),
            Err(e) => println!("{name:>16}: failed: {e:#}"),
        };
        let shm = |start: fn() -> Result<ShmPeer>| -> Result<Percentiles> {
            let mut peer = start()?;
            let p = measure(&mut peer, rounds)?;
            peer.close()?;
            Ok(p)
        };
        show("shm_busy", shm(ShmPeer::busy));
        show("shm_adaptive", shm(ShmPeer::adaptive));
        show("uds_bincode", uds_bincode(rounds));
        show("http_json", http_json(rounds));
        show("iceoryx2", iceoryx2(rounds));
        show("iceoryx2_event", iceoryx2_with(IceoryxWait::Event, rounds));
        show("inproc_channel", inproc_channel(rounds));
    }
}
