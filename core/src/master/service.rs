//! The state the master keeps per service and per process (reference §2.1).
//!
//! Counters are kept, not recomputed, because every rule of §2 compares them on every event; the
//! invariants (core/src/master/invariants.rs) prove after every input that they equal what the
//! process table says.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::ids::{Generation, ListenerId, Pid, ProcessId, ProcessUid, ServiceId};
use crate::setup::ServiceConfig;
use crate::time::{Duration, Instant};

/// The throttle back-off a service starts with, and returns to after a clean exit (§2.4).
pub(crate) const THROTTLE_INITIAL: Duration = Duration::from_millis(2_000);

/// One service of one generation.
#[derive(Clone, Debug)]
pub(crate) struct Service {
    /// Its id.
    pub(crate) id: ServiceId,
    /// The generation it belongs to.
    pub(crate) generation: Generation,
    /// Its effective settings.
    pub(crate) config: ServiceConfig,
    /// Its listeners, in the order of `config.listeners`.
    pub(crate) listeners: Vec<ListenerId>,
    /// Processes of this service (with or without a pid yet).
    pub(crate) process_count: u32,
    /// Processes with available_count > 0.
    pub(crate) process_avail: u32,
    /// Processes with available_count == client_limit (no client at all).
    pub(crate) process_idling: u32,
    /// The lowest process_idling seen since the last idle-kill round (§2.6).
    pub(crate) idle_low_water: u32,
    /// Processes ever created.
    pub(crate) total_created: u64,
    /// The idle list: key = order of (re)appending, so the head has been idle longest.
    pub(crate) idle: IdleList,
    /// Every live process of the service, idle or busy. Hashed (never iterated in its own
    /// order), and changed only when a process comes or goes, not when it takes a client.
    pub(crate) members: FxHashSet<ProcessId>,
    /// The master watches the service's listeners.
    pub(crate) listening: bool,
    /// The limit was reached; connections wait (10 s) before they are dropped.
    pub(crate) listen_pending: bool,
    /// The next throttle duration.
    pub(crate) throttle_backoff: Duration,
    /// A child of this service ever exited with status 0.
    pub(crate) have_successful_exits: bool,
    /// The core second of the last failed exit.
    pub(crate) exit_failure_last: u64,
    /// Failed exits within that second.
    pub(crate) exit_failures_in_sec: u32,
    /// The core second of the last limit warning.
    pub(crate) last_drop_warning: Option<u64>,
    /// The published "all processes full" state (login services).
    pub(crate) login_full: bool,
    /// When SIGUSR1 was last sent to the service's processes for the login state.
    pub(crate) login_notify_sent: Option<Instant>,
    /// After a throttle, the service starts one process at a time until one of them sends its
    /// first status (a probe), so a still-broken program does not fork a crowd.
    pub(crate) probing: bool,
    /// Processes that have not sent their first status yet.
    pub(crate) uninitialised: u32,
}

impl Service {
    /// A service with no process yet.
    pub(crate) fn new(id: ServiceId, generation: Generation, config: ServiceConfig) -> Service {
        Service {
            id,
            generation,
            config,
            listeners: Vec::new(),
            process_count: 0,
            process_avail: 0,
            process_idling: 0,
            idle_low_water: 0,
            total_created: 0,
            idle: IdleList::default(),
            members: FxHashSet::default(),
            listening: false,
            listen_pending: false,
            throttle_backoff: THROTTLE_INITIAL,
            have_successful_exits: false,
            exit_failure_last: 0,
            exit_failures_in_sec: 0,
            last_drop_warning: None,
            login_full: false,
            login_notify_sent: None,
            probing: false,
            uninitialised: 0,
        }
    }

    /// The service's name, for notices.
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }
}

