//! A login process's table of connections (reference §2.8 login side), around its own
//! [`Child`] machine (slots, budget, status, idle kill, master death).
//!
//! It owns the clients a login process holds, ordered by arrival (ties by id): pre-login ones
//! (`PreLogin`, `InAuth` while an auth or anvil lookup holds a reference, `HandingOff` while a
//! master-auth request is pending) and `LoggedIn` ones (proxied or TLS-proxied sessions, which
//! are never killed). It owns the "all processes full" state the master publishes (re-read on
//! SIGUSR1), and decides what an overflow does: when a listener is readable, the process has no
//! free slot and the service is full, the oldest killable pre-login client is told `Connection
//! queue full` and destroyed, at once when the process has several slots, after the overflow
//! delay when it has one. Pre-login clients are disconnected after the pre-auth timeout. A client
//! whose auth or anvil lookup has not come back within the auth timeout is reported
//! (`AuthTimedOut`), so that the driver gives up on the peer that does not answer instead of
//! leaving the client to the pre-auth timeout.
//!
//! Invariants (checked by [`Login::check_invariants`]):
//!
//! 1. The child's invariants hold.
//! 2. The table holds exactly as many clients as the child counts.
//! 3. The arrival index holds exactly the clients that are neither logged in nor closing, keyed
//!    by `(arrival, id)`.
//! 4. A client being killed is in the table and closing; a delayed kill is only scheduled by a
//!    process with at most `delayed_kill_max_slots` slots.
//! 5. The 1000 ms re-check timer is armed only while the service is not known to be full.
//! 6. The listening mode told to the driver is the one the state asks for.
//! 7. After `Exit` nothing is armed.
//! 8. The auth index holds exactly the clients in `InAuth` whose lookup has not yet been
//!    reported late, keyed by `(since, id)`.
//!
//! Every client ends with exactly one `ClientClosed` from the driver, also one the machine told
//! to `Disconnect`: its slot is freed only then (a client killed in the middle of an auth lookup
//! is freed when the lookup returns, as in the original).

use core::fmt;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::child::{self, Child, ChildConfig};
use crate::master::LOGIN_NOTIFY_INTERVAL;
use crate::signal::Signal;
use crate::time::{Duration, Instant};

/// A pre-login client is disconnected this long after it connected (§8: 180 s).
pub const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(180);

/// An auth lookup (with the anvil penalty lookup and wait before it, at most 15 s) that has not
/// come back after this long is given up: the client hears a temporary failure at once. The
/// original leaves it to the auth server's 150 s; a login that hangs for minutes because auth
/// or anvil is stuck is worse than one that says "try again".
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// The original's re-check period: while the service is not full and this process has no free
/// slot, the state is re-read this often, a safety net against a lost SIGUSR1 (§2.8, §8).
/// roost's period is [`OverflowPolicy::recheck_interval`].
pub const FULL_RECHECK_INTERVAL: Duration = Duration::from_millis(1000);

/// Which pre-login client an overflow kills.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KillPolicy {
    /// The original (§2.8): walking from the oldest, the first client that is neither in an
    /// auth/anvil lookup nor handing off; if none qualifies, the oldest anyway.
    OldestKillableElseOldest,
    /// Only a client that is neither in a lookup nor handing off; none qualifies, none dies.
    /// Killing a client mid-lookup frees its slot only when the lookup returns, so this may
    /// serve a flood better (issue 6 decides with sim evidence).
    OldestKillableOnly,
}

