//! Phase 1, chaos: client processes SIGKILLed at random and restarted, a garbage client, a
//! scribbler rewriting its requests in flight, witnesses that are never killed; at the end the survivors drain and the server must be whole.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{fresh_echo, wait_full, SERVER_SLOT};
use crate::soak::child_process::{ChildLine, SupervisedChild};
use crate::soak::lines::add_counts;
use crate::soak::rng::Rng;
use crate::soak::supervisor::{open_fds, shm_files, Findings, Mailbox, Opts};
use crate::soak::{DRAIN_BOUND, REAP_BOUND};

/// Runs the chaos phase on `service` for `opts.seconds`; violations go to `findings`, `Err` when
/// the phase itself could not run.
pub(crate) fn chaos_phase(opts: &Opts, service: &str, findings: &mut Findings) -> Result<()> {
    let (tx, rx) = mpsc::channel::<ChildLine>();
    let mut mb = Mailbox::new(rx);
    let mut server = SupervisedChild::spawn("server", service, SERVER_SLOT, 0, "", &tx)?;
    mb.expect(findings, (SERVER_SLOT, 0), "READY", Duration::from_secs(20))?;
    let server_pid = server.pid();
    let fds_start = open_fds(server_pid).context("counting the server's open files")?;
    let n = opts.clients;
    let garbage_slot = n;
    // Never killed: it rewrites its requests in flight for the whole phase.
    let scribbler_slot = n + 1;
    // Never killed: it reads its long streams slowly, stopping for seconds at a time.
    let reader_slot = n + 2;
    let spawn_client = |slot: usize, gen: u64| -> Result<SupervisedChild> {
        let seed = opts
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add((slot as u64) << 32 | gen);
        let role = if slot == garbage_slot {
            "garbage"
        } else if slot == scribbler_slot {
            "scribbler"
        } else if slot == reader_slot {
            "reader"
        } else {
            "client"
        };
        SupervisedChild::spawn(
            role,
            service,
            slot,
            gen,
            &format!("{slot},{gen},{seed}"),
            &tx,
        )
    };
    let children: Vec<SupervisedChild> = (0..=reader_slot)
        .map(|s| spawn_client(s, 0))
        .collect::<Result<_>>()?;
    let children = Arc::new(Mutex::new(children));
    let kills = Arc::new(AtomicU64::new(0));
    let restarts = Arc::new(AtomicU64::new(0));
    let stop_chaos = Arc::new(AtomicBool::new(false));
    let killed_keys = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
    println!(
        "soak: chaos phase {:.0} s on {service}: server pid {server_pid}, {n} clients ({} never \
         killed) + 1 garbage client + 1 scribbler (rewrites its requests in flight, never killed) \
         + 1 slow reader of long streams (never killed), kill every {:?}",
        opts.seconds, opts.witnesses, opts.kill_every
    );
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(opts.seconds);
    let chaos_result: Result<()> = std::thread::scope(|s| {
        let chaos = s.spawn(|| -> Result<()> {
            let Some(every) = opts.kill_every else {
                return Ok(());
            };
            let mut rng = Rng::new(opts.seed ^ 0xC4A05);
            let victims: Vec<usize> = (opts.witnesses..=n).collect();
            while !stop_chaos.load(Ordering::Acquire) {
                let pause = rng.range(
                    every.as_micros() as u64 / 2,
                    every.as_micros() as u64 * 3 / 2 + 1,
                );
                std::thread::sleep(Duration::from_micros(pause));
                if stop_chaos.load(Ordering::Acquire) {
                    break;
                }
                let slot = victims[rng.range(0, victims.len() as u64) as usize];
                let mut children = children.lock().unwrap_or_else(|p| p.into_inner());
                let child = &mut children[slot];
                child.kill9();
                kills.fetch_add(1, Ordering::Relaxed);
                killed_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((slot, child.gen));
                let gen = child.gen + 1;
                children[slot] = spawn_client(slot, gen)?;
                restarts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        // Meanwhile: collect reports, watch the server and unexpected client exits.
        let mut last_print = Instant::now();
        while Instant::now() < end {
            if let Some((slot, gen, line, _)) = mb.next(findings, Duration::from_millis(20)) {
                println!("soak: child {slot}.{gen}: {line}");
            }
            for key in killed_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                if let Some(c) = findings.latest.remove(&key) {
                    findings.count_killed(key, &c);
                }
            }
            if let Some(st) = server.exited() {
                findings.violation(format!("the server exited during the chaos phase: {st}"));
                break;
            }
            {
                let mut children = children.lock().unwrap_or_else(|p| p.into_inner());
                for k in children.iter_mut() {
                    if let Some(st) = k.exited() {
                        findings.violation(format!(
                            "client {}.{} exited on its own during the chaos: {st}",
                            k.slot, k.gen
                        ));
                    }
                }
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                println!(
                    "soak: {:.0} s: kills {}, {} violation(s)",
                    started.elapsed().as_secs_f64(),
                    kills.load(Ordering::Relaxed),
                    findings.violations.len()
                );
            }
        }
        stop_chaos.store(true, Ordering::Release);
        chaos.join().expect("the chaos thread does not panic")
    });
    chaos_result?;
    let chaos_secs = started.elapsed().as_secs_f64();
    for key in killed_keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
    {
        if let Some(c) = findings.latest.remove(&key) {
            findings.count_killed(key, &c);
        }
    }
    // Survivors drain and findings.
    let mut children = std::mem::take(&mut *children.lock().unwrap_or_else(|p| p.into_inner()));
    for k in children.iter_mut() {
        k.tell("stop");
    }
    let drain_end = Instant::now() + DRAIN_BOUND;
    let keys: Vec<(usize, u64)> = children.iter().map(|k| (k.slot, k.gen)).collect();
    while keys.iter().any(|k| !findings.closed.contains(k)) && Instant::now() < drain_end {
        if let Some((slot, gen, line, _)) = mb.next(findings, Duration::from_millis(20)) {
            println!("soak: child {slot}.{gen}: {line}");
        }
    }
    for k in children.iter_mut() {
        let left = drain_end.saturating_duration_since(Instant::now());
        match k.wait_bounded(left.max(Duration::from_millis(100))) {
            None => findings.violation(format!(
                "client {}.{} did not finish draining within {DRAIN_BOUND:?}",
                k.slot, k.gen
            )),
            Some(st) if !st.success() => findings.violation(format!(
                "client {}.{} failed its own checks ({st})",
                k.slot, k.gen
            )),
            Some(_) => {}
        }
        if !findings.done.contains(&(k.slot, k.gen)) {
            findings.violation(format!("client {}.{} sent no final report", k.slot, k.gen));
        }
    }
    drop(children);
    mb.drain(findings);
    // The server: alive, back to full, serving, no leaked files.
    if let Some(st) = server.exited() {
        findings.violation(format!("the server died: {st}"));
    } else {
        let reaped_in = Instant::now();
        match wait_full(service, REAP_BOUND) {
            Ok((slots, chunks)) => println!(
                "soak: pool ({chunks} chunks) and client table ({slots} slots) back to full {:.0} ms \
                 after the clients ended",
                reaped_in.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => findings.violation(format!("the pool or client table did not return to full: {e}")),
        }
        if let Err(e) = fresh_echo(service) {
            findings.violation(format!("a fresh client was not served: {e}"));
        }
        if let Err(e) = wait_full(service, REAP_BOUND) {
            findings.violation(format!("after the fresh client: {e}"));
        }
        let fds_end = open_fds(server_pid).unwrap_or(0);
        println!("soak: server open files: {fds_start} at the start, {fds_end} at the end");
        if fds_end != fds_start {
            findings.violation(format!(
                "the server's open files went from {fds_start} to {fds_end}"
            ));
        }
        if let Ok(st) = shm_runtime::status(service) {
            println!(
                "soak: server counters: requests {}, ok {}, clients reaped {}, chunks reclaimed {}",
                st.requests, st.ok, st.clients_reaped, st.chunks_reclaimed
            );
        }
        server.signal(libc::SIGTERM);
        match server.wait_bounded(Duration::from_secs(15)) {
            Some(st) if st.success() => {}
            Some(st) => findings.violation(format!("the server's drain failed: {st}")),
            None => findings.violation("the server did not stop within 15 s of SIGTERM".into()),
        }
    }
    let left = shm_files(service);
    if !left.is_empty() {
        findings.violation(format!("segments left after the server stopped: {left:?}"));
    }
    // Leftover STATs of processes killed at the very end.
    let latest: Vec<_> = findings.latest.drain().collect();
    for (key, c) in latest {
        findings.count_killed(key, &c);
    }
    let mut all = findings.killed.clone();
    add_counts(&mut all, &findings.survived);
    let g = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let finals = |m: &BTreeMap<String, u64>| {
        [
            "ok",
            "ok_timeout_finish",
            "timed_out",
            "cancelled",
            "busy",
            "resource_exhausted",
            "invalid",
            "model_not_found",
            "protocol",
            "server_gone",
            "shutting_down",
            "other_error",
            "wrong",
            "lost",
        ]
        .iter()
        .map(|k| g(m, k))
        .sum::<u64>()
    };
    println!("soak: chaos phase results ({chaos_secs:.1} s of chaos)");
    println!(
        "  requests submitted: {} (surviving processes {}, killed processes {})",
        g(&all, "submitted"),
        g(&findings.survived, "submitted"),
        g(&findings.killed, "submitted")
    );
    println!(
        "  final answers: {} = ok {} + ok with finish Timeout {} + timed out {} + cancelled {} + \
         busy {} + resource exhausted {} + invalid {} + model not found {} + protocol {} + other {}",
        finals(&all),
        g(&all, "ok"),
        g(&all, "ok_timeout_finish"),
        g(&all, "timed_out"),
        g(&all, "cancelled"),
        g(&all, "busy"),
        g(&all, "resource_exhausted"),
        g(&all, "invalid"),
        g(&all, "model_not_found"),
        g(&all, "protocol"),
        g(&all, "other_error") + g(&all, "server_gone") + g(&all, "shutting_down"),
    );
    println!(
        "  stream chunks {}, cancels sent {}, submits refused busy {}, wrong answers {}, lost {}",
        g(&all, "partials"),
        g(&all, "cancels_sent"),
        g(&all, "submit_busy"),
        g(&all, "wrong"),
        g(&all, "lost")
    );
    println!(
        "  surviving processes: {} submitted, {} final answers; killed processes: {} submitted, \
         {} answered before their death (last report)",
        g(&findings.survived, "submitted"),
        finals(&findings.survived),
        g(&findings.killed, "submitted"),
        finals(&findings.killed)
    );
    println!(
        "  kills {}, restarts {}, garbage writes {} ({} raw descriptors), scribbler rewrites {} \
         of requests in flight",
        kills.load(Ordering::Relaxed),
        restarts.load(Ordering::Relaxed),
        g(&all, "garbage"),
        g(&all, "raw_descriptors"),
        g(&all, "rewrites")
    );
    let mut good = BTreeMap::new();
    for slot in 0..garbage_slot {
        if let Some(c) = findings.by_slot.get(&slot) {
            add_counts(&mut good, c);
        }
    }
    let reader = findings
        .by_slot
        .get(&reader_slot)
        .cloned()
        .unwrap_or_default();
    println!(
        "  good clients: {} final answers, busy {} (submits refused busy {}), resource exhausted {}",
        finals(&good),
        g(&good, "busy"),
        g(&good, "submit_busy"),
        g(&good, "resource_exhausted")
    );
    println!(
        "  slow reader: {} streams, ok {} + resource exhausted {} + timed out {}; {} parts, {} \
         pauses in reading",
        g(&reader, "submitted"),
        g(&reader, "ok"),
        g(&reader, "resource_exhausted"),
        g(&reader, "timed_out"),
        g(&reader, "partials"),
        g(&reader, "pauses")
    );
    if g(&good, "resource_exhausted") > 0 {
        findings.violation(format!(
            "good clients got {} ResourceExhausted answers",
            g(&good, "resource_exhausted")
        ));
    }
    if g(&findings.survived, "submitted") != finals(&findings.survived) {
        findings.violation(format!(
            "surviving processes submitted {} requests but got {} final answers",
            g(&findings.survived, "submitted"),
            finals(&findings.survived)
        ));
    }
    Ok(())
}
