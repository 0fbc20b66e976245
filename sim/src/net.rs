//! The turmoil world: the same [`Master`] on a server host, service processes as `spawn_local`
//! tasks serving real (simulated) TCP connections, and client hosts running scripted clients.
//!
//! Where the discrete-event driver models connections as numbers, this world carries bytes:
//! clients connect over turmoil's TCP, wait in the listener's accept queue until a process
//! takes them, read a greeting, log in with a line, hold the session, and quit. It is the place
//! for network-shaped scenarios (many clients, floods of connections that never log in,
//! reconnects, partitions and held links), at a coarse tick (10 ms by default).
//!
//! Model: turmoil has no unix sockets, processes or signals, so the server host carries a
//! small kernel: an acceptor task per listening socket fills an accept queue (with the
//! service's backlog) that the master's listener and every child share through `Rc` clones,
//! which is how fd inheritance is modelled; processes are tasks with a signal channel, each
//! running the same machine as in the discrete-event driver, fed the same way
//! ([`crate::machine`]): core's `Login` machine for a login service (who is killed with
//! `-ERR Connection queue full` when the service is full and when, the "all processes full"
//! state read on SIGUSR1, the pre-auth timeout), core's `Child` machine otherwise. A
//! connection is a task that reports the client's login to its process and that the process
//! can tell to disconnect with a reason, which the client reads. Status records and exits come
//! back to the driver on one channel. A service has at most one inet and one unix listener here
//! (a `ServiceSpec` has no more), and its processes wait on both queues.
//!
//! Unix sockets live inside the server host: a queue known by its path, which only login
//! processes reach. A login process of a service with `protocol` P hands each logged-in client
//! to `login/P` when the configuration has it, as in the discrete-event driver: the client's
//! `TcpStream` goes into that queue (fd passing), the Login machine holds the client as
//! `HandingOff`, and the post-login process that accepts it answers and has the session; the
//! client reads its `+OK logged in` from there.
//!
//! Determinism: `Builder::rng_seed`, every `select!` is `biased`, time only from turmoil
//! (`turmoil::elapsed`) and tokio's paused clock, `BTreeMap` only, and every random draw from
//! a `SmallRng` seeded from the load's seed. The driver folds every step into the same FNV-1a
//! hash as the discrete-event driver.
//!
//! Checks: [`Master::check_invariants`] after every step and each process machine's invariants
//! after every input; the server's live processes equal the master's process count; no signal
//! goes to a pid the master was told had exited.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roost_core::ids::{ListenerId, Pid, ProcessUid, ServiceId};
use roost_core::input::Input;
use roost_core::login::{ClientState, DisconnectReason, OverflowPolicy, DEFAULT_OVERFLOW_POLICY};
use roost_core::master::Master;
use roost_core::output::{Output, SpawnRequest};
use roost_core::setup::{ListenerKind, ServiceType};
use roost_core::signal::{ExitStatus, Signal};
use roost_core::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use turmoil::net::{TcpListener, TcpStream};

use crate::des::{fnv1a, PRE_AUTH_TIMEOUT};
use crate::load::{Behaviour, LoadProfile, NetFault, SimConfig};
use crate::machine::{Action, Event, ProcMachine, ProcSpec, Surroundings};
use crate::plan::ServiceReport;
use crate::stats::{told_line, Outcome, Stats};
use crate::view;

/// How the turmoil world is built.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// turmoil's tick, ms.
    pub tick_ms: u64,
    /// Client hosts the clients are spread over.
    pub client_hosts: usize,
}

impl Default for NetOptions {
    fn default() -> NetOptions {
        NetOptions {
            // turmoil polls every host every tick: one client host for all clients was 3× faster
            // than four in the benchmark (1,000 clients, 10 min: 1,423× against 478× real time).
            tick_ms: 10,
            client_hosts: 1,
        }
    }
}

/// What a turmoil run saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSummary {
    /// Clients that logged in.
    pub served: u64,
    /// Connection attempts that ended before logging in (dropped, refused, killed, timed out).
    pub failed_attempts: u64,
    /// Clients that never logged in (every attempt failed, or pre-auth idlers).
    pub never_served: u64,
    /// Connect-to-greeting waits of served clients, ms, sorted.
    pub waits_ms: Vec<u64>,
    /// Every notice with its time (ms).
    pub notices: Vec<(u64, String)>,
    /// Master inputs.
    pub steps: u64,
    /// Hash of the one-line-per-step trace.
    pub hash: u64,
    /// Most processes alive at once.
    pub peak_processes: usize,
    /// Server-side connections closed by the pre-auth timeout (no login line in time).
    pub pre_auth_timeouts: u64,
    /// Pre-login clients a full login process killed to make room (`Connection queue full`).
    pub login_killed: u64,
    /// Client attempts abandoned after their patience ran out without an answer.
    pub client_timeouts: u64,
    /// Every line a process sent a client it disconnected, with the time it was sent (ms).
    pub told: Vec<(u64, String)>,
    /// Every `-ERR` line a client read, with the time it read it (ms): what `told` became
    /// after the network had its say.
    pub heard: Vec<(u64, String)>,
    /// Per service (configuration order), the capacity report's figures.
    pub services: Vec<ServiceReport>,
    /// Per service, processes created by each master step that created any.
    pub spawn_steps: BTreeMap<String, Vec<u32>>,
    /// The master's exit status, if it exited.
    pub exit: Option<i32>,
}

/// A client gives up an attempt (connect, greeting or login reply) after this long unless its
/// group says otherwise (`ClientGroup::patience_ms`).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

