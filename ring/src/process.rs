//! Process identity that survives pid reuse, and role slots claimed by a process in shared memory.
//!
//! A [`ProcessToken`] packs a pid with the low 32 bits of the process start time (in clock ticks since
//! boot, from `/proc/<pid>/stat`). A recycled pid has a different start time, so a token names exactly
//! one process for the life of the machine. Tokens are what shared structures store to say "this
//! process holds this role / slot / claim"; [`ProcessToken::liveness`] turns a stored token back into
//! a verdict.
//!
//! # Dead only on certain evidence
//!
//! Declaring a live process dead is the dangerous mistake: its role is taken over and its pool
//! chunks are handed to someone else while it still writes them. So [`ProcessToken::liveness`]
//! answers [`Liveness::Dead`] only on evidence that cannot be wrong:
//!
//! * no process has the pid: `kill(pid, 0)` fails with `ESRCH` (this needs no file descriptor, so it
//!   still works in a process that ran out of them), or the pid is one no process can have (0, or
//!   above the kernel's `PID_MAX_LIMIT`);
//! * the process with that pid is a zombie (state `Z` or `X` in `/proc/<pid>/stat`): it will never
//!   run again;
//! * the process with that pid started at another time: the pid was reused.
//!
//! Anything else that goes wrong (`EMFILE`, `ENFILE`, `EACCES`, `ENOMEM` reading `/proc`, a stat
//! line that does not parse, `/proc` not mounted) is [`Liveness::Unknown`], and every caller in this
//! crate treats unknown as alive: [`ProcessToken::is_alive`] is "not certainly dead". The cost of
//! that choice is a delay (a dead process's resources are reclaimed on a later pass, once the
//! evidence can be read), never a double owner.
//!
//! # Why not pidfd
//!
//! `pidfd_open(pid)` fails with `ESRCH` exactly when `kill(pid, 0)` does, so it adds no evidence
//! that a process is gone. When it succeeds it names *some* process with that pid, and the start
//! time must still be read from `/proc` to know whether it is the token's process (a pidfd carries
//! no start time). Polling the pidfd for exit tells a zombie from a running process, which the
//! state field of the same `/proc` read already does. And a pidfd is a file descriptor: in the very
//! situation this module must survive (descriptors exhausted) `pidfd_open` fails with `EMFILE`,
//! while `kill(pid, 0)` still answers. Its real strength, waiting for a process's exit without
//! polling, does not fit tokens read out of shared memory on a periodic pass. So liveness uses
//! `kill(pid, 0)` and `/proc/<pid>/stat` only.
//!
//! # Pid namespaces
//!
//! A pid means something only inside one pid namespace: a token stored by a process in another
//! namespace names a pid this process cannot see, and `ESRCH` would then wrongly mean dead. Segments
//! record their creator's namespace ([`pid_namespace`]) and refuse openers from another one
//! (see [`OpenError::OtherPidNamespace`](crate::OpenError::OtherPidNamespace)), so every token in a
//! segment was written by a process of the reader's namespace.
//!
//! # Examples
//!
//! A role slot in shared memory holds its holder's token (0: nobody); anyone can judge the holder:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use shm_ring::{Liveness, ProcessToken};
//!
//! let slot = AtomicU64::new(0);
//! slot.store(ProcessToken::current().raw(), Ordering::Release);
//!
//! let holder = ProcessToken::from_raw(slot.load(Ordering::Acquire)).unwrap();
//! assert_eq!(holder.pid(), std::process::id());
//! assert_eq!(holder.liveness(), Liveness::Alive);
//! ```

use std::sync::OnceLock;

use crate::sync::{AtomicU64, Ordering};

/// The kernel's `PID_MAX_LIMIT` on 64-bit Linux: no pid is ever larger.
const PID_MAX_LIMIT: u32 = 1 << 22;

/// Start time stored when the real one could not be read (see [`ProcessToken::current`]). A token
/// with it can be proven dead only by its pid being gone.
const UNKNOWN_START: u32 = 1;

/// What is known about whether the process a [`ProcessToken`] names is running.
///
/// # Examples
///
/// ```
/// use shm_ring::{Liveness, ProcessToken};
///
/// let holder = ProcessToken::current();
/// let take_over = match holder.liveness() {
///     Liveness::Dead => true,
///     // Unknown counts as alive: never take a role from a process that may run.
///     Liveness::Alive | Liveness::Unknown => false,
/// };
/// assert!(!take_over);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// It runs (its pid exists, with the token's start time, and is not a zombie).
    Alive,
    /// It will never run again: no process has its pid, the process with its pid is a zombie, or
    /// that process started at another time (the pid was reused).
    Dead,
    /// The evidence could not be read (out of file descriptors, permission denied, `/proc`
    /// unreadable...). Callers must act as if it were alive.
    Unknown,
}