/// How a login process answers an overflow. The values of the original are
/// [`ORIGINAL_OVERFLOW_POLICY`]; reference §10 measured them as slow under a pre-auth flood, and
/// issue 6 chose [`DEFAULT_OVERFLOW_POLICY`] with sim evidence.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct OverflowPolicy {
    /// The longest delay before a one-slot process kills its client (the delay of a client that
    /// just connected).
    pub delay_max: Duration,
    /// Clients this old or older wait no delay beyond the jitter; younger ones wait
    /// proportionally longer, so the oldest die first.
    pub age_window: Duration,
    /// The jitter added to the delay is the driver's random number modulo this many
    /// milliseconds, so clients of the same age do not all die together (0 = no jitter).
    pub jitter_span_ms: u32,
    /// A process with at most this many slots delays its kill; one with more kills at once.
    pub delayed_kill_max_slots: u32,
    /// Which client dies.
    pub kill_policy: KillPolicy,
    /// For [`LOGIN_NOTIFY_INTERVAL`] after this process wanted to kill and found the service no
    /// longer full (another process's kill flipped the state), while it is still not known to
    /// be full, has no free slot and holds a client an overflow could kill, the state is
    /// re-read this often instead of every [`FULL_RECHECK_INTERVAL`]: that is the window in
    /// which the master holds its SIGUSR1 back (§2.8), and the original waits it out. Outside
    /// that window (normal operation, sessions being proxied) nothing changes.
    pub victim_recheck_interval: Duration,
}

/// Dovecot 2.3's overflow answer (§2.8): `100 − clamp(age_ms, 0, 10000) × 100 / 10000` ms plus
/// 0–9 ms of jitter for a one-slot process, at once otherwise; the oldest killable client dies.
pub const ORIGINAL_OVERFLOW_POLICY: OverflowPolicy = OverflowPolicy {
    delay_max: Duration::from_millis(100),
    age_window: Duration::from_secs(10),
    jitter_span_ms: 10,
    delayed_kill_max_slots: 1,
    kill_policy: KillPolicy::OldestKillableElseOldest,
    victim_recheck_interval: FULL_RECHECK_INTERVAL,
};

/// The policy roost uses unless configured otherwise (issue 6): the original's kill (a one-slot
/// process waits 0–100 ms scaled down by its client's age, so older clients die first, plus
/// 0–9 ms of jitter), and for the 2 s after the state flipped to "not full" a process holding a
/// killable client re-reads it every 20 ms instead of every second.
///
/// Evidence (`cargo run -p sim --release -- policies`, sim/scenarios/19_preauth_flood_security.ron:
/// 1,000 idle pre-auth connections against service_count = 1, process_limit 100, backlog 100,
/// then 20 logins; 10 seeds pooled). With the original's master (SIGUSR1 at most every 2 s):
/// the original policy serves 200/200 with p50 3,985 ms, p99 6,854 ms. roost's master also
/// tells the processes started since its last burst at once when the service fills; with it
/// the original policy gives p99 1,818 ms and this one 200/200, p50 10 ms, p99 1,007 ms (the
/// rest is a SYN retransmitted after the full accept queue dropped it, 1 s). Faster policies
/// lose legitimate users: the jitter alone (no age-scaled delay) kills a young client before
/// it can log in (190/200; 19/20 in scenario 19 even with the 20 ms re-check), and killing at
/// once in every full process (`delayed_kill_max_slots` 0, p99 15 ms) is a herd: with 100 slow
/// pre-login users holding every slot, one newcomer kills all 100 (200/1,200 served against
/// 1,180/1,200).
pub const DEFAULT_OVERFLOW_POLICY: OverflowPolicy = OverflowPolicy {
    delay_max: Duration::from_millis(100),
    age_window: Duration::from_secs(10),
    jitter_span_ms: 10,
    delayed_kill_max_slots: 1,
    kill_policy: KillPolicy::OldestKillableElseOldest,
    victim_recheck_interval: Duration::from_millis(20),
};

impl OverflowPolicy {
    /// The delay before a one-slot process kills a client of this age, given the driver's
    /// random number `jitter`.
    pub fn delay(&self, age: Duration, jitter: u32) -> Duration {
        // u128 and saturation: a configured window or maximum of any size must not overflow.
        let max = self.delay_max.as_millis();
        let window = self.age_window.as_millis();
        let age = age.as_millis().min(window);
        let by_age = match age.saturating_mul(max).checked_div(window) {
            Some(part) => max - part.min(max),
            None => 0,
        };
        let by_age = u64::try_from(by_age).unwrap_or(u64::MAX);
        let jitter = match self.jitter_span_ms {
            0 => 0,
            span => u64::from(jitter % span),
        };
        Duration::from_millis(by_age.saturating_add(jitter))
    }
}

