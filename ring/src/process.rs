//! Process identity that survives pid reuse, and role slots claimed by a process in shared memory.
//!
//! A [`ProcessToken`] packs a pid with the low 32 bits of the process start time (in clock ticks since
//! boot, from `/proc/<pid>/stat`). A recycled pid has a different start time, so a token names exactly
//! one process for the life of the machine. Tokens are what shared structures store to say "this
//! process holds this role / slot / claim"; [`ProcessToken::is_alive`] turns a stored token back into a
//! liveness verdict. A zombie (killed, not yet reaped) counts as dead: it will never run again.

use std::sync::OnceLock;

use crate::sync::{AtomicU64, Ordering};

/// Identity of one process for the life of the machine (pid + start time). Never zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessToken(u64);

impl std::fmt::Debug for ProcessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ProcessToken(pid {}, start {:#x})",
            self.pid(),
            self.0 as u32
        )
    }
}

impl ProcessToken {
    /// The calling process's token (computed once, then cached).
    ///
    /// A process that `fork`s without `exec` shares the cached value with its child; this crate is
    /// meant for processes started with `exec`.
    pub fn current() -> ProcessToken {
        static CURRENT: OnceLock<ProcessToken> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = std::process::id();
            if cfg!(any(miri, shm_loom)) {
                // Interpreters cannot read /proc; a fixed start time is enough inside one process.
                return ProcessToken::from_parts(pid, 1);
            }
            let start = read_start_time(pid).map(|(start, _)| start).unwrap_or(1);
            ProcessToken::from_parts(pid, start)
        })
    }

    fn from_parts(pid: u32, start: u64) -> ProcessToken {
        // Start time 0 would let a token equal "no owner" for pid 0; force a non-zero low half.
        let low = (start as u32).max(1);
        ProcessToken((u64::from(pid) << 32) | u64::from(low))
    }

    /// Rebuilds a token from its raw value; `None` for 0, which means "nobody" in shared memory.
    pub fn from_raw(raw: u64) -> Option<ProcessToken> {
        (raw != 0).then_some(ProcessToken(raw))
    }

    /// The raw value stored in shared memory.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The process id part.
    pub fn pid(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Whether the process this token names is still running (not exited, not a zombie).
    ///
    /// Costs a read of `/proc/<pid>/stat` (a few microseconds): call it on slow paths only.
    pub fn is_alive(self) -> bool {
        if self == ProcessToken::current() {
            return true;
        }
        if cfg!(any(miri, shm_loom)) {
            return true;
        }
        match read_start_time(self.pid()) {
            Some((start, state)) => {
                ProcessToken::from_parts(self.pid(), start) == self
                    && state != b'Z'
                    && state != b'X'
            }
            None => false,
        }
    }
}

/// Reads (start time, state byte) of `pid`, or `None` if the process does not exist.
fn read_start_time(pid: u32) -> Option<(u64, u8)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    // Field 22 of stat is starttime; `rest` starts at field 3, so it is the 20th here.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// Outcome of [`claim_slot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The slot was free.
    Fresh,
    /// The slot was held by a process that has died; the caller must clean up after it.
    TookOver(ProcessToken),
}

/// Claims a role slot (0 = free, otherwise a [`ProcessToken`]) for `me`, taking over from a dead holder.
///
/// Returns the live holder's token when the slot is taken.
pub(crate) fn claim_slot(slot: &AtomicU64, me: ProcessToken) -> Result<Claimed, ProcessToken> {
    loop {
        // SYNC(role): Acquire pairs with the Release in `release_slot`, so whatever the previous
        // holder wrote before letting go is visible to the new holder.
        let cur = slot.load(Ordering::Acquire);
        match ProcessToken::from_raw(cur) {
            None => {
                // Failure ordering Relaxed: on failure we only loop and reload with Acquire.
                if slot
                    .compare_exchange(0, me.raw(), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Claimed::Fresh);
                }
            }
            Some(holder) if holder != me && !holder.is_alive() => {
                if slot
                    .compare_exchange(cur, me.raw(), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Claimed::TookOver(holder));
                }
            }
            Some(holder) => return Err(holder),
        }
    }
}

/// Frees a role slot held by `me`; a slot someone else took over is left alone.
pub(crate) fn release_slot(slot: &AtomicU64, me: ProcessToken) {
    // SYNC(role): Release pairs with the Acquire in `claim_slot`.
    let _ = slot.compare_exchange(me.raw(), 0, Ordering::Release, Ordering::Relaxed);
}

/// Whether a role slot is free or held by a dead process.
pub(crate) fn slot_vacant(slot: &AtomicU64) -> bool {
    match ProcessToken::from_raw(slot.load(Ordering::Acquire)) {
        None => true,
        Some(holder) => !holder.is_alive(),
    }
}

#[cfg(all(test, not(miri), not(shm_loom)))]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_stable() {
        let me = ProcessToken::current();
        assert_eq!(me.pid(), std::process::id());
        assert!(me.is_alive());
        assert_eq!(me, ProcessToken::current());
    }

    #[test]
    fn reaped_child_is_dead_and_recycled_pid_does_not_match() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let (start, _) = read_start_time(pid)
            .expect("an unreaped child's start time is readable in /proc/<pid>/stat");
        let token = ProcessToken::from_parts(pid, start);
        child.wait().unwrap();
        assert!(!token.is_alive());
        // Same pid as ourselves but another start time: not us.
        let fake = ProcessToken::from_parts(std::process::id(), start.wrapping_add(12345));
        assert!(!fake.is_alive());
    }

    #[test]
    fn zombie_counts_as_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (start, _) = read_start_time(child.id()).unwrap();
        let token = ProcessToken::from_parts(child.id(), start);
        assert!(token.is_alive());
        child.kill().unwrap();
        // Not reaped yet: a zombie (or gone). Poll briefly for the state change.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while token.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!token.is_alive());
        child.wait().unwrap();
    }

    #[test]
    fn claim_takes_over_from_dead_holder_only() {
        let slot = AtomicU64::new(0);
        let me = ProcessToken::current();
        assert_eq!(claim_slot(&slot, me), Ok(Claimed::Fresh));
        // A second claim by the same process is refused: roles are exclusive.
        assert_eq!(claim_slot(&slot, me), Err(me));
        release_slot(&slot, me);
        assert!(slot_vacant(&slot));
        let dead = ProcessToken::from_parts(u32::MAX - 1, 99);
        slot.store(dead.raw(), Ordering::Relaxed);
        assert!(slot_vacant(&slot));
        assert_eq!(claim_slot(&slot, me), Ok(Claimed::TookOver(dead)));
    }
}
