//! The state the master keeps per service and per process (reference §2.1).
//!
//! Counters are kept, not recomputed, because every rule of §2 compares them on every event; the
//! invariants (core/src/master/invariants.rs) prove after every input that they equal what the
//! process table says.

use std::collections::VecDeque;
use std::fmt;

use rustc_hash::FxHashSet;

use super::table::Slot;
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
    /// The idle list, in the order of (re)appending, so the head has been idle longest.
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
///
/// Every status record reads and writes this record, at a process the cache has usually not
/// seen lately, so it is packed into one cache line (issue 8): the fields that may be absent
/// keep their presence in one byte of flags instead of an `Option` each, and are read and
/// written only through the methods below, which keep value and flag together.
#[derive(Clone)]
#[repr(align(64))]
pub(crate) struct Process {
    /// Its id.
    pub(crate) id: ProcessId,
    /// Approximate connections accepted so far.
    pub(crate) total_count: u64,
    /// When it last became idle (with [`Present::IDLE`]).
    idle_start: Instant,
    /// When it last sent a valid status (with [`Present::STATUS`]).
    last_status_update: Instant,
    /// When it was last sent an idle-kill SIGINT (with [`Present::KILL`]).
    last_kill_sent: Instant,
    /// Its service (anvil's process moves to the new generation's anvil at a reload).
    pub(crate) service: ServiceId,
    /// The uid it echoes in status records.
    pub(crate) uid: ProcessUid,
    /// Free slots as last reported (client_limit at creation).
    pub(crate) available_count: u32,
    /// Its key in the service's idle list (with [`Present::IDLE`]).
    idle_key: IdleKey,
    /// Its pid, once the driver reported `Spawned` (with [`Present::PID`]).
    pid: Pid,
    /// It sent its first status (foreign processes count as initialised once spawned).
    pub(crate) initialised: bool,
    /// A login process that has been signalled to read the "all processes full" state since
    /// it started (§2.8): one that has not may believe the service is not full.
    pub(crate) told_login_state: bool,
    /// Which of the fields above that may be absent are present.
    present: Present,
}

// One line per record; the bools leave `Option<Process>` (a table slot) a niche to use.
const _: () = assert!(std::mem::size_of::<Option<Process>>() == 64);

/// The optional fields of a [`Process`] that hold a value, one bit each.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct Present(u8);

impl Present {
    const PID: u8 = 1;
    /// The idle key and the idle start, which come and go together.
    const IDLE: u8 = 2;
    const STATUS: u8 = 4;
    const KILL: u8 = 8;

    fn has(self, field: u8) -> bool {
        self.0 & field != 0
    }

    fn set(&mut self, field: u8, on: bool) {
        if on {
            self.0 |= field;
        } else {
            self.0 &= !field;
        }
    }
}

impl Process {
    /// A process just decided on: no pid yet, every slot free, not yet in the idle list.
    pub(crate) fn new(
        id: ProcessId,
        service: ServiceId,
        uid: ProcessUid,
        client_limit: u32,
    ) -> Process {
        Process {
            id,
            total_count: 0,
            idle_start: Instant::ZERO,
            last_status_update: Instant::ZERO,
            last_kill_sent: Instant::ZERO,
            service,
            uid,
            available_count: client_limit,
            idle_key: IdleKey(0),
            pid: Pid(0),
            initialised: false,
            told_login_state: false,
            present: Present::default(),
        }
    }

    /// Its pid, once the driver reported `Spawned`.
    pub(crate) fn pid(&self) -> Option<Pid> {
        self.present.has(Present::PID).then_some(self.pid)
    }

    pub(crate) fn set_pid(&mut self, pid: Option<Pid>) {
        self.present.set(Present::PID, pid.is_some());
        self.pid = pid.unwrap_or(Pid(0));
    }

    /// Its key in the service's idle list while idle.
    pub(crate) fn idle_key(&self) -> Option<IdleKey> {
        self.present.has(Present::IDLE).then_some(self.idle_key)
    }

    /// When it last became idle, while idle.
    pub(crate) fn idle_start(&self) -> Option<Instant> {
        self.present.has(Present::IDLE).then_some(self.idle_start)
    }

