//! A client process that writes impossible head and tail values into its rings is disconnected
//! with its reason (logged, in `status`, and in the error its library returns), and the worker
//! that served it goes back to its idle CPU use, read from /proc. One test in this binary: the CPU
//! of the server's lane threads must be this test's alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shm_ring::process::ProcessToken;
use shm_runtime::testing::Service;
use shm_runtime::{Client, Error, ModelConfig, Server, ServerConfig};
use shm_test_support::runtime::{generate, generated_text, RequestExt};
use shm_test_support::wait::Watchdog;
use shm_test_support::{say, unique_name, wait_for, ChildProcess, ChildTask};

/// Child processes: this binary re-executed in a role.
#[test]
#[ignore = "a child process's entry point: runs only when a test spawns this binary with a role"]
fn child_entry() {
    let Some(task) = ChildTask::from_env() else {
        return;
    };
    // Connects, is served once, then adds `arg`'s amount to the tail of its request ring (or,
    // with role `break-responses`, of its response ring) and asks again until the server
    // disconnects it; then waits to be told to exit.
    let client = Client::connect(&task.name).unwrap();
    let answer = client
        .infer(&generate("echo", "before").with_id(1))
        .unwrap();
    assert_eq!(generated_text(&answer), "before");
    drop(answer);
    let svc = Service::open(&task.name).unwrap();
    let me = ProcessToken::current().raw();
    let slot = (0..svc.layout.max_clients)
        .find(|&c| svc.client(c).token.load(Ordering::Acquire) == me)
        .unwrap();
    let ring = match task.role.as_str() {
        "break-requests" => svc.request_ring(slot, 0),
        "break-responses" => svc.response_ring(slot),
        other => panic!("unknown role {other}"),
    };
    let tail = ring
        .ptr_at::<AtomicU64>(shm_ring::mpmc::TAIL_OFFSET)
        .unwrap();
    // SAFETY: the ring's region is mapped for as long as `svc` lives; the tail is an AtomicU64
    // at that offset (the ring's ABI).
    unsafe { tail.as_ref() }.fetch_add(task.number(), Ordering::SeqCst);
    say("BROKEN");
    let give_up = Instant::now() + Duration::from_secs(20);
    let why = loop {
        assert!(Instant::now() < give_up, "never disconnected");
        match client.infer_timeout(
            &generate("echo", "after").with_id(2),
            Duration::from_millis(500),
        ) {
            Err(Error::Disconnected(why)) => break why,
            Ok(_) | Err(Error::Busy(_) | Error::TimedOut) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    };
    say(format!("DISCONNECTED {why}"));
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
}

/// CPU time (user + system, in clock ticks) of this process's threads named after a lane.
fn lane_cpu_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with("lane") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state is field 3; utime and stime
        // are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    ticks
}

/// The lane threads' CPU use over `window`, as a share of one core.
fn lane_cpu_share(window: Duration) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = lane_cpu_ticks();
    std::thread::sleep(window);
    (lane_cpu_ticks() - before) as f64 / hz / window.as_secs_f64()
}

#[test]
fn a_client_that_breaks_its_ring_indices_is_disconnected_and_the_worker_goes_back_to_idle() {
    let _dog = Watchdog::new("ejection", Duration::from_secs(120));
    let svc = unique_name("eject");
    let mut cfg = ServerConfig::new(&svc, vec![ModelConfig::new("echo", "echo")]);
    cfg.models[0].workers = Some(1);
    let server = Server::start(cfg).unwrap();
    let good = Client::connect(&svc).unwrap();
    let idle = lane_cpu_share(Duration::from_secs(1));

    // Tail one past an unclaimed slot, tail far past the ring's capacity, and a response ring
    // whose tail is past what any producer could claim.
    let cases = [
        ("break-requests", 1, "request ring"),
        ("break-requests", (1 << 20) + 1, "request ring"),
        ("break-responses", (1 << 20) + 3, "response ring"),
    ];
    for (n, (role, add, ring)) in cases.into_iter().enumerate() {
        let mut child = ChildProcess::role(role, &svc, &add.to_string());
        child.expect("BROKEN");
        let why = child.expect("DISCONNECTED");
        assert!(why.contains(ring), "{role} {add}: {why}");
        let st = shm_runtime::status(&svc).unwrap();
        assert_eq!(st.clients_ejected, n as u64 + 1);
        let shown = st
            .clients
            .iter()
            .find(|c| c.pid == child.pid())
            .and_then(|c| c.disconnected.clone());
        assert!(
            shown.as_deref().is_some_and(|s| s.contains(ring)),
            "status shows why: {shown:?}"
        );
        // Still connected (the slot is its own until it closes), and no longer a cost.
        let busy = lane_cpu_share(Duration::from_secs(1));
        assert!(
            busy <= idle + 0.10,
            "{role} {add}: the lane's worker used {:.0} % of a core after the disconnect, {:.0} % \
             when idle",
            busy * 100.0,
            idle * 100.0
        );
        let answer = good
            .infer(&generate("echo", "good").with_id(n as u64 + 1))
            .unwrap();
        assert_eq!(generated_text(&answer), "good");
        drop(answer);
        child.tell("exit");
        child.wait_success();
        wait_for("the slot to be freed", Duration::from_secs(5), || {
            shm_runtime::status(&svc)
                .unwrap()
                .clients
                .iter()
                .all(|c| c.disconnected.is_none())
        });
    }
    drop(good);
    wait_for("the pool to be full", Duration::from_secs(5), || {
        let st = server.pool().stats();
        st.classes.iter().all(|c| c.free == c.count)
    });
}
