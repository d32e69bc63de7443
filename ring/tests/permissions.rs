//! Segment files: created with exactly the requested mode whatever the umask (0600 by default),
//! and only under names that stay inside the segment directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shm_ring::segment::validate_name;
use shm_ring::{CreateError, CreateOptions, OpenError, RemoveError, Segment};
use shm_test_support::unique_name;

fn mode_of(seg: &Segment) -> u32 {
    std::fs::metadata(seg.path()).unwrap().permissions().mode() & 0o7777
}

#[test]
fn segments_get_exactly_their_mode_whatever_the_umask() {
    // The umask is process-wide; this is the only test of this binary that changes it, and the
    // others do not depend on it (which is the point).
    for umask in [0o000, 0o022, 0o077, 0o777] {
        // SAFETY: umask has no preconditions.
        let old = unsafe { libc::umask(umask) };
        let default = Segment::create(&unique_name("default"), &CreateOptions::new(4096));
        let mut opts = CreateOptions::new(4096);
        opts.mode = 0o640;
        let group = Segment::create(&unique_name("group"), &opts);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let (default, group) = (default.unwrap(), group.unwrap());
        assert_eq!(mode_of(&default), 0o600, "umask {umask:o}");
        assert_eq!(mode_of(&group), 0o640, "umask {umask:o}");
        assert!(Segment::open(default.name()).is_ok());
    }
}

#[test]
fn names_that_could_leave_the_directory_are_refused_everywhere() {
    let dir = Path::new("/dev/shm");
    let bad = [
        String::new(),
        "/".into(),
        "a/b".into(),
        "..".into(),
        ".".into(),
        "../x".into(),
        ".hidden".into(),
        "a\0b".into(),
        "a b".into(),
        "a:b".into(),
        "caf\u{e9}".into(),
        "x".repeat(201),
    ];
    for n in &bad {
        assert!(!validate_name(n), "{n:?}");
        assert!(
            matches!(
                Segment::create(n, &CreateOptions::new(4096)),
                Err(CreateError::InvalidName(_))
            ),
            "create {n:?}"
        );
        assert!(
            matches!(Segment::open(n), Err(OpenError::InvalidName(_))),
            "open {n:?}"
        );
        assert!(
            matches!(Segment::remove(n, dir), Err(RemoveError::InvalidName(_))),
            "remove {n:?}"
        );
    }
    for good in ["a", "A-z_0.9", "a..b", &"x".repeat(200)] {
        assert!(validate_name(good), "{good:?}");
    }
    // The longest name works end to end and is removed with its creator.
    let prefix = format!("perm-long-{}-", std::process::id());
    let long = format!("{prefix}{}", "L".repeat(200 - prefix.len()));
    let seg = Segment::create(&long, &CreateOptions::new(4096)).unwrap();
    assert!(seg.path().starts_with(dir));
    assert!(Segment::open(&long).is_ok());
    let path = seg.path().to_owned();
    drop(seg);
    assert!(!path.exists());
}
