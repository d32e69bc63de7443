//! Cross-process tests: real child processes (this test binary re-executed) share real segments in
//! /dev/shm; kill -9 tests show that every structure recovers and nothing leaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_ring::pool::{ChunkId, OwnerId, Pool, PoolConfig};
use shm_ring::{
    mpmc, spsc, CreateError, CreateOptions, Liveness, OpenError, ProcessToken, Region, RemoveError,
    Segment, WaitStrategy,
};
use shm_test_support::{say, unique_name, wait_for, ChildProcess, ChildTask};

// Fixed places of the structures inside the test segments.
const SPSC_AT: usize = 0;
const SPSC_CAP: usize = 1024;
const MPMC_AT: usize = 64 << 10;
const MPMC_CAP: usize = 256;
const HANDOFF_AT: usize = 128 << 10;
const POOL_AT: usize = 256 << 10;
const SEGMENT_SIZE: usize = 2 << 20;

fn secs(n: u64) -> Instant {
    Instant::now() + Duration::from_secs(n)
}

fn regions(seg: Segment) -> (Region, Region, Region, Region) {
    let all = Region::new(Arc::new(seg));
    (
        all.slice(SPSC_AT, MPMC_AT - SPSC_AT).unwrap(),
        all.slice(MPMC_AT, HANDOFF_AT - MPMC_AT).unwrap(),
        all.slice(HANDOFF_AT, POOL_AT - HANDOFF_AT).unwrap(),
        all.slice(POOL_AT, all.len() - POOL_AT).unwrap(),
    )
}

/// Creates a segment holding an SPSC ring, an MPMC ring, a hand-off SPSC ring of [u64; 2], and a pool.
fn fixture(test: &str) -> (String, Region, Region, Region, Region) {
    let name = unique_name(test);
    let seg = Segment::create(&name, &CreateOptions::new(SEGMENT_SIZE)).unwrap();
    let (s, m, h, p) = regions(seg);
    spsc::init::<u64>(&s, SPSC_CAP).unwrap();
    mpmc::init::<u64>(&m, MPMC_CAP, 16).unwrap();
    spsc::init::<[u64; 2]>(&h, 64).unwrap();
    Pool::init(&p, &PoolConfig::small()).unwrap();
    (name, s, m, h, p)
}

