//! A client's connection: attaching to a service (a client slot, its rings, a pool owner),
//! the model table read at connect, the tickets it hands out, and leaving the slot on drop.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use shm_ring::pool::{ChunkId, Pool};
use shm_ring::process::ProcessToken;
use shm_ring::{mpmc, OpenError, Segment, SegmentOpenOptions};

use super::inbox::{Inbox, Pending};
use super::{Client, ClientOptions, Connection};
use crate::error::Error;
use crate::protocol::{Descriptor, DescriptorKind, DescriptorWords, PROTOCOL_VERSION};
use crate::service::{
    EjectReason, LayoutError, Service, CLIENT_ACTIVE, CLIENT_EJECTED, CLIENT_FREE, SEGMENT_MODE,
};

fn open_error(name: &str, e: OpenError) -> Error {
    match e {
        OpenError::NotFound(_) | OpenError::CreatorGone(_) | OpenError::NotInitialised(_) => {
            Error::ServiceNotFound(name.to_owned())
        }
        OpenError::VersionMismatch {
            found, expected, ..
        } => Error::VersionMismatch { found, expected },
        other => Error::Attach(other.to_string()),
    }
}

impl Client {
    /// Attaches to the service `name` with default options.
    ///
    /// # Errors
    ///
    /// [`Error::ServiceNotFound`], [`Error::VersionMismatch`], [`Error::Attach`], or
    /// [`Error::Busy`] when every client slot is taken.
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-connect-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// use shm_runtime::{Client, Error};
    ///
    /// let client = Client::connect(&name)?;
    /// assert_eq!(client.models(), ["echo"]);
    /// assert!(matches!(Client::connect("no-such-service"), Err(Error::ServiceNotFound(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(name: &str) -> Result<Client, Error> {
        Client::connect_with(name, ClientOptions::default())
    }

    /// Attaches to the service `name`.
    ///
    /// # Errors
    ///
    /// As for [`connect`](Self::connect).
    ///
    /// # Examples
    ///
    /// ```
    /// # let name = format!("doc-connect-with-{}", std::process::id());
    /// # let models = vec![shm_runtime::ModelConfig::new("echo", "echo")];
    /// # let _server = shm_runtime::Server::start(shm_runtime::ServerConfig::new(&name, models))?;
    /// use shm_runtime::ring::WaitStrategy;
    /// use shm_runtime::{Client, ClientOptions, GenerateOptions};
    ///
    /// // Spin while waiting for answers: the lowest latency, a core busy while waiting.
    /// let options = ClientOptions { wait: WaitStrategy::BusySpin, ..ClientOptions::default() };
    /// let client = Client::connect_with(&name, options)?;
    /// assert_eq!(client.generate("echo", "fast", &GenerateOptions::default())?.text, "fast");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_with(name: &str, options: ClientOptions) -> Result<Client, Error> {
        let opts = SegmentOpenOptions {
            user_version: Some(PROTOCOL_VERSION),
            allowed_mode: SEGMENT_MODE,
            ..SegmentOpenOptions::default()
        };
        let seg = Segment::open_with(name, &opts).map_err(|e| open_error(name, e))?;
        let svc = Service::attach(Arc::new(seg)).map_err(|e| match e {
            LayoutError::NotReady => Error::ServiceNotFound(name.to_owned()),
            LayoutError::Version { found, expected } => Error::VersionMismatch { found, expected },
            other => Error::Attach(other.to_string()),
        })?;
        let pool = Pool::attach(&svc.pool_region()).map_err(|e| Error::Attach(e.to_string()))?;
        let owner = pool
            .register_owner()
            .map_err(|e| Error::Busy(format!("no pool owner entry free: {e}")))?;
        let me = ProcessToken::current().raw();
        let slot = (0..svc.layout.max_clients).find(|&c| {
            svc.client(c)
                .token
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        let Some(slot) = slot else {
            pool.unregister_owner(owner);
            return Err(Error::Busy(format!(
                "all {} client slots of the service are taken",
                svc.layout.max_clients
            )));
        };
        let e = svc.client(slot);
        let setup = || -> Result<(Vec<mpmc::Producer<DescriptorWords>>, mpmc::Consumer<DescriptorWords>), Error> {
            let responses = mpmc::Consumer::attach(&svc.response_ring(slot))
                .map_err(|e| Error::Attach(e.to_string()))?;
            let requests = (0..svc.layout.lanes)
                .map(|l| mpmc::Producer::attach(&svc.request_ring(slot, l)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Attach(e.to_string()))?;
            Ok((requests, responses))
        };
        let (requests, responses) = match setup() {
            Ok(v) => v,
            Err(err) => {
                e.token.store(0, Ordering::Release);
                pool.unregister_owner(owner);
                return Err(err);
            }
        };
        // A previous holder of this slot that wrote impossible indices into its rings (and was
        // disconnected for it) leaves them so: start this connection on working rings.
        if !responses.looks_consistent() {
            responses.reset();
        }
        for ring in requests.iter().filter(|r| !r.looks_consistent()) {
            ring.reset();
        }
        // A previous holder of this slot killed while parked on its response ring would leave a
        // waiter counted for ever (every answer would then cost a wake syscall): nobody waits on
        // it now, so forget them.
        let _ = responses.clear_parked_consumers();
        // Answers left for a previous holder of this slot: return their chunks.
        while let Ok(d) = responses.pop() {
            match Descriptor::from_words(d) {
                Some(d) if matches!(d.kind, DescriptorKind::Partial | DescriptorKind::Final) => {
                    let _ = pool.release(ChunkId::from_raw(d.chunk), owner);
                }
                _ => {}
            }
        }
        e.owner.store(owner.get(), Ordering::Relaxed);
        e.inflight.store(0, Ordering::Relaxed);
        // The slot's counters describe its current holder.
        e.requests.store(0, Ordering::Relaxed);
        e.errors.store(0, Ordering::Relaxed);
        let epoch = e.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        // SYNC(state): Release publishes owner and epoch to workers' Acquire in sync_clients.
        e.state.store(CLIENT_ACTIVE, Ordering::Release);
        svc.header().active.fetch_or(1u64 << slot, Ordering::AcqRel);
        // SYNC(clients_gen): AcqRel after the state and mask: a worker that loads the new value
        // (Acquire) sees this slot active.
        svc.header().clients_gen.fetch_add(1, Ordering::AcqRel);
        let models = svc.models();
        Ok(Client {
            conn: Arc::new(Connection {
                models,
                svc,
                pool,
                owner,
                slot,
                epoch,
                requests,
                responses,
                inbox: Mutex::new(Inbox::default()),
                arrived: Condvar::new(),
                next_ticket: AtomicU32::new(1),
                next_request: std::sync::atomic::AtomicU64::new(1),
                options,
                server_gone: std::sync::atomic::AtomicBool::new(false),
                strays: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// A request id for a typed call (answers carry it back, checked on arrival).
    pub(super) fn next_request_id(&self) -> u64 {
        self.conn.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// The models the service serves.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shm_runtime::{ModelConfig, Server, ServerConfig};
    /// # let name = format!("doc-models-{}", std::process::id());
    /// # let models = vec![ModelConfig::new("echo", "echo"), ModelConfig::new("slow", "sleep")];
    /// # let _server = Server::start(ServerConfig::new(&name, models))?;
    /// use shm_runtime::Client;
    ///
    /// let client = Client::connect(&name)?;
    /// assert_eq!(client.models(), ["echo", "slow"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn models(&self) -> Vec<String> {
        self.conn.models.iter().map(|(n, _, _)| n.clone()).collect()
    }
}

impl Connection {
    /// Takes the next free ticket for `pending`. Tickets wrap (2^24 per connection): those still
    /// taken are skipped, so that an answer is never filed under a request it is not for (fewer
    /// tickets are taken than there are).
    pub(super) fn take_ticket(&self, pending: Pending) -> u32 {
        let mut inbox = self.inbox();
        let ticket = loop {
            let seq = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            let t = crate::protocol::ticket(self.epoch, seq);
            if !inbox.pending.contains_key(&t) {
                break t;
            }
        };
        inbox.pending.insert(ticket, pending);
        ticket
    }

    /// [`Error::Disconnected`] when the server has disconnected this connection.
    pub(super) fn check_connected(&self) -> Result<(), Error> {
        let e = self.svc.client(self.slot);
        // SYNC(state): Acquire pairs with the server's Release when it ejects, so the reason is
        // there.
        if e.state.load(Ordering::Acquire) != CLIENT_EJECTED
            || e.epoch.load(Ordering::Acquire) != self.epoch
        {
            return Ok(());
        }
        let why = EjectReason::from_u32(e.ejected.load(Ordering::Acquire))
            .map_or_else(|| "no reason given".to_owned(), |r| r.to_string());
        Err(Error::Disconnected(why))
    }

    pub(super) fn find_model(&self, name: &str) -> Option<(usize, u32)> {
        self.models
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, lane, tasks)| (*lane, *tasks))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let e = self.svc.client(self.slot);
        let me = ProcessToken::current().raw();
        if e.epoch.load(Ordering::Acquire) == self.epoch && e.token.load(Ordering::Acquire) == me {
            e.state.store(CLIENT_FREE, Ordering::Release);
            self.svc
                .header()
                .active
                .fetch_and(!(1u64 << self.slot), Ordering::AcqRel);
            self.svc.header().clients_gen.fetch_add(1, Ordering::AcqRel);
            // Answers still on the ring are ours: return them with the rest of our chunks.
            self.pool.unregister_owner(self.owner);
            let _ = e
                .token
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}
