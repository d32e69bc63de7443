//! Child processes of the cross-process tests: the test binary re-executed in a role (its
//! `child_entry` test reads the role from the environment), or the `shm-runtime` CLI. A `Kid` is
//! killed and reaped when dropped, so a failing test leaves no process behind.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A child process with its stdout read line by line and, when piped, its stdin.
pub(crate) struct Kid {
    pub(crate) child: Child,
    out: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
    reaped: bool,
}

impl Drop for Kid {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Kid {
    /// Takes over a child spawned with a piped stdout (and optionally stdin).
    pub(crate) fn from(mut child: Child) -> Kid {
        Kid {
            out: BufReader::new(child.stdout.take().unwrap()),
            stdin: child.stdin.take(),
            child,
            reaped: false,
        }
    }

    /// This test binary re-executed to run only `child_entry`, with `env` telling it its role.
    pub(crate) fn role(env: &[(&str, &str)]) -> Kid {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "child_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Kid::from(cmd.spawn().unwrap())
    }

    /// The rest of the first line containing `prefix`.
    pub(crate) fn expect(&mut self, prefix: &str) -> String {
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
    pub(crate) fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin not piped");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub(crate) fn kill9(&mut self) {
        // SAFETY: sends a signal to our own child's pid; no memory involved.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(r, 0);
        let _ = self.child.wait();
        self.reaped = true;
    }

    pub(crate) fn wait_success(mut self) {
        let status = self.child.wait().unwrap();
        self.reaped = true;
        assert!(status.success(), "child failed: {status:?}");
    }
}

/// A line to the parent, flushed at once (children report through stdout).
pub(crate) fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The one error a refused request must get: its kind and a part of its message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want {
    /// `Error::InvalidRequest` whose message contains this.
    Invalid(&'static str),
    /// `Error::ModelNotFound` whose message contains this.
    NoModel(&'static str),
}

impl Want {
    /// Panics, naming the case `what`, unless `got` is this error.
    pub(crate) fn check(
        self,
        what: &str,
        got: Result<shm_runtime::ResponseView, shm_runtime::Error>,
    ) {
        use shm_runtime::Error;
        let ok = match (&got, self) {
            (Err(Error::InvalidRequest(m)), Want::Invalid(n)) => m.contains(n),
            (Err(Error::ModelNotFound(m)), Want::NoModel(n)) => m.contains(n),
            _ => false,
        };
        match got {
            Ok(v) => panic!("{what}: answered {:?}", v.response().map(|r| &r.body)),
            Err(e) => assert!(ok, "{what}: wanted {self:?}, got {e:?}"),
        }
    }
}
