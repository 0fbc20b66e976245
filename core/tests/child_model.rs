//! Property test: random events and times into the real `Child`, against a small reference
//! model of its slots and budget (reference §2.5, §4.4), with `check_invariants` after every
//! step and the status rules of §1.4 checked on the outputs:
//!
//! - counters (`available_count`, `total_available`, `service_count_left`, clients) and the exit
//!   follow the model exactly;
//! - the driver is told to accept exactly when the model has a free slot and may accept;
//! - a status write never repeats the last value written unless it answers an idle-kill request;
//! - an unimportant write (neither to nor from 0) never follows a successful one in the same
//!   second;
//! - once the pipe drains and the timers ran, the master knows the current value.

use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use roost_core::child::{Child, ChildConfig, Input, Output};
use roost_core::signal::Signal;
use roost_core::time::Instant;

/// How the status pipe answers writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Pipe {
    Open,
    Full,
    Broken,
}

#[derive(Clone, Debug)]
enum Step {
    /// A connection arrives; the driver accepts it if it was told to.
    Connect,
    /// The n-th client finishes.
    Close,
    Advance {
        ms: u32,
    },
    Signal(Signal),
    MasterDead,
    Pipe(Pipe),
    Veto(bool),
}

/// The reference: slots and budget as §2.5 and §4.4 state them.
#[derive(Clone, Debug)]
struct Model {
    config: ChildConfig,
    available: u32,
    total: u32,
    left: Option<u32>,
    clients: u32,
    closed: bool,
    dead: bool,
    exited: bool,
    veto: bool,
    /// Model time, in ms since the start.
    now: u64,
    /// When the die callback's 30 s run out (§4.4).
    die_at: Option<u64>,
}

impl Model {
    fn accepting(&self) -> bool {
        !self.closed && !self.dead && !self.exited && self.available > 0
    }

    fn close_if_used_up(&mut self) {
        if !self.config.is_login && self.left == Some(self.clients) {
            self.closed = true;
        }
    }
}

struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        (1u32..5, 0u32..7, any::<[bool; 5]>())
            .prop_map(|(client_limit, service_count, f)| {
                let config = ChildConfig {
                    client_limit,
                    service_count,
                    never_idle_die: f[0],
                    die_with_master: f[1],
                    has_die_callback: f[2],
                    is_login: f[3],
                    starts_with_client: f[4],
                };
                let total = if service_count == 0 {
                    client_limit
                } else {
                    client_limit.min(service_count)
                };
                let clients = u32::from(f[4]);
                let mut model = Model {
                    config,
                    available: total - clients,
                    total,
                    left: (service_count > 0).then_some(service_count),
                    clients,
                    closed: false,
                    dead: false,
                    exited: false,
                    veto: false,
                    now: 0,
                    die_at: None,
                };
                model.close_if_used_up();
                model
            })
            .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Step> {
        prop_oneof![
            6 => Just(Step::Connect),
            5 => Just(Step::Close),
            4 => prop_oneof![0u32..300, 300u32..1_500, 1_500u32..40_000].prop_map(|ms| Step::Advance { ms }),
            2 => prop_oneof![Just(Signal::Int), Just(Signal::Term), Just(Signal::Quit), Just(Signal::Usr1)].prop_map(Step::Signal),
            1 => Just(Step::MasterDead),
            2 => prop_oneof![4 => Just(Pipe::Open), 2 => Just(Pipe::Full), 1 => Just(Pipe::Broken)].prop_map(Step::Pipe),
            1 => any::<bool>().prop_map(Step::Veto),
        ]
        .boxed()
    }

    fn apply(mut m: Model, step: &Step) -> Model {
        if m.exited {
            return m;
        }
        match step {
            Step::Connect if m.accepting() => {
                m.available -= 1;
                m.clients += 1;
                m.close_if_used_up();
            }
            Step::Close if m.clients > 0 => {
                m.clients -= 1;
                if m.left == Some(m.total) {
                    m.total -= 1;
                } else {
                    m.available += 1;
                }
                m.left = m.left.map(|l| l - 1);
                if m.left == Some(0) {
                    m.exited = true;
                }
            }
            Step::Signal(Signal::Int) if !m.config.never_idle_die && m.clients == 0 && !m.veto => {
                m.exited = true;
            }
            Step::Signal(Signal::Term) => m.exited = true,
            Step::Signal(Signal::Quit) => m.closed = true,
            Step::MasterDead if !m.dead => {
                m.dead = true;
                m.closed = true;
                m.total = m.clients;
                m.left = Some(m.clients);
                m.available = 0;
                if m.clients == 0 || (m.config.die_with_master && !m.config.has_die_callback) {
                    m.exited = true;
                } else if m.config.die_with_master {
                    m.die_at = Some(m.now + 30_000);
                }
            }
            Step::Advance { ms } => {
                m.now += u64::from(*ms);
                if m.die_at.is_some_and(|at| at <= m.now) {
                    m.exited = true;
                }
            }
            Step::Veto(on) => m.veto = *on,
            _ => {}
        }
        m
    }
}

/// The real child and a driver around it.
struct World {
    child: Child,
    now: Instant,
    pipe: Pipe,
    accepting: bool,
    exited: bool,
    awaiting_writable: bool,
    /// The last value written whole, and when.
    written: Option<(u32, Instant)>,
    /// The last step was an idle-kill request (a write may repeat the value).
    forced: bool,
    /// An unimportant write met a full pipe since the last successful write: §1.4 drops it, so
    /// the master may lag until the next change.
    dropped: bool,
}

