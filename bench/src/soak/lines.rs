//! The line protocol between the soak's children and its supervisor: a child says `READY`,
//! `STAT key=value...`, `DONE key=value...`, `VIOLATION who: what` and role-specific lines on
//! stdout; the supervisor writes `stop` (and the waiters' `again`) to its stdin.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// One line to the supervisor. A closed pipe means the supervisor has gone: leave.
pub(super) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Watches stdin: `stop` sets `stop`, other lines go to `lines`; at end of input (the supervisor
/// has gone) the process exits at once, unless `eof_stops` (then it only sets `stop`).
pub(super) fn watch_stdin(
    stop: Arc<AtomicBool>,
    lines: Option<mpsc::Sender<String>>,
    eof_stops: bool,
) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "stop" {
                stop.store(true, Ordering::Release);
            } else if let Some(tx) = &lines {
                let _ = tx.send(line.trim().to_owned());
            }
        }
        if eof_stops {
            stop.store(true, Ordering::Release);
        } else {
            std::process::exit(3);
        }
    });
}

/// `key=value` pairs of a STAT or DONE line.
pub(super) fn parse_counts(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

pub(super) fn add_counts(total: &mut BTreeMap<String, u64>, c: &BTreeMap<String, u64>) {
    for (k, v) in c {
        *total.entry(k.clone()).or_default() += v;
    }
}
