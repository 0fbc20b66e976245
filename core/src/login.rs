//! A login process's table of connections (reference §2.8, login side): which clients have not
//! logged in yet, which one to sacrifice when the master says every process is full, when, and
//! the pre-authentication timeout.
//!
//! Clients are identified by the driver's ids, ordered by arrival (ties by id). A client that has
//! logged in (handed to a post-login process, or proxied) is never killed to make room.
//! Invariants: `clients.len() <= client_limit` unless the driver accepted beyond it (counted
//! anyway); at most one overflow kill is pending.

use std::collections::{BTreeMap, VecDeque};

use crate::time::{Duration, Instant};

/// The longest overflow kill delay, for a client that has just arrived (§2.8: 0-100 ms by age).
pub const OVERFLOW_KILL_DELAY_MAX: Duration = Duration::from_millis(100);
/// Clients older than this are killed without delay.
pub const OVERFLOW_KILL_AGE_WINDOW: Duration = Duration::from_millis(10_000);
/// When not full and without a free slot, the login state is re-read this often (a safety net
/// against a lost SIGUSR1).
pub const FULL_RECHECK: Duration = Duration::from_millis(1_000);
/// Clients that have not logged in after this long are disconnected.
pub const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(180);

/// A client's id, given by the driver.
pub type ClientId = u64;

/// Where a client is in its login.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Connected, not authenticated.
    PreLogin,
    /// An auth or anvil lookup is in progress: others hold a reference to it.
    InAuth,
    /// Being handed to a post-login process.
    HandingOff,
    /// Logged in and proxied by this process (TLS): never killed for room.
    LoggedIn,
}

/// Why a client is disconnected.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// Every process is full: the protocol says `Connection queue full`.
    QueueFull,
    /// It did not log in in time.
    PreAuthTimeout,
}

impl Disconnect {
    /// The text the protocol sends (POP3: `-ERR <text>`, IMAP: `* BYE <text>`).
    pub fn text(self) -> &'static str {
        match self {
            Disconnect::QueueFull => "Connection queue full",
            Disconnect::PreAuthTimeout => "Disconnected for inactivity.",
        }
    }
}

/// An event of the login process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginInput {
    /// A connection was accepted.
    Accepted(ClientId),
    /// A client's login moved on.
    State(ClientId, ClientState),
    /// A client went away (or was disconnected).
    Gone(ClientId),
    /// The master's "all processes full" state, re-read after SIGUSR1 or a recheck.
    ServiceFull(bool),
    /// A listener is readable; `jitter_ms` (0-9) spreads the kills of processes that see the
    /// same state at once.
    Readable {
        /// Random 0-9 ms from the driver.
        jitter_ms: u8,
    },
    /// A timer may be due.
    Timeout,
}

/// An action of the login process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginOutput {
    /// Accept a waiting connection now.
    Accept,
    /// Watch the listeners, or stop.
    SetAccepting(bool),
    /// Send the disconnect text and close the client.
    Disconnect(ClientId, Disconnect),
    /// Re-read the master's full state (answer with `ServiceFull`).
    RecheckFull,
}

#[derive(Clone, Debug)]
struct Client {
    arrived: Instant,
    state: ClientState,
}

/// The table.
#[derive(Clone, Debug)]
pub struct LoginTable {
    client_limit: u32,
    pre_auth_timeout: Duration,
    clients: BTreeMap<ClientId, Client>,
    full: bool,
    accepting: bool,
    kill_at: Option<Instant>,
    recheck_at: Option<Instant>,
    outputs: VecDeque<LoginOutput>,
}

impl LoginTable {
    /// A table for a process with this client_limit.
    pub fn new(client_limit: u32, pre_auth_timeout: Duration) -> LoginTable {
        LoginTable {
            client_limit: client_limit.max(1),
            pre_auth_timeout,
            clients: BTreeMap::new(),
            full: false,
            accepting: false,
            kill_at: None,
            recheck_at: None,
            outputs: VecDeque::new(),
        }
    }

    /// The next action.
    pub fn poll_output(&mut self) -> Option<LoginOutput> {
        self.outputs.pop_front()
    }

