//! Which CPU each worker thread is pinned to: the configuration's `cores` in turn, the automatic
//! rule of [`ServerConfig::pin`], or none.

use shm_ring::WaitStrategy;

use crate::config::ServerConfig;

/// Where the workers run, decided once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The CPU of each worker, in the order the workers start (lane by lane); `None` leaves the
    /// worker to the OS scheduler.
    pub(crate) cpus: Vec<Option<usize>>,
    /// Why: a phrase for the start log.
    pub(crate) reason: &'static str,
}

/// The placement of the workers under `config`: `threads[k]` is how many threads a run of worker
/// `k` keeps busy ([`Backend::threads`](crate::backend::Backend::threads)), in start order; the
/// process may run on the `allowed` CPUs (in increasing order).
pub(crate) fn place(config: &ServerConfig, threads: &[usize], allowed: &[usize]) -> Placement {
    let workers = threads.len();
    if !config.pin {
        return Placement {
            cpus: vec![None; workers],
            reason: "pinning turned off",
        };
    }
    if !config.cores.is_empty() {
        return Placement {
            cpus: (0..workers)
                .map(|k| Some(config.cores[k % config.cores.len()]))
                .collect(),
            reason: "the configured cores",
        };
    }
    // The automatic rule: a CPU for every thread the workers keep busy, and at least one more
    // left to clients and everything else; two more for workers that busy-poll, which never give
    // their CPU up. Then each single-threaded worker gets a CPU of its own, after the first.
    let (left, refusal) = if config.wait == WaitStrategy::BusySpin {
        (
            2,
            "busy-polling workers are pinned only with two CPUs left to clients",
        )
    } else {
        (1, "no CPU would be left to clients")
    };
    let busy: usize = threads.iter().map(|&t| t.max(1)).sum();
    if allowed.len() < busy + left {
        return Placement {
            cpus: vec![None; workers],
            reason: refusal,
        };
    }
    let mut free = allowed[1..].iter().copied();
    let cpus: Vec<Option<usize>> = threads
        .iter()
        .map(|&t| if t <= 1 { free.next() } else { None })
        .collect();
    Placement {
        reason: if cpus.iter().all(Option::is_some) {
            "one CPU each, the first CPU left to clients"
        } else {
            "one CPU each, the first CPU left to clients; workers whose backend runs several \
             threads are not pinned"
        },
        cpus,
    }
}

/// The CPUs the calling thread may run on (its affinity mask), in increasing order; empty when
/// it cannot be read.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cpus.sort_unstable();
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn config() -> ServerConfig {
        ServerConfig::new("pinning", vec![ModelConfig::new("echo", "echo")])
    }

    #[test]
    fn the_automatic_rule_pins_only_with_a_cpu_left_to_clients() {
        let c = config();
        // One worker on two CPUs: pinned to the second, the first left to clients.
        assert_eq!(place(&c, &[1], &[0, 1]).cpus, vec![Some(1)]);
        assert_eq!(
            place(&c, &[1, 1], &[4, 5, 6, 7]).cpus,
            vec![Some(5), Some(6)]
        );
        // As many workers as CPUs (or more): none pinned, as none could avoid a client.
        assert_eq!(place(&c, &[1, 1], &[0, 1]).cpus, vec![None, None]);
        assert_eq!(place(&c, &[1, 1, 1], &[0, 1]).cpus, vec![None; 3]);
        assert_eq!(place(&c, &[1], &[3]).cpus, vec![None]);
        // An unreadable mask pins nothing.
        assert_eq!(place(&c, &[1], &[]).cpus, vec![None]);
    }

    #[test]
    fn a_worker_whose_backend_runs_several_threads_is_not_pinned_and_its_threads_count() {
        let c = config();
        // Two llama.cpp threads on two CPUs: nothing left to clients, nothing pinned.
        assert_eq!(place(&c, &[2], &[0, 1]).cpus, vec![None]);
        // Enough CPUs: the single-threaded worker is pinned, the other left to the scheduler.
        assert_eq!(place(&c, &[1, 2], &[0, 1, 2, 3]).cpus, vec![Some(1), None]);
        assert_eq!(place(&c, &[2, 1], &[0, 1, 2, 3]).cpus, vec![None, Some(1)]);
        assert_eq!(place(&c, &[1, 2], &[0, 1, 2]).cpus, vec![None, None]);
    }

    #[test]
    fn busy_polling_workers_are_pinned_only_with_two_cpus_left_to_clients() {
        let mut c = config();
        c.wait = WaitStrategy::BusySpin;
        assert_eq!(place(&c, &[1], &[0, 1]).cpus, vec![None]);
        assert_eq!(place(&c, &[1, 1], &[0, 1, 2]).cpus, vec![None, None]);
        assert_eq!(place(&c, &[1], &[0, 1, 2]).cpus, vec![Some(1)]);
        assert_eq!(
            place(&c, &[1, 1], &[0, 1, 2, 3]).cpus,
            vec![Some(1), Some(2)]
        );
        // Yielding workers give their CPU up: the rule of parking ones.
        c.wait = WaitStrategy::Yield;
        assert_eq!(place(&c, &[1], &[0, 1]).cpus, vec![Some(1)]);
    }

    #[test]
    fn configured_cores_override_and_pin_false_turns_pinning_off() {
        let mut c = config();
        c.cores = vec![3];
        assert_eq!(place(&c, &[1, 2], &[0, 1]).cpus, vec![Some(3), Some(3)]);
        c.pin = false;
        assert_eq!(place(&c, &[1, 1], &[0, 1, 2, 3]).cpus, vec![None, None]);
        c.cores.clear();
        assert_eq!(place(&c, &[1], &[0, 1, 2, 3]).cpus, vec![None]);
    }
}
