//! The master's state machine: services, processes, listening on demand, process_min_avail
//! top-up, process_limit handling, throttling, service_count, idle_kill rounds, the login "all
//! processes full" state, reload generations and shutdown (reference §2, §4.2-4.6).
//!
//! It owns every decision of the master and nothing else: the driver reports what happened as an
//! [`Input`] and carries out the [`Output`]s. Ids are assigned here and never reused; a pid is
//! only ever a key into the table of live processes, so a record or an exit from a pid the master
//! no longer knows is recognised as such.
//!
//! Where roost deliberately differs from the original (reference §10), the difference is named
//! at the place it is made: a readable listener forks as many processes as connections wait; the
//! idle-kill confirmation timer is one-shot; unchanged unix and fifo listeners survive a reload.

mod invariants;
mod pids;
mod service;
mod table;
mod timer;

use std::collections::{BTreeMap, VecDeque};

use pids::PidTable;
use table::{ProcessTable, Slot};

pub use invariants::Violation;

use crate::ids::{Generation, ListenerId, Pid, ProcessId, ProcessUid, ServiceId};
use crate::input::Input;
use crate::notice::{ExitReason, LimitName, Notice};
use crate::output::{Lifecycle, Output, SpawnRequest};
use crate::setup::{ListenerConfig, MasterConfig, ServiceConfig, ServiceType};
use crate::signal::{ExitStatus, Signal, SignalSender};
use crate::time::{Duration, Instant};
use service::{IdleKey, Process, Service, THROTTLE_INITIAL};
use timer::{Timer, Timers};

/// A child must send its first status within this time, or it is killed (§1.4).
pub const FIRST_STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections wait this long in listen_pending before they are dropped (§2.4).
pub const LISTEN_PENDING_DROP: Duration = Duration::from_secs(10);
/// A worker service warns about its limit only when the condition lasts this long (§2.4).
pub const WORKER_WARNING_DELAY: Duration = Duration::from_millis(500);
/// The throttle back-off doubles up to this (§2.4).
pub const THROTTLE_MAX: Duration = Duration::from_millis(60_000);
/// More failed exits than this in one second throttle a service that never exited cleanly.
pub const EXIT_FAILURE_STORM: u32 = 10;
/// A foreign program never reports, so it cannot die "before its first status" (§2.4); one that
/// fails within this time of its start failed to start, and throttles its service at once.
pub const FOREIGN_START: Duration = Duration::from_secs(1);
/// Processes forked per prefork tick of the process_min_avail top-up (§2.2).
pub const PREFORK_BATCH: u32 = 10;
/// The shortest time between two SIGUSR1 bursts of the login "all processes full" state (§2.8).
pub const LOGIN_NOTIFY_INTERVAL: Duration = Duration::from_secs(2);
/// Old processes are signalled this often after a reload with shutdown_clients = yes (§4.3).
pub const RELOAD_KILL_INTERVAL: Duration = Duration::from_secs(6);
/// At shutdown, the master polls this often whether children stopped accepting (§4.5).
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// At shutdown, the master waits at most this long for children to stop accepting (§4.5).
pub const SHUTDOWN_WAIT: Duration = Duration::from_millis(5_000);
/// At shutdown, the master exits this long after sending SIGQUIT (§4.5).
pub const SHUTDOWN_QUIT_GRACE: Duration = Duration::from_millis(1_000);
/// The exit status of a master that could not start (§4.1).
pub const EXIT_FATAL: i32 = 89;

/// Where the master is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// The first generation's listeners are being opened.
    Starting,
    /// Serving.
    Running,
    /// Asked to stop: no more forks.
    ShuttingDown {
        /// When the wait for children to stop accepting ends.
        deadline: Instant,
    },
    /// `Exit` was emitted.
    Done,
}

/// One configuration generation.
#[derive(Clone, Debug)]
struct GenerationState {
    /// Its services, in configuration order.
    services: Vec<ServiceId>,
    /// Its shutdown_clients setting.
    shutdown_clients: bool,
    /// No longer monitored: a reload replaced it, or the master is shutting down.
    retired: bool,
    /// The reload kill timer has fired at least once (the next round sends KILL).
    kill_rounds: u32,
}

/// One listener.
#[derive(Clone, Debug)]
struct Listener {
    /// Its service.
    service: ServiceId,
    /// What it is.
    config: ListenerConfig,
    /// The driver watches it for readability.
    watched: bool,
    /// The driver reported that it could not be opened.
    failed: bool,
}

/// What `roost status` shows of a service (reference §1.5 SERVICE-STATUS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service's id.
    pub id: ServiceId,
    /// The service's name.
    pub name: String,
    /// The generation it belongs to.
    pub generation: Generation,
    /// Processes.
    pub process_count: u32,
    /// Processes with free slots.
    pub process_avail: u32,
    /// Effective process_limit.
    pub process_limit: u32,
    /// Effective client_limit.
    pub client_limit: u32,
    /// Seconds of throttling left, rounded up; 0 when not throttled.
    pub throttle_secs: u64,
    /// Connections wait before being dropped.
    pub listen_pending: bool,
    /// The master watches its listeners.
    pub listening: bool,
    /// Processes ever created.
    pub total_created: u64,
}

/// What `roost status` shows of a process (reference §1.5 PROCESS-STATUS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessStatus {
    /// The service's name.
    pub service: String,
    /// Its pid, once known.
    pub pid: Option<Pid>,
    /// Free slots as last reported.
    pub available_count: u32,
    /// Approximate connections accepted.
    pub total_count: u64,
    /// When it last became idle, if idle.
    pub idle_start: Option<Instant>,
    /// When it last reported.
    pub last_status_update: Option<Instant>,
    /// When it was last sent an idle-kill request.
    pub last_kill_sent: Option<Instant>,
}

/// The master's state machine.
///
/// The contract, as for every machine of roost-core: call [`Master::handle`] once for each event,
/// drain [`Master::poll_output`] until it returns `None` (carrying out each output and feeding
/// failures back as inputs), then wait for the next event or until [`Master::poll_timeout`], and
/// feed [`Input::Timeout`] then.
///
/// ```
/// use roost_core::master::Master;
/// use roost_core::input::Input;
/// use roost_core::output::Output;
/// use roost_core::setup::MasterConfig;
/// use roost_core::time::Instant;
///
/// let config = MasterConfig { services: Vec::new(), shutdown_clients: true };
/// let mut now = Instant::ZERO;
/// let mut master = Master::new(config, now);
/// loop {
///     while let Some(output) = master.poll_output() {
///         // carry it out; report failures with master.handle(...)
///         if let Output::Exit(_) = output { return; }
///     }
///     match master.poll_timeout() {
///         Some(at) => { now = now.max(at); master.handle(Input::Timeout, now); }
///         None => break, // wait for the next event from the OS
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Master {
    /// The time of the last input.
    now: Instant,
    /// Where the master is in its life.
    phase: Phase,
    /// Every armed timer.
    timers: Timers,
    /// Outputs not yet polled, in emission order.
    outputs: VecDeque<Output>,
    /// Live generations; the last one is current.
    generations: BTreeMap<Generation, GenerationState>,
    /// The current generation.
    current: Generation,
    /// Services of every live generation.
    services: BTreeMap<ServiceId, Service>,
    /// Every process the master created that has not exited, in a dense table, so that an
    /// event costs the same with 100 processes or 10,000 (issue 8); never iterated in its own
    /// order, which is an accident of slot reuse: `process_ids` gives creation order.
    processes: ProcessTable,
    /// Live pids, each with its process's slot.
    pids: PidTable,
    /// Listeners of every live generation.
    listeners: BTreeMap<ListenerId, Listener>,
    /// The next ids.
    next_service: u32,
    /// The next listener id.
    next_listener: u32,
    /// The next process id.
    next_process: u64,
    /// The next process uid.
    next_uid: u32,
    /// Forks ever made: the prefork tick waits while this moves (§2.2).
    fork_count: u64,
    /// `fork_count` as the last prefork tick saw it.
    prefork_seen: u64,
    /// Inputs handled since the last full invariant check (release builds).
    inputs_since_check: u64,
}

