//! Segment files: created with exactly the requested mode whatever the umask (0600 by default),
//! and only under names that stay inside the segment directory; opened and removed only when they
//! are this user's own.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shm_ring::segment::validate_name;
use shm_ring::{CreateError, CreateOptions, OpenError, RemoveError, Segment, SegmentOpenOptions};
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

fn chmod(seg: &Segment, mode: u32) {
    std::fs::set_permissions(seg.path(), std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn open_refuses_a_segment_that_grants_others_more_than_allowed() {
    let seg = Segment::create(&unique_name("too-open"), &CreateOptions::new(4096)).unwrap();
    for mode in [0o644, 0o666, 0o604, 0o620] {
        chmod(&seg, mode);
        match Segment::open(seg.name()) {
            Err(OpenError::TooPermissive {
                mode: found,
                allowed,
                ..
            }) => assert_eq!((found, allowed), (mode, 0o600)),
            r => panic!("mode {mode:o}: expected TooPermissive, got {r:?}"),
        }
    }
    chmod(&seg, 0o600);
    assert!(Segment::open(seg.name()).is_ok());
    chmod(&seg, 0o400);
    assert!(
        !matches!(
            Segment::open(seg.name()),
            Err(OpenError::TooPermissive { .. })
        ),
        "the owner's own bits are not restricted"
    );

    // A server configured with a group mode: its clients allow that mode, and no more.
    let mut group = CreateOptions::new(4096);
    group.mode = 0o660;
    let seg = Segment::create(&unique_name("group-mode"), &group).unwrap();
    assert!(matches!(
        Segment::open(seg.name()),
        Err(OpenError::TooPermissive { mode: 0o660, .. })
    ));
    let allow = |allowed_mode| SegmentOpenOptions {
        allowed_mode,
        ..SegmentOpenOptions::default()
    };
    assert!(Segment::open_with(seg.name(), &allow(0o660)).is_ok());
    assert!(matches!(
        Segment::open_with(seg.name(), &allow(0o640)),
        Err(OpenError::TooPermissive { mode: 0o660, .. })
    ));
    chmod(&seg, 0o666);
    assert!(matches!(
        Segment::open_with(seg.name(), &allow(0o660)),
        Err(OpenError::TooPermissive { mode: 0o666, .. })
    ));
}

#[test]
fn a_symlinked_name_is_neither_opened_nor_removed() {
    let seg = Segment::create(&unique_name("link-target"), &CreateOptions::new(4096)).unwrap();
    let name = unique_name("link");
    let link = Path::new("/dev/shm").join(format!("shmr.{name}"));
    std::os::unix::fs::symlink(seg.path(), &link).unwrap();
    let open = Segment::open(&name);
    let remove = Segment::remove(&name, Path::new("/dev/shm"));
    std::fs::remove_file(&link).unwrap();
    assert!(matches!(open, Err(OpenError::NotAFile(_))), "{open:?}");
    assert!(
        matches!(remove, Err(RemoveError::NotAFile(_))),
        "{remove:?}"
    );
    assert!(seg.path().exists(), "the link's target is untouched");
}

#[test]
#[ignore = "needs root (chowns a segment file to uid 65534); scripts/test.sh runs it with --ignored as root"]
fn a_segment_file_of_another_uid_is_neither_opened_nor_removed() {
    // Without root the same checks run with an injected uid: shm-ring's unit test
    // `segment::tests::a_file_of_another_uid_is_neither_opened_nor_removed`.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "only root can give a file to another uid: run this test as root with --ignored"
    );
    let other = 65534;
    let name = unique_name("chowned");
    let path = Path::new("/dev/shm").join(format!("shmr.{name}"));
    // As another user creating the name first would: a file that is not ours, no creator's lock.
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    std::os::unix::fs::chown(&path, Some(other), Some(other)).unwrap();
    let open = Segment::open(&name);
    let remove = Segment::remove(&name, Path::new("/dev/shm"));
    let still_there = path.exists();
    std::fs::remove_file(&path).unwrap();
    match open {
        Err(OpenError::NotOwner { owner, euid, .. }) => assert_eq!((owner, euid), (other, 0)),
        r => panic!("expected NotOwner, got {r:?}"),
    }
    match remove {
        Err(RemoveError::NotOwner { owner, .. }) => assert_eq!(owner, other),
        r => panic!("expected NotOwner, got {r:?}"),
    }
    assert!(still_there, "remove left the other user's file alone");
}