impl World {
    fn handle(&mut self, input: Input) {
        self.child.handle(input, self.now);
        while let Some(output) = self.child.poll_output() {
            assert!(!self.exited, "output after Exit: {output:?}");
            match output {
                Output::WriteStatus { available_count } => {
                    let last = self.written.map(|(v, _)| v);
                    let important = available_count == 0 || last == Some(0) || last.is_none();
                    if !self.forced {
                        assert_ne!(last, Some(available_count), "rewrote the last value");
                        if let (false, Some((_, at))) = (important, self.written) {
                            assert_ne!(
                                at.as_secs(),
                                self.now.as_secs(),
                                "two unimportant writes in one second"
                            );
                        }
                    }
                    let answer = match self.pipe {
                        Pipe::Open => {
                            self.written = Some((available_count, self.now));
                            self.dropped = false;
                            Input::StatusWritten
                        }
                        Pipe::Full => {
                            self.dropped |= !important;
                            Input::StatusWouldBlock
                        }
                        Pipe::Broken => Input::StatusWriteFailed,
                    };
                    self.child.handle(answer, self.now);
                }
                Output::AwaitStatusWritable => self.awaiting_writable = true,
                Output::SetAccepting { on } => self.accepting = on,
                Output::CloseListeners | Output::DieCallback => {}
                Output::Refuse => panic!("the driver only accepts when told to"),
                Output::Exit(code) => {
                    assert_eq!(code, 0);
                    self.exited = true;
                }
            }
        }
        self.child.check_invariants().expect("child invariants");
    }

    fn advance(&mut self, ms: u32) {
        let end = Instant::from_millis(self.now.as_millis() + u64::from(ms));
        while let Some(at) = self.child.poll_timeout().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            self.handle(Input::Timeout);
        }
        self.now = end;
    }
}

struct ChildTest;

impl StateMachineTest for ChildTest {
    type SystemUnderTest = World;
    type Reference = ModelMachine;

    fn init_test(model: &Model) -> World {
        let mut world = World {
            child: Child::new(model.config, Instant::ZERO),
            now: Instant::from_millis(0),
            pipe: Pipe::Open,
            accepting: false,
            exited: false,
            awaiting_writable: false,
            written: None,
            forced: false,
            dropped: false,
        };
        world.handle(Input::InitDone);
        world
    }

    fn apply(mut world: World, model: &Model, step: Step) -> World {
        world.forced = false;
        match step {
            Step::Connect => {
                if world.accepting {
                    world.handle(Input::Accepted);
                }
            }
            Step::Close => {
                if world.child.clients() > 0 {
                    world.handle(Input::ClientClosed);
                }
            }
            Step::Advance { ms } => world.advance(ms),
            Step::Signal(signal) => {
                world.forced = signal == Signal::Int;
                world.handle(Input::Signal(signal));
            }
            Step::MasterDead => world.handle(Input::MasterDead),
            Step::Pipe(pipe) => {
                world.pipe = pipe;
                if pipe == Pipe::Open && world.awaiting_writable {
                    world.awaiting_writable = false;
                    world.handle(Input::StatusWritable);
                }
            }
            Step::Veto(on) => world.handle(Input::IdleDieVeto(on)),
        }
        assert_eq!(world.exited, model.exited, "exit differs from the model");
        if !model.exited {
            let c = &world.child;
            assert_eq!(
                (
                    c.available_count(),
                    c.total_available(),
                    c.service_count_left(),
                    c.clients()
                ),
                (model.available, model.total, model.left, model.clients),
                "counters differ from the model"
            );
            assert_eq!(
                world.accepting,
                model.accepting(),
                "accepting differs from the model"
            );
            assert_eq!(
                c.listeners_closed(),
                model.closed,
                "listeners differ from the model"
            );
        }
        world
    }

    fn check_invariants(world: &World, _: &Model) {
        world.child.check_invariants().expect("child invariants");
        // Eventual consistency: with the pipe open and every timer run, the master knows the
        // current value (unless writing was disabled or the process is gone).
        let mut settled = World {
            child: world.child.clone(),
            now: world.now,
            pipe: Pipe::Open,
            accepting: world.accepting,
            exited: world.exited,
            awaiting_writable: world.awaiting_writable,
            written: world.written,
            forced: false,
            dropped: world.dropped,
        };
        if settled.exited || settled.child.status_disabled() {
            return;
        }
        if settled.awaiting_writable {
            settled.awaiting_writable = false;
            settled.handle(Input::StatusWritable);
        }
        // The die timer (30 s) may end the process while settling; 2 s covers the status timer.
        settled.advance(2_000);
        if !settled.exited && !settled.child.status_disabled() {
            let in_sync = settled.written.map(|(v, _)| v) == Some(settled.child.available_count());
            assert!(
                in_sync || settled.dropped,
                "the master was never told: wrote {:?}, now {}",
                settled.written,
                settled.child.available_count()
            );
            assert_eq!(
                settled.child.last_written(),
                settled.written.map(|(v, _)| v),
                "the child's idea of what it wrote differs from the pipe's"
            );
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn child_follows_its_model_under_random_events(sequential 1..80 => ChildTest);
}