/// One process of a service.
#[derive(Clone, Debug)]
pub(crate) struct Process {
    /// Its id.
    pub(crate) id: ProcessId,
    /// Its service (anvil's process moves to the new generation's anvil at a reload).
    pub(crate) service: ServiceId,
    /// The uid it echoes in status records.
    pub(crate) uid: ProcessUid,
    /// Its pid, once the driver reported `Spawned`.
    pub(crate) pid: Option<Pid>,
    /// Free slots as last reported (client_limit at creation).
    pub(crate) available_count: u32,
    /// Approximate connections accepted so far.
    pub(crate) total_count: u64,
    /// Its key in the service's idle list while idle.
    pub(crate) idle_key: Option<u64>,
    /// When it last became idle.
    pub(crate) idle_start: Option<Instant>,
    /// When it last sent a valid status.
    pub(crate) last_status_update: Option<Instant>,
    /// When it was last sent an idle-kill SIGINT.
    pub(crate) last_kill_sent: Option<Instant>,
    /// It sent its first status (foreign processes count as initialised once spawned).
    pub(crate) initialised: bool,
    /// A login process that has been signalled to read the "all processes full" state since
    /// it started (§2.8): one that has not may believe the service is not full.
    pub(crate) told_login_state: bool,
}

/// The idle list of a service (§2.1): processes with every slot free, in the order they became
/// idle, each under a key the master hands out in increasing order.
///
/// A process leaves the list from anywhere (it took a client) and comes back at the tail, the
/// master's most frequent pair of operations; both are O(1) here whatever the list's length
/// (issue 8: an event costs the same at 100 and 10,000 processes). A key removed from the
/// middle stays in `order` until it reaches the head or the stale keys outnumber the live ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdleList {
    /// Keys in increasing order, some of them removed since.
    order: VecDeque<(u64, ProcessId)>,
    /// The live keys.
    live: FxHashMap<u64, ProcessId>,
}

impl IdleList {
    /// Appends `id` under `key`, which must be greater than every key appended before.
    pub(crate) fn insert(&mut self, key: u64, id: ProcessId) {
        debug_assert!(self.order.back().is_none_or(|&(last, _)| last < key));
        self.order.push_back((key, id));
        self.live.insert(key, id);
    }

    /// Removes the entry of `key`, if it is there.
    pub(crate) fn remove(&mut self, key: u64) {
        if self.live.remove(&key).is_none() {
            return;
        }
        while let Some(&(front, _)) = self.order.front() {
            if self.live.contains_key(&front) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.live.len() + 32 {
            let live = &self.live;
            self.order.retain(|(key, _)| live.contains_key(key));
        }
    }

    /// The process under `key`.
    pub(crate) fn get(&self, key: u64) -> Option<ProcessId> {
        self.live.get(&key).copied()
    }

    /// The head: the process idle longest.
    pub(crate) fn first(&self) -> Option<ProcessId> {
        // The head is kept live by `remove`.
        self.order.front().map(|&(_, id)| id)
    }

    /// How many processes are idle.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// The idle processes, head first.
    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = ProcessId> + '_ {
        self.order
            .iter()
            .filter(|(key, _)| self.live.contains_key(key))
            .map(|&(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The idle list behaves as the ordered map it replaces, whatever is removed from where.
        #[test]
        fn idle_list_is_an_ordered_map(ops in proptest::collection::vec((any::<bool>(), 0usize..64), 0..400)) {
            let mut list = IdleList::default();
            let mut model: BTreeMap<u64, ProcessId> = BTreeMap::new();
            let mut next_key = 0u64;
            for (append, pick) in ops {
                if append || model.is_empty() {
                    let id = ProcessId(pick as u64);
                    list.insert(next_key, id);
                    model.insert(next_key, id);
                    next_key += 1;
                } else {
                    let key = *model.keys().nth(pick % model.len()).expect("not empty");
                    model.remove(&key);
                    list.remove(key);
                    list.remove(key);
                }
                prop_assert_eq!(list.len(), model.len());
                prop_assert_eq!(list.first(), model.values().next().copied());
                prop_assert!(list.values().eq(model.values().copied()));
                for (&key, &id) in &model {
                    prop_assert_eq!(list.get(key), Some(id));
                }
                prop_assert!(list.order.len() <= 2 * list.live.len() + 33);
            }
        }
    }
}