    /// When to feed `Timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let oldest = self
            .clients
            .values()
            .filter(|c| matches!(c.state, ClientState::PreLogin | ClientState::InAuth))
            .map(|c| c.arrived + self.pre_auth_timeout)
            .min();
        [self.kill_at, self.recheck_at, oldest]
            .into_iter()
            .flatten()
            .min()
    }

    /// Clients connected.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    fn has_free_slot(&self) -> bool {
        (self.clients.len() as u32) < self.client_limit
    }

    /// The client that would be killed for room: the oldest pre-login client that is neither
    /// being handed off nor in a lookup; if none qualifies, the oldest pre-login one anyway.
    pub fn oldest_killable(&self) -> Option<ClientId> {
        let mut candidates: Vec<(Instant, ClientId, ClientState)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.state != ClientState::LoggedIn)
            .map(|(id, c)| (c.arrived, *id, c.state))
            .collect();
        candidates.sort_by_key(|(arrived, id, _)| (*arrived, *id));
        candidates
            .iter()
            .find(|(_, _, state)| *state == ClientState::PreLogin)
            .or(candidates.first())
            .map(|(_, id, _)| *id)
    }

    /// Handles one event.
    pub fn handle(&mut self, input: LoginInput, now: Instant) {
        match input {
            LoginInput::Accepted(id) => {
                self.clients.insert(
                    id,
                    Client {
                        arrived: now,
                        state: ClientState::PreLogin,
                    },
                );
            }
            LoginInput::State(id, state) => {
                // Logged in is final: such a client is never again a candidate for a kill.
                if let Some(client) = self
                    .clients
                    .get_mut(&id)
                    .filter(|c| c.state != ClientState::LoggedIn)
                {
                    client.state = state;
                }
            }
            LoginInput::Gone(id) => {
                self.clients.remove(&id);
            }
            LoginInput::ServiceFull(full) => {
                self.full = full;
                if full {
                    // Overflow allowed: watch the listeners even without a free slot.
                    self.recheck_at = None;
                    self.set_accepting(true);
                } else if self.kill_at.take().is_some() {
                    // The state changed before the delayed kill: nobody dies.
                }
            }
            LoginInput::Readable { jitter_ms } => self.on_readable(now, jitter_ms),
            LoginInput::Timeout => self.on_timeout(now),
        }
        self.update(now);
    }

    fn on_readable(&mut self, now: Instant, jitter_ms: u8) {
        if self.has_free_slot() {
            self.outputs.push_back(LoginOutput::Accept);
            return;
        }
        if !self.full {
            self.set_accepting(false);
            return;
        }
        if self.client_limit > 1 {
            // Performance mode: make room at once, exactly one client per event.
            if let Some(victim) = self.oldest_killable() {
                self.kill(victim, now);
                self.outputs.push_back(LoginOutput::Accept);
            }
        } else if self.kill_at.is_none() {
            // Security mode: the older the client, the sooner it goes.
            if let Some(victim) = self.oldest_killable() {
                let age = now - self.clients[&victim].arrived;
                self.kill_at = Some(
                    now + overflow_kill_delay(age)
                        + Duration::from_millis(u64::from(jitter_ms % 10)),
                );
            }
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.kill_at.is_some_and(|at| at <= now) {
            self.kill_at = None;
            if self.full && !self.has_free_slot() {
                if let Some(victim) = self.oldest_killable() {
                    self.kill(victim, now);
                }
            }
        }
        if self.recheck_at.is_some_and(|at| at <= now) {
            self.recheck_at = None;
            self.outputs.push_back(LoginOutput::RecheckFull);
        }
        let expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.state, ClientState::PreLogin | ClientState::InAuth))
            .filter(|(_, c)| c.arrived + self.pre_auth_timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.clients.remove(&id);
            self.outputs
                .push_back(LoginOutput::Disconnect(id, Disconnect::PreAuthTimeout));
        }
    }

    fn kill(&mut self, victim: ClientId, _now: Instant) {
        self.clients.remove(&victim);
        self.outputs
            .push_back(LoginOutput::Disconnect(victim, Disconnect::QueueFull));
    }

    fn set_accepting(&mut self, on: bool) {
        if self.accepting != on {
            self.accepting = on;
            self.outputs.push_back(LoginOutput::SetAccepting(on));
        }
    }

    fn update(&mut self, now: Instant) {
        if self.has_free_slot() {
            self.recheck_at = None;
            self.set_accepting(true);
        } else if !self.full {
            self.set_accepting(false);
            self.recheck_at.get_or_insert(now + FULL_RECHECK);
        }
    }

    /// Checks the table's invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.kill_at.is_some() && self.client_limit != 1 {
            return Err("a delayed kill in performance mode".to_owned());
        }
        if self.accepting && !self.full && !self.has_free_slot() {
            return Err("accepting without a free slot while not full".to_owned());
        }
        Ok(())
    }
}