impl fmt::Display for NetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |q: usize| {
            if self.waits_ms.is_empty() {
                0
            } else {
                self.waits_ms[(self.waits_ms.len() * q / 100).min(self.waits_ms.len() - 1)]
            }
        };
        write!(
            f,
            "{} served, {} failed attempts, {} never served, wait p50 {} ms p99 {} ms, peak {} processes, {} client timeouts, {} pre-auth timeouts, {} killed, {} steps, hash {:016x}",
            self.served,
            self.failed_attempts,
            self.never_served,
            p(50),
            p(99),
            self.peak_processes,
            self.client_timeouts,
            self.pre_auth_timeouts,
            self.login_killed,
            self.steps,
            self.hash
        )
    }
}

/// The kernel's accept queue of one listening socket.
struct Queue {
    /// Accepted by the kernel, not yet by a process, with the time each was queued.
    conns: VecDeque<(Pending, Instant)>,
    /// The listen backlog.
    backlog: usize,
    /// Woken when a connection is queued.
    notify: Rc<Notify>,
    /// Still open: a unix socket the master closed refuses connects.
    open: bool,
}

/// A connection in an accept queue.
enum Pending {
    /// A client's TCP connection (inet socket).
    Client(TcpStream),
    /// A login process's handoff of a logged-in client (unix socket `login/P`): the client's
    /// connection travels with it, as an fd does over SCM_RIGHTS.
    Handoff {
        /// The client's connection. Whoever takes it first has it: the post-login process
        /// that accepts the handoff, or the login process that gives the handoff up.
        client: Rc<RefCell<Option<TcpStream>>>,
        /// The post-login process's answer; dropped unanswered = the handoff failed.
        answer: oneshot::Sender<()>,
    },
}

/// The unix sockets of the server host by path, newest last opened: where a login process
/// connects to hand a client off.
type UnixSockets = Rc<RefCell<BTreeMap<String, Rc<RefCell<Queue>>>>>;

/// Messages from the server's kernel and processes to its driver.
enum KernelEvent {
    /// A connection was queued on a socket.
    Queued,
    /// A status record.
    Status {
        pid: Pid,
        uid: ProcessUid,
        available_count: u32,
    },
    /// A process ended.
    Exited { pid: Pid, status: ExitStatus },
}

/// Messages from the driver to one process.
#[derive(Copy, Clone, Debug)]
enum ProcMsg {
    /// A signal.
    Signal(Signal),
    /// The master's end of the generation is gone (reference §4.4).
    MasterDead,
}

/// The driver's record of a listener.
struct NetListener {
    queue: Rc<RefCell<Queue>>,
    watched: bool,
    reported: Option<usize>,
}

impl NetListener {
    /// A listener on this queue, not watched yet (a fresh registration).
    fn new(queue: Rc<RefCell<Queue>>) -> NetListener {
        NetListener {
            queue,
            watched: false,
            reported: None,
        }
    }
}

/// Everything the world shares (one OS thread: `Rc`).
#[derive(Default)]
struct Shared {
    summary: NetSummary,
    violation: Option<String>,
    waits: Vec<u64>,
    /// Per-service counts, by service name.
    stats: BTreeMap<String, Stats>,
    /// Processes alive now, by service name (the last settle's count).
    alive: BTreeMap<String, u32>,
}

impl Shared {
    fn stats(&mut self, name: &str) -> &mut Stats {
        self.stats.entry(name.to_owned()).or_default()
    }

    fn violation(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }
}

type SharedRef = Rc<RefCell<Shared>>;

