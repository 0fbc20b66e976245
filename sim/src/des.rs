//! The discrete-event driver: the real [`Master`] inside a fake kernel, on a virtual clock that
//! jumps straight to the next thing that happens.
//!
//! State owned here: the fake kernel (pids, live and zombie processes, every pid ever reaped,
//! listening sockets with their accept queues and backlogs), the simulated service processes
//! (each runs the real `roost_core::child::Child` machine: slots, service_count budget, status
//! coalescing, idle-kill answer, master death; plus its connections and faults), the clients,
//! and the statistics a [`Report`] is made of. The driver only translates (STYLE.md §3): every
//! decision about processes is the master's, every decision of a process is its child
//! machine's. A process of a login service runs the real `roost_core::login::Login` machine
//! instead (it wraps the child machine; both are fed through [`crate::machine`], the same way
//! the turmoil world feeds them): which pre-login client a full login process kills and
//! when (§2.8, with the overflow policy of the load profile, jitter drawn from the seeded rng),
//! the "all processes full" state it reads on SIGUSR1 and re-checks, and the pre-auth timeout
//! are all core's decisions; the driver only reports accepts, readable listeners, logins and
//! closes, and carries out disconnects.
//!
//! Sockets are inet (clients connect to them) or unix (by path). A login process of a service
//! with `protocol` P hands a logged-in client to the unix socket `login/P` when the
//! configuration has one, as Dovecot's login processes do (reference §5.2): the client waits in
//! that socket's queue, held by its login process as `HandingOff`, until a process of the
//! post-login service accepts it and the login process forgets it; the master forks post-login
//! processes for that socket as for any listener. A failed connect (nothing listens, full backlog) or a
//! handoff the master drops ends the client. Without such a socket the client stays in its
//! login process for its session (proxied, as with TLS).
//!
//! A fifo is a one-way queue of messages at a path, written by `FifoWrite` clients; it is
//! readable while it holds unread messages, and the master hears `ListenerReadable` for it as
//! for a socket. A process with a free slot that finds its fifo readable takes the fifo itself
//! as a connection, as Dovecot's master-service does when `accept()` fails with ENOTSOCK: its
//! child machine sees one `Accepted` and, at once, the `ClientClosed` that gives the slot back
//! (master-service: "reading FIFOs stays open forever, don't count them as real clients"). The
//! process stops listening on the fifo and reads every message written to it for the rest of
//! its life; when it exits, the master's fd keeps the fifo, and the next message makes it
//! readable to the master again. A full fifo (`FIFO_CAPACITY` messages) fails a write.
//!
//! Determinism: one `SmallRng` seeded from the load profile, `BTreeMap`/`VecDeque` only, time
//! only from the virtual clock. Every input to the master is one step; its line (`time input ->
//! outputs`) is folded into an FNV-1a hash, so two runs of one seed compare with one number.
//!
//! Checks after every step: [`Master::check_invariants`]; and from outside, once the step has
//! settled, the kernel's live children equal the master's process count, and no signal ever
//! goes to a pid the master was told had exited. [`World::unfinished_clients`] is the end-of-run
//! check that every client was served, dropped, killed or disconnected, never forgotten.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roost_core::ids::{Generation, ListenerId, Pid, ProcessUid, ServiceId};
use roost_core::input::Input;
use roost_core::login::{ClientState as LoginState, OverflowPolicy, DEFAULT_OVERFLOW_POLICY};
use roost_core::master::Master;
use roost_core::output::Output;
use roost_core::setup::{ListenerKind, MasterConfig, ServiceType};
use roost_core::signal::{ExitStatus, Signal};
use roost_core::time::{Duration, Instant};

use crate::load::{Behaviour, Event, LoadProfile};
use crate::machine::{Action, Event as ProcEvent, ProcMachine, ProcSpec, Surroundings};
use crate::plan::{Report, Sample};
pub use crate::stats::{percentile, Outcome};
use crate::stats::{told_line, warnings, Stats};
use crate::view;

/// How long a process of a non-login service lets a `PreAuthIdle` client sit (reference §8's
/// pre-auth timeout; login services use their machine's own, which is the same).
pub const PRE_AUTH_TIMEOUT: Duration = roost_core::login::PRE_AUTH_TIMEOUT;
/// The kernel's cap on a listen backlog.
pub const SOMAXCONN: u32 = 4096;
/// Messages a fifo holds before a write fails with EAGAIN (a 64 KiB pipe of 1 KiB messages).
pub const FIFO_CAPACITY: u32 = 64;
/// Steps at one instant before the driver calls it a livelock.
const MAX_STEPS_AT_ONE_INSTANT: u32 = 200_000;

/// A broken rule, found by the master's own check or by the driver's outside checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimError {
    /// Simulated time, in milliseconds.
    pub at_ms: u64,
    /// The step (master input) count when it was found.
    pub step: u64,
    /// What was seen.
    pub what: String,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {} ms (step {}): {}",
            self.at_ms, self.step, self.what
        )
    }
}

impl std::error::Error for SimError {}

/// What the world records besides statistics.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keep every input with its time, for a trace (`SIM_DUMP`).
    pub record_inputs: bool,
    /// Keep the one-line-per-step log (for printing a failing run).
    pub keep_lines: bool,
}

/// Where a client is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ClientState {
    /// Not connected yet (or waiting to reconnect).
    Waiting,
    /// In an accept queue since that time (or, for a fifo writer, its message unread in the
    /// fifo since then).
    Queued { socket: usize, since: Instant },
    /// Logged in at login process `login` (as its connection `conn`), which handed it to the
    /// post-login service's unix socket; in that socket's queue since that time.
    HandingOff {
        login: Pid,
        conn: u64,
        socket: usize,
        since: Instant,
    },
    /// Accepted by a process.
    Connected { pid: Pid },
    /// Done for good.
    Done(Outcome),
}

/// One simulated client.
#[derive(Clone, Debug)]
struct Client {
    /// The service it connects to.
    service: String,
    /// What it does.
    behaviour: Behaviour,
    /// Accept to login (or to session start).
    login_delay: Duration,
    /// Session after login.
    session: Duration,
    /// The auth lookup at the end of `login_delay` (at most `login_delay`).
    auth: Duration,
    /// SYN retransmits per attempt when the accept queue is full.
    syn_retries: u32,
    /// SYN retransmits left in this attempt.
    syn_left: u32,
    /// When it first tried to connect (the start of its login latency).
    first_try: Option<Instant>,
    /// Reconnects left.
    retries_left: u32,
    /// Delay before reconnecting.
    retry: Duration,
    /// Where it is.
    state: ClientState,
    /// It logged in (or had its session) at least once.
    served: bool,
}

/// A listening socket of the fake kernel: one accept queue, shared by every fd that refers
/// to it (the master's listener and the inherited copies in its children).
#[derive(Clone, Debug)]
struct Socket {
    /// The path of a unix socket (login processes hand clients to it) or of a fifo; `None`
    /// for an inet socket (clients connect to it).
    path: Option<String>,
    /// A fifo: `queue` holds the writers of unread messages, and a reading process drains it.
    fifo: bool,
    /// Clients waiting to be accepted (for a fifo: writers whose message is unread), oldest
    /// first.
    queue: VecDeque<usize>,
    /// The listen backlog (for a fifo: [`FIFO_CAPACITY`]).
    backlog: u32,
    /// Still open (the master has not closed its last listener on it).
    open: bool,
}

/// The master's view of a socket.
#[derive(Clone, Debug)]
struct KListener {
    /// The socket it is.
    socket: usize,
    /// The master watches it for readability.
    watched: bool,
    /// The queue length last reported readable, so a level-triggered report is not repeated.
    reported: Option<usize>,
}