impl Master {
    /// A master for `config`. It asks the driver to open every listener, and starts the
    /// generation at the first `Timeout` (due at once), so that a listener failure is known first.
    pub fn new(config: MasterConfig, now: Instant) -> Master {
        let mut master = Master {
            now,
            phase: Phase::Starting,
            timers: Timers::default(),
            outputs: VecDeque::new(),
            generations: BTreeMap::new(),
            current: Generation(0),
            services: BTreeMap::new(),
            processes: ProcessTable::default(),
            pids: PidTable::default(),
            listeners: BTreeMap::new(),
            next_service: 1,
            next_listener: 1,
            next_process: 1,
            next_uid: 1,
            fork_count: 0,
            prefork_seen: 0,
            inputs_since_check: 0,
        };
        let generation = master.create_generation(config);
        for listener in master.generation_listeners(generation) {
            master.emit_open_listener(listener);
        }
        master.timers.arm(Timer::Start, now);
        master
    }

    /// Handles one event at time `now`. Never fails: a fault of a child is a notice, a fault
    /// of the OS came in as an input, and a fault of ours is an invariant violation.
    pub fn handle(&mut self, input: Input, now: Instant) {
        debug_assert!(
            now >= self.now,
            "time went backwards: {} < {}",
            now,
            self.now
        );
        // Monotonic by contract; a release build clamps rather than unwinding its timers.
        self.now = now.max(self.now);
        if self.phase == Phase::Done {
            return;
        }
        match input {
            Input::Timeout => self.on_timeout(),
            Input::Spawned { process, pid } => self.on_spawned(process, pid),
            Input::SpawnFailed {
                process,
                errno,
                error,
            } => self.on_spawn_failed(process, errno, error),
            Input::Exited { pid, status } => self.on_exited(pid, status),
            Input::Status {
                pid,
                uid,
                available_count,
            } => self.on_status(pid, uid, available_count),
            Input::StatusPartial { service, bytes } => {
                if let Some(service) = self.services.get(&service) {
                    let name = service.name().to_owned();
                    self.log(Notice::PartialStatus {
                        service: name,
                        bytes,
                    });
                }
            }
            Input::ListenerReadable { listener, queued } => {
                self.on_listener_readable(listener, queued)
            }
            Input::ListenFailed {
                listener,
                soft,
                error,
            } => self.on_listen_failed(listener, soft, error),
            Input::Signal(signal) => self.on_signal(signal, None),
            Input::SignalFrom { signal, sender } => self.on_signal(signal, Some(sender)),
            Input::Reload(config) => self.on_reload(*config),
        }
        self.after_handle();
    }

