//! The master process: one single-threaded mio loop that turns what the operating system reports
//! into core inputs and carries out the core's outputs. It decides nothing: every limit, count
//! and timer is the core's.
//!
//! Sources: signals (HUP, TERM, INT, USR1, CHLD through signal-hook-mio's self-pipe), the
//! listeners while the core watches them (mio is edge-triggered: each `SetListening { on }`
//! re-registers the fd, so connections already waiting are reported again), every service's
//! status pipe, the log pipes no log process reads, the control socket, and the core's next
//! timeout.
//!
//! Logging: the master writes its own lines itself. Every other child's stderr is its
//! service's log pipe, read by the log process of its generation (the `log` built-in), which
//! gets the read ends of all of them when it starts. The master keeps the read ends too and
//! reads a generation's pipes itself while it has no log process (before the first, between a
//! crash and its replacement, after the last), so no line waits on a dead reader. anvil
//! outlives its generation (a reload moves it to the next): its pipes, and its generation's
//! other pipes of the master's, stay until it exits, and every later log process reads them
//! too, as pipes whose end it does not wait for. The log service's own fd 2 is the master's
//! stderr.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant as StdInstant;

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use roost_core::config::{self, Config};
use roost_core::ids::{Generation, ListenerId, Pid, ProcessUid, ServiceId};
use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::notice::Level;
use roost_core::output::{Lifecycle, Output, SpawnRequest};
use roost_core::settings::{ServiceSettings, Settings};
use roost_core::setup::{ListenerKind, MasterConfig, ServiceType};
use roost_core::signal::{ExitStatus, SentBy, Signal, SignalSender};
use roost_core::time::Instant;
use roost_core::wire::control::{
    self as wire_control, ProcessRow, Reply, Request, RequestDecoder, Row, ServiceRow,
};
use roost_core::wire::{decode_status_chunk, STATUS_READ_CHUNK};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::low_level::siginfo::Origin;

use crate::listen;
use crate::logging::{LogPipe, LogWriter, PipeState};
use crate::spawn::{self, ChildFds, Identity, PlanInput, SpawnPlan};
use crate::spawner::{SpawnError, SpawnOrder, Spawner, ANSWER_TIMEOUT};
use crate::system::{self, RealEnv, RealFiles};

/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file.
    File(String),
    /// The embedded default, with the base_dir chosen for this user.
    Embedded {
        /// Its text.
        text: String,
    },
    /// Another source with `instance_name` set from the command line (`-i NAME`), at every
    /// load, so a reload keeps it.
    Instance {
        /// Where the configuration comes from.
        inner: Box<Source>,
        /// The instance name.
        name: String,
    },
}

impl Source {
    /// How the first log line names it.
    pub fn describe(&self) -> String {
        match self {
            Source::File(path) => path.clone(),
            Source::Embedded { .. } => "the embedded default configuration".to_owned(),
            Source::Instance { inner, .. } => inner.describe(),
        }
    }

    /// The embedded default (perhaps under `-i`): it needs its demo data.
    pub fn is_embedded(&self) -> bool {
        match self {
            Source::File(_) => false,
            Source::Embedded { .. } => true,
            Source::Instance { inner, .. } => inner.is_embedded(),
        }
    }

    /// Reads and parses it.
    pub fn load(&self) -> Result<Config, config::ConfigError> {
        match self {
            Source::File(path) => config::load(path, &RealFiles, &RealEnv),
            Source::Embedded { text } => config::load_str("<embedded>", text, &RealFiles, &RealEnv),
            Source::Instance { inner, name } => {
                let mut config = inner.load()?;
                config.settings.global.instance_name = name.clone();
                Ok(config)
            }
        }
    }
}

/// Where a service's executable is found.
pub fn libexec_dir(settings: &Settings) -> PathBuf {
    if settings.global.libexec_dir.is_empty() {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/usr/libexec/roost"))
    } else {
        PathBuf::from(&settings.global.libexec_dir)
    }
}

/// The master's configuration from checked settings: the services the daemon can run (those
/// whose executable is found).
pub fn derive(settings: &Settings) -> (MasterConfig, Vec<config::LeftOut>) {
    let libexec = libexec_dir(settings);
    config::master_config(settings, &|service: &ServiceSettings| {
        spawn::resolve_program(&service.executable, &libexec).is_some()
    })
}

/// Every check of a configuration before it runs: core's (reference §3) and the mail host's
/// (databases, mailbox location, certificates of the services that will run). The errors are
/// one line each.
pub fn check(config: &Config) -> Result<Vec<config::Warning>, Vec<String>> {
    let warnings = config::check(config, &system::RealSystem)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let (master, left_out) = derive(&config.settings);
    let running: Vec<String> = master.services.iter().map(|s| s.name.clone()).collect();
    let mut errors = program_errors(config, &running, &left_out);
    errors.extend(crate::builtin::check::builtin_errors(config, &running));
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors)
    }
}

/// The programs the configuration names by an absolute path that cannot be run (reference
/// §3.4's `access(EXECUTABLE) failed`): an executable, or the program of an `inetd` one. A
/// program named by a bare name that is not there (a stock tree's `imap-login`) is only left
/// out; a path is the operator's own, and a typo in it must not make a service vanish.
fn program_errors(
    config: &Config,
    running: &[String],
    left_out: &[config::LeftOut],
) -> Vec<String> {
    let absolute = |executable: &str, word: usize| {
        executable
            .split_whitespace()
            .nth(word)
            .filter(|path| path.starts_with('/'))
            .map(str::to_owned)
    };
    let left = left_out
        .iter()
        .filter_map(|left| Some((left.service.as_str(), absolute(&left.executable, 0)?)));
    // The adapter execs its program inside the service's chroot (applied as root only).
    let inetd = config
        .settings
        .services
        .iter()
        .filter(|service| running.contains(&service.name))
        .filter(|service| service.executable.split_whitespace().next() == Some("inetd"))
        .filter_map(|service| {
            let path = absolute(&service.executable, 1)?;
            let path = match chroot_dir(service, &config.settings.global) {
                Some(root) if system::is_root() => root
                    .join(path.trim_start_matches('/'))
                    .display()
                    .to_string(),
                _ => path,
            };
            Some((service.name.as_str(), path))
        });
    left.chain(inetd)
        .filter_map(|(service, path)| {
            let error = nix::unistd::access(path.as_str(), nix::unistd::AccessFlags::X_OK).err()?;
            Some(format!(
                "service({service}): access({path}) failed: {}",
                io::Error::from(error)
            ))
        })
        .collect()
}

/// The directory a service's children are chrooted to (`chroot`, relative to base_dir).
fn chroot_dir(
    service: &ServiceSettings,
    global: &roost_core::settings::GlobalSettings,
) -> Option<PathBuf> {
    match service.chroot.as_str() {
        "" => None,
        dir if dir.starts_with('/') => Some(PathBuf::from(dir)),
        "." => Some(PathBuf::from(&global.base_dir)),
        dir => Some(Path::new(&global.base_dir).join(dir)),
    }
}

/// One opened listener.
struct ListenerIo {
    fds: Vec<OwnedFd>,
    tcp: bool,
    tokens: Vec<Token>,
    watched: bool,
    /// The path to unlink when closed (unix and fifo listeners).
    path: Option<String>,
}

/// The pipes of one service of one generation.
struct ServiceIo {
    generation: Generation,
    name: String,
    status_r: OwnedFd,
    status_w: OwnedFd,
    dead_r: Option<OwnedFd>,
    dead_w: Option<OwnedFd>,
    /// The read end of the children's stderr.
    log: LogPipe,
    /// Its write end, for the children to come. Closed when the generation retires, so that
    /// the pipe's reader sees its end once the last child is gone.
    log_w: Option<OwnedFd>,
    /// Its lines go through a log process (all but the log service's).
    via_log_process: bool,
    /// anvil's: its process may outlive the generation.
    anvil: bool,
    /// The master watches the log pipe (no log process reads it now).
    log_watched: bool,
    notify: Option<File>,
    tokens: [Token; 2],
}

/// What a token stands for.
#[derive(Copy, Clone, Debug)]
enum Source2 {
    Signals,
    Control,
    ControlClient,
    Listener(ListenerId, RawFd),
    Status(ServiceId),
    Log(ServiceId),
    /// The spawner's answers.
    Spawner,
}

/// Reads of one status pipe per turn of the loop. A child that writes faster than the master
/// reads (a flood on its status pipe or its stderr) must not hold the loop in one handler: after
/// this many reads the pipe waits in `Daemon::backlog` for the next turn, and signals, listeners
/// and the control socket get theirs. 64 reads empty a full pipe (64 KiB) of status records.
const STATUS_READS_PER_TURN: usize = 64;

