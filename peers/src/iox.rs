//! iceoryx2 peer: its request-response messaging pattern (`ipc` service) with a 64-byte POD
//! ([`Pod64`]) both ways, the echo server in a child process.
//!
//! Two ways of waiting ([`IceoryxWait`]): both sides busy-poll (`Busy`, the fastest configuration
//! and the one compared with `shm_busy`), or both sides block on iceoryx2 event services next to the
//! request-response service (`Event`: the client notifies after sending its request, the server after
//! sending its response; iceoryx2's request-response itself has no waiting built in).
//!
//! Every run gets its own iceoryx2 root directory and file prefix (process id and a counter), and
//! both are removed when the client drops, also after a server that had to be killed.

use std::hint::spin_loop;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use iceoryx2::port::client::Client;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::server::Server;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::event::PortFactory as EventFactory;
use iceoryx2::service::port_factory::request_response::PortFactory as RrFactory;

use super::{measure, reap, unique, wait_up, Pod64, RoundTrip, PATIENCE};
use crate::process::{pin_to, ChildProcess};
use crate::stats::Percentiles;

/// The request id that tells the server to answer and exit.
const STOP: u64 = u64::MAX;

/// How both sides of the iceoryx2 peer wait for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceoryxWait {
    /// Both sides busy-poll (`Server::receive`, `PendingResponse::receive`).
    Busy,
    /// Both sides block on an iceoryx2 event listener; each message is followed by a notification.
    Event,
}

impl IceoryxWait {
    fn name(self) -> &'static str {
        match self {
            IceoryxWait::Busy => "busy",
            IceoryxWait::Event => "event",
        }
    }
}

/// Where one run keeps its iceoryx2 files: a root directory of its own and a file prefix of its own
/// (iceoryx2 puts its shared memory in `/dev/shm` under the prefix). Removes both when dropped.
#[derive(Debug)]
struct RunFiles {
    root: PathBuf,
    prefix: String,
}

impl RunFiles {
    fn new() -> RunFiles {
        let id = unique("iox2");
        RunFiles {
            root: std::env::temp_dir().join(format!("shm-bench-{id}")),
            prefix: format!("sb{}_", id.replace('-', "")),
        }
    }

    fn from_parts(root: &str, prefix: &str) -> RunFiles {
        RunFiles {
            root: PathBuf::from(root),
            prefix: prefix.to_owned(),
        }
    }

    fn config(&self) -> Result<Config> {
        let mut config = Config::default();
        let root = self
            .root
            .to_str()
            .context("temporary directory is not UTF-8")?;
        config
            .global
            .set_root_path(&Path::new(format!("{root}/").as_bytes())?);
        config.global.prefix = FileName::new(self.prefix.as_bytes())?;
        Ok(config)
    }

    fn node(&self) -> Result<Node<ipc::Service>> {
        Ok(NodeBuilder::new()
            .config(&self.config()?)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()?)
    }

    /// Removes what a run left behind (nothing, when every node dropped normally).
    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for entry in dir.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&self.prefix)
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// The services of one run, opened or created by either side with the same settings.
struct Services {
    rr: RrFactory<ipc::Service, Pod64, (), Pod64, ()>,
    requests: EventFactory<ipc::Service>,
    responses: EventFactory<ipc::Service>,
}

impl Services {
    fn open(node: &Node<ipc::Service>, name: &str) -> Result<Services> {
        let service = |suffix: &str| -> Result<ServiceName> {
            ServiceName::new(&format!("{name}/{suffix}"))
                .map_err(|e| anyhow!("service name {name}/{suffix}: {e}"))
        };
        Ok(Services {
            rr: node
                .service_builder(&service("rr")?)
                .request_response::<Pod64, Pod64>()
                .open_or_create()?,
            requests: node
                .service_builder(&service("requests")?)
                .event()
                .open_or_create()?,
            responses: node
                .service_builder(&service("responses")?)
                .event()
                .open_or_create()?,
        })
    }
}

/// An iceoryx2 request-response client of an echo server in a child process.
///
/// Dropping it kills the server if it is still running, reaps it, drops the client's ports and node
/// and removes the run's files; [`close`](Self::close) asks the server to exit first.
pub struct IceoryxClient {
    wait: IceoryxWait,
    client: Client<ipc::Service, Pod64, (), Pod64, ()>,
    notifier: Notifier<ipc::Service>,
    listener: Listener<ipc::Service>,
    /// The node the ports belong to, dropped after them.
    _node: Node<ipc::Service>,
    msg: Pod64,
    child: Option<ChildProcess>,
    files: RunFiles,
}