    /// The next action for the driver, in emission order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the driver must feed `Input::Timeout` next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        self.timers.next()
    }

    /// The status of every service of every live generation, current generation last.
    pub fn services(&self) -> impl Iterator<Item = ServiceStatus> + '_ {
        self.services.values().map(|service| ServiceStatus {
            id: service.id,
            name: service.config.name.clone(),
            generation: service.generation,
            process_count: service.process_count,
            process_avail: service.process_avail,
            process_limit: service.config.process_limit,
            client_limit: service.config.client_limit,
            throttle_secs: self
                .timers
                .deadline(Timer::Throttle(service.id))
                .map(|at| (at - self.now).as_millis().div_ceil(1000) as u64)
                .unwrap_or(0),
            listen_pending: service.listen_pending,
            listening: service.listening,
            total_created: service.total_created,
        })
    }

    /// The status of every live process, in creation order.
    pub fn processes(&self) -> impl Iterator<Item = ProcessStatus> + '_ {
        self.process_ids().into_iter().map(|id| {
            let process = self.process(id);
            ProcessStatus {
                service: self.service(process.service).config.name.clone(),
                pid: process.pid(),
                available_count: process.available_count,
                total_count: process.total_count,
                idle_start: process.idle_start(),
                last_status_update: process.last_status_update(),
                last_kill_sent: process.last_kill_sent(),
            }
        })
    }

    /// The name of the service a listener belongs to, for the driver's messages.
    pub fn listener_service_name(&self, listener: ListenerId) -> Option<&str> {
        let listener = self.listeners.get(&listener)?;
        self.services.get(&listener.service).map(|s| s.name())
    }

    /// What a listener is (the driver names a child's listeners after it).
    pub fn listener_config(&self, listener: ListenerId) -> Option<&ListenerConfig> {
        self.listeners.get(&listener).map(|l| &l.config)
    }

    /// The effective settings of a service (the driver builds the child's environment from them).
    pub fn service_config(&self, service: ServiceId) -> Option<&ServiceConfig> {
        self.services.get(&service).map(|s| &s.config)
    }

    /// The listeners of a service, in the order the child receives them.
    pub fn service_listeners(&self, service: ServiceId) -> &[ListenerId] {
        self.services
            .get(&service)
            .map(|s| s.listeners.as_slice())
            .unwrap_or(&[])
    }

    /// The current generation.
    pub fn current_generation(&self) -> Generation {
        self.current
    }

    /// Whether the first generation has started: its listeners open, its first processes
    /// ordered (false again once the master is done).
    pub fn has_started(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::ShuttingDown { .. })
    }

    /// Whether `pid` is a process the master knows (created and not yet exited).
    pub fn has_pid(&self, pid: Pid) -> bool {
        self.pids.get(pid).is_some()
    }

    /// How many processes are alive (created and not yet exited), over every generation.
    pub fn process_count(&self) -> usize {
        self.processes.len()
    }

    // ---------------------------------------------------------------------------------------
    // Plumbing.

    fn after_handle(&mut self) {
        // Debug builds check everything after every input. The full check is linear in the
        // number of processes, so release builds run it once per max(4096, 16 × processes) inputs:
        // the amortised cost per event stays flat and a broken rule is still reported.
        self.inputs_since_check += 1;
        let period = 4096.max(16 * self.processes.len() as u64);
        if !cfg!(debug_assertions) && self.inputs_since_check < period {
            return;
        }
        self.inputs_since_check = 0;
        match self.check_invariants() {
            Ok(()) => {}
            Err(violation) => {
                // Debug builds stop at the first broken rule, with the state that broke it;
                // release builds say so and keep serving (DESIGN.md "Never crash").
                if cfg!(debug_assertions) {
                    panic!("invariant violated: {violation}\n{self:#?}");
                }
                self.log(Notice::InvariantViolated {
                    violation: violation.to_string(),
                });
            }
        }
    }

    fn log(&mut self, notice: Notice) {
        self.outputs.push_back(Output::Log(notice));
    }

    fn emit(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    fn service(&self, id: ServiceId) -> &Service {
        self.services
            .get(&id)
            .expect("a process or listener only names a live service")
    }

    fn service_mut(&mut self, id: ServiceId) -> &mut Service {
        self.services
            .get_mut(&id)
            .expect("a process or listener only names a live service")
    }

    fn process(&self, id: ProcessId) -> &Process {
        self.record(self.slot(id))
    }

    fn process_mut(&mut self, id: ProcessId) -> &mut Process {
        self.record_mut(self.slot(id))
    }

    /// The slot of a live process.
    fn slot(&self, id: ProcessId) -> Slot {
        self.processes
            .slot(id)
            .expect("members, timers and the idle list only name live processes")
    }

    fn record(&self, slot: Slot) -> &Process {
        self.processes
            .get(slot)
            .expect("the pid table only names live slots")
    }

    fn record_mut(&mut self, slot: Slot) -> &mut Process {
        self.processes
            .get_mut(slot)
            .expect("the pid table only names live slots")
    }

    /// Every live process, in creation order.
    fn process_ids(&self) -> Vec<ProcessId> {
        self.processes.ids()
    }

    /// The live processes of one service, in creation order.
    fn service_process_ids(&self, id: ServiceId) -> Vec<ProcessId> {
        let service = self.service(id);
        let mut ids: Vec<ProcessId> = service.members.iter().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether a service may fork and listen: it belongs to the current generation, which has
    /// started and is not being torn down.
    fn is_monitored(&self, id: ServiceId) -> bool {
        let service = self.service(id);
        self.phase == Phase::Running
            && service.generation == self.current
            && !self
                .generations
                .get(&service.generation)
                .is_some_and(|g| g.retired)
    }

    fn is_throttled(&self, id: ServiceId) -> bool {
        self.timers.is_armed(Timer::Throttle(id))
    }

    fn generation_listeners(&self, generation: Generation) -> Vec<ListenerId> {
        self.generations
            .get(&generation)
            .map(|g| {
                g.services
                    .iter()
                    .flat_map(|s| self.service(*s).listeners.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn emit_open_listener(&mut self, id: ListenerId) {
        let listener = &self.listeners[&id];
        let output = Output::OpenListener {
            listener: id,
            service: listener.service,
            config: listener.config.clone(),
        };
        self.emit(output);
    }

    fn create_generation(&mut self, config: MasterConfig) -> Generation {
        let generation = Generation(self.current.0 + 1);
        let mut services = Vec::new();
        for service_config in config.services {
            let id = ServiceId(self.next_service);
            self.next_service += 1;
            let mut service = Service::new(id, generation, service_config);
            for listener_config in service.config.listeners.clone() {
                let listener = ListenerId(self.next_listener);
                self.next_listener += 1;
                self.listeners.insert(
                    listener,
                    Listener {
                        service: id,
                        config: listener_config,
                        watched: false,
                        failed: false,
                    },
                );
                service.listeners.push(listener);
            }
            self.services.insert(id, service);
            services.push(id);
        }
        self.generations.insert(
            generation,
            GenerationState {
                services,
                shutdown_clients: config.shutdown_clients,
                retired: false,
                kill_rounds: 0,
            },
        );
        self.current = generation;
        generation
    }

    // ---------------------------------------------------------------------------------------
    // Timers.

    fn on_timeout(&mut self) {
        // Only timers due when the input arrived fire now; one armed for `now` by a handler
        // below waits for the driver's next turn (that is what a prefork "tick" is). Each fires
        // only if still armed when its turn comes, so a handler that cancels a timer due at the
        // same instant (an idle-kill round and a confirmation) is respected.
        for (timer, at) in self.timers.due(self.now) {
            if self.timers.deadline(timer) != Some(at) {
                continue;
            }
            self.timers.disarm(timer);
            match timer {
                Timer::Start => self.on_start_timeout(),
                Timer::Prefork(service) => self.on_prefork_timeout(service),
                Timer::Drop(service) => self.on_drop_timeout(service),
                Timer::WorkerWarning(service) => self.on_worker_warning_timeout(service),
                Timer::IdleRound(service) => self.on_idle_round_timeout(service),
                Timer::Throttle(service) => self.on_throttle_timeout(service),
                Timer::LoginNotify(service) => self.login_notify_send(service),
                Timer::FirstStatus(process) => self.on_first_status_timeout(process),
                Timer::IdleKillConfirm(process) => self.on_idle_kill_confirm_timeout(process),
                Timer::ReloadKill(generation) => self.on_reload_kill_timeout(generation),
                Timer::ShutdownPoll => self.on_shutdown_poll_timeout(),
                Timer::ShutdownExit => self.finish(0),
            }
        }
    }

    /// §4.2: the current generation starts once its listeners were opened.
    fn on_start_timeout(&mut self) {
        if self.phase == Phase::Starting {
            let failed = self.listeners.values().any(|l| l.failed);
            if failed {
                self.log(Notice::ListenersFailed);
                self.finish(EXIT_FATAL);
                return;
            }
            self.phase = Phase::Running;
        }
        if self.phase != Phase::Running {
            return;
        }
        let services = self.generations[&self.current].services.clone();
        for &id in &services {
            self.listen_start(id);
        }
        // The log service first, so every other child's first lines have a reader.
        for &id in &services {
            if self.service(id).config.service_type == ServiceType::Log
                && self.service(id).process_count == 0
            {
                self.spawn(id);
            }
        }
        for &id in &services {
            self.top_up(id);
        }
        for &id in &services {
            if self.service(id).config.service_type == ServiceType::Startup {
                self.spawn(id);
            }
        }
        self.emit(Output::Lifecycle(Lifecycle::Ready));
    }

    fn on_listen_failed(&mut self, id: ListenerId, soft: bool, error: String) {
        let Some(listener) = self.listeners.get_mut(&id) else {
            return;
        };
        listener.failed = true;
        let service = listener.service;
        let name = self.service(service).name().to_owned();
        self.log(Notice::ListenFailed {
            service: name,
            error,
        });
        // At startup any failure is fatal (checked when the start timer fires). A reload goes
        // on without the listener; roost treats hard and soft failures alike there, because the
        // old generation's sockets are already handed over or closed.
        let _ = soft;
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.watched = false;
        }
    }

    // ---------------------------------------------------------------------------------------
    // Listening (§2.3).

    fn set_watched(&mut self, id: ListenerId, on: bool) {
        let Some(listener) = self.listeners.get_mut(&id) else {
            return;
        };
        if listener.failed || listener.watched == on {
            return;
        }
        listener.watched = on;
        self.emit(Output::SetListening { listener: id, on });
    }

    fn listen_start(&mut self, id: ServiceId) {
        let service = self.service(id);
        if service.process_avail > 0
            || self.is_throttled(id)
            || (service.process_count >= service.config.process_limit && service.listen_pending)
            || !self.is_monitored(id)
        {
            return;
        }
        let service = self.service_mut(id);
        service.listening = true;
        service.listen_pending = false;
        let listeners = service.listeners.clone();
        self.timers.disarm(Timer::Drop(id));
        self.timers.disarm(Timer::WorkerWarning(id));
        for listener in listeners {
            self.set_watched(listener, true);
        }
    }

    fn listen_stop(&mut self, id: ServiceId) {
        let service = self.service_mut(id);
        service.listening = false;
        service.listen_pending = false;
        let listeners = service.listeners.clone();
        self.timers.disarm(Timer::Drop(id));
        self.timers.disarm(Timer::WorkerWarning(id));
        for listener in listeners {
            self.set_watched(listener, false);
        }
    }

    fn on_listener_readable(&mut self, id: ListenerId, queued: u32) {
        let Some(listener) = self.listeners.get(&id) else {
            return;
        };
        let service_id = listener.service;
        if !listener.watched
            || !self.is_monitored(service_id)
            || !self.service(service_id).listening
        {
            // A readiness event that crossed a SetListening off: nothing to do.
            return;
        }
        let service = self.service(service_id);
        let config = &service.config;
        if service.process_count >= config.process_limit {
            self.limit_reached(service_id, id);
            return;
        }
        // roost differs from the original here (reference §10): the original forks one process
        // per readable event and stops listening, so a burst overflows the accept queue while
        // processes start one at a time. Knowing how many connections wait, fork enough
        // processes for all of them at once, within process_limit.
        let wanted = queued.max(1).div_ceil(config.client_limit.max(1));
        let room = config.process_limit - service.process_count;
        for _ in 0..wanted.min(room) {
            if !self.spawn(service_id) {
                break;
            }
        }
        self.listen_stop(service_id);
    }

    /// §2.4: a listener is readable and the service is at its process_limit.
    fn limit_reached(&mut self, id: ServiceId, listener: ListenerId) {
        let service = self.service(id);
        let service_type = service.config.service_type;
        if service_type != ServiceType::Worker {
            self.limit_warning(id);
        }
        let service = self.service(id);
        if service_type == ServiceType::Login {
            // Login processes kill their oldest unauthenticated client when told the service
            // is full, and connections are held, never closed at once.
            self.set_login_full(id, true);
            self.listen_stop(id);
            self.service_mut(id).listen_pending = true;
            self.timers
                .arm(Timer::Drop(id), self.now + LISTEN_PENDING_DROP);
        } else if !service.listen_pending {
            // Maybe a temporary peak: hold the connections for a while.
            self.listen_stop(id);
            self.service_mut(id).listen_pending = true;
            self.timers
                .arm(Timer::Drop(id), self.now + LISTEN_PENDING_DROP);
            if service_type == ServiceType::Worker {
                self.timers
                    .arm(Timer::WorkerWarning(id), self.now + WORKER_WARNING_DELAY);
            }
        } else {
            // The drop period is over: make it obvious that the limit is the cause.
            self.emit(Output::AcceptAndClose { listener });
        }
    }

    /// The limit warning, at most once per second per service.
    fn limit_warning(&mut self, id: ServiceId) {
        let second = self.now.as_secs();
        let service = self.service_mut(id);
        if service.last_drop_warning == Some(second) {
            return;
        }
        service.last_drop_warning = Some(second);
        let config = &service.config;
        let (limit, value) = if config.process_limit > 1 {
            (LimitName::ProcessLimit, config.process_limit)
        } else if config.service_count == 1 {
            (LimitName::ClientLimitServiceCount, 1)
        } else {
            (LimitName::ClientLimit, config.client_limit)
        };
        let notice = Notice::LimitReached {
            service: config.name.clone(),
            limit,
            value,
        };
        self.log(notice);
    }

    fn on_worker_warning_timeout(&mut self, id: ServiceId) {
        if !self.services.contains_key(&id) {
            return;
        }
        self.limit_warning(id);
        // Repeats (rate-limited to 1/s by the warning itself) until a slot frees or listening
        // changes, both of which disarm it.
        self.timers
            .arm(Timer::WorkerWarning(id), self.now + WORKER_WARNING_DELAY);
    }

    /// §2.4: the drop period ended: close what waits, and from now on close at once.
    fn on_drop_timeout(&mut self, id: ServiceId) {
        if !self.services.contains_key(&id) || !self.is_monitored(id) {
            return;
        }
        let listeners = self.service(id).listeners.clone();
        for &listener in &listeners {
            if !self.listeners[&listener].failed {
                self.emit(Output::AcceptAndClose { listener });
            }
        }
        let service = self.service_mut(id);
        service.listening = true;
        service.listen_pending = true;
        for listener in listeners {
            self.set_watched(listener, true);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Creating processes (§2.2).

    /// Creates one process of a service. Returns false when none may be created.
    fn spawn(&mut self, id: ServiceId) -> bool {
        if !self.is_monitored(id) || self.is_throttled(id) {
            return false;
        }
        let service = self.service(id);
        if service.process_count >= service.config.process_limit {
            return false;
        }
        if service.probing && service.uninitialised > 0 {
            // One probe at a time after a throttle: found by the helper's harness, where the
            // queue that built up while throttled forked a crowd of still-crashing processes.
            return false;
        }
        let process_id = ProcessId(self.next_process);
        self.next_process += 1;
        let uid = ProcessUid(self.next_uid);
        self.next_uid = self.next_uid.wrapping_add(1).max(1);
        self.fork_count += 1;
        let now = self.now;
        let service = self.service_mut(id);
        let client_limit = service.config.client_limit;
        let foreign = service.config.foreign;
        let generation = service.generation;
        // A new process counts as available and idle at once, so one connection never makes
        // the master fork twice (§2.1).
        service.process_count += 1;
        service.process_avail += 1;
        service.total_created += 1;
        service.uninitialised += 1;
        service.members.insert(process_id);
        let slot = self
            .processes
            .insert(Process::new(process_id, id, uid, client_limit));
        self.idle_enter(slot, now);
        if !foreign {
            self.timers
                .arm(Timer::FirstStatus(process_id), now + FIRST_STATUS_TIMEOUT);
        }
        // The new process has a free slot and accepts by itself (§2.3).
        if self.service(id).listening {
            self.listen_stop(id);
        }
        self.emit(Output::Spawn(SpawnRequest {
            process: process_id,
            service: id,
            generation,
            uid,
        }));
        true
    }

    fn on_spawned(&mut self, id: ProcessId, pid: Pid) {
        let Some(slot) = self.processes.slot(id) else {
            return;
        };
        let process = self.record_mut(slot);
        if process.pid().is_some() {
            return;
        }
        process.set_pid(Some(pid));
        let service = process.service;
        let foreign = self.service(service).config.foreign;
        if foreign {
            // A foreign program never reports; it is as initialised as it will ever be.
            self.record_mut(slot).initialised = true;
            let service = self.service_mut(service);
            service.uninitialised -= 1;
            service.probing = false;
        }
        if let Some(stale) = self.pids.insert(pid, slot) {
            // The OS reused a pid we still hold: the old process must have exited unseen.
            self.pids.insert(pid, slot);
            self.forget_process(stale);
        }
    }

    fn on_spawn_failed(&mut self, id: ProcessId, errno: i32, error: String) {
        let Some(process) = self.processes.find(id) else {
            return;
        };
        if process.pid().is_some() {
            return;
        }
        let service = process.service;
        let name = self.service(service).name().to_owned();
        const EAGAIN: i32 = 11;
        self.log(Notice::ForkFailed {
            service: name,
            error,
            eagain: errno == EAGAIN,
        });
        self.destroy_process(self.slot(id));
        self.throttle(service);
    }

    /// §2.2: keep process_min_avail processes available.
    fn top_up(&mut self, id: ServiceId) {
        if !self.is_monitored(id) || self.is_throttled(id) {
            return;
        }
        let service = self.service(id);
        if service.process_avail >= service.config.process_min_avail
            || service.process_count >= service.config.process_limit
        {
            return;
        }
        let mut forked = false;
        if service.process_avail == 0 {
            if !self.spawn(id) {
                return;
            }
            forked = true;
        }
        let service = self.service(id);
        if service.process_avail < service.config.process_min_avail
            && service.process_count < service.config.process_limit
        {
            self.timers.arm_if_idle(Timer::Prefork(id), self.now);
        }
        if forked {
            self.listen_stop(id);
        }
    }

    /// §2.2: one prefork tick: skipped while the master is busy forking, else up to 10 forks.
    fn on_prefork_timeout(&mut self, id: ServiceId) {
        if !self.services.contains_key(&id) {
            return;
        }
        if self.fork_count != self.prefork_seen {
            self.prefork_seen = self.fork_count;
            self.timers.arm(Timer::Prefork(id), self.now);
            return;
        }
        let service = self.service(id);
        let config = &service.config;
        let short = config
            .process_min_avail
            .saturating_sub(service.process_avail);
        let room = config.process_limit.saturating_sub(service.process_count);
        let batch = short.min(room).min(PREFORK_BATCH);
        let mut created = 0;
        for _ in 0..batch {
            if !self.spawn(id) {
                break;
            }
            created += 1;
        }
        if created > 0 {
            self.listen_stop(id);
        }
        let service = self.service(id);
        if created == PREFORK_BATCH
            && service.process_avail < service.config.process_min_avail
            && service.process_count < service.config.process_limit
        {
            self.timers.arm(Timer::Prefork(id), self.now);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Status records (§1.4, §2.1).

    fn on_status(&mut self, pid: Pid, uid: ProcessUid, available_count: u32) {
        let Some(slot) = self.pids.get(pid) else {
            // Already reaped: the record was in the pipe when the child exited.
            return;
        };
        let process = self.record(slot);
        if process.uid != uid {
            self.log(Notice::InvalidStatus { pid, uid });
            return;
        }
        let id = process.id;
        let (asked_to_die, initialised) = (process.last_kill_sent().is_some(), process.initialised);
        let now = self.now;
        // Only a process that was sent an idle-kill SIGINT, or has not reported yet, can have a
        // timer to cancel (invariant 9). The others leave the timer table alone: while a large
        // pool starts it holds a first-status timer per process, and a search in it per event
        // would grow with the pool (issue 8).
        if asked_to_die {
            self.timers.disarm(Timer::IdleKillConfirm(id));
        }
        if !initialised {
            self.timers.disarm(Timer::FirstStatus(id));
        }
        let process = self.record_mut(slot);
        process.set_last_status_update(now);
        let first = !process.initialised;
        process.initialised = true;
        let service = process.service;
        let mut probe_succeeded = false;
        if first {
            let service = self.service_mut(service);
            service.uninitialised -= 1;
            probe_succeeded = std::mem::take(&mut service.probing);
        }
        let client_limit = self.service(service).config.client_limit;
        // A child cannot have more free slots than its limit; a bigger number is a lie.
        let available_count = available_count.min(client_limit);
        let old = self.record(slot).available_count;
        if available_count < old {
            self.status_more(slot, old, available_count);
        } else if available_count > old {
            self.status_less(slot, old, available_count);
        }
        self.idle_check(slot);
        if probe_succeeded {
            // The program works again: what the probe held back can start now.
            self.top_up(service);
        }
    }

    /// The process took clients: available_count went down from `old` to `new`.
    fn status_more(&mut self, slot: Slot, old: u32, new: u32) {
        let process = self.record_mut(slot);
        process.available_count = new;
        process.total_count += u64::from(old - new);
        let service_id = process.service;
        self.make_busy(slot);
        if new != 0 {
            return;
        }
        let service = self.service_mut(service_id);
        service.process_avail -= 1;
        if service.config.service_type == ServiceType::Login
            && service.process_avail == 0
            && service.process_count >= service.config.process_limit
            && self.set_login_full(service_id, true) == Some(false)
        {
            // Done better than the original (§10: under a flood, with service_count = 1 the
            // state flips at every exit and fork, and the 2 s rate left each new process to
            // find out by its 1 s re-check, one round of kills a second). Processes started
            // since the last burst cannot know yet: they alone are told at once.
            self.login_notify_untold(service_id);
        }
        self.top_up(service_id);
        self.listen_start(service_id);
    }

    /// The process freed slots: available_count went up from `old` to `new`.
    fn status_less(&mut self, slot: Slot, old: u32, new: u32) {
        let process = self.record_mut(slot);
        process.available_count = new;
        let service_id = process.service;
        self.timers.disarm(Timer::WorkerWarning(service_id));
        if old == 0 {
            let service = self.service_mut(service_id);
            service.process_avail += 1;
            if service.process_avail == 1 && (service.listening || service.listen_pending) {
                self.listen_stop(service_id);
            }
        }
        if self.service(service_id).config.service_type == ServiceType::Login {
            self.set_login_full(service_id, false);
        }
    }

    /// Moves a process from the idle list to the busy set, keeping the low-water mark.
    fn make_busy(&mut self, slot: Slot) {
        let process = self.record_mut(slot);
        let Some(key) = process.idle_key() else {
            return;
        };
        process.set_idle(None);
        let service_id = process.service;
        self.idle_leave(service_id, key);
    }

    /// Takes `key` out of a service's idle list, keeping the count and the low-water mark: the
    /// process took a client or is gone.
    fn idle_leave(&mut self, service_id: ServiceId, key: IdleKey) {
        self.idle_remove(service_id, key);
        let service = self.service_mut(service_id);
        service.process_idling -= 1;
        service.idle_low_water = service.idle_low_water.min(service.process_idling);
    }

    /// Puts a process, idle since `since`, at the tail of its service's idle list, moving it
    /// there if it was listed already.
    fn idle_enter(&mut self, slot: Slot, since: Instant) {
        let process = self.record(slot);
        let service_id = process.service;
        match process.idle_key() {
            Some(key) => self.idle_remove(service_id, key),
            None => self.service_mut(service_id).process_idling += 1,
        }
        let key = self.service_mut(service_id).idle.push(slot);
        let process = self.record_mut(slot);
        process.set_idle(Some((key, since)));
    }

    /// Removes `key` from a service's idle list; the keys the list moves as it closes gaps are
    /// written back into their processes' records.
    fn idle_remove(&mut self, service_id: ServiceId, key: IdleKey) {
        let processes = &mut self.processes;
        let service = self
            .services
            .get_mut(&service_id)
            .expect("a process only names a live service");
        service.idle.remove(key, |slot, key| {
            if let Some(process) = processes.get_mut(slot) {
                process.move_idle_key(key);
            }
        });
    }

    /// §2.1 idle check: a process with every slot free goes to the tail of the idle list, and a
    /// surplus of available processes arms the idle-kill round.
    fn idle_check(&mut self, slot: Slot) {
        let now = self.now;
        let process = self.record(slot);
        let service_id = process.service;
        if process.available_count == self.service(service_id).config.client_limit {
            self.idle_enter(slot, now);
        }
        let service = self.service(service_id);
        if let Some(idle_kill) = service.config.idle_kill {
            if service.process_avail > service.config.process_min_avail
                && self.is_monitored(service_id)
                && !self.timers.is_armed(Timer::IdleRound(service_id))
                && idle_kills(service.config.service_type)
            {
                self.timers
                    .arm(Timer::IdleRound(service_id), now + idle_kill);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // idle_kill (§2.6).

    fn on_idle_round_timeout(&mut self, id: ServiceId) {
        if !self.services.contains_key(&id) || !self.is_monitored(id) {
            return;
        }
        let service = self.service_mut(id);
        let Some(idle_kill) = service.config.idle_kill else {
            return;
        };
        let low_water = service.idle_low_water;
        service.idle_low_water = service.process_idling;
        let min_avail = service.config.process_min_avail;
        if low_water <= min_avail {
            if service.process_idling > 0 {
                self.timers.arm(Timer::IdleRound(id), self.now + idle_kill);
            }
            return;
        }
        // Only as many as stayed idle through the whole period, minus process_min_avail.
        let mut to_kill = low_water - min_avail;
        while to_kill > 0 {
            let service = self.service(id);
            let Some(head) = service.idle.first() else {
                break;
            };
            let process = self.record(head);
            let head_id = process.id;
            if self.timers.is_armed(Timer::IdleKillConfirm(head_id)) {
                // The head was asked already: everyone behind it is newer.
                break;
            }
            let Some(pid) = process.pid() else {
                break;
            };
            self.emit(Output::Kill {
                pid,
                signal: Signal::Int,
            });
            let now = self.now;
            let process = self.record_mut(head);
            process.set_last_kill_sent(now);
            // To the tail, still idle since it was.
            let since = process.idle_start().unwrap_or(now);
            self.idle_enter(head, since);
            // One-shot, unlike 2.3.21's repeating timer (reference §2.6): it can fire once.
            self.timers
                .arm(Timer::IdleKillConfirm(head_id), now + idle_kill);
            to_kill -= 1;
        }
        self.timers.arm(Timer::IdleRound(id), self.now + idle_kill);
    }

    /// The child neither exited nor reported after SIGINT: count it as busy until it reports.
    fn on_idle_kill_confirm_timeout(&mut self, id: ProcessId) {
        let Some(slot) = self.processes.slot(id) else {
            return;
        };
        let process = self.record(slot);
        let service_id = process.service;
        let Some(pid) = process.pid() else { return };
        let old = process.available_count;
        let name = self.service(service_id).name().to_owned();
        self.log(Notice::IgnoringIdleSigint { service: name, pid });
        if old > 0 {
            self.status_more(slot, old, 0);
        } else {
            self.make_busy(slot);
        }
    }

    fn on_first_status_timeout(&mut self, id: ProcessId) {
        let Some(process) = self.processes.find(id) else {
            return;
        };
        if process.initialised {
            return;
        }
        let Some(pid) = process.pid() else {
            // The driver never answered the Spawn: nothing to kill yet; look again later.
            self.timers
                .arm(Timer::FirstStatus(id), self.now + FIRST_STATUS_TIMEOUT);
            return;
        };
        let name = self.service(process.service).name().to_owned();
        self.log(Notice::FirstStatusMissing {
            service: name,
            pid,
            timeout: FIRST_STATUS_TIMEOUT,
        });
        self.emit(Output::Kill {
            pid,
            signal: Signal::Kill,
        });
    }

    // ---------------------------------------------------------------------------------------
    // Throttling (§2.4).

    fn throttle(&mut self, id: ServiceId) {
        if self.is_throttled(id) || !self.is_monitored(id) {
            return;
        }
        let service = self.service(id);
        let backoff = service.throttle_backoff;
        let name = service.name().to_owned();
        self.log(Notice::Throttling {
            service: name,
            duration: backoff,
        });
        if self.service(id).process_count == 0 {
            let listeners = self.service(id).listeners.clone();
            for listener in listeners {
                if !self.listeners[&listener].failed {
                    self.emit(Output::AcceptAndClose { listener });
                }
            }
        }
        self.listen_stop(id);
        self.timers.arm(Timer::Throttle(id), self.now + backoff);
        let service = self.service_mut(id);
        service.throttle_backoff = (backoff * 2).min(THROTTLE_MAX);
        service.probing = true;
    }

    fn on_throttle_timeout(&mut self, id: ServiceId) {
        if !self.services.contains_key(&id) {
            return;
        }
        // The original only listens again here and leaves the top-up to the next status, exit
        // or connection, so a service whose process_min_avail processes all failed stays empty
        // on a quiet server until a client comes. roost tries the top-up at once (a failure
        // throttles again, for twice as long), so process_min_avail is kept by time alone.
        self.top_up(id);
        self.listen_start(id);
    }

    // ---------------------------------------------------------------------------------------
    // Exits (§2.4, §2.7).

    fn on_exited(&mut self, pid: Pid, status: ExitStatus) {
        let Some(slot) = self.pids.get(pid) else {
            self.log(Notice::UnknownPid { pid });
            return;
        };
        let process = self.record(slot);
        let service_id = process.service;
        // A foreign process is idle from its spawn on: it never reports.
        let failed_start = !process.initialised
            || (self.service(service_id).config.foreign
                && process.idle_start().is_some_and(|since| {
                    self.now.saturating_duration_since(since) < FOREIGN_START
                }));
        let mut throttle = false;
        // At shutdown a child that ends by the signal the master sent it did as asked.
        let asked = matches!(self.phase, Phase::ShuttingDown { .. })
            && matches!(status, ExitStatus::Signaled { signal, .. }
                if signal == Signal::Quit.number() || signal == Signal::Term.number());
        if status.is_success() {
            let service = self.service_mut(service_id);
            service.have_successful_exits = true;
            service.exit_failures_in_sec = 0;
            service.throttle_backoff = THROTTLE_INITIAL;
        } else if !asked {
            let service = self.service(service_id);
            let reason = match status {
                ExitStatus::Exited(code) => ExitReason::Error {
                    code,
                    vsz_limit: service.config.vsz_limit,
                },
                ExitStatus::Signaled {
                    signal,
                    core_dumped,
                } => ExitReason::Signal {
                    signal,
                    core_dumped,
                },
            };
            let name = service.name().to_owned();
            self.log(Notice::ChildFailed {
                service: name,
                pid,
                reason,
            });
            if !matches!(self.phase, Phase::ShuttingDown { .. }) {
                // (At shutdown anvil is leaving too: a link to it would only keep it.)
                self.emit(Output::AnvilKill { pid });
            }
            let second = self.now.as_secs();
            let service = self.service_mut(service_id);
            if failed_start {
                throttle = true;
            } else if !service.have_successful_exits {
                if service.exit_failure_last != second {
                    service.exit_failure_last = second;
                    service.exit_failures_in_sec = 0;
                }
                service.exit_failures_in_sec += 1;
                throttle = service.exit_failures_in_sec > EXIT_FAILURE_STORM;
            }
        }
        self.destroy_process(slot);
        if throttle {
            self.throttle(service_id);
        }
        let generation = self.service(service_id).generation;
        if self.is_monitored(service_id) {
            self.top_up(service_id);
            if self.is_throttled(service_id) {
                return;
            }
            let service = self.service(service_id);
            if service.config.service_type == ServiceType::Log && service.process_count == 0 {
                self.spawn(service_id);
            } else {
                self.listen_start(service_id);
            }
        } else {
            self.forget_generation_if_empty(generation);
            self.maybe_finish_shutdown();
        }
    }

    /// Removes a process from every table and counter (§2.7 step 2).
    fn destroy_process(&mut self, slot: Slot) {
        let Some(process) = self.processes.remove(slot) else {
            return;
        };
        let id = process.id;
        if let Some(pid) = process.pid() {
            if self.pids.get(pid) == Some(slot) {
                self.pids.remove(pid);
            }
        }
        self.timers.disarm(Timer::FirstStatus(id));
        self.timers.disarm(Timer::IdleKillConfirm(id));
        if let Some(key) = process.idle_key() {
            self.idle_leave(process.service, key);
        }
        let service = self.service_mut(process.service);
        service.members.remove(&id);
        if process.available_count > 0 {
            service.process_avail -= 1;
        }
        if !process.initialised {
            service.uninitialised -= 1;
        }
        service.process_count -= 1;
        if service.config.service_type == ServiceType::Login
            && service.process_count < service.config.process_limit
        {
            self.set_login_full(process.service, false);
        }
    }

    /// A process vanished without an exit we saw (its pid was reused): drop it silently.
    fn forget_process(&mut self, slot: Slot) {
        let Some(process) = self.processes.get_mut(slot) else {
            return;
        };
        process.set_pid(None);
        self.destroy_process(slot);
    }

    // ---------------------------------------------------------------------------------------
    // The login "all processes full" state (§2.8).

    /// Publishes the state; `Some(sent)` when it changed, with whether the SIGUSR1 burst went
    /// out now (`false`: it waits for the 2 s rate).
    fn set_login_full(&mut self, id: ServiceId, full: bool) -> Option<bool> {
        if !self.is_monitored(id) {
            return None;
        }
        let service = self.service_mut(id);
        if service.config.service_type != ServiceType::Login || service.login_full == full {
            return None;
        }
        service.login_full = full;
        let last = service.login_notify_sent;
        self.emit(Output::SetLoginFull { service: id, full });
        match last {
            Some(last) if self.now < last + LOGIN_NOTIFY_INTERVAL => {
                // Children read the current state when signalled, so a change during the wait
                // needs no second burst.
                self.timers
                    .arm_if_idle(Timer::LoginNotify(id), last + LOGIN_NOTIFY_INTERVAL);
                Some(false)
            }
            _ => {
                self.login_notify_send(id);
                Some(true)
            }
        }
    }

    fn login_notify_send(&mut self, id: ServiceId) {
        let Some(service) = self.services.get_mut(&id) else {
            return;
        };
        service.login_notify_sent = Some(self.now);
        self.login_signal(id, false);
    }

    /// Signals the initialised processes of a login service that were never told the state.
    fn login_notify_untold(&mut self, id: ServiceId) {
        self.login_signal(id, true);
    }

    fn login_signal(&mut self, id: ServiceId, only_untold: bool) {
        let mut pids = Vec::new();
        for process in self.service_process_ids(id) {
            let p = self.process_mut(process);
            if p.initialised && !(only_untold && p.told_login_state) {
                if let Some(pid) = p.pid() {
                    p.told_login_state = true;
                    pids.push(pid);
                }
            }
        }
        for pid in pids {
            self.emit(Output::Kill {
                pid,
                signal: Signal::Usr1,
            });
        }
    }

    // ---------------------------------------------------------------------------------------
    // Signals, reload (§4.3) and shutdown (§4.5).

    fn on_signal(&mut self, signal: Signal, sender: Option<SignalSender>) {
        match signal {
            Signal::Hup => self.log(Notice::Reloading),
            Signal::Term | Signal::Int => self.on_shutdown(signal, sender),
            Signal::Usr1 => {
                self.log(Notice::LogReopen);
                let pids: Vec<Pid> = self
                    .process_ids()
                    .into_iter()
                    .map(|id| self.process(id))
                    .filter(|p| {
                        p.initialised
                            && self.service(p.service).config.service_type == ServiceType::Log
                    })
                    .filter_map(|p| p.pid())
                    .collect();
                for pid in pids {
                    self.emit(Output::Kill {
                        pid,
                        signal: Signal::Usr1,
                    });
                }
            }
            Signal::Quit | Signal::Kill => {}
        }
    }

    fn on_reload(&mut self, config: MasterConfig) {
        if !matches!(self.phase, Phase::Running | Phase::Starting) {
            return;
        }
        self.emit(Output::Lifecycle(Lifecycle::Reloading));
        let old = self.current;
        let old_listeners = self.generation_listeners(old);
        self.retire_generation(old);
        let new = self.create_generation(config);

        // Listeners: take over what is unchanged, close the rest of the old ones, then open the
        // new ones (closing first frees a unix path that a changed listener reuses).
        let mut taken = Vec::new();
        let mut to_open = Vec::new();
        for listener in self.generation_listeners(new) {
            let config = &self.listeners[&listener].config;
            let from = old_listeners.iter().copied().find(|candidate| {
                !taken.contains(candidate)
                    && !self.listeners[candidate].failed
                    && config.can_take_over(&self.listeners[candidate].config)
            });
            match from {
                Some(from) => {
                    taken.push(from);
                    self.emit(Output::TakeOverListener { from, to: listener });
                }
                None => to_open.push(listener),
            }
        }
        for &listener in &old_listeners {
            if !taken.contains(&listener) && !self.listeners[&listener].failed {
                self.emit(Output::CloseListener { listener });
            }
        }
        for &listener in &old_listeners {
            self.listeners.remove(&listener);
        }
        for id in self.generations[&old].services.clone() {
            self.service_mut(id).listeners.clear();
        }
        for listener in to_open {
            self.emit_open_listener(listener);
        }

        // anvil never dies (§4.3 step 7): its process moves to the new generation.
        self.adopt_anvil(old, new);

        self.forget_generation_if_empty(old);
        if self.generations.contains_key(&old) {
            let generation = &self.generations[&old];
            if generation.shutdown_clients {
                self.timers
                    .arm(Timer::ReloadKill(old), self.now + RELOAD_KILL_INTERVAL);
            }
        }
        self.phase = Phase::Running;
        self.timers.arm(Timer::Start, self.now);
    }

    /// Stops monitoring a generation: no more forks or listening, timers cancelled, and its
    /// children are told the master is gone for them.
    fn retire_generation(&mut self, generation: Generation) {
        let Some(state) = self.generations.get_mut(&generation) else {
            return;
        };
        if state.retired {
            return;
        }
        state.retired = true;
        let services = state.services.clone();
        for id in services {
            self.listen_stop(id);
            for timer in [
                Timer::Prefork(id),
                Timer::Drop(id),
                Timer::WorkerWarning(id),
                Timer::IdleRound(id),
                Timer::Throttle(id),
                Timer::LoginNotify(id),
            ] {
                self.timers.disarm(timer);
            }
        }
        let keep_anvil = !matches!(self.phase, Phase::ShuttingDown { .. });
        self.emit(Output::RetireGeneration {
            generation,
            keep_anvil,
        });
    }

    fn adopt_anvil(&mut self, old: Generation, new: Generation) {
        let Some(new_anvil) = self.generations[&new]
            .services
            .iter()
            .copied()
            .find(|s| self.service(*s).config.service_type == ServiceType::Anvil)
        else {
            return;
        };
        let old_services = self.generations[&old].services.clone();
        let Some(old_anvil) = old_services
            .into_iter()
            .find(|s| self.service(*s).config.service_type == ServiceType::Anvil)
        else {
            return;
        };
        for id in self.service_process_ids(old_anvil) {
            // A new anvil service already at its limit keeps none: this one stays in the old
            // generation's books and leaves with it. (It used to be taken off the books first,
            // a live process the master no longer knew: master_model's seed 772da17e.)
            let new_service = self.service(new_anvil);
            if new_service.process_count >= new_service.config.process_limit {
                continue;
            }
            let slot = self.slot(id);
            let mut process = self.record(slot).clone();
            // Take it out of the old service's books and put it, as it is, into the new one's.
            self.destroy_process(slot);
            let new_service = self.service_mut(new_anvil);
            new_service.process_count += 1;
            new_service.total_created += 1;
            if !process.initialised {
                new_service.uninitialised += 1;
            }
            let client_limit = new_service.config.client_limit;
            let available_count = process.available_count.min(client_limit);
            new_service.members.insert(id);
            if available_count > 0 {
                new_service.process_avail += 1;
            }
            let idle_since = process.idle_start().unwrap_or(self.now);
            let pid = process.pid();
            process.service = new_anvil;
            process.available_count = available_count;
            process.set_idle(None);
            let slot = self.processes.insert(process);
            if available_count == client_limit {
                self.idle_enter(slot, idle_since);
            }
            if let Some(pid) = pid {
                self.pids.insert(pid, slot);
            }
        }
    }

    fn generation_process_count(&self, generation: Generation) -> u32 {
        self.generations
            .get(&generation)
            .map(|g| {
                g.services
                    .iter()
                    .map(|s| self.service(*s).process_count)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// A retired generation whose last process is gone is forgotten.
    fn forget_generation_if_empty(&mut self, generation: Generation) {
        let Some(state) = self.generations.get(&generation) else {
            return;
        };
        if !state.retired
            || generation == self.current
            || self.generation_process_count(generation) > 0
        {
            return;
        }
        let state = self.generations.remove(&generation).expect("checked above");
        self.timers.disarm(Timer::ReloadKill(generation));
        for id in state.services {
            if let Some(service) = self.services.remove(&id) {
                for listener in service.listeners {
                    self.listeners.remove(&listener);
                }
            }
        }
        self.emit(Output::ForgetGeneration { generation });
    }

    /// §4.3 step 8: old processes are sent TERM, later KILL; the log process last.
    fn on_reload_kill_timeout(&mut self, generation: Generation) {
        let Some(state) = self.generations.get_mut(&generation) else {
            return;
        };
        let signal = if state.kill_rounds == 0 {
            Signal::Term
        } else {
            Signal::Kill
        };
        state.kill_rounds += 1;
        let services = state.services.clone();
        let mut total = 0;
        let mut uninitialized = 0;
        let mut log_services = Vec::new();
        for &id in &services {
            if self.service(id).config.service_type == ServiceType::Log {
                log_services.push(id);
                continue;
            }
            let (count, skipped) = self.reload_kill_service(id, signal);
            total += count;
            uninitialized += skipped;
        }
        if total == 0 {
            for id in log_services {
                let (count, skipped) = self.reload_kill_service(id, signal);
                total += count;
                uninitialized += skipped;
            }
        }
        if total > 0 {
            self.log(Notice::ReloadKill {
                signal,
                count: total,
                uninitialized,
            });
        }
        if self.generation_process_count(generation) > 0 {
            self.timers.arm(
                Timer::ReloadKill(generation),
                self.now + RELOAD_KILL_INTERVAL,
            );
        }
    }

    fn reload_kill_service(&mut self, id: ServiceId, signal: Signal) -> (u32, u32) {
        let mut targets = Vec::new();
        let mut skipped = 0;
        for process in self.service_process_ids(id) {
            let process = self.process(process);
            match process.pid() {
                Some(pid) if process.initialised || signal == Signal::Kill => targets.push(pid),
                _ => skipped += 1,
            }
        }
        let count = targets.len() as u32;
        for pid in targets {
            self.emit(Output::Kill { pid, signal });
        }
        if count > 0 {
            let name = self.service(id).name().to_owned();
            self.log(Notice::ReloadKillService {
                signal,
                count,
                service: name,
            });
        }
        (count, skipped)
    }

    fn on_shutdown(&mut self, signal: Signal, sender: Option<SignalSender>) {
        match self.phase {
            Phase::ShuttingDown { .. } => {
                // Asked twice: stop waiting.
                self.shutdown_quit();
                return;
            }
            Phase::Done => return,
            Phase::Starting | Phase::Running => {}
        }
        self.log(Notice::ShuttingDown { signal, sender });
        self.emit(Output::Lifecycle(Lifecycle::Stopping));
        self.phase = Phase::ShuttingDown {
            deadline: self.now + SHUTDOWN_WAIT,
        };
        self.timers.disarm(Timer::Start);
        let generations: Vec<Generation> = self.generations.keys().copied().collect();
        for generation in generations {
            self.retire_generation(generation);
            self.timers.disarm(Timer::ReloadKill(generation));
        }
        self.on_shutdown_poll_timeout();
    }

    /// §4.5: wait (≤ 5 s) until no child accepts any more, so a restart can bind at once.
    fn on_shutdown_poll_timeout(&mut self) {
        let Phase::ShuttingDown { deadline } = self.phase else {
            return;
        };
        // Only a service with listeners accepts: an idle log process takes no connection and
        // stays until the others are gone, so the shutdown does not wait for it.
        let accepting = self
            .services
            .values()
            .any(|s| s.process_avail > 0 && !s.config.foreign && !s.config.listeners.is_empty());
        if accepting && self.now < deadline && !self.processes.is_empty() {
            self.timers
                .arm(Timer::ShutdownPoll, self.now + SHUTDOWN_POLL);
        } else {
            self.shutdown_quit();
        }
    }

    /// §4.5: SIGQUIT to every remaining child, so it closes its listeners and a restart can
    /// bind at once. Done better than the original for a process that took its last
    /// connection (service_count used up, not a login process): it holds no listener, and
    /// when it is a program an inetd adapter became, SIGQUIT's default action would kill it
    /// with a core dump and cut its client. It is left to finish its client, or, with
    /// shutdown_clients = yes, sent SIGTERM: such a program cannot see the master go.
    fn shutdown_quit(&mut self) {
        self.timers.disarm(Timer::ShutdownPoll);
        let mut sent = false;
        for id in self.process_ids() {
            let process = self.process(id);
            let Some(pid) = process.pid() else {
                continue;
            };
            let service = self.service(process.service);
            let config = &service.config;
            let spent = config.service_count > 0
                && process.total_count >= u64::from(config.service_count)
                && config.service_type != ServiceType::Login;
            let signal = if !spent {
                Signal::Quit
            } else if self
                .generations
                .get(&service.generation)
                .is_none_or(|generation| generation.shutdown_clients)
            {
                Signal::Term
            } else {
                continue;
            };
            self.emit(Output::Kill { pid, signal });
            sent = true;
        }
        if !sent {
            self.finish(0);
            return;
        }
        self.timers
            .arm_if_idle(Timer::ShutdownExit, self.now + SHUTDOWN_QUIT_GRACE);
    }

    fn maybe_finish_shutdown(&mut self) {
        if matches!(self.phase, Phase::ShuttingDown { .. }) && self.processes.is_empty() {
            self.finish(0);
        }
    }

    fn finish(&mut self, code: i32) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        self.emit(Output::Exit(code));
    }
}

/// Services whose processes are never asked to die when idle (anvil keeps state that would be
/// lost; log and config serve the others).
fn idle_kills(service_type: ServiceType) -> bool {
    !matches!(
        service_type,
        ServiceType::Anvil | ServiceType::Log | ServiceType::Config
    )
}

#[cfg(test)]
mod tests;