/// Runs `load`'s clients against `config` in a turmoil world.
pub fn run(
    config: &SimConfig,
    load: &LoadProfile,
    options: NetOptions,
) -> Result<NetSummary, String> {
    let shared: SharedRef = Rc::new(RefCell::new(Shared::default()));
    let longest_patience = load
        .clients
        .iter()
        .filter_map(|g| g.patience_ms)
        .max()
        .unwrap_or(0);
    let mut sim = turmoil::Builder::new()
        .rng_seed(load.seed)
        .tick_duration(std::time::Duration::from_millis(options.tick_ms))
        .simulation_duration(std::time::Duration::from_millis(
            load.duration_ms + (PRE_AUTH_TIMEOUT.as_millis() as u64).max(longest_patience) + 60_000,
        ))
        .min_message_latency(std::time::Duration::from_millis(1))
        .max_message_latency(std::time::Duration::from_millis(5))
        .tcp_capacity(1 << 16)
        .build();

    let master_config = config.master_config();
    let backlog = load.backlog;
    let overflow = load
        .overflow_policy
        .as_ref()
        .map_or(DEFAULT_OVERFLOW_POLICY, |p| p.policy());
    {
        let shared = shared.clone();
        let seed = load.seed;
        sim.host("server", move || {
            let shared = shared.clone();
            let master_config = master_config.clone();
            async move {
                server(master_config, backlog, overflow, seed, shared).await;
                Ok(())
            }
        });
    }

    // Clients, dealt round-robin over a few hosts unless their group names one: turmoil polls
    // every host every tick, so few hosts keep the simulation fast.
    let mut rng = SmallRng::seed_from_u64(load.seed ^ 0x006e_6574_776f_726b);
    let hosts = options.client_hosts.max(1);
    let mut per_host: Vec<Vec<ClientSpec>> = vec![Vec::new(); hosts];
    let mut n = 0usize;
    for group in &load.clients {
        let port = config
            .services
            .iter()
            .find(|s| s.name == group.service)
            .map(|s| s.port)
            .unwrap_or(0);
        if let Some(host) = group.client_host.filter(|h| *h >= hosts) {
            return Err(format!(
                "clients of {} are on client host {host}, but the world has {hosts}",
                group.service
            ));
        }
        for i in 0..group.count {
            let at = group.start_ms
                + if group.count > 1 {
                    group.spread_ms * u64::from(i) / u64::from(group.count)
                } else {
                    0
                };
            let draw = |rng: &mut SmallRng, (lo, hi): (u64, u64)| {
                if hi <= lo {
                    lo
                } else {
                    rng.random_range(lo..=hi)
                }
            };
            let spec = ClientSpec {
                service: group.service.clone(),
                port,
                at_ms: at,
                behaviour: group.behaviour,
                login_delay_ms: draw(&mut rng, group.login_delay_ms),
                session_ms: draw(&mut rng, group.session_ms),
                reconnect: group.reconnect,
                retry_ms: group.retry_ms,
                patience: group
                    .patience_ms
                    .map_or(CLIENT_TIMEOUT, Duration::from_millis),
            };
            let host = group.client_host.unwrap_or(n % hosts);
            per_host[host].push(spec);
            n += 1;
        }
    }
    let duration_ms = load.duration_ms;
    for (index, clients) in per_host.into_iter().enumerate() {
        let shared = shared.clone();
        let faults: Vec<NetFault> = load
            .net_faults
            .iter()
            .filter(|f| f.client_hosts.is_empty() || f.client_hosts.contains(&index))
            .cloned()
            .collect();
        sim.client(format!("client{index}"), async move {
            let mut tasks = Vec::new();
            for fault in faults {
                tasks.push(tokio::task::spawn_local(net_fault(fault, index)));
            }
            // The world lasts the load's duration at least, so the server's own timeouts (the
            // pre-auth timeout of connections cut off) can be seen.
            tasks.push(tokio::task::spawn_local(tokio::time::sleep(
                std::time::Duration::from_millis(duration_ms),
            )));
            for spec in clients {
                let shared = shared.clone();
                tasks.push(tokio::task::spawn_local(client(spec, shared)));
            }
            for task in tasks {
                task.await?;
            }
            Ok(())
        });
    }
    let result = sim.run();
    let mut shared = shared.borrow_mut();
    if let Some(violation) = shared.violation.take() {
        return Err(violation);
    }
    result.map_err(|e| format!("turmoil: {e}"))?;
    let mut summary = shared.summary.clone();
    let mut waits = shared.waits.clone();
    waits.sort_unstable();
    summary.waits_ms = waits;
    let mut names: Vec<&str> = Vec::new();
    for service in &config.services {
        if !names.contains(&service.name.as_str()) {
            names.push(&service.name);
        }
    }
    for name in names {
        let stats = shared.stats.get(name).cloned().unwrap_or_default();
        let alive = shared.alive.get(name).copied().unwrap_or(0);
        summary.services.push(stats.report(name, alive));
        summary
            .spawn_steps
            .insert(name.to_owned(), stats.spawn_steps().to_vec());
    }
    Ok(summary)
}

/// Cuts or holds the links between this client host and the server for the fault's time.
async fn net_fault(fault: NetFault, host: usize) {
    let host = format!("client{host}");
    tokio::time::sleep(std::time::Duration::from_millis(fault.at_ms)).await;
    if fault.hold {
        turmoil::hold("server", host.as_str());
    } else {
        turmoil::partition("server", host.as_str());
    }
    tokio::time::sleep(std::time::Duration::from_millis(fault.duration_ms)).await;
    if fault.hold {
        turmoil::release("server", host.as_str());
    } else {
        turmoil::repair("server", host.as_str());
    }
}

/// One scripted client.
#[derive(Clone, Debug)]
struct ClientSpec {
    service: String,
    port: u16,
    at_ms: u64,
    behaviour: Behaviour,
    login_delay_ms: u64,
    session_ms: u64,
    reconnect: u32,
    retry_ms: u64,
    /// How long it waits for an answer before it gives the attempt up.
    patience: Duration,
}

/// How one attempt ended.
enum Attempt {
    Served,
    Failed,
}

async fn client(spec: ClientSpec, shared: SharedRef) {
    tokio::time::sleep(std::time::Duration::from_millis(spec.at_ms)).await;
    let first_try = now();
    for attempt in 0..=spec.reconnect {
        match session(&spec, first_try, &shared).await {
            Attempt::Served => {
                shared.borrow_mut().summary.served += 1;
                return;
            }
            Attempt::Failed => {
                shared.borrow_mut().summary.failed_attempts += 1;
                if spec.behaviour != Behaviour::Login || attempt == spec.reconnect {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(spec.retry_ms)).await;
            }
        }
    }
    shared.borrow_mut().summary.never_served += 1;
}

/// Waits for `io` at most the client's patience; `None` (counted) when the answer never came,
/// as when the network was lost mid-login.
async fn within<T>(
    spec: &ClientSpec,
    shared: &SharedRef,
    io: impl std::future::Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout(spec.patience, io).await {
        Ok(value) => Some(value),
        Err(_) => {
            shared.borrow_mut().summary.client_timeouts += 1;
            None
        }
    }
}

/// Reads one line; an `-ERR` line is recorded as heard. `true` when a line came.
async fn read_reply(
    stream: &mut BufReader<TcpStream>,
    line: &mut String,
    shared: &SharedRef,
) -> bool {
    line.clear();
    let read = matches!(stream.read_line(line).await, Ok(n) if n > 0);
    if read && line.starts_with("-ERR") {
        let heard = line.trim_end().to_owned();
        shared
            .borrow_mut()
            .summary
            .heard
            .push((now().as_millis(), heard));
    }
    read
}