/// A client, as the driver names it. The driver picks ids (e.g. a connection counter); an id
/// must not be reused while its client is in the table.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client#{}", self.0)
    }
}

/// Where a client is in its login.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ClientState {
    /// Connected, not logged in, nothing outstanding: killable.
    PreLogin,
    /// An auth or anvil lookup holds a reference to it.
    InAuth,
    /// Logged in; the master-auth request that hands it to a post-login process is pending.
    HandingOff,
    /// Logged in and proxied (TLS or a remote proxy): never killed, no pre-auth timeout.
    LoggedIn,
}

/// Why the machine disconnects a client. `Display` is the text the client is sent (POP3 prints
/// it after `-ERR `, IMAP after `* BYE `).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Killed to make room: the service is full (§2.8).
    QueueFull,
    /// The pre-auth timeout, nothing outstanding.
    Inactivity,
    /// The pre-auth timeout during an auth lookup.
    InactivityDuringAuth,
    /// The pre-auth timeout while handing off to a post-login process.
    FinishingLogin,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DisconnectReason::QueueFull => "Connection queue full",
            DisconnectReason::Inactivity => "Disconnected for inactivity.",
            DisconnectReason::InactivityDuringAuth => {
                "Disconnected for inactivity during authentication."
            }
            DisconnectReason::FinishingLogin => "Timeout while finishing login.",
        })
    }
}

/// What a login process is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LoginConfig {
    /// Effective `client_limit`.
    pub client_limit: u32,
    /// `service_count`; 0 = unlimited.
    pub service_count: u32,
    /// Die with the master (`shutdown_clients`).
    pub die_with_master: bool,
    /// The program has a die callback (§4.4: login processes kill idle proxies, …).
    pub has_die_callback: bool,
    /// The pre-auth timeout ([`PRE_AUTH_TIMEOUT`] by default).
    pub pre_auth_timeout: Duration,
    /// The auth timeout ([`AUTH_TIMEOUT`] by default).
    pub auth_timeout: Duration,
    /// The overflow answer ([`DEFAULT_OVERFLOW_POLICY`] by default).
    pub overflow: OverflowPolicy,
}

impl LoginConfig {
    /// A login process with these limits and every other setting at its default.
    pub fn new(client_limit: u32, service_count: u32) -> LoginConfig {
        LoginConfig {
            client_limit,
            service_count,
            die_with_master: true,
            has_die_callback: false,
            pre_auth_timeout: PRE_AUTH_TIMEOUT,
            auth_timeout: AUTH_TIMEOUT,
            overflow: DEFAULT_OVERFLOW_POLICY,
        }
    }

    /// The configuration of the child machine inside.
    pub fn child_config(&self) -> ChildConfig {
        ChildConfig {
            client_limit: self.client_limit,
            service_count: self.service_count,
            never_idle_die: false,
            die_with_master: self.die_with_master,
            has_die_callback: self.has_die_callback,
            is_login: true,
            starts_with_client: false,
        }
    }
}

/// One event for a login process.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Input {
    /// Initialisation is over (see [`child::Input::InitDone`]).
    InitDone,
    /// The driver accepted a connection (only in [`ListenMode::Accept`]).
    Accepted {
        /// The driver's id for it.
        client: ClientId,
    },
    /// A client moved on in its login.
    ClientState {
        /// The client.
        client: ClientId,
        /// Its new state. `LoggedIn` is final.
        state: ClientState,
    },
    /// A client's connection is gone and its resources released (also after `Disconnect`).
    ClientClosed {
        /// The client.
        client: ClientId,
    },
    /// A listener is readable in [`ListenMode::Overflow`].
    ListenerReadable {
        /// A uniformly random number the driver draws for the overflow jitter.
        jitter: u32,
    },
    /// The "all processes full" state, read from the notify fd (after `ReadFullState`). A read
    /// that fails is reported as not full: the original does not kill when it cannot tell.
    FullState {
        /// Full.
        full: bool,
    },
    /// The time of `poll_timeout()` has come.
    Timeout,
    /// A signal: USR1 = re-read the full state; INT, TERM, QUIT as for every child.
    Signal(Signal),
    /// The master-dead pipe reported an error.
    MasterDead,
    /// See [`child::Input::StatusWritten`].
    StatusWritten,
    /// See [`child::Input::StatusWouldBlock`].
    StatusWouldBlock,
    /// See [`child::Input::StatusWriteFailed`].
    StatusWriteFailed,
    /// See [`child::Input::StatusWritable`].
    StatusWritable,
}

