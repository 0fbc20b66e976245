//! A discrete-event world around the real `Master` and the real `child` machine: a fake kernel
//! that hands out pids, runs each simulated process on core's child machine, delivers signals
//! and exits, and models each listener's accept queue; clients that arrive, wait, are served
//! for a while or dropped; and faults as events.
//!
//! Time jumps from event to event (the next client, the next child timer, the master's
//! `poll_timeout`), so simulated hours cost milliseconds. Every run is a function of its seed.
//! After every step the world checks the master's invariants and its own view from outside:
//! the kernel's live children are the master's live processes, no signal reaches a reaped pid,
//! and every accepted client is served.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roost_core::child::{Child, ChildConfig, Input as ChildInput, Output as ChildOutput};
use roost_core::ids::{Generation, ListenerId, Pid, ProcessUid, ServiceId};
use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::output::Output;
use roost_core::setup::{MasterConfig, ServiceType};
use roost_core::signal::{ExitStatus, Signal};
use roost_core::time::{Duration, Instant};

/// How a process of a service misbehaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Misbehaviour {
    /// Exits with status 1 before its first status.
    pub crash_at_start: bool,
    /// Never sends its first status.
    pub silent: bool,
    /// Ignores the idle-kill SIGINT.
    pub ignores_sigint: bool,
    /// Takes this long from fork to its first status.
    pub exec_delay_ms: u64,
}

/// A scheduled event.
#[derive(Clone, Debug)]
enum Event {
    /// A client connects to a service.
    Arrive { service: String, hold_ms: u64 },
    /// A process finished starting.
    Ready { pid: Pid },
    /// A client's session ends.
    Done { pid: Pid, client: u64 },
    /// The next `count` forks fail.
    FailForks { count: u32 },
    /// A process misbehaves from now on.
    Misbehave { service: String, how: Misbehaviour },
    /// kill -9 of `count` processes of a service.
    Kill9 { service: String, count: u32 },
    /// A reload with this configuration.
    Reload { config: MasterConfig },
    /// TERM to the master.
    Term,
}

/// A simulated process.
struct Process {
    service: ServiceId,
    uid: ProcessUid,
    generation: Generation,
    child: Child,
    /// Clients being served.
    clients: BTreeSet<u64>,
    /// It finished starting.
    ready: bool,
    /// It watches its listeners.
    accepting: bool,
    /// Its listeners are closed.
    listeners_closed: bool,
    /// A foreign program: it never writes status records.
    foreign: bool,
    /// It exited and waits to be reaped (the driver reaps at its next turn, as the shell
    /// does on SIGCHLD, so signals the master queued before it knew arrive at a zombie).
    zombie: Option<ExitStatus>,
    how: Misbehaviour,
}

/// One client waiting in an accept queue.
#[derive(Clone, Debug)]
struct Waiting {
    id: u64,
    since: Instant,
    hold_ms: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Every notice of the master, with its time.
    pub notices: Vec<(Instant, String)>,
    /// Clients served (accepted by a process).
    pub served: u64,
    /// Clients closed by the master (limit reached, throttled).
    pub dropped: u64,
    /// How long served clients waited in the queue, in ms.
    pub waits_ms: Vec<u64>,
    /// The highest process count of each service (by name).
    pub peak_processes: BTreeMap<String, u32>,
    /// The process count of each current service at the end.
    pub end_processes: BTreeMap<String, u32>,
    /// The master's exit status, if it exited.
    pub exited: Option<i32>,
    /// Steps taken.
    pub steps: u64,
    /// A hash of the one-line-per-step trace (for determinism checks).
    pub trace_hash: u64,
    /// Samples over time: (ms, service, processes, available, queued).
    pub timeline: Vec<(u64, String, u32, u32, u32)>,
}

impl Report {
    /// The wait percentile `p` (0-100) in ms.
    pub fn wait_percentile(&self, p: u32) -> u64 {
        if self.waits_ms.is_empty() {
            return 0;
        }
        let mut sorted = self.waits_ms.clone();
        sorted.sort_unstable();
        let rank = ((sorted.len() - 1) as u64 * u64::from(p)).div_ceil(100) as usize;
        sorted[rank.min(sorted.len() - 1)]
    }
}