/// Identity of one process for the life of the machine (pid + start time). Never zero.
///
/// # Examples
///
/// ```
/// use shm_ring::ProcessToken;
///
/// let me = ProcessToken::current();
/// // The same pid with another start time names another process, which has gone:
/// let earlier = ProcessToken::from_raw(me.raw() ^ 1).unwrap();
/// assert_eq!(earlier.pid(), me.pid());
/// assert_ne!(earlier, me);
/// assert!(me.is_alive() && earlier.is_dead());
/// ```
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
    /// If `/proc/self/stat` cannot be read the first time (say, no file descriptor is left), the
    /// token gets a placeholder start time: other processes then cannot tell a reuse of this pid
    /// from this process, and report it [`Liveness::Unknown`] (never dead) for as long as its pid
    /// exists.
    ///
    /// A process that `fork`s without `exec` shares the cached value with its child; this crate is
    /// meant for processes started with `exec`.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::ProcessToken;
    ///
    /// let me = ProcessToken::current();
    /// assert_eq!(me.pid(), std::process::id());
    /// assert_eq!(me, ProcessToken::current());
    /// ```
    pub fn current() -> ProcessToken {
        static CURRENT: OnceLock<ProcessToken> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = std::process::id();
            if cfg!(any(miri, shm_loom)) {
                // Interpreters cannot read /proc; a fixed start time is enough inside one process.
                return ProcessToken::from_parts(pid, u64::from(UNKNOWN_START));
            }
            let start = std::fs::read(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .map_or(u64::from(UNKNOWN_START), |(start, _)| start);
            ProcessToken::from_parts(pid, start)
        })
    }

    fn from_parts(pid: u32, start: u64) -> ProcessToken {
        // Start time 0 would let a token equal "no owner" for pid 0; force a non-zero low half.
        let low = (start as u32).max(1);
        ProcessToken((u64::from(pid) << 32) | u64::from(low))
    }

    /// Rebuilds a token from its raw value; `None` for 0, which means "nobody" in shared memory.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::ProcessToken;
    ///
    /// let me = ProcessToken::current();
    /// assert_eq!(ProcessToken::from_raw(me.raw()), Some(me));
    /// assert_eq!(ProcessToken::from_raw(0), None); // a free slot
    /// ```
    pub fn from_raw(raw: u64) -> Option<ProcessToken> {
        (raw != 0).then_some(ProcessToken(raw))
    }

    /// The raw value stored in shared memory.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use shm_ring::ProcessToken;
    ///
    /// let owner = AtomicU64::new(0); // in shared memory: 0 is nobody
    /// let me = ProcessToken::current();
    /// let claimed = owner.compare_exchange(0, me.raw(), Ordering::AcqRel, Ordering::Acquire);
    /// assert!(claimed.is_ok());
    /// assert_eq!(ProcessToken::from_raw(owner.load(Ordering::Acquire)), Some(me));
    /// ```
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The process id part.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::ProcessToken;
    ///
    /// assert_eq!(ProcessToken::current().pid(), std::process::id());
    /// ```
    pub fn pid(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Whether the process this token names runs, is certainly dead, or cannot be told (see the
    /// [module documentation](self) for what counts as certain).
    ///
    /// Costs a `kill(pid, 0)` and a read of `/proc/<pid>/stat` (a few microseconds): call it on slow
    /// paths only.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::{Liveness, ProcessToken};
    ///
    /// let me = ProcessToken::current();
    /// assert_eq!(me.liveness(), Liveness::Alive);
    /// // This pid with another start time: the pid was reused, that process is gone.
    /// let reused = ProcessToken::from_raw(me.raw() ^ 1).unwrap();
    /// assert_eq!(reused.liveness(), Liveness::Dead);
    /// ```
    pub fn liveness(self) -> Liveness {
        if self == ProcessToken::current() || cfg!(any(miri, shm_loom)) {
            return Liveness::Alive;
        }
        let pid = self.pid();
        if pid == 0 || pid > PID_MAX_LIMIT {
            return Liveness::Dead;
        }
        if probe_pid(pid) == Probe::Gone {
            return Liveness::Dead;
        }
        let stat = std::fs::read(format!("/proc/{pid}/stat"));
        // A failed read is evidence only if the pid has gone meanwhile; anything else is unknown.
        judge(self, stat, || probe_pid(pid))
    }

    /// Whether the process may still be running: true unless it is [certainly
    /// dead](Liveness::Dead). An [unknown](Liveness::Unknown) verdict counts as alive, so a caller
    /// that takes over what a "not alive" process held never takes it from a live one.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::ProcessToken;
    ///
    /// let me = ProcessToken::current();
    /// assert!(me.is_alive());
    /// let reused = ProcessToken::from_raw(me.raw() ^ 1).unwrap(); // another start time
    /// assert!(!reused.is_alive());
    /// ```
    pub fn is_alive(self) -> bool {
        self.liveness() != Liveness::Dead
    }

    /// Whether the process is certainly dead ([`Liveness::Dead`]): the one verdict on which its
    /// roles and chunks may be taken over.
    ///
    /// # Examples
    ///
    /// ```
    /// use shm_ring::ProcessToken;
    ///
    /// let me = ProcessToken::current();
    /// assert!(!me.is_dead());
    /// let reused = ProcessToken::from_raw(me.raw() ^ 1).unwrap(); // another start time
    /// assert!(reused.is_dead()); // its roles may be taken over
    /// ```
    pub fn is_dead(self) -> bool {
        self.liveness() == Liveness::Dead
    }
}

/// What `kill(pid, 0)` says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// No process (not even a zombie) has this pid in our pid namespace.
    Gone,
    /// Some process has it (or the probe failed otherwise).
    Exists,
}

