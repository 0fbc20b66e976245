//! The master's timers, as state.
//!
//! Every timer of reference §2 and §4 is one `Timer` key with at most one deadline. Arming an
//! armed timer moves it; a timer fires once and is gone unless its handler arms it again, so the
//! repeating timers of the original (prefork ticks, idle-kill rounds, reload kill rounds) re-arm
//! themselves explicitly and the one-shot ones (first status, idle-kill confirmation) cannot fire
//! twice: the repeating confirmation timer of 2.3.21 that crashed the original is impossible by
//! construction.
//!
//! The table keeps a second index ordered by deadline, so `next()` and arming are O(log n)
//! whatever the number of processes.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{Generation, ProcessId, ServiceId};
use crate::time::Instant;

/// One timer of the master.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The current generation starts (after its listeners were opened): §4.2.
    Start,
    /// A prefork tick of the process_min_avail top-up: §2.2.
    Prefork(ServiceId),
    /// listen_pending ends: queued connections are dropped (10 s): §2.4.
    Drop(ServiceId),
    /// The delayed process_limit warning of a worker service (500 ms): §2.4.
    WorkerWarning(ServiceId),
    /// An idle-kill round (every idle_kill): §2.6.
    IdleRound(ServiceId),
    /// Throttling after failed starts ends: §2.4.
    Throttle(ServiceId),
    /// The delayed SIGUSR1 burst of the login "all processes full" state (2 s rate): §2.8.
    LoginNotify(ServiceId),
    /// A process's first status is late (30 s): §1.4.
    FirstStatus(ProcessId),
    /// A process did not answer an idle-kill SIGINT (one-shot): §2.6.
    IdleKillConfirm(ProcessId),
    /// An old generation's processes are signalled (every 6 s): §4.3.
    ReloadKill(Generation),
    /// Shutdown polls whether children stopped accepting (every 100 ms, ≤ 5 s): §4.5.
    ShutdownPoll,
    /// Shutdown ends, 1 s after SIGQUIT: §4.5.
    ShutdownExit,
}

/// The timer table.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timers {
    /// Deadline of every armed timer.
    by_timer: BTreeMap<Timer, Instant>,
    /// The same, ordered by deadline (ties by timer, for determinism).
    by_deadline: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    /// Arms `timer` at `at`, replacing an earlier deadline.
    pub(crate) fn arm(&mut self, timer: Timer, at: Instant) {
        if let Some(old) = self.by_timer.insert(timer, at) {
            self.by_deadline.remove(&(old, timer));
        }
        self.by_deadline.insert((at, timer));
    }

    /// Arms `timer` at `at` unless it is armed already.
    pub(crate) fn arm_if_idle(&mut self, timer: Timer, at: Instant) {
        if !self.is_armed(timer) {
            self.arm(timer, at);
        }
    }

    /// Disarms `timer`; nothing happens if it is not armed.
    pub(crate) fn disarm(&mut self, timer: Timer) {
        if let Some(old) = self.by_timer.remove(&timer) {
            self.by_deadline.remove(&(old, timer));
        }
    }

    /// Whether `timer` is armed.
    pub(crate) fn is_armed(&self, timer: Timer) -> bool {
        self.by_timer.contains_key(&timer)
    }

    /// The deadline of `timer`, if armed.
    pub(crate) fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.by_timer.get(&timer).copied()
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// Every timer due at `now` with its deadline, earliest first (still armed).
    pub(crate) fn due(&self, now: Instant) -> Vec<(Timer, Instant)> {
        self.by_deadline
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(at, t)| (*t, *at))
            .collect()
    }

    /// Every armed timer, for the invariant checks.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Timer, Instant)> + '_ {
        self.by_timer.iter().map(|(t, at)| (*t, *at))
    }

    /// Whether both indexes agree (invariant 11).
    pub(crate) fn is_consistent(&self) -> bool {
        self.by_timer.len() == self.by_deadline.len()
            && self
                .by_deadline
                .iter()
                .all(|(at, t)| self.by_timer.get(t) == Some(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearming_moves_the_deadline_and_a_fired_timer_is_gone() {
        let mut timers = Timers::default();
        let t = Timer::Drop(ServiceId(1));
        timers.arm(t, Instant::from_millis(10));
        timers.arm(t, Instant::from_millis(5));
        assert_eq!(timers.next(), Some(Instant::from_millis(5)));
        assert!(timers.due(Instant::from_millis(4)).is_empty());
        assert_eq!(
            timers.due(Instant::from_millis(5)),
            vec![(t, Instant::from_millis(5))]
        );
        timers.disarm(t);
        assert!(timers.due(Instant::from_millis(50)).is_empty());
        assert!(timers.is_consistent());
    }
}
