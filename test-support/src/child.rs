//! Child processes of the cross-process tests.
//!
//! A test binary plays a child role by re-executing itself to run only its `child_entry` test,
//! which every such binary declares like this (ignored, so that it runs only when spawned):
//!
//! ```no_run
//! use shm_test_support::{say, ChildTask};
//!
//! #[test]
//! #[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
//! fn child_entry() {
//!     let Some(task) = ChildTask::from_env() else {
//!         return;
//!     };
//!     match task.role.as_str() {
//!         "hello" => say(format!("HELLO {}", task.name)),
//!         other => panic!("unknown role {other}"),
//!     }
//!     std::process::exit(0);
//! }
//! ```
//!
//! The parent starts it with [`ChildProcess::role`] and reads what it [`say`]s with [`ChildProcess::expect`].
//!
//! Guarantees:
//! - A [`ChildProcess`] is killed (SIGKILL) and reaped when dropped unless it has already exited, so a
//!   failing test leaves no process behind.
//! - [`ChildProcess::wait_success`] and [`ChildProcess::wait_killed`] wait at most [`EXIT_LIMIT`]; a child that does
//!   not exit by then fails the test instead of hanging it.
//! - [`say`] flushes each line at once: a parent waiting in [`ChildProcess::expect`] sees it immediately.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming a child's role.
const ROLE_VAR: &str = "SHM_TEST_ROLE";
/// The environment variable naming the segment or service a child works on.
const NAME_VAR: &str = "SHM_TEST_NAME";
/// The environment variable holding a child's role-specific argument.
const ARG_VAR: &str = "SHM_TEST_ARG";

/// How long [`ChildProcess::wait_success`] and [`ChildProcess::wait_killed`] wait for a child to exit.
pub const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// What a child process was started to do, as its parent set it in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildTask {
    /// The role to play.
    pub role: String,
    /// The segment or service to work on (empty when the parent named none).
    pub name: String,
    /// The role's argument (empty when the parent gave none).
    pub arg: String,
}

impl ChildTask {
    /// The task of this process if a parent started it with [`ChildProcess::role`] or
    /// [`ChildTask::command`]; `None` when `child_entry` runs as an ordinary (ignored) test.
    pub fn from_env() -> Option<ChildTask> {
        let role = std::env::var(ROLE_VAR).ok()?;
        Some(ChildTask {
            role,
            name: std::env::var(NAME_VAR).unwrap_or_default(),
            arg: std::env::var(ARG_VAR).unwrap_or_default(),
        })
    }

    /// The argument as a number; 0 when it is not one.
    pub fn number(&self) -> u64 {
        self.arg.parse().unwrap_or(0)
    }

    /// The command re-executing this test binary to run only its `child_entry` test in `role` on
    /// the segment or service `name`, with `arg`. For a child that needs more than [`ChildProcess::role`]
    /// sets up (another user, its output collected at exit).
    ///
    /// # Panics
    ///
    /// When the path of this executable is unknown.
    pub fn command(role: &str, name: &str, arg: &str) -> Command {
        ChildTask::command_at("child_entry", role, name, arg)
    }

    /// [`command`](Self::command) for a child entry test at another path, e.g.
    /// `pool::tests::child_entry` in a crate's unit tests (which may use `cfg(test)` hooks that
    /// integration tests cannot reach).
    ///
    /// # Panics
    ///
    /// When the path of this executable is unknown.
    pub fn command_at(entry: &str, role: &str, name: &str, arg: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
        cmd.args([
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, role)
        .env(NAME_VAR, name)
        .env(ARG_VAR, arg);
        cmd
    }
}

/// A line to the parent, flushed at once (children report through stdout).
///
/// # Panics
///
/// When stdout cannot be written.
pub fn say(line: impl Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// A child process with its stdout read line by line and, when piped, its stdin; killed and
/// reaped when dropped unless it has exited.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    out: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl ChildProcess {
    /// This test binary re-executed to run only `child_entry` in `role` on the segment or service
    /// `name`, with `arg`; its stdin and stdout piped.
    ///
    /// # Panics
    ///
    /// When the child cannot be started.
    pub fn role(role: &str, name: &str, arg: &str) -> ChildProcess {
        ChildProcess::spawn(ChildTask::command(role, name, arg).stdin(Stdio::piped()))
    }

    /// [`role`](Self::role) for a child entry test at another path (see [`ChildTask::command_at`]).
    ///
    /// # Panics
    ///
    /// When the child cannot be started.
    pub fn role_at(entry: &str, role: &str, name: &str, arg: &str) -> ChildProcess {
        ChildProcess::spawn(ChildTask::command_at(entry, role, name, arg).stdin(Stdio::piped()))
    }

    /// Starts `cmd` with its stdout piped (its stdin as `cmd` says: [`ChildProcess::tell`] needs it piped).
    ///
    /// # Panics
    ///
    /// When the child cannot be started.
    pub fn spawn(cmd: &mut Command) -> ChildProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildProcess {
            out: BufReader::new(child.stdout.take().expect("stdout is piped")),
            stdin: child.stdin.take(),
            child,
            status: None,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the first line containing `prefix` (the test harness may have printed
    /// "test child_entry ... " before it, without a newline).
    ///
    /// # Panics
    ///
    /// When the child exits before printing such a line.
    pub fn expect(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "child exited before printing {prefix:?}");
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
            }
        }
    }

    /// Writes `line` to the child's stdin.
    ///
    /// # Panics
    ///
    /// When stdin is not piped or the child no longer reads it.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin not piped");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends `signal` to the child.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: sends a signal to our own child's pid; no memory involved.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "kill({pid}, {signal}) failed");
    }

    /// Kills the child with SIGKILL and reaps it.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent or the child does not die within [`EXIT_LIMIT`].
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_timeout(EXIT_LIMIT);
    }

    /// Waits at most `limit` for the child to exit and returns how it did (at once if it has
    /// been reaped already).
    ///
    /// # Panics
    ///
    /// When the child is still running after `limit` (it is then killed when dropped).
    pub fn wait_timeout(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                return status;
            }
            assert!(
                Instant::now() < end,
                "child {} still running after {limit:?}",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the child to exit and checks that it succeeded.
    ///
    /// # Panics
    ///
    /// When it failed, or did not exit within [`EXIT_LIMIT`].
    pub fn wait_success(mut self) {
        let status = self.wait_timeout(EXIT_LIMIT);
        assert!(status.success(), "child failed: {status:?}");
    }

    /// Waits for the child to exit and checks that SIGKILL ended it.
    ///
    /// # Panics
    ///
    /// When something else ended it, or it did not exit within [`EXIT_LIMIT`].
    pub fn wait_killed(mut self) {
        let status = self.wait_timeout(EXIT_LIMIT);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "child was not killed: {status:?}"
        );
    }
}
