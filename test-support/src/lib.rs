//! Helpers shared by the integration tests of `shm-ring` and `shm-runtime`, each kept once:
//!
//! - [`child`]: a test binary re-executed as a child process in a named role ([`ChildProcess::role`] in the
//!   parent, [`ChildTask::from_env`] in the child's `child_entry` test), or any other command
//!   ([`ChildProcess::spawn`]); a [`ChildProcess`] waits with a time limit and is killed and reaped when dropped, so
//!   a failing test leaves no process behind.
//! - [`names`]: segment and service names that no other test binary uses ([`unique_name`]).
//! - [`wait`]: a condition polled until it holds, failing the test after a time limit
//!   ([`wait_for`]).
//! - `runtime` (feature `runtime`): the request builders (`runtime::generate`,
//!   `runtime::request`), the expected refusal of a bad request (`runtime::Want`), the text of an
//!   answer, the sleep model's configuration, and a guard removing a dead server's segment.
//!
//! # Why the request builders sit behind a feature
//!
//! They are built from `shm-runtime`'s protocol types, and `shm-ring` is a dependency of
//! `shm-runtime`: without the feature, `shm-ring`'s tests use this crate without building the
//! runtime. With it, this crate depends on `shm-runtime` while being one of `shm-runtime`'s
//! dev-dependencies. Cargo allows that cycle, and `shm-runtime`'s integration tests (`tests/`) link
//! the very `shm-runtime` library this crate links, so their types are the same. `shm-runtime`'s
//! unit tests (`src/`) are a second compilation of that library whose types differ from the ones
//! seen here: do not use the `runtime` helpers there.
//!
//! Keeping them in `shm-runtime/tests/common` instead would have meant a second home for test
//! helpers, included as a module by every test binary (with `dead_code` allowed, since each binary
//! uses only part of it); one crate keeps every shared helper in one place.
//!
//! Test-only: `publish = false`, and only ever a dev-dependency.

pub mod child;
pub mod names;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod wait;

pub use child::{say, ChildProcess, ChildTask};
pub use names::unique_name;
pub use wait::wait_for;