/// What the kernel knows about a service (from the master's outputs).
#[derive(Clone, Debug)]
struct KService {
    /// The service's name.
    name: String,
    /// Its `protocol` (a login service hands clients to `login/<protocol>`).
    protocol: String,
    /// Its type.
    service_type: ServiceType,
    /// The login "all processes full" state, as published.
    login_full: bool,
    /// `client_limit`.
    client_limit: u32,
    /// `service_count`.
    service_count: u32,
}

/// Where a process is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ProcState {
    /// Forked; exec and initialisation under way.
    Starting,
    /// Sent its first status; serving.
    Running,
    /// Exited; the master has not been told yet.
    Zombie,
}

/// One connection inside a process.
#[derive(Copy, Clone, Debug)]
struct Conn {
    /// The client.
    client: usize,
    /// Logged in: never killed to make room.
    logged_in: bool,
}

/// One simulated service process.
#[derive(Clone, Debug)]
struct Proc {
    /// Its service.
    service: ServiceId,
    /// The uid it echoes in status records.
    uid: ProcessUid,
    /// Its generation.
    generation: Generation,
    /// Where it is in its life.
    state: ProcState,
    /// Sockets inherited at fork that it still listens on.
    sockets: Vec<usize>,
    /// Fifos it took as its connection: it reads every message written to them.
    fifos: Vec<usize>,
    /// Connections, by connection id.
    conns: BTreeMap<u64, Conn>,
    /// The real machine (roost_core::child, or roost_core::login around it for login
    /// services) and what it asked for.
    machine: ProcMachine,
    /// The machine's timer, as scheduled in the event queue.
    timer: Option<Instant>,
    /// An idle SIGINT was dropped by the `ignores_sigint` fault (delivered when faults stop).
    dropped_sigint: bool,
    /// Fault: ignores the idle SIGINT.
    ignores_sigint: bool,
    /// Fault: never sends its first status.
    never_status: bool,
}

impl Proc {
    fn available(&self) -> u32 {
        self.machine.available()
    }

    fn can_accept(&self) -> bool {
        self.state == ProcState::Running && self.machine.can_accept()
    }
}

/// A scheduled event of the world.
#[derive(Clone, Debug)]
enum Ev {
    /// A client connects.
    Arrive(usize),
    /// A forked process finished exec and initialisation.
    Ready(Pid),
    /// A process crashes.
    Crash(Pid),
    /// A connection starts its auth lookup.
    Auth(Pid, u64),
    /// A connection logs in.
    Login(Pid, u64),
    /// A connection ends.
    End(Pid, u64, Outcome),
    /// A child's timer is due.
    ChildTimeout(Pid),
    /// Faults stop.
    FaultsOff,
    /// An event of the load profile.
    Load(Event),
}