impl std::fmt::Debug for IceoryxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceoryxClient")
            .field("wait", &self.wait)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl IceoryxClient {
    /// Starts the server (a child process pinned to the second CPU) waiting in `wait`'s way, and a
    /// client that waits the same way; returns once the server's ports are up.
    ///
    /// # Errors
    ///
    /// When iceoryx2 fails or the server does not come up within 30 s.
    pub fn start(wait: IceoryxWait) -> Result<IceoryxClient> {
        let files = RunFiles::new();
        let service = unique("shm-bench/echo");
        let mut child = ChildProcess::spawn(
            "peer-iceoryx2-server",
            &format!(
                "{},{},{service},{}",
                files.root.display(),
                files.prefix,
                wait.name()
            ),
        )?;
        let ports = (|| -> Result<_> {
            let node = files.node()?;
            // Let the server create the services, so the two sides do not race to create them.
            let services = wait_up(&mut child, "iceoryx2 server", || {
                Services::open(&node, &service).ok().filter(|s| {
                    s.rr.dynamic_config().number_of_servers() > 0
                        && s.requests.dynamic_config().number_of_listeners() > 0
                })
            })?;
            let client = services.rr.client_builder().create()?;
            let notifier = services.requests.notifier_builder().create()?;
            let listener = services.responses.listener_builder().create()?;
            Ok((client, notifier, listener, node))
        })();
        // On failure `child` drops (killed, reaped) before `files` (removed).
        let (client, notifier, listener, node) = ports?;
        Ok(IceoryxClient {
            wait,
            client,
            notifier,
            listener,
            _node: node,
            msg: Pod64::echo(0),
            child: Some(child),
            files,
        })
    }

    /// Sends `msg` and waits for its answer.
    fn exchange(&self, msg: Pod64) -> Result<Pod64> {
        let pending = self.client.loan_uninit()?.write_payload(msg).send()?;
        match self.wait {
            IceoryxWait::Busy => {
                let mut spins = 0u32;
                let mut deadline = None;
                loop {
                    if let Some(r) = pending.receive()? {
                        return Ok(*r);
                    }
                    spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins % (1 << 16) == 0 {
                        let d = *deadline.get_or_insert_with(|| Instant::now() + PATIENCE);
                        ensure!(Instant::now() < d, "iceoryx2 server stopped answering");
                    }
                }
            }
            IceoryxWait::Event => {
                self.notifier.notify()?;
                let deadline = Instant::now() + PATIENCE;
                loop {
                    if let Some(r) = pending.receive()? {
                        return Ok(*r);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    ensure!(!left.is_zero(), "iceoryx2 server stopped answering");
                    self.listener.timed_wait(|_| {}, left)?;
                }
            }
        }
    }

    /// Asks the server to exit and waits until it has.
    ///
    /// # Errors
    ///
    /// When the request fails or the server failed or did not exit within 30 s.
    pub fn close(mut self) -> Result<()> {
        let stop = Pod64 {
            id: STOP,
            ..self.msg
        };
        let answered = self.exchange(stop);
        let child = self.child.take();
        answered?;
        match child {
            Some(child) => reap(child, "iceoryx2 server"),
            None => Ok(()),
        }
    }
}

impl RoundTrip for IceoryxClient {
    fn round_trip(&mut self) -> Result<()> {
        self.msg.id += 1;
        let back = self.exchange(self.msg)?;
        ensure!(
            back == self.msg,
            "echo returned {} for {}",
            back.id,
            self.msg.id
        );
        Ok(())
    }
}

impl Drop for IceoryxClient {
    fn drop(&mut self) {
        // The server goes first; the client's ports and node drop after this, then `files` (the
        // last field) removes whatever is left.
        drop(self.child.take());
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Round trips of a 64-byte POD through iceoryx2 request-response to an echo server in a child
/// process, both sides busy-polling (client on the first CPU, server on the second). Warms up with
/// `rounds / 10 + 100` round trips, then records `rounds`. Returns round-trip percentiles, ns.
///
/// # Errors
///
/// When iceoryx2 fails, the server cannot be started, a round trip fails or the server does not
/// exit cleanly.
pub fn iceoryx2(rounds: u64) -> Result<Percentiles> {
    iceoryx2_with(IceoryxWait::Busy, rounds)
}

/// [`iceoryx2()`] with both sides waiting in `wait`'s way.
///
/// # Errors
///
/// As for [`iceoryx2()`].
pub fn iceoryx2_with(wait: IceoryxWait, rounds: u64) -> Result<Percentiles> {
    let mut client = IceoryxClient::start(wait)?;
    let p = measure(&mut client, rounds)?;
    client.close()?;
    Ok(p)
}

/// The server child: `arg` is `ROOT,PREFIX,SERVICE,WAIT`. Answers every request with its payload
/// until the request with id [`STOP`], or until the parent process is gone.
pub(super) fn serve(arg: &str) -> Result<()> {
    let parts: Vec<&str> = arg.split(',').collect();
    let [root, prefix, service, wait] = parts[..] else {
        bail!("peer-iceoryx2-server wants ROOT,PREFIX,SERVICE,WAIT, got {arg:?}");
    };
    let event = match wait {
        "busy" => false,
        "event" => true,
        other => bail!("unknown iceoryx2 wait {other:?}"),
    };
    let _pin = pin_to(1);
    // SAFETY: getppid has no memory effects.
    let parent = unsafe { libc::getppid() };
    // SAFETY: as above.
    let orphaned = || unsafe { libc::getppid() } != parent;
    // The parent removes the files; this side must not remove them under it.
    let files = std::mem::ManuallyDrop::new(RunFiles::from_parts(root, prefix));
    let node = files.node()?;
    let services = Services::open(&node, service)?;
    let server: Server<ipc::Service, Pod64, (), Pod64, ()> =
        services.rr.server_builder().create()?;
    let notifier = services.responses.notifier_builder().create()?;
    let listener = services.requests.listener_builder().create()?;
    let mut spins = 0u32;
    loop {
        if let Some(request) = server.receive()? {
            let msg = *request;
            request.loan_uninit()?.write_payload(msg).send()?;
            drop(request);
            if event {
                notifier.notify()?;
            }
            if msg.id == STOP {
                return Ok(());
            }
            continue;
        }
        if event {
            listener.timed_wait(|_| {}, Duration::from_millis(100))?;
            if orphaned() {
                bail!("the parent process is gone");
            }
        } else {
            spin_loop();
            spins = spins.wrapping_add(1);
            if spins % (1 << 16) == 0 && orphaned() {
                bail!("the parent process is gone");
            }
        }
    }
}
