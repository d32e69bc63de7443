//! In-process peer: two bounded crossbeam channels (requests, replies) between the client thread and
//! an echo thread of the same process, pinned to different cores. Both sides block in crossbeam's
//! own way (a short spin, then parking).

use std::thread::JoinHandle;

use anyhow::{anyhow, ensure, Result};
use crossbeam_channel::{bounded, Receiver, Sender};

use super::{measure, Pod64, RoundTrip};
use crate::process::pin_to;
use crate::stats::Percentiles;

/// A client thread's ends of the two channels to an echo thread.
///
/// Dropping it closes the request channel, which ends the echo thread, and joins the thread.
#[derive(Debug)]
pub struct ChannelClient {
    tx: Option<Sender<Pod64>>,
    rx: Receiver<Pod64>,
    msg: Pod64,
    echo: Option<JoinHandle<Result<()>>>,
}

impl ChannelClient {
    /// Starts the echo thread (pinned to the second CPU) with bounded channels of capacity 1.
    ///
    /// # Errors
    ///
    /// When the thread cannot be started.
    pub fn start() -> Result<ChannelClient> {
        let (tx, requests) = bounded::<Pod64>(1);
        let (replies, rx) = bounded::<Pod64>(1);
        let echo = std::thread::Builder::new()
            .name("peer-channel-echo".into())
            .spawn(move || -> Result<()> {
                let _pin = pin_to(1);
                while let Ok(msg) = requests.recv() {
                    replies.send(msg).map_err(|_| anyhow!("the client left"))?;
                }
                Ok(())
            })?;
        Ok(ChannelClient {
            tx: Some(tx),
            rx,
            msg: Pod64::echo(0),
            echo: Some(echo),
        })
    }

    /// Closes the request channel and joins the echo thread.
    ///
    /// # Errors
    ///
    /// When the echo thread failed.
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        drop(self.tx.take());
        match self.echo.take() {
            Some(h) => h.join().map_err(|_| anyhow!("echo thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl RoundTrip for ChannelClient {
    fn round_trip(&mut self) -> Result<()> {
        self.msg.id += 1;
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("client closed"))?;
        tx.send(self.msg)
            .map_err(|_| anyhow!("echo thread stopped"))?;
        let back = self.rx.recv()?;
        ensure!(
            back == self.msg,
            "echo returned {} for {}",
            back.id,
            self.msg.id
        );
        Ok(())
    }
}

impl Drop for ChannelClient {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Round trips of a 64-byte message through two bounded crossbeam channels between this thread
/// (pinned to the first CPU) and an echo thread (pinned to the second) of this process. Warms up
/// with `rounds / 10 + 100` round trips, then records `rounds`. Returns round-trip percentiles, ns.
///
/// # Errors
///
/// When the echo thread cannot be started or fails.
pub fn inproc_channel(rounds: u64) -> Result<Percentiles> {
    let mut client = ChannelClient::start()?;
    let p = measure(&mut client, rounds)?;
    client.close()?;
    Ok(p)
}
