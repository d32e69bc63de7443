//! Child processes of cross-process benchmarks and CPU pinning.
//!
//! A parent re-executes its own binary with an environment variable naming the child's role
//! ([`ChildProcess::spawn`]); the child's `main` hands itself to [`dispatch`] first thing, which
//! runs the role and exits. A [`ChildProcess`] is killed and reaped when dropped, so no child
//! outlives its parent's error paths. [`pin_to`] pins the calling thread to one CPU until its guard
//! drops.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

const ROLE_VAR: &str = "SHM_BENCH_ROLE";
const ARG_VAR: &str = "SHM_BENCH_ARG";

/// If this process was started as a benchmark child, runs its role with `run` and exits the
/// process; otherwise returns. Call it first thing in `main`.
///
/// `run(role, arg)` returns `Ok(false)` for a role it does not know (the process then exits with
/// status 2), `Err` when the role failed (status 1).
pub fn dispatch(run: impl FnOnce(&str, &str) -> Result<bool>) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let arg = std::env::var(ARG_VAR).unwrap_or_default();
    match run(&role, &arg) {
        Ok(true) => std::process::exit(0),
        Ok(false) => {
            eprintln!("unknown benchmark child role {role:?}");
            std::process::exit(2)
        }
        Err(e) => {
            eprintln!("benchmark child {role:?} failed: {e:#}");
            std::process::exit(1)
        }
    }
}

/// A benchmark child: the current executable started in a role; killed if it is still running
/// when dropped.
#[derive(Debug)]
pub struct ChildProcess(Child);

impl ChildProcess {
    /// Starts the current executable as a child in `role` with `arg`.
    ///
    /// # Errors
    ///
    /// When the executable cannot be found or started.
    pub fn spawn(role: &str, arg: &str) -> Result<ChildProcess> {
        let exe = std::env::current_exe().context("finding the current executable")?;
        let child = Command::new(exe)
            .env(ROLE_VAR, role)
            .env(ARG_VAR, arg)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting benchmark child {role}"))?;
        Ok(ChildProcess(child))
    }

    /// The child's exit status if it has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// Waits for the child and fails if it did not exit successfully.
    ///
    /// # Errors
    ///
    /// When waiting fails or the child failed.
    pub fn join(mut self) -> Result<()> {
        let status = self.0.wait()?;
        anyhow::ensure!(status.success(), "benchmark child exited with {status}");
        Ok(())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
/// The CPUs this process may use, as the kernel reports them (`/sys/devices/system/cpu/online`),
/// independent of any pinning already applied to the calling thread.
pub fn online_cpus() -> Vec<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|x| x.parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => cpus.extend(a..=b),
            (Some(Ok(a)), None) => cpus.push(a),
            _ => {}
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// The calling thread pinned to one CPU; the previous affinity comes back on drop, so a pinned
/// parent never hands its pinning down to the children it starts later.
#[derive(Debug)]
pub struct Pinned {
    previous: Option<libc::cpu_set_t>,
    /// Affinity belongs to a thread: the guard must drop on the thread that pinned.
    _not_send: std::marker::PhantomData<*const ()>,
    /// The CPU pinned to, when pinning worked.
    pub cpu: Option<usize>,
}

/// Pins the calling thread to the `n`-th online CPU (modulo their number) until the guard drops.
pub fn pin_to(n: usize) -> Pinned {
    let cpus = online_cpus();
    let cpu = cpus[n % cpus.len()];
    // SAFETY: cpu_set_t is plain bytes; all-zero is the empty set.
    let mut previous: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `previous`.
    let got = unsafe {
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut previous)
    };
    // SAFETY: as above; `set` is an initialised cpu_set_t and `cpu` < CPU_SETSIZE (online CPUs).
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    Pinned {
        previous: (got == 0).then_some(previous),
        _not_send: std::marker::PhantomData,
        cpu: pinned.then_some(cpu),
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(prev) = &self.previous {
            // SAFETY: restores the mask read in `pin_to` for the calling thread (guards are not Send,
            // so this runs on the thread that pinned).
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), prev);
            }
        }
    }
}
