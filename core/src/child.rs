//! What a service process decides for itself (reference §1.4, §2.5, §2.6 child side, §4.4): its
//! free slots and service_count budget, the status records it sends and when, its answer to an
//! idle-kill request, and what it does when the master goes away.
//!
//! Invariants: `clients + available_count == total_available`; `service_count_left >=
//! total_available` while the budget is finite; nothing is written after the status pipe broke.

use std::collections::VecDeque;

use crate::time::{Duration, Instant};

/// Unimportant status updates are written at most this often (§1.4).
pub const STATUS_COALESCE: Duration = Duration::from_millis(1_000);
/// A process whose master died with clients still connected exits after this long at the latest
/// when it dies with the master (§4.4).
pub const DIE_WITH_MASTER_TIMEOUT: Duration = Duration::from_millis(30_000);

/// How a service process is configured (from its environment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildConfig {
    /// Effective client_limit.
    pub client_limit: u32,
    /// service_count; 0 = unlimited.
    pub service_count: u32,
    /// Exit (after a grace period) when the master dies, rather than serve the remaining clients.
    pub die_with_master: bool,
    /// A login process: it keeps its listeners until the end (it has an overflow callback).
    pub is_login: bool,
    /// Ignore idle-kill requests (stats, replicator, ...).
    pub never_idle_die: bool,
}

/// An event in a service process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildInput {
    /// Initialisation finished: send the first status.
    InitDone,
    /// A connection was accepted.
    Accepted,
    /// A connection ended.
    ClientClosed,
    /// SIGINT from the master: die if idle.
    IdleKillRequest,
    /// SIGTERM: stop.
    Terminate,
    /// SIGQUIT: close the listeners now (the master is shutting down).
    Quit,
    /// The master-dead fd reported an error: the master is gone, or this generation was retired.
    MasterDead,
    /// The last `WriteStatus` was written.
    StatusWritten,
    /// The last `WriteStatus` would block (EAGAIN).
    StatusWouldBlock,
    /// The status pipe became writable again.
    StatusWritable,
    /// Writing the status failed for good (EPIPE): never write again.
    StatusBroken,
    /// A timer may be due.
    Timeout,
}

/// An action of a service process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildOutput {
    /// Write a status record with this available_count. Answer with `StatusWritten`,
    /// `StatusWouldBlock` or `StatusBroken`.
    WriteStatus(u32),
    /// Watch the listeners for connections, or stop.
    SetAccepting(bool),
    /// Close every listening fd: this process will accept nothing more.
    CloseListeners,
    /// The master died with clients connected and die_with_master is set: tell the clients.
    DieCallback,
    /// Exit with this status.
    Exit(i32),
}

/// The machine.
#[derive(Clone, Debug)]
pub struct Child {
    config: ChildConfig,
    /// Connections being served.
    clients: u32,
    /// Free slots.
    available_count: u32,
    /// Slots in all (shrinks when the service_count budget retires them).
    total_available: u32,
    /// Connections still allowed; `None` = unlimited.
    service_count_left: Option<u32>,
    /// The last value written, if any.
    last_written: Option<u32>,
    /// A value waits to be written.
    pending: Option<u32>,
    /// The value of the write in flight.
    in_flight: Option<u32>,
    /// The pipe is blocked (EAGAIN).
    blocked: bool,
    /// The pipe broke: never write again.
    broken: bool,
    /// When the last unimportant update was written.
    last_unimportant: Option<Instant>,
    /// The coalescing timer.
    coalesce_at: Option<Instant>,
    /// The die-with-master deadline.
    die_at: Option<Instant>,
    /// Listening for connections.
    accepting: bool,
    /// Listeners closed.
    listeners_closed: bool,
    /// The master is gone.
    master_dead: bool,
    /// Exit was emitted.
    exited: bool,
    /// Outputs not yet polled.
    outputs: VecDeque<ChildOutput>,
}