async fn session(spec: &ClientSpec, first_try: Instant, shared: &SharedRef) -> Attempt {
    if spec.behaviour == Behaviour::FifoWrite {
        // The turmoil world has no fifos (their listeners fail to open): the write fails.
        return Attempt::Failed;
    }
    let started = turmoil::elapsed();
    let Some(Ok(stream)) = within(spec, shared, TcpStream::connect(("server", spec.port))).await
    else {
        return Attempt::Failed;
    };
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if within(spec, shared, read_reply(&mut stream, &mut line, shared)).await != Some(true) {
        return Attempt::Failed;
    }
    let wait = (turmoil::elapsed() - started).as_millis() as u64;
    if spec.behaviour == Behaviour::PreAuthIdle {
        // Never log in: hold the slot until the server closes the connection.
        read_reply(&mut stream, &mut line, shared).await;
        return Attempt::Failed;
    }
    tokio::time::sleep(std::time::Duration::from_millis(spec.login_delay_ms)).await;
    if stream.get_mut().write_all(b"LOGIN\r\n").await.is_err() {
        return Attempt::Failed;
    }
    let reply = within(spec, shared, read_reply(&mut stream, &mut line, shared)).await;
    if reply != Some(true) || !line.starts_with("+OK") {
        return Attempt::Failed;
    }
    {
        let mut shared = shared.borrow_mut();
        shared.waits.push(wait);
        let latency = (now() - first_try).as_millis() as u64;
        shared.stats(&spec.service).served(latency);
    }
    tokio::time::sleep(std::time::Duration::from_millis(spec.session_ms)).await;
    let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
    read_reply(&mut stream, &mut line, shared).await;
    Attempt::Served
}

/// What the server knows of a live process.
struct NetProc {
    service: ServiceId,
    name: String,
    signals: UnboundedSender<ProcMsg>,
}

/// The server host's driver.
struct Server {
    master: Master,
    listeners: BTreeMap<ListenerId, NetListener>,
    procs: BTreeMap<Pid, NetProc>,
    reaped: BTreeSet<Pid>,
    login_full: BTreeMap<ServiceId, Rc<Cell<bool>>>,
    next_pid: i32,
    events: UnboundedSender<KernelEvent>,
    backlog: Option<u32>,
    overflow: OverflowPolicy,
    rng: SmallRng,
    shared: SharedRef,
    pending: VecDeque<Input>,
    shutdown_clients: bool,
    /// Processes created in the current step, by service name.
    step_spawns: BTreeMap<String, u32>,
    /// The unix sockets, by path.
    unix: UnixSockets,
}

fn now() -> Instant {
    Instant::from_millis(turmoil::elapsed().as_millis() as u64)
}

async fn server(
    config: roost_core::setup::MasterConfig,
    backlog: Option<u32>,
    overflow: OverflowPolicy,
    seed: u64,
    shared: SharedRef,
) {
    let (events, mut rx) = unbounded_channel();
    let shutdown_clients = config.shutdown_clients;
    let mut server = Server {
        shutdown_clients,
        master: Master::new(config, now()),
        listeners: BTreeMap::new(),
        procs: BTreeMap::new(),
        reaped: BTreeSet::new(),
        login_full: BTreeMap::new(),
        next_pid: 100,
        events,
        backlog,
        overflow,
        rng: SmallRng::seed_from_u64(seed),
        shared: shared.clone(),
        pending: VecDeque::new(),
        step_spawns: BTreeMap::new(),
        unix: UnixSockets::default(),
    };
    server.drain(String::new()).await;
    loop {
        server.settle().await;
        if shared.borrow().violation.is_some() {
            return;
        }
        let deadline = server.master.poll_timeout();
        let sleep_for = deadline.map(|at| at - now());
        tokio::select! {
            biased;
            event = rx.recv() => match event {
                Some(KernelEvent::Queued) => {}
                Some(KernelEvent::Status { pid, uid, available_count }) => {
                    server.pending.push_back(Input::Status { pid, uid, available_count });
                }
                Some(KernelEvent::Exited { pid, status }) => {
                    server.pending.push_back(Input::Exited { pid, status });
                }
                None => return,
            },
            _ = tokio::time::sleep(sleep_for.unwrap_or(Duration::ZERO)), if sleep_for.is_some() => {
                server.pending.push_back(Input::Timeout);
            }
        }
    }
}

impl Server {
    async fn settle(&mut self) {
        loop {
            while let Some(input) = self.pending.pop_front() {
                self.feed(input).await;
            }
            for (id, l) in self.listeners.iter_mut() {
                let len = l.queue.borrow().conns.len();
                if l.watched && len > 0 && l.reported != Some(len) {
                    l.reported = Some(len);
                    self.pending.push_back(Input::ListenerReadable {
                        listener: *id,
                        queued: len as u32,
                    });
                }
            }
            if self.pending.is_empty() {
                break;
            }
        }
        let live = self.procs.len();
        let counted = view::process_total(&self.master);
        let mut alive: BTreeMap<String, u32> = BTreeMap::new();
        for proc in self.procs.values() {
            *alive.entry(proc.name.clone()).or_default() += 1;
        }
        let mut shared = self.shared.borrow_mut();
        for (name, count) in &alive {
            shared.stats(name).alive(*count);
        }
        shared.alive = alive;
        shared.summary.peak_processes = shared.summary.peak_processes.max(live);
        if live != counted {
            shared.violation(format!(
                "at {} ms: the server has {live} live processes, the master counts {counted}",
                now().as_millis()
            ));
        }
    }

    async fn feed(&mut self, input: Input) {
        if let Input::Exited { pid, .. } = &input {
            self.procs.remove(pid);
            self.reaped.insert(*pid);
        }
        let at = now();
        let head = format!("{} {input:?}", at.as_millis());
        self.master.handle(input, at);
        self.drain(head).await;
        if let Err(violation) = self.master.check_invariants() {
            self.shared
                .borrow_mut()
                .violation(format!("at {} ms: {violation}", at.as_millis()));
        }
    }

