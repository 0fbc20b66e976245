//! The machine a simulated service process runs, and what its driver remembers of its outputs,
//! shared by both drivers ([`crate::des`] and [`crate::net`]) so that they feed it the same
//! inputs and read its outputs the same way.
//!
//! A process of a login service runs core's `roost_core::login::Login` machine (which wraps its
//! own child machine): which pre-login client a full process kills and when (reference §2.8),
//! the "all processes full" state it reads on SIGUSR1 and re-checks, and the pre-auth timeout
//! (§8) are its decisions. Any other process runs core's `roost_core::child::Child` machine
//! (slots, service_count budget, status coalescing, idle-kill answer, master death, §1.4, §2.5,
//! §2.6, §4.4). The drivers only say what happened ([`Event`]) and carry out what the machine
//! asks ([`Action`]); the answers that do not depend on a driver are given here: the simulated
//! status pipe never fills up, the notify fd's offset is the state the master last published,
//! and a disconnected client has nothing outstanding, so it is closed at once.
//!
//! State owned here: the machine, and the driver's record of what it asked for (accepting or
//! the login listening mode, listeners closed, readiness reported once per registration) and of
//! the master's death. Invariant: the machine's own `check_invariants` holds after every input
//! (a violation is returned by [`ProcMachine::step`] and ends the run).

use std::collections::VecDeque;

use roost_core::child::{Child, ChildConfig, Input as ChildInput, Output as ChildOutput};
use roost_core::login::{
    ClientId, ClientState, DisconnectReason, Input as LoginInput, ListenMode, Login, LoginConfig,
    Output as LoginOutput, OverflowPolicy,
};
use roost_core::signal::Signal;
use roost_core::time::Instant;

/// What a process is, from the master's spawn request and the load profile.
#[derive(Copy, Clone, Debug)]
pub struct ProcSpec {
    /// Effective `client_limit`.
    pub client_limit: u32,
    /// `service_count`; 0 = unlimited.
    pub service_count: u32,
    /// A process of a `type = login` service: it runs the login machine.
    pub login: bool,
    /// `shutdown_clients`: die with the master.
    pub die_with_master: bool,
    /// The overflow answer of a login process.
    pub overflow: OverflowPolicy,
}

/// What happens to a process, in the drivers' words. [`ProcMachine::step`] turns it into the
/// input of the machine the process runs, or nothing where that machine has no such input.
#[derive(Copy, Clone, Debug)]
pub enum Event {
    /// Exec and initialisation are over.
    InitDone,
    /// A signal arrived.
    Signal(Signal),
    /// The machine's `poll_timeout` has come.
    Timeout,
    /// The master's end of the generation is gone (reference §4.4).
    MasterDead,
    /// A connection was accepted; the driver's id for it.
    Accepted(u64),
    /// A login client moved on (an auth lookup began, it logged in, it is being handed off).
    ClientState(u64, ClientState),
    /// A connection ended.
    ClientClosed(u64),
    /// A watched listener is readable in overflow mode, with the jitter the driver drew for it.
    Readable(u32),
}

/// What the world looks like to the process during one step.
#[derive(Copy, Clone, Debug)]
pub struct Surroundings {
    /// The master has exited: nobody reads status records any more.
    pub master_gone: bool,
    /// The service's "all processes full" state, as the notify fd shows it now.
    pub login_full: bool,
}

/// What the driver must carry out, in order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A status record for the master (already reported written to the machine).
    Status {
        /// Free slots.
        available_count: u32,
    },
    /// Tell the client `reason` and close it; the machine has already been told it is closed.
    Disconnect {
        /// The driver's id of the connection.
        conn: u64,
        /// Why.
        reason: DisconnectReason,
    },
    /// The machine refused a connection the driver gave it while it asked to accept: a bug of
    /// the driver.
    Refused,
    /// The process exits with this status; nothing follows.
    Exit(i32),
}

/// One input to one of the two machines.
enum MachineInput {
    Child(ChildInput),
    Login(LoginInput),
}

/// How the simulated status pipe answered a write or a wait.
#[derive(Copy, Clone, Debug)]
enum StatusAnswer {
    Written,
    WriteFailed,
    Writable,
}

/// The machine a process runs.
#[derive(Clone, Debug)]
enum Machine {
    /// Any service but a login one.
    Plain(Child),
    /// A login service: the login machine around its own child machine.
    Login(Box<Login>),
}