impl Child {
    /// A process that has not finished initialising.
    pub fn new(config: ChildConfig) -> Child {
        let limit = match config.service_count {
            0 => config.client_limit.max(1),
            count => config.client_limit.max(1).min(count),
        };
        let service_count_left = (config.service_count != 0).then_some(config.service_count);
        Child {
            config,
            clients: 0,
            available_count: limit,
            total_available: limit,
            service_count_left,
            last_written: None,
            pending: None,
            in_flight: None,
            blocked: false,
            broken: false,
            last_unimportant: None,
            coalesce_at: None,
            die_at: None,
            accepting: false,
            listeners_closed: false,
            master_dead: false,
            exited: false,
            outputs: VecDeque::new(),
        }
    }

    /// Free slots.
    pub fn available_count(&self) -> u32 {
        self.available_count
    }

    /// Connections being served.
    pub fn clients(&self) -> u32 {
        self.clients
    }

    /// Whether the process should watch its listeners.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// The next action.
    pub fn poll_output(&mut self) -> Option<ChildOutput> {
        self.outputs.pop_front()
    }

    /// When to feed `Timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.coalesce_at, self.die_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles one event.
    pub fn handle(&mut self, input: ChildInput, now: Instant) {
        if self.exited {
            return;
        }
        match input {
            ChildInput::InitDone => {
                self.report(now, true);
                self.update_accepting();
            }
            ChildInput::Accepted => {
                if self.available_count == 0 {
                    // The driver accepted beyond the limit; count it, never underflow.
                    self.clients += 1;
                    self.total_available += 1;
                } else {
                    self.clients += 1;
                    self.available_count -= 1;
                }
                if let Some(left) = self.service_count_left {
                    if left == 1 && !self.config.is_login && !self.listeners_closed {
                        // The last permitted connection is in progress: let the next process
                        // have the listeners (§2.5).
                        self.close_listeners();
                    }
                }
                self.report(now, false);
                self.update_accepting();
            }
            ChildInput::ClientClosed => {
                if self.clients == 0 {
                    return;
                }
                self.clients -= 1;
                match self.service_count_left {
                    Some(left) if left == self.total_available => {
                        // The budget no longer exceeds the slots: retire the slot (§2.5).
                        self.service_count_left = Some(left - 1);
                        self.total_available -= 1;
                    }
                    Some(left) => {
                        self.service_count_left = Some(left - 1);
                        self.available_count += 1;
                    }
                    None => self.available_count += 1,
                }
                if self.service_count_left == Some(0) || (self.master_dead && self.clients == 0) {
                    self.exit(0);
                    return;
                }
                self.report(now, false);
                self.update_accepting();
            }
            ChildInput::IdleKillRequest => {
                if self.config.never_idle_die || self.clients > 0 {
                    // Refused: re-send the status so the master knows it is alive (§1.4).
                    self.last_written = None;
                    self.report(now, true);
                } else {
                    self.exit(0);
                }
            }
            ChildInput::Terminate => self.exit(0),
            ChildInput::Quit => self.close_listeners(),
            ChildInput::MasterDead => self.on_master_dead(now),
            ChildInput::StatusWritten => {
                if let Some(value) = self.in_flight.take() {
                    self.last_written = Some(value);
                }
                self.flush(now);
            }
            ChildInput::StatusWouldBlock => {
                self.blocked = true;
                // An unimportant value is dropped; an important one waits for the pipe (§1.4).
                if let Some(value) = self.in_flight.take() {
                    if self.pending.is_none() && self.is_important(value) {
                        self.pending = Some(value);
                    }
                }
                if let Some(value) = self.pending {
                    if !self.is_important(value) {
                        self.pending = None;
                    }
                }
            }
            ChildInput::StatusWritable => {
                self.blocked = false;
                self.flush(now);
            }
            ChildInput::StatusBroken => {
                self.in_flight = None;
                self.broken = true;
                self.pending = None;
                self.coalesce_at = None;
            }
            ChildInput::Timeout => {
                if self.die_at.is_some_and(|at| at <= now) {
                    self.exit(0);
                    return;
                }
                if self.coalesce_at.is_some_and(|at| at <= now) {
                    self.coalesce_at = None;
                    self.last_unimportant = None;
                    self.flush(now);
                }
            }
        }
    }

