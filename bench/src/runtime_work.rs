//! Workloads of the runtime: request -> worker -> response round trips against an echo server in
//! another process, pipelined throughput, idle CPU, and the in-process costs of validation, result
//! writing and scheduling.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use shm_runtime::protocol::{
    access_request, check_request, encode_into, Input, Limits, Params, Request, Task,
};
use shm_runtime::{Client, ClientOptions, ModelConfig, ServerConfig};

use crate::child::{pin_to, ChildProcess};
use crate::stats::{median, Latencies, Percentiles};

/// An echo server in a child process, its worker pinned to the second CPU (or not pinned, from
/// [`EchoServer::start_unpinned`]).
#[derive(Debug)]
pub struct EchoServer {
    child: ChildProcess,
    /// Its service name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

impl EchoServer {
    /// Starts one with wait strategy `wait` (`busy`, `park`...) and waits until it answers.
    ///
    /// # Errors
    ///
    /// When it does not come up within 10 s.
    pub fn start(wait: &str) -> Result<EchoServer> {
        EchoServer::start_with(wait, false)
    }

    /// [`start`](Self::start), optionally trusting its clients (requests read in place instead of
    /// copied before validation).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn start_with(wait: &str, trusted_clients: bool) -> Result<EchoServer> {
        EchoServer::spawn(wait, trusted_clients, true)
    }

    /// [`start`](Self::start), with its worker left to the OS scheduler (`pin = false`).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn start_unpinned(wait: &str) -> Result<EchoServer> {
        EchoServer::spawn(wait, false, false)
    }

    fn spawn(wait: &str, trusted_clients: bool, pinned: bool) -> Result<EchoServer> {
        let name = format!(
            "bench-echo-{}-{trusted_clients}-{pinned}-{}",
            wait.replace(':', "_"),
            std::process::id()
        );
        let child = ChildProcess::spawn(
            "echo-server",
            &format!("{name},{wait},{trusted_clients},{pinned}"),
        )?;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match Client::connect(&name) {
                Ok(c) => {
                    let pid = server_pid(&c)?;
                    drop(c);
                    return Ok(EchoServer { child, name, pid });
                }
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => bail!("echo server did not come up: {e}"),
            }
        }
    }

    /// Stops it.
    ///
    /// # Errors
    ///
    /// When it did not exit cleanly.
    pub fn stop(self) -> Result<()> {
        // SAFETY: signals our own child; no memory involved.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        self.child.join()
    }
}

fn server_pid(c: &Client) -> Result<u32> {
    c.server_pid().ok_or_else(|| anyhow!("no server pid"))
}

fn serve(name: &str, wait: &str, trusted_clients: bool, pinned: bool) -> Result<()> {
    let mut cfg = ServerConfig::new(name, vec![ModelConfig::new("echo", "echo")]);
    cfg.trusted_clients = trusted_clients;
    cfg.wait = shm_runtime::config::parse_wait(wait).map_err(anyhow::Error::msg)?;
    if pinned {
        let cpus = crate::child::online_cpus();
        cfg.cores = vec![cpus[1 % cpus.len()]];
    } else {
        cfg.pin = false;
    }
    crate::child::serve_until_sigterm(cfg)
}

/// The round-trip request: 64 bytes of text to the echo model.
pub fn echo_request() -> Request {
    Request {
        id: 0,
        model: "echo".into(),
        task: Task::Generate,
        input: Input::Text("x".repeat(64)),
        params: Params::default(),
    }
}

/// Round trips through `server`, one at a time, waiting `pause` between them; client on the first
/// CPU with `wait`. Returns round-trip percentiles, ns.
///
/// # Errors
///
/// When a request fails.
pub fn round_trips(
    server: &EchoServer,
    wait: shm_runtime::ring::WaitStrategy,
    n: usize,
    pause: Option<Duration>,
) -> Result<Percentiles> {
    round_trips_from(server, wait, n, pause, Some(0))
}

