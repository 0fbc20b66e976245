//! The machine every service process runs for itself (reference §1.4, §2.5, §2.6 child side,
//! §4.4): its slots and service_count budget, the status it reports to the master and when,
//! its answer to an idle-kill request, and what it does when the master dies.
//!
//! State: `available_count` (free slots), `total_available` (slots that still exist),
//! `service_count_left` (connections it may still finish; `None` = unlimited) and the number of
//! clients. Invariants (checked by [`Child::check_invariants`], numbered as cited there):
//!
//! 1. `clients + available_count == total_available <= min(client_limit, service_count)`.
//! 2. `service_count_left >= total_available` when finite: a slot is retired rather than freed
//!    once the budget no longer exceeds the slots (§2.5), so the budget never drops below them.
//! 3. The driver is told to accept exactly while a slot is free, the process is initialised, its
//!    listeners are open, the master is alive and it has not exited.
//! 4. The listeners are closed once the budget is used up by the clients in progress (unless
//!    it is a login process, §2.5), and after the master died (§4.4).
//! 5. The status timer is armed only while writing is enabled and the value differs from the
//!    last one written; nothing is in flight once writing is disabled (§1.4).
//! 6. The die timer is armed only after the master died with clients left and a die callback
//!    (§4.4), and after the master died the budget is frozen: `available_count == 0` and
//!    `service_count_left == total_available`.
//! 7. After `Exit` no timer is armed.
//!
//! The contract is the master's: call [`Child::handle`] for each event, drain
//! [`Child::poll_output`], then wait for the next event or [`Child::poll_timeout`].

use smallvec::SmallVec;

use crate::signal::Signal;
use crate::time::{Duration, Instant};

/// Unimportant status updates are written at most once per second; a later one waits for this
/// timer (§1.4, §8).
pub const STATUS_COALESCE: Duration = Duration::from_millis(1000);

/// After the master died, a process with clients and a die callback is stopped this long after
/// the callback (§4.4, §8).
pub const DIE_CALLBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How many outputs not yet polled the machine keeps without allocating. One event emits at
/// most four (an idle process whose master dies: stop accepting, close the listeners, report
/// 0, exit); the answers to status writes that a driver feeds while it drains add one or two
/// each as they take one.
pub const OUTPUTS_INLINE: usize = 8;

/// What a service process is (from its environment and its program).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChildConfig {
    /// Effective `client_limit` (at least 1; 0 is taken as 1).
    pub client_limit: u32,
    /// `service_count`: connections to finish before exiting; 0 = unlimited.
    pub service_count: u32,
    /// The "never idle-die" flag: an idle-kill SIGINT is ignored (§2.6).
    pub never_idle_die: bool,
    /// Die with the master (`shutdown_clients = yes`, §4.4).
    pub die_with_master: bool,
    /// The program has a die callback to call when the master dies with clients left (§4.4).
    pub has_die_callback: bool,
    /// A login process: it has an overflow callback, so it keeps its listeners while its last
    /// permitted connection is in progress (§2.5, §2.8).
    pub is_login: bool,
    /// Started with an already-connected client ("std client" mode): one slot is taken at
    /// start (§1.4).
    pub starts_with_client: bool,
}

/// One event for a child.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Input {
    /// Initialisation is over: the initial status goes out and accepting starts (§1.4).
    InitDone,
    /// The driver accepted one connection (only while accepting is on).
    Accepted,
    /// A connection finished.
    ClientClosed,
    /// The time of `poll_timeout()` has come. Early or repeated timeouts do nothing.
    Timeout,
    /// A signal: INT = idle-kill request, TERM = stop, QUIT = close the listeners. Others are
    /// not the child machine's (USR1 is the login machine's or the log process's).
    Signal(Signal),
    /// The master-dead pipe reported an error: the master is gone (§4.4).
    MasterDead,
    /// The last `WriteStatus` was written whole.
    StatusWritten,
    /// The last `WriteStatus` failed with EAGAIN: the pipe is full.
    StatusWouldBlock,
    /// The last `WriteStatus` failed otherwise (EPIPE, a short write): writing stops forever.
    StatusWriteFailed,
    /// The status pipe became writable (after `AwaitStatusWritable`).
    StatusWritable,
    /// The program's idle-die veto (the indexer's callback, §2.6): while set, an idle-kill
    /// request is refused.
    IdleDieVeto(bool),
}

