//! The two phases of the soak, and the checks both make at their ends: the server's pool and
//! client table back to full ([`wait_full`]), a fresh client served ([`fresh_echo`]).

use std::time::{Duration, Instant};

use anyhow::Result;
use shm_runtime::protocol::ArchivedBody;
use shm_runtime::Client;

mod chaos;
mod server_kill;

pub(super) use chaos::chaos_phase;
pub(super) use server_kill::server_kill_phase;

use super::roles::generate;

/// The server process is child `SERVER_SLOT` (clients are `0..=clients`, the last the garbage one).
pub(super) const SERVER_SLOT: usize = 1000;
/// Waiter processes of the server-kill phase are children `WAITER_SLOT + i`.
pub(super) const WAITER_SLOT: usize = 100;

/// Waits until every client slot is free, every chunk is back in the pool and no job is queued or
/// running; `Err` says what is still missing at the bound.
pub(super) fn wait_full(service: &str, bound: Duration) -> Result<(usize, u32), String> {
    let end = Instant::now() + bound;
    loop {
        let st = shm_runtime::status(service).map_err(|e| e.to_string())?;
        let (free, total): (u32, u32) = st
            .pool
            .iter()
            .fold((0, 0), |(f, t), c| (f + c.free, t + c.count));
        let clients = st.clients.len();
        let busy: u64 = st.lanes.iter().map(|l| l.queued + l.running).sum();
        if free == total && clients == 0 && busy == 0 && st.pool_owners == 1 {
            return Ok((st.max_clients, total));
        }
        if Instant::now() >= end {
            return Err(format!(
                "after {bound:?}: {free} of {total} chunks free, {clients} client slots held, \
                 {busy} jobs queued or running, {} pool owners (the server's is 1)",
                st.pool_owners
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh connection's echo must come back intact.
pub(super) fn fresh_echo(service: &str) -> Result<(), String> {
    let client = Client::connect(service).map_err(|e| format!("connecting: {e}"))?;
    let text = "the fresh client's echo";
    let v = client
        .infer_timeout(&generate(7, "echo", text, 64), Duration::from_secs(10))
        .map_err(|e| format!("echo: {e}"))?;
    let r = v.response().map_err(|e| e.to_string())?;
    match &r.body {
        ArchivedBody::Generation(g) if g.text.as_str() == text && r.id.to_native() == 7 => Ok(()),
        other => Err(format!("echo came back as {other:?}")),
    }
}
