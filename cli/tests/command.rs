//! The command's manners: help and usage errors, output into a closed pipe, plain logs when they
//! are not read on a terminal, and where the workers run.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shm_test_support::runtime::StaleSegment;
use shm_test_support::{unique_name, wait_for, ChildProcess};

const EXE: &str = env!("CARGO_BIN_EXE_shm-runtime");

fn cli(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `shm-runtime serve NAME` with an echo model, its log (at `info`) going to `stderr`.
fn serve(service: &str, extra: &[&str], stderr: Stdio) -> ChildProcess {
    let mut server = ChildProcess::spawn(
        Command::new(EXE)
            .args(["serve", "--name", service, "--model", "echo=echo"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stderr(stderr),
    );
    server.expect("serving");
    server
}

#[test]
fn every_subcommand_has_help_that_exits_zero() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["serve", "--help"],
        &["status", "--help"],
        &["ping", "--help"],
        &["cleanup", "--help"],
        &["help", "serve"],
    ] {
        let out = cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!out.stdout.is_empty(), "{args:?}: no output");
    }
    let help = text(&cli(&["serve", "--help"]).stdout);
    for flag in [
        "--cores",
        "--no-pin",
        "--grace <DURATION>",
        "--model <NAME=BACKEND>",
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
}

#[test]
fn bad_arguments_are_usage_errors_that_say_what_is_wrong() {
    for (args, says) in [
        (&["ping", "svc", "--count", "0"][..], "--count"),
        (&["ping", "svc", "--timeout", "soon"], "not a duration"),
        (
            &["serve", "--name", "x", "--grace", "5 parsecs"],
            "unknown unit",
        ),
        (&["serve", "--name", "x", "--model", "echo"], "NAME=BACKEND"),
        (
            &["serve", "--name", "x", "--wait", "sometimes"],
            "unknown wait strategy",
        ),
        (
            &["serve", "--name", "x", "--cores", "1", "--no-pin"],
            "cannot be used with",
        ),
        (&["serve", "--name", "x", "--cores", "one"], "--cores"),
        (&["status"], "NAME"),
        (&["frobnicate"], "unrecognized subcommand"),
    ] {
        let out = cli(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The status of `cmd` whose stdout is read for `bytes` bytes, then closed; and its stderr.
fn run_into_closed_pipe(args: &[&str], bytes: usize) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(EXE)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut got = vec![0u8; bytes];
    stdout.read_exact(&mut got).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap(), stderr)
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let service = unique_name("pipe");
    let _cleanup = StaleSegment(service.clone());
    let server = serve(&service, &[], Stdio::null());
    // `status NAME --json | head -c1`: the reader takes one byte and leaves.
    let (status, stderr) = run_into_closed_pipe(&["status", &service, "--json"], 1);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {stderr}"
    );
    // The reader gone before the first write: every write fails with EPIPE, and the command ends
    // with status 0 and nothing on stderr.
    for args in [
        &["status", &service, "--json"][..],
        &["status", &service],
        &["ping", &service, "--count", "3"],
        &["ping", &service, "--count", "3", "--json"],
        &["help"],
    ] {
        let (status, stderr) = run_into_closed_pipe(args, 0);
        assert!(status.success(), "{args:?}: {status:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    drop(server);
}

#[test]
fn ping_and_status_print_json() {
    let service = unique_name("json");
    let _cleanup = StaleSegment(service.clone());
    let server = serve(&service, &[], Stdio::null());
    let requests = || -> u64 {
        let out = cli(&["status", &service, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["requests"].as_u64().unwrap()
    };
    let before = requests();
    let out = cli(&["ping", &service, "--count", "2", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["seq"], 1);
    assert!(lines[0]["rtt_us"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[0]["models"][0]["state"], "ready");
    assert_eq!(lines[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        requests(),
        before,
        "a ping is answered by the server, not a model"
    );
    drop(server);
}

#[test]
fn a_servers_log_redirected_to_a_file_has_no_escape_bytes() {
    let service = unique_name("log-file");
    let _cleanup = StaleSegment(service.clone());
    let path = std::env::temp_dir().join(format!("{service}.log"));
    let server = serve(&service, &[], Stdio::from(File::create(&path).unwrap()));
    assert!(cli(&["ping", &service, "--count", "1"]).status.success());
    server.signal(libc::SIGTERM);
    server.wait_success();
    let log = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let log_text = text(&log);
    for line in ["serving", "draining", "stopped"] {
        assert!(
            log_text.contains(line),
            "no {line:?} in the log:\n{log_text}"
        );
    }
    assert!(
        !log.contains(&0x1b),
        "escape bytes in the log:\n{log_text:?}"
    );
}

/// A pseudo-terminal: the master side for the test to read, the slave side's path for a child's
/// stderr.
struct Pty {
    master: File,
    slave: std::path::PathBuf,
}

impl Pty {
    fn open() -> Pty {
        use std::os::fd::FromRawFd as _;
        // SAFETY: posix_openpt returns a new descriptor or -1; a valid one is owned by `master`
        // from here on. grantpt, unlockpt and ptsname take that descriptor; ptsname's static
        // buffer is copied before any other call (tests of this binary call ptsname nowhere else).
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "no pseudo-terminal");
            let master = File::from_raw_fd(fd);
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let name = libc::ptsname(fd);
            assert!(!name.is_null());
            let slave = std::ffi::CStr::from_ptr(name).to_str().unwrap().into();
            Pty { master, slave }
        }
    }
}

#[test]
fn a_log_on_a_terminal_is_coloured_unless_no_color_is_set() {
    for no_color in [None, Some("1")] {
        let service = unique_name("log-tty");
        let _cleanup = StaleSegment(service.clone());
        let pty = Pty::open();
        let slave = File::options()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&pty.slave)
            .unwrap();
        let mut cmd = Command::new(EXE);
        cmd.args(["serve", "--name", &service, "--model", "echo=echo"])
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stderr(slave);
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let mut server = ChildProcess::spawn(&mut cmd);
        // The command keeps its copy of the slave side open until dropped: the reads below end
        // only when no one holds it.
        drop(cmd);
        server.expect("serving");
        server.signal(libc::SIGTERM);
        server.wait_success();
        // Everything the server wrote is waiting in the terminal; the slave side is closed now,
        // so the read ends (EIO) once it is drained.
        let mut log = Vec::new();
        let mut master = pty.master;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buf) {
            log.extend_from_slice(&buf[..n]);
        }
        assert!(text(&log).contains("stopped"), "{:?}", text(&log));
        assert_eq!(
            log.contains(&0x1b),
            no_color.is_none(),
            "NO_COLOR={no_color:?}: {:?}",
            text(&log)
        );
    }
}

/// The CPUs the thread named `thread` of process `pid` may run on, as /proc lists them.
fn thread_cpus(pid: u32, thread: &str) -> Option<String> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() == thread {
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|l| l.trim().to_owned());
        }
    }
    None
}

/// The CPUs of a list as /proc writes them (`0-3,6`).
fn cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn workers_are_pinned_by_the_rule_cores_overrides_and_no_pin_turns_it_off() {
    // A child starts with the affinity of the thread that started it: this one's.
    let ours = std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| l.trim().to_owned())
        .unwrap();
    let allowed = cpu_list(&ours);
    // The automatic rule: one worker, pinned to the second allowed CPU if there is one.
    let automatic = match allowed[..] {
        [_, second, ..] => second.to_string(),
        _ => ours.clone(),
    };
    for (extra, expect) in [
        (&[][..], automatic),
        (
            &["--cores", &allowed[0].to_string()],
            allowed[0].to_string(),
        ),
        (&["--no-pin"], ours.clone()),
    ] {
        let service = unique_name("pin");
        let _cleanup = StaleSegment(service.clone());
        let server = serve(&service, extra, Stdio::null());
        let mut seen = None;
        wait_for("the worker thread", Duration::from_secs(5), || {
            seen = thread_cpus(server.pid(), "lane0-w0");
            seen.is_some()
        });
        assert_eq!(seen.as_deref(), Some(expect.as_str()), "{extra:?}");
        drop(server);
    }
}

#[test]
fn ping_needs_no_echo_model() {
    let service = unique_name("ping-slow");
    let _cleanup = StaleSegment(service.clone());
    let mut server = ChildProcess::spawn(
        Command::new(EXE)
            .args(["serve", "--name", &service, "--model", "slow=sleep"])
            .stderr(Stdio::null()),
    );
    server.expect("serving");
    let out = cli(&["ping", &service, "--count", "1", "--ready"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("slow ready"),
        "{}",
        text(&out.stdout)
    );
    drop(server);
}
