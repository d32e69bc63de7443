//! A child process of the soak as its supervisor sees it: started in a role, told lines on its
//! stdin, its stdout lines forwarded as [`ChildLine`]s; killed and reaped on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{ARG_VAR, ROLE_VAR, SERVICE_VAR};

/// A line from a child process (`None`: its stdout closed), stamped when it arrived.
pub(super) struct ChildLine {
    pub(super) slot: usize,
    pub(super) gen: u64,
    pub(super) line: Option<String>,
    pub(super) at: Instant,
}

/// A child process of the soak; killed and reaped on drop if still running.
pub(super) struct SupervisedChild {
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) slot: usize,
    pub(super) gen: u64,
    pub(super) reaped: bool,
}

impl SupervisedChild {
    pub(super) fn spawn(
        role: &str,
        service: &str,
        slot: usize,
        gen: u64,
        arg: &str,
        tx: &mpsc::Sender<ChildLine>,
    ) -> Result<SupervisedChild> {
        let exe = std::env::current_exe().context("finding the current executable")?;
        let mut child = Command::new(exe)
            .env(ROLE_VAR, role)
            .env(SERVICE_VAR, service)
            .env(ARG_VAR, arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {role} process"))?;
        let out = child.stdout.take().context("child stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let ev = ChildLine {
                    slot,
                    gen,
                    line: Some(line),
                    at: Instant::now(),
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
            let _ = tx.send(ChildLine {
                slot,
                gen,
                line: None,
                at: Instant::now(),
            });
        });
        Ok(SupervisedChild {
            stdin: child.stdin.take(),
            child,
            slot,
            gen,
            reaped: false,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn tell(&mut self, line: &str) {
        if let Some(s) = &mut self.stdin {
            let _ = writeln!(s, "{line}").and_then(|()| s.flush());
        }
    }

    pub(super) fn signal(&mut self, sig: libc::c_int) {
        if !self.reaped {
            // SAFETY: sends a signal to our own child, which is not reaped yet (so the pid cannot
            // have been reused); no memory is involved.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    pub(super) fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Waits up to `bound` for the child to exit; `None` if it did not (it is then killed).
    pub(super) fn wait_bounded(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + bound;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = true;
                return Some(st);
            }
            if Instant::now() >= end {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(super) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped {
            return None;
        }
        let st = self.child.try_wait().ok().flatten();
        if st.is_some() {
            self.reaped = true;
        }
        st
    }
}

impl Drop for SupervisedChild {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
