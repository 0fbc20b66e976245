//! The turmoil world: the same [`Master`] on a server host, service processes as `spawn_local`
//! tasks serving real (simulated) TCP connections, and client hosts running scripted clients.
//!
//! Where the discrete-event driver models connections as numbers, this world carries bytes:
//! clients connect over turmoil's TCP, wait in the listener's accept queue until a process
//! takes them, read a greeting, log in with a line, hold the session, and quit. It is the place
//! for network-shaped scenarios (many clients, floods of connections that never log in,
//! reconnects), at a coarse tick (10 ms by default).
//!
//! Model: turmoil has no unix sockets, processes or signals, so the server host carries a
//! small kernel: an acceptor task per listening socket fills an accept queue (with the
//! service's backlog) that the master's listener and every child share through `Rc` clones,
//! which is how fd inheritance is modelled; processes are tasks with a signal channel, each
//! running the real `roost_core::child::Child` machine; status records and exits come back to
//! the driver on one channel. Each service has at most one
//! listener here (the scenario configurations have one), and processes wait on its queue.
//!
//! Determinism: `Builder::rng_seed`, every `select!` is `biased`, time only from turmoil
//! (`turmoil::elapsed`) and tokio's paused clock, `BTreeMap` only. The driver folds every step
//! into the same FNV-1a hash as the discrete-event driver.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roost_core::child::{Child, ChildConfig, Input as ChildInput, Output as ChildOutput};
use roost_core::ids::{ListenerId, Pid, ProcessUid, ServiceId};
use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::output::{Output, SpawnRequest};
use roost_core::setup::{ListenerKind, ServiceType};
use roost_core::signal::{ExitStatus, Signal};
use roost_core::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use turmoil::net::{TcpListener, TcpStream};

use crate::des::{fnv1a, PRE_AUTH_TIMEOUT};
use crate::load::{Behaviour, LoadProfile, NetFault, SimConfig};
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
    /// Client attempts abandoned after [`CLIENT_TIMEOUT`] without an answer.
    pub client_timeouts: u64,
}

/// A client gives up an attempt (connect, greeting or login reply) after this long.
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
            "{} served, {} failed attempts, {} never served, wait p50 {} ms p99 {} ms, peak {} processes, {} client timeouts, {} pre-auth timeouts, {} steps, hash {:016x}",
            self.served,
            self.failed_attempts,
            self.never_served,
            p(50),
            p(99),
            self.peak_processes,
            self.client_timeouts,
            self.pre_auth_timeouts,
            self.steps,
            self.hash
        )
    }
}

/// The kernel's accept queue of one listening socket.
struct Queue {
    /// Accepted by the kernel, not yet by a process.
    conns: VecDeque<TcpStream>,
    /// The listen backlog.
    backlog: usize,
    /// Woken when a connection is queued.
    notify: Rc<Notify>,
}

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

/// Everything the world shares (one OS thread: `Rc`).
#[derive(Default)]
struct Shared {
    summary: NetSummary,
    violation: Option<String>,
    waits: Vec<u64>,
}

type SharedRef = Rc<RefCell<Shared>>;

/// Runs `load`'s clients against `config` in a turmoil world.
pub fn run(
    config: &SimConfig,
    load: &LoadProfile,
    options: NetOptions,
) -> Result<NetSummary, String> {
    let shared: SharedRef = Rc::new(RefCell::new(Shared::default()));
    let mut sim = turmoil::Builder::new()
        .rng_seed(load.seed)
        .tick_duration(std::time::Duration::from_millis(options.tick_ms))
        .simulation_duration(std::time::Duration::from_millis(
            load.duration_ms + PRE_AUTH_TIMEOUT.as_millis() as u64 + 60_000,
        ))
        .min_message_latency(std::time::Duration::from_millis(1))
        .max_message_latency(std::time::Duration::from_millis(5))
        .tcp_capacity(1 << 16)
        .build();

    let master_config = config.master_config();
    let backlog = load.backlog;
    {
        let shared = shared.clone();
        let seed = load.seed;
        sim.host("server", move || {
            let shared = shared.clone();
            let master_config = master_config.clone();
            async move {
                server(master_config, backlog, seed, shared).await;
                Ok(())
            }
        });
    }

    // Clients, dealt round-robin over a few hosts: turmoil polls every host every tick, so
    // few hosts keep the simulation fast.
    let mut rng = SmallRng::seed_from_u64(load.seed ^ 0x006e_6574_776f_726b);
    let mut per_host: Vec<Vec<ClientSpec>> = vec![Vec::new(); options.client_hosts.max(1)];
    let mut n = 0usize;
    for group in &load.clients {
        let port = config
            .services
            .iter()
            .find(|s| s.name == group.service)
            .map(|s| s.port)
            .unwrap_or(0);
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
                port,
                at_ms: at,
                behaviour: group.behaviour,
                login_delay_ms: draw(&mut rng, group.login_delay_ms),
                session_ms: draw(&mut rng, group.session_ms),
                reconnect: group.reconnect,
                retry_ms: group.retry_ms,
            };
            let hosts = per_host.len();
            per_host[n % hosts].push(spec);
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
    port: u16,
    at_ms: u64,
    behaviour: Behaviour,
    login_delay_ms: u64,
    session_ms: u64,
    reconnect: u32,
    retry_ms: u64,
}

