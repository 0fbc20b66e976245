//! The pid table: the slot of the live process that has each pid the OS gave out.
//!
//! Every status record and exit starts here, with a pid the cache has usually not seen lately
//! (issue 8). A general hash map reads a line of control bytes and then a line of buckets
//! before the process record can even be asked for; this table keeps pid and slot side by
//! side in one open-addressed array, so a lookup is usually the one line its pid hashes to.
//!
//! Invariants: the capacity is a power of two (or zero) and at most three quarters of it is
//! used; an entry is found by probing forward from its pid's home without crossing a vacant
//! entry (removal shifts the entries behind back to keep that true); each pid is in it once.
//! The hash is a fixed multiplication, so the core stays deterministic; the table is never
//! iterated in its own order where that could reach an output.

use std::fmt;

use super::table::Slot;
use crate::ids::Pid;

/// One entry: a pid and its process's slot, or vacant.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Entry {
    pid: Pid,
    slot: Option<Slot>,
}

const VACANT: Entry = Entry {
    pid: Pid(0),
    slot: None,
};

/// The pid table.
#[derive(Clone, Default)]
pub(crate) struct PidTable {
    /// The entries; a pid's probe starts at its home and moves forward, wrapping.
    entries: Vec<Entry>,
    /// The entries in use.
    len: usize,
}

impl PidTable {
    /// The slot of `pid`'s process.
    pub(crate) fn get(&self, pid: Pid) -> Option<Slot> {
        let index = self.find(pid)?;
        self.entries[index].slot
    }

    /// Maps `pid` to `slot`; returns the slot it mapped to before, if any.
    pub(crate) fn insert(&mut self, pid: Pid, slot: Slot) -> Option<Slot> {
        if let Some(index) = self.find(pid) {
            return self.entries[index].slot.replace(slot);
        }
        if (self.len + 1) * 4 > self.entries.len() * 3 {
            self.grow();
        }
        let mask = self.entries.len() - 1;
        let mut index = self.home(pid);
        while self.entries[index].slot.is_some() {
            index = (index + 1) & mask;
        }
        self.entries[index] = Entry {
            pid,
            slot: Some(slot),
        };
        self.len += 1;
        None
    }

    /// Forgets `pid`; returns the slot it mapped to, if any.
    pub(crate) fn remove(&mut self, pid: Pid) -> Option<Slot> {
        let mut hole = self.find(pid)?;
        let removed = self.entries[hole].slot;
        let mask = self.entries.len() - 1;
        // Close the hole: move back every entry behind it whose probe would otherwise cross it.
        let mut next = (hole + 1) & mask;
        while self.entries[next].slot.is_some() {
            let home = self.home(self.entries[next].pid);
            // The entry may move to the hole if its home is not within (hole, next].
            let stays = if hole < next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                self.entries[hole] = self.entries[next];
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.entries[hole] = VACANT;
        self.len -= 1;
        removed
    }

    /// Every pid with its slot, in no meaningful order (for the invariant checks).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Pid, Slot)> + '_ {
        self.entries
            .iter()
            .filter_map(|entry| Some((entry.pid, entry.slot?)))
    }

    /// Where `pid`'s entry is.
    fn find(&self, pid: Pid) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let mask = self.entries.len() - 1;
        let mut index = self.home(pid);
        loop {
            let entry = &self.entries[index];
            entry.slot?;
            if entry.pid == pid {
                return Some(index);
            }
            index = (index + 1) & mask;
        }
    }

    /// Where `pid`'s probe starts: the high bits of a Fibonacci hash, which spread the
    /// consecutive pids an OS hands out.
    fn home(&self, pid: Pid) -> usize {
        let bits = self.entries.len().trailing_zeros();
        let hash = u64::from(pid.0 as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // `bits` is at least 3 (see `grow`), so the shift is below 64.
        (hash >> (64 - bits)) as usize
    }

    /// Doubles the capacity (at least 8) and puts every entry back.
    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).max(8);
        let old = std::mem::replace(&mut self.entries, vec![VACANT; capacity]);
        self.len = 0;
        for entry in old {
            if let Some(slot) = entry.slot {
                self.insert(entry.pid, slot);
            }
        }
    }
}

impl fmt::Debug for PidTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pids and their slots, not the vacant entries between them.
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The table answers as an ordered map would, whatever is inserted and removed, with
        /// pids that collide (a few values) or spread (any i32).
        #[test]
        fn the_pid_table_is_a_map(
            ops in proptest::collection::vec((0u8..3, any::<i32>(), 0u32..1000), 0..600),
            narrow in any::<bool>(),
        ) {
            let mut table = PidTable::default();
            let mut model: BTreeMap<i32, u32> = BTreeMap::new();
            for (op, pid, slot) in ops {
                let pid = if narrow { pid.rem_euclid(40) } else { pid };
                match op {
                    0 | 1 => prop_assert_eq!(
                        table.insert(Pid(pid), Slot::at(slot)),
                        model.insert(pid, slot).map(Slot::at)
                    ),
                    _ => prop_assert_eq!(table.remove(Pid(pid)), model.remove(&pid).map(Slot::at)),
                }
                prop_assert_eq!(table.len, model.len());
                prop_assert!(table.len * 4 <= table.entries.len() * 3);
                for (&pid, &slot) in &model {
                    prop_assert_eq!(table.get(Pid(pid)), Some(Slot::at(slot)));
                }
                let mut listed: Vec<(i32, u32)> = table.iter().map(|(pid, slot)| (pid.0, slot.index() as u32)).collect();
                listed.sort_unstable();
                prop_assert!(listed.into_iter().eq(model.iter().map(|(&p, &s)| (p, s))));
            }
        }
    }
}