/// Reads of one log pipe per turn: every line is a write to the log, so fewer (16 KiB, some
/// thousands of short lines).
const LOG_READS_PER_TURN: usize = 4;

/// A pipe the master reads.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pipe {
    /// A service's status pipe.
    Status(ServiceId),
    /// A service's log pipe (its children's stderr).
    Log(ServiceId),
}

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);

/// Binds a unix socket that is mode 0600 from its creation: bound under umask 0177. A chmod
/// after the bind alone leaves a window in which, under a umask of 0, any user can connect.
fn bind_private(path: &str) -> io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's file creation mask, restored at once; the master
    // creates no other file meanwhile (it is single-threaded).
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    bound
}

/// The running master.
pub struct Daemon {
    master: Master,
    epoch: StdInstant,
    poll: Poll,
    signals: SignalDelivery<mio::net::UnixStream, WithOrigin>,
    control: Option<UnixListener>,
    control_path: String,
    control_clients: BTreeMap<Token, (UnixStream, RequestDecoder)>,
    tokens: BTreeMap<Token, Source2>,
    next_token: usize,
    listeners: BTreeMap<ListenerId, ListenerIo>,
    services: BTreeMap<ServiceId, ServiceIo>,
    /// Pipes left unread after their reads of one turn: mio is edge-triggered, so without
    /// this list their rest would wait for the child's next write.
    backlog: BTreeSet<Pipe>,
    generations: BTreeMap<Generation, Settings>,
    log: LogWriter,
    devnull: OwnedFd,
    foreground: bool,
    roost_binary: PathBuf,
    source: Source,
    exit: Option<i32>,
    warned_non_root: bool,
    /// The master's own connection to anvil (KILL of dead processes).
    anvil_link: Option<std::os::unix::net::UnixStream>,
    /// What every child of a service of a generation shares, made at its first spawn.
    templates: BTreeMap<(Generation, String), SpawnTemplate>,
    /// The running anvil and the generation whose pipes it was given: that generation's
    /// pipes of anvil stay open until it exits, the generation's end notwithstanding.
    anvil: Option<(Pid, Generation)>,
    /// The log process of each generation that has one: it reads the generation's log pipes.
    log_processes: BTreeMap<Generation, Pid>,
    /// The process that forks the children of built-ins (`crate::spawner`), when it runs.
    spawner: Option<Spawner>,
    /// When a spawner was last started: one that dies is started again at most once a second
    /// (meanwhile children are started by exec).
    spawner_started: Option<StdInstant>,
    /// Every spawner not reaped yet.
    spawner_pids: BTreeSet<Pid>,
    /// The running spawner's socket in the event loop.
    spawner_token: Option<Token>,
    /// The spawns ordered from the running spawner whose pid has not come yet, oldest first:
    /// the master goes on serving meanwhile (`Daemon::on_spawner_answers`).
    ordered: VecDeque<Ordered>,
    /// Children a spawner may have cloned after the master gave up on its answer.
    strays: Strays,
    /// Where to report that the master has started (the parent left waiting in the
    /// foreground, `system::daemonize`).
    started: Option<OwnedFd>,
    /// While a reload runs: the listeners of the new generation that could not be opened,
    /// for `roost reload` to say (the generation runs without them, reference §3.5).
    reload_failures: Option<Vec<String>>,
}

/// How many unanswered orders and reaped unknown pids [`Strays`] remembers.
const STRAYS_KEPT: usize = 64;

/// Children a spawner may have cloned although the master gave up on its answer: the spawner
/// was stopped for not answering in time, and the child was started again by exec. Such a
/// child is the master's (`CLONE_PARENT`) but unknown to the core, which ignores the records
/// of pids it does not know: left alone, it would serve outside every limit. Its first status
/// record gives it away (the process uid of an unanswered order, from a pid the core does not
/// know), and it is killed.
#[derive(Debug, Default)]
struct Strays {
    /// The process uids of the orders left unanswered, newest last.
    unanswered: VecDeque<ProcessUid>,
    /// Pids killed as strays, not reaped yet: their exit is no one's news.
    killed: BTreeSet<Pid>,
    /// Pids unknown to the core that were reaped while an order was unanswered: a record of
    /// theirs read later is not a stray's (the pid may be another process's by then).
    reaped: VecDeque<Pid>,
}

impl Strays {
    fn unanswered(&mut self, process_uid: ProcessUid) {
        if self.unanswered.len() == STRAYS_KEPT {
            self.unanswered.pop_front();
        }
        self.unanswered.push_back(process_uid);
    }

    /// Whether a status record from `pid`, which the core does not know, with `process_uid`
    /// is a stray's.
    fn is_stray(&self, pid: Pid, process_uid: ProcessUid) -> bool {
        self.unanswered.contains(&process_uid) && !self.reaped.contains(&pid)
    }

    fn killed(&mut self, pid: Pid, process_uid: ProcessUid) {
        self.unanswered.retain(|&uid| uid != process_uid);
        self.killed.insert(pid);
    }

    /// A pid the core does not know was reaped; whether it was a stray killed here.
    fn reaped(&mut self, pid: Pid) -> bool {
        if self.killed.remove(&pid) {
            return true;
        }
        if !self.unanswered.is_empty() {
            if self.reaped.len() == STRAYS_KEPT {
                self.reaped.pop_front();
            }
            self.reaped.push_back(pid);
        }
        false
    }
}

/// A spawn ordered from the spawner, whose pid is to come.
struct Ordered {
    request: SpawnRequest,
    /// When it was ordered.
    at: StdInstant,
}

/// How a built-in's child was asked of the spawner.
enum Forked {
    /// Created: its pid.
    Now(Pid),
    /// Ordered: its pid comes with the spawner's answer.
    Ordered,
    /// Not: no spawner, or it failed. The exec path starts it.
    No,
}

/// What every child of one service of one generation shares (`Daemon::make_template`).
struct SpawnTemplate {
    /// The service as written.
    service: ServiceSettings,
    /// Its program.
    program: spawn::Program,
    /// The user, groups and chroot its children take.
    identity: Option<Identity>,
    /// The sealed settings memfd.
    settings_fd: OwnedFd,
    /// import_environment, resolved.
    imported: Vec<(String, String)>,
    /// The process title.
    title: String,
    /// anvil's socket, for a protocol service.
    anvil: Option<String>,
    /// shutdown_clients.
    shutdown_clients: bool,
}

impl Daemon {
    /// Once it has started, the master writes a byte to `started` (see `system::daemonize`).
    pub fn report_start_to(&mut self, started: OwnedFd) {
        self.started = Some(started);
    }

