//! Segment and service names that no other test binary uses.
//!
//! Guarantees: [`unique_name`] depends only on its tag and this process's id, so
//! - test binaries running at the same time never share a name (their process ids differ);
//! - tests of one binary get distinct names from distinct tags;
//! - the same tag gives the same name again within one process (a test reopens its service by
//!   tag). A child process must be handed its parent's names, not compute its own.
//!
//! Every name is a valid segment name (letters, digits, `-`, `_`, `.`) while the tag is one and
//! at most 184 characters long.

/// The segment or service name of this process for `tag`: `test-<tag>-<process id>`.
///
/// # Examples
///
/// ```
/// let name = shm_test_support::unique_name("spsc-order");
/// assert_eq!(name, format!("test-spsc-order-{}", std::process::id()));
/// assert_eq!(name, shm_test_support::unique_name("spsc-order"));
/// ```
pub fn unique_name(tag: &str) -> String {
    format!("test-{tag}-{}", std::process::id())
}
