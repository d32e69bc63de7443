//! A condition polled until it holds, within a time limit: tests wait for state instead of
//! sleeping a guessed time, and a condition that never comes fails the test instead of hanging it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often [`wait_for`] checks its condition.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// Polls `condition` every millisecond until it holds.
///
/// # Panics
///
/// When it still does not hold after `limit`: "timed out waiting for `what`".
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// shm_test_support::wait_for("10 ms to pass", Duration::from_secs(5), || {
///     start.elapsed() >= Duration::from_millis(10)
/// });
/// ```
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(POLL_EVERY);
    }
}

/// Aborts the whole test binary when a test runs longer than its limit: a hang fails loudly
/// instead of stalling the suite.
#[derive(Debug)]
pub struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    /// Starts the watchdog of test `test`: the binary aborts if it is not dropped within `limit`.
    pub fn new(test: &'static str, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{test} hung for more than {limit:?}: aborting");
                std::process::abort();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender disconnects the channel: the watchdog thread returns.
        self.0.take();
    }
}
