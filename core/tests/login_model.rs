//! Property test: random connections, login progress, full-state changes and times into the real
//! `Login`, against a reference table of its clients kept by the driver, with `check_invariants`
//! after every step. What must always hold (reference §2.8, §8):
//!
//! - the table (state, closing) equals the reference after every step;
//! - an overflow kills at most one client per event, only while the service was last read as
//!   full and the process had no free slot, and exactly the client the kill policy names from
//!   the reference table (the oldest pre-login one, else the oldest not logged in, by arrival
//!   then id); never a logged-in client;
//! - a pre-auth disconnect only hits a client that is not logged in and whose timeout ran out,
//!   with the text of its state;
//! - the driver is told to accept exactly while the child has a free slot;
//! - nothing is refused when the driver keeps to the contract.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use roost_core::login::{
    ClientId, ClientState, DisconnectReason, Input, KillPolicy, ListenMode, Login, LoginConfig,
    Output, ORIGINAL_OVERFLOW_POLICY,
};
use roost_core::signal::Signal;
use roost_core::time::{Duration, Instant};

#[derive(Clone, Debug)]
enum Step {
    /// A connection arrives (accepted, or an overflow event).
    Connect {
        jitter: u32,
    },
    /// The n-th open client moves on.
    Progress {
        client: usize,
        state: ClientState,
    },
    /// The n-th client's connection ends (also a closing one: its lookup returned).
    Close {
        client: usize,
    },
    Advance {
        ms: u32,
    },
    /// The master changes the notify state and signals (or the signal is lost).
    Notify {
        full: bool,
        signal: bool,
    },
    MasterDead,
    Signal(Signal),
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = LoginConfig;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<LoginConfig> {
        (
            1u32..5,
            0u32..5,
            any::<[bool; 3]>(),
            0u32..3,
            prop_oneof![Just(180_000u64), 500u64..5_000],
            prop_oneof![Just(30_000u64), 200u64..3_000],
        )
            .prop_map(|(client_limit, service_count, f, delayed, timeout, auth)| {
                let mut config = LoginConfig::new(client_limit, service_count);
                config.die_with_master = f[0];
                config.has_die_callback = f[1];
                config.pre_auth_timeout = Duration::from_millis(timeout);
                config.auth_timeout = Duration::from_millis(auth);
                config.overflow = ORIGINAL_OVERFLOW_POLICY;
                config.overflow.delayed_kill_max_slots = delayed;
                if f[2] {
                    config.overflow.kill_policy = KillPolicy::OldestKillableOnly;
                }
                config
            })
            .boxed()
    }

    fn transitions(_: &LoginConfig) -> BoxedStrategy<Step> {
        let state = prop_oneof![
            Just(ClientState::PreLogin),
            Just(ClientState::InAuth),
            Just(ClientState::HandingOff),
            Just(ClientState::LoggedIn),
        ];
        prop_oneof![
            6 => any::<u32>().prop_map(|jitter| Step::Connect { jitter }),
            4 => (0usize..6, state).prop_map(|(client, state)| Step::Progress { client, state }),
            3 => (0usize..6).prop_map(|client| Step::Close { client }),
            4 => prop_oneof![0u32..150, 150u32..1_500, 1_500u32..200_000].prop_map(|ms| Step::Advance { ms }),
            3 => (any::<bool>(), prop_oneof![3 => Just(true), 1 => Just(false)]).prop_map(|(full, signal)| Step::Notify { full, signal }),
            1 => Just(Step::MasterDead),
            1 => prop_oneof![Just(Signal::Int), Just(Signal::Term), Just(Signal::Quit)].prop_map(Step::Signal),
        ]
        .boxed()
    }

    fn apply(config: LoginConfig, _: &Step) -> LoginConfig {
        config
    }
}

/// The reference entry of one client.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Entry {
    created: Instant,
    state: ClientState,
    /// Since when its lookup is out, until it comes back or is reported late.
    in_auth_since: Option<Instant>,
    closing: bool,
}