/// One action for the driver.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write one status record with this `available_count` (`wire::status`), in one `write()`,
    /// and report `StatusWritten`, `StatusWouldBlock` or `StatusWriteFailed`.
    WriteStatus {
        /// Free slots.
        available_count: u32,
    },
    /// Watch the status pipe for writability once and report `StatusWritable`.
    AwaitStatusWritable,
    /// Accept connections from the listeners as they come (on), or stop watching them (off).
    /// Each change is a fresh registration: connections already waiting must be seen.
    SetAccepting {
        /// Accept.
        on: bool,
    },
    /// Close every listening fd: this process will never accept again.
    CloseListeners,
    /// Close the connection just accepted without a word: no slot was free (a driver that
    /// accepted while accepting was off). It is not a client.
    Refuse,
    /// Call the program's die callback: the master died and clients remain (§4.4).
    DieCallback,
    /// Exit the process with this status.
    Exit(i32),
}

pub use crate::violation::Violation;

/// A status write handed to the driver and not yet reported.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct InFlight {
    /// The value written.
    available_count: u32,
    /// Whether it was important (retried when the pipe is writable again).
    important: bool,
}

/// The machine of one service process.
///
/// ```
/// use roost_core::child::{Child, ChildConfig, Input, Output};
/// use roost_core::time::Instant;
///
/// let config = ChildConfig {
///     client_limit: 1,
///     service_count: 1,
///     never_idle_die: false,
///     die_with_master: true,
///     has_die_callback: false,
///     is_login: false,
///     starts_with_client: false,
/// };
/// let now = Instant::ZERO;
/// let mut child = Child::new(config, now);
/// let mut seen = Vec::new();
/// for input in [Input::InitDone, Input::Accepted, Input::ClientClosed] {
///     child.handle(input, now);
///     while let Some(output) = child.poll_output() {
///         if let Output::WriteStatus { .. } = output {
///             // write wire::status::StatusRecord { pid, uid, available_count }.encode()
///             child.handle(Input::StatusWritten, now);
///         }
///         seen.push(output);
///     }
/// }
/// assert_eq!(seen.last(), Some(&Output::Exit(0)), "service_count 1: one connection, then exit");
/// ```
#[derive(Clone, Debug)]
pub struct Child {
    /// What it is.
    config: ChildConfig,
    /// The time of the last input.
    now: Instant,
    /// Free slots.
    available_count: u32,
    /// Slots that still exist (shrinks as the budget runs out, §2.5).
    total_available: u32,
    /// Connections it may still finish; `None` = unlimited.
    service_count_left: Option<u32>,
    /// Connections in progress.
    clients: u32,
    /// `InitDone` came.
    initialized: bool,
    /// The driver was last told to accept.
    accepting: bool,
    /// The listeners were closed.
    listeners_closed: bool,
    /// The master died.
    master_dead: bool,
    /// `Exit` was emitted.
    exited: bool,
    /// The idle-die veto is set.
    veto: bool,
    /// Writing status is disabled forever (EPIPE).
    status_disabled: bool,
    /// The last value written whole, and when.
    last_written: Option<(u32, Instant)>,
    /// A write not yet reported.
    in_flight: Option<InFlight>,
    /// Another update came while a write was in flight: `Some(force)`.
    pending: Option<bool>,
    /// Waiting for the pipe to become writable.
    awaiting_writable: bool,
    /// The unimportant-update timer (§1.4).
    status_timer: Option<Instant>,
    /// The forced exit after the die callback (§4.4).
    die_timer: Option<Instant>,
    /// Outputs not yet polled: `outputs[next_output..]`.
    outputs: SmallVec<[Output; OUTPUTS_INLINE]>,
    /// The next output `poll_output` returns.
    next_output: usize,
}