    async fn drain(&mut self, head: String) {
        let mut line = head;
        line.push_str(" ->");
        while let Some(output) = self.master.poll_output() {
            line.push_str(&format!(" {output:?}"));
            self.apply(output).await;
        }
        let mut shared = self.shared.borrow_mut();
        for (name, count) in std::mem::take(&mut self.step_spawns) {
            shared.stats(&name).spawned(count);
        }
        shared.summary.steps += 1;
        let hash = if shared.summary.hash == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            shared.summary.hash
        };
        shared.summary.hash = fnv1a(fnv1a(hash, line.as_bytes()), b"\n");
    }

    /// Counts the clients of `closed` (connections taken from the listener's queue and closed)
    /// as attempts of the listener's service that ended so. A handoff among them is counted by
    /// its login process, which sees it fail.
    fn count_ended(
        &self,
        listener: ListenerId,
        outcome: Outcome,
        closed: VecDeque<(Pending, Instant)>,
    ) {
        let count = closed
            .iter()
            .filter(|(pending, _)| matches!(pending, Pending::Client(_)))
            .count();
        if count == 0 {
            return;
        }
        if let Some(name) = view::listener_service_name(&self.master, listener) {
            let mut shared = self.shared.borrow_mut();
            for _ in 0..count {
                shared.stats(&name).ended(outcome);
            }
        }
    }

    async fn apply(&mut self, output: Output) {
        match output {
            Output::OpenListener {
                listener,
                service,
                config,
            } => {
                let backlog = view::listen_backlog(&self.master, service, self.backlog) as usize;
                let queue = Rc::new(RefCell::new(Queue {
                    conns: VecDeque::new(),
                    backlog,
                    notify: Rc::new(Notify::new()),
                    open: true,
                }));
                let port = match config.kind {
                    ListenerKind::Inet { port, .. } => port,
                    ListenerKind::Unix { path, .. } => {
                        // Only login processes connect to it, inside the host.
                        self.unix.borrow_mut().insert(path, queue.clone());
                        self.listeners.insert(listener, NetListener::new(queue));
                        return;
                    }
                    ListenerKind::Fifo { .. } => {
                        self.pending.push_back(Input::ListenFailed {
                            listener,
                            soft: false,
                            error: "the turmoil world has no fifos".to_owned(),
                        });
                        return;
                    }
                };
                let name = view::service_config(&self.master, service)
                    .map(|c| c.name)
                    .unwrap_or_default();
                match TcpListener::bind(("0.0.0.0", port)).await {
                    Ok(socket) => {
                        tokio::task::spawn_local(acceptor(
                            socket,
                            queue.clone(),
                            name,
                            self.events.clone(),
                            self.shared.clone(),
                        ));
                        self.listeners.insert(listener, NetListener::new(queue));
                    }
                    Err(e) => self.pending.push_back(Input::ListenFailed {
                        listener,
                        soft: true,
                        error: format!("listen(*, {port}) failed: {e}"),
                    }),
                }
            }
            Output::TakeOverListener { from, to } => {
                if let Some(old) = self.listeners.remove(&from) {
                    self.listeners.insert(to, NetListener::new(old.queue));
                }
            }
            Output::CloseListener { listener } => {
                if let Some(old) = self.listeners.remove(&listener) {
                    let closed = {
                        let mut queue = old.queue.borrow_mut();
                        queue.open = false;
                        std::mem::take(&mut queue.conns)
                    };
                    // A unix socket stays known by its path, closed: a connect to it fails.
                    self.count_ended(listener, Outcome::Refused, closed);
                }
            }
            Output::SetListening { listener, on } => {
                if let Some(l) = self.listeners.get_mut(&listener) {
                    if l.watched != on {
                        l.watched = on;
                        l.reported = None;
                    }
                }
            }
            Output::AcceptAndClose { listener } => {
                let mut dropped = VecDeque::new();
                if let Some(l) = self.listeners.get_mut(&listener) {
                    l.reported = None;
                    dropped = std::mem::take(&mut l.queue.borrow_mut().conns);
                }
                self.count_ended(listener, Outcome::Dropped, dropped);
            }
            Output::Spawn(request) => self.spawn(request),
            Output::Kill { pid, signal } => {
                if self.reaped.contains(&pid) {
                    self.shared
                        .borrow_mut()
                        .violation(format!("{signal} sent to reaped pid {pid}"));
                } else if let Some(proc) = self.procs.get(&pid) {
                    // A process that already ended has dropped its receiver; that is a zombie.
                    let _ = proc.signals.send(ProcMsg::Signal(signal));
                }
            }
            Output::SetLoginFull { service, full } => {
                self.login_full
                    .entry(service)
                    .or_insert_with(|| Rc::new(Cell::new(false)))
                    .set(full);
            }
            Output::RetireGeneration { generation, .. } => {
                let services: Vec<ServiceId> = view::services(&self.master)
                    .into_iter()
                    .filter(|s| s.generation == generation)
                    .map(|s| s.id)
                    .collect();
                for proc in self.procs.values() {
                    if services.contains(&proc.service) {
                        let _ = proc.signals.send(ProcMsg::MasterDead);
                    }
                }
            }
            Output::Exit(code) => {
                self.shared.borrow_mut().summary.exit = Some(code);
                for proc in self.procs.values() {
                    let _ = proc.signals.send(ProcMsg::MasterDead);
                }
            }
            Output::Log(notice) => self
                .shared
                .borrow_mut()
                .summary
                .notices
                .push((now().as_millis(), notice.to_string())),
            Output::ForgetGeneration { .. } | Output::AnvilKill { .. } | Output::Lifecycle(_) => {}
        }
    }

    fn spawn(&mut self, request: SpawnRequest) {
        let pid = Pid(self.next_pid);
        self.next_pid += 1;
        let config = view::service_config(&self.master, request.service);
        let (name, protocol, client_limit, service_count, login) = config
            .map(|c| {
                (
                    c.name,
                    c.protocol,
                    c.client_limit,
                    c.service_count,
                    c.service_type == ServiceType::Login,
                )
            })
            .unwrap_or((String::new(), String::new(), 1, 0, false));
        *self.step_spawns.entry(name.clone()).or_default() += 1;
        let queues = view::service_listeners(&self.master, request.service)
            .into_iter()
            .filter_map(|l| self.listeners.get(&l).map(|l| l.queue.clone()))
            .collect();
        // Dovecot's login processes hand logged-in clients to `login/<protocol>` (§5.2).
        let handoff = (login && !protocol.is_empty()).then(|| HandoffTo {
            path: format!("login/{protocol}"),
            unix: self.unix.clone(),
            events: self.events.clone(),
        });
        let login_full = self
            .login_full
            .entry(request.service)
            .or_insert_with(|| Rc::new(Cell::new(false)))
            .clone();
        let (tx, rx) = unbounded_channel();
        self.procs.insert(
            pid,
            NetProc {
                service: request.service,
                name: name.clone(),
                signals: tx,
            },
        );
        self.pending.push_back(Input::Spawned {
            process: request.process,
            pid,
        });
        let exec = Duration::from_millis(self.rng.random_range(1..=5));
        let jitter_seed = self.rng.random();
        tokio::task::spawn_local(process(Process {
            pid,
            uid: request.uid,
            name,
            queues,
            handoff,
            spec: ProcSpec {
                client_limit,
                service_count,
                login,
                die_with_master: self.shutdown_clients,
                overflow: self.overflow,
            },
            login_full,
            exec,
            jitter_seed,
            signals: rx,
            events: self.events.clone(),
            shared: self.shared.clone(),
        }));
    }
}