/// The real login process and a driver around it.
struct World {
    login: Login,
    config: LoginConfig,
    now: Instant,
    /// What the notify fd says.
    notify_full: bool,
    /// What the machine last read from it.
    read_full: bool,
    mode: ListenMode,
    exited: bool,
    next_id: u64,
    table: BTreeMap<ClientId, Entry>,
}

impl World {
    /// The victim the policy names, from the reference table.
    fn expected_victim(&self) -> Option<ClientId> {
        let mut open: Vec<(Instant, ClientId, ClientState)> = self
            .table
            .iter()
            .filter(|(_, e)| !e.closing && e.state != ClientState::LoggedIn)
            .map(|(&id, e)| (e.created, id, e.state))
            .collect();
        open.sort();
        open.iter()
            .find(|(_, _, s)| *s == ClientState::PreLogin)
            .map(|&(_, id, _)| id)
            .or(match self.config.overflow.kill_policy {
                KillPolicy::OldestKillableElseOldest => open.first().map(|&(_, id, _)| id),
                KillPolicy::OldestKillableOnly => None,
            })
    }

    fn handle(&mut self, input: Input) {
        let victim = self.expected_victim();
        let no_slot = self.login.child().available_count() == 0;
        let read_full = self.read_full;
        self.login.handle(input, self.now);
        let mut kills = 0;
        let mut followups = Vec::new();
        while let Some(output) = self.login.poll_output() {
            assert!(!self.exited, "output after Exit: {output:?}");
            match output {
                Output::WriteStatus { .. } => followups.push(Input::StatusWritten),
                Output::ReadFullState => followups.push(Input::FullState {
                    full: self.notify_full,
                }),
                Output::SetListening { mode } => self.mode = mode,
                Output::Disconnect { client, reason } => {
                    let entry = self.table.get_mut(&client).expect("a known client");
                    assert!(!entry.closing, "{client} disconnected twice");
                    assert_ne!(
                        entry.state,
                        ClientState::LoggedIn,
                        "a logged-in client was disconnected"
                    );
                    if reason == DisconnectReason::QueueFull {
                        kills += 1;
                        assert!(kills <= 1, "two kills for one event");
                        assert!(no_slot, "killed with a free slot");
                        assert!(
                            read_full || matches!(input, Input::FullState { full: true }),
                            "killed while not known full"
                        );
                        assert_eq!(Some(client), victim, "the wrong victim");
                    } else {
                        assert!(entry.created + self.config.pre_auth_timeout <= self.now);
                        let want = match entry.state {
                            ClientState::PreLogin => DisconnectReason::Inactivity,
                            ClientState::InAuth => DisconnectReason::InactivityDuringAuth,
                            ClientState::HandingOff => DisconnectReason::FinishingLogin,
                            ClientState::LoggedIn => unreachable!("checked above"),
                        };
                        assert_eq!(reason, want);
                    }
                    entry.closing = true;
                    if entry.state == ClientState::PreLogin {
                        // Nothing outstanding: the driver closes it at once.
                        followups.push(Input::ClientClosed { client });
                    }
                }
                Output::AuthTimedOut { client } => {
                    let entry = self.table.get_mut(&client).expect("a known client");
                    assert!(!entry.closing, "{client} reported late while closing");
                    assert_eq!(entry.state, ClientState::InAuth, "{client} is not in auth");
                    let since = entry.in_auth_since.take().expect("reported once");
                    assert!(
                        since + self.config.auth_timeout <= self.now,
                        "{client} reported early"
                    );
                    // The driver gives up on the lookup: the client is back to pre-login.
                    entry.state = ClientState::PreLogin;
                    followups.push(Input::ClientState {
                        client,
                        state: ClientState::PreLogin,
                    });
                }
                Output::Refuse => panic!("refused though the driver kept the contract"),
                Output::CloseListeners | Output::AwaitStatusWritable | Output::DieCallback => {}
                Output::Exit(code) => {
                    assert_eq!(code, 0);
                    self.exited = true;
                }
            }
        }
        if let Input::FullState { full } = input {
            self.read_full = full;
        }
        self.login.check_invariants().expect("login invariants");
        for input in followups {
            if let Input::ClientClosed { client } = input {
                self.table.remove(&client);
            }
            self.handle(input);
        }
    }

