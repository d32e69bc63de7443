//! What a child process of the soak runs, by role, and the helpers they share.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shm_runtime::protocol::{Input, Params, Request, Task};
use shm_runtime::Client;

use super::lines::say;
use super::oracle::Tally;

mod client;
mod garbage;
mod reader;
mod scribbler;
mod server;
mod waiter;

use client::role_client;
use garbage::role_garbage;
use reader::role_reader;
use scribbler::role_scribbler;
use server::role_server;
use waiter::role_waiter;

/// Runs child role `role` (`server`, `client`, `garbage`, `scribbler`, `reader`, `waiter`) against
/// `service`; the
/// process's exit status.
pub(super) fn run_role(role: &str, service: &str, arg: &str) -> Result<ExitCode> {
    match role {
        "server" => role_server(service).map(|()| ExitCode::SUCCESS),
        "client" => role_client(service, arg),
        "garbage" => role_garbage(service, arg),
        "scribbler" => role_scribbler(service, arg),
        "reader" => role_reader(service, arg),
        "waiter" => role_waiter(service),
        other => bail!("unknown role {other:?}"),
    }
}

/// A generation request of `max_tokens` tokens for `model` with input `text`.
pub(super) fn generate(id: u64, model: &str, text: &str, max_tokens: u32) -> Request {
    Request {
        id,
        model: model.into(),
        task: Task::Generate,
        input: Input::Text(text.into()),
        params: Params {
            max_tokens,
            ..Params::default()
        },
    }
}

/// A client role's argument `INDEX,GEN,SEED` (missing or bad parts: 0, 0 and 1).
pub(super) fn client_arg(arg: &str) -> (u64, u64, u64) {
    let mut parts = arg.split(',').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(1),
    )
}

/// Connects to `service`, retrying for up to `bound` while every client slot is taken.
pub(super) fn connect_retry(service: &str, bound: Duration) -> Result<Client> {
    let end = Instant::now() + bound;
    loop {
        match Client::connect(service) {
            Ok(c) => return Ok(c),
            // Slots of killed clients come back when the housekeeper reaps them.
            Err(e) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("connecting"),
        }
    }
}

/// The end of a single-connection role: nothing may be left in flight; says `DONE` with the
/// counts, and returns the exit status (failure when any invariant was violated).
pub(super) fn report_done(client: &Client, tally: &Tally, who: &str) -> ExitCode {
    if client.in_flight() != 0 {
        tally.violation(
            who,
            &format!("{} requests still in flight at the end", client.in_flight()),
        );
    }
    say(&tally.line(&format!("DONE strays={}", client.stray_answers())));
    if tally.get("violations") == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
