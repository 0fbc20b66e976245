//! What happened to each service's clients and processes, counted the same way by both drivers
//! ([`crate::des`] and [`crate::net`]) and turned into the capacity report's
//! [`ServiceReport`], so a scenario's expectations mean the same in either world.
//!
//! State owned here: per-service counters and samples, by service name (over generations). No
//! invariants beyond "counters only grow".

use std::collections::BTreeMap;

use roost_core::login::DisconnectReason;

use crate::plan::ServiceReport;

/// How a client's attempt ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Logged in (login services) or had its session (others), and left.
    Served,
    /// Accepted and closed by the master (listen_pending drop, throttling).
    Dropped,
    /// The accept queue was full.
    BacklogFull,
    /// Nothing listens on the service (no such service, no listener, or closed).
    Refused,
    /// Killed by a login process to make room (reference §2.8 "Connection queue full").
    LoginKilled,
    /// Its process died under it (crash, SIGTERM, SIGKILL, master death).
    Lost,
    /// Disconnected by the pre-auth timeout without logging in.
    TimedOut,
}

impl Outcome {
    /// The outcome of a client a login process disconnected for this reason.
    pub fn of_disconnect(reason: DisconnectReason) -> Outcome {
        match reason {
            DisconnectReason::QueueFull => Outcome::LoginKilled,
            DisconnectReason::Inactivity
            | DisconnectReason::InactivityDuringAuth
            | DisconnectReason::FinishingLogin => Outcome::TimedOut,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Outcome::Served => "completed",
            Outcome::Dropped => "dropped",
            Outcome::BacklogFull => "backlog_full",
            Outcome::Refused => "refused",
            Outcome::LoginKilled => "login_killed",
            Outcome::Lost => "lost",
            Outcome::TimedOut => "timed_out",
        }
    }
}

/// The line a login process sends a client it disconnects (POP3 puts `-ERR ` before the
/// reason, reference §2.8), as both worlds record it.
pub fn told_line(reason: DisconnectReason) -> String {
    format!("-ERR {reason}")
}

/// One service's counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Most processes alive at once.
    peak_processes: u32,
    /// Connections accepted by a process.
    accepted: u64,
    /// Accepted connections that had waited in the queue.
    queued: u64,
    /// Queue waits of every accepted connection, ms.
    waits: Vec<u64>,
    /// Time from a served client's first connect attempt to its login (or session start), ms.
    logins: Vec<u64>,
    /// Clients served.
    served: u64,
    /// Attempt outcome counts, by [`Outcome::key`].
    outcomes: BTreeMap<&'static str, u64>,
    /// Processes created.
    spawned: u64,
    /// Spawns per step that had any, in order (shows the top-up batches of §2.2).
    spawn_steps: Vec<u32>,
}

impl Stats {
    /// A process accepted a connection that waited `wait_ms` in the queue.
    pub fn accepted(&mut self, wait_ms: u64) {
        self.accepted += 1;
        self.waits.push(wait_ms);
        if wait_ms > 0 {
            self.queued += 1;
        }
    }

    /// A client reached its goal `latency_ms` after its first connect attempt.
    pub fn served(&mut self, latency_ms: u64) {
        self.served += 1;
        self.logins.push(latency_ms);
    }

    /// A client's attempt ended so.
    pub fn ended(&mut self, outcome: Outcome) {
        *self.outcomes.entry(outcome.key()).or_default() += 1;
    }

    /// One master step created `count` processes of the service.
    pub fn spawned(&mut self, count: u32) {
        self.spawned += u64::from(count);
        self.spawn_steps.push(count);
    }

    /// The service has `count` processes alive now.
    pub fn alive(&mut self, count: u32) {
        self.peak_processes = self.peak_processes.max(count);
    }

    /// Login latencies of served clients, ms, in the order they were served.
    pub fn logins(&self) -> &[u64] {
        &self.logins
    }

    /// Processes created per step that created any.
    pub fn spawn_steps(&self) -> &[u32] {
        &self.spawn_steps
    }

    /// The capacity report's line for this service.
    pub fn report(&self, name: &str, final_processes: u32) -> ServiceReport {
        let mut waits = self.waits.clone();
        waits.sort_unstable();
        let mut logins = self.logins.clone();
        logins.sort_unstable();
        let outcome = |k: Outcome| self.outcomes.get(k.key()).copied().unwrap_or(0);
        ServiceReport {
            name: name.to_owned(),
            peak_processes: self.peak_processes,
            final_processes,
            accepted: self.accepted,
            queued: self.queued,
            wait_p50_ms: percentile(&waits, 50),
            wait_p99_ms: percentile(&waits, 99),
            wait_max_ms: waits.last().copied().unwrap_or(0),
            login_p50_ms: percentile(&logins, 50),
            login_p99_ms: percentile(&logins, 99),
            login_max_ms: logins.last().copied().unwrap_or(0),
            served: self.served,
            dropped: outcome(Outcome::Dropped)
                + outcome(Outcome::BacklogFull)
                + outcome(Outcome::Refused),
            backlog_full: outcome(Outcome::BacklogFull),
            login_killed: outcome(Outcome::LoginKilled),
            lost: outcome(Outcome::Lost),
            timed_out: outcome(Outcome::TimedOut),
            spawned: self.spawned,
        }
    }
}

/// Distinct notice texts with how often each appeared, in first-seen order.
pub fn warnings(notices: &[(u64, String)]) -> Vec<(String, u64)> {
    let mut warnings: Vec<(String, u64)> = Vec::new();
    for (_, text) in notices {
        match warnings.iter_mut().find(|(t, _)| t == text) {
            Some((_, n)) => *n += 1,
            None => warnings.push((text.clone(), 1)),
        }
    }
    warnings
}

/// The `p`th percentile of sorted values by rank (0 when empty).
pub fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_rank_not_an_average() {
        let waits: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&waits, 50), 50);
        assert_eq!(percentile(&waits, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }
}
