//! Property test: random events and times into the real `Master`, checked after every step.
//!
//! The reference model is deliberately small (STYLE.md §4): what must always hold whatever
//! happens. Each service keeps within process_limit, the master's count of live processes equals
//! the fake kernel's, no signal goes to a pid that was already reaped, nothing is emitted after
//! `Exit`, and `check_invariants` holds after every step.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use roost_core::ids::{Pid, ProcessUid, ServiceId};
use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::output::Output;
use roost_core::setup::{ListenerConfig, ListenerKind, MasterConfig, ServiceConfig, ServiceType};
use roost_core::signal::{ExitStatus, Signal};
use roost_core::time::{Duration, Instant};

/// One step the world can take.
#[derive(Clone, Debug)]
enum Step {
    /// A listener of a service has `queued` connections.
    Readable { service: usize, queued: u32 },
    /// The n-th live child reports `available` free slots (clamped to its client_limit).
    Status { child: usize, available: u32 },
    /// The n-th live child reports with a wrong uid.
    StaleStatus { child: usize },
    /// The n-th live child exits.
    Exit { child: usize, status: ExitStatus },
    /// Time passes; due timers fire.
    Advance { ms: u32 },
    /// The next `Spawn` fails.
    FailNextSpawn,
    /// HUP: the same configuration again, or with the first service changed.
    Reload { change: bool },
    /// TERM.
    Term,
}

#[derive(Clone, Debug)]
struct Model {
    services: Vec<ServiceConfig>,
    shutdown_clients: bool,
}

fn service_strategy(index: usize) -> impl Strategy<Value = ServiceConfig> {
    (
        1u32..6,
        1u32..4,
        0u32..3,
        0u32..4,
        prop_oneof![
            Just(None),
            (1u64..120).prop_map(|s| Some(Duration::from_secs(s)))
        ],
        prop_oneof![
            4 => Just(ServiceType::Default),
            1 => Just(ServiceType::Login),
            1 => Just(ServiceType::Worker),
            1 => Just(ServiceType::Log),
            1 => Just(ServiceType::Anvil),
            1 => Just(ServiceType::Startup),
        ],
        any::<bool>(),
    )
        .prop_map(
            move |(
                process_limit,
                client_limit,
                service_count,
                min_avail,
                idle_kill,
                service_type,
                foreign,
            )| {
                let client_limit = if service_count > 0 {
                    client_limit.min(service_count)
                } else {
                    client_limit
                };
                ServiceConfig {
                    name: format!("s{index}"),
                    protocol: String::new(),
                    service_type,
                    process_limit,
                    client_limit,
                    service_count,
                    process_min_avail: min_avail.min(process_limit),
                    idle_kill,
                    vsz_limit: 0,
                    foreign: foreign && service_type == ServiceType::Default,
                    listeners: vec![ListenerConfig {
                        name: format!("s{index}"),
                        kind: ListenerKind::Inet {
                            address: "127.0.0.1".to_owned(),
                            port: 2000 + index as u16,
                            ssl: false,
                            haproxy: false,
                            reuse_port: false,
                        },
                    }],
                }
            },
        )
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        (service_strategy(0), service_strategy(1), any::<bool>())
            .prop_map(|(a, b, shutdown_clients)| Model {
                services: vec![a, b],
                shutdown_clients,
            })
            .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Step> {
        prop_oneof![
            4 => (0usize..2, 1u32..8).prop_map(|(service, queued)| Step::Readable { service, queued }),
            6 => (0usize..16, 0u32..4).prop_map(|(child, available)| Step::Status { child, available }),
            1 => (0usize..16).prop_map(|child| Step::StaleStatus { child }),
            3 => (0usize..16, prop_oneof![
                Just(ExitStatus::Exited(0)),
                Just(ExitStatus::Exited(1)),
                Just(ExitStatus::Exited(84)),
                Just(ExitStatus::Signaled { signal: 9, core_dumped: false }),
            ]).prop_map(|(child, status)| Step::Exit { child, status }),
            4 => prop_oneof![0u32..50, 50u32..2_000, 2_000u32..70_000].prop_map(|ms| Step::Advance { ms }),
            1 => Just(Step::FailNextSpawn),
            1 => any::<bool>().prop_map(|change| Step::Reload { change }),
            1 => Just(Step::Term),
        ]
        .boxed()
    }

    fn apply(state: Model, _: &Step) -> Model {
        state
    }
}

/// The real master inside a fake kernel.
struct World {
    master: Master,
    config: Model,
    now: Instant,
    next_pid: i32,
    live: BTreeMap<Pid, (ServiceId, ProcessUid)>,
    reaped: Vec<Pid>,
    fail_next_spawn: bool,
    exited: bool,
}