/// A process's machine and the driver's record of what it asked for.
#[derive(Clone, Debug)]
pub struct ProcMachine {
    /// The real machine.
    machine: Machine,
    /// The machine asked to accept (`SetAccepting`, or the login mode `Accept`).
    accepting: bool,
    /// How a login machine watches the listeners (`SetListening`).
    listen: ListenMode,
    /// The machine closed its listening fds.
    listeners_closed: bool,
    /// The master's side of the generation is gone (reference §4.4): its status pipe is no
    /// longer read.
    master_dead: bool,
    /// The listeners were reported readable since the last `SetListening` (level-triggered
    /// readiness is reported once per registration: every report changes the mode).
    readable_reported: bool,
}

impl ProcMachine {
    /// The machine of a process that was just forked.
    pub fn new(spec: ProcSpec, now: Instant) -> ProcMachine {
        // Like imap's and the login processes' callbacks: clients are told and the process is
        // stopped 30 s later at the latest (reference §4.4).
        let machine = if spec.login {
            let mut config = LoginConfig::new(spec.client_limit, spec.service_count);
            config.die_with_master = spec.die_with_master;
            config.has_die_callback = true;
            config.overflow = spec.overflow;
            Machine::Login(Box::new(Login::new(config, now)))
        } else {
            Machine::Plain(Child::new(
                ChildConfig {
                    client_limit: spec.client_limit,
                    service_count: spec.service_count,
                    never_idle_die: false,
                    die_with_master: spec.die_with_master,
                    has_die_callback: true,
                    is_login: false,
                    starts_with_client: false,
                },
                now,
            ))
        };
        ProcMachine {
            machine,
            accepting: false,
            listen: ListenMode::Off,
            listeners_closed: false,
            master_dead: false,
            readable_reported: false,
        }
    }

    /// The child machine (inside the login machine for a login process).
    pub fn child(&self) -> &Child {
        match &self.machine {
            Machine::Plain(child) => child,
            Machine::Login(login) => login.child(),
        }
    }