fn probe_pid(pid: u32) -> Probe {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Probe::Exists;
    };
    if pid <= 0 {
        // kill(0 or negative) addresses process groups; never probe them.
        return Probe::Exists;
    }
    // SAFETY: signal 0 performs only the existence and permission checks; nothing is delivered.
    let r = unsafe { libc::kill(pid, 0) };
    if r == 0 {
        return Probe::Exists;
    }
    // EPERM: it exists and belongs to someone else; other errors say nothing.
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESRCH) => Probe::Gone,
        _ => Probe::Exists,
    }
}

/// The verdict on `token` from the result of reading its `/proc/<pid>/stat`; `probe_again` is asked
/// when the read failed, and only its [`Probe::Gone`] turns the failure into [`Liveness::Dead`].
fn judge(
    token: ProcessToken,
    stat: std::io::Result<Vec<u8>>,
    probe_again: impl FnOnce() -> Probe,
) -> Liveness {
    let stat = match stat {
        Ok(stat) => stat,
        Err(_) => {
            // ENOENT or ESRCH usually means the process has just gone, but /proc may also be
            // missing or of another namespace, and EMFILE, EACCES, ENOMEM... prove nothing: only
            // a second probe that finds the pid gone is evidence.
            return match probe_again() {
                Probe::Gone => Liveness::Dead,
                Probe::Exists => Liveness::Unknown,
            };
        }
    };
    let Some((start, state)) = parse_stat(&stat) else {
        return Liveness::Unknown;
    };
    if token.0 as u32 == UNKNOWN_START {
        // The token's own start time is a placeholder: a live pid may be its process or a reuse.
        return if state == b'Z' || state == b'X' {
            Liveness::Dead
        } else {
            Liveness::Unknown
        };
    }
    let reused = ProcessToken::from_parts(token.pid(), start) != token;
    let zombie = state == b'Z' || state == b'X';
    if reused || zombie {
        Liveness::Dead
    } else {
        Liveness::Alive
    }
}