async fn acceptor(
    socket: TcpListener,
    queue: Rc<RefCell<Queue>>,
    name: String,
    events: UnboundedSender<KernelEvent>,
    shared: SharedRef,
) {
    while let Ok((stream, _)) = socket.accept().await {
        let notify = {
            let mut q = queue.borrow_mut();
            if q.conns.len() >= q.backlog {
                // Over the backlog: the connection is dropped (the client sees EOF).
                shared.borrow_mut().stats(&name).ended(Outcome::BacklogFull);
                continue;
            }
            q.conns.push_back((Pending::Client(stream), now()));
            q.notify.clone()
        };
        notify.notify_waiters();
        if events.send(KernelEvent::Queued).is_err() {
            return;
        }
    }
}

/// One simulated service process.
struct Process {
    pid: Pid,
    uid: ProcessUid,
    /// Its service's name (for the statistics).
    name: String,
    /// The accept queues of its listeners (inherited fds).
    queues: Vec<Rc<RefCell<Queue>>>,
    /// A login process: where it hands logged-in clients.
    handoff: Option<HandoffTo>,
    spec: ProcSpec,
    login_full: Rc<Cell<bool>>,
    exec: Duration,
    /// Seeds the overflow jitter this process draws.
    jitter_seed: u64,
    signals: UnboundedReceiver<ProcMsg>,
    events: UnboundedSender<KernelEvent>,
    shared: SharedRef,
}

/// One connection of a process.
struct Connection {
    /// The task serving it.
    task: JoinHandle<()>,
    /// Tells the task to send the client a reason and close.
    disconnect: oneshot::Sender<DisconnectReason>,
}

/// What a connection's task tells its process.
enum ConnEvent {
    /// The client moved on in its login: it sent its login line and is logged in (proxied
    /// here, never killed) or being handed to the post-login service.
    State(u64, ClientState),
    /// The connection is over (or handed off: the post-login process has it).
    Closed(u64),
}

/// Where a login process hands its logged-in clients: the unix socket `login/P` of a login
/// service with `protocol` P, as Dovecot's login processes do (reference §5.2;
/// docs/mail-host.md).
#[derive(Clone)]
struct HandoffTo {
    /// `login/P`.
    path: String,
    /// The host's unix sockets.
    unix: UnixSockets,
    /// Wakes the server's driver, so the master sees the socket readable.
    events: UnboundedSender<KernelEvent>,
}

impl HandoffTo {
    /// The socket a connect to the path reaches (the newest at that path, open or not), if
    /// the configuration has one at all.
    fn socket(&self) -> Option<Rc<RefCell<Queue>>> {
        let suffix = format!("/{}", self.path);
        self.unix
            .borrow()
            .iter()
            .find(|(path, _)| **path == self.path || path.ends_with(&suffix))
            .map(|(_, queue)| queue.clone())
    }
}

/// Where a connection's conversation starts.
enum Start {
    /// A client just accepted: the greeting, then its login line.
    Greet {
        /// The process is a login process (its machine has the pre-auth timeout).
        login: bool,
        /// Where a logged-in client goes, for a login process with a post-login service.
        handoff: Option<HandoffTo>,
        /// The process's service, for the statistics.
        service: String,
    },
    /// A client a login process handed off: logged in, its session starts here.
    HandedOff,
}

impl Process {
    /// Feeds one event to the machine and carries out what it asks; `Some(status)` when the
    /// process exits.
    fn step(
        &self,
        machine: &mut ProcMachine,
        event: Event,
        conns: &mut BTreeMap<u64, Connection>,
    ) -> Option<ExitStatus> {
        let world = Surroundings {
            // Once the master exits every process hears MasterDead; until then it reads.
            master_gone: false,
            login_full: self.login_full.get(),
        };
        let actions = match machine.step(event, now(), world) {
            Ok(actions) => actions,
            Err(violation) => {
                self.shared.borrow_mut().violation(format!(
                    "at {} ms: pid {}: {violation}",
                    now().as_millis(),
                    self.pid
                ));
                return None;
            }
        };
        for action in actions {
            match action {
                Action::Status { available_count } => {
                    let _ = self.events.send(KernelEvent::Status {
                        pid: self.pid,
                        uid: self.uid,
                        available_count,
                    });
                }
                Action::Disconnect { conn, reason } => {
                    if let Some(c) = conns.remove(&conn) {
                        let _ = c.disconnect.send(reason);
                        let mut shared = self.shared.borrow_mut();
                        let outcome = Outcome::of_disconnect(reason);
                        match outcome {
                            Outcome::LoginKilled => shared.summary.login_killed += 1,
                            _ => shared.summary.pre_auth_timeouts += 1,
                        }
                        shared.stats(&self.name).ended(outcome);
                        shared
                            .summary
                            .told
                            .push((now().as_millis(), told_line(reason)));
                    }
                }
                Action::Refused => self.shared.borrow_mut().violation(format!(
                    "pid {} refused a connection it was given while it accepted",
                    self.pid
                )),
                Action::Exit(code) => return Some(ExitStatus::Exited(code)),
            }
        }
        None
    }