/// The fake kernel, its processes and clients, and the master they drive.
pub struct World {
    /// The machine under test.
    master: Master,
    /// The configuration a `Reload` event reads again.
    config: MasterConfig,
    /// The virtual clock.
    now: Instant,
    /// Every random draw.
    rng: SmallRng,
    /// The load profile (faults and backlog).
    load: LoadProfile,
    /// Faults are on.
    faults_on: bool,
    /// Scheduled events by (time, sequence).
    events: BTreeMap<(Instant, u64), Ev>,
    /// The next event sequence number (ties break by scheduling order).
    seq: u64,
    /// Inputs waiting to be fed to the master, in order.
    pending: VecDeque<Input>,
    /// The next pid.
    next_pid: i32,
    /// The next connection id.
    next_conn: u64,
    /// Live and zombie processes.
    procs: BTreeMap<Pid, Proc>,
    /// Every pid the master was told had exited.
    reaped: BTreeSet<Pid>,
    /// Sockets, never removed (indices stay valid).
    sockets: Vec<Socket>,
    /// The master's listeners.
    listeners: BTreeMap<ListenerId, KListener>,
    /// Services the master told about.
    services: BTreeMap<ServiceId, KService>,
    /// Clients.
    clients: Vec<Client>,
    /// Statistics by service name.
    stats: BTreeMap<String, Stats>,
    /// Every notice with its time.
    notices: Vec<(u64, String)>,
    /// Every line a process sent a client it disconnected, with its time.
    told: Vec<(u64, String)>,
    /// The master exited with this code.
    exited: Option<i32>,
    /// Master inputs so far.
    steps: u64,
    /// FNV-1a over the step lines.
    hash: u64,
    /// Recorded inputs (with `Options::record_inputs`).
    inputs: Vec<(u64, Input)>,
    /// Step lines (with `Options::keep_lines`).
    lines: Vec<String>,
    /// What to record.
    options: Options,
    /// The first broken rule.
    error: Option<SimError>,
    /// The next sample time.
    next_sample: u64,
    /// Sampling period.
    sample_ms: u64,
    /// Service names in first-seen order (columns of the samples).
    names: Vec<String>,
    /// The time series.
    samples: Vec<Sample>,
    /// The initial configuration, for traces.
    initial_config: MasterConfig,
    /// Spawns of the current step, by service name.
    step_spawns: BTreeMap<String, u32>,
    /// The overflow answer of every login process.
    overflow: OverflowPolicy,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a: a fixed, platform-independent hash of the step lines.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn draw(rng: &mut SmallRng, (lo, hi): (u64, u64)) -> u64 {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

impl World {
    /// A world running `config` under `load`; the master is created at time 0 and its
    /// listeners are opened, the rest happens in [`World::run_until`].
    pub fn new(config: MasterConfig, load: &LoadProfile, options: Options) -> World {
        let mut rng = SmallRng::seed_from_u64(load.seed);
        let mut clients = Vec::new();
        let mut events = BTreeMap::new();
        let mut seq = 0;
        for group in &load.clients {
            for i in 0..group.count {
                let base = if group.count > 1 && group.spread_ms > 0 {
                    group.start_ms + group.spread_ms * u64::from(i) / u64::from(group.count)
                } else {
                    group.start_ms
                };
                let step = if group.count > 0 {
                    group.spread_ms / u64::from(group.count)
                } else {
                    0
                };
                let at = base + draw(&mut rng, (0, step));
                let login_delay = draw(&mut rng, group.login_delay_ms);
                let client = Client {
                    service: group.service.clone(),
                    behaviour: group.behaviour,
                    login_delay: Duration::from_millis(login_delay),
                    session: Duration::from_millis(draw(&mut rng, group.session_ms)),
                    auth: Duration::from_millis(draw(&mut rng, group.auth_ms).min(login_delay)),
                    syn_retries: group.syn_retries,
                    syn_left: group.syn_retries,
                    first_try: None,
                    retries_left: group.reconnect,
                    retry: Duration::from_millis(group.retry_ms),
                    state: ClientState::Waiting,
                    served: false,
                };
                events.insert((Instant::from_millis(at), seq), Ev::Arrive(clients.len()));
                seq += 1;
                clients.push(client);
            }
        }
        for event in &load.events {
            events.insert(
                (Instant::from_millis(event.at_ms), seq),
                Ev::Load(event.event.clone()),
            );
            seq += 1;
        }
        if let Some(off) = load.faults.off_at_ms {
            events.insert((Instant::from_millis(off), seq), Ev::FaultsOff);
            seq += 1;
        }
        let sample_ms = if load.sample_ms > 0 {
            load.sample_ms
        } else {
            (load.duration_ms / 500).max(100)
        };
        let mut names: Vec<String> = Vec::new();
        for service in &config.services {
            if !names.contains(&service.name) {
                names.push(service.name.clone());
            }
        }
        let now = Instant::ZERO;
        let master = Master::new(config.clone(), now);
        World {
            master,
            config: config.clone(),
            now,
            rng,
            load: load.clone(),
            faults_on: true,
            events,
            seq,
            pending: VecDeque::new(),
            next_pid: 100,
            next_conn: 1,
            procs: BTreeMap::new(),
            reaped: BTreeSet::new(),
            sockets: Vec::new(),
            listeners: BTreeMap::new(),
            services: BTreeMap::new(),
            clients,
            stats: BTreeMap::new(),
            notices: Vec::new(),
            told: Vec::new(),
            exited: None,
            steps: 0,
            hash: FNV_OFFSET,
            inputs: Vec::new(),
            lines: Vec::new(),
            options,
            error: None,
            next_sample: 0,
            sample_ms,
            names,
            samples: Vec::new(),
            initial_config: config,
            step_spawns: BTreeMap::new(),
            overflow: load
                .overflow_policy
                .as_ref()
                .map_or(DEFAULT_OVERFLOW_POLICY, |p| p.policy()),
        }
    }

    /// Runs until simulated time `end_ms` (or until the master exits, or a rule breaks).
    pub fn run_until(&mut self, end_ms: u64) -> Result<(), SimError> {
        let end = Instant::from_millis(end_ms);
        self.drain_outputs();
        self.settle();
        let mut same_instant = 0u32;
        while self.error.is_none() && self.exited.is_none() {
            let master_at = self.master.poll_timeout();
            let event_at = self.events.keys().next().map(|(t, _)| *t);
            let next = match (master_at, event_at) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            let next = next.max(self.now);
            if next == self.now {
                same_instant += 1;
                if same_instant > MAX_STEPS_AT_ONE_INSTANT {
                    self.fail(format!(
                        "livelock: {MAX_STEPS_AT_ONE_INSTANT} steps without time moving"
                    ));
                    break;
                }
            } else {
                same_instant = 0;
            }
            self.sample_until(next);
            self.now = next;
            if master_at.is_some_and(|a| a <= self.now) {
                self.pending.push_back(Input::Timeout);
            } else {
                let key = *self
                    .events
                    .keys()
                    .next()
                    .expect("an event is due: it was the earliest deadline");
                let event = self.events.remove(&key).expect("the key was just read");
                self.apply_event(event);
            }
            self.settle();
        }
        if self.error.is_none() {
            self.sample_until(end.max(self.now));
            self.now = self.now.max(end);
        }
        match &self.error {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Clients that are neither done nor waiting to connect: in a queue or in a process.
    pub fn unfinished_clients(&self) -> Vec<String> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !matches!(c.state, ClientState::Done(_) | ClientState::Waiting))
            .map(|(i, c)| format!("client {i} of {} is {:?}", c.service, c.state))
            .collect()
    }

    /// The liveness check after faults stopped: the master is running, no process of an old
    /// generation is left, no client waits, and each current service has at least
    /// `process_min_avail` available processes and, if it has an idle_kill, no more processes
    /// than that.
    pub fn check_settled(&self) -> Result<(), String> {
        if let Some(code) = self.exited {
            return Err(format!("the master exited with {code}"));
        }
        let current = self.master.current_generation();
        if let Some((pid, _)) = self.procs.iter().find(|(_, p)| p.generation != current) {
            return Err(format!("process {pid} of an old generation is still alive"));
        }
        let unfinished = self.unfinished_clients();
        if !unfinished.is_empty() {
            return Err(format!("clients not finished: {}", unfinished.join("; ")));
        }
        for status in view::services(&self.master) {
            if status.generation != current {
                continue;
            }
            let config = &status.config;
            // The original leaves a service short of process_min_avail after a throttle until a
            // client comes (reference §2.4); roost tops up when a throttle ends, so no
            // tolerance is needed here any more.
            if status.process_avail < config.process_min_avail {
                let processes = view::process_lines(&self.master, &status.name);
                return Err(format!(
                    "service {} has {} available processes, process_min_avail is {} ({status:?}): {}",
                    status.name,
                    status.process_avail,
                    config.process_min_avail,
                    processes.join("; ")
                ));
            }
            let expected_max = match config.service_type {
                ServiceType::Log | ServiceType::Startup => config.process_min_avail.max(1),
                _ => config.process_min_avail,
            };
            // Reference §2.5: a process that retired slots of its service_count budget never
            // reports all client_limit slots free again, so it is never idle and never
            // idle-killed; it lives until its budget is spent. The original behaves so and
            // roost keeps the rule; such processes are not surplus for this check.
            let retired = self
                .procs
                .values()
                .filter(|p| {
                    p.service == status.id
                        && p.machine.child().total_available() < config.client_limit
                })
                .count() as u32;
            let expected_max = expected_max + retired;
            if config.idle_kill.is_some() && status.process_count > expected_max {
                let processes = view::process_lines(&self.master, &status.name);
                return Err(format!(
                    "service {} still has {} processes, process_min_avail is {} ({config:?}): {}",
                    status.name,
                    status.process_count,
                    config.process_min_avail,
                    processes.join("; ")
                ));
            }
        }
        Ok(())
    }

    /// The kernel's processes and the pending events, for a person debugging a run.
    pub fn debug_state(&self) -> String {
        format!(
            "processes: {:#?}\nevents: {:?}\nmaster timeout: {:?}",
            self.procs,
            self.events.iter().take(20).collect::<Vec<_>>(),
            self.master.poll_timeout()
        )
    }

    /// The hash of every step line so far.
    pub fn trace_hash(&self) -> u64 {
        self.hash
    }

    /// Master inputs so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Simulated time now, ms.
    pub fn now_ms(&self) -> u64 {
        self.now.as_millis()
    }

    /// The recorded inputs (with `Options::record_inputs`).
    pub fn inputs(&self) -> &[(u64, Input)] {
        &self.inputs
    }

    /// The step lines (with `Options::keep_lines`).
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The configuration the master started with.
    pub fn initial_config(&self) -> &MasterConfig {
        &self.initial_config
    }

    /// The master, for queries.
    pub fn master(&self) -> &Master {
        &self.master
    }

    /// Every notice so far with its time (ms), in order.
    pub fn notices(&self) -> &[(u64, String)] {
        &self.notices
    }

    /// Every line a login process sent a client it disconnected (`-ERR Connection queue
    /// full`, …) with its time (ms), in order.
    pub fn told(&self) -> &[(u64, String)] {
        &self.told
    }

    /// How many processes are alive now (zombies included), as the fake kernel sees them.
    pub fn live_processes(&self) -> usize {
        self.procs.len()
    }

    /// The login latency of every served client of the service (first connect attempt to
    /// login, ms), in the order they logged in.
    pub fn login_latencies(&self, name: &str) -> Vec<u64> {
        self.stats
            .get(name)
            .map(|s| s.logins().to_vec())
            .unwrap_or_default()
    }

    /// How many processes of the service each step created, for the steps that created any.
    pub fn spawn_steps(&self, name: &str) -> Vec<u32> {
        self.stats
            .get(name)
            .map(|s| s.spawn_steps().to_vec())
            .unwrap_or_default()
    }

    /// The report of the run so far.
    pub fn report(&self) -> Report {
        let services = self
            .names
            .iter()
            .map(|name| {
                let stats = self.stats.get(name).cloned().unwrap_or_default();
                stats.report(name, self.processes_of(name))
            })
            .collect();
        let warnings = warnings(&self.notices);
        Report {
            duration_ms: self.now.as_millis(),
            services,
            notices: self.notices.clone(),
            warnings,
            names: self.names.clone(),
            samples: self.samples.clone(),
            steps: self.steps,
            trace_hash: self.hash,
            exit: self.exited,
            unfinished_clients: self.unfinished_clients().len() as u64,
            violation: self.error.as_ref().map(ToString::to_string),
        }
    }

    // ---------------------------------------------------------------------------------------
    // The driver loop.

    fn fail(&mut self, what: String) {
        if self.error.is_none() {
            self.error = Some(SimError {
                at_ms: self.now.as_millis(),
                step: self.steps,
                what,
            });
        }
    }

    fn schedule(&mut self, at: Instant, event: Ev) {
        self.events.insert((at, self.seq), event);
        self.seq += 1;
    }

    /// Feeds pending inputs and lets the kernel react until nothing is left to do, then runs
    /// the outside checks.
    fn settle(&mut self) {
        let mut rounds = 0u32;
        loop {
            while let Some(input) = self.pending.pop_front() {
                if self.error.is_some() || self.exited.is_some() {
                    self.pending.clear();
                    return;
                }
                self.feed(input);
            }
            if self.exited.is_some() {
                return;
            }
            self.accept_pass();
            self.report_readable();
            if self.pending.is_empty() {
                break;
            }
            rounds += 1;
            if rounds > MAX_STEPS_AT_ONE_INSTANT {
                self.fail("livelock: the kernel and the master keep answering each other".into());
                return;
            }
        }
        self.outside_checks();
    }

    /// One step: one input to the master, its outputs carried out.
    fn feed(&mut self, input: Input) {
        self.steps += 1;
        let line_head = format!("{} {:?}", self.now.as_millis(), input);
        if self.options.record_inputs {
            self.inputs.push((self.now.as_millis(), input.clone()));
        }
        if let Input::Exited { pid, .. } = &input {
            // waitpid: the zombie is gone, and its pid must never be signalled again.
            self.procs.remove(pid);
            self.reaped.insert(*pid);
        }
        self.master.handle(input, self.now);
        let outputs = self.drain_outputs();
        for (name, count) in std::mem::take(&mut self.step_spawns) {
            self.stats.entry(name).or_default().spawned(count);
        }
        let line = format!("{line_head} -> {outputs}");
        self.hash = fnv1a(self.hash, line.as_bytes());
        self.hash = fnv1a(self.hash, b"\n");
        if self.options.keep_lines {
            self.lines.push(line);
        }
        if let Err(violation) = self.master.check_invariants() {
            self.fail(violation.to_string());
        }
    }

    /// Carries out every output; returns them as one string for the step line.
    fn drain_outputs(&mut self) -> String {
        let mut text = String::new();
        while let Some(output) = self.master.poll_output() {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(&format!("{output:?}"));
            self.apply_output(output);
        }
        text
    }

    fn outside_checks(&mut self) {
        if self.exited.is_some() || self.error.is_some() {
            return;
        }
        let live = self.procs.len();
        let counted = view::process_total(&self.master);
        if live != counted {
            self.fail(format!(
                "the fake kernel has {live} live children, the master counts {counted}"
            ));
        }
        let mut per_name: BTreeMap<&str, u32> = BTreeMap::new();
        for proc in self.procs.values() {
            if let Some(service) = self.services.get(&proc.service) {
                *per_name.entry(service.name.as_str()).or_default() += 1;
            }
        }
        for (name, count) in per_name {
            self.stats.entry(name.to_owned()).or_default().alive(count);
        }
    }

    fn processes_of(&self, name: &str) -> u32 {
        self.procs
            .values()
            .filter(|p| {
                self.services
                    .get(&p.service)
                    .is_some_and(|s| s.name == name)
            })
            .count() as u32
    }

    fn sample_until(&mut self, t: Instant) {
        while self.next_sample <= t.as_millis() && self.next_sample <= self.load.duration_ms {
            let mut values = Vec::with_capacity(self.names.len());
            for name in &self.names {
                let mut processes = 0;
                let mut free = 0;
                let mut connections = 0;
                for proc in self.procs.values() {
                    if self
                        .services
                        .get(&proc.service)
                        .is_some_and(|s| &s.name == name)
                    {
                        processes += 1;
                        if proc.state == ProcState::Running && !proc.machine.master_dead() {
                            free += proc.available();
                        }
                        connections += proc.conns.len() as u32;
                    }
                }
                let mut queued = 0;
                let mut seen = BTreeSet::new();
                for (id, listener) in &self.listeners {
                    let Some(service) = view::listener_service_name(&self.master, *id) else {
                        continue;
                    };
                    if &service == name && seen.insert(listener.socket) {
                        queued += self.sockets[listener.socket].queue.len() as u32;
                    }
                }
                values.push([processes, free, connections, queued]);
            }
            self.samples.push(Sample {
                t_ms: self.next_sample,
                values,
            });
            self.next_sample += self.sample_ms;
        }
    }

    fn faults_apply(&self, service: ServiceId) -> bool {
        self.faults_on
            && (self.load.faults.services.is_empty()
                || self
                    .services
                    .get(&service)
                    .is_some_and(|s| self.load.faults.services.contains(&s.name)))
    }

    // ---------------------------------------------------------------------------------------
    // Outputs of the master.

    fn apply_output(&mut self, output: Output) {
        match output {
            Output::OpenListener {
                listener,
                service,
                config,
            } => {
                let backlog = view::listen_backlog(&self.master, service, self.load.backlog);
                self.note_service(service);
                let fifo = matches!(config.kind, ListenerKind::Fifo { .. });
                let path = match config.kind {
                    ListenerKind::Unix { path, .. } | ListenerKind::Fifo { path, .. } => Some(path),
                    ListenerKind::Inet { .. } => None,
                };
                self.sockets.push(Socket {
                    path,
                    fifo,
                    queue: VecDeque::new(),
                    backlog: if fifo { FIFO_CAPACITY } else { backlog },
                    open: true,
                });
                self.listeners.insert(
                    listener,
                    KListener {
                        socket: self.sockets.len() - 1,
                        watched: false,
                        reported: None,
                    },
                );
            }
            Output::TakeOverListener { from, to } => {
                if let Some(old) = self.listeners.remove(&from) {
                    self.listeners.insert(
                        to,
                        KListener {
                            socket: old.socket,
                            watched: false,
                            reported: None,
                        },
                    );
                } else {
                    self.fail(format!("take over of unknown listener {from}"));
                }
            }
            Output::CloseListener { listener } => {
                if let Some(old) = self.listeners.remove(&listener) {
                    let still_used = self.listeners.values().any(|l| l.socket == old.socket);
                    if !still_used {
                        let socket = &mut self.sockets[old.socket];
                        socket.open = false;
                        let queued: Vec<usize> = socket.queue.drain(..).collect();
                        for client in queued {
                            self.drop_queued(client, Outcome::Refused);
                        }
                    }
                }
            }
            Output::SetListening { listener, on } => match self.listeners.get_mut(&listener) {
                Some(l) => {
                    if l.watched != on {
                        l.watched = on;
                        l.reported = None;
                    }
                }
                None => self.fail(format!("SetListening on unknown listener {listener}")),
            },
            Output::AcceptAndClose { listener } => {
                let sockets = &self.sockets;
                // accept() fails on a fifo (ENOTSOCK): its messages stay, as in the shell.
                let not_fifo = |l: &&mut KListener| !sockets[l.socket].fifo;
                if let Some(l) = self.listeners.get_mut(&listener).filter(not_fifo) {
                    l.reported = None;
                    let queued: Vec<usize> = self.sockets[l.socket].queue.drain(..).collect();
                    for client in queued {
                        self.drop_queued(client, Outcome::Dropped);
                    }
                }
            }
            Output::Spawn(request) => self.spawn(request),
            Output::Kill { pid, signal } => self.signal(pid, signal),
            Output::SetLoginFull { service, full } => {
                if let Some(s) = self.services.get_mut(&service) {
                    s.login_full = full;
                }
                if self.load.what_if_notify_at_once {
                    let pids: Vec<Pid> = self
                        .procs
                        .iter()
                        .filter(|(_, p)| p.service == service && p.state == ProcState::Running)
                        .map(|(pid, _)| *pid)
                        .collect();
                    for pid in pids {
                        self.step(pid, ProcEvent::Signal(Signal::Usr1));
                    }
                }
            }
            Output::RetireGeneration { generation, .. } => {
                let pids: Vec<Pid> = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.generation == generation)
                    .map(|(pid, _)| *pid)
                    .collect();
                for pid in pids {
                    self.master_died(pid);
                }
            }
            Output::AnvilKill { .. } | Output::Lifecycle(_) | Output::ForgetGeneration { .. } => {}
            Output::Log(notice) => {
                self.notices
                    .push((self.now.as_millis(), notice.to_string()));
            }
            Output::Exit(code) => {
                self.exited = Some(code);
                let pids: Vec<Pid> = self.procs.keys().copied().collect();
                for pid in pids {
                    self.master_died(pid);
                }
            }
        }
    }

    fn note_service(&mut self, id: ServiceId) {
        if self.services.contains_key(&id) {
            return;
        }
        let Some(config) = view::service_config(&self.master, id) else {
            return;
        };
        if !self.names.contains(&config.name) {
            self.names.push(config.name.clone());
            for sample in &mut self.samples {
                sample.values.push([0; 4]);
            }
        }
        self.services.insert(
            id,
            KService {
                name: config.name.clone(),
                protocol: config.protocol.clone(),
                service_type: config.service_type,
                login_full: false,
                client_limit: config.client_limit,
                service_count: config.service_count,
            },
        );
    }

    fn spawn(&mut self, request: roost_core::output::SpawnRequest) {
        self.note_service(request.service);
        if let Some(service) = self.services.get(&request.service) {
            *self.step_spawns.entry(service.name.clone()).or_default() += 1;
        }
        let faults = self.faults_apply(request.service);
        let f = self.load.faults.clone();
        if faults && f.fork_fail > 0.0 && self.rng.random_bool(f.fork_fail.min(1.0)) {
            self.pending.push_back(Input::SpawnFailed {
                process: request.process,
                errno: 11,
                error: "Resource temporarily unavailable".to_owned(),
            });
            return;
        }
        let exec_ms = if faults {
            draw(&mut self.rng, f.exec_ms)
        } else {
            draw(&mut self.rng, (1, 5))
        };
        let roll = |rng: &mut SmallRng, p: f64| faults && p > 0.0 && rng.random_bool(p.min(1.0));
        let crash_at_start = roll(&mut self.rng, f.crash_at_start);
        let crash_later = roll(&mut self.rng, f.crash_later);
        let crash_after = draw(&mut self.rng, f.crash_after_ms);
        let never_status = roll(&mut self.rng, f.never_status);
        let ignores_sigint = roll(&mut self.rng, f.ignore_sigint);

        let pid = Pid(self.next_pid);
        self.next_pid += 1;
        let service = self.services.get(&request.service);
        let (client_limit, service_count, login) = service
            .map(|s| {
                (
                    s.client_limit,
                    s.service_count,
                    s.service_type == ServiceType::Login,
                )
            })
            .unwrap_or((1, 0, false));
        let machine = ProcMachine::new(
            ProcSpec {
                client_limit,
                service_count,
                login,
                die_with_master: self.config.shutdown_clients,
                overflow: self.overflow,
            },
            self.now,
        );
        let sockets = view::service_listeners(&self.master, request.service)
            .into_iter()
            .filter_map(|l| self.listeners.get(&l).map(|l| l.socket))
            .collect();
        self.procs.insert(
            pid,
            Proc {
                service: request.service,
                uid: request.uid,
                generation: request.generation,
                state: ProcState::Starting,
                sockets,
                fifos: Vec::new(),
                conns: BTreeMap::new(),
                machine,
                timer: None,
                dropped_sigint: false,
                ignores_sigint,
                never_status,
            },
        );
        self.pending.push_back(Input::Spawned {
            process: request.process,
            pid,
        });
        let ready = self.now + Duration::from_millis(exec_ms);
        if crash_at_start {
            self.schedule(ready, Ev::Crash(pid));
        } else {
            self.schedule(ready, Ev::Ready(pid));
            if crash_later {
                self.schedule(ready + Duration::from_millis(crash_after), Ev::Crash(pid));
            }
        }
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        if self.reaped.contains(&pid) {
            self.fail(format!(
                "{signal} sent to pid {pid}, which was already reaped"
            ));
            return;
        }
        let Some(proc) = self.procs.get_mut(&pid) else {
            self.fail(format!("{signal} sent to pid {pid}, which never existed"));
            return;
        };
        if proc.state == ProcState::Zombie {
            return;
        }
        match signal {
            Signal::Term | Signal::Kill => self.exit(
                pid,
                ExitStatus::Signaled {
                    signal: signal.number(),
                    core_dumped: false,
                },
            ),
            Signal::Int => {
                if proc.ignores_sigint && self.faults_on {
                    proc.dropped_sigint = true;
                    return;
                }
                self.step(pid, ProcEvent::Signal(Signal::Int));
            }
            // A login process re-reads the "all processes full" state; others have no use
            // for it here (log processes reopen their files).
            Signal::Quit | Signal::Usr1 => self.step(pid, ProcEvent::Signal(signal)),
            Signal::Hup => {}
        }
    }

    // ---------------------------------------------------------------------------------------
    // The processes.

    /// Feeds one event to a process's machine (the machine's invariants are checked after
    /// every input) and carries out what it asks: status records go to the master, clients it
    /// disconnects are finished, and it may exit.
    fn step(&mut self, pid: Pid, event: ProcEvent) {
        let now = self.now;
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        if proc.state == ProcState::Zombie {
            return;
        }
        let world = Surroundings {
            master_gone: self.exited.is_some(),
            login_full: self
                .services
                .get(&proc.service)
                .is_some_and(|s| s.login_full),
        };
        let result = proc.machine.step(event, now, world);
        let timer = proc.machine.poll_timeout();
        if timer.is_some() && timer != proc.timer {
            if let Some(at) = timer {
                self.schedule(at.max(now), Ev::ChildTimeout(pid));
            }
        }
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        proc.timer = timer;
        let uid = proc.uid;
        let actions = match result {
            Ok(actions) => actions,
            Err(violation) => {
                self.fail(format!("pid {pid}: {violation}"));
                return;
            }
        };
        for action in actions {
            match action {
                Action::Status { available_count } => self.pending.push_back(Input::Status {
                    pid,
                    uid,
                    available_count,
                }),
                Action::Disconnect { conn, reason } => {
                    let conn = self.procs.get_mut(&pid).and_then(|p| p.conns.remove(&conn));
                    if let Some(c) = conn {
                        if let ClientState::HandingOff { socket, .. } = self.clients[c.client].state
                        {
                            // The login process closes the client: its handoff is void.
                            self.sockets[socket]
                                .queue
                                .retain(|&queued| queued != c.client);
                        }
                        self.told.push((now.as_millis(), told_line(reason)));
                        self.finish_client(c.client, Outcome::of_disconnect(reason));
                    }
                }
                Action::Refused => {
                    self.fail(format!(
                        "pid {pid} refused a connection the kernel gave it while it accepted"
                    ));
                    return;
                }
                Action::Exit(code) => {
                    self.exit(pid, ExitStatus::Exited(code));
                    return;
                }
            }
        }
    }

    /// The process exits (it becomes a zombie until the master is told).
    fn exit(&mut self, pid: Pid, status: ExitStatus) {
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        if proc.state == ProcState::Zombie {
            return;
        }
        proc.state = ProcState::Zombie;
        let conns: Vec<Conn> = std::mem::take(&mut proc.conns).into_values().collect();
        for conn in conns {
            // A client being handed off is in the post-login socket's queue with its fd: the
            // post-login process still takes it.
            if !matches!(
                self.clients[conn.client].state,
                ClientState::HandingOff { .. }
            ) {
                self.finish_client(conn.client, Outcome::Lost);
            }
        }
        self.pending.push_back(Input::Exited { pid, status });
    }

    /// Reference §4.4: the master's end of this process's generation is gone.
    fn master_died(&mut self, pid: Pid) {
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        if proc.machine.master_dead() || proc.state == ProcState::Zombie {
            return;
        }
        self.step(pid, ProcEvent::MasterDead);
    }

    fn apply_event(&mut self, event: Ev) {
        match event {
            Ev::Arrive(client) => self.arrive(client),
            Ev::Ready(pid) => {
                if let Some(proc) = self.procs.get_mut(&pid) {
                    if proc.state == ProcState::Starting && !proc.never_status {
                        proc.state = ProcState::Running;
                        self.step(pid, ProcEvent::InitDone);
                    }
                }
            }
            Ev::Crash(pid) => {
                let started = self
                    .procs
                    .get(&pid)
                    .is_some_and(|p| p.state == ProcState::Running);
                let status = if started {
                    ExitStatus::Signaled {
                        signal: 11,
                        core_dumped: false,
                    }
                } else {
                    ExitStatus::Exited(89)
                };
                self.exit(pid, status);
            }
            Ev::Auth(pid, conn) => {
                let present = self
                    .procs
                    .get(&pid)
                    .is_some_and(|p| p.conns.contains_key(&conn));
                if present {
                    self.step(pid, ProcEvent::ClientState(conn, LoginState::InAuth));
                }
            }
            Ev::Login(pid, conn) => {
                let Some(proc) = self.procs.get_mut(&pid) else {
                    return;
                };
                let Some(c) = proc.conns.get_mut(&conn) else {
                    return;
                };
                c.logged_in = true;
                let client = c.client;
                let service = proc.service;
                if let Some(socket) = self.handoff_socket(service) {
                    self.hand_off(pid, conn, client, socket);
                    return;
                }
                self.mark_served(client);
                let session = self.clients[client].session;
                self.schedule(self.now + session, Ev::End(pid, conn, Outcome::Served));
                // Logged in and proxied by this process for its session: never killed.
                self.step(pid, ProcEvent::ClientState(conn, LoginState::LoggedIn));
            }
            Ev::End(pid, conn, outcome) => self.end_conn(pid, conn, outcome),
            Ev::ChildTimeout(pid) => {
                let due = self.procs.get(&pid).is_some_and(|p| {
                    p.state != ProcState::Zombie
                        && p.machine.poll_timeout().is_some_and(|t| t <= self.now)
                });
                if due {
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.timer = None;
                    }
                    self.step(pid, ProcEvent::Timeout);
                }
            }
            Ev::FaultsOff => {
                self.faults_on = false;
                // A process that was stuck recovers: a SIGINT it dropped is delivered now, and
                // its machine answers it (exits if idle, or re-sends its status).
                let pids: Vec<Pid> = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.ignores_sigint)
                    .map(|(pid, _)| *pid)
                    .collect();
                for pid in pids {
                    let mut dropped = false;
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.ignores_sigint = false;
                        dropped = std::mem::take(&mut p.dropped_sigint);
                    }
                    if dropped {
                        self.step(pid, ProcEvent::Signal(Signal::Int));
                    }
                }
            }
            Ev::Load(Event::Signal(signal)) => self.pending.push_back(Input::Signal(signal)),
            Ev::Load(Event::Reload) => {
                self.pending.push_back(Input::Signal(Signal::Hup));
                self.pending
                    .push_back(Input::Reload(Box::new(self.config.clone())));
            }
            Ev::Load(Event::ReloadWith(config)) => {
                let config = config.master_config();
                for service in &config.services {
                    if !self.names.contains(&service.name) {
                        self.names.push(service.name.clone());
                        for sample in &mut self.samples {
                            sample.values.push([0; 4]);
                        }
                    }
                }
                self.config = config.clone();
                self.pending.push_back(Input::Signal(Signal::Hup));
                self.pending.push_back(Input::Reload(Box::new(config)));
            }
        }
    }

    fn arrive(&mut self, client: usize) {
        let name = self.clients[client].service.clone();
        let current = self.master.current_generation();
        let service = view::services(&self.master)
            .into_iter()
            .find(|s| s.name == name && s.generation == current);
        // A fifo writer opens the service's fifo; every other client connects to its inet socket.
        let writer = self.clients[client].behaviour == Behaviour::FifoWrite;
        let socket = service
            .into_iter()
            .flat_map(|s| s.listeners)
            .filter_map(|l| self.listeners.get(&l))
            .map(|l| l.socket)
            .find(|s| {
                let s = &self.sockets[*s];
                s.open && if writer { s.fifo } else { s.path.is_none() }
            });
        let Some(socket) = socket else {
            self.finish_client(client, Outcome::Refused);
            return;
        };
        let c = &mut self.clients[client];
        c.first_try.get_or_insert(self.now);
        let s = &mut self.sockets[socket];
        if s.queue.len() as u32 >= s.backlog {
            if c.syn_left > 0 {
                // The handshake is dropped; the client retransmits its SYN after 1, 2, 4, … s.
                let backoff = 1_000u64 << (c.syn_retries - c.syn_left).min(16);
                c.syn_left -= 1;
                let at = self.now + Duration::from_millis(backoff);
                self.schedule(at, Ev::Arrive(client));
                return;
            }
            self.finish_client(client, Outcome::BacklogFull);
            return;
        }
        c.syn_left = c.syn_retries;
        s.queue.push_back(client);
        self.clients[client].state = ClientState::Queued {
            socket,
            since: self.now,
        };
    }

    /// The client reached its goal: logged in, or started its session.
    fn mark_served(&mut self, client: usize) {
        let c = &mut self.clients[client];
        if !c.served {
            c.served = true;
            let name = c.service.clone();
            let latency = c.first_try.map_or(0, |t| (self.now - t).as_millis() as u64);
            self.stats.entry(name).or_default().served(latency);
        }
    }

    /// A client's attempt ended: count it, and reconnect later if it may.
    fn finish_client(&mut self, client: usize, outcome: Outcome) {
        let c = &mut self.clients[client];
        let name = c.service.clone();
        let retry = !c.served
            && c.retries_left > 0
            && !matches!(outcome, Outcome::Served | Outcome::TimedOut);
        if retry {
            c.retries_left -= 1;
            c.state = ClientState::Waiting;
            let at = self.now + c.retry;
            self.schedule(at, Ev::Arrive(client));
        } else {
            c.state = ClientState::Done(outcome);
        }
        self.stats.entry(name).or_default().ended(outcome);
    }

    fn end_conn(&mut self, pid: Pid, conn: u64, outcome: Outcome) {
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        let Some(c) = proc.conns.remove(&conn) else {
            return;
        };
        self.finish_client(c.client, outcome);
        // The machine retires or frees the slot (§2.5) and may exit.
        self.step(pid, ProcEvent::ClientClosed(conn));
    }

    /// Every process reads the fifos it took and, with free slots, accepts from its sockets; a
    /// login process in overflow mode is told its listener is readable (its machine decides
    /// whom to kill, and when).
    fn accept_pass(&mut self) {
        let pids: Vec<Pid> = self.procs.keys().copied().collect();
        for pid in pids {
            self.read_fifos(pid);
            while let Some(proc) = self.procs.get(&pid) {
                let waiting = proc
                    .sockets
                    .iter()
                    .copied()
                    .find(|s| self.sockets[*s].open && !self.sockets[*s].queue.is_empty());
                let Some(socket) = waiting else {
                    break;
                };
                if proc.can_accept() {
                    self.accept(pid, socket);
                    continue;
                }
                let running = proc.state == ProcState::Running;
                let readable = running
                    && self
                        .procs
                        .get_mut(&pid)
                        .is_some_and(|p| p.machine.take_readable());
                if !readable {
                    break;
                }
                let jitter = self.rng.random();
                // Performance mode kills at once and takes the freed slot in this pass.
                self.step(pid, ProcEvent::Readable(jitter));
            }
        }
    }

    fn accept(&mut self, pid: Pid, socket: usize) {
        if self.sockets[socket].fifo {
            self.take_fifo(pid, socket);
            return;
        }
        let Some(client) = self.sockets[socket].queue.pop_front() else {
            return;
        };
        self.unreported(socket);
        if let ClientState::HandingOff {
            login, conn, since, ..
        } = self.clients[client].state
        {
            self.take_handoff(pid, client, login, conn, since);
            return;
        }
        if !self.take_queued(pid, client) {
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let login_service = self
            .procs
            .get(&pid)
            .and_then(|p| self.services.get(&p.service))
            .is_some_and(|s| s.service_type == ServiceType::Login);
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.conns.insert(
                conn,
                Conn {
                    client,
                    logged_in: false,
                },
            );
        }
        self.clients[client].state = ClientState::Connected { pid };
        let (behaviour, login_delay, session, auth) = {
            let c = &self.clients[client];
            (c.behaviour, c.login_delay, c.session, c.auth)
        };
        match (behaviour, login_service) {
            // The login machine's pre-auth timeout disconnects it.
            (Behaviour::PreAuthIdle, true) => {}
            (Behaviour::PreAuthIdle, false) => {
                let at = self.now + PRE_AUTH_TIMEOUT;
                self.schedule(at, Ev::End(pid, conn, Outcome::TimedOut));
            }
            (Behaviour::Login, true) => {
                let at = self.now + login_delay;
                if auth > Duration::ZERO {
                    let auth_at = self.now + login_delay.saturating_sub(auth);
                    self.schedule(auth_at, Ev::Auth(pid, conn));
                }
                self.schedule(at, Ev::Login(pid, conn));
            }
            (Behaviour::FifoWrite, _) => {
                // Writers only ever queue in fifos, which `take_fifo` reads.
                self.fail(format!("fifo writer {client} was accepted from a socket"));
                return;
            }
            (Behaviour::Login, false) => {
                self.mark_served(client);
                let at = self.now + login_delay + session;
                self.schedule(at, Ev::End(pid, conn, Outcome::Served));
            }
        }
        self.step(pid, ProcEvent::Accepted(conn));
    }

    /// The socket's queue shrank: its listeners' readability is reported afresh.
    fn unreported(&mut self, socket: usize) {
        for l in self.listeners.values_mut() {
            if l.socket == socket {
                l.reported = None;
            }
        }
    }

    /// Process `pid`, with a free slot, found its fifo readable and takes the fifo itself as its
    /// connection (Dovecot's master-service, when `accept()` fails with ENOTSOCK): the child
    /// machine counts one client, which it gives back at once because a fifo reader stays open
    /// forever and is not a real client. The process stops listening on the fifo and reads it
    /// from now on.
    fn take_fifo(&mut self, pid: Pid, socket: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.sockets.retain(|&s| s != socket);
            proc.fifos.push(socket);
        }
        self.step(pid, ProcEvent::Accepted(conn));
        self.step(pid, ProcEvent::ClientClosed(conn));
        self.read_fifos(pid);
    }

    /// A running process reads every message waiting in the fifos it took; each writer is
    /// served.
    fn read_fifos(&mut self, pid: Pid) {
        let Some(proc) = self.procs.get(&pid) else {
            return;
        };
        if proc.state != ProcState::Running {
            return;
        }
        for socket in proc.fifos.clone() {
            if self.sockets[socket].queue.is_empty() {
                continue;
            }
            let writers: Vec<usize> = self.sockets[socket].queue.drain(..).collect();
            self.unreported(socket);
            for client in writers {
                if !self.take_queued(pid, client) {
                    return;
                }
                self.mark_served(client);
                self.finish_client(client, Outcome::Served);
            }
        }
    }

    /// Process `pid` took `client` from a queue (an accept, or a read of its fifo message):
    /// counts its wait. `false` (and a broken rule) when the client was not queued.
    fn take_queued(&mut self, pid: Pid, client: usize) -> bool {
        let ClientState::Queued { since, .. } = self.clients[client].state else {
            self.fail(format!(
                "client {client} was in a queue in state {:?}",
                self.clients[client].state
            ));
            return false;
        };
        let wait = (self.now - since).as_millis() as u64;
        self.count_accepted(pid, wait);
        true
    }

    /// Counts an accept by `pid` after `wait_ms` in the queue, under the process's service.
    fn count_accepted(&mut self, pid: Pid, wait_ms: u64) {
        let name = self
            .procs
            .get(&pid)
            .and_then(|p| self.services.get(&p.service))
            .map(|s| s.name.clone());
        if let Some(name) = name {
            self.stats.entry(name).or_default().accepted(wait_ms);
        }
    }

    /// The unix socket a login process of `service` hands logged-in clients to, as Dovecot's
    /// login processes do (`login/<protocol>`, the service's `protocol`; reference §5.2):
    /// `None` when the service has no protocol or the configuration no such socket, and the
    /// client then stays in its login process for its session (proxied, as with TLS).
    fn handoff_socket(&self, service: ServiceId) -> Option<usize> {
        let protocol = self.services.get(&service)?.protocol.as_str();
        if protocol.is_empty() {
            return None;
        }
        let wanted = format!("login/{protocol}");
        let matches = |path: &str| path == wanted || path.ends_with(&format!("/{wanted}"));
        let mut found = None;
        for (index, socket) in self.sockets.iter().enumerate() {
            if !socket.fifo && socket.path.as_deref().is_some_and(matches) {
                // The newest socket at that path is the one a connect reaches.
                found = Some(index);
            }
        }
        found
    }

    /// A login process hands a logged-in client to the post-login service: the client's
    /// connection waits in the unix socket's queue (the machine keeps it as `HandingOff`) until a
    /// post-login process accepts it. A connect that fails (nothing listens, or the backlog is
    /// full: reference §7.2 item 4) ends the client at once.
    fn hand_off(&mut self, pid: Pid, conn: u64, client: usize, socket: usize) {
        self.step(pid, ProcEvent::ClientState(conn, LoginState::HandingOff));
        let still_there = self
            .procs
            .get(&pid)
            .is_some_and(|p| p.state != ProcState::Zombie && p.conns.contains_key(&conn));
        if !still_there {
            return;
        }
        let s = &mut self.sockets[socket];
        if !s.open || s.queue.len() as u32 >= s.backlog {
            self.end_conn(pid, conn, Outcome::Refused);
            return;
        }
        s.queue.push_back(client);
        self.clients[client].state = ClientState::HandingOff {
            login: pid,
            conn,
            socket,
            since: self.now,
        };
    }

    /// Post-login process `pid` accepted a handed-off client: the login process is done with
    /// it (the post-login process answered OK), and the client has its session here.
    fn take_handoff(&mut self, pid: Pid, client: usize, login: Pid, conn: u64, since: Instant) {
        let wait = (self.now - since).as_millis() as u64;
        self.count_accepted(pid, wait);
        let handed = self
            .procs
            .get_mut(&login)
            .and_then(|p| p.conns.remove(&conn))
            .is_some();
        if handed {
            self.step(login, ProcEvent::ClientClosed(conn));
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.conns.insert(
                conn,
                Conn {
                    client,
                    logged_in: true,
                },
            );
        }
        self.clients[client].state = ClientState::Connected { pid };
        self.mark_served(client);
        let at = self.now + self.clients[client].session;
        self.schedule(at, Ev::End(pid, conn, Outcome::Served));
        self.step(pid, ProcEvent::Accepted(conn));
    }

    /// A queued client's socket was closed or drained by the master. A client being handed off
    /// is closed by its login process, which reads the end of the handoff connection.
    fn drop_queued(&mut self, client: usize, outcome: Outcome) {
        match self.clients[client].state {
            ClientState::HandingOff { login, conn, .. }
                if self
                    .procs
                    .get(&login)
                    .is_some_and(|p| p.conns.contains_key(&conn)) =>
            {
                self.end_conn(login, conn, outcome)
            }
            _ => self.finish_client(client, outcome),
        }
    }

    /// Level-triggered readiness: a watched listener with connections waiting is reported
    /// once per queue length. A fifo is reported as one waiting client however many messages
    /// it holds, as the shell reports it (`listen::queued` counts only TCP accept queues): one
    /// reader drains it all.
    fn report_readable(&mut self) {
        let mut reports = Vec::new();
        for (id, l) in self.listeners.iter_mut() {
            let socket = &self.sockets[l.socket];
            let len = socket.queue.len();
            if l.watched && len > 0 && l.reported != Some(len) {
                l.reported = Some(len);
                let queued = if socket.fifo { 1 } else { len as u32 };
                reports.push(Input::ListenerReadable {
                    listener: *id,
                    queued,
                });
            }
        }
        self.pending.extend(reports);
    }
}