impl World {
    fn drain(&mut self) {
        while let Some(output) = self.master.poll_output() {
            assert!(!self.exited, "output after Exit: {output:?}");
            match output {
                Output::Spawn(request) => {
                    if std::mem::take(&mut self.fail_next_spawn) {
                        self.master.handle(
                            Input::SpawnFailed {
                                process: request.process,
                                errno: 11,
                                error: "EAGAIN".into(),
                            },
                            self.now,
                        );
                    } else {
                        let pid = Pid(self.next_pid);
                        self.next_pid += 1;
                        self.live.insert(pid, (request.service, request.uid));
                        self.master.handle(
                            Input::Spawned {
                                process: request.process,
                                pid,
                            },
                            self.now,
                        );
                    }
                }
                Output::Kill { pid, signal } => {
                    assert!(
                        !self.reaped.contains(&pid),
                        "{signal} sent to reaped pid {pid}"
                    );
                    assert!(
                        self.live.contains_key(&pid),
                        "{signal} sent to unknown pid {pid}"
                    );
                }
                Output::Exit(_) => self.exited = true,
                _ => {}
            }
        }
    }

    fn child(&self, n: usize) -> Option<(Pid, ServiceId, ProcessUid)> {
        if self.live.is_empty() {
            return None;
        }
        let (pid, (service, uid)) = self.live.iter().nth(n % self.live.len())?;
        Some((*pid, *service, *uid))
    }

    fn handle(&mut self, input: Input) {
        self.master.handle(input, self.now);
        self.drain();
    }

    fn config(&self, change: bool) -> MasterConfig {
        let mut services = self.config.services.clone();
        if change {
            services[0].process_limit += 1;
            services[0].listeners[0].kind = ListenerKind::Inet {
                address: "127.0.0.1".to_owned(),
                port: 3000,
                ssl: false,
                haproxy: false,
                reuse_port: false,
            };
        }
        MasterConfig {
            services,
            shutdown_clients: self.config.shutdown_clients,
        }
    }
}

struct MasterTest;

impl StateMachineTest for MasterTest {
    type SystemUnderTest = World;
    type Reference = Model;

    fn init_test(model: &Model) -> World {
        let now = Instant::from_millis(5_000);
        let mut world = World {
            master: Master::new(
                MasterConfig {
                    services: model.services.clone(),
                    shutdown_clients: model.shutdown_clients,
                },
                now,
            ),
            config: model.clone(),
            now,
            next_pid: 2,
            live: BTreeMap::new(),
            reaped: Vec::new(),
            fail_next_spawn: false,
            exited: false,
        };
        world.drain();
        world.handle(Input::Timeout);
        world
    }

    fn apply(mut world: World, _: &Model, step: Step) -> World {
        if world.exited {
            return world;
        }
        match step {
            Step::Readable { service, queued } => {
                let current = world.master.current_generation();
                let ids: Vec<ServiceId> = world
                    .master
                    .services()
                    .filter(|s| s.generation == current)
                    .map(|s| s.id)
                    .collect();
                let listener = ids
                    .get(service)
                    .and_then(|id| world.master.service_listeners(*id).first().copied());
                if let Some(listener) = listener {
                    world.handle(Input::ListenerReadable { listener, queued });
                }
            }
            Step::Status { child, available } => {
                if let Some((pid, _, uid)) = world.child(child) {
                    world.handle(Input::Status {
                        pid,
                        uid,
                        available_count: available,
                    });
                }
            }
            Step::StaleStatus { child } => {
                if let Some((pid, _, uid)) = world.child(child) {
                    world.handle(Input::Status {
                        pid,
                        uid: ProcessUid(uid.0 + 1000),
                        available_count: 0,
                    });
                }
            }
            Step::Exit { child, status } => {
                if let Some((pid, _, _)) = world.child(child) {
                    world.live.remove(&pid);
                    world.reaped.push(pid);
                    world.handle(Input::Exited { pid, status });
                }
            }
            Step::Advance { ms } => {
                let end = world.now + Duration::from_millis(u64::from(ms));
                while let Some(at) = world.master.poll_timeout().filter(|at| *at <= end) {
                    world.now = world.now.max(at);
                    world.handle(Input::Timeout);
                    if world.exited {
                        break;
                    }
                }
                world.now = end;
            }
            Step::FailNextSpawn => world.fail_next_spawn = true,
            Step::Reload { change } => {
                world.handle(Input::Signal(Signal::Hup));
                let config = world.config(change);
                world.handle(Input::Reload(Box::new(config)));
            }
            Step::Term => world.handle(Input::Signal(Signal::Term)),
        }
        world
    }

    fn check_invariants(world: &World, _: &Model) {
        if let Err(violation) = world.master.check_invariants() {
            panic!("{violation}");
        }
        if !world.exited {
            assert_eq!(
                world.master.process_count(),
                world.live.len(),
                "the master's live processes must equal the kernel's"
            );
        }
        for service in world.master.services() {
            assert!(
                service.process_count <= service.process_limit,
                "{service:?}"
            );
            assert!(
                service.process_avail <= service.process_count,
                "{service:?}"
            );
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn master_keeps_its_invariants_under_random_events(sequential 1..120 => MasterTest);
}