impl Child {
    /// A process that has just started (before `InitDone`).
    pub fn new(config: ChildConfig, now: Instant) -> Child {
        let client_limit = config.client_limit.max(1);
        let total_available = match config.service_count {
            0 => client_limit,
            count => client_limit.min(count),
        };
        let clients = u32::from(config.starts_with_client);
        Child {
            config,
            now,
            available_count: total_available - clients,
            total_available,
            service_count_left: (config.service_count > 0).then_some(config.service_count),
            clients,
            initialized: false,
            accepting: false,
            listeners_closed: false,
            master_dead: false,
            exited: false,
            veto: false,
            status_disabled: false,
            last_written: None,
            in_flight: None,
            pending: None,
            awaiting_writable: false,
            status_timer: None,
            die_timer: None,
            outputs: SmallVec::new(),
            next_output: 0,
        }
    }

    /// Handles one event at time `now` (never earlier than the last one).
    pub fn handle(&mut self, input: Input, now: Instant) {
        debug_assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now.max(self.now);
        if self.next_output == self.outputs.len() {
            self.outputs.clear();
            self.next_output = 0;
        }
        if self.exited {
            return;
        }
        match input {
            Input::InitDone => self.on_init_done(),
            Input::Accepted => self.on_accepted(),
            Input::ClientClosed => self.on_client_closed(),
            Input::Timeout => self.on_timeout(),
            Input::Signal(signal) => self.on_signal(signal),
            Input::MasterDead => self.on_master_dead(),
            Input::StatusWritten => self.on_status_written(),
            Input::StatusWouldBlock => self.on_status_would_block(),
            Input::StatusWriteFailed => self.on_status_write_failed(),
            Input::StatusWritable => {
                if self.awaiting_writable {
                    self.awaiting_writable = false;
                    self.update_status(false);
                }
            }
            Input::IdleDieVeto(on) => self.veto = on,
        }
        if !self.exited {
            self.sync_accepting();
        }
        #[cfg(debug_assertions)]
        if let Err(violation) = self.check_invariants() {
            panic!("{violation}");
        }
    }