    /// A connection's news: its login, or its end (news of a client the machine already
    /// disconnected is stale).
    fn on_conn_event(
        &self,
        machine: &mut ProcMachine,
        event: ConnEvent,
        conns: &mut BTreeMap<u64, Connection>,
    ) -> Option<ExitStatus> {
        match event {
            ConnEvent::State(id, state) => {
                conns.get(&id)?;
                self.step(machine, Event::ClientState(id, state), conns)
            }
            ConnEvent::Closed(id) => {
                conns.remove(&id)?;
                self.step(machine, Event::ClientClosed(id), conns)
            }
        }
    }

    /// The process ends: its connections go with it.
    fn end(&self, conns: BTreeMap<u64, Connection>, status: ExitStatus) {
        if !conns.is_empty() {
            let mut shared = self.shared.borrow_mut();
            for _ in 0..conns.len() {
                shared.stats(&self.name).ended(Outcome::Lost);
            }
        }
        for c in conns.values() {
            c.task.abort();
        }
        let _ = self.events.send(KernelEvent::Exited {
            pid: self.pid,
            status,
        });
    }
}

async fn process(mut p: Process) {
    let mut machine = ProcMachine::new(p.spec, now());
    tokio::time::sleep(p.exec).await;
    let mut rng = SmallRng::seed_from_u64(p.jitter_seed);
    let (conn_tx, mut conn_rx) = unbounded_channel::<ConnEvent>();
    let mut conns: BTreeMap<u64, Connection> = BTreeMap::new();
    let mut next_conn = 0u64;
    let mut exit = p.step(&mut machine, Event::InitDone, &mut conns);
    loop {
        // Take waiting connections while the machine accepts; a login process watching in
        // overflow mode is told the listener is readable instead (its machine decides whom to
        // kill, and when).
        while exit.is_none() {
            let waiting = p.queues.iter().find(|q| !q.borrow().conns.is_empty());
            let Some(queue) = waiting else { break };
            if machine.can_accept() {
                let Some((pending, queued)) = queue.borrow_mut().conns.pop_front() else {
                    break;
                };
                let (stream, start) = match pending {
                    Pending::Client(stream) => (
                        stream,
                        Start::Greet {
                            login: p.spec.login,
                            handoff: p.handoff.clone(),
                            service: p.name.clone(),
                        },
                    ),
                    Pending::Handoff { client, answer } => {
                        // The login process gave the handoff up (its client is gone).
                        let Some(stream) = client.borrow_mut().take() else {
                            continue;
                        };
                        let _ = answer.send(());
                        (stream, Start::HandedOff)
                    }
                };
                let wait = (now() - queued).as_millis() as u64;
                p.shared.borrow_mut().stats(&p.name).accepted(wait);
                let id = next_conn;
                next_conn += 1;
                let (disconnect, told) = oneshot::channel();
                let task = tokio::task::spawn_local(serve(
                    stream,
                    start,
                    told,
                    conn_tx.clone(),
                    id,
                    p.shared.clone(),
                ));
                conns.insert(id, Connection { task, disconnect });
                exit = p.step(&mut machine, Event::Accepted(id), &mut conns);
                continue;
            }
            if machine.take_readable() {
                let jitter = rng.random();
                exit = p.step(&mut machine, Event::Readable(jitter), &mut conns);
                continue;
            }
            break;
        }
        if let Some(status) = exit {
            p.end(conns, status);
            return;
        }
        let notifies: Vec<Rc<Notify>> =
            p.queues.iter().map(|q| q.borrow().notify.clone()).collect();
        let can_take = machine.can_accept() || machine.wants_readable();
        let timer = machine.poll_timeout().map(|at| at - now());
        tokio::select! {
            biased;
            msg = p.signals.recv() => match msg {
                Some(ProcMsg::Signal(signal @ (Signal::Term | Signal::Kill))) => {
                    p.end(conns, ExitStatus::Signaled { signal: signal.number(), core_dumped: false });
                    return;
                }
                None => {
                    p.end(conns, ExitStatus::Signaled { signal: 9, core_dumped: false });
                    return;
                }
                // Nothing here reopens files on SIGHUP.
                Some(ProcMsg::Signal(Signal::Hup)) => {}
                Some(ProcMsg::Signal(signal)) => {
                    exit = p.step(&mut machine, Event::Signal(signal), &mut conns);
                }
                Some(ProcMsg::MasterDead) => {
                    exit = p.step(&mut machine, Event::MasterDead, &mut conns);
                }
            },
            Some(event) = conn_rx.recv() => {
                exit = p.on_conn_event(&mut machine, event, &mut conns);
            },
            _ = tokio::time::sleep(timer.unwrap_or(Duration::ZERO)), if timer.is_some() => {
                exit = p.step(&mut machine, Event::Timeout, &mut conns);
            },
            _ = notified_any(&notifies), if can_take => {}
        }
    }
}

