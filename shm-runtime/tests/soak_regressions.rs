//! Failures the chaos soak (`cargo run --release -p shm-bench --bin soak`) found, each reproduced
//! deterministically in one process.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shm_runtime::ring::ProcessToken;
use shm_runtime::testing::{Service, CLIENT_ACTIVE};
use shm_runtime::{Client, ModelConfig, Server, ServerConfig};
use shm_test_support::runtime::{generate, generated_text, sleep_model, RequestExt};
use shm_test_support::{unique_name, wait_for};

/// A client killed and restarted at once: the new process registers its pool owner (taking over
/// the dead one's entry, the first free) before the housekeeper has reaped the dead client's slot,
/// which still names that owner id. Reaping the slot used to reclaim every chunk of that owner id,
/// taking the new process's requests and answers from under it (its requests were refused as
/// "not held", its answers unreadable).
#[test]
fn reaping_a_dead_client_spares_the_owner_entry_a_new_process_took_over() {
    let service = unique_name("owner");
    let _server = Server::start(ServerConfig::new(
        &service,
        vec![ModelConfig::new("echo", "echo")],
    ))
    .unwrap();
    let client = Client::connect(&service).unwrap();
    let held = client
        .infer(&generate("echo", "held").with_id(1).with_max_tokens(16))
        .unwrap();
    let free = client.pool_free();
    let svc = Service::open(&service).unwrap();
    let me = ProcessToken::current().raw();
    let slots = 0..svc.layout.max_clients;
    let mine = slots
        .clone()
        .find(|&c| svc.client(c).token.load(Ordering::Acquire) == me)
        .unwrap();
    let ghost = slots
        .clone()
        .find(|&c| svc.client(c).token.load(Ordering::Acquire) == 0)
        .unwrap();
    // The dead client's slot: its token (a process that does not exist) and the owner id that
    // the live client now holds.
    let dead = (u64::from(u32::MAX - 1) << 32) | 99;
    let e = svc.client(ghost);
    e.owner.store(
        svc.client(mine).owner.load(Ordering::Acquire),
        Ordering::Relaxed,
    );
    e.state.store(CLIENT_ACTIVE, Ordering::Release);
    e.token.store(dead, Ordering::Release);
    wait_for(
        "the housekeeper to reap the dead slot",
        Duration::from_secs(5),
        || svc.client(ghost).token.load(Ordering::Acquire) == 0,
    );
    // The live client's chunks are still its own.
    assert_eq!(generated_text(&held), "held");
    assert_eq!(client.pool_free(), free);
    drop(held);
    let v = client
        .infer(&generate("echo", "after").with_id(2).with_max_tokens(16))
        .unwrap();
    assert_eq!(generated_text(&v), "after");
}

/// A worker running a job takes in new descriptors (cancels, most of all) without re-reading the
/// client table. A client slot that changed hands meanwhile (one client left, another connected
/// into the same slot and got the same pool owner id) used to have its new holder's request taken
/// under the departed holder's epoch, then dropped as the departed client's: never answered.
#[test]
fn a_slot_reconnected_while_the_worker_runs_a_job_is_served_under_its_new_holder() {
    let service = unique_name("handover");
    let slow = sleep_model("slow", 1.0);
    let _server = Server::start(ServerConfig::new(&service, vec![slow])).unwrap();
    let svc = Service::open(&service).unwrap();
    let me = ProcessToken::current().raw();
    let first = Client::connect(&service).unwrap();
    let slot = (0..svc.layout.max_clients)
        .find(|&c| svc.client(c).token.load(Ordering::Acquire) == me)
        .expect("the first client's slot");
    let first_epoch = svc.client(slot).epoch.load(Ordering::Acquire);
    let busy = Client::connect(&service).unwrap();
    // The lane's worker knows both connections.
    first
        .infer(&generate("slow", "x").with_id(1).with_max_tokens(1))
        .unwrap();
    busy.infer(&generate("slow", "x").with_id(2).with_max_tokens(1))
        .unwrap();
    // `busy` keeps the lane's only worker running for a second or more.
    let long = busy
        .submit(&generate("slow", "x").with_id(3).with_max_tokens(1000))
        .unwrap();
    wait_for("the long job to run", Duration::from_secs(10), || {
        svc.lane(0).running() == 1
    });
    // The first holder leaves with requests queued in its ring, behind the running job.
    for id in 10..13 {
        first
            .submit(&generate("slow", "first's").with_id(id).with_max_tokens(1))
            .unwrap();
    }
    drop(first);
    let second = Client::connect(&service).unwrap();
    let e = svc.client(slot);
    assert_eq!(e.token.load(Ordering::Acquire), me, "the slot is reused");
    assert_ne!(
        e.epoch.load(Ordering::Acquire),
        first_epoch,
        "under a new epoch"
    );
    // Its tickets repeat the first holder's sequence numbers: only the epoch tells them apart.
    let mine: Vec<_> = (20..23)
        .map(|id| {
            (
                id,
                second
                    .submit(&generate("slow", "second's").with_id(id).with_max_tokens(1))
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(svc.lane(0).running(), 1, "the long job still runs");
    for (id, t) in mine {
        // The client checks the answer's request id against the ticket's.
        let v = second
            .recv(t, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("request {id} of the new holder: {e}"));
        assert!(v.is_final());
        assert_eq!(v.response().unwrap().id, id);
        assert_eq!(generated_text(&v), "t0 ");
    }
    let v = busy.recv(long, Duration::from_secs(10)).unwrap();
    assert!(v.is_final());
    assert_eq!(second.stray_answers() + busy.stray_answers(), 0);
}