    fn is_important(&self, value: u32) -> bool {
        value == 0 || self.last_written == Some(0) || self.last_written.is_none()
    }

    /// Queues the current value for the master, subject to the coalescing rules (§1.4).
    fn report(&mut self, now: Instant, force: bool) {
        if self.broken {
            return;
        }
        let value = self.available_count;
        if !force && self.last_written == Some(value) && self.pending.is_none() {
            return;
        }
        self.pending = Some(value);
        if force {
            self.last_unimportant = None;
        }
        self.flush(now);
    }

    fn flush(&mut self, now: Instant) {
        if self.broken || self.in_flight.is_some() || self.blocked {
            return;
        }
        let Some(value) = self.pending else { return };
        if self.last_written == Some(value) {
            self.pending = None;
            return;
        }
        if !self.is_important(value) {
            if let Some(last) = self.last_unimportant {
                if now < last + STATUS_COALESCE {
                    self.coalesce_at.get_or_insert(last + STATUS_COALESCE);
                    return;
                }
            }
            self.last_unimportant = Some(now);
        }
        self.pending = None;
        self.in_flight = Some(value);
        self.outputs.push_back(ChildOutput::WriteStatus(value));
    }

    fn update_accepting(&mut self) {
        let accepting = !self.listeners_closed && !self.master_dead && self.available_count > 0;
        if accepting != self.accepting {
            self.accepting = accepting;
            self.outputs.push_back(ChildOutput::SetAccepting(accepting));
        }
    }

    fn close_listeners(&mut self) {
        if self.listeners_closed {
            return;
        }
        self.listeners_closed = true;
        if self.accepting {
            self.accepting = false;
            self.outputs.push_back(ChildOutput::SetAccepting(false));
        }
        self.outputs.push_back(ChildOutput::CloseListeners);
    }

    /// §4.4: stop accepting, freeze the budget, report 0, then exit now, after the clients, or
    /// after a grace period.
    fn on_master_dead(&mut self, now: Instant) {
        if self.master_dead {
            return;
        }
        self.master_dead = true;
        self.close_listeners();
        self.total_available = self.clients;
        self.available_count = 0;
        self.service_count_left = Some(self.clients);
        self.report(now, true);
        if self.clients == 0 {
            self.exit(0);
        } else if self.config.die_with_master {
            self.outputs.push_back(ChildOutput::DieCallback);
            self.die_at = Some(now + DIE_WITH_MASTER_TIMEOUT);
        }
    }

    fn exit(&mut self, code: i32) {
        self.exited = true;
        self.outputs.push_back(ChildOutput::Exit(code));
    }