/// Resolves when one of the queues is woken. A `ServiceSpec` has at most two listeners (one
/// unix, one inet), so two are watched.
async fn notified_any(notifies: &[Rc<Notify>]) {
    match notifies {
        [] => std::future::pending().await,
        [only] => only.notified().await,
        [first, second, ..] => tokio::select! {
            biased;
            _ = first.notified() => {}
            _ = second.notified() => {}
        },
    }
}

/// One connection: greeting, a login line, the session, and QUIT. A login process's machine
/// may end it early with a reason (a kill to make room, the pre-auth timeout), which the
/// client is told; a process of any other service closes a connection that sends no login line
/// within the pre-auth timeout itself, as the discrete-event driver does. A login process with
/// a post-login service hands the logged-in client to it instead of holding the session.
async fn serve(
    stream: TcpStream,
    start: Start,
    mut told: oneshot::Receiver<DisconnectReason>,
    events: UnboundedSender<ConnEvent>,
    id: u64,
    shared: SharedRef,
) {
    let mut stream = BufReader::new(stream);
    if let Start::Greet {
        login,
        handoff,
        service,
    } = start
    {
        let greeted = {
            let greeting = greet(&mut stream, login, &shared);
            tokio::select! {
                biased;
                Ok(reason) = &mut told => Err(reason),
                logged_in = greeting => Ok(logged_in),
            }
        };
        match greeted {
            // The process has already forgotten the client.
            Err(reason) => return tell(&mut stream, reason).await,
            Ok(false) => {
                let _ = events.send(ConnEvent::Closed(id));
                return;
            }
            Ok(true) => {}
        }
        if let Some(to) = handoff.filter(|to| to.socket().is_some()) {
            // The client sends nothing before the answer to its login, so nothing is buffered.
            let stream = stream.into_inner();
            return hand_off(stream, to, told, events, id, &shared, &service).await;
        }
        let _ = events.send(ConnEvent::State(id, ClientState::LoggedIn));
    }
    let reason = {
        let rest = logged_in(&mut stream);
        tokio::select! {
            biased;
            Ok(reason) = &mut told => Some(reason),
            _ = rest => None,
        }
    };
    match reason {
        Some(reason) => tell(&mut stream, reason).await,
        None => {
            let _ = events.send(ConnEvent::Closed(id));
        }
    }
}

/// The greeting and the client's login line; `true` when the line came.
async fn greet(stream: &mut BufReader<TcpStream>, login: bool, shared: &SharedRef) -> bool {
    if stream
        .get_mut()
        .write_all(b"+OK roost ready\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    let read = if login {
        Ok(stream.read_line(&mut line).await)
    } else {
        tokio::time::timeout(PRE_AUTH_TIMEOUT, stream.read_line(&mut line)).await
    };
    if read.is_err() {
        shared.borrow_mut().summary.pre_auth_timeouts += 1;
    }
    matches!(read, Ok(Ok(n)) if n > 0)
}

/// The session of a logged-in client: `+OK logged in`, its QUIT, `+OK bye`.
async fn logged_in(stream: &mut BufReader<TcpStream>) {
    let _ = async {
        stream.get_mut().write_all(b"+OK logged in\r\n").await?;
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        stream.get_mut().write_all(b"+OK bye\r\n").await
    }
    .await;
}

/// Sends the client the line of a disconnect and closes it.
async fn tell(stream: &mut BufReader<TcpStream>, reason: DisconnectReason) {
    let line = format!("{}\r\n", told_line(reason));
    let _ = stream.get_mut().write_all(line.as_bytes()).await;
}

/// Hands a logged-in client to the post-login service: the client's connection goes into the
/// unix socket's queue, and the login process holds the client (`HandingOff`) until a
/// post-login process answers. A connect that fails (the socket is closed, or its backlog is
/// full: reference §7.2 item 4) or a handoff the master drops unanswered ends the client, as
/// pop3-login does; a handoff outlives its login process (the fd is in the socket already).
async fn hand_off(
    stream: TcpStream,
    to: HandoffTo,
    mut told: oneshot::Receiver<DisconnectReason>,
    events: UnboundedSender<ConnEvent>,
    id: u64,
    shared: &SharedRef,
    service: &str,
) {
    let _ = events.send(ConnEvent::State(id, ClientState::HandingOff));
    let client = Rc::new(RefCell::new(Some(stream)));
    let (answer, answered) = oneshot::channel();
    let mut answer = Some(answer);
    if let Some(queue) = to.socket() {
        let mut q = queue.borrow_mut();
        if q.open && q.conns.len() < q.backlog {
            if let Some(answer) = answer.take() {
                let handoff = Pending::Handoff {
                    client: client.clone(),
                    answer,
                };
                q.conns.push_back((handoff, now()));
                q.notify.notify_waiters();
            }
        }
    }
    if answer.is_some() {
        shared.borrow_mut().stats(service).ended(Outcome::Refused);
        let taken = client.borrow_mut().take();
        if let Some(mut stream) = taken {
            let line = b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log.\r\n";
            let _ = stream.write_all(line).await;
        }
        let _ = events.send(ConnEvent::Closed(id));
        return;
    }
    let _ = to.events.send(KernelEvent::Queued);
    tokio::select! {
        biased;
        Ok(reason) = &mut told => {
            // The machine gave the client up (the pre-auth timeout while finishing the login,
            // or a kill): it is closed here unless a post-login process has it already.
            let taken = client.borrow_mut().take();
            if let Some(stream) = taken {
                tell(&mut BufReader::new(stream), reason).await;
            }
        }
        answer = answered => {
            if answer.is_err() {
                // Dropped unanswered: the login process closes the client.
                shared.borrow_mut().stats(service).ended(Outcome::Dropped);
                drop(client.borrow_mut().take());
            }
            let _ = events.send(ConnEvent::Closed(id));
        }
    }
}