    /// When the driver must step the process with [`Event::Timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.machine {
            Machine::Plain(child) => child.poll_timeout(),
            Machine::Login(login) => login.poll_timeout(),
        }
    }

    /// Free slots.
    pub fn available(&self) -> u32 {
        self.child().available_count()
    }

    /// The master's side is gone.
    pub fn master_dead(&self) -> bool {
        self.master_dead
    }

    /// The process may take a waiting connection now: it asked to accept, its listeners are
    /// open and it has a free slot. (The driver adds what it alone knows: that the process has
    /// started.)
    pub fn can_accept(&self) -> bool {
        self.accepting && !self.listeners_closed && self.available() > 0
    }

    /// A waiting connection would be reported as a readable listener: a login process watches
    /// in overflow mode and has not been told since it registered.
    pub fn wants_readable(&self) -> bool {
        self.listen == ListenMode::Overflow
            && !self.readable_reported
            && !self.master_dead
            && !self.listeners_closed
    }

    /// [`ProcMachine::wants_readable`], and marks it told.
    pub fn take_readable(&mut self) -> bool {
        let readable = self.wants_readable();
        if readable {
            self.readable_reported = true;
        }
        readable
    }

    /// Feeds one event, answers what needs no driver, and returns what the driver must do.
    /// `Err` names a broken invariant of the machine.
    pub fn step(
        &mut self,
        event: Event,
        now: Instant,
        world: Surroundings,
    ) -> Result<Vec<Action>, String> {
        if let Event::MasterDead = event {
            self.master_dead = true;
        }
        let first = match &self.machine {
            Machine::Plain(_) => match event {
                Event::InitDone => Some(ChildInput::InitDone),
                // Nothing else in a plain process reads the login state (log processes reopen
                // their files, which is not modelled).
                Event::Signal(Signal::Usr1) => None,
                Event::Signal(signal) => Some(ChildInput::Signal(signal)),
                Event::Timeout => Some(ChildInput::Timeout),
                Event::MasterDead => Some(ChildInput::MasterDead),
                Event::Accepted(_) => Some(ChildInput::Accepted),
                Event::ClientClosed(_) => Some(ChildInput::ClientClosed),
                Event::ClientState(..) | Event::Readable(_) => None,
            }
            .map(MachineInput::Child),
            Machine::Login(_) => Some(MachineInput::Login(match event {
                Event::InitDone => LoginInput::InitDone,
                Event::Signal(signal) => LoginInput::Signal(signal),
                Event::Timeout => LoginInput::Timeout,
                Event::MasterDead => LoginInput::MasterDead,
                Event::Accepted(conn) => LoginInput::Accepted {
                    client: ClientId(conn),
                },
                Event::ClientState(conn, state) => LoginInput::ClientState {
                    client: ClientId(conn),
                    state,
                },
                Event::ClientClosed(conn) => LoginInput::ClientClosed {
                    client: ClientId(conn),
                },
                Event::Readable(jitter) => LoginInput::ListenerReadable { jitter },
            })),
        };
        let mut inputs: VecDeque<MachineInput> = first.into_iter().collect();
        let mut actions = Vec::new();
        while let Some(input) = inputs.pop_front() {
            let mut outputs = Vec::new();
            let checked = match (&mut self.machine, input) {
                (Machine::Plain(child), MachineInput::Child(input)) => {
                    child.handle(input, now);
                    while let Some(output) = child.poll_output() {
                        outputs.push(plain_output(output));
                    }
                    child.check_invariants()
                }
                (Machine::Login(login), MachineInput::Login(input)) => {
                    login.handle(input, now);
                    while let Some(output) = login.poll_output() {
                        outputs.push(output);
                    }
                    login.check_invariants()
                }
                _ => unreachable!("inputs are made for the machine the process runs"),
            };
            checked.map_err(|violation| violation.to_string())?;
            for output in outputs {
                match output {
                    LoginOutput::WriteStatus { available_count } => {
                        if self.master_dead || world.master_gone {
                            inputs.push_back(self.answer(StatusAnswer::WriteFailed));
                        } else {
                            actions.push(Action::Status { available_count });
                            inputs.push_back(self.answer(StatusAnswer::Written));
                        }
                    }
                    // The simulated pipe never fills up.
                    LoginOutput::AwaitStatusWritable => {
                        inputs.push_back(self.answer(StatusAnswer::Writable))
                    }
                    LoginOutput::SetListening { mode } => {
                        self.listen = mode;
                        self.accepting = mode == ListenMode::Accept;
                        self.readable_reported = false;
                    }
                    LoginOutput::CloseListeners => self.listeners_closed = true,
                    // The notify fd's offset is the master's state at this instant.
                    LoginOutput::ReadFullState => {
                        inputs.push_back(MachineInput::Login(LoginInput::FullState {
                            full: world.login_full,
                        }))
                    }
                    LoginOutput::Disconnect { client, reason } => {
                        let ClientId(conn) = client;
                        actions.push(Action::Disconnect { conn, reason });
                        // Nothing outstanding in the simulated process: closed at once.
                        inputs.push_back(MachineInput::Login(LoginInput::ClientClosed { client }));
                    }
                    // A lookup out for the auth timeout: the simulated driver gives up on it as
                    // the real one does (the client hears "try again" and is pre-login again).
                    LoginOutput::AuthTimedOut { client } => {
                        inputs.push_back(MachineInput::Login(LoginInput::ClientState {
                            client,
                            state: ClientState::PreLogin,
                        }))
                    }
                    LoginOutput::Refuse => {
                        actions.push(Action::Refused);
                        return Ok(actions);
                    }
                    // The callback's effect (telling clients) is not the master's business.
                    LoginOutput::DieCallback => {}
                    LoginOutput::Exit(code) => {
                        actions.push(Action::Exit(code));
                        return Ok(actions);
                    }
                }
            }
        }
        Ok(actions)
    }

    /// A status answer in the words of the machine this process runs.
    fn answer(&self, answer: StatusAnswer) -> MachineInput {
        match (&self.machine, answer) {
            (Machine::Login(_), StatusAnswer::Written) => {
                MachineInput::Login(LoginInput::StatusWritten)
            }
            (Machine::Login(_), StatusAnswer::WriteFailed) => {
                MachineInput::Login(LoginInput::StatusWriteFailed)
            }
            (Machine::Login(_), StatusAnswer::Writable) => {
                MachineInput::Login(LoginInput::StatusWritable)
            }
            (Machine::Plain(_), StatusAnswer::Written) => {
                MachineInput::Child(ChildInput::StatusWritten)
            }
            (Machine::Plain(_), StatusAnswer::WriteFailed) => {
                MachineInput::Child(ChildInput::StatusWriteFailed)
            }
            (Machine::Plain(_), StatusAnswer::Writable) => {
                MachineInput::Child(ChildInput::StatusWritable)
            }
        }
    }
}

/// A child machine's output in the login machine's words (the login machine passes its
/// child's outputs on the same way), so one match carries out both.
fn plain_output(output: ChildOutput) -> LoginOutput {
    match output {
        ChildOutput::WriteStatus { available_count } => {
            LoginOutput::WriteStatus { available_count }
        }
        ChildOutput::AwaitStatusWritable => LoginOutput::AwaitStatusWritable,
        ChildOutput::SetAccepting { on } => LoginOutput::SetListening {
            mode: if on {
                ListenMode::Accept
            } else {
                ListenMode::Off
            },
        },
        ChildOutput::CloseListeners => LoginOutput::CloseListeners,
        ChildOutput::Refuse => LoginOutput::Refuse,
        ChildOutput::DieCallback => LoginOutput::DieCallback,
        ChildOutput::Exit(code) => LoginOutput::Exit(code),
    }
}