/// How the driver watches the listeners.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ListenMode {
    /// Not at all.
    Off,
    /// Accept connections as they come; report each with `Accepted`.
    Accept,
    /// Watch without accepting; report readability with `ListenerReadable`.
    Overflow,
}

/// One action for the driver of a login process.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// See [`child::Output::WriteStatus`].
    WriteStatus {
        /// Free slots.
        available_count: u32,
    },
    /// See [`child::Output::AwaitStatusWritable`].
    AwaitStatusWritable,
    /// Watch the listeners this way from now on. Each change is a fresh registration:
    /// connections already waiting must be seen (mio: reregister).
    SetListening {
        /// The mode.
        mode: ListenMode,
    },
    /// Close every listening fd for good.
    CloseListeners,
    /// Read the notify fd's state (lseek, §2.8) and report it with `FullState`.
    ReadFullState,
    /// The client's auth (or anvil) lookup has been out for the auth timeout: give up on it,
    /// tell the client to try again, and report its state (`PreLogin`) as for any lookup that
    /// ends. Each lookup is reported once.
    AuthTimedOut {
        /// The client.
        client: ClientId,
    },
    /// Send the client `reason` in its protocol, close it, and report `ClientClosed` once its
    /// outstanding requests are gone.
    Disconnect {
        /// The client.
        client: ClientId,
        /// Why.
        reason: DisconnectReason,
    },
    /// Close the connection just accepted without a word; it is not a client (accepted out of
    /// turn, or its id is in use).
    Refuse,
    /// Call the program's die callback (§4.4).
    DieCallback,
    /// Exit the process with this status.
    Exit(i32),
}

pub use crate::violation::Violation;

/// One client in the table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Client {
    /// When it was accepted.
    created: Instant,
    /// Its login state.
    state: ClientState,
    /// Since when its lookup is out, until it comes back or is reported late.
    in_auth_since: Option<Instant>,
    /// Told to disconnect; waiting for its `ClientClosed`.
    closing: bool,
}

/// Where the overflow answer is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing under way.
    Idle,
    /// A readable listener found nobody to kill: stop watching until a client goes or the state
    /// is re-read.
    Blocked,
    /// A one-slot process kills after the overflow delay.
    Scheduled {
        /// When.
        at: Instant,
    },
    /// The delay expired; the state is being re-read before the kill.
    Confirming,
    /// A client was told `Connection queue full`; its slot comes back with its `ClientClosed`.
    Killing {
        /// The client.
        victim: ClientId,
    },
}