/// Parses (start time, state byte) out of the contents of `/proc/<pid>/stat`.
fn parse_stat(stat: &[u8]) -> Option<(u64, u8)> {
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    // Field 22 of stat is starttime; `rest` starts at field 3, so it is the 20th here.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// The inode of this process's pid namespace (`stat /proc/self/ns/pid`), or 0 when it cannot be
/// read. Two processes with the same value see the same pids.
///
/// # Examples
///
/// ```
/// use shm_ring::process::pid_namespace;
///
/// // Two processes can judge each other's tokens only if this is the same for both.
/// let ns = pid_namespace();
/// assert_eq!(ns, pid_namespace());
/// ```
pub fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    if cfg!(any(miri, shm_loom)) {
        return 0;
    }
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
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
            // Take over only from a certainly dead holder: an unknown verdict counts as alive.
            Some(holder) if holder != me && holder.is_dead() => {
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

/// Whether a role slot is free or held by a certainly dead process.
pub(crate) fn slot_vacant(slot: &AtomicU64) -> bool {
    match ProcessToken::from_raw(slot.load(Ordering::Acquire)) {
        None => true,
        Some(holder) => holder.is_dead(),
    }
}

#[cfg(all(test, not(miri), not(shm_loom)))]
mod tests {
    use super::*;

    fn token_of(pid: u32) -> ProcessToken {
        let stat = std::fs::read(format!("/proc/{pid}/stat"))
            .expect("an unreaped child's /proc/<pid>/stat is readable");
        let (start, _) = parse_stat(&stat).unwrap();
        ProcessToken::from_parts(pid, start)
    }

    #[test]
    fn current_process_is_alive_and_stable() {
        let me = ProcessToken::current();
        assert_eq!(me.pid(), std::process::id());
        assert_eq!(me.liveness(), Liveness::Alive);
        assert_ne!(me.0 as u32, UNKNOWN_START, "our own start time was read");
        assert_eq!(me, ProcessToken::current());
    }

    #[test]
    fn a_running_child_is_alive_and_a_reaped_one_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let token = token_of(child.id());
        assert_eq!(token.liveness(), Liveness::Alive);
        assert!(token.is_alive() && !token.is_dead());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(token.liveness(), Liveness::Dead, "reaped: its pid is gone");
        assert!(!token.is_alive() && token.is_dead());
    }

    #[test]
    fn a_recycled_pid_is_dead() {
        // Same pid as ourselves but another start time: not us, a process that has gone.
        let me = ProcessToken::current();
        let fake = ProcessToken::from_parts(me.pid(), u64::from(me.0 as u32).wrapping_add(12345));
        assert_eq!(fake.liveness(), Liveness::Dead);
        // The same for a live child.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let real = token_of(child.id());
        let reused = ProcessToken::from_parts(child.id(), u64::from(real.0 as u32) + 1);
        assert_eq!(real.liveness(), Liveness::Alive);
        assert_eq!(reused.liveness(), Liveness::Dead);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn zombie_counts_as_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let token = token_of(child.id());
        assert_eq!(token.liveness(), Liveness::Alive);
        child.kill().unwrap();
        // Not reaped yet: its pid still exists (kill(pid, 0) succeeds on a zombie), so only the
        // state in /proc says it is dead. Poll briefly for the state change.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while token.liveness() != Liveness::Dead && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            probe_pid(child.id()),
            Probe::Exists,
            "a zombie keeps its pid"
        );
        assert_eq!(token.liveness(), Liveness::Dead);
        child.wait().unwrap();
    }

    #[test]
    fn pids_no_process_can_have_are_dead() {
        for pid in [0, PID_MAX_LIMIT + 1, u32::MAX - 1, u32::MAX] {
            let token = ProcessToken::from_parts(pid, 99);
            assert_eq!(token.liveness(), Liveness::Dead, "pid {pid}");
        }
    }

    #[test]
    fn a_failed_read_of_proc_is_unknown_unless_the_pid_is_gone() {
        let me = ProcessToken::current();
        let err = |code| Err(std::io::Error::from_raw_os_error(code));
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EACCES,
            libc::ENOMEM,
            libc::ENOENT,
            libc::ESRCH,
            libc::EIO,
        ] {
            assert_eq!(
                judge(me, err(code), || Probe::Exists),
                Liveness::Unknown,
                "errno {code} while the pid exists"
            );
            assert_eq!(
                judge(me, err(code), || Probe::Gone),
                Liveness::Dead,
                "errno {code} and the pid has gone"
            );
        }
        let never = || -> Probe { panic!("a successful read needs no second probe") };
        for garbage in [&b""[..], b"123 (x", b"123 (x) R 1 2", b"\xff\xfe)"] {
            assert_eq!(judge(me, Ok(garbage.to_vec()), never), Liveness::Unknown);
        }
        let stat = |state: char, start: u32| {
            let mut fields = vec!["0"; 19];
            fields.push("");
            let start = start.to_string();
            fields[18] = &start;
            format!("42 (a (weird) name) {state} {}", fields.join(" ")).into_bytes()
        };
        let t = ProcessToken::from_parts(42, 7000);
        assert_eq!(judge(t, Ok(stat('S', 7000)), never), Liveness::Alive);
        assert_eq!(judge(t, Ok(stat('Z', 7000)), never), Liveness::Dead);
        assert_eq!(judge(t, Ok(stat('X', 7000)), never), Liveness::Dead);
        assert_eq!(
            judge(t, Ok(stat('R', 7001)), never),
            Liveness::Dead,
            "pid reused"
        );
        // A placeholder start time proves nothing about a live pid, but a zombie is still dead.
        let placeholder = ProcessToken::from_parts(42, u64::from(UNKNOWN_START));
        assert_eq!(
            judge(placeholder, Ok(stat('S', 7000)), never),
            Liveness::Unknown
        );
        assert_eq!(
            judge(placeholder, Ok(stat('Z', 7000)), never),
            Liveness::Dead
        );
    }

    #[test]
    fn the_pid_namespace_is_readable_and_stable() {
        let ns = pid_namespace();
        assert_ne!(ns, 0);
        assert_eq!(ns, pid_namespace());
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
        // A holder whose liveness is unknown (a live pid with a placeholder start time) is kept.
        let parent = std::os::unix::process::parent_id();
        let unknown = ProcessToken::from_parts(parent, u64::from(UNKNOWN_START));
        assert_eq!(unknown.liveness(), Liveness::Unknown);
        slot.store(unknown.raw(), Ordering::Relaxed);
        assert!(!slot_vacant(&slot));
        assert_eq!(claim_slot(&slot, me), Err(unknown));
    }
}
