//! A condition polled until it holds, within a time limit: tests wait for state instead of
//! sleeping a guessed time, and a condition that never comes fails the test instead of hanging it.

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