/// Runs `config` under `load` to its end and returns the world (for checks and the report).
pub fn run(
    config: MasterConfig,
    load: &LoadProfile,
    options: Options,
) -> (World, Result<(), SimError>) {
    let mut world = World::new(config, load, options);
    let result = world.run_until(load.duration_ms);
    (world, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service of five processes, one client each, process_min_avail 2, on port 143.
    fn imap() -> crate::load::ServiceSpec {
        crate::load::ServiceSpec {
            name: "imap".into(),
            protocol: "imap".into(),
            service_type: ServiceType::Default,
            process_limit: 5,
            client_limit: 1,
            service_count: 1,
            process_min_avail: 2,
            idle_kill_ms: Some(10_000),
            port: 143,
            unix_listener: None,
            fifo_listener: None,
        }
    }

    /// Three clients of `imap` at 100 ms that log in after 10 ms and stay 100 ms.
    fn imap_clients() -> crate::load::ClientGroup {
        crate::load::ClientGroup {
            service: "imap".into(),
            count: 3,
            start_ms: 100,
            spread_ms: 0,
            behaviour: Behaviour::Login,
            login_delay_ms: (10, 10),
            session_ms: (100, 100),
            reconnect: 0,
            retry_ms: 1_000,
            syn_retries: 0,
            auth_ms: (0, 0),
            client_host: None,
            patience_ms: None,
        }
    }

    /// A 5 s world of one service and one group of clients.
    fn world_of(service: crate::load::ServiceSpec, clients: crate::load::ClientGroup) -> World {
        let config = crate::load::SimConfig {
            services: vec![service],
            shutdown_clients: true,
        };
        let load = LoadProfile {
            duration_ms: 5_000,
            clients: vec![clients],
            ..LoadProfile::default()
        };
        World::new(config.master_config(), &load, Options::default())
    }

    fn small_world() -> World {
        world_of(imap(), imap_clients())
    }

    /// The outside check "no signal to a reaped pid" must be able to fail: a driver bug that
    /// signals a pid after telling the master it exited is caught at once.
    #[test]
    fn a_signal_to_a_reaped_pid_is_caught() {
        let mut world = small_world();
        world
            .run_until(5_000)
            .expect("the small world runs cleanly");
        let reaped = *world
            .reaped
            .iter()
            .next()
            .expect("service_count 1 recycles processes");
        world.signal(reaped, Signal::Term);
        let error = world.error.clone().expect("the signal is flagged");
        assert!(error.what.contains("already reaped"), "{error}");
    }

    /// The pair check "live children == the master's process count" must be able to fail: a
    /// kernel that loses a process without telling the master is caught.
    #[test]
    fn a_child_the_master_does_not_know_about_is_caught() {
        let mut world = small_world();
        world
            .run_until(1_000)
            .expect("the small world runs cleanly");
        let pid = *world
            .procs
            .keys()
            .next()
            .expect("process_min_avail keeps processes");
        world.procs.remove(&pid);
        world.outside_checks();
        let error = world.error.clone().expect("the mismatch is flagged");
        assert!(error.what.contains("live children"), "{error}");
    }

    /// Every client of the small world is served and none is left in a queue.
    #[test]
    fn the_small_world_serves_everyone() {
        let mut world = small_world();
        world
            .run_until(5_000)
            .expect("the small world runs cleanly");
        assert!(world.unfinished_clients().is_empty());
        assert_eq!(world.report().services[0].served, 3);
    }

    /// A fifo is readable as one waiting client however many messages it holds: the shell
    /// cannot count a fifo's messages (`listen::queued` counts TCP accept queues only) and one
    /// reader drains them all. Reporting the message count instead made the master fork one
    /// process per message waiting; this pins the one report and the one fork.
    #[test]
    fn a_fifo_is_readable_as_one_client() {
        let aggregator = crate::load::ServiceSpec {
            name: "aggregator".into(),
            protocol: String::new(),
            service_count: 0,
            process_min_avail: 0,
            port: 0,
            fifo_listener: Some("replication-notify-fifo".into()),
            ..imap()
        };
        // The writers' own arrivals come after the end of the run: the test queues them.
        let writers = crate::load::ClientGroup {
            service: "aggregator".into(),
            start_ms: 60_000,
            behaviour: Behaviour::FifoWrite,
            ..imap_clients()
        };
        let mut world = world_of(aggregator, writers);
        world.run_until(50).expect("the fifo world starts cleanly");
        let fifo = world
            .sockets
            .iter()
            .position(|s| s.fifo)
            .expect("the fifo is open");
        for client in 0..3 {
            world.clients[client].state = ClientState::Queued {
                socket: fifo,
                since: world.now,
            };
            world.sockets[fifo].queue.push_back(client);
        }
        world.report_readable();
        let reports: Vec<&Input> = world.pending.iter().collect();
        assert!(
            matches!(reports[..], [Input::ListenerReadable { queued: 1, .. }]),
            "{reports:?}"
        );
        world.settle();
        world.run_until(5_000).expect("the fifo world runs cleanly");
        assert_eq!(world.spawn_steps("aggregator"), vec![1]);
        assert_eq!(world.report().services[0].served, 3);
        assert!(world.unfinished_clients().is_empty());
    }

    #[test]
    fn fnv_is_the_published_function() {
        // FNV-1a of "a" is a published test vector.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
