//! The table of live processes: their records in one dense vector, addressed by slot.
//!
//! A status record is the master's most frequent input, and with thousands of processes each
//! one lands on a record the cache has not seen lately (issue 8). A hash map keyed by id costs
//! a probe of its control bytes and then of its buckets before the record is reached; here the
//! pid table names the slot directly, and the record is the only line an event must fetch.
//!
//! Invariants: a slot holds at most one live record; the id index names exactly the occupied
//! slots; a freed slot is reused only after every reference to it (pid table, idle list) was
//! dropped with the process, which the master's invariants 3 and 8 check. Slots never leave the
//! master, so their reuse can not alias anything outside it: the ids it hands out stay unique.

use std::num::NonZeroU32;

use rustc_hash::FxHashMap;

use super::service::Process;
use crate::ids::ProcessId;

/// Where a live process's record sits in the table. Valid from `insert` until `remove`.
///
/// It holds the index plus one, so that an `Option<Slot>` (a vacant entry of the pid table)
/// takes no more room than a slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot(NonZeroU32);

impl Slot {
    /// The slot at `index`, if a slot can name it.
    fn new(index: usize) -> Option<Slot> {
        let number = u32::try_from(index.checked_add(1)?).ok()?;
        NonZeroU32::new(number).map(Slot)
    }

    /// Its index in the table.
    pub(crate) fn index(self) -> usize {
        self.0.get() as usize - 1
    }

    /// A slot made up by a test.
    #[cfg(test)]
    pub(crate) fn at(index: u32) -> Slot {
        Slot::new(index as usize).expect("tests use small slots")
    }
}

/// The live processes.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProcessTable {
    /// Records by slot; `None` where a process left.
    records: Vec<Option<Process>>,
    /// Slots free for reuse, the most recently freed last (its line is likely still cached).
    free: Vec<Slot>,
    /// The slot of every live process, for inputs and timers that name a process by its id.
    /// Hashed, never iterated.
    by_id: FxHashMap<ProcessId, Slot>,
}

impl ProcessTable {
    /// Stores a new record and returns its slot.
    pub(crate) fn insert(&mut self, process: Process) -> Slot {
        let id = process.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.records[slot.index()] = Some(process);
                slot
            }
            None => {
                let slot = Slot::new(self.records.len())
                    .expect("fewer than 2^32 - 1 processes: each is a child of this master");
                self.records.push(Some(process));
                slot
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    /// Takes the record out of `slot`, if one is there.
    pub(crate) fn remove(&mut self, slot: Slot) -> Option<Process> {
        let process = self.records.get_mut(slot.index())?.take()?;
        self.by_id.remove(&process.id);
        self.free.push(slot);
        Some(process)
    }

    /// The slot of the live process `id`.
    pub(crate) fn slot(&self, id: ProcessId) -> Option<Slot> {
        self.by_id.get(&id).copied()
    }

    /// The record of the live process `id`.
    pub(crate) fn find(&self, id: ProcessId) -> Option<&Process> {
        self.get(self.slot(id)?)
    }

    /// The record in `slot`.
    pub(crate) fn get(&self, slot: Slot) -> Option<&Process> {
        self.records.get(slot.index())?.as_ref()
    }

    /// The record in `slot`, to change.
    pub(crate) fn get_mut(&mut self, slot: Slot) -> Option<&mut Process> {
        self.records.get_mut(slot.index())?.as_mut()
    }

    /// How many processes are live.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no process is live.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every live record with its slot, in slot order (an accident of reuse: sort by id
    /// before anything reaches an output).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Slot, &Process)> + '_ {
        self.records
            .iter()
            .enumerate()
            .filter_map(|(index, record)| Some((Slot::new(index)?, record.as_ref()?)))
    }

    /// The ids of every live process, in creation order.
    pub(crate) fn ids(&self) -> Vec<ProcessId> {
        let mut ids: Vec<ProcessId> = self.iter().map(|(_, process)| process.id).collect();
        ids.sort_unstable();
        ids
    }
}