    fn open_client(&self, n: usize, closing_too: bool) -> Option<ClientId> {
        let ids: Vec<ClientId> = self
            .table
            .iter()
            .filter(|(_, e)| closing_too || !e.closing)
            .map(|(&id, _)| id)
            .collect();
        (!ids.is_empty()).then(|| ids[n % ids.len()])
    }
}

struct LoginTest;

impl StateMachineTest for LoginTest {
    type SystemUnderTest = World;
    type Reference = Reference;

    fn init_test(config: &LoginConfig) -> World {
        let mut world = World {
            login: Login::new(*config, Instant::ZERO),
            config: *config,
            now: Instant::ZERO,
            notify_full: false,
            read_full: false,
            mode: ListenMode::Off,
            exited: false,
            next_id: 1,
            table: BTreeMap::new(),
        };
        world.handle(Input::InitDone);
        world
    }

    fn apply(mut world: World, _: &LoginConfig, step: Step) -> World {
        if world.exited {
            return world;
        }
        match step {
            Step::Connect { jitter } => match world.mode {
                ListenMode::Accept => {
                    let client = ClientId(world.next_id);
                    world.next_id += 1;
                    world.table.insert(
                        client,
                        Entry {
                            created: world.now,
                            state: ClientState::PreLogin,
                            in_auth_since: None,
                            closing: false,
                        },
                    );
                    world.handle(Input::Accepted { client });
                }
                ListenMode::Overflow => world.handle(Input::ListenerReadable { jitter }),
                ListenMode::Off => {}
            },
            Step::Progress { client, state } => {
                if let Some(id) = world.open_client(client, false) {
                    let entry = world.table.get_mut(&id).expect("listed");
                    if entry.state != ClientState::LoggedIn {
                        if state != ClientState::InAuth {
                            entry.in_auth_since = None;
                        } else if entry.state != ClientState::InAuth {
                            entry.in_auth_since = Some(world.now);
                        }
                        entry.state = state;
                    }
                    world.handle(Input::ClientState { client: id, state });
                }
            }
            Step::Close { client } => {
                if let Some(id) = world.open_client(client, true) {
                    world.table.remove(&id);
                    world.handle(Input::ClientClosed { client: id });
                }
            }
            Step::Advance { ms } => {
                let end = Instant::from_millis(world.now.as_millis() + u64::from(ms));
                while let Some(at) = world.login.poll_timeout().filter(|&at| at <= end) {
                    world.now = world.now.max(at);
                    world.handle(Input::Timeout);
                    if world.exited {
                        break;
                    }
                }
                world.now = end;
            }
            Step::Notify { full, signal } => {
                world.notify_full = full;
                if signal {
                    world.handle(Input::Signal(Signal::Usr1));
                }
            }
            Step::MasterDead => world.handle(Input::MasterDead),
            Step::Signal(signal) => world.handle(Input::Signal(signal)),
        }
        world
    }

    fn check_invariants(world: &World, _: &LoginConfig) {
        world.login.check_invariants().expect("login invariants");
        if world.exited {
            return;
        }
        assert_eq!(world.login.client_count(), world.table.len(), "table size");
        for (&id, entry) in &world.table {
            assert_eq!(
                world.login.client(id),
                Some((entry.state, entry.closing)),
                "{id} differs from the reference"
            );
        }
        assert_eq!(world.mode, world.login.listen_mode());
        assert_eq!(
            world.mode == ListenMode::Accept,
            world.login.child().is_accepting(),
            "accept mode must follow the child's free slots"
        );
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn login_follows_its_reference_table_under_random_events(sequential 1..100 => LoginTest);
}