/// How one attempt ended.
enum Attempt {
    Served,
    Failed,
}

async fn client(spec: ClientSpec, shared: SharedRef) {
    tokio::time::sleep(std::time::Duration::from_millis(spec.at_ms)).await;
    for attempt in 0..=spec.reconnect {
        match session(&spec, &shared).await {
            Attempt::Served => {
                shared.borrow_mut().summary.served += 1;
                return;
            }
            Attempt::Failed => {
                shared.borrow_mut().summary.failed_attempts += 1;
                if spec.behaviour == Behaviour::PreAuthIdle || attempt == spec.reconnect {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(spec.retry_ms)).await;
            }
        }
    }
    shared.borrow_mut().summary.never_served += 1;
}

/// Waits for `io` at most [`CLIENT_TIMEOUT`]; `None` (counted) when the answer never came, as
/// when the network was lost mid-login.
async fn within<T>(shared: &SharedRef, io: impl std::future::Future<Output = T>) -> Option<T> {
    match tokio::time::timeout(CLIENT_TIMEOUT, io).await {
        Ok(value) => Some(value),
        Err(_) => {
            shared.borrow_mut().summary.client_timeouts += 1;
            None
        }
    }
}

async fn session(spec: &ClientSpec, shared: &SharedRef) -> Attempt {
    let started = turmoil::elapsed();
    let Some(Ok(stream)) = within(shared, TcpStream::connect(("server", spec.port))).await else {
        return Attempt::Failed;
    };
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if !matches!(within(shared, stream.read_line(&mut line)).await, Some(Ok(n)) if n > 0) {
        return Attempt::Failed;
    }
    let wait = (turmoil::elapsed() - started).as_millis() as u64;
    if spec.behaviour == Behaviour::PreAuthIdle {
        // Never log in: hold the slot until the server closes the connection.
        line.clear();
        let _ = stream.read_line(&mut line).await;
        return Attempt::Failed;
    }
    tokio::time::sleep(std::time::Duration::from_millis(spec.login_delay_ms)).await;
    if stream.get_mut().write_all(b"LOGIN\r\n").await.is_err() {
        return Attempt::Failed;
    }
    line.clear();
    let reply = within(shared, stream.read_line(&mut line)).await;
    if !matches!(reply, Some(Ok(n)) if n > 0) || !line.starts_with("+OK") {
        return Attempt::Failed;
    }
    shared.borrow_mut().waits.push(wait);
    tokio::time::sleep(std::time::Duration::from_millis(spec.session_ms)).await;
    let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
    line.clear();
    let _ = stream.read_line(&mut line).await;
    Attempt::Served
}

/// The server host's driver.
struct Server {
    master: Master,
    listeners: BTreeMap<ListenerId, NetListener>,
    procs: BTreeMap<Pid, (ServiceId, UnboundedSender<ProcMsg>)>,
    reaped: std::collections::BTreeSet<Pid>,
    login_full: BTreeMap<ServiceId, Rc<Cell<bool>>>,
    next_pid: i32,
    events: UnboundedSender<KernelEvent>,
    backlog: Option<u32>,
    rng: SmallRng,
    shared: SharedRef,
    pending: VecDeque<Input>,
    shutdown_clients: bool,
}