/// The simulated world.
pub struct World {
    master: Master,
    now: Instant,
    rng: SmallRng,
    events: BTreeMap<(Instant, u64), Event>,
    next_event: u64,
    next_pid: i32,
    next_client: u64,
    processes: BTreeMap<Pid, Process>,
    reaped: BTreeSet<Pid>,
    /// Per listener: its service and its accept queue.
    listeners: BTreeMap<ListenerId, (ServiceId, VecDeque<Waiting>)>,
    watched: BTreeSet<ListenerId>,
    /// Service names of the current generation → id.
    misbehaviour: BTreeMap<String, Misbehaviour>,
    fail_forks: u32,
    /// Generations whose processes were told the master is gone.
    retired: BTreeSet<Generation>,
    /// Inputs with their times, for `SIM_DUMP` traces.
    pub inputs: Vec<(Instant, Input)>,
    report: Report,
    hasher: u64,
    /// Record inputs for a trace.
    pub record: bool,
    sample_every_ms: u64,
    next_sample: Instant,
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl World {
    /// A world around a master for `config`, seeded.
    pub fn new(config: MasterConfig, seed: u64) -> World {
        let now = Instant::from_millis(1_000);
        let mut world = World {
            master: Master::new(config, now),
            now,
            rng: SmallRng::seed_from_u64(seed),
            events: BTreeMap::new(),
            next_event: 0,
            next_pid: 100,
            next_client: 0,
            processes: BTreeMap::new(),
            reaped: BTreeSet::new(),
            listeners: BTreeMap::new(),
            watched: BTreeSet::new(),
            misbehaviour: BTreeMap::new(),
            fail_forks: 0,
            retired: BTreeSet::new(),
            inputs: Vec::new(),
            report: Report::default(),
            hasher: 0xcbf2_9ce4_8422_2325,
            record: false,
            sample_every_ms: 1_000,
            next_sample: now,
        };
        world.drain();
        world
    }

    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Milliseconds since the start.
    pub fn elapsed_ms(&self) -> u64 {
        self.now.as_millis() - 1_000
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.events.insert((at, self.next_event), event);
        self.next_event += 1;
    }

    /// `count` clients of `service` arriving from `at_ms` every `spacing_ms`, each served for
    /// `hold_ms`.
    pub fn clients(
        &mut self,
        service: &str,
        at_ms: u64,
        count: u32,
        spacing_ms: u64,
        hold_ms: u64,
    ) {
        for i in 0..u64::from(count) {
            let at = Instant::from_millis(1_000 + at_ms + i * spacing_ms);
            self.schedule(
                at,
                Event::Arrive {
                    service: service.to_owned(),
                    hold_ms,
                },
            );
        }
    }

    /// The next `count` forks fail, from `at_ms`.
    pub fn fail_forks(&mut self, at_ms: u64, count: u32) {
        self.schedule(
            Instant::from_millis(1_000 + at_ms),
            Event::FailForks { count },
        );
    }

    /// Processes of `service` created from `at_ms` on misbehave.
    pub fn misbehave(&mut self, at_ms: u64, service: &str, how: Misbehaviour) {
        self.schedule(
            Instant::from_millis(1_000 + at_ms),
            Event::Misbehave {
                service: service.to_owned(),
                how,
            },
        );
    }

    /// kill -9 of `count` processes of `service` at `at_ms`.
    pub fn kill9(&mut self, at_ms: u64, service: &str, count: u32) {
        self.schedule(
            Instant::from_millis(1_000 + at_ms),
            Event::Kill9 {
                service: service.to_owned(),
                count,
            },
        );
    }

    /// A reload at `at_ms`.
    pub fn reload(&mut self, at_ms: u64, config: MasterConfig) {
        self.schedule(
            Instant::from_millis(1_000 + at_ms),
            Event::Reload { config },
        );
    }

    /// TERM at `at_ms`.
    pub fn term(&mut self, at_ms: u64) {
        self.schedule(Instant::from_millis(1_000 + at_ms), Event::Term);
    }

    /// Runs until `until_ms` (or the master exits). Panics with the seed's story on a broken
    /// invariant.
    pub fn run_until(&mut self, until_ms: u64) {
        let end = Instant::from_millis(1_000 + until_ms);
        loop {
            if self.report.exited.is_some() {
                break;
            }
            let next = [
                self.events.keys().next().map(|(at, _)| *at),
                self.master.poll_timeout(),
                self.processes
                    .values()
                    .filter_map(|p| p.child.poll_timeout())
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(at) = next.filter(|at| *at <= end) else {
                break;
            };
            self.now = self.now.max(at);
            self.sample();
            self.step();
        }
        self.now = self.now.max(end);
        self.finish_report();
    }

    fn sample(&mut self) {
        while self.next_sample <= self.now {
            let at = self.next_sample.as_millis() - 1_000;
            let current = self.master.current_generation();
            let statuses: Vec<_> = self
                .master
                .services()
                .filter(|s| s.generation == current)
                .collect();
            for status in statuses {
                let queued: usize = self
                    .listeners
                    .values()
                    .filter(|(service, _)| *service == status.id)
                    .map(|(_, q)| q.len())
                    .sum();
                self.report.timeline.push((
                    at,
                    status.name.clone(),
                    status.process_count,
                    status.process_avail,
                    queued as u32,
                ));
            }
            self.next_sample = self.next_sample + Duration::from_millis(self.sample_every_ms);
        }
    }

    /// One step: every event and timer due now.
    fn step(&mut self) {
        self.report.steps += 1;
        let now = self.now;
        while let Some((&key, _)) = self
            .events
            .first_key_value()
            .filter(|((at, _), _)| *at <= now)
        {
            let event = self.events.remove(&key).expect("just seen");
            self.on_event(event);
        }
        let due: Vec<Pid> = self
            .processes
            .iter()
            .filter(|(_, p)| p.child.poll_timeout().is_some_and(|at| at <= now))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in due {
            self.child_input(pid, ChildInput::Timeout);
        }
        if self.master.poll_timeout().is_some_and(|at| at <= now) {
            self.feed(Input::Timeout);
        }
        self.dispatch();
        self.reap();
        self.check();
    }

    fn feed(&mut self, input: Input) {
        let _ = writeln!(
            HashWriter(&mut self.hasher),
            "{} {:?}",
            self.now.as_millis(),
            input
        );
        if self.record {
            self.inputs.push((self.now, input.clone()));
        }
        self.master.handle(input, self.now);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.master.poll_output() {
            self.apply(output);
        }
    }

    fn apply(&mut self, output: Output) {
        match output {
            Output::OpenListener {
                listener, service, ..
            } => {
                self.listeners.insert(listener, (service, VecDeque::new()));
            }
            Output::TakeOverListener { from, to } => {
                if let Some((_, queue)) = self.listeners.remove(&from) {
                    let service = self.master_service_of(to);
                    self.listeners.insert(to, (service, queue));
                }
                self.watched.remove(&from);
            }
            Output::CloseListener { listener } => {
                if let Some((_, queue)) = self.listeners.remove(&listener) {
                    self.report.dropped += queue.len() as u64;
                }
                self.watched.remove(&listener);
            }
            Output::SetListening { listener, on } => {
                if on {
                    self.watched.insert(listener);
                    self.notify_readable(listener);
                } else {
                    self.watched.remove(&listener);
                }
            }
            Output::AcceptAndClose { listener } => {
                if let Some((_, queue)) = self.listeners.get_mut(&listener) {
                    self.report.dropped += queue.len() as u64;
                    queue.clear();
                }
            }
            Output::Spawn(request) => {
                if self.fail_forks > 0 {
                    self.fail_forks -= 1;
                    let input = Input::SpawnFailed {
                        process: request.process,
                        errno: 11,
                        error: "Resource temporarily unavailable".into(),
                    };
                    self.master.handle(input, self.now);
                    return;
                }
                let pid = Pid(self.next_pid);
                self.next_pid += 1;
                let config = self
                    .master
                    .service_config(request.service)
                    .cloned()
                    .expect("the core spawns a service it has");
                let how = self
                    .misbehaviour
                    .get(&config.name)
                    .cloned()
                    .unwrap_or_default();
                let child = Child::new(
                    ChildConfig {
                        client_limit: config.client_limit,
                        service_count: config.service_count,
                        die_with_master: true,
                        is_login: config.service_type == ServiceType::Login,
                        never_idle_die: matches!(
                            config.service_type,
                            ServiceType::Anvil | ServiceType::Log
                        ),
                        // The simulated programs tell their clients and stop within 30 s (§4.4).
                        has_die_callback: true,
                        starts_with_client: false,
                    },
                    self.now,
                );
                let delay = how.exec_delay_ms + self.rng.random_range(1..4);
                self.processes.insert(
                    pid,
                    Process {
                        service: request.service,
                        uid: request.uid,
                        generation: request.generation,
                        child,
                        clients: BTreeSet::new(),
                        ready: false,
                        accepting: false,
                        listeners_closed: false,
                        foreign: config.foreign,
                        zombie: None,
                        how,
                    },
                );
                self.schedule(
                    self.now + Duration::from_millis(delay),
                    Event::Ready { pid },
                );
                self.master.handle(
                    Input::Spawned {
                        process: request.process,
                        pid,
                    },
                    self.now,
                );
            }
            Output::Kill { pid, signal } => {
                assert!(
                    !self.reaped.contains(&pid),
                    "{signal} sent to reaped pid {pid}"
                );
                assert!(
                    self.processes.contains_key(&pid),
                    "{signal} sent to unknown pid {pid}"
                );
                if self.processes[&pid].zombie.is_some() {
                    return;
                }
                match signal {
                    Signal::Kill => self.exit(
                        pid,
                        ExitStatus::Signaled {
                            signal: 9,
                            core_dumped: false,
                        },
                    ),
                    Signal::Term => self.child_input(pid, ChildInput::Signal(Signal::Term)),
                    Signal::Int => {
                        if !self.processes[&pid].how.ignores_sigint && self.processes[&pid].ready {
                            self.child_input(pid, ChildInput::Signal(Signal::Int));
                        }
                    }
                    Signal::Quit => self.child_input(pid, ChildInput::Signal(Signal::Quit)),
                    Signal::Usr1 | Signal::Hup => {}
                }
            }
            Output::RetireGeneration { generation } => {
                self.retired.insert(generation);
                let pids: Vec<Pid> = self
                    .processes
                    .iter()
                    .filter(|(_, p)| p.generation == generation && p.ready)
                    .map(|(pid, _)| *pid)
                    .collect();
                for pid in pids {
                    self.child_input(pid, ChildInput::MasterDead);
                }
            }
            Output::Log(notice) => self.report.notices.push((self.now, notice.to_string())),
            Output::Exit(code) => self.report.exited = Some(code),
            Output::SetLoginFull { .. }
            | Output::ForgetGeneration { .. }
            | Output::AnvilKill { .. }
            | Output::Lifecycle(_) => {}
        }
    }

    fn master_service_of(&self, listener: ListenerId) -> ServiceId {
        self.master
            .services()
            .map(|s| s.id)
            .find(|id| self.master.service_listeners(*id).contains(&listener))
            .unwrap_or(ServiceId(0))
    }

    fn notify_readable(&mut self, listener: ListenerId) {
        if !self.watched.contains(&listener) {
            return;
        }
        let queued = self.listeners.get(&listener).map_or(0, |(_, q)| q.len()) as u32;
        if queued > 0 {
            self.feed(Input::ListenerReadable { listener, queued });
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Arrive { service, hold_ms } => {
                let current = self.master.current_generation();
                let id = self
                    .master
                    .services()
                    .find(|s| s.generation == current && s.name == service)
                    .map(|s| s.id);
                let listener = id.and_then(|id| self.master.service_listeners(id).first().copied());
                let Some(listener) = listener.filter(|l| self.listeners.contains_key(l)) else {
                    self.report.dropped += 1;
                    return;
                };
                let client = Waiting {
                    id: self.next_client,
                    since: self.now,
                    hold_ms,
                };
                self.next_client += 1;
                if let Some((_, queue)) = self.listeners.get_mut(&listener) {
                    queue.push_back(client);
                }
                self.dispatch();
                self.notify_readable(listener);
            }
            Event::Ready { pid } => {
                let Some(process) = self.processes.get_mut(&pid).filter(|p| p.zombie.is_none())
                else {
                    return;
                };
                process.ready = true;
                if process.how.crash_at_start {
                    self.exit(pid, ExitStatus::Exited(1));
                } else if !process.how.silent || process.foreign {
                    // A foreign program cannot be seen to hang (it sends no status): the sim
                    // does not give it a fault the master has no means to notice.
                    let retired = self.retired.contains(&process.generation);
                    self.child_input(pid, ChildInput::InitDone);
                    if retired {
                        self.child_input(pid, ChildInput::MasterDead);
                    }
                }
            }
            Event::Done { pid, client } => {
                let Some(process) = self.processes.get_mut(&pid) else {
                    return;
                };
                if process.clients.remove(&client) {
                    self.child_input(pid, ChildInput::ClientClosed);
                }
            }
            Event::FailForks { count } => self.fail_forks += count,
            Event::Misbehave { service, how } => {
                self.misbehaviour.insert(service, how);
            }
            Event::Kill9 { service, count } => {
                let victims: Vec<Pid> = self
                    .processes
                    .iter()
                    .filter(|(_, p)| {
                        self.master
                            .service_config(p.service)
                            .is_some_and(|c| c.name == service)
                    })
                    .map(|(pid, _)| *pid)
                    .take(count as usize)
                    .collect();
                for pid in victims {
                    self.exit(
                        pid,
                        ExitStatus::Signaled {
                            signal: 9,
                            core_dumped: false,
                        },
                    );
                }
            }
            Event::Reload { config } => {
                self.feed(Input::Signal(Signal::Hup));
                self.feed(Input::Reload(Box::new(config)));
            }
            Event::Term => self.feed(Input::Signal(Signal::Term)),
        }
    }

    /// Accepting processes take waiting clients.
    fn dispatch(&mut self) {
        let listeners: Vec<(ListenerId, ServiceId)> = self
            .listeners
            .iter()
            .filter(|(_, (_, q))| !q.is_empty())
            .map(|(id, (s, _))| (*id, *s))
            .collect();
        for (listener, service) in listeners {
            let pids: Vec<Pid> = self
                .processes
                .iter()
                .filter(|(_, p)| {
                    p.service == service && p.accepting && !p.listeners_closed && p.zombie.is_none()
                })
                .map(|(pid, _)| *pid)
                .collect();
            for pid in pids {
                while self
                    .processes
                    .get(&pid)
                    .is_some_and(|p| p.accepting && !p.listeners_closed)
                {
                    let Some(client) = self
                        .listeners
                        .get_mut(&listener)
                        .and_then(|(_, q)| q.pop_front())
                    else {
                        break;
                    };
                    self.report.served += 1;
                    self.report
                        .waits_ms
                        .push((self.now - client.since).as_millis() as u64);
                    if let Some(process) = self.processes.get_mut(&pid) {
                        process.clients.insert(client.id);
                    }
                    self.schedule(
                        self.now + Duration::from_millis(client.hold_ms),
                        Event::Done {
                            pid,
                            client: client.id,
                        },
                    );
                    self.child_input(pid, ChildInput::Accepted);
                }
            }
        }
    }

    fn child_input(&mut self, pid: Pid, input: ChildInput) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        process.child.handle(input, self.now);
        loop {
            let Some(process) = self.processes.get_mut(&pid) else {
                return;
            };
            let Some(output) = process.child.poll_output() else {
                return;
            };
            match output {
                ChildOutput::WriteStatus { available_count } => {
                    let uid = process.uid;
                    let foreign = process.foreign;
                    process.child.handle(ChildInput::StatusWritten, self.now);
                    if !foreign {
                        self.feed(Input::Status {
                            pid,
                            uid,
                            available_count,
                        });
                    }
                }
                ChildOutput::SetAccepting { on } => process.accepting = on,
                ChildOutput::CloseListeners => process.listeners_closed = true,
                // The simulated pipe never fills, and the world accepts only while accepting.
                ChildOutput::AwaitStatusWritable | ChildOutput::Refuse => {}
                ChildOutput::DieCallback => {}
                ChildOutput::Exit(code) => {
                    self.exit(pid, ExitStatus::Exited(code));
                    return;
                }
            }
        }
    }

    fn exit(&mut self, pid: Pid, status: ExitStatus) {
        if let Some(process) = self.processes.get_mut(&pid) {
            if process.zombie.is_none() {
                process.zombie = Some(status);
                process.accepting = false;
                process.clients.clear();
            }
        }
    }

    /// Reaps every zombie, as the shell's SIGCHLD handler does at its next turn.
    fn reap(&mut self) {
        loop {
            let zombies: Vec<(Pid, ExitStatus)> = self
                .processes
                .iter()
                .filter_map(|(pid, p)| p.zombie.map(|status| (*pid, status)))
                .collect();
            if zombies.is_empty() {
                return;
            }
            for (pid, status) in zombies {
                self.processes.remove(&pid);
                self.reaped.insert(pid);
                self.feed(Input::Exited { pid, status });
            }
        }
    }

    fn check(&mut self) {
        if let Err(violation) = self.master.check_invariants() {
            panic!("{violation}");
        }
        if self.report.exited.is_none() {
            assert_eq!(
                self.master.process_count(),
                self.processes.len(),
                "the kernel's live children must be the master's processes"
            );
        }
        for status in self.master.services() {
            let peak = self
                .report
                .peak_processes
                .entry(status.name.clone())
                .or_default();
            *peak = (*peak).max(status.process_count);
        }
        for process in self.processes.values() {
            if let Err(error) = process.child.check_invariants() {
                panic!("child invariant: {error}");
            }
        }
    }

    fn finish_report(&mut self) {
        let current = self.master.current_generation();
        self.report.end_processes = self
            .master
            .services()
            .filter(|s| s.generation == current)
            .map(|s| (s.name, s.process_count))
            .collect();
        self.report.trace_hash = self.hasher;
    }

    /// Clients still waiting in accept queues.
    pub fn waiting(&self) -> usize {
        self.listeners.values().map(|(_, q)| q.len()).sum()
    }

    /// Clients being served.
    pub fn in_service(&self) -> usize {
        self.processes
            .values()
            .filter(|p| p.zombie.is_none())
            .map(|p| p.clients.len())
            .sum()
    }

    /// Clears every misbehaviour and pending fork failure (the liveness phase).
    pub fn stop_faults(&mut self) {
        self.misbehaviour.clear();
        self.fail_forks = 0;
        for process in self.processes.values_mut() {
            process.how = Misbehaviour::default();
        }
    }

    /// The world's state in a few lines, for a failing seed's story.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "at {}: generation {}",
            self.now,
            self.master.current_generation().0
        );
        for s in self.master.services() {
            let _ = writeln!(out, "  service {:?}", s);
        }
        for (pid, p) in &self.processes {
            let _ = writeln!(
                out,
                "  pid {pid} {} gen {} ready {} accepting {} closed {} clients {:?} available {}",
                p.service,
                p.generation.0,
                p.ready,
                p.accepting,
                p.listeners_closed,
                p.clients,
                p.child.available_count()
            );
        }
        for (id, (service, queue)) in &self.listeners {
            let _ = writeln!(
                out,
                "  {id} of {service}: {} waiting, watched {}",
                queue.len(),
                self.watched.contains(id)
            );
        }
        out
    }

    /// The master, for questions.
    pub fn master(&self) -> &Master {
        &self.master
    }

    /// What was measured so far.
    pub fn report(&self) -> &Report {
        &self.report
    }
}

/// Feeds formatted text into the FNV hash.
struct HashWriter<'a>(&'a mut u64);

impl std::fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        *self.0 = fnv(*self.0, s.as_bytes());
        Ok(())
    }
}
