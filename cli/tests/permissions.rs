//! Who may touch a service: its segment is private to the user that serves it, another user can
//! neither attach, read, remove nor replace it, names cannot leave /dev/shm, and `cleanup` removes
//! only segments whose server has died.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use shm_runtime::protocol::Request;
use shm_runtime::ring::{CreateError, OpenError, Segment};
use shm_runtime::testing::Service;
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig, ServerError};
use shm_test_support::runtime::{generate, RequestExt, StaleSegment};
use shm_test_support::{say, unique_name, ChildProcess, ChildTask};

/// The unprivileged account the cross-user test runs its attacker as.
const OTHER_USER: &str = "shmr-test-other";

/// `shm-runtime serve` with an echo model, under umask 000 (the segment's mode must not
/// depend on it).
fn start_server(service: &str) -> ChildProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shm-runtime"));
    cmd.args(["serve", "--name", service, "--model", "echo=echo"])
        .env("RUST_LOG", "warn");
    // SAFETY: umask is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut kid = ChildProcess::spawn(&mut cmd);
    kid.expect("serving");
    kid
}

fn path_of(service: &str) -> String {
    format!("/dev/shm/shmr.{service}")
}

/// A Generate request to the echo model.
fn echo(id: u64) -> Request {
    generate("echo", "hi").with_id(id)
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shm-runtime"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Child processes: this binary re-executed in a role.
#[test]
#[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
fn child_entry() {
    let Some(task) = ChildTask::from_env() else {
        return;
    };
    let service = task.name;
    match task.role.as_str() {
        // Runs as another, unprivileged user and tries everything against the service.
        "other-user" => {
            // SAFETY: geteuid has no preconditions.
            say(format!("EUID {}", unsafe { libc::geteuid() }));
            say(format!("CONNECT {:?}", Client::connect(&service).err()));
            say(format!("OPEN {:?}", Segment::open(&service).err()));
            let path = path_of(&service);
            say(format!(
                "READ {:?}",
                std::fs::read(&path).err().map(|e| e.kind())
            ));
            say(format!(
                "REMOVE {:?}",
                std::fs::remove_file(&path).err().map(|e| e.kind())
            ));
            let cleanup = Segment::remove(&service, std::path::Path::new("/dev/shm"));
            say(format!("CLEANUP {:?}", cleanup.err()));
            let serve = Server::start(ServerConfig::new(
                &service,
                vec![ModelConfig::new("echo", "echo")],
            ));
            say(format!("SERVE {:?}", serve.err()));
            say("DONE");
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn a_served_segment_is_private_to_its_user_whatever_the_umask() {
    let service = unique_name("mode");
    let _cleanup = StaleSegment(service.clone());
    let server = start_server(&service);
    let meta = std::fs::metadata(path_of(&service)).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "mode of the segment"
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    // Creation left no temporary name behind.
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&service) && n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(server);
}

/// The uid and gid of [`OTHER_USER`], created (as a system user without a home) when missing.
fn other_user() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, OTHER_USER]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                OTHER_USER,
            ])
            .output()
            .map_err(|e| format!("cannot run useradd: {e}"))?;
        // Exit code 9: created meanwhile by someone else; anything else is checked below.
        if !out.status.success() && id("-u").is_none() {
            return Err(format!(
                "useradd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(format!("no uid/gid for {OTHER_USER}")),
    }
}

#[test]
#[ignore = "needs root (creates a user and runs a child as it); scripts/test.sh runs it with --ignored as root"]
fn another_user_can_neither_attach_nor_remove_nor_replace_a_service() {
    // Only root can run a child as another user; root itself would pass every file check, so the
    // attacker must be a real second user.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test creates a user and runs a child as it, which needs root: run it as root with --ignored"
    );
    let (uid, gid) = other_user().unwrap();
    assert_ne!(uid, 0);
    let service = unique_name("other");
    let server = Server::start(ServerConfig::new(
        &service,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let ino = std::fs::metadata(path_of(&service)).unwrap().ino();

    let mut kid = ChildProcess::spawn(
        ChildTask::command("other-user", &service, "")
            .env_remove("HOME")
            .uid(uid)
            .gid(gid),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let euid = kid.expect("EUID ");
    assert_eq!(euid, uid.to_string(), "the attacker is not root");
    let connect = kid.expect("CONNECT ");
    assert!(
        connect.starts_with("Some(Attach(") && connect.contains("permission denied"),
        "{connect}"
    );
    let open = kid.expect("OPEN ");
    assert_eq!(open, format!("Some(PermissionDenied({service:?}))"));
    assert_eq!(kid.expect("READ "), "Some(PermissionDenied)");
    // /dev/shm is sticky: only the owner may unlink.
    assert_eq!(kid.expect("REMOVE "), "Some(PermissionDenied)");
    let cleanup = kid.expect("CLEANUP ");
    assert!(
        cleanup.starts_with("Some(Io") && cleanup.contains("PermissionDenied"),
        "{cleanup}"
    );
    let serve = kid.expect("SERVE ");
    assert!(
        serve.starts_with("Some(Segment") && serve.contains("PermissionDenied"),
        "{serve}"
    );
    kid.expect("DONE");
    kid.wait_success();
    assert!(Instant::now() < deadline, "the attacker took too long");

    // The service is untouched: same file, same mode, still serving.
    let meta = std::fs::metadata(path_of(&service)).unwrap();
    assert_eq!(meta.ino(), ino);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let client = Client::connect(&service).unwrap();
    client.infer(&echo(1)).unwrap();
    // No stray temporary file of the attacker's attempt to serve the name.
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&service) && n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(client);
    drop(server);
}

#[test]
fn service_names_cannot_leave_dev_shm() {
    let marker = format!("esc{}", std::process::id());
    let bad = [
        String::new(),
        "/".to_owned(),
        format!("a/{marker}"),
        format!("../{marker}"),
        format!("../../tmp/{marker}"),
        "..".to_owned(),
        ".".to_owned(),
        format!(".{marker}"),
        format!("{marker}\0x"),
        format!("{marker} x"),
        format!("{marker}\nx"),
        format!("{marker}:x"),
        format!("{marker}*"),
        format!("{marker}\\x"),
        format!("n\u{e9}v{marker}"),
        format!("{marker}{}", "x".repeat(201)),
    ];
    for name in &bad {
        let cfg = ServerConfig::new(name, vec![ModelConfig::new("echo", "echo")]);
        match Server::start(cfg) {
            Err(ServerError::Segment {
                source: CreateError::InvalidName(n),
                ..
            }) => assert_eq!(&n, name),
            other => panic!("server start with {name:?}: expected InvalidName, got {other:?}"),
        }
        match Client::connect(name) {
            Err(Error::Attach(m)) => assert!(m.contains("invalid segment name"), "{name:?}: {m}"),
            other => panic!("connect to {name:?}: expected Attach(invalid name), got {other:?}"),
        }
        assert!(matches!(
            Segment::open(name),
            Err(OpenError::InvalidName(_))
        ));
        match Service::open(name) {
            Err(m) => assert!(m.contains("invalid segment name"), "{name:?}: {m}"),
            Ok(_) => panic!("Service::open({name:?}) opened something"),
        }
    }
    // The CLI refuses them too.
    for args in [["cleanup", "../etc"], ["status", "a/b"], ["ping", "../x"]] {
        let out = cli(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = cli(&["serve", "--name", "../x", "--model", "echo=echo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid"));
    // Nothing was created anywhere a bad name could point.
    for dir in ["/dev/shm", "/dev", "/tmp", "/"] {
        let found: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&marker))
            .collect();
        assert!(found.is_empty(), "{dir}: {found:?}");
    }

    // The longest valid name (200 characters) is served and reachable.
    let prefix = format!("perm-long-{}-", std::process::id());
    let long = format!("{prefix}{}", "L".repeat(200 - prefix.len()));
    assert_eq!(long.len(), 200);
    let server = Server::start(ServerConfig::new(
        &long,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    Client::connect(&long).unwrap().infer(&echo(1)).unwrap();
    drop(server);
    assert!(!std::path::Path::new(&path_of(&long)).exists());
}

#[test]
fn cleanup_never_removes_a_live_service_and_removes_a_dead_ones_segment() {
    let service = unique_name("cleanup");
    let _cleanup = StaleSegment(service.clone());
    let mut server = start_server(&service);
    let path = path_of(&service);
    let ino = std::fs::metadata(&path).unwrap().ino();
    let client = Client::connect(&service).unwrap();

    let out = cli(&["cleanup", &service]);
    assert!(!out.status.success(), "cleanup of a live service succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by a live process"), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    client.infer(&echo(1)).unwrap();

    // The server dies without cleaning up: its segment is stale, and cleanup removes it.
    server.kill9();
    assert!(std::path::Path::new(&path).exists());
    assert_eq!(
        Client::connect(&service).unwrap_err(),
        Error::ServiceNotFound(service.clone())
    );
    let out = cli(&["cleanup", &service]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
    assert!(!std::path::Path::new(&path).exists());
    // The old client notices its server has gone (at submit, or at the first wait).
    match client.submit(&echo(2)) {
        Err(e) => assert_eq!(e, Error::ServerGone),
        Ok(t) => assert_eq!(
            client.recv(t, Duration::from_secs(5)).unwrap_err(),
            Error::ServerGone
        ),
    }
    // Nothing left to remove.
    let out = cli(&["cleanup", &service]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no segment"));
    // And the name can be served again.
    let _server = start_server(&service);
    Client::connect(&service).unwrap().infer(&echo(3)).unwrap();
}