/// The overflow kill delay for a client of this age: 100 ms for a new one down to 0 for one
/// 10 s old (§2.8). Named so that a tuning backed by a simulation changes one place.
pub fn overflow_kill_delay(age: Duration) -> Duration {
    let window = OVERFLOW_KILL_AGE_WINDOW.as_millis() as u64;
    let age = (age.as_millis() as u64).min(window);
    Duration::from_millis(OVERFLOW_KILL_DELAY_MAX.as_millis() as u64 * (window - age) / window)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::from_millis(1_000);

    fn drain(t: &mut LoginTable) -> Vec<LoginOutput> {
        std::iter::from_fn(|| t.poll_output()).collect()
    }

    fn at(ms: u64) -> Instant {
        T0 + Duration::from_millis(ms)
    }

    #[test]
    fn the_oldest_killable_client_skips_lookups_and_handoffs_but_never_kills_the_logged_in() {
        let mut t = LoginTable::new(10, PRE_AUTH_TIMEOUT);
        for (id, ms) in [(1, 0), (2, 10), (3, 20), (4, 30)] {
            t.handle(LoginInput::Accepted(id), at(ms));
        }
        t.handle(LoginInput::State(1, ClientState::LoggedIn), at(40));
        t.handle(LoginInput::State(2, ClientState::InAuth), at(40));
        t.handle(LoginInput::State(3, ClientState::HandingOff), at(40));
        assert_eq!(
            t.oldest_killable(),
            Some(4),
            "the oldest plain pre-login client"
        );
        t.handle(LoginInput::State(4, ClientState::InAuth), at(50));
        assert_eq!(
            t.oldest_killable(),
            Some(2),
            "none qualifies: the oldest not logged in"
        );
        let mut only_logged_in = LoginTable::new(2, PRE_AUTH_TIMEOUT);
        only_logged_in.handle(LoginInput::Accepted(9), T0);
        only_logged_in.handle(LoginInput::State(9, ClientState::LoggedIn), T0);
        assert_eq!(only_logged_in.oldest_killable(), None);
    }

    #[test]
    fn performance_mode_kills_one_client_at_once_per_overflow_event() {
        let mut t = LoginTable::new(2, PRE_AUTH_TIMEOUT);
        t.handle(LoginInput::Accepted(1), at(0));
        t.handle(LoginInput::Accepted(2), at(5));
        assert_eq!(
            drain(&mut t).last(),
            Some(&LoginOutput::SetAccepting(false)),
            "no free slot"
        );
        t.handle(LoginInput::Readable { jitter_ms: 3 }, at(10));
        assert!(
            drain(&mut t).is_empty(),
            "not full: nobody is killed, the process waits"
        );
        t.handle(LoginInput::ServiceFull(true), at(20));
        drain(&mut t);
        t.handle(LoginInput::Readable { jitter_ms: 3 }, at(30));
        assert_eq!(
            drain(&mut t),
            vec![
                LoginOutput::Disconnect(1, Disconnect::QueueFull),
                LoginOutput::Accept
            ]
        );
        assert_eq!(Disconnect::QueueFull.text(), "Connection queue full");
    }

    #[test]
    fn security_mode_delays_the_kill_by_age_and_rechecks_the_state() {
        assert_eq!(
            overflow_kill_delay(Duration::ZERO),
            Duration::from_millis(100)
        );
        assert_eq!(
            overflow_kill_delay(Duration::from_secs(5)),
            Duration::from_millis(50)
        );
        assert_eq!(overflow_kill_delay(Duration::from_secs(60)), Duration::ZERO);
        let mut t = LoginTable::new(1, PRE_AUTH_TIMEOUT);
        t.handle(LoginInput::Accepted(1), at(0));
        t.handle(LoginInput::ServiceFull(true), at(0));
        drain(&mut t);
        t.handle(LoginInput::Readable { jitter_ms: 7 }, at(5_000));
        assert_eq!(t.poll_timeout(), Some(at(5_000 + 50 + 7)));
        t.handle(LoginInput::Timeout, at(5_056));
        assert!(drain(&mut t).is_empty());
        t.handle(LoginInput::Timeout, at(5_057));
        assert_eq!(
            drain(&mut t),
            vec![LoginOutput::Disconnect(1, Disconnect::QueueFull)]
        );
        // If the state flips to not full before the delay ends, nobody is killed.
        let mut t = LoginTable::new(1, PRE_AUTH_TIMEOUT);
        t.handle(LoginInput::Accepted(1), at(0));
        t.handle(LoginInput::ServiceFull(true), at(0));
        t.handle(LoginInput::Readable { jitter_ms: 0 }, at(10));
        t.handle(LoginInput::ServiceFull(false), at(20));
        drain(&mut t);
        t.handle(LoginInput::Timeout, at(500));
        assert!(!drain(&mut t)
            .iter()
            .any(|o| matches!(o, LoginOutput::Disconnect(..))));
    }

    #[test]
    fn without_a_free_slot_and_not_full_the_state_is_rechecked_every_second() {
        let mut t = LoginTable::new(1, PRE_AUTH_TIMEOUT);
        t.handle(LoginInput::Accepted(1), at(0));
        assert_eq!(t.poll_timeout(), Some(at(1_000)));
        t.handle(LoginInput::Timeout, at(1_000));
        assert_eq!(drain(&mut t), vec![LoginOutput::RecheckFull]);
    }

    #[test]
    fn clients_that_do_not_log_in_in_time_are_disconnected_but_logged_in_ones_stay() {
        let mut t = LoginTable::new(5, Duration::from_secs(180));
        t.handle(LoginInput::Accepted(1), at(0));
        t.handle(LoginInput::Accepted(2), at(0));
        t.handle(LoginInput::State(2, ClientState::LoggedIn), at(100));
        drain(&mut t);
        t.handle(LoginInput::Timeout, at(180_000));
        assert_eq!(
            drain(&mut t),
            vec![LoginOutput::Disconnect(1, Disconnect::PreAuthTimeout)]
        );
        assert_eq!(t.clients(), 1);
        assert!(t.check_invariants().is_ok());
    }
}
