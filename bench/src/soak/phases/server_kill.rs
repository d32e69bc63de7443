//! Phase 2, server kill: waiters block in a long request, a stream and a loop of echoes; the server
//! is SIGKILLed and every waiting call must fail with `ServerGone` within [`GONE_BOUND`]; a new
//! server then takes over the name and serves the reconnecting waiters.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{fresh_echo, SERVER_SLOT, WAITER_SLOT};
use crate::soak::child_process::{ChildLine, SupervisedChild};
use crate::soak::rng::Rng;
use crate::soak::supervisor::{Findings, Mailbox, Opts};
use crate::soak::GONE_BOUND;

/// Runs `opts.server_kill_rounds` rounds of the server-kill phase on `service`; violations go to
/// `findings`, `Err` when the phase itself could not run.
pub(crate) fn server_kill_phase(opts: &Opts, service: &str, findings: &mut Findings) -> Result<()> {
    const WAITERS: usize = 3;
    let (tx, rx) = mpsc::channel::<ChildLine>();
    let mut mb = Mailbox::new(rx);
    let violations_before = findings.violations.len();
    let mut rng = Rng::new(opts.seed ^ 0x5E4E);
    let mut worst = Duration::ZERO;
    let mut gen = 0u64;
    let mut server = SupervisedChild::spawn("server", service, SERVER_SLOT, gen, "", &tx)?;
    mb.expect(
        findings,
        (SERVER_SLOT, gen),
        "READY",
        Duration::from_secs(20),
    )?;
    println!(
        "soak: server-kill phase on {service}: {} rounds, {WAITERS} waiter processes x 3 calls, \
         bound {GONE_BOUND:?}",
        opts.server_kill_rounds
    );
    for round in 0..opts.server_kill_rounds {
        let mut waiters: Vec<SupervisedChild> = (0..WAITERS)
            .map(|w| {
                SupervisedChild::spawn("waiter", service, WAITER_SLOT + w, round as u64, "", &tx)
            })
            .collect::<Result<_>>()?;
        for w in 0..WAITERS {
            mb.expect(
                findings,
                (WAITER_SLOT + w, round as u64),
                "WAITING",
                Duration::from_secs(20),
            )?;
        }
        std::thread::sleep(Duration::from_millis(rng.range(20, 300)));
        server.kill9();
        let killed_at = Instant::now();
        let mut gone = 0;
        let mut all_gone = 0;
        let end = killed_at + GONE_BOUND + Duration::from_secs(10);
        while all_gone < WAITERS && Instant::now() < end {
            let Some((slot, _, line, at)) = mb.next(findings, Duration::from_millis(50)) else {
                continue;
            };
            if let Some(rest) = line.strip_prefix("GONE ") {
                gone += 1;
                let took = at.saturating_duration_since(killed_at);
                worst = worst.max(took);
                if !rest.ends_with(" ServerGone") {
                    findings.violation(format!(
                        "round {round}: waiter {slot} call ended with {rest:?}, not ServerGone"
                    ));
                } else if took > GONE_BOUND {
                    findings.violation(format!(
                        "round {round}: waiter {slot} saw ServerGone after {took:?} (bound {GONE_BOUND:?})"
                    ));
                }
            } else if line == "ALLGONE" {
                all_gone += 1;
            }
        }
        if all_gone < WAITERS || gone < 3 * WAITERS {
            findings.violation(format!(
                "round {round}: {gone} of {} waiting calls ended within {:?}",
                3 * WAITERS,
                end - killed_at
            ));
        }
        // The dead server's segment is stale, and a new server takes its name over.
        match shm_runtime::status(service) {
            Ok(st) if !st.server_alive => {}
            Ok(_) => findings.violation(format!("round {round}: the killed server looks alive")),
            Err(e) => findings.violation(format!("round {round}: the stale segment is gone: {e}")),
        }
        gen += 1;
        server = SupervisedChild::spawn("server", service, SERVER_SLOT, gen, "", &tx)?;
        mb.expect(
            findings,
            (SERVER_SLOT, gen),
            "READY",
            Duration::from_secs(20),
        )?;
        for w in waiters.iter_mut() {
            w.tell("again");
        }
        for w in 0..WAITERS {
            match mb.expect(
                findings,
                (WAITER_SLOT + w, round as u64),
                "RECONNECTED",
                Duration::from_secs(20),
            ) {
                Ok((line, _)) if line == "RECONNECTED" => {}
                Ok((line, _)) => findings.violation(format!("round {round}: waiter {w}: {line}")),
                Err(e) => findings.violation(format!("round {round}: waiter {w}: {e:#}")),
            }
        }
        for w in waiters.iter_mut() {
            match w.wait_bounded(Duration::from_secs(10)) {
                Some(st) if st.success() => {}
                other => findings.violation(format!(
                    "round {round}: waiter {} ended with {other:?}",
                    w.slot
                )),
            }
        }
        if let Err(e) = fresh_echo(service) {
            findings.violation(format!("round {round}: the restarted server: {e}"));
        }
    }
    server.signal(libc::SIGTERM);
    match server.wait_bounded(Duration::from_secs(15)) {
        Some(st) if st.success() => {}
        other => findings.violation(format!("the last server's drain ended with {other:?}")),
    }
    mb.drain(findings);
    let failed = findings.violations.len() - violations_before;
    println!(
        "soak: server-kill phase: {} rounds x {} waiting calls; slowest ServerGone after {:.0} ms \
         (bound {GONE_BOUND:?}); {}",
        opts.server_kill_rounds,
        3 * WAITERS,
        worst.as_secs_f64() * 1e3,
        if failed == 0 {
            "every call got ServerGone in time, and each restarted server took over the stale \
             segment and served the reconnecting waiters and a fresh client"
                .to_owned()
        } else {
            format!("{failed} violation(s)")
        }
    );
    Ok(())
}