    /// Checks the machine's invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        if !self.master_dead && self.clients + self.available_count < self.total_available {
            return Err(format!(
                "clients {} + available {} < total {}",
                self.clients, self.available_count, self.total_available
            ));
        }
        if let Some(left) = self.service_count_left {
            if left < self.total_available.saturating_sub(self.clients) {
                return Err(format!("budget {left} below free slots"));
            }
        }
        if self.broken && self.pending.is_some() {
            return Err("a value is pending on a broken pipe".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(client_limit: u32, service_count: u32) -> Child {
        Child::new(ChildConfig {
            client_limit,
            service_count,
            die_with_master: true,
            is_login: false,
            never_idle_die: false,
        })
    }

    fn drain(c: &mut Child, now: Instant) -> Vec<ChildOutput> {
        let mut out = Vec::new();
        while let Some(o) = c.poll_output() {
            if let ChildOutput::WriteStatus(_) = o {
                c.handle(ChildInput::StatusWritten, now);
            }
            out.push(o);
            assert!(c.check_invariants().is_ok(), "{:?}", c.check_invariants());
        }
        out
    }

    const T0: Instant = Instant::from_millis(10_000);

    #[test]
    fn the_first_status_is_sent_at_init_end_with_every_slot_free() {
        let mut c = child(5, 0);
        c.handle(ChildInput::InitDone, T0);
        assert_eq!(
            drain(&mut c, T0),
            vec![ChildOutput::WriteStatus(5), ChildOutput::SetAccepting(true)]
        );
    }

    #[test]
    fn becoming_full_or_free_again_is_important_and_the_rest_is_coalesced_to_once_a_second() {
        // §1.4 coalescing.
        let mut c = child(3, 0);
        c.handle(ChildInput::InitDone, T0);
        drain(&mut c, T0);
        c.handle(ChildInput::Accepted, T0);
        assert_eq!(drain(&mut c, T0), vec![ChildOutput::WriteStatus(2)]);
        let t1 = T0 + Duration::from_millis(100);
        c.handle(ChildInput::Accepted, t1);
        assert_eq!(drain(&mut c, t1), vec![], "unimportant, within the second");
        assert_eq!(c.poll_timeout(), Some(T0 + STATUS_COALESCE));
        c.handle(ChildInput::Accepted, t1);
        assert_eq!(
            drain(&mut c, t1),
            vec![
                ChildOutput::WriteStatus(0),
                ChildOutput::SetAccepting(false)
            ],
            "full: important, at once"
        );
        c.handle(ChildInput::ClientClosed, t1);
        assert_eq!(
            drain(&mut c, t1),
            vec![ChildOutput::WriteStatus(1), ChildOutput::SetAccepting(true)],
            "free again after 0: important"
        );
    }

    #[test]
    fn service_count_retires_slots_and_exits_when_spent() {
        // §2.5: client_limit 2, service_count 3.
        let mut c = child(2, 3);
        c.handle(ChildInput::InitDone, T0);
        drain(&mut c, T0);
        c.handle(ChildInput::Accepted, T0);
        c.handle(ChildInput::Accepted, T0);
        c.handle(ChildInput::ClientClosed, T0); // budget 3 > total 2: slot freed, budget 2
        assert_eq!(c.available_count(), 1);
        c.handle(ChildInput::Accepted, T0);
        c.handle(ChildInput::ClientClosed, T0); // budget 2 == total 2: retired
        assert_eq!(c.available_count(), 0);
        let out = drain(&mut c, T0);
        assert!(!out.contains(&ChildOutput::Exit(0)));
        c.handle(ChildInput::ClientClosed, T0);
        assert!(drain(&mut c, T0).contains(&ChildOutput::Exit(0)));
    }

    #[test]
    fn the_last_permitted_connection_closes_the_listeners_early() {
        let mut c = child(1, 1);
        c.handle(ChildInput::InitDone, T0);
        drain(&mut c, T0);
        c.handle(ChildInput::Accepted, T0);
        let out = drain(&mut c, T0);
        assert!(out.contains(&ChildOutput::CloseListeners), "{out:?}");
        c.handle(ChildInput::ClientClosed, T0);
        assert_eq!(drain(&mut c, T0), vec![ChildOutput::Exit(0)]);
    }

    #[test]
    fn an_idle_kill_request_is_refused_while_serving_and_the_status_resent() {
        let mut c = child(2, 0);
        c.handle(ChildInput::InitDone, T0);
        drain(&mut c, T0);
        c.handle(ChildInput::Accepted, T0);
        drain(&mut c, T0);
        c.handle(ChildInput::IdleKillRequest, T0);
        assert_eq!(drain(&mut c, T0), vec![ChildOutput::WriteStatus(1)]);
        c.handle(ChildInput::ClientClosed, T0 + Duration::from_secs(5));
        drain(&mut c, T0 + Duration::from_secs(5));
        c.handle(ChildInput::IdleKillRequest, T0 + Duration::from_secs(6));
        assert_eq!(drain(&mut c, T0), vec![ChildOutput::Exit(0)]);
    }

    #[test]
    fn when_the_master_dies_an_idle_process_exits_and_a_busy_one_finishes_or_is_cut_after_30s() {
        // §4.4.
        let mut idle = child(2, 0);
        idle.handle(ChildInput::InitDone, T0);
        drain(&mut idle, T0);
        idle.handle(ChildInput::MasterDead, T0);
        let out = drain(&mut idle, T0);
        assert!(
            out.contains(&ChildOutput::CloseListeners) && out.contains(&ChildOutput::Exit(0)),
            "{out:?}"
        );

        let mut busy = child(2, 0);
        busy.handle(ChildInput::InitDone, T0);
        busy.handle(ChildInput::Accepted, T0);
        drain(&mut busy, T0);
        busy.handle(ChildInput::MasterDead, T0);
        let out = drain(&mut busy, T0);
        assert!(
            out.contains(&ChildOutput::WriteStatus(0)) && out.contains(&ChildOutput::DieCallback),
            "{out:?}"
        );
        busy.handle(ChildInput::Timeout, T0 + Duration::from_secs(29));
        assert!(drain(&mut busy, T0).is_empty());
        busy.handle(ChildInput::Timeout, T0 + DIE_WITH_MASTER_TIMEOUT);
        assert_eq!(drain(&mut busy, T0), vec![ChildOutput::Exit(0)]);

        let mut patient = Child::new(ChildConfig {
            die_with_master: false,
            ..busy.config.clone()
        });
        patient.handle(ChildInput::InitDone, T0);
        patient.handle(ChildInput::Accepted, T0);
        patient.handle(ChildInput::MasterDead, T0);
        drain(&mut patient, T0);
        assert_eq!(
            patient.poll_timeout(),
            None,
            "shutdown_clients = no: no deadline"
        );
        patient.handle(ChildInput::ClientClosed, T0);
        assert!(drain(&mut patient, T0).contains(&ChildOutput::Exit(0)));
    }

    #[test]
    fn a_broken_status_pipe_is_never_written_again_and_eagain_keeps_only_important_values() {
        let mut c = child(3, 0);
        c.handle(ChildInput::InitDone, T0);
        assert_eq!(c.poll_output(), Some(ChildOutput::WriteStatus(3)));
        assert_eq!(c.poll_output(), Some(ChildOutput::SetAccepting(true)));
        c.handle(ChildInput::StatusWouldBlock, T0);
        assert_eq!(c.poll_output(), None, "nothing while the pipe is full");
        c.handle(ChildInput::StatusWritable, T0);
        assert_eq!(
            drain(&mut c, T0),
            vec![ChildOutput::WriteStatus(3)],
            "the first status is important: retried"
        );
        c.handle(ChildInput::Accepted, T0 + Duration::from_millis(10));
        assert_eq!(c.poll_output(), Some(ChildOutput::WriteStatus(2)));
        c.handle(ChildInput::StatusWouldBlock, T0);
        c.handle(ChildInput::StatusWritable, T0);
        assert!(
            drain(&mut c, T0).is_empty(),
            "an unimportant value is dropped on EAGAIN"
        );
        c.handle(ChildInput::Accepted, T0);
        assert_eq!(
            c.poll_output(),
            None,
            "1 is unimportant and within the second"
        );
        c.handle(ChildInput::Accepted, T0);
        assert_eq!(c.poll_output(), Some(ChildOutput::WriteStatus(0)));
        c.handle(ChildInput::StatusBroken, T0);
        c.handle(ChildInput::ClientClosed, T0);
        c.handle(ChildInput::ClientClosed, T0);
        assert!(!drain(&mut c, T0)
            .iter()
            .any(|o| matches!(o, ChildOutput::WriteStatus(_))));
    }
}