/// [`round_trips`] from a client pinned to the `client_cpu`-th online CPU, or left to the OS
/// scheduler (`None`), as a client that does not pin itself is.
///
/// # Errors
///
/// When a request fails.
pub fn round_trips_from(
    server: &EchoServer,
    wait: shm_runtime::ring::WaitStrategy,
    n: usize,
    pause: Option<Duration>,
    client_cpu: Option<usize>,
) -> Result<Percentiles> {
    let client = Client::connect_with(
        &server.name,
        ClientOptions {
            wait,
            ..ClientOptions::default()
        },
    )?;
    let _pin = client_cpu.map(pin_to);
    let req = echo_request();
    let mut lat = Latencies::new();
    for i in 0..n + n / 10 {
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
        let t = Instant::now();
        let v = client.infer(&req)?;
        let ns = t.elapsed().as_nanos() as u64;
        if v.len() < 64 {
            bail!("short answer");
        }
        drop(v);
        if i >= n / 10 {
            lat.record(ns);
        }
    }
    Ok(lat.percentiles())
}

/// [`round_trips`] through the typed call: `Client::generate` of the same 64-character prompt
/// (the answer copied out as a `Generation`).
///
/// # Errors
///
/// When a request fails.
pub fn typed_round_trips(
    server: &EchoServer,
    wait: shm_runtime::ring::WaitStrategy,
    n: usize,
) -> Result<Percentiles> {
    let client = Client::connect_with(
        &server.name,
        ClientOptions {
            wait,
            ..ClientOptions::default()
        },
    )?;
    let _pin = pin_to(0);
    let prompt = "x".repeat(64);
    let opts = shm_runtime::GenerateOptions::default();
    let mut lat = Latencies::new();
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let g = client.generate("echo", &prompt, &opts)?;
        let ns = t.elapsed().as_nanos() as u64;
        if g.text.len() < 64 {
            bail!("short answer");
        }
        drop(g);
        if i >= n / 10 {
            lat.record(ns);
        }
    }
    Ok(lat.percentiles())
}