    /// Lists it as idle since `since` under `key`, or (`None`) as busy.
    pub(crate) fn set_idle(&mut self, idle: Option<(IdleKey, Instant)>) {
        self.present.set(Present::IDLE, idle.is_some());
        if let Some((key, since)) = idle {
            self.idle_key = key;
            self.idle_start = since;
        }
    }

    /// Its idle list gave it a new key (when it closed its gaps).
    pub(crate) fn move_idle_key(&mut self, key: IdleKey) {
        debug_assert!(
            self.present.has(Present::IDLE),
            "only idle processes are listed"
        );
        self.idle_key = key;
    }

    /// When it last sent a valid status.
    pub(crate) fn last_status_update(&self) -> Option<Instant> {
        self.present
            .has(Present::STATUS)
            .then_some(self.last_status_update)
    }

    pub(crate) fn set_last_status_update(&mut self, at: Instant) {
        self.present.set(Present::STATUS, true);
        self.last_status_update = at;
    }

    /// When it was last sent an idle-kill SIGINT.
    pub(crate) fn last_kill_sent(&self) -> Option<Instant> {
        self.present
            .has(Present::KILL)
            .then_some(self.last_kill_sent)
    }

    pub(crate) fn set_last_kill_sent(&mut self, at: Instant) {
        self.present.set(Present::KILL, true);
        self.last_kill_sent = at;
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // What the fields mean, not how they are packed: this is what a violation dumps.
        f.debug_struct("Process")
            .field("id", &self.id)
            .field("service", &self.service)
            .field("uid", &self.uid)
            .field("pid", &self.pid())
            .field("available_count", &self.available_count)
            .field("total_count", &self.total_count)
            .field("idle_key", &self.idle_key())
            .field("idle_start", &self.idle_start())
            .field("last_status_update", &self.last_status_update())
            .field("last_kill_sent", &self.last_kill_sent())
            .field("initialised", &self.initialised)
            .field("told_login_state", &self.told_login_state)
            .finish()
    }
}

/// A process's place in its service's idle list, handed out by the list.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdleKey(u32);

/// The idle list of a service (§2.1): processes with every slot free, in the order they became
/// idle.
///
/// A process leaves the list from anywhere (it took a client) and comes back at the tail, the
/// master's most frequent pair of operations; both are O(1) here whatever the list's length
/// (issue 8: an event costs the same at 100 and 10,000 processes), and neither hashes: a key is
/// the entry's position counted from the first entry ever appended, so finding it is one
/// subtraction. A process removed from the middle leaves a gap that stays until it reaches the
/// head; when gaps outnumber the live entries the list closes them, which gives every entry a
/// new key, and says so to the caller, who keeps the keys in the process records.
///
/// Invariants: the entry of key `k` is at index `k - base` (wrapping: only differences of keys
/// matter, and the list never spans 2^32 entries); the head is live; `live` counts the entries
/// that are not gaps.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdleList {
    /// Entries in the order they were appended; `None` where a process left.
    order: VecDeque<Option<Slot>>,
    /// The key of `order[0]`.
    base: u32,
    /// The entries that are not gaps.
    live: usize,
}

impl IdleList {
    /// Appends `slot` at the tail and returns its key.
    pub(crate) fn push(&mut self, slot: Slot) -> IdleKey {
        let key = IdleKey(self.base.wrapping_add(self.order.len() as u32));
        self.order.push_back(Some(slot));
        self.live += 1;
        key
    }

    /// Removes the entry of `key`, if it is there. When that leaves more gaps than live
    /// entries, the list is compacted and `moved` is told the new key of every entry that moved.
    pub(crate) fn remove(&mut self, key: IdleKey, mut moved: impl FnMut(Slot, IdleKey)) {
        let Some(entry) = self.index(key).and_then(|index| self.order.get_mut(index)) else {
            return;
        };
        if entry.take().is_none() {
            return;
        }
        self.live -= 1;
        while self.order.front().is_some_and(Option::is_none) {
            self.order.pop_front();
            self.base = self.base.wrapping_add(1);
        }
        if self.order.len() > 2 * self.live + 32 {
            // The live entries get keys past every key handed out so far, so that a key
            // removed before can not come to name another process.
            self.base = self.base.wrapping_add(self.order.len() as u32);
            self.order.retain(Option::is_some);
            for (index, slot) in self.order.iter().flatten().enumerate() {
                moved(*slot, IdleKey(self.base.wrapping_add(index as u32)));
            }
        }
    }