/// The child side of every test. Does nothing unless spawned by a test with a role.
#[test]
#[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
fn child_entry() {
    let Some(task) = ChildTask::from_env() else {
        return;
    };
    let (role, name, arg) = (task.role.as_str(), task.name.as_str(), task.number());
    if role == "create-and-hang" {
        let _seg = Segment::create(name, &CreateOptions::new(1 << 16)).unwrap();
        say("READY");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if role == "open-only" {
        match Segment::open(name) {
            Ok(_) => say("RESULT ok"),
            Err(OpenError::PermissionDenied(_)) => say("RESULT permission-denied"),
            Err(e) => say(format!("RESULT other {e}")),
        }
        std::process::exit(0);
    }
    if role == "open-in-other-namespace" {
        match Segment::open(name) {
            Err(OpenError::OtherPidNamespace { creator, ours, .. }) => {
                say(format!("RESULT other-namespace {creator} {ours}"))
            }
            Ok(_) => say("RESULT opened"),
            Err(e) => say(format!("RESULT other {e}")),
        }
        std::process::exit(0);
    }
    if role == "judge-when-out-of-fds" {
        fd_exhausted_judge(name, arg);
        std::process::exit(0);
    }
    let (s, m, h, p) = regions(Segment::open(name).unwrap());
    let strategy = WaitStrategy::default();
    match role {
        "spsc-produce" => {
            let mut tx = spsc::Producer::<u64>::attach(&s).unwrap();
            say("READY");
            for i in arg..arg + 100_000 {
                tx.push_blocking(i, &strategy, secs(30)).unwrap();
            }
        }
        "spsc-produce-forever" => {
            let mut tx = spsc::Producer::<u64>::attach(&s).unwrap();
            say("READY");
            let mut i = 0;
            loop {
                tx.push_blocking(i, &strategy, secs(60)).unwrap();
                i += 1;
            }
        }
        "spsc-consume-forever" => {
            let mut rx = spsc::Consumer::<u64>::attach(&s).unwrap();
            say("READY");
            loop {
                std::hint::black_box(rx.pop_blocking(&strategy, secs(60)).unwrap());
            }
        }
        "spsc-consume-check" => {
            let mut rx = spsc::Consumer::<u64>::attach(&s).unwrap();
            let first = rx.pop_blocking(&strategy, secs(30)).unwrap();
            for k in 1..arg {
                assert_eq!(rx.pop_blocking(&strategy, secs(30)).unwrap(), first + k);
            }
            say(format!("FIRST {first}"));
        }
        "spsc-wait-one" => {
            let mut rx = spsc::Consumer::<u64>::attach(&s).unwrap();
            say("READY");
            let v = rx.pop_blocking(&strategy, secs(20)).unwrap();
            say(format!("GOT {v}"));
        }
        "mpmc-produce" => {
            let tx = mpmc::Producer::<u64>::attach(&m).unwrap();
            say("READY");
            for i in 0..arg {
                tx.push_blocking(
                    (u64::from(std::process::id()) << 32) | i,
                    &strategy,
                    secs(30),
                )
                .unwrap();
            }
        }
        "mpmc-die-mid-push" => {
            let tx = mpmc::Producer::<u64>::attach(&m).unwrap();
            for i in 0..arg {
                tx.push(i).unwrap();
            }
            tx.push_with(|slot| {
                *slot = 0xDEAD;
                say("CLAIMED");
                // SAFETY: raising SIGKILL on ourselves; never returns.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            })
            .unwrap();
            unreachable!("killed inside push_with");
        }
        "mpmc-push-range" => {
            let tx = mpmc::Producer::<u64>::attach(&m).unwrap();
            for i in arg..arg + 10 {
                tx.push(i).unwrap();
            }
        }
        "pool-hold" => {
            let pool = Pool::attach(&p).unwrap();
            let me = pool.register_owner().unwrap();
            for i in 0..arg {
                let loan = pool.loan(me, if i % 2 == 0 { 100 } else { 3000 }).unwrap();
                let _ = loan.into_id();
            }
            say(format!("READY {}", me.get()));
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "pool-send" => {
            let pool = Pool::attach(&p).unwrap();
            let me = pool.register_owner().unwrap();
            let mut tx = spsc::Producer::<[u64; 2]>::attach(&h).unwrap();
            let mut loan = pool.loan(me, 200).unwrap();
            loan.as_mut_slice()[..11].copy_from_slice(b"from child!");
            let id = loan.into_id();
            tx.push([id.raw(), u64::from(me.get())]).unwrap();
            say("SENT");
            // Stay alive until the parent has adopted the chunk (it pushes back a byte).
            let mut rx = spsc::Consumer::<u64>::attach(&s).unwrap();
            rx.pop_blocking(&strategy, secs(30)).unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Opens the segment, lowers its descriptor limit and opens files until `EMFILE`, then judges
/// the parent (token `parent`, alive), the segment's creator (the parent, alive) and runs a pool
/// reclaim; reports each verdict on a line.
fn fd_exhausted_judge(name: &str, parent: u64) {
    let seg = Segment::open(name).unwrap();
    let (.., p) = regions(Segment::open(name).unwrap());
    let pool = Pool::attach(&p).unwrap();
    // Our own token first (it reads /proc/self/stat), as any process does when it attaches.
    let _ = ProcessToken::current();
    let parent = ProcessToken::from_raw(parent).unwrap();
    assert_eq!(
        parent.liveness(),
        Liveness::Alive,
        "judged with descriptors to spare"
    );
    let limit = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: setrlimit reads the struct we pass; lowering our own limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut hog = Vec::new();
    let errno = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => break e.raw_os_error(),
        }
        assert!(hog.len() < 100, "the descriptor limit did not hold");
    };
    say(format!("EXHAUSTED {}", errno == Some(libc::EMFILE)));
    say(format!("PARENT {:?}", parent.liveness()));
    say(format!("PARENT-ALIVE {}", parent.is_alive()));
    say(format!("CREATOR-ALIVE {}", seg.creator_alive()));
    let (owners, chunks) = pool.reclaim_dead();
    say(format!("RECLAIMED {owners} {chunks}"));
    drop(hog);
    say(format!("PARENT-AFTER {:?}", parent.liveness()));
}

#[test]
fn spsc_streams_in_order_between_processes() {
    let (name, s, ..) = fixture("spsc-order");
    let mut rx = spsc::Consumer::<u64>::attach(&s).unwrap();
    let mut kid = ChildProcess::role("spsc-produce", &name, "5");
    kid.expect("READY");
    for i in 5..100_005 {
        assert_eq!(rx.pop_blocking(&WaitStrategy::default(), secs(30)), Ok(i));
    }
    kid.wait_success();
    assert!(rx.is_abandoned(), "producer role released at exit");
    assert_eq!(rx.pop(), Err(spsc::PopError::Empty));
}

#[test]
fn spsc_parked_consumer_is_woken_by_another_process() {
    let (name, s, ..) = fixture("spsc-wake");
    let mut tx = spsc::Producer::<u64>::attach(&s).unwrap();
    let mut kid = ChildProcess::role("spsc-wait-one", &name, "0");
    kid.expect("READY");
    // The default strategy spins first, then parks on the futex: push only once it is parked,
    // so the push must wake it.
    wait_for("the child to park", Duration::from_secs(10), || {
        tx.parked_consumers() > 0
    });
    tx.push(77).unwrap();
    assert_eq!(kid.expect("GOT"), "77");
    kid.wait_success();
}

#[test]
fn a_consumer_killed_while_parked_leaves_no_waiter_behind() {
    let (name, s, ..) = fixture("spsc-parked-kill");
    let mut tx = spsc::Producer::<u64>::attach(&s).unwrap();
    let mut kid = ChildProcess::role("spsc-wait-one", &name, "0");
    kid.expect("READY");
    wait_for("the child to park", Duration::from_secs(5), || {
        tx.parked_consumers() > 0
    });
    kid.kill9();
    kid.wait_killed();
    assert_eq!(tx.parked_consumers(), 1, "the dead waiter is still counted");
    // The next consumer takes the role over and forgets the dead waiter: pushes are free again.
    let mut rx = spsc::Consumer::<u64>::attach(&s).unwrap();
    assert_eq!(tx.parked_consumers(), 0);
    tx.push(9).unwrap();
    assert_eq!(rx.pop(), Ok(9));
}

#[test]
fn spsc_producer_killed_mid_stream_is_replaced_without_gaps() {
    let (name, s, ..) = fixture("spsc-kill-producer");
    let mut rx = spsc::Consumer::<u64>::attach(&s).unwrap();
    let mut kid = ChildProcess::role("spsc-produce-forever", &name, "0");
    kid.expect("READY");
    let mut next = 0;
    while next < 50_000 {
        assert_eq!(
            rx.pop_blocking(&WaitStrategy::default(), secs(30)),
            Ok(next)
        );
        next += 1;
    }
    kid.kill9();
    kid.wait_killed();
    // Everything it published arrives, in order, with no gap and nothing half-written.
    while let Ok(v) = rx.pop() {
        assert_eq!(v, next);
        next += 1;
    }
    assert!(rx.is_abandoned(), "a dead producer counts as gone");
    // A new producer process takes the role over and the stream continues.
    let kid = ChildProcess::role("spsc-produce", &name, "1000000000");
    for i in 1_000_000_000..1_000_100_000 {
        assert_eq!(rx.pop_blocking(&WaitStrategy::default(), secs(30)), Ok(i));
    }
    kid.wait_success();
}

#[test]
fn spsc_consumer_killed_mid_stream_is_replaced() {
    let (name, s, ..) = fixture("spsc-kill-consumer");
    let mut tx = spsc::Producer::<u64>::attach(&s).unwrap();
    let mut kid = ChildProcess::role("spsc-consume-forever", &name, "0");
    kid.expect("READY");
    let mut next = 0u64;
    while next < 50_000 {
        tx.push_blocking(next, &WaitStrategy::default(), secs(30))
            .unwrap();
        next += 1;
    }
    kid.kill9();
    kid.wait_killed();
    assert!(tx.is_abandoned());
    // Fill the ring: a blocked push notices that nobody will drain it.
    let r = loop {
        match tx.push_blocking(next, &WaitStrategy::default(), secs(30)) {
            Ok(()) => next += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(r, spsc::PushError::Abandoned(_)), "{r:?}");
    // A new consumer resumes exactly where the dead one stopped publishing its progress.
    let kid = ChildProcess::role("spsc-consume-check", &name, "2000");
    let mut kid = kid;
    for _ in 0..2000 {
        tx.push_blocking(next, &WaitStrategy::default(), secs(30))
            .unwrap();
        next += 1;
    }
    let first: u64 = kid.expect("FIRST").parse().unwrap();
    assert!(
        first <= 50_000 && first + 2000 <= next,
        "resumed at {first}"
    );
    kid.wait_success();
}

#[test]
fn mpmc_two_producer_processes_deliver_everything_once_in_order() {
    let (name, _s, m, ..) = fixture("mpmc-two");
    let rx = mpmc::Consumer::<u64>::attach(&m).unwrap();
    let per = 50_000u64;
    let kids: Vec<ChildProcess> = (0..2)
        .map(|_| ChildProcess::role("mpmc-produce", &name, &per.to_string()))
        .collect();
    let mut next = std::collections::HashMap::new();
    for _ in 0..2 * per {
        let v = rx.pop_blocking(&WaitStrategy::default(), secs(30)).unwrap();
        let e = next.entry(v >> 32).or_insert(0u64);
        assert_eq!(v & 0xFFFF_FFFF, *e, "per-producer FIFO");
        *e += 1;
    }
    assert_eq!(next.len(), 2);
    for k in kids {
        k.wait_success();
    }
    assert_eq!(rx.pop(), Err(mpmc::PopError::Empty));
}

#[test]
fn mpmc_producer_killed_between_claim_and_publish_does_not_block_the_ring() {
    let (name, _s, m, ..) = fixture("mpmc-kill-claim");
    let rx = mpmc::Consumer::<u64>::attach(&m).unwrap();
    let mut kid = ChildProcess::role("mpmc-die-mid-push", &name, "10");
    kid.expect("CLAIMED");
    kid.wait_killed();
    // Another producer process pushes behind the dead claim.
    ChildProcess::role("mpmc-push-range", &name, "100").wait_success();
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(rx.pop_blocking(&WaitStrategy::default(), secs(10)).unwrap());
    }
    let expected: Vec<u64> = (0..10).chain(100..110).collect();
    assert_eq!(
        got, expected,
        "the dead claim is skipped, nothing else is lost"
    );
    assert_eq!(rx.pop(), Err(mpmc::PopError::Empty));
    // The ring keeps working for whole laps.
    let tx = mpmc::Producer::<u64>::attach(&m).unwrap();
    for lap in 0..3u64 {
        for i in 0..MPMC_CAP as u64 {
            tx.push(lap * 1000 + i).unwrap();
        }
        for i in 0..MPMC_CAP as u64 {
            assert_eq!(rx.pop(), Ok(lap * 1000 + i));
        }
    }
}

#[test]
fn pool_loan_holder_killed_is_reclaimed_without_leaks() {
    let (name, .., p) = fixture("pool-kill");
    let pool = Pool::attach(&p).unwrap();
    let before = pool.stats();
    let mut kid = ChildProcess::role("pool-hold", &name, "10");
    let owner: u32 = kid.expect("READY").parse().unwrap();
    assert_eq!(pool.stats().in_use(), 10);
    assert_eq!(pool.held_by(OwnerId::from_raw(owner).unwrap()), 10);
    assert_eq!(
        pool.reclaim_dead(),
        (0, 0),
        "a live owner is never reclaimed"
    );
    kid.kill9();
    kid.wait_killed();
    assert_eq!(pool.reclaim_dead(), (1, 10));
    let after = pool.stats();
    assert_eq!(after.in_use(), 0);
    assert_eq!(after.owners, before.owners);
    assert_eq!(
        after.classes.iter().map(|c| c.free).collect::<Vec<_>>(),
        before.classes.iter().map(|c| c.free).collect::<Vec<_>>()
    );
}

#[test]
fn pool_chunk_moves_between_processes_by_id() {
    let (name, s, _m, h, p) = fixture("pool-handoff");
    let pool = Pool::attach(&p).unwrap();
    let me = pool.register_owner().unwrap();
    let mut rx = spsc::Consumer::<[u64; 2]>::attach(&h).unwrap();
    let mut ack = spsc::Producer::<u64>::attach(&s).unwrap();
    let mut kid = ChildProcess::role("pool-send", &name, "0");
    kid.expect("SENT");
    let [id, from] = rx.pop_blocking(&WaitStrategy::default(), secs(10)).unwrap();
    let from = OwnerId::from_raw(from as u32).unwrap();
    let loan = pool.adopt(ChunkId::from_raw(id), from, me).unwrap();
    assert_eq!(&loan.as_slice()[..11], b"from child!");
    // Adopted once: the chunk is ours now, no longer the child's to hand over.
    assert!(matches!(
        pool.adopt(ChunkId::from_raw(id), from, me),
        Err(shm_ring::pool::ChunkError::NotOwned { .. })
    ));
    ack.push(1).unwrap();
    kid.wait_success();
    drop(loan);
    assert_eq!(pool.stats().in_use(), 0);
}

/// Writes a file only its owner may read and write, as a segment must be (whatever the umask).
fn write_private(path: &std::path::Path, bytes: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn segment_errors_are_distinct() {
    let dir = std::path::Path::new("/dev/shm");
    let name = unique_name("seg-errors");
    assert!(matches!(Segment::open(&name), Err(OpenError::NotFound(_))));
    for bad in [
        "",
        "../etc/passwd",
        "a/b",
        ".hidden",
        "sp ace",
        &"x".repeat(201),
    ] {
        assert!(
            matches!(Segment::open(bad), Err(OpenError::InvalidName(_))),
            "{bad:?}"
        );
        assert!(matches!(
            Segment::create(bad, &CreateOptions::new(4096)),
            Err(CreateError::InvalidName(_))
        ));
    }
    let path = dir.join(format!("shmr.{name}"));
    // Too small to hold a header.
    write_private(&path, b"short");
    assert!(matches!(
        Segment::open(&name),
        Err(OpenError::TooSmall { .. })
    ));
    // Big enough, all zero: a creator that never finished.
    write_private(&path, vec![0u8; 8192]);
    assert!(matches!(
        Segment::open(&name),
        Err(OpenError::NotInitialised(_))
    ));
    // Garbage: not a segment.
    write_private(&path, vec![0xA5u8; 8192]);
    assert!(matches!(Segment::open(&name), Err(OpenError::BadMagic(_))));
    // Right magic, layout version from the future.
    let mut bytes = vec![0u8; 8192];
    bytes[..8].copy_from_slice(&shm_ring::segment::SEGMENT_MAGIC.to_le_bytes());
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    write_private(&path, &bytes);
    assert!(matches!(
        Segment::open(&name),
        Err(OpenError::VersionMismatch {
            what: "layout",
            found: 99,
            ..
        })
    ));
    // A file whose creator is gone is stale; create replaces it.
    let seg = Segment::create(&name, &CreateOptions::new(8192)).unwrap();
    let opts = shm_ring::SegmentOpenOptions {
        user_version: Some(3),
        ..Default::default()
    };
    assert!(matches!(
        Segment::open_with(&name, &opts),
        Err(OpenError::VersionMismatch {
            what: "protocol",
            found: 0,
            expected: 3,
            ..
        })
    ));
    assert!(Segment::open(&name).is_ok());
    assert!(
        matches!(Segment::remove(&name, dir), Err(RemoveError::InUse(_))),
        "live segments are never removed"
    );
    drop(seg);
    assert!(!path.exists(), "the creator removes its name on drop");
}

#[test]
fn segment_is_private_to_its_user_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let name = unique_name("seg-mode");
    let seg = Segment::create(&name, &CreateOptions::new(4096)).unwrap();
    let mode = std::fs::metadata(seg.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let name2 = unique_name("seg-mode-640");
    let mut opts = CreateOptions::new(4096);
    opts.mode = 0o640;
    let seg2 = Segment::create(&name2, &opts).unwrap();
    assert_eq!(
        std::fs::metadata(seg2.path()).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
#[ignore = "needs root (runs a child as uid 65534); scripts/test.sh runs it with --ignored as root"]
fn another_user_cannot_open_a_segment() {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs a child as another user and needs root: run it as root with --ignored"
    );
    let name = unique_name("seg-perm");
    let _seg = Segment::create(&name, &CreateOptions::new(4096)).unwrap();
    let out = ChildTask::command("open-only", &name, "0")
        .uid(65534)
        .gid(65534)
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("RESULT permission-denied"), "{text}");
        }
        other => panic!(
            "could not run the test binary as uid 65534 ({other:?}); the target directory must be \
             readable by other users"
        ),
    }
}

#[test]
fn live_segment_refuses_a_second_creator_and_stale_one_is_replaced() {
    let name = unique_name("seg-stale");
    let mut kid = ChildProcess::role("create-and-hang", &name, "0");
    kid.expect("READY");
    let seg = Segment::open(&name).unwrap();
    assert!(seg.creator_alive());
    assert_eq!(seg.creator_pid(), kid.pid());
    let second = Segment::create(&name, &CreateOptions::new(4096));
    assert!(
        matches!(&second, Err(CreateError::AlreadyExists { pid, .. }) if *pid == kid.pid()),
        "{second:?}"
    );
    kid.kill9();
    kid.wait_killed();
    assert!(
        !seg.creator_alive(),
        "the kernel dropped the dead creator's lock"
    );
    assert!(matches!(
        Segment::open(&name),
        Err(OpenError::CreatorGone(_))
    ));
    let mut no_replace = CreateOptions::new(4096);
    no_replace.replace_stale = false;
    assert!(matches!(
        Segment::create(&name, &no_replace),
        Err(CreateError::Stale(_))
    ));
    let fresh = Segment::create(&name, &CreateOptions::new(4096)).unwrap();
    assert!(fresh.is_creator());
    assert!(Segment::open(&name).unwrap().creator_alive());
    drop(fresh);
    assert!(
        matches!(Segment::open(&name), Err(OpenError::NotFound(_))),
        "nothing left behind"
    );
}

#[test]
fn a_process_out_of_file_descriptors_declares_no_live_process_dead() {
    let (name, .., p) = fixture("fd-exhausted");
    let pool = Pool::attach(&p).unwrap();
    let me = pool.register_owner().unwrap();
    let held: Vec<_> = (0..3).map(|_| pool.loan(me, 100).unwrap()).collect();
    let mut kid = ChildProcess::role(
        "judge-when-out-of-fds",
        &name,
        &ProcessToken::current().raw().to_string(),
    );
    assert_eq!(
        kid.expect("EXHAUSTED "),
        "true",
        "the child ran out of descriptors"
    );
    // It cannot read /proc/<our pid>/stat, but our pid exists: unknown, which counts as alive.
    assert_eq!(kid.expect("PARENT "), "Unknown");
    assert_eq!(kid.expect("PARENT-ALIVE "), "true");
    assert_eq!(kid.expect("CREATOR-ALIVE "), "true");
    assert_eq!(
        kid.expect("RECLAIMED "),
        "0 0",
        "a reclaim pass without descriptors takes nothing from a live owner"
    );
    // With descriptors back, the evidence is certain again.
    assert_eq!(kid.expect("PARENT-AFTER "), "Alive");
    kid.wait_success();
    assert_eq!(pool.held_by(me), 3);
    assert_eq!(pool.stats().in_use(), 3);
    assert_eq!(pool.owner_token(me), Some(ProcessToken::current()));
    drop(held);
    assert_eq!(pool.stats().in_use(), 0);
}

#[test]
fn a_segment_records_its_pid_namespace_and_refuses_another() {
    use std::os::unix::fs::FileExt;
    let name = unique_name("seg-pidns");
    let seg = Segment::create(&name, &CreateOptions::new(4096)).unwrap();
    assert!(Segment::open(&name).is_ok(), "same namespace");
    // Rewrite the recorded namespace (offset 56 of the header) as another namespace's creator would
    // have written it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(seg.path())
        .unwrap();
    let other = 0x1234_5678u64;
    file.write_all_at(&other.to_le_bytes(), 56).unwrap();
    match Segment::open(&name) {
        Err(OpenError::OtherPidNamespace { creator, ours, .. }) => {
            assert_eq!(creator, other);
            assert_ne!(ours, other);
        }
        other => panic!("expected OtherPidNamespace, got {other:?}"),
    }
}

#[test]
#[ignore = "needs root (runs a child in a new pid namespace with unshare); scripts/test.sh runs it with --ignored as root"]
fn a_process_in_another_pid_namespace_cannot_open_a_segment() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "unshare --pid needs root: run this test as root with --ignored"
    );
    let name = unique_name("seg-pidns-real");
    let _seg = Segment::create(&name, &CreateOptions::new(4096)).unwrap();
    let task = shm_test_support::ChildTask::command("open-in-other-namespace", &name, "0");
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(task.get_program())
        .args(task.get_args());
    for (k, v) in task.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("unshare runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("RESULT other-namespace"), "{text}");
}
