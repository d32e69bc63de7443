//! The chaos soak: a server and client processes under random SIGKILLs, one client writing
//! garbage into its own chunks and descriptors, one rewriting its requests in flight, and a server
//! killed while clients wait.
//!
//! ```text
//! cargo run --release -p shm-bench --bin soak -- --seconds 120 [--kill-every-ms 200] [--clients 6]
//! ```
//!
//! Phase 1 (chaos): a server process serves `echo` (echo backend), `slow` (sleep backend, one
//! request at a time, 1 ms per token) and `steps` (sleep backend on two workers, each stepping 2
//! slots, 2 ms per step: new requests go to the less loaded worker, queued ones are handed over).
//! Each client process runs two threads on one connection: a pipeline of mixed requests (echo text
//! and embeddings with their payload checked, slow and stepped generations, random priorities,
//! deadlines that expire, cancels mid-way) and a series of streams (chunk indices and text checked
//! against the final answer, some cancelled after a few chunks). Every client checks itself as it
//! goes: exactly one final answer per accepted request, of a kind allowed for that request, and no
//! answer for a ticket not in flight (`Client::stray_answers`). It reports its counts every 250 ms
//! and a violation the moment it sees one. The supervisor's chaos thread SIGKILLs a random client
//! process every `--kill-every-ms` (jittered) and restarts it; `--witnesses` clients are never
//! killed, so some requests are followed through the whole run. A garbage client (killed too)
//! sends malformed bytes, wrong lengths, forged, foreign and stale chunk ids and raw descriptors of
//! every kind; each of its requests must still get one answer. A scribbler (never killed) keeps
//! rewriting each of its requests while it is in flight (the whole request, flipped bytes, single
//! words): the server validates a private copy, so it must live and answer each exactly once, and
//! the good clients must see nothing of it. A slow reader (never killed) keeps long streams open
//! and reads them slowly, stopping for seconds: the server holds it to its share of the pool, and
//! the good clients must get no `ResourceExhausted` because of it. At the end: survivors drain and
//! report; the server must be alive, answer a fresh client's echo, have as many open files as at
//! the start, and its pool and client table must return to full.
//!
//! Phase 2 (server kill, `--server-kill-rounds`, default 3; `--server-kill` runs only this phase):
//! waiter processes block in a long request, a stream and a loop of echoes; the server is
//! SIGKILLed; every waiting call must fail with `Error::ServerGone` within `GONE_BOUND` (2 s). A new
//! server then replaces the stale segment under the same name and serves the reconnecting waiters
//! and a fresh client.
//!
//! The soak exits nonzero, naming each violated invariant, when anything goes wrong; it leaves no
//! process and no `/dev/shm` file of its own behind.
//!
//! The binary (`src/bin/soak.rs`) calls [`main`]. One process image plays every part, chosen by
//! an environment variable its parent sets:
//!
//! | module | what |
//! |---|---|
//! | `supervisor` | options, the run of the phases, the findings, the children's lines |
//! | `child_process` | `SupervisedChild`: a child started in a role, talked to over stdin/stdout |
//! | `phases` | the chaos phase and the server-kill phase, and the checks at their ends |
//! | `roles` | what a child process runs: `server`, `client`, `garbage`, `scribbler`, `reader`, `waiter` |
//! | `oracle` | what a client checks in every answer, and its counters |
//! | `lines` | the line protocol between children and supervisor |
//! | `rng` | reproducible pseudo-random choices |
use std::process::ExitCode;
use std::time::Duration;

mod child_process;
mod lines;
mod oracle;
mod phases;
mod rng;
mod roles;
mod supervisor;

const ROLE_VAR: &str = "SHM_SOAK_ROLE";
const SERVICE_VAR: &str = "SHM_SOAK_SERVICE";
const ARG_VAR: &str = "SHM_SOAK_ARG";

/// A request with no final answer this long after it was submitted is lost.
/// Set (to `1`) in the soak's environment by `--trusted-clients`: its server processes then read
/// requests in place instead of copying them (`ServerConfig::trusted_clients`).
const TRUSTED_CLIENTS_VAR: &str = "SHM_SOAK_TRUSTED_CLIENTS";

const LOST_AFTER: Duration = Duration::from_secs(20);
/// Every call waiting on a SIGKILLed server must fail with `ServerGone` within this bound.
const GONE_BOUND: Duration = Duration::from_secs(2);
/// How long the supervisor waits for the housekeeper to reap dead clients and refill the pool.
const REAP_BOUND: Duration = Duration::from_secs(5);
/// How long surviving clients may take to drain and report at the end.
const DRAIN_BOUND: Duration = Duration::from_secs(40);

/// Runs the soak: the supervisor, or the child role this process was started in. Returns the
/// process's exit status: success when no invariant was violated, 1 when one was, 2 when the soak
/// itself could not run.
pub fn main() -> ExitCode {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        let service = std::env::var(SERVICE_VAR).unwrap_or_default();
        let arg = std::env::var(ARG_VAR).unwrap_or_default();
        return match roles::run_role(&role, &service, &arg) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("soak {role} {arg}: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match supervisor::supervise() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}