/// The machine of one login process.
///
/// The contract is the master's: call [`Login::handle`] for each event, drain
/// [`Login::poll_output`] (answering `WriteStatus` and `ReadFullState` with inputs), then wait
/// for the next event or [`Login::poll_timeout`].
///
/// ```
/// use roost_core::login::{ClientId, Input, ListenMode, Login, LoginConfig, Output};
/// use roost_core::time::Instant;
///
/// let now = Instant::ZERO;
/// let mut login = Login::new(LoginConfig::new(1, 1), now);
/// let mut inputs = vec![Input::InitDone];
/// let mut mode = ListenMode::Off;
/// while let Some(input) = inputs.pop() {
///     login.handle(input, now);
///     while let Some(output) = login.poll_output() {
///         match output {
///             Output::WriteStatus { .. } => inputs.push(Input::StatusWritten),
///             Output::ReadFullState => inputs.push(Input::FullState { full: false }),
///             Output::SetListening { mode: m } => mode = m,
///             _ => {}
///         }
///     }
/// }
/// assert_eq!(mode, ListenMode::Accept);
/// login.handle(Input::Accepted { client: ClientId(1) }, now);
/// assert_eq!(login.client_count(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Login {
    /// What it is.
    config: LoginConfig,
    /// Slots, budget, status, idle kill, master death.
    child: Child,
    /// The time of the last input.
    now: Instant,
    /// Every client.
    clients: BTreeMap<ClientId, Client>,
    /// Clients neither logged in nor closing, by arrival then id: the kill order and the
    /// pre-auth deadline order at once (the timeout is the same for all).
    arrival: BTreeSet<(Instant, ClientId)>,
    /// Clients whose lookup is out, by the time it went out: the auth deadline order.
    in_auth: BTreeSet<(Instant, ClientId)>,
    /// The master says all processes are full ("overflow allowed").
    full: bool,
    /// The overflow answer under way.
    phase: Phase,
    /// The mode last told to the driver.
    mode: ListenMode,
    /// The re-check timer.
    recheck: Option<Instant>,
    /// Until then the re-check runs at `victim_recheck_interval` (see [`OverflowPolicy`]).
    eager_until: Option<Instant>,
    /// `Exit` was emitted.
    exited: bool,
    /// Outputs not yet polled.
    outputs: VecDeque<Output>,
    /// Inputs handled since the last full invariant check (debug builds).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    inputs_since_check: usize,
}

impl Login {
    /// A login process that has just started.
    pub fn new(config: LoginConfig, now: Instant) -> Login {
        Login {
            config,
            child: Child::new(config.child_config(), now),
            now,
            clients: BTreeMap::new(),
            arrival: BTreeSet::new(),
            in_auth: BTreeSet::new(),
            full: false,
            phase: Phase::Idle,
            mode: ListenMode::Off,
            recheck: None,
            eager_until: None,
            exited: false,
            outputs: VecDeque::new(),
            inputs_since_check: 0,
        }
    }

    /// Handles one event at time `now` (never earlier than the last one).
    pub fn handle(&mut self, input: Input, now: Instant) {
        debug_assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = now.max(self.now);
        if self.exited {
            return;
        }
        match input {
            Input::InitDone => {
                self.feed_child(child::Input::InitDone);
                // A process forked while the state still says full must know it.
                self.outputs.push_back(Output::ReadFullState);
            }
            Input::Accepted { client } => self.on_accepted(client),
            Input::ClientState { client, state } => self.on_client_state(client, state),
            Input::ClientClosed { client } => self.on_client_closed(client),
            Input::ListenerReadable { jitter } => self.on_listener_readable(jitter),
            Input::FullState { full } => self.on_full_state(full),
            Input::Timeout => self.on_timeout(),
            Input::Signal(Signal::Usr1) => self.outputs.push_back(Output::ReadFullState),
            Input::Signal(signal) => self.feed_child(child::Input::Signal(signal)),
            Input::MasterDead => {
                self.phase = Phase::Idle;
                self.feed_child(child::Input::MasterDead);
            }
            Input::StatusWritten => self.feed_child(child::Input::StatusWritten),
            Input::StatusWouldBlock => self.feed_child(child::Input::StatusWouldBlock),
            Input::StatusWriteFailed => self.feed_child(child::Input::StatusWriteFailed),
            Input::StatusWritable => self.feed_child(child::Input::StatusWritable),
        }
        self.sync();
        #[cfg(debug_assertions)]
        {
            // The full check walks the table; with thousands of clients (performance mode under
            // a flood) a debug build checks every so many inputs instead of after each, so the
            // cost per input stays constant on average.
            self.inputs_since_check += 1;
            if self.inputs_since_check >= self.clients.len() / 32 {
                self.inputs_since_check = 0;
                if let Err(violation) = self.check_invariants() {
                    panic!("{violation}");
                }
            }
        }
    }