    /// The process under `key`.
    pub(crate) fn get(&self, key: IdleKey) -> Option<Slot> {
        *self.order.get(self.index(key)?)?
    }

    /// The head: the process idle longest.
    pub(crate) fn first(&self) -> Option<Slot> {
        // The head is kept live by `remove`.
        self.order.front().copied().flatten()
    }

    /// How many processes are idle.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Where the entry of `key` would be.
    fn index(&self, key: IdleKey) -> Option<usize> {
        usize::try_from(key.0.wrapping_sub(self.base)).ok()
    }

    /// The idle processes, head first.
    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = Slot> + '_ {
        self.order.iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_record_keeps_each_optional_field_apart() {
        let mut p = Process::new(ProcessId(1), ServiceId(2), ProcessUid(3), 4);
        assert_eq!(p.pid(), None);
        assert_eq!(p.idle_key(), None);
        assert_eq!(p.idle_start(), None);
        assert_eq!(p.last_status_update(), None);
        assert_eq!(p.last_kill_sent(), None);
        p.set_pid(Some(Pid(7)));
        p.set_idle(Some((IdleKey(4), Instant::from_millis(5))));
        p.move_idle_key(IdleKey(9));
        p.set_last_status_update(Instant::from_millis(6));
        p.set_last_kill_sent(Instant::from_millis(8));
        assert_eq!(p.pid(), Some(Pid(7)));
        assert_eq!(p.idle_key(), Some(IdleKey(9)));
        assert_eq!(p.idle_start(), Some(Instant::from_millis(5)));
        p.set_pid(None);
        p.set_idle(None);
        assert_eq!(p.pid(), None);
        assert_eq!(p.idle_key(), None);
        assert_eq!(p.idle_start(), None);
        assert_eq!(p.last_status_update(), Some(Instant::from_millis(6)));
        assert_eq!(p.last_kill_sent(), Some(Instant::from_millis(8)));
    }

    proptest! {
        /// The idle list behaves as the ordered list it stands for, whatever is removed from
        /// where, and the keys it moves while compacting are the ones it answers to after.
        #[test]
        fn idle_list_is_an_ordered_map(ops in proptest::collection::vec((any::<bool>(), 0usize..64), 0..400)) {
            let mut list = IdleList::default();
            // (key, slot) in order, the keys as the list last told them.
            let mut model: Vec<(IdleKey, Slot)> = Vec::new();
            let mut next_slot = 0;
            for (append, pick) in ops {
                if append || model.is_empty() {
                    let slot = Slot::at(next_slot);
                    next_slot += 1;
                    let key = list.push(slot);
                    model.push((key, slot));
                } else {
                    let (key, _) = model.remove(pick % model.len());
                    let mut moves = Vec::new();
                    list.remove(key, |slot, key| moves.push((slot, key)));
                    for (slot, key) in moves {
                        let entry = model.iter_mut().find(|(_, s)| *s == slot);
                        prop_assert!(entry.is_some(), "moved a slot that is not listed");
                        if let Some(entry) = entry {
                            entry.0 = key;
                        }
                    }
                    list.remove(key, |_, _| panic!("a second removal moved entries"));
                }
                prop_assert_eq!(list.len(), model.len());
                prop_assert_eq!(list.first(), model.first().map(|&(_, slot)| slot));
                prop_assert!(list.values().eq(model.iter().map(|&(_, slot)| slot)));
                for &(key, slot) in &model {
                    prop_assert_eq!(list.get(key), Some(slot));
                }
                prop_assert!(list.order.len() <= 2 * list.live + 33);
            }
        }
    }
}