/// Requests per second from one client keeping up to `depth` in flight.
///
/// # Errors
///
/// When a request fails.
pub fn pipelined(server: &EchoServer, n: usize, depth: usize) -> Result<f64> {
    let client = Client::connect_with(
        &server.name,
        ClientOptions {
            wait: shm_runtime::ring::WaitStrategy::BusySpin,
            ..ClientOptions::default()
        },
    )?;
    let _pin = pin_to(0);
    let req = echo_request();
    let mut open = std::collections::VecDeque::new();
    let start = Instant::now();
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while sent < n && open.len() < depth {
            open.push_back(client.submit(&req)?);
            sent += 1;
        }
        let t = open.pop_front().expect("in flight");
        client.recv(t, Duration::from_secs(10))?;
        done += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// CPU time an idle server process uses over `window`, percent of one core.
///
/// # Errors
///
/// When /proc cannot be read.
pub fn idle_cpu_pct(pid: u32, window: Duration) -> Result<f64> {
    let ticks = || -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::thread::sleep(Duration::from_millis(200));
    let a = ticks()?;
    std::thread::sleep(window);
    let b = ticks()?;
    Ok((b - a) as f64 / hz / window.as_secs_f64() * 100.0)
}

#[repr(C, align(64))]
struct Buf([u8; 64 << 10]);

/// Median ns of full validation (bytecheck + semantic limits) of a request of `tokens` token ids.
///
/// # Errors
///
/// When the request does not validate.
pub fn validate_ns(tokens: usize) -> Result<f64> {
    let mut buf = Box::new(Buf([0; 64 << 10]));
    let req = Request {
        input: Input::Tokens((0..tokens as u32).collect()),
        ..echo_request()
    };
    let len = encode_into(&req, &mut buf.0)?;
    let limits = Limits::default();
    let bytes = &buf.0[..len];
    let mut per = Vec::new();
    for _ in 0..31 {
        let iters = 100_000;
        let t = Instant::now();
        for _ in 0..iters {
            let r = access_request(std::hint::black_box(bytes)).map_err(anyhow::Error::msg)?;
            check_request(r, &limits).map_err(anyhow::Error::msg)?;
            std::hint::black_box(r);
        }
        per.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    Ok(median(&mut per))
}

/// Median ns to copy `bytes` of a request chunk into a worker-private buffer: the server's copy
/// ([`Pool::copy_chunk`](shm_runtime::ring::pool::Pool::copy_chunk), one relaxed atomic load per
/// word) and, for comparison, a plain `memcpy` of the same bytes. Returns (copy, memcpy).
///
/// # Errors
///
/// When the pool cannot be made or lend a chunk that large.
pub fn request_copy_ns(bytes: usize) -> Result<(f64, f64)> {
    use shm_runtime::ring::pool::{Pool, PoolConfig};
    use shm_runtime::ring::Region;
    let config = PoolConfig::standard();
    let region = Region::heap(Pool::bytes_for(&config));
    Pool::init(&region, &config)?;
    let pool = Pool::attach(&region)?;
    let owner = pool.register_owner()?;
    let mut loan = pool.loan(owner, bytes)?;
    loan.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let src: Vec<u8> = loan.as_mut_slice()[..bytes].to_vec();
    let id = loan.into_id();
    let mut words = vec![0u128; bytes.div_ceil(16)];
    let iters = (1 << 26) / bytes.max(64);
    let (mut atomic, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..iters {
            let dst: &mut [u64] = bytemuck::cast_slice_mut(&mut words[..]);
            pool.copy_chunk(id, owner, &mut dst[..bytes.div_ceil(8)])?;
            std::hint::black_box(&mut words);
        }
        atomic.push(t.elapsed().as_nanos() as f64 / iters as f64);
        let t = Instant::now();
        for _ in 0..iters {
            let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut words[..]);
            dst[..bytes].copy_from_slice(std::hint::black_box(&src[..]));
            std::hint::black_box(&mut words);
        }
        plain.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    pool.release(id, owner)?;
    Ok((median(&mut atomic), median(&mut plain)))
}

/// Median ns to write a 200-token generation result (2000 bytes of text and 200 token ids) in place
/// into a chunk, the way a backend writes it: the text and the ids appended through
/// [`Out::generation`](shm_runtime::backend::writer::Out::generation), then the archive's root.
///
/// # Errors
///
/// When the buffer is too small.
pub fn result_create_ns() -> Result<f64> {
    let mut r = crate::seed_comparison::InPlaceResult::new();
    let mut per = Vec::new();
    for _ in 0..31 {
        let iters = 100_000;
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(r.create()?);
        }
        per.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    Ok(median(&mut per))
}

/// Millions of enqueue + dequeue pairs per second through a worker's scheduler (32 client slots,
/// jobs from 8 clients at 4 priority levels).
pub fn scheduler_mops() -> f64 {
    let mut s = crate::seed_comparison::OurScheduler::new();
    let mut per = Vec::new();
    for _ in 0..21 {
        let iters = 1_000_000u32;
        let t = Instant::now();
        for i in 0..iters {
            std::hint::black_box(s.pair(i));
        }
        per.push(iters as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    median(&mut per)
}

/// Runs the runtime child `role`; `Ok(false)` when the role is not one of this module's.
pub(crate) fn run_child(role: &str, arg: &str) -> Result<bool> {
    match role {
        "echo-server" => {
            let parts: Vec<&str> = arg.split(',').collect();
            let [name, wait, trusted_clients, pinned] = parts[..] else {
                bail!("echo-server wants NAME,WAIT,TRUSTED_CLIENTS,PINNED, got {arg:?}");
            };
            serve(name, wait, trusted_clients == "true", pinned == "true")?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