fn now() -> Instant {
    Instant::from_millis(turmoil::elapsed().as_millis() as u64)
}

async fn server(
    config: roost_core::setup::MasterConfig,
    backlog: Option<u32>,
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
        reaped: std::collections::BTreeSet::new(),
        login_full: BTreeMap::new(),
        next_pid: 100,
        events,
        backlog,
        rng: SmallRng::seed_from_u64(seed),
        shared: shared.clone(),
        pending: VecDeque::new(),
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
        let mut shared = self.shared.borrow_mut();
        shared.summary.peak_processes = shared.summary.peak_processes.max(live);
        if live != counted && shared.violation.is_none() {
            shared.violation = Some(format!(
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
            let mut shared = self.shared.borrow_mut();
            if shared.violation.is_none() {
                shared.violation = Some(format!("at {} ms: {violation}", at.as_millis()));
            }
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
        shared.summary.steps += 1;
        let hash = if shared.summary.hash == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            shared.summary.hash
        };
        shared.summary.hash = fnv1a(fnv1a(hash, line.as_bytes()), b"\n");
    }

    async fn apply(&mut self, output: Output) {
        match output {
            Output::OpenListener {
                listener,
                service,
                config,
            } => {
                let port = match config.kind {
                    ListenerKind::Inet { port, .. } => port,
                    _ => {
                        self.pending.push_back(Input::ListenFailed {
                            listener,
                            soft: false,
                            error: "the turmoil world has TCP listeners only".to_owned(),
                        });
                        return;
                    }
                };
                let backlog = self.backlog.unwrap_or_else(|| {
                    view::service_config(&self.master, service)
                        .map(|c| c.process_limit.saturating_mul(c.client_limit).max(4))
                        .unwrap_or(4)
                        .min(crate::des::SOMAXCONN)
                }) as usize;
                match TcpListener::bind(("0.0.0.0", port)).await {
                    Ok(socket) => {
                        let queue = Rc::new(RefCell::new(Queue {
                            conns: VecDeque::new(),
                            backlog,
                            notify: Rc::new(Notify::new()),
                        }));
                        tokio::task::spawn_local(acceptor(
                            socket,
                            queue.clone(),
                            self.events.clone(),
                        ));
                        self.listeners.insert(
                            listener,
                            NetListener {
                                queue,
                                watched: false,
                                reported: None,
                            },
                        );
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
                    self.listeners.insert(
                        to,
                        NetListener {
                            queue: old.queue,
                            watched: false,
                            reported: None,
                        },
                    );
                }
            }
            Output::CloseListener { listener } => {
                if let Some(old) = self.listeners.remove(&listener) {
                    old.queue.borrow_mut().conns.clear();
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
                if let Some(l) = self.listeners.get_mut(&listener) {
                    l.reported = None;
                    l.queue.borrow_mut().conns.clear();
                }
            }
            Output::Spawn(request) => self.spawn(request),
            Output::Kill { pid, signal } => {
                if self.reaped.contains(&pid) {
                    let mut shared = self.shared.borrow_mut();
                    if shared.violation.is_none() {
                        shared.violation = Some(format!("{signal} sent to reaped pid {pid}"));
                    }
                } else if let Some((_, tx)) = self.procs.get(&pid) {
                    // A process that already ended has dropped its receiver; that is a zombie.
                    let _ = tx.send(ProcMsg::Signal(signal));
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
                for (service, tx) in self.procs.values() {
                    if services.contains(service) {
                        let _ = tx.send(ProcMsg::MasterDead);
                    }
                }
            }
            Output::Exit(_) => {
                for (_, tx) in self.procs.values() {
                    let _ = tx.send(ProcMsg::MasterDead);
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
        let (client_limit, service_count, login) = config
            .map(|c| {
                (
                    c.client_limit,
                    c.service_count,
                    c.service_type == ServiceType::Login,
                )
            })
            .unwrap_or((1, 0, false));
        let queue = view::service_listeners(&self.master, request.service)
            .into_iter()
            .find_map(|l| self.listeners.get(&l).map(|l| l.queue.clone()));
        let login_full = self
            .login_full
            .entry(request.service)
            .or_insert_with(|| Rc::new(Cell::new(false)))
            .clone();
        let (tx, rx) = unbounded_channel();
        self.procs.insert(pid, (request.service, tx));
        self.pending.push_back(Input::Spawned {
            process: request.process,
            pid,
        });
        let exec = Duration::from_millis(self.rng.random_range(1..=5));
        tokio::task::spawn_local(process(Process {
            pid,
            uid: request.uid,
            queue,
            client_limit,
            service_count,
            login,
            login_full,
            exec,
            shutdown_clients: self.shutdown_clients,
            signals: rx,
            events: self.events.clone(),
            shared: self.shared.clone(),
        }));
    }
}

async fn acceptor(
    socket: TcpListener,
    queue: Rc<RefCell<Queue>>,
    events: UnboundedSender<KernelEvent>,
) {
    while let Ok((stream, _)) = socket.accept().await {
        let notify = {
            let mut q = queue.borrow_mut();
            if q.conns.len() >= q.backlog {
                // Over the backlog: the connection is dropped (the client sees EOF).
                continue;
            }
            q.conns.push_back(stream);
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
    queue: Option<Rc<RefCell<Queue>>>,
    client_limit: u32,
    service_count: u32,
    login: bool,
    login_full: Rc<Cell<bool>>,
    exec: Duration,
    shutdown_clients: bool,
    signals: UnboundedReceiver<ProcMsg>,
    events: UnboundedSender<KernelEvent>,
    shared: SharedRef,
}

/// One connection of a process.
struct Connection {
    task: JoinHandle<()>,
    logged_in: Rc<Cell<bool>>,
    accepted: Instant,
}

/// What a process does with the outputs of its child machine.
struct ChildDriver {
    /// The child asked to accept.
    accepting: bool,
    /// The child closed its listening fds.
    closed: bool,
    /// The master's end of the generation is gone: status records are no longer read.
    master_dead: bool,
}

impl ChildDriver {
    /// Feeds one input to the child machine and carries out its outputs; `Some(code)` when
    /// it exits.
    fn step(&mut self, p: &Process, child: &mut Child, input: ChildInput) -> Option<i32> {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            child.handle(input, now());
            while let Some(output) = child.poll_output() {
                match output {
                    ChildOutput::WriteStatus { available_count } => {
                        if self.master_dead {
                            inputs.push_back(ChildInput::StatusWriteFailed);
                        } else {
                            let _ = p.events.send(KernelEvent::Status {
                                pid: p.pid,
                                uid: p.uid,
                                available_count,
                            });
                            inputs.push_back(ChildInput::StatusWritten);
                        }
                    }
                    // The simulated pipe never fills up.
                    ChildOutput::AwaitStatusWritable => {
                        inputs.push_back(ChildInput::StatusWritable)
                    }
                    ChildOutput::SetAccepting { on } => self.accepting = on,
                    ChildOutput::CloseListeners => self.closed = true,
                    // The process only accepts while the child says so; nothing to refuse.
                    ChildOutput::Refuse | ChildOutput::DieCallback => {}
                    ChildOutput::Exit(code) => return Some(code),
                }
            }
        }
        None
    }
}

async fn process(mut p: Process) {
    let mut child = Child::new(
        ChildConfig {
            client_limit: p.client_limit,
            service_count: p.service_count,
            never_idle_die: false,
            die_with_master: p.shutdown_clients,
            has_die_callback: true,
            is_login: p.login,
            starts_with_client: false,
        },
        now(),
    );
    let mut driver = ChildDriver {
        accepting: false,
        closed: false,
        master_dead: false,
    };
    tokio::time::sleep(p.exec).await;
    let (done_tx, mut done_rx) = unbounded_channel::<u64>();
    let mut conns: BTreeMap<u64, Connection> = BTreeMap::new();
    let mut next_conn = 0u64;
    let mut overflow = false;
    let mut exit = driver.step(&p, &mut child, ChildInput::InitDone);
    loop {
        // Accept while the child machine says so; a full login process allowed to overflow
        // kills its oldest pre-login client first (reference §2.8, performance mode).
        while exit.is_none() {
            let Some(queue) = &p.queue else { break };
            if driver.closed || driver.master_dead || queue.borrow().conns.is_empty() {
                break;
            }
            if child.available_count() == 0 || !driver.accepting {
                if !(p.login && overflow && child.total_available() > 1) {
                    break;
                }
                let victim = conns
                    .iter()
                    .filter(|(_, c)| !c.logged_in.get())
                    .min_by_key(|(id, c)| (c.accepted, **id))
                    .map(|(id, _)| *id);
                let Some(id) = victim else { break };
                if let Some(c) = conns.remove(&id) {
                    c.task.abort();
                }
                exit = driver.step(&p, &mut child, ChildInput::ClientClosed);
                continue;
            }
            let Some(stream) = queue.borrow_mut().conns.pop_front() else {
                break;
            };
            let logged_in = Rc::new(Cell::new(false));
            let id = next_conn;
            next_conn += 1;
            let task = tokio::task::spawn_local(serve(
                stream,
                logged_in.clone(),
                done_tx.clone(),
                id,
                p.shared.clone(),
            ));
            conns.insert(
                id,
                Connection {
                    task,
                    logged_in,
                    accepted: now(),
                },
            );
            exit = driver.step(&p, &mut child, ChildInput::Accepted);
        }
        if let Some(code) = exit {
            for c in conns.values() {
                c.task.abort();
            }
            let _ = p.events.send(KernelEvent::Exited {
                pid: p.pid,
                status: ExitStatus::Exited(code),
            });
            return;
        }
        let notify = p.queue.as_ref().map(|q| q.borrow().notify.clone());
        let can_take = !driver.master_dead && !driver.closed;
        let timer = child.poll_timeout().map(|at| at - now());
        tokio::select! {
            biased;
            msg = p.signals.recv() => match msg {
                Some(ProcMsg::Signal(Signal::Term | Signal::Kill)) | None => {
                    let signal = match msg {
                        Some(ProcMsg::Signal(s)) => s.number(),
                        _ => 9,
                    };
                    for c in conns.values() {
                        c.task.abort();
                    }
                    let _ = p.events.send(KernelEvent::Exited {
                        pid: p.pid,
                        status: ExitStatus::Signaled { signal, core_dumped: false },
                    });
                    return;
                }
                Some(ProcMsg::Signal(signal @ (Signal::Int | Signal::Quit))) => {
                    exit = driver.step(&p, &mut child, ChildInput::Signal(signal));
                }
                Some(ProcMsg::Signal(Signal::Usr1)) => overflow = p.login_full.get(),
                Some(ProcMsg::Signal(Signal::Hup)) => {}
                Some(ProcMsg::MasterDead) => {
                    driver.master_dead = true;
                    exit = driver.step(&p, &mut child, ChildInput::MasterDead);
                }
            },
            done = done_rx.recv() => {
                if let Some(id) = done {
                    if conns.remove(&id).is_some() {
                        exit = driver.step(&p, &mut child, ChildInput::ClientClosed);
                    }
                }
            },
            _ = tokio::time::sleep(timer.unwrap_or(Duration::ZERO)), if timer.is_some() => {
                exit = driver.step(&p, &mut child, ChildInput::Timeout);
            },
            _ = async {
                match &notify {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            }, if can_take => {}
        }
    }
}

/// One connection: greeting, a login line, the session, and QUIT.
async fn serve(
    stream: TcpStream,
    logged_in: Rc<Cell<bool>>,
    done: UnboundedSender<u64>,
    id: u64,
    shared: SharedRef,
) {
    let mut stream = BufReader::new(stream);
    let _ = async {
        stream.get_mut().write_all(b"+OK roost ready\r\n").await?;
        let mut line = String::new();
        let read = tokio::time::timeout(PRE_AUTH_TIMEOUT, stream.read_line(&mut line)).await;
        if read.is_err() {
            shared.borrow_mut().summary.pre_auth_timeouts += 1;
        }
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            return Ok::<(), std::io::Error>(());
        }
        logged_in.set(true);
        stream.get_mut().write_all(b"+OK logged in\r\n").await?;
        line.clear();
        stream.read_line(&mut line).await?;
        stream.get_mut().write_all(b"+OK bye\r\n").await?;
        Ok(())
    }
    .await;
    let _ = done.send(id);
}