    /// The next action for the driver, in emission order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the driver must feed `Input::Timeout` next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.exited {
            return None;
        }
        let pre_auth = self
            .arrival
            .first()
            .map(|&(created, _)| created + self.config.pre_auth_timeout);
        let kill = match self.phase {
            Phase::Scheduled { at } => Some(at),
            _ => None,
        };
        let auth = self
            .in_auth
            .first()
            .map(|&(since, _)| since + self.config.auth_timeout);
        [
            self.child.poll_timeout(),
            pre_auth,
            kill,
            self.recheck,
            auth,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The child machine inside (slots, budget, status).
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// Whether the master's last known state is "all processes full".
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The listening mode last told to the driver.
    pub fn listen_mode(&self) -> ListenMode {
        self.mode
    }

    /// Whether `Exit` was emitted.
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    /// A client's state and whether it is closing, if it is in the table.
    pub fn client(&self, client: ClientId) -> Option<(ClientState, bool)> {
        self.clients.get(&client).map(|c| (c.state, c.closing))
    }

    /// Every client in the table, by id: its arrival, state, and whether it is closing.
    pub fn clients(&self) -> impl Iterator<Item = (ClientId, Instant, ClientState, bool)> + '_ {
        self.clients
            .iter()
            .map(|(&id, c)| (id, c.created, c.state, c.closing))
    }

    /// What this process is.
    pub fn config(&self) -> &LoginConfig {
        &self.config
    }

    /// Clients in the table.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The client an overflow would kill now, by the configured policy.
    pub fn overflow_victim(&self) -> Option<ClientId> {
        let mut candidates = self
            .arrival
            .iter()
            .map(|&(_, id)| (id, self.clients[&id].state));
        let oldest = self.arrival.first().map(|&(_, id)| id);
        match candidates.find(|&(_, state)| state == ClientState::PreLogin) {
            Some((id, _)) => Some(id),
            None => match self.config.overflow.kill_policy {
                KillPolicy::OldestKillableElseOldest => oldest,
                KillPolicy::OldestKillableOnly => None,
            },
        }
    }

    fn on_accepted(&mut self, client: ClientId) {
        if self.clients.contains_key(&client) || self.mode != ListenMode::Accept {
            self.outputs.push_back(Output::Refuse);
            return;
        }
        let before = self.child.clients();
        self.feed_child(child::Input::Accepted);
        if self.child.clients() == before {
            // The child refused it and said so.
            return;
        }
        let now = self.now;
        self.clients.insert(
            client,
            Client {
                created: now,
                state: ClientState::PreLogin,
                in_auth_since: None,
                closing: false,
            },
        );
        self.arrival.insert((now, client));
    }

    fn on_client_state(&mut self, id: ClientId, state: ClientState) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if client.closing || client.state == ClientState::LoggedIn {
            return;
        }
        let was = client.state;
        client.state = state;
        if state == ClientState::InAuth && was != ClientState::InAuth {
            client.in_auth_since = Some(self.now);
            self.in_auth.insert((self.now, id));
        } else if state != ClientState::InAuth {
            if let Some(since) = client.in_auth_since.take() {
                self.in_auth.remove(&(since, id));
            }
        }
        if state == ClientState::LoggedIn {
            // §2.8: logged-in clients leave the list and are never killed.
            self.arrival.remove(&(client.created, id));
        } else if state == ClientState::PreLogin && self.phase == Phase::Blocked {
            // A lookup returned: there may be someone to kill now.
            self.phase = Phase::Idle;
        }
    }

    fn on_client_closed(&mut self, id: ClientId) {
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        self.arrival.remove(&(client.created, id));
        if let Some(since) = client.in_auth_since {
            self.in_auth.remove(&(since, id));
        }
        if matches!(self.phase, Phase::Killing { victim } if victim == id)
            || self.phase == Phase::Blocked
        {
            self.phase = Phase::Idle;
        }
        self.feed_child(child::Input::ClientClosed);
    }

    /// §2.8: a readable listener while this process has no free slot and the service is full.
    fn on_listener_readable(&mut self, jitter: u32) {
        if self.mode != ListenMode::Overflow || self.phase != Phase::Idle {
            return;
        }
        if self.child.total_available() > self.config.overflow.delayed_kill_max_slots {
            self.kill_victim();
            return;
        }
        let Some(victim) = self.overflow_victim() else {
            self.phase = Phase::Blocked;
            return;
        };
        let age = self.now - self.clients[&victim].created;
        let at = self.now + self.config.overflow.delay(age, jitter);
        self.phase = Phase::Scheduled { at };
    }

    /// Destroys the policy's victim with `Connection queue full`, exactly one per overflow.
    fn kill_victim(&mut self) {
        let Some(victim) = self.overflow_victim() else {
            self.phase = Phase::Blocked;
            return;
        };
        self.disconnect(victim, DisconnectReason::QueueFull);
        self.phase = Phase::Killing { victim };
    }

    fn disconnect(&mut self, id: ClientId, reason: DisconnectReason) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.closing = true;
            self.arrival.remove(&(client.created, id));
            self.outputs
                .push_back(Output::Disconnect { client: id, reason });
        }
    }

    fn on_full_state(&mut self, full: bool) {
        let was_full = self.full;
        self.full = full;
        if !full && (was_full || self.phase == Phase::Confirming) {
            // The state just flipped (or flipped under a kill this process wanted): it may
            // flip back before the master is allowed to signal again.
            self.eager_until = Some(self.now + LOGIN_NOTIFY_INTERVAL);
        }
        match self.phase {
            Phase::Blocked if full => self.phase = Phase::Idle,
            Phase::Confirming => {
                self.phase = Phase::Idle;
                if full && self.child.available_count() == 0 {
                    self.kill_victim();
                }
            }
            _ => {}
        }
    }

    fn on_timeout(&mut self) {
        let now = self.now;
        self.feed_child(child::Input::Timeout);
        if self.exited {
            return;
        }
        while let Some(&(created, id)) = self.arrival.first() {
            if created + self.config.pre_auth_timeout > now {
                break;
            }
            let reason = match self.clients[&id].state {
                ClientState::InAuth => DisconnectReason::InactivityDuringAuth,
                ClientState::HandingOff => DisconnectReason::FinishingLogin,
                ClientState::PreLogin | ClientState::LoggedIn => DisconnectReason::Inactivity,
            };
            self.disconnect(id, reason);
        }
        while let Some(&(since, id)) = self.in_auth.first() {
            if since + self.config.auth_timeout > now {
                break;
            }
            self.in_auth.remove(&(since, id));
            if let Some(client) = self.clients.get_mut(&id) {
                client.in_auth_since = None;
                if !client.closing {
                    self.outputs.push_back(Output::AuthTimedOut { client: id });
                }
            }
        }
        if matches!(self.phase, Phase::Scheduled { at } if at <= now) {
            // Re-check that the service is still full before killing (§2.8).
            self.phase = Phase::Confirming;
            self.outputs.push_back(Output::ReadFullState);
        }
        if self.recheck.is_some_and(|at| at <= now) {
            self.recheck = None;
            self.outputs.push_back(Output::ReadFullState);
        }
    }

    /// Feeds the child and translates what it says.
    fn feed_child(&mut self, input: child::Input) {
        self.child.handle(input, self.now);
        while let Some(output) = self.child.poll_output() {
            match output {
                child::Output::WriteStatus { available_count } => self
                    .outputs
                    .push_back(Output::WriteStatus { available_count }),
                child::Output::AwaitStatusWritable => {
                    self.outputs.push_back(Output::AwaitStatusWritable)
                }
                child::Output::SetAccepting { .. } => self.sync_mode(),
                child::Output::CloseListeners => {
                    self.sync_mode();
                    self.outputs.push_back(Output::CloseListeners);
                }
                child::Output::Refuse => self.outputs.push_back(Output::Refuse),
                child::Output::DieCallback => self.outputs.push_back(Output::DieCallback),
                child::Output::Exit(code) => {
                    self.exited = true;
                    self.phase = Phase::Idle;
                    self.recheck = None;
                    self.sync_mode();
                    self.outputs.push_back(Output::Exit(code));
                }
            }
        }
    }

    /// Whether the listeners can still be watched at all.
    fn listening_possible(&self) -> bool {
        !self.exited
            && !self.child.has_exited()
            && self.child.is_initialized()
            && !self.child.listeners_closed()
            && !self.child.master_dead()
    }

    fn want_mode(&self) -> ListenMode {
        if self.child.is_accepting() {
            ListenMode::Accept
        } else if self.full && self.phase == Phase::Idle && self.listening_possible() {
            ListenMode::Overflow
        } else {
            ListenMode::Off
        }
    }

    fn sync_mode(&mut self) {
        let want = self.want_mode();
        if want != self.mode {
            self.mode = want;
            self.outputs.push_back(Output::SetListening { mode: want });
        }
    }

    /// Brings the timers and the mode in line with the state after an input.
    fn sync(&mut self) {
        if self.exited {
            return;
        }
        if self.child.available_count() > 0
            && matches!(self.phase, Phase::Scheduled { .. } | Phase::Confirming)
        {
            // A slot came free: the waiting connection takes it, nobody has to die.
            self.phase = Phase::Idle;
        }
        let want_recheck =
            !self.full && self.listening_possible() && self.child.available_count() == 0;
        if !want_recheck {
            self.recheck = None;
        } else {
            let eager = self.eager_until.is_some_and(|until| until > self.now);
            let interval = if eager && self.overflow_victim().is_some() {
                self.config.overflow.victim_recheck_interval
            } else {
                FULL_RECHECK_INTERVAL
            };
            let due = self.now + interval;
            self.recheck = Some(self.recheck.map_or(due, |at| at.min(due)));
        }
        self.sync_mode();
    }

    /// Checks every invariant of the module header.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        let fail = |rule: u32, detail: String| {
            Err(Violation {
                machine: "login",
                rule,
                detail,
            })
        };
        if let Err(v) = self.child.check_invariants() {
            return fail(1, v.to_string());
        }
        if !self.exited && self.clients.len() as u64 != u64::from(self.child.clients()) {
            return fail(
                2,
                format!(
                    "{} clients in the table, the child counts {}",
                    self.clients.len(),
                    self.child.clients()
                ),
            );
        }
        let expected: BTreeSet<(Instant, ClientId)> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.closing && c.state != ClientState::LoggedIn)
            .map(|(&id, c)| (c.created, id))
            .collect();
        if expected != self.arrival {
            return fail(3, "the arrival index disagrees with the table".into());
        }
        match self.phase {
            Phase::Killing { victim } if !self.clients.get(&victim).is_some_and(|c| c.closing) => {
                return fail(4, format!("victim {victim} is not a closing client"));
            }
            Phase::Scheduled { .. }
                if self.child.total_available() > self.config.overflow.delayed_kill_max_slots =>
            {
                return fail(4, "delayed kill in a process with several slots".into());
            }
            _ => {}
        }
        if self.recheck.is_some() && self.full {
            return fail(5, "re-check armed while full".into());
        }
        if !self.exited && self.mode != self.want_mode() {
            return fail(
                6,
                format!("mode {:?}, state asks {:?}", self.mode, self.want_mode()),
            );
        }
        if self.exited && self.poll_timeout().is_some() {
            return fail(7, "timer armed after exit".into());
        }
        let in_auth: BTreeSet<(Instant, ClientId)> = self
            .clients
            .iter()
            .filter_map(|(&id, c)| c.in_auth_since.map(|since| (since, id)))
            .collect();
        if in_auth != self.in_auth
            || self
                .clients
                .values()
                .any(|c| c.in_auth_since.is_some() && c.state != ClientState::InAuth)
        {
            return fail(8, "the auth index disagrees with the table".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
