//! The supervisor: parses the options, runs the phases, collects what the children report
//! ([`Findings`], [`Mailbox`]) and checks that no process and no `/dev/shm` file is left behind.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shm_runtime::ring::SegmentOpenOptions;

use super::child_process::ChildLine;
use super::lines::{add_counts, parse_counts};
use super::phases::{chaos_phase, server_kill_phase};

/// The command line of the soak.
#[derive(Debug, Clone)]
pub(super) struct Opts {
    pub(super) seconds: f64,
    pub(super) kill_every: Option<Duration>,
    pub(super) clients: usize,
    pub(super) witnesses: usize,
    pub(super) seed: u64,
    pub(super) chaos: bool,
    pub(super) server_kill_rounds: usize,
}

pub(super) fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        seconds: 60.0,
        kill_every: Some(Duration::from_millis(200)),
        clients: 6,
        witnesses: 2,
        seed: std::process::id() as u64,
        chaos: true,
        server_kill_rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = val("--seconds")?.parse()?,
            "--kill-every-ms" => {
                let ms: u64 = val("--kill-every-ms")?.parse()?;
                o.kill_every = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--clients" => o.clients = val("--clients")?.parse()?,
            "--witnesses" => o.witnesses = val("--witnesses")?.parse()?,
            "--seed" => o.seed = val("--seed")?.parse()?,
            "--server-kill" => o.chaos = false,
            "--server-kill-rounds" => {
                o.server_kill_rounds = val("--server-kill-rounds")?.parse()?
            }
            "--no-server-kill" => o.server_kill_rounds = 0,
            // The server reads requests in place (the scribbler then races its validation). The
            // server processes inherit it through the environment.
            "--trusted-clients" => std::env::set_var(super::TRUSTED_CLIENTS_VAR, "1"),
            "-h" | "--help" => {
                println!(
                    "soak [--seconds S] [--kill-every-ms MS (0: no kills)] [--clients N] \
                     [--witnesses W] [--seed X] [--server-kill (that phase only)] \
                     [--server-kill-rounds R] [--no-server-kill] [--trusted-clients (server \
                     reads requests in place)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if o.clients == 0 || o.clients > 24 {
        bail!("--clients must be 1..=24");
    }
    o.witnesses = o.witnesses.min(o.clients);
    Ok(o)
}

/// `/dev/shm` files of this soak's services (segments and their temporary names).
pub(super) fn shm_files(prefix: &str) -> Vec<String> {
    let dir = SegmentOpenOptions::default().dir;
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("shmr.") && n.contains(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub(super) fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Everything the supervisor learns.
#[derive(Default)]
pub(super) struct Findings {
    pub(super) violations: Vec<String>,
    /// Last STAT of each (slot, generation) still running.
    pub(super) latest: HashMap<(usize, u64), BTreeMap<String, u64>>,
    /// Counts of killed processes (their last STAT).
    pub(super) killed: BTreeMap<String, u64>,
    /// Counts of surviving processes (their DONE line).
    pub(super) survived: BTreeMap<String, u64>,
    /// Counts of every process, killed or surviving, by slot (so by role).
    pub(super) by_slot: HashMap<usize, BTreeMap<String, u64>>,
    pub(super) done: HashSet<(usize, u64)>,
    pub(super) closed: HashSet<(usize, u64)>,
}

impl Findings {
    pub(super) fn violation(&mut self, msg: String) {
        eprintln!("soak: VIOLATION {msg}");
        self.violations.push(msg);
    }

    /// Counts the last report of killed process `key`.
    pub(super) fn count_killed(&mut self, key: (usize, u64), c: &BTreeMap<String, u64>) {
        add_counts(&mut self.killed, c);
        add_counts(self.by_slot.entry(key.0).or_default(), c);
    }

    pub(super) fn on_event(&mut self, ev: ChildLine) -> Option<(usize, u64, String, Instant)> {
        let key = (ev.slot, ev.gen);
        let Some(line) = ev.line else {
            self.closed.insert(key);
            return None;
        };
        if line.starts_with("STAT ") {
            self.latest.insert(key, parse_counts(&line));
        } else if line.starts_with("DONE ") {
            let c = parse_counts(&line);
            add_counts(&mut self.survived, &c);
            add_counts(self.by_slot.entry(ev.slot).or_default(), &c);
            self.latest.remove(&key);
            self.done.insert(key);
        } else if let Some(msg) = line.strip_prefix("VIOLATION ") {
            self.violation(msg.to_owned());
        } else {
            return Some((ev.slot, ev.gen, line, ev.at));
        }
        None
    }
}

/// Runs the phases the options ask for; `Ok(true)` when no invariant was violated.
pub(super) fn supervise() -> Result<bool> {
    let opts = parse_opts()?;
    let prefix = format!("soak-{}", std::process::id());
    let shm_before = shm_files(&prefix);
    if !shm_before.is_empty() {
        bail!("/dev/shm already holds files of this soak: {shm_before:?}");
    }
    let started = Instant::now();
    let mut findings = Findings::default();
    let services = [format!("{prefix}-chaos"), format!("{prefix}-srvkill")];
    let mut run = || -> Result<()> {
        if opts.chaos {
            chaos_phase(&opts, &services[0], &mut findings)?;
        }
        if opts.server_kill_rounds > 0 {
            server_kill_phase(&opts, &services[1], &mut findings)?;
        }
        Ok(())
    };
    let outcome = run();
    // Every child has been reaped by now (dropped `SupervisedChild`s kill and reap theirs).
    let left = shm_files(&prefix);
    if !left.is_empty() {
        findings.violation(format!("/dev/shm files left behind: {left:?}"));
        // A server killed by a failed phase leaves its segment: remove it (never a live one).
        let dir = SegmentOpenOptions::default().dir;
        for name in &services {
            let _ = shm_runtime::ring::Segment::remove(name, &dir);
        }
    }
    outcome?;
    println!(
        "soak: total {:.1} s, {} violation(s)",
        started.elapsed().as_secs_f64(),
        findings.violations.len()
    );
    for v in &findings.violations {
        println!("  violated: {v}");
    }
    Ok(findings.violations.is_empty())
}

/// Lines of the child processes that are not reports (those go to the [`Findings`] as they
/// arrive), held until someone asks for them.
pub(super) struct Mailbox {
    pub(super) rx: mpsc::Receiver<ChildLine>,
    pub(super) held: VecDeque<(usize, u64, String, Instant)>,
}

impl Mailbox {
    pub(super) fn new(rx: mpsc::Receiver<ChildLine>) -> Mailbox {
        Mailbox {
            rx,
            held: VecDeque::new(),
        }
    }

    /// The next line, waiting up to `timeout`.
    pub(super) fn next(
        &mut self,
        findings: &mut Findings,
        timeout: Duration,
    ) -> Option<(usize, u64, String, Instant)> {
        if let Some(l) = self.held.pop_front() {
            return Some(l);
        }
        let ev = self.rx.recv_timeout(timeout).ok()?;
        findings.on_event(ev)
    }

    /// Feeds everything that has arrived to the findings.
    pub(super) fn drain(&mut self, findings: &mut Findings) {
        while let Ok(ev) = self.rx.try_recv() {
            if let Some(l) = findings.on_event(ev) {
                self.held.push_back(l);
            }
        }
    }

    /// Waits for a line starting with `prefix` from child `key` (slot, generation).
    pub(super) fn expect(
        &mut self,
        findings: &mut Findings,
        key: (usize, u64),
        prefix: &str,
        bound: Duration,
    ) -> Result<(String, Instant)> {
        let end = Instant::now() + bound;
        loop {
            let found = self
                .held
                .iter()
                .position(|(s, g, l, _)| (*s, *g) == key && l.starts_with(prefix));
            if let Some((_, _, line, at)) = found.and_then(|i| self.held.remove(i)) {
                return Ok((line, at));
            }
            // A child's lines all arrive before the end of its output.
            if findings.closed.contains(&key) {
                bail!("child {}.{} exited before saying {prefix:?}", key.0, key.1);
            }
            let left = end.saturating_duration_since(Instant::now());
            let ev = self.rx.recv_timeout(left).with_context(|| {
                format!(
                    "waiting {bound:?} for {prefix:?} from child {}.{}",
                    key.0, key.1
                )
            })?;
            if let Some(l) = findings.on_event(ev) {
                self.held.push_back(l);
            }
        }
    }
}