    /// A master for checked settings, with its control socket at `<base_dir>/control`.
    pub fn new(
        settings: Settings,
        config: MasterConfig,
        source: Source,
        mut log: LogWriter,
        foreground: bool,
    ) -> io::Result<Daemon> {
        let poll = Poll::new()?;
        // signal-hook's self-pipe, with who sent each signal (for the shutdown line); its read
        // end is watched here (signal-hook-mio registers only the variant without senders).
        let (read, write) = mio::net::UnixStream::pair()?;
        let mut signals = SignalDelivery::with_pipe(
            read,
            std::os::fd::OwnedFd::from(write),
            WithOrigin::default(),
            [
                libc::SIGHUP,
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGUSR1,
                libc::SIGCHLD,
            ],
        )?;
        poll.registry()
            .register(signals.get_read_mut(), SIGNALS, Interest::READABLE)?;
        // SIGPIPE: a client that went away must not kill the master.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let control_path = format!("{}/control", settings.global.base_dir);
        let _ = std::fs::remove_file(&control_path);
        // Bound under a temporary name, renamed once the first listeners are open (run): a
        // control socket that exists means a master that serves.
        let starting = starting_path(&control_path);
        let _ = std::fs::remove_file(&starting);
        let mut control = bind_private(&starting)?;
        std::fs::set_permissions(
            &starting,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        poll.registry()
            .register(&mut control, CONTROL, Interest::READABLE)?;
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")?
            .into();
        let roost_binary = std::env::current_exe()?;
        let epoch = StdInstant::now();
        raise_process_limit(&mut log, &config);
        let master = Master::new(config, Instant::ZERO);
        let mut generations = BTreeMap::new();
        generations.insert(master.current_generation(), settings);
        let mut tokens = BTreeMap::new();
        tokens.insert(SIGNALS, Source2::Signals);
        tokens.insert(CONTROL, Source2::Control);
        Ok(Daemon {
            master,
            epoch,
            poll,
            signals,
            control: Some(control),
            control_path,
            control_clients: BTreeMap::new(),
            tokens,
            next_token: 2,
            listeners: BTreeMap::new(),
            services: BTreeMap::new(),
            backlog: BTreeSet::new(),
            generations,
            log,
            devnull,
            foreground,
            roost_binary,
            source,
            exit: None,
            warned_non_root: false,
            anvil_link: None,
            templates: BTreeMap::new(),
            anvil: None,
            log_processes: BTreeMap::new(),
            spawner: None,
            spawner_started: None,
            spawner_pids: BTreeSet::new(),
            spawner_token: None,
            ordered: VecDeque::new(),
            strays: Strays::default(),
            started: None,
            reload_failures: None,
        })
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    fn token(&mut self, source: Source2) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.tokens.insert(token, source);
        token
    }

    /// Runs until the core says exit; returns the exit status.
    pub fn run(mut self) -> i32 {
        self.apply_outputs();
        if let Err(error) = std::fs::rename(starting_path(&self.control_path), &self.control_path) {
            self.log.master(
                Level::Error,
                &format!(
                    "rename() of the control socket {} failed: {error}",
                    self.control_path
                ),
            );
        }
        let mut starting = true;
        let mut events = Events::with_capacity(256);
        while self.exit.is_none() {
            if starting && self.master.has_started() {
                // From here on what fails is said in the log alone. (A start that fails
                // sets the exit: the parent left waiting sees the master's exit status.)
                starting = false;
                self.log.started();
                if let Some(started) = self.started.take() {
                    system::report_started(started);
                }
                // Serving runs a fraction of the code starting did: let the rest go. (A master
                // that cannot read its own smaps simply keeps it.)
                let _ = system::release_code_pages();
            }
            let timeout = if self.backlog.is_empty() {
                let core = self.master.poll_timeout().map(|at| {
                    std::time::Duration::from_millis(
                        at.as_millis().saturating_sub(self.now().as_millis()),
                    )
                });
                let answer = self
                    .ordered
                    .front()
                    .map(|oldest| ANSWER_TIMEOUT.saturating_sub(oldest.at.elapsed()));
                match (core, answer) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() != io::ErrorKind::Interrupted {
                    self.log
                        .master(Level::Error, &format!("epoll_wait() failed: {error}"));
                }
                continue;
            }
            for event in events.iter() {
                let Some(&source) = self.tokens.get(&event.token()) else {
                    continue;
                };
                match source {
                    Source2::Signals => self.on_signals(),
                    Source2::Control => self.on_control_accept(),
                    Source2::ControlClient => self.on_control_client(event.token()),
                    Source2::Listener(listener, fd) => {
                        let tcp = self.listeners.get(&listener).is_some_and(|l| l.tcp);
                        let queued = listen::queued(fd, tcp);
                        self.feed(Input::ListenerReadable { listener, queued });
                    }
                    Source2::Status(service) => self.on_status_pipe(service),
                    Source2::Log(service) => self.on_log_pipe(service),
                    Source2::Spawner => self.on_spawner_answers(),
                }
                if self.exit.is_some() {
                    break;
                }
            }
            for pipe in std::mem::take(&mut self.backlog) {
                if self.exit.is_some() {
                    break;
                }
                match pipe {
                    Pipe::Status(service) => self.on_status_pipe(service),
                    Pipe::Log(service) => self.on_log_pipe(service),
                }
            }
            if self
                .ordered
                .front()
                .is_some_and(|oldest| oldest.at.elapsed() >= ANSWER_TIMEOUT)
            {
                self.on_spawner_answers();
                if !self.ordered.is_empty() {
                    let within = ANSWER_TIMEOUT.as_secs();
                    self.give_up_spawner(&format!("no answer within {within} s"));
                }
            }
            if self
                .master
                .poll_timeout()
                .is_some_and(|at| at <= self.now())
            {
                self.feed(Input::Timeout);
            }
        }
        self.cleanup();
        self.exit.unwrap_or(0)
    }

    fn feed(&mut self, input: Input) {
        let now = self.now();
        self.master.handle(input, now);
        self.apply_outputs();
    }

    fn apply_outputs(&mut self) {
        while let Some(output) = self.master.poll_output() {
            self.apply(output);
        }
    }

    fn apply(&mut self, output: Output) {
        match output {
            Output::OpenListener {
                listener, config, ..
            } => match listen::open(&config) {
                Ok(opened) => {
                    let path = match &config.kind {
                        ListenerKind::Unix { path, .. } | ListenerKind::Fifo { path, .. } => {
                            Some(path.clone())
                        }
                        ListenerKind::Inet { .. } => None,
                    };
                    self.listeners.insert(
                        listener,
                        ListenerIo {
                            fds: opened.fds,
                            tcp: opened.tcp,
                            tokens: Vec::new(),
                            watched: false,
                            path,
                        },
                    );
                }
                Err(error) => {
                    if let Some(failures) = &mut self.reload_failures {
                        let name = self.master.listener_service_name(listener).unwrap_or("?");
                        failures.push(format!("service({name}): {}", error.text));
                    }
                    let now = self.now();
                    self.master.handle(
                        Input::ListenFailed {
                            listener,
                            soft: error.soft,
                            error: error.text,
                        },
                        now,
                    );
                }
            },
            Output::TakeOverListener { from, to } => {
                if let Some(mut io) = self.listeners.remove(&from) {
                    self.unwatch(&mut io);
                    self.listeners.insert(to, io);
                }
            }
            Output::CloseListener { listener } => {
                if let Some(mut io) = self.listeners.remove(&listener) {
                    self.unwatch(&mut io);
                    if let Some(path) = &io.path {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            Output::SetListening { listener, on } => self.set_listening(listener, on),
            Output::AcceptAndClose { listener } => {
                if let Some(io) = self.listeners.get(&listener) {
                    for fd in &io.fds {
                        listen::accept_and_close(fd.as_raw_fd());
                    }
                }
            }
            Output::Spawn(request) => self.spawn(request),
            Output::Kill { pid, signal } => {
                let sig = match signal {
                    Signal::Hup => libc::SIGHUP,
                    Signal::Int => libc::SIGINT,
                    Signal::Quit => libc::SIGQUIT,
                    Signal::Term => libc::SIGTERM,
                    Signal::Kill => libc::SIGKILL,
                    Signal::Usr1 => libc::SIGUSR1,
                };
                // SAFETY: kill(2) on a pid the core knows is our live child.
                unsafe { libc::kill(pid.0, sig) };
            }
            Output::SetLoginFull { service, full } => {
                if let Some(file) = self.services.get(&service).and_then(|s| s.notify.as_ref()) {
                    // The state is the shared file offset (reference §2.8).
                    unsafe { libc::lseek(file.as_raw_fd(), i64::from(full), libc::SEEK_SET) };
                }
            }
            Output::RetireGeneration {
                generation,
                keep_anvil,
            } => {
                let running_anvil = self.anvil.map(|(_, g)| g);
                for io in self.services.values_mut() {
                    // anvil outlives a reload (reference §4.3 step 7): the core moves its
                    // process to the new generation, so it must not hear that its master is
                    // gone. The master-dead pipe of the generation that started it stays open
                    // until the master shuts down (the anvil services of later generations
                    // have pipes that no anvil uses).
                    let keep = keep_anvil && io.anvil && running_anvil == Some(io.generation);
                    if io.generation == generation || (!keep_anvil && io.anvil) {
                        if !keep {
                            // Closing the read end tells every child of the generation
                            // (reference §4.4).
                            io.dead_r = None;
                            io.dead_w = None;
                        }
                        io.notify = None;
                        // No child of a retired generation is started: its log pipes end with
                        // their last writer.
                        io.log_w = None;
                    }
                }
                if !keep_anvil {
                    // Shutdown: anvil goes too, and so does the master's own link to it.
                    self.anvil_link = None;
                }
                // A reload: the new generation has no log process yet.
                self.rewatch_logs();
            }
            Output::ForgetGeneration { generation } => {
                let gone = self.service_ios_of(generation);
                self.generations.remove(&generation);
                self.log_processes.remove(&generation);
                self.templates.retain(|(g, _), _| *g != generation);
                for id in gone {
                    let outlived = self.services.get(&id).is_some_and(|io| {
                        io.anvil && self.anvil.is_some_and(|(_, g)| g == io.generation)
                    });
                    // The running anvil's pipes stay until it exits (`forget_anvil_io`).
                    if !outlived {
                        self.remove_service_io(id);
                    }
                }
                self.rewatch_logs();
            }
            Output::AnvilKill { pid } => self.anvil_kill(pid),
            Output::Log(notice) => self.log.master(notice.level(), &notice.to_string()),
            Output::Lifecycle(state) => notify_systemd(state),
            Output::Exit(code) => self.exit = Some(code),
        }
    }

    /// The services of a generation whose pipes the master holds.
    fn service_ios_of(&self, generation: Generation) -> Vec<ServiceId> {
        self.services
            .iter()
            .filter(|(_, io)| io.generation == generation)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Closes a service's pipes, after writing what its log pipe still holds.
    fn remove_service_io(&mut self, id: ServiceId) {
        let Some(mut io) = self.services.remove(&id) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&io.status_r.as_raw_fd()));
        self.tokens.remove(&io.tokens[0]);
        watch_log(self.poll.registry(), &mut self.log, &mut io, false);
        self.tokens.remove(&io.tokens[1]);
        io.log.read(LOG_READS_PER_TURN, &mut self.log);
        io.log.flush(&mut self.log);
    }

    /// anvil exited: the pipes its generation kept for it go if that generation is gone.
    fn forget_anvil_io(&mut self) {
        let Some((_, generation)) = self.anvil.take() else {
            return;
        };
        if !self.generations.contains_key(&generation) {
            for id in self.service_ios_of(generation) {
                self.remove_service_io(id);
            }
        }
    }

    /// Tells anvil to forget what a dead process held (best effort: a full socket or an anvil
    /// that is not running loses the message, and anvil's table is only advisory).
    fn anvil_kill(&mut self, pid: Pid) {
        let line = format!("KILL\t{}\n", pid.0);
        for _ in 0..2 {
            if self.anvil_link.is_none() {
                let Some(settings) = self.generations.values().next_back() else {
                    return;
                };
                self.anvil_link = anvil_path(settings)
                    .and_then(|path| connect_unix_nonblocking(&path))
                    .map(std::os::unix::net::UnixStream::from);
            }
            let Some(link) = &mut self.anvil_link else {
                return;
            };
            match link.write(line.as_bytes()) {
                Ok(n) if n == line.len() => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                _ => self.anvil_link = None, // anvil restarted: connect again once
            }
        }
    }

    fn unwatch(&mut self, io: &mut ListenerIo) {
        for (fd, token) in io.fds.iter().zip(io.tokens.drain(..)) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.tokens.remove(&token);
        }
        io.watched = false;
    }

    fn set_listening(&mut self, listener: ListenerId, on: bool) {
        let Some(mut io) = self.listeners.remove(&listener) else {
            return;
        };
        // Re-registering is deliberate: mio is edge-triggered, and connections that waited while
        // the master was not watching must be reported again now (epoll reports a ready fd at
        // registration).
        self.unwatch(&mut io);
        if on {
            let fds: Vec<RawFd> = io.fds.iter().map(|fd| fd.as_raw_fd()).collect();
            for fd in fds {
                let token = self.token(Source2::Listener(listener, fd));
                if self
                    .poll
                    .registry()
                    .register(&mut SourceFd(&fd), token, Interest::READABLE)
                    .is_ok()
                {
                    io.tokens.push(token);
                } else {
                    self.tokens.remove(&token);
                }
            }
            io.watched = true;
        }
        self.listeners.insert(listener, io);
    }

    /// The pipes of a service, created when its first process is (or, for the log pipe, when
    /// the log process of its generation is).
    fn service_io(&mut self, service: ServiceId, generation: Generation) -> io::Result<()> {
        if self.services.contains_key(&service) {
            return Ok(());
        }
        let config = self
            .master
            .service_config(service)
            .ok_or_else(|| io::Error::other("the core asked for a service it does not know"))?;
        let (name, service_type) = (config.name.clone(), config.service_type);
        let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
        let (status_r, status_w) = nix::unistd::pipe2(flags)?;
        let (dead_r, dead_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Only the read end is non-blocking: a child whose reader lags waits for it rather
        // than losing lines.
        let (log_r, log_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(
            &log_r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let notify = if service_type == ServiceType::Login {
            // An unlinked file whose offset is the "all processes full" state (reference §2.8).
            let dir = self
                .generations
                .get(&generation)
                .map(|s| s.global.base_dir.clone())
                .unwrap_or_default();
            let path = format!(
                "{dir}/login-master-notify{}-{}",
                service.0,
                std::process::id()
            );
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)?;
            let _ = std::fs::remove_file(&path);
            Some(file)
        } else {
            None
        };
        let status_token = self.token(Source2::Status(service));
        if let Err(error) = self.poll.registry().register(
            &mut SourceFd(&status_r.as_raw_fd()),
            status_token,
            Interest::READABLE,
        ) {
            self.tokens.remove(&status_token);
            return Err(error);
        }
        let log_token = self.token(Source2::Log(service));
        let via_log_process = service_type != ServiceType::Log;
        let mut io = ServiceIo {
            generation,
            name: name.clone(),
            status_r,
            status_w,
            dead_r: Some(dead_r),
            dead_w: Some(dead_w),
            log: LogPipe::new(&name, log_r),
            log_w: Some(log_w),
            via_log_process,
            anvil: service_type == ServiceType::Anvil,
            log_watched: false,
            notify,
            tokens: [status_token, log_token],
        };
        let master_reads = self.master_reads_log(&io);
        watch_log(self.poll.registry(), &mut self.log, &mut io, master_reads);
        self.services.insert(service, io);
        Ok(())
    }

    /// A log process of `generation` runs: it reads the generation's pipes from now on.
    fn hand_logs_to(&mut self, generation: Generation, pid: Pid) {
        self.log_processes.insert(generation, pid);
        self.rewatch_logs();
    }

    /// When `pid` was a log process: the master reads its generation's pipes until another
    /// one runs.
    fn take_logs_back(&mut self, pid: Pid) {
        let gone = self
            .log_processes
            .iter()
            .find(|(_, p)| **p == pid)
            .map(|(g, _)| *g);
        if let Some(generation) = gone {
            self.log_processes.remove(&generation);
            self.rewatch_logs();
        }
    }

    /// Whether the master reads a log pipe now: its generation has no log process, or, for
    /// anvil's pipes (which every later log process reads too), the current one has none.
    fn master_reads_log(&self, io: &ServiceIo) -> bool {
        if !io.via_log_process {
            return true;
        }
        let reader = if io.anvil {
            self.master.current_generation()
        } else {
            io.generation
        };
        !self.log_processes.contains_key(&reader)
    }

    /// Watches the log pipes the master reads now, and no other (after a log process came or
    /// went, or a reload changed the current generation).
    fn rewatch_logs(&mut self) {
        let reads: Vec<(ServiceId, bool)> = self
            .services
            .iter()
            .map(|(id, io)| (*id, self.master_reads_log(io)))
            .collect();
        for (id, master_reads) in reads {
            let Some(io) = self.services.get_mut(&id) else {
                continue;
            };
            let newly = master_reads && !io.log_watched;
            watch_log(self.poll.registry(), &mut self.log, io, master_reads);
            if newly {
                // What a log process left is read at once, whatever epoll reports.
                self.backlog.insert(Pipe::Log(id));
            }
        }
    }

    fn spawn(&mut self, request: SpawnRequest) {
        self.spawn_with(request, true);
    }

    /// Starts the child `request` asks for, through the spawner when `use_spawner` and the
    /// child is a built-in's, and tells the core (now, or when the spawner answers).
    fn spawn_with(&mut self, request: SpawnRequest, use_spawner: bool) {
        let result = self.try_spawn(&request, use_spawner);
        let now = self.now();
        match result {
            Ok(Some(pid)) => self.master.handle(
                Input::Spawned {
                    process: request.process,
                    pid,
                },
                now,
            ),
            Ok(None) => self.ordered.push_back(Ordered {
                request,
                at: StdInstant::now(),
            }),
            Err(error) => self.master.handle(
                Input::SpawnFailed {
                    process: request.process,
                    errno: error.raw_os_error().unwrap_or(libc::EIO),
                    error: error.to_string(),
                },
                now,
            ),
        }
    }

    /// What the children of one service of one generation share, made at its first spawn:
    /// settings do not change within a generation, so neither do the program, the identity
    /// (users and groups are resolved once per generation, as the original resolves them when
    /// it reads the configuration) nor the settings memfd.
    fn make_template(&mut self, key: &(Generation, String)) -> io::Result<()> {
        if self.templates.contains_key(key) {
            return Ok(());
        }
        let (generation, name) = (key.0, key.1.as_str());
        let settings = self
            .generations
            .get(&generation)
            .ok_or_else(|| io::Error::other("the core asked for a generation that is gone"))?;
        let service = settings
            .services
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("service {name} has no settings")))?;
        let program = spawn::resolve_program(&service.executable, &libexec_dir(settings))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "no program for executable '{}'",
                    service.executable
                ))
            })?;
        // One sealed memfd serves every child (they pread it).
        let settings_fd = settings_memfd(&service, settings)?;
        let anvil = if service.protocol.is_empty() {
            None
        } else {
            anvil_path(settings)
        };
        let global = settings.global.clone();
        let identity = self.identity(&service, &global)?;
        let template = SpawnTemplate {
            program,
            identity,
            settings_fd,
            imported: imported_environment(&global.import_environment),
            title: spawn::process_title(&global.instance_name, name),
            anvil,
            shutdown_clients: global.shutdown_clients,
            service,
        };
        self.templates.insert(key.clone(), template);
        Ok(())
    }

    /// Starts the child; `None` when the spawner was ordered to and its answer is to come.
    fn try_spawn(&mut self, request: &SpawnRequest, use_spawner: bool) -> io::Result<Option<Pid>> {
        let config = self
            .master
            .service_config(request.service)
            .cloned()
            .ok_or_else(|| io::Error::other("the core asked for a service it does not know"))?;
        self.service_io(request.service, request.generation)?;
        let is_log = config.service_type == ServiceType::Log;
        let mut log_pipes = Vec::new();
        if is_log {
            // The log process reads every pipe of its generation, so they all exist now.
            let generation_services: Vec<ServiceId> = self
                .master
                .services()
                .filter(|s| s.generation == request.generation)
                .map(|s| s.id)
                .collect();
            for id in generation_services {
                self.service_io(id, request.generation)?;
            }
            // Its generation's pipes, and the anvil pipes of earlier ones (anvil outlives
            // them): those may have a writer as long as anvil runs, so the log process does
            // not wait for their end.
            for io in self.services.values() {
                let own = io.generation == request.generation;
                if io.via_log_process && (own || io.anvil) {
                    log_pipes.push(spawn::LogPipeFd {
                        fd: io.log.raw_fd(),
                        service: io.name.clone(),
                        lasting: io.anvil,
                    });
                }
            }
        }
        let key = (request.generation, config.name.clone());
        self.make_template(&key)?;
        let template = &self.templates[&key];
        // Each child gets a file description of its own (its own offset) on the shared memfd,
        // so a program that read()s it cannot move the offset under its siblings. An inetd
        // adapter reads none and gets none: for each of its connections that spares the master
        // a path walk through /proc, and the master and the spawner an fd to pass and close.
        let settings_fd: Option<OwnedFd> = if template.program.is_inetd() {
            None
        } else {
            Some(
                match File::open(format!(
                    "/proc/self/fd/{}",
                    template.settings_fd.as_raw_fd()
                )) {
                    Ok(file) => file.into(),
                    // No /proc here.
                    Err(_) => {
                        settings_memfd(&template.service, &self.generations[&request.generation])?
                    }
                },
            )
        };
        // Login and post-login processes talk to anvil over a socket the master connects for
        // them: a chrooted, unprivileged login process could not reach anvil's listener.
        let anvil_fd = template.anvil.as_deref().and_then(connect_unix_nonblocking);
        let io = &self.services[&request.service];
        let mut listeners = Vec::new();
        for id in self.master.service_listeners(request.service) {
            let (Some(opened), Some(listener_config)) =
                (self.listeners.get(id), self.master.listener_config(*id))
            else {
                continue;
            };
            for fd in &opened.fds {
                listeners.push((fd.as_raw_fd(), listener_config.clone()));
            }
        }
        let stdout = if self.foreground {
            1
        } else {
            self.devnull.as_raw_fd()
        };
        let stderr = match (&io.log_w, is_log) {
            // The log process writes to the master's stderr: its own pipe would come back
            // to it.
            (_, true) => libc::STDERR_FILENO,
            (Some(fd), false) => fd.as_raw_fd(),
            (None, false) => return Err(io::Error::other("the generation is retired")),
        };
        let fds = ChildFds {
            stdin: self.devnull.as_raw_fd(),
            stdout,
            stderr,
            listeners,
            status: io.status_w.as_raw_fd(),
            master_dead: io
                .dead_w
                .as_ref()
                .map_or(self.devnull.as_raw_fd(), |fd| fd.as_raw_fd()),
            login_notify: io.notify.as_ref().map(|f| f.as_raw_fd()),
            anvil: anvil_fd.as_ref().map(|f| f.as_raw_fd()),
            settings: settings_fd.as_ref().map(|fd| fd.as_raw_fd()),
            log_pipes,
        };
        let mut plan = SpawnPlan::new(PlanInput {
            roost_binary: &self.roost_binary,
            program: &template.program,
            title: &template.title,
            settings: &template.service,
            config: &config,
            uid: request.uid,
            imported: template.imported.clone(),
            fds,
            identity: template.identity.clone(),
            shutdown_clients: template.shutdown_clients,
        })
        .map_err(io::Error::other)?;
        // A built-in of a service that is not a login service is forked by the spawner; the
        // others, and every child while no spawner answers, are started by exec. The master
        // needs the pid of a log process or an anvil at once; the others' come when they come.
        let wait = is_log || config.service_type == ServiceType::Anvil;
        let forked = match plan.order() {
            Some((order, fds)) if use_spawner && config.service_type != ServiceType::Login => {
                self.fork_builtin(order, fds, wait)
            }
            _ => Forked::No,
        };
        let spawned = match forked {
            Forked::Now(pid) => Ok((pid, None)),
            Forked::Ordered => return Ok(None),
            Forked::No => plan.spawn(),
        };
        drop(settings_fd);
        drop(anvil_fd);
        let (pid, exec_error) = spawned?;
        if is_log && exec_error.is_none() {
            self.hand_logs_to(request.generation, pid);
        }
        if config.service_type == ServiceType::Anvil {
            self.anvil = Some((pid, request.generation));
        }
        if let Some(error) = exec_error {
            // The child exits 84 and is reaped as a failed start; this says why.
            self.log.master(
                Level::Fatal,
                &format!(
                    "service({}): execv({}) failed: {error}",
                    config.name,
                    plan.path_lossy()
                ),
            );
        }
        Ok(Some(pid))
    }

    /// Has the spawner create a built-in's child: at once when `wait`, else ordered (its pid
    /// comes with the spawner's answer). `Forked::No` when there is no spawner (it is started
    /// here, at most once a second) or it failed (it is then stopped).
    fn fork_builtin(&mut self, order: &SpawnOrder, fds: &[RawFd], wait: bool) -> Forked {
        if self.spawner.is_none()
            && self
                .spawner_started
                .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
        {
            self.start_spawner();
        }
        if wait {
            // Its answer comes after those of the orders before it.
            self.catch_up(None);
        }
        let Some(spawner) = self.spawner.as_mut() else {
            return Forked::No;
        };
        let result = if wait {
            spawner.spawn(order, fds).map(Forked::Now)
        } else {
            spawner.order(order, fds).map(|()| Forked::Ordered)
        };
        match result {
            Ok(forked) => forked,
            // The exec path tries too, and reports what the system says.
            Err(SpawnError::Clone(_)) => Forked::No,
            Err(SpawnError::Spawner(error)) => {
                self.strays.unanswered(ProcessUid(order.process_uid));
                self.give_up_spawner(&error.to_string());
                Forked::No
            }
        }
    }

    fn start_spawner(&mut self) {
        self.spawner_started = Some(StdInstant::now());
        let instance = self
            .generations
            .get(&self.master.current_generation())
            .map_or("", |settings| settings.global.instance_name.as_str());
        let title = spawn::process_title(instance, "spawner");
        match Spawner::start(&self.roost_binary, &title) {
            Ok(spawner) => {
                self.spawner_pids.insert(spawner.pid());
                let token = self.token(Source2::Spawner);
                if let Err(error) = self.poll.registry().register(
                    &mut SourceFd(&spawner.answers_fd()),
                    token,
                    Interest::READABLE,
                ) {
                    self.log.master(
                        Level::Warning,
                        &format!("the spawner's socket cannot be watched ({error}): children are started by exec"),
                    );
                    self.tokens.remove(&token);
                    return;
                }
                self.spawner_token = Some(token);
                self.spawner = Some(spawner);
            }
            Err(error) => self.log.master(
                Level::Warning,
                &format!("the spawner did not start ({error}): children are started by exec"),
            ),
        }
    }

    /// Takes the spawner out of the event loop; it leaves when its socket closes (dropped).
    fn take_spawner(&mut self) -> Option<Spawner> {
        let spawner = self.spawner.take()?;
        if let Some(token) = self.spawner_token.take() {
            self.tokens.remove(&token);
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&spawner.answers_fd()));
        }
        Some(spawner)
    }

    /// Reads the answers that have come, and tells the core each pid.
    fn on_spawner_answers(&mut self) {
        while !self.ordered.is_empty() {
            let Some(answer) = self.spawner.as_mut().and_then(|s| s.answer(false)) else {
                return;
            };
            self.answered(answer);
        }
    }

    /// Waits for the spawner's answers up to the one that names `pid` (all of them with
    /// `None`). A child the core does not know may be one whose answer has not been read:
    /// its first status record, even its exit, can come before it.
    fn catch_up(&mut self, pid: Option<Pid>) {
        while !self.ordered.is_empty() && !pid.is_some_and(|pid| self.master.has_pid(pid)) {
            let answer = match self.spawner.as_mut() {
                Some(spawner) => spawner
                    .answer(true)
                    .unwrap_or_else(|| Err(SpawnError::Spawner(io::Error::other("no answer")))),
                None => Err(SpawnError::Spawner(io::Error::other("it is gone"))),
            };
            self.answered(answer);
        }
    }

    /// The answer to the oldest order.
    fn answered(&mut self, answer: Result<Pid, SpawnError>) {
        let Some(ordered) = self.ordered.pop_front() else {
            return;
        };
        match answer {
            Ok(pid) => self.feed(Input::Spawned {
                process: ordered.request.process,
                pid,
            }),
            // The exec path tries too, and reports what the system says.
            Err(SpawnError::Clone(_)) => self.respawn_by_exec(ordered.request),
            Err(SpawnError::Spawner(error)) => {
                self.ordered.push_front(ordered);
                self.give_up_spawner(&error.to_string());
            }
        }
    }

    /// Stops a spawner that failed (it died, or did not answer in time), and says so.
    fn give_up_spawner(&mut self, why: &str) {
        self.log.master(
            Level::Warning,
            &format!("the spawner failed ({why}): it is stopped, children are started by exec"),
        );
        self.abandon_spawner(false);
    }

    /// Stops the spawner (kills it, unless it is `reaped` already: its pid may be another
    /// process's by now). What it answered before it failed counts: those children are the
    /// core's. The children it was ordered and did not answer for are started by exec, and
    /// any of them it created after all is a stray (`Strays`).
    fn abandon_spawner(&mut self, reaped: bool) {
        let mut ordered = std::mem::take(&mut self.ordered);
        if let Some(mut spawner) = self.take_spawner() {
            while !ordered.is_empty() {
                let Some(Ok(pid)) = spawner.answer(false) else {
                    break;
                };
                if let Some(order) = ordered.pop_front() {
                    self.feed(Input::Spawned {
                        process: order.request.process,
                        pid,
                    });
                }
            }
            if !reaped {
                // SAFETY: kill(2) of our own child, not reaped yet; it is reaped with the
                // others.
                unsafe { libc::kill(spawner.pid().0, libc::SIGKILL) };
            }
        }
        for order in &ordered {
            self.strays.unanswered(order.request.uid);
        }
        for order in ordered {
            self.respawn_by_exec(order.request);
        }
    }

    fn respawn_by_exec(&mut self, request: SpawnRequest) {
        self.spawn_with(request, false);
        self.apply_outputs();
    }

    /// The user, groups and chroot a child takes; nothing when the master is not root.
    fn identity(
        &mut self,
        service: &ServiceSettings,
        global: &roost_core::settings::GlobalSettings,
    ) -> io::Result<Option<Identity>> {
        if !system::is_root() {
            if !self.warned_non_root && !service.user.is_empty() {
                self.warned_non_root = true;
                self.log.master(
                    Level::Info,
                    &format!(
                        "running as {} (not root): services run as this user, their user, group and chroot settings are not applied",
                        system::current_user_name()
                    ),
                );
            }
            return Ok(None);
        }
        if service.user.is_empty()
            && service.group.is_empty()
            && service.chroot.is_empty()
            && service.extra_groups.is_empty()
        {
            return Ok(None);
        }
        let (uid, user_gid) = match service.user.as_str() {
            "" => (None, None),
            user => {
                let (uid, gid) = system::lookup_user(user)
                    .ok_or_else(|| io::Error::other(format!("User doesn't exist: {user}")))?;
                (Some(uid), Some(gid))
            }
        };
        let gid = match service.group.as_str() {
            "" => user_gid,
            group => Some(
                system::lookup_group(group)
                    .ok_or_else(|| io::Error::other(format!("Group doesn't exist: {group}")))?,
            ),
        };
        let mut groups = Vec::new();
        // As the original: a list separated by spaces or commas.
        for group in service
            .extra_groups
            .split([' ', ','])
            .filter(|g| !g.is_empty())
        {
            groups.push(
                system::lookup_group(group)
                    .ok_or_else(|| io::Error::other(format!("Group doesn't exist: {group}")))?,
            );
        }
        let chroot = chroot_dir(service, global);
        if let Some(dir) = &chroot {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Some(Identity {
            uid,
            gid: gid.or(uid.map(|_| 65534)),
            groups,
            chroot,
        }))
    }

    fn on_signals(&mut self) {
        let pending: Vec<Origin> = self.signals.pending().collect();
        for origin in pending {
            match origin.signal {
                libc::SIGCHLD => self.reap(),
                libc::SIGHUP => {
                    self.feed(Input::Signal(Signal::Hup));
                    if let Err(error) = self.reload() {
                        self.log
                            .master(Level::Error, &format!("Config reload failed: {error}"));
                    }
                }
                libc::SIGUSR1 => {
                    self.log.reopen();
                    self.feed(Input::Signal(Signal::Usr1));
                }
                libc::SIGINT => self.feed(shutdown_input(Signal::Int, &origin)),
                _ => self.feed(shutdown_input(Signal::Term, &origin)),
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid on any child, without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let exit = if libc::WIFSIGNALED(status) {
                ExitStatus::Signaled {
                    signal: libc::WTERMSIG(status),
                    core_dumped: libc::WCOREDUMP(status),
                }
            } else {
                ExitStatus::Exited(libc::WEXITSTATUS(status))
            };
            if self.spawner_pids.remove(&Pid(pid)) {
                // Not a service's child: the core never knew it.
                if self.spawner.as_ref().is_some_and(|s| s.pid() == Pid(pid)) {
                    self.log.master(
                        Level::Warning,
                        &format!("the spawner (pid {pid}) exited: it is started again"),
                    );
                    self.abandon_spawner(true);
                }
                continue;
            }
            if !self.ordered.is_empty() && !self.master.has_pid(Pid(pid)) {
                self.catch_up(Some(Pid(pid)));
            }
            if !self.master.has_pid(Pid(pid)) && self.strays.reaped(Pid(pid)) {
                continue;
            }
            // A log process's pipes are the master's again, with what it left in them.
            self.take_logs_back(Pid(pid));
            // Read what it said last before the core forgets the pid.
            self.drain_pipes();
            if self.anvil.is_some_and(|(anvil, _)| anvil == Pid(pid)) {
                self.forget_anvil_io();
            }
            self.feed(Input::Exited {
                pid: Pid(pid),
                status: exit,
            });
        }
    }

    fn drain_pipes(&mut self) {
        let ids: Vec<ServiceId> = self.services.keys().copied().collect();
        for id in ids {
            self.on_status_pipe(id);
            self.on_log_pipe(id);
        }
    }

    /// Reads the configuration again and hands it to the core; an error keeps the running
    /// generation and is returned (for `roost reload`). The new generation runs without the
    /// listeners that could not be opened, returned.
    fn reload(&mut self) -> Result<Vec<String>, String> {
        let config = self.source.load().map_err(|e| e.to_string())?;
        let warnings = check(&config).map_err(|errors| errors.join("; "))?;
        let running = &self.generations[&self.master.current_generation()].global;
        let new = &config.settings.global;
        if new.base_dir != running.base_dir {
            // The pid file, the control socket and the lock live there: a master that moved
            // would leave them behind, and `roost stop -c` could no longer reach it.
            return Err(format!(
                "base_dir can't be changed by a reload ({} -> {}): restart roost",
                running.base_dir, new.base_dir
            ));
        }
        // The master's own lines follow the log settings, as its children's do.
        let mut log = None;
        if LogWriter::settings_of(new) != LogWriter::settings_of(running) {
            let mut next = LogWriter::for_settings(new);
            if let Some(error) = next.unwritable() {
                return Err(error);
            }
            log = Some(next);
        }
        for warning in warnings {
            self.log.master(Level::Warning, &warning.to_string());
        }
        if let Some(log) = log {
            self.log.replace(log);
        }
        let (master_config, _) = derive(&config.settings);
        let before = system::process_limit();
        raise_process_limit(&mut self.log, &master_config);
        if system::process_limit() != before {
            // The spawner's clones count against the limit it was started with: it leaves
            // when its socket closes, and the next spawn starts one under the new limit at
            // once (the once-a-second pace is for spawners that die). Its answers first.
            self.catch_up(None);
            self.take_spawner();
            self.spawner_started = None;
        }
        self.reload_failures = Some(Vec::new());
        self.feed(Input::Reload(Box::new(master_config)));
        let failures = self.reload_failures.take().unwrap_or_default();
        self.generations
            .insert(self.master.current_generation(), config.settings);
        drop(config.raw);
        system::release_free_memory();
        let _ = system::release_code_pages();
        Ok(failures)
    }

    fn on_status_pipe(&mut self, service: ServiceId) {
        let mut buffer = [0u8; STATUS_READ_CHUNK];
        for _ in 0..STATUS_READS_PER_TURN {
            let Some(io) = self.services.get(&service) else {
                return;
            };
            let n = match nix::unistd::read(&io.status_r, &mut buffer) {
                Ok(0) => return,
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            match decode_status_chunk(&buffer[..n]) {
                Ok(records) => {
                    for record in records {
                        if !self.ordered.is_empty() && !self.master.has_pid(record.pid) {
                            self.catch_up(Some(record.pid));
                        }
                        if !self.strays.unanswered.is_empty()
                            && !self.master.has_pid(record.pid)
                            && self.strays.is_stray(record.pid, record.uid)
                        {
                            self.kill_stray(service, record.pid, record.uid);
                            continue;
                        }
                        self.feed(Input::Status {
                            pid: record.pid,
                            uid: record.uid,
                            available_count: record.available_count,
                        });
                    }
                }
                Err(partial) => self.feed(Input::StatusPartial {
                    service,
                    bytes: partial.bytes as u32,
                }),
            }
        }
        self.backlog.insert(Pipe::Status(service));
    }

    fn kill_stray(&mut self, service: ServiceId, pid: Pid, process_uid: ProcessUid) {
        // SAFETY: kill(2) of a child of this master that is not reaped yet (a reaped pid the
        // core did not know is never taken for a stray), so the pid is still its.
        unsafe { libc::kill(pid.0, libc::SIGKILL) };
        self.strays.killed(pid, process_uid);
        let name = self
            .master
            .service_config(service)
            .map_or("?", |config| config.name.as_str());
        self.log.master(
            Level::Warning,
            &format!(
                "service({name}): pid {pid} killed: the spawner created it after the master \
                 had given up on its answer, and the child was started again by exec"
            ),
        );
    }

    /// Reads a log pipe the master watches (a log process reads the others).
    fn on_log_pipe(&mut self, service: ServiceId) {
        let Some(io) = self.services.get_mut(&service) else {
            return;
        };
        if !io.log_watched {
            return;
        }
        if io.log.read(LOG_READS_PER_TURN, &mut self.log) == PipeState::More {
            self.backlog.insert(Pipe::Log(service));
        }
    }

    fn on_control_accept(&mut self) {
        loop {
            let Some(control) = self.control.as_ref() else {
                return;
            };
            match control.accept() {
                Ok((mut stream, _)) => {
                    let token = self.token(Source2::ControlClient);
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                        .is_ok()
                    {
                        self.control_clients
                            .insert(token, (stream, RequestDecoder::new()));
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn on_control_client(&mut self, token: Token) {
        let Some((mut stream, mut decoder)) = self.control_clients.remove(&token) else {
            return;
        };
        let mut chunk = [0u8; 1024];
        let mut closed = false;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => decoder.feed(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        // One request per connection: the first complete one is answered, then it closes.
        let reply = match decoder.next_request() {
            None if !closed => {
                self.control_clients.insert(token, (stream, decoder));
                return;
            }
            None => None,
            Some(Err(error)) => Some(Reply::Error(error.to_string())),
            Some(Ok(request)) => Some(self.on_request(request, peer_of(&stream))),
        };
        let _ = self.poll.registry().deregister(&mut stream);
        self.tokens.remove(&token);
        if let Some(reply) = reply {
            let mut bytes = wire_control::HANDSHAKE.to_vec();
            reply.encode(&mut bytes);
            // A status table can outgrow the socket buffer: write it blocking, bounded in time
            // so a client that does not read cannot stall the master for long.
            // SAFETY: the fd is taken out of the mio stream, which is consumed.
            let stream = unsafe {
                std::os::unix::net::UnixStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                    stream,
                ))
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
            let _ = (&stream).write_all(&bytes);
        }
    }

    /// Unix seconds of a core instant (0 = never), for `roost status`.
    fn wall_secs(&self, at: Option<Instant>) -> u64 {
        let Some(at) = at else { return 0 };
        let ago = (self.now() - at).as_secs();
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(ago)
    }

    /// Answers a control request; PEER is the client, for the shutdown line of a `stop`.
    fn on_request(&mut self, request: Request, peer: Option<SignalSender>) -> Reply {
        match request {
            Request::Stop => {
                let reply = Reply::Ok(format!("stopping (pid {})", std::process::id()));
                self.feed(match peer {
                    Some(sender) => Input::SignalFrom {
                        signal: Signal::Term,
                        sender,
                    },
                    None => Input::Signal(Signal::Term),
                });
                reply
            }
            Request::Reload => {
                self.feed(Input::Signal(Signal::Hup));
                match self.reload() {
                    Ok(failures) if failures.is_empty() => {
                        Reply::Ok("configuration reloaded".to_owned())
                    }
                    Ok(failures) => Reply::Error(format!(
                        "the new configuration runs without listeners that failed: {}",
                        failures.join("; ")
                    )),
                    Err(error) => {
                        self.log
                            .master(Level::Error, &format!("Config reload failed: {error}"));
                        Reply::Error(error)
                    }
                }
            }
            Request::LogReopen => {
                self.log.reopen();
                self.feed(Input::Signal(Signal::Usr1));
                Reply::Ok("log files reopened".to_owned())
            }
            Request::Status => Reply::Table(
                self.master
                    .services()
                    .map(|s| {
                        Row::Service(ServiceRow {
                            name: s.name,
                            process_count: s.process_count,
                            process_avail: s.process_avail,
                            process_limit: s.process_limit,
                            client_limit: s.client_limit,
                            throttle_secs: s.throttle_secs,
                            exit_failure_last: 0,
                            exit_failures_in_sec: 0,
                            last_drop_warning: 0,
                            listen_pending: s.listen_pending,
                            listening: s.listening,
                            stopped: false,
                            total_created: s.total_created,
                            generation: s.generation.0,
                        })
                    })
                    .collect(),
            ),
            Request::ProcessStatus { services } => {
                let processes: Vec<_> = self
                    .master
                    .processes()
                    .filter(|p| services.is_empty() || services.contains(&p.service))
                    .collect();
                Reply::Table(
                    processes
                        .into_iter()
                        .filter_map(|p| {
                            Some(Row::Process(ProcessRow {
                                pid: p.pid?,
                                available_count: p.available_count,
                                total_count: p.total_count,
                                idle_start: self.wall_secs(p.idle_start),
                                last_status_update: self.wall_secs(p.last_status_update),
                                last_kill_sent: self.wall_secs(p.last_kill_sent),
                                service: p.service,
                            }))
                        })
                        .collect(),
                )
            }
        }
    }

    fn cleanup(&mut self) {
        // The spawner leaves when its socket closes; it is reaped here, not left to init.
        if let Some(spawner) = self.take_spawner() {
            let pid = spawner.pid().0;
            drop(spawner);
            for _ in 0..100 {
                // SAFETY: waitpid on our own child, without blocking.
                if unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } != 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // The last lines of every pipe no log process reads any more.
        for io in self.services.values_mut().filter(|io| io.log_watched) {
            io.log.read(LOG_READS_PER_TURN, &mut self.log);
            io.log.flush(&mut self.log);
        }
        for io in self.listeners.values() {
            if let Some(path) = &io.path {
                let _ = std::fs::remove_file(path);
            }
        }
        self.control = None;
        let _ = std::fs::remove_file(&self.control_path);
        let _ = std::fs::remove_file(starting_path(&self.control_path));
    }
}

/// Where the control socket is bound until the master serves.
fn starting_path(control_path: &str) -> String {
    format!("{control_path}.starting")
}

/// The path of anvil's `anvil` listener, when an anvil service is configured.
fn anvil_path(settings: &Settings) -> Option<String> {
    service_socket(settings, "anvil", "anvil")
}

/// The path of the unix listener named `name` (the last part of its path) of the service of
/// type `service_type`, when there is one.
pub fn service_socket(settings: &Settings, service_type: &str, name: &str) -> Option<String> {
    let service = settings
        .services
        .iter()
        .find(|s| s.service_type == service_type)?;
    let listener = service
        .unix_listeners
        .iter()
        .find(|l| l.path.rsplit('/').next() == Some(name))?;
    Some(if listener.path.starts_with('/') {
        listener.path.clone()
    } else {
        format!("{}/{}", settings.global.base_dir, listener.path)
    })
}

/// Raises RLIMIT_NPROC for the services of `config` (reference §3.3), warning when the hard limit
/// of an unprivileged master stands in the way.
fn raise_process_limit(log: &mut LogWriter, config: &MasterConfig) {
    if let Err((hard, wanted)) = system::raise_process_limit(config.process_limit_total()) {
        log.master(
            Level::Warning,
            &format!(
                "process limit (ulimit -u) is lower than the services' process_limit total ({hard} < {wanted}): forks beyond it fail and are throttled"
            ),
        );
    }
}

/// Starts or stops the master's reading of a service's log pipe. Registering reports data
/// already waiting (epoll), so nothing a log process left is missed.
fn watch_log(registry: &mio::Registry, log: &mut LogWriter, io: &mut ServiceIo, on: bool) {
    if io.log_watched == on {
        return;
    }
    let fd = io.log.raw_fd();
    if on {
        io.log_watched = registry
            .register(&mut SourceFd(&fd), io.tokens[1], Interest::READABLE)
            .is_ok();
    } else {
        let _ = registry.deregister(&mut SourceFd(&fd));
        io.log_watched = false;
        // What the master read of a line is written now, before the log process's lines.
        io.log.flush(log);
    }
}

/// Connects to a unix stream listener without waiting: a listener whose backlog is full (its
/// process stuck) gives nothing rather than a blocked master.
fn connect_unix_nonblocking(path: &str) -> Option<OwnedFd> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).ok()?;
    socket.set_nonblocking(true).ok()?;
    socket.set_cloexec(true).ok()?;
    let address = socket2::SockAddr::unix(path).ok()?;
    socket.connect(&address).ok()?;
    Some(socket.into())
}

/// A sealed memfd holding the RON of the globals and the one service the child runs
/// (DESIGN.md "Settings to children"); the ssl key only to services with ssl listeners, the
/// passdbs and userdbs only to auth.
fn settings_memfd(service: &ServiceSettings, settings: &Settings) -> io::Result<OwnedFd> {
    let mut global = settings.global.clone();
    // A login service may start TLS with STLS on any listener.
    if !service.inet_listeners.iter().any(|l| l.ssl) && service.service_type != "login" {
        global.ssl_key.clear();
    }
    let auth = service.executable.split_whitespace().next() == Some("auth");
    let text = config::to_ron(&Settings {
        global,
        services: vec![service.clone()],
        passdbs: if auth {
            settings.passdbs.clone()
        } else {
            Vec::new()
        },
        userdbs: if auth {
            settings.userdbs.clone()
        } else {
            Vec::new()
        },
    });
    let name = c"roost-settings";
    // SAFETY: memfd_create with a static name; the fd is owned at once.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(text.as_bytes())?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on the fd we own.
    unsafe {
        libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals);
        libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET);
    }
    Ok(file.into())
}

/// `import_environment`: `NAME` keeps the master's value, `NAME=VALUE` sets one.
fn imported_environment(spec: &str) -> Vec<(String, String)> {
    spec.split_whitespace()
        .filter_map(|item| match item.split_once('=') {
            Some((name, value)) => Some((name.to_owned(), value.to_owned())),
            None => std::env::var(item)
                .ok()
                .map(|value| (item.to_owned(), value)),
        })
        .collect()
}

/// Tells systemd (NOTIFY_SOCKET) about a lifecycle change.
fn notify_systemd(state: Lifecycle) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let message = match state {
        Lifecycle::Ready => format!("READY=1\nMAINPID={}", std::process::id()),
        Lifecycle::Reloading => {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime into a local.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            let usec = ts.tv_sec as i128 * 1_000_000 + ts.tv_nsec as i128 / 1000;
            format!("RELOADING=1\nMONOTONIC_USEC={usec}")
        }
        Lifecycle::Stopping => "STOPPING=1".to_owned(),
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let target = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()
    } else {
        std::os::unix::net::SocketAddr::from_pathname(&path).ok()
    };
    if let Some(target) = target {
        let _ = socket.send_to_addr(message.as_bytes(), &target);
    }
}

/// TERM or INT as the core takes it: with who sent it, when the kernel says (the original's
/// `Killed with signal 15 (by pid=… uid=… code=kill)`).
fn shutdown_input(signal: Signal, origin: &Origin) -> Input {
    use signal_hook::low_level::siginfo::{Cause, Sent};
    let how = match origin.cause {
        Cause::Sent(Sent::User) => SentBy::Kill,
        Cause::Sent(Sent::TKill) => SentBy::Tkill,
        Cause::Sent(Sent::Queue) => SentBy::Queue,
        Cause::Kernel => SentBy::Kernel,
        _ => SentBy::Unknown,
    };
    match origin.process {
        Some(process) => Input::SignalFrom {
            signal,
            sender: SignalSender {
                pid: process.pid.unsigned_abs(),
                uid: process.uid,
                how,
            },
        },
        None => Input::Signal(signal),
    }
}

/// The process at the other end of a control connection (SO_PEERCRED).
fn peer_of(stream: &mio::net::UnixStream) -> Option<SignalSender> {
    let credentials =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(SignalSender {
        pid: credentials.pid().unsigned_abs(),
        uid: credentials.uid(),
        how: SentBy::Control,
    })
}

/// The pid file `<base_dir>/master.pid`, locked for the master's whole life: a second master
/// fails on the lock, and a stale file whose pid the OS reused (containers) cannot block a start,
/// unlike the original's bare `kill(pid, 0)` (reference §7.2 item 6).
pub struct PidFile {
    file: File,
    path: String,
}

impl PidFile {
    /// Takes the lock, or says who holds it.
    pub fn lock(base_dir: &str) -> Result<PidFile, String> {
        let path = format!("{base_dir}/master.pid");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("Can't open {path}: {e}"))?;
        // SAFETY: flock on the fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(match written_pid(&path) {
                Some(pid) => format!("roost is already running with PID {pid} (read from {path})"),
                None => format!("roost is already starting (it holds {path})"),
            });
        }
        Ok(PidFile { file, path })
    }

    /// Writes the master's pid (after daemonising).
    pub fn write_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        use std::io::Seek;
        self.file.seek(std::io::SeekFrom::Start(0))?;
        writeln!(self.file, "{}", std::process::id())
    }

    /// Removes the file at a clean shutdown.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// The pid in a pid file, if a master holds its lock.
    pub fn running(base_dir: &str) -> Option<u32> {
        let path = format!("{base_dir}/master.pid");
        let file = File::open(&path).ok()?;
        // SAFETY: a probe lock on a fd we own; released when it closes.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
        if !locked {
            return None;
        }
        written_pid(&path)
    }
}