    /// The next action for the driver, in emission order.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.get(self.next_output).copied();
        match output {
            Some(_) => self.next_output += 1,
            None => {
                // Drained: the storage is used again from its start.
                self.outputs.clear();
                self.next_output = 0;
            }
        }
        output
    }

    /// When the driver must feed `Input::Timeout` next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.status_timer, self.die_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What this process is.
    pub fn config(&self) -> &ChildConfig {
        &self.config
    }

    /// Free slots.
    pub fn available_count(&self) -> u32 {
        self.available_count
    }

    /// Slots that still exist.
    pub fn total_available(&self) -> u32 {
        self.total_available
    }

    /// Connections it may still finish; `None` = unlimited.
    pub fn service_count_left(&self) -> Option<u32> {
        self.service_count_left
    }

    /// Connections in progress.
    pub fn clients(&self) -> u32 {
        self.clients
    }

    /// Whether the driver was last told to accept.
    pub fn is_accepting(&self) -> bool {
        self.accepting
    }

    /// Whether `InitDone` came.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// Whether the listeners are closed for good.
    pub fn listeners_closed(&self) -> bool {
        self.listeners_closed
    }

    /// Whether the master died.
    pub fn master_dead(&self) -> bool {
        self.master_dead
    }

    /// Whether `Exit` was emitted.
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    /// Whether status writing is disabled for good.
    pub fn status_disabled(&self) -> bool {
        self.status_disabled
    }

    /// The last `available_count` written whole.
    pub fn last_written(&self) -> Option<u32> {
        self.last_written.map(|(value, _)| value)
    }

    /// Whether the clients in progress use up the whole remaining budget: no connection will
    /// ever be accepted again (§2.5 "last permitted connection in progress", generalised to
    /// client_limit > 1).
    pub fn budget_used_up(&self) -> bool {
        self.service_count_left == Some(self.clients)
    }

    fn on_init_done(&mut self) {
        if self.initialized {
            return;
        }
        self.initialized = true;
        // The initial status always goes out: it is what the master's 30 s timer waits for.
        self.update_status(false);
        self.close_listeners_if_budget_used_up();
    }

    fn on_accepted(&mut self) {
        if !self.accepting || self.available_count == 0 {
            self.outputs.push(Output::Refuse);
            return;
        }
        self.available_count -= 1;
        self.clients += 1;
        self.update_status(false);
        self.close_listeners_if_budget_used_up();
    }

    /// §2.5: a finished connection frees its slot, or retires it when the remaining budget no
    /// longer exceeds the slots; the last one ends the process.
    fn on_client_closed(&mut self) {
        if self.clients == 0 {
            return;
        }
        self.clients -= 1;
        match self.service_count_left {
            Some(left) if left == self.total_available => {
                self.total_available -= 1;
                self.service_count_left = Some(left - 1);
            }
            left => {
                self.service_count_left = left.map(|l| l - 1);
                self.available_count += 1;
            }
        }
        if self.service_count_left == Some(0) {
            self.exit(0);
            return;
        }
        self.update_status(false);
    }

    fn on_timeout(&mut self) {
        let now = self.now;
        if self.die_timer.is_some_and(|at| at <= now) {
            self.die_timer = None;
            self.exit(0);
            return;
        }
        if self.status_timer.is_some_and(|at| at <= now) {
            self.status_timer = None;
            self.update_status(false);
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Int => self.on_idle_kill_request(),
            Signal::Term => self.exit(0),
            Signal::Quit => self.close_listeners(),
            Signal::Hup | Signal::Kill | Signal::Usr1 => {}
        }
    }

    /// §2.6 child side: the master proposes, the child decides.
    fn on_idle_kill_request(&mut self) {
        if self.config.never_idle_die {
            return;
        }
        if self.clients > 0 || self.veto {
            // Refused: say so at once, so the master's confirmation timer sees a live process
            // (§1.4). The original re-sends only on a veto; a refusal because of clients is
            // told too, so the master never declares a busy process as ignoring SIGINT.
            self.update_status(true);
            return;
        }
        self.exit(0);
    }

    /// §4.4: stop accepting, freeze the budget, report 0, then exit now, after the die
    /// callback, or when the last client finishes.
    fn on_master_dead(&mut self) {
        if self.master_dead {
            return;
        }
        self.master_dead = true;
        self.close_listeners();
        self.total_available = self.clients;
        self.service_count_left = Some(self.clients);
        self.available_count = 0;
        self.update_status(false);
        if self.clients == 0 {
            self.exit(0);
        } else if self.config.die_with_master {
            if self.config.has_die_callback {
                self.outputs.push(Output::DieCallback);
                self.die_timer = Some(self.now + DIE_CALLBACK_TIMEOUT);
            } else {
                self.exit(0);
            }
        }
    }

    fn on_status_written(&mut self) {
        let Some(written) = self.in_flight.take() else {
            return;
        };
        self.last_written = Some((written.available_count, self.now));
        self.awaiting_writable = false;
        if let Some(force) = self.pending.take() {
            self.update_status(force);
        }
    }

    /// §1.4: an important update waits for the pipe; an unimportant one is dropped (the next
    /// change compares against the last value written, so it is not lost for good).
    fn on_status_would_block(&mut self) {
        let Some(written) = self.in_flight.take() else {
            return;
        };
        if written.important && !self.awaiting_writable {
            self.awaiting_writable = true;
            self.outputs.push(Output::AwaitStatusWritable);
        }
        if let Some(force) = self.pending.take() {
            if !self.awaiting_writable {
                self.update_status(force);
            }
        }
    }

    fn on_status_write_failed(&mut self) {
        if self.in_flight.take().is_none() {
            return;
        }
        self.status_disabled = true;
        self.pending = None;
        self.awaiting_writable = false;
        self.status_timer = None;
    }

    /// The coalescing rules of §1.4. `force` re-sends even an unchanged value, at once.
    fn update_status(&mut self, force: bool) {
        if self.status_disabled || !self.initialized || self.exited {
            return;
        }
        if self.in_flight.is_some() {
            self.pending = Some(self.pending.unwrap_or(false) || force);
            return;
        }
        let value = self.available_count;
        let last = self.last_written;
        if !force && last.is_some_and(|(v, _)| v == value) {
            self.status_timer = None;
            self.awaiting_writable = false;
            return;
        }
        let important = match last {
            None => true,
            Some((last_value, _)) => value == 0 || last_value == 0,
        };
        let same_second = last.is_some_and(|(_, at)| at.as_secs() == self.now.as_secs());
        if !force && !important && same_second {
            // Armed or reset, as the original's timeout_reset() does.
            self.status_timer = Some(self.now + STATUS_COALESCE);
            self.awaiting_writable = false;
            return;
        }
        self.status_timer = None;
        self.in_flight = Some(InFlight {
            available_count: value,
            important,
        });
        self.outputs.push(Output::WriteStatus {
            available_count: value,
        });
    }

    fn close_listeners_if_budget_used_up(&mut self) {
        if !self.config.is_login && self.budget_used_up() {
            self.close_listeners();
        }
    }

    fn close_listeners(&mut self) {
        if self.listeners_closed {
            return;
        }
        self.listeners_closed = true;
        self.sync_accepting();
        self.outputs.push(Output::CloseListeners);
    }

    fn want_accepting(&self) -> bool {
        self.initialized
            && !self.listeners_closed
            && !self.master_dead
            && !self.exited
            && self.available_count > 0
    }

    fn sync_accepting(&mut self) {
        let want = self.want_accepting();
        if want != self.accepting {
            self.accepting = want;
            self.outputs.push(Output::SetAccepting { on: want });
        }
    }

    fn exit(&mut self, code: i32) {
        if self.exited {
            return;
        }
        if self.accepting {
            self.accepting = false;
            self.outputs.push(Output::SetAccepting { on: false });
        }
        self.exited = true;
        self.status_timer = None;
        self.die_timer = None;
        self.in_flight = None;
        self.pending = None;
        self.awaiting_writable = false;
        self.outputs.push(Output::Exit(code));
    }

    /// Checks every invariant of the module header.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        let fail = |rule: u32, detail: String| {
            Err(Violation {
                machine: "child",
                rule,
                detail,
            })
        };
        let client_limit = self.config.client_limit.max(1);
        let cap = match self.config.service_count {
            0 => client_limit,
            count => client_limit.min(count),
        };
        if self.clients + self.available_count != self.total_available || self.total_available > cap
        {
            return fail(
                1,
                format!(
                    "clients {} + available_count {} vs total_available {} (cap {cap})",
                    self.clients, self.available_count, self.total_available
                ),
            );
        }
        if let Some(left) = self.service_count_left {
            if left < self.total_available {
                return fail(
                    2,
                    format!(
                        "service_count_left {left} < total_available {}",
                        self.total_available
                    ),
                );
            }
        }
        if !self.exited && self.accepting != self.want_accepting() {
            return fail(
                3,
                format!("accepting is {} but should not be", self.accepting),
            );
        }
        if self.exited && self.accepting {
            return fail(3, "accepting after exit".into());
        }
        let must_close = self.master_dead
            || (!self.config.is_login && self.initialized && self.budget_used_up());
        if must_close && !self.listeners_closed && !self.exited {
            return fail(
                4,
                "listeners open after the budget was used up or the master died".into(),
            );
        }
        if self.status_timer.is_some()
            && (self.status_disabled || self.last_written() == Some(self.available_count))
        {
            return fail(5, "status timer armed with nothing to write".into());
        }
        if self.status_disabled && (self.in_flight.is_some() || self.awaiting_writable) {
            return fail(
                5,
                "status write in flight after writing was disabled".into(),
            );
        }
        if self.die_timer.is_some()
            && !(self.master_dead
                && self.config.die_with_master
                && self.config.has_die_callback
                && self.clients > 0)
        {
            return fail(
                6,
                "die timer armed without a dead master and clients".into(),
            );
        }
        if self.master_dead
            && (self.available_count != 0 || self.service_count_left != Some(self.total_available))
        {
            return fail(6, "budget not frozen after the master died".into());
        }
        if self.exited && self.poll_timeout().is_some() {
            return fail(7, "timer armed after exit".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