/// The pid in the locked pid file at PATH. A master takes the lock before it forks into the
/// background and writes its pid after, so a file still empty is given a moment.
fn written_pid(path: &str) -> Option<u32> {
    for _ in 0..20 {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Story: two starts at once; the second read the pid file between the first one's lock
    /// and its write, and said "already running with PID  (read from ...)".
    #[test]
    fn a_second_start_names_the_pid_once_written_or_says_the_first_is_starting() {
        let dir = std::env::temp_dir().join(format!("roost-pid-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let base_dir = dir.to_string_lossy().into_owned();
        let mut first = PidFile::lock(&base_dir).expect("first lock");
        let Err(starting) = PidFile::lock(&base_dir) else {
            panic!("two locks");
        };
        assert_eq!(
            starting,
            format!("roost is already starting (it holds {base_dir}/master.pid)")
        );
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            first.write_pid().expect("write");
            first
        });
        let Err(running) = PidFile::lock(&base_dir) else {
            panic!("two locks");
        };
        writer.join().expect("writer").remove();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            running,
            format!(
                "roost is already running with PID {} (read from {base_dir}/master.pid)",
                std::process::id()
            )
        );
    }

    /// Story: the control socket was bound, then chmod'ed to 0600. A master started under
    /// umask 0 had a socket anyone could connect to until the chmod, and `stop` needs no more
    /// than a connection. The property: the socket is 0600 the moment it exists.
    #[test]
    fn the_control_socket_is_private_from_its_creation_even_under_umask_0() {
        let dir = std::env::temp_dir().join(format!("roost-bind-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("control");
        let _ = std::fs::remove_file(&path);
        // SAFETY: swaps the process's umask for the bind and restores it.
        let old = unsafe { libc::umask(0) };
        let bound = bind_private(&path.to_string_lossy());
        unsafe { libc::umask(old) };
        let _listener = bound.expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(mode & 0o777, 0o600);
    }
}
