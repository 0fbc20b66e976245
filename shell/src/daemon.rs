//! The master process: one single-threaded mio loop around the core's `Master`.
//!
//! It owns every OS resource the core refers to by id: listeners (`ListenerId`), per-service
//! status, master-dead and log pipes and settings memfds (`ServiceId`), login notify files, the
//! control socket and its connections, the signal source. It translates OS events into
//! `Input`s and carries out every `Output`; it decides nothing about limits or counts (that is
//! the core's job). Children's stderr is read by the master itself from each service's log
//! pipe and written through the same [`LogWriter`] with the `NAME: ` prefix (the `log` service
//! of DESIGN.md is not a separate process yet; see docs/child-protocol.md).
//!
//! Reference §1 (child protocol), §2.7 (exits), §4 (reload, shutdown, signals).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration as StdDuration;

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use roost_core::config::Config;
use roost_core::ids::{Generation, ListenerId, Pid, ServiceId};
use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::output::{Lifecycle, Output, SpawnRequest};
use roost_core::settings::Settings;
use roost_core::setup::ListenerKind;
use roost_core::signal::{ExitStatus, Signal};
use roost_core::time::Instant;
use roost_core::wire::control::{
    self, ProcessRow, Reply, Request, RequestDecoder, Row, ServiceRow,
};
use roost_core::wire::status;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use crate::conf;
use crate::listen::{self, OpenedListener};
use crate::logwriter::LogWriter;
use crate::spawn::{self, ChildFds, Credentials, ListenerFd, PlanContext};

const TOKEN_SIGNALS: Token = Token(0);
const TOKEN_CONTROL: Token = Token(1);
const KIND_LISTENER: usize = 1 << 40;
const KIND_STATUS: usize = 2 << 40;
const KIND_LOG: usize = 3 << 40;
const KIND_CONN: usize = 4 << 40;
const KIND_MASK: usize = 0xff << 40;

/// What the command line decided.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `-c FILE`; None = the system file or the embedded default.
    pub config: Option<String>,
    /// `-F`: stay in the foreground.
    pub foreground: bool,
    /// `-i NAME`: instance name.
    pub instance: Option<String>,
}

/// One listener the master holds.
struct ListenerEntry {
    /// The socket or fifo.
    opened: OpenedListener,
    /// Its service.
    service: ServiceId,
    /// Name, ssl, haproxy for the child.
    name: String,
    /// `ssl = yes`.
    ssl: bool,
    /// `haproxy = yes`.
    haproxy: bool,
    /// Registered with the poll.
    watching: bool,
}

/// The fds of one service of one generation.
struct ServiceFds {
    /// Generation.
    generation: Generation,
    /// Status pipe (read end registered, write end given to children).
    status_read: OwnedFd,
    /// Write end.
    status_write: OwnedFd,
    /// Master-dead pipe: the master keeps the write end; children get the read end.
    dead_read: OwnedFd,
    /// Write end; None once the generation is retired.
    dead_write: Option<OwnedFd>,
    /// Log pipe read end (registered).
    log_read: OwnedFd,
    /// Log pipe write end (fd 2 of children).
    log_write: OwnedFd,
    /// Bytes of an unfinished log line.
    log_buf: Vec<u8>,
    /// Settings memfd.
    settings: OwnedFd,
    /// Login notify file (login services).
    login_notify: Option<OwnedFd>,
    /// The service's name.
    name: String,
}

/// One control connection.
struct Conn {
    /// The stream.
    stream: UnixStream,
    /// Incoming requests.
    decoder: RequestDecoder,
    /// Unsent reply bytes.
    out: Vec<u8>,
    /// Close once `out` is sent.
    closing: bool,
}

/// The running master.
pub struct Daemon {
    /// The core.
    master: Master,
    /// The mio poll.
    poll: Poll,
    /// Signals.
    signals: Signals,
    /// The clock origin: core time is milliseconds since it.
    start: std::time::Instant,
    /// The options.
    options: Options,
    /// Settings by generation.
    settings: BTreeMap<Generation, Settings>,
    /// Listeners.
    listeners: BTreeMap<ListenerId, ListenerEntry>,
    /// Per-service fds.
    services: BTreeMap<ServiceId, ServiceFds>,
    /// The log.
    log: LogWriter,
    /// /dev/null.
    dev_null: OwnedFd,
    /// The control socket.
    control: Option<UnixListener>,
    /// Its path.
    control_path: String,
    /// Control connections.
    conns: BTreeMap<usize, Conn>,
    /// Next connection number.
    next_conn: usize,
    /// The roost binary and its directory.
    self_exe: (String, String),
    /// Root: switch users for children.
    is_root: bool,
    /// Exit status once the core said Exit.
    exit: Option<i32>,
    /// The pid file (locked).
    _pid_file: std::fs::File,
    /// Its path.
    pid_path: String,
}

/// Errors of start-up, each one line for the operator.
pub type StartError = String;

/// The pid file: `flock`ed while the master lives, so a reused pid cannot fool the check
/// (reference §7.2 item 6): only a live master holds the lock.
pub fn lock_pid_file(path: &str) -> Result<std::fs::File, StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("open({path}) failed: {e}"))?;
    // SAFETY: flock on a valid fd.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let pid = std::fs::read_to_string(path).unwrap_or_default();
        return Err(format!(
            "roost is already running with PID {} (read from {path})",
            pid.trim()
        ));
    }
    Ok(file)
}

/// Reads the pid of the live master from `master.pid`, if one holds its lock.
pub fn running_master_pid(base_dir: &str) -> Option<i32> {
    let path = format!("{base_dir}/master.pid");
    let file = std::fs::File::open(&path).ok()?;
    // SAFETY: flock on a valid fd; a shared probe lock fails only while the master holds it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        return None;
    }
    std::fs::read_to_string(&path).ok()?.trim().parse().ok()
}

fn write_pid(file: &mut std::fs::File) -> io::Result<()> {
    file.set_len(0)?;
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    Ok((r, w))
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
    Ok(())
}

fn daemonize() -> Result<(), StartError> {
    // SAFETY: single-threaded at this point; the parent exits at once.
    match unsafe { libc::fork() } {
        -1 => return Err(format!("fork() failed: {}", io::Error::last_os_error())),
        0 => {}
        _ => unsafe { libc::_exit(0) },
    }
    // SAFETY: plain syscalls in the child.
    unsafe { libc::setsid() };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open(/dev/null) failed: {e}"))?;
    // SAFETY: dup2 onto stdin/stdout; stderr stays for a log_path of /dev/stderr.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
    }
    Ok(())
}

/// Runs the master until it exits; returns the exit status.
pub fn run(options: Options) -> i32 {
    match start(options) {
        Ok(mut d) => d.main_loop(),
        Err(e) => {
            eprintln!("roost: Fatal: {e}");
            89
        }
    }
}

fn start(options: Options) -> Result<Daemon, StartError> {
    let path = conf::choose(options.config.as_deref());
    let (mut cfg, warnings) = conf::load_checked(path.as_deref()).map_err(|e| e.join("\n"))?;
    if let Some(name) = &options.instance {
        cfg.settings.global.instance_name = name.clone();
    }
    let base_dir = cfg.settings.global.base_dir.clone();
    std::fs::create_dir_all(&base_dir).map_err(|e| format!("mkdir({base_dir}) failed: {e}"))?;
    let _ = std::fs::set_permissions(&base_dir, std::fs::Permissions::from_mode(0o755));
    std::env::set_current_dir(&base_dir).map_err(|e| format!("chdir({base_dir}) failed: {e}"))?;
    let pid_path = format!("{base_dir}/master.pid");
    let mut pid_file = lock_pid_file(&pid_path)?;
    let mut log = LogWriter::open(&cfg.settings.global.log_path).map_err(|e| e.to_string())?;
    if !options.foreground {
        daemonize()?;
    }
    write_pid(&mut pid_file).map_err(|e| format!("write({pid_path}) failed: {e}"))?;
    let which = path
        .clone()
        .unwrap_or_else(|| conf::DEFAULT_NAME.to_owned());
    log.line(&format!(
        "roost: Info: roost v{} starting up with configuration {which}",
        env!("CARGO_PKG_VERSION")
    ));
    for w in &warnings {
        log.line(&format!("roost: Warning: {w}"));
    }
    let is_root = nix::unistd::geteuid().is_root();
    if !is_root {
        log.line(
            "roost: Info: not running as root: children run as this user, no user is switched",
        );
    }
    let (mc, left_out) = conf::master_config(&cfg);
    for l in &left_out {
        log.line(&format!("roost: Info: {l}"));
    }
    let dev_null: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open(/dev/null) failed: {e}"))?
        .into();
    let poll = Poll::new().map_err(|e| format!("epoll failed: {e}"))?;
    let mut signals = Signals::new([SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1])
        .map_err(|e| format!("signal setup failed: {e}"))?;
    poll.registry()
        .register(&mut signals, TOKEN_SIGNALS, Interest::READABLE)
        .map_err(|e| format!("epoll failed: {e}"))?;
    let control_path = format!("{base_dir}/control");
    let _ = std::fs::remove_file(&control_path);
    let mut control = UnixListener::bind(&control_path)
        .map_err(|e| format!("bind({control_path}) failed: {e}"))?;
    let _ = std::fs::set_permissions(&control_path, std::fs::Permissions::from_mode(0o600));
    poll.registry()
        .register(&mut control, TOKEN_CONTROL, Interest::READABLE)
        .map_err(|e| format!("epoll failed: {e}"))?;
    let start = std::time::Instant::now();
    let master = Master::new(mc, Instant::ZERO);
    let mut settings = BTreeMap::new();
    settings.insert(master.current_generation(), cfg.settings.clone());
    Ok(Daemon {
        master,
        poll,
        signals,
        start,
        options,
        settings,
        listeners: BTreeMap::new(),
        services: BTreeMap::new(),
        log,
        dev_null,
        control: Some(control),
        control_path,
        conns: BTreeMap::new(),
        next_conn: 0,
        self_exe: conf::self_exe(),
        is_root,
        exit: None,
        _pid_file: pid_file,
        pid_path,
    })
}

impl Daemon {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        self.master.handle(input, now);
        #[cfg(debug_assertions)]
        if let Err(v) = self.master.check_invariants() {
            self.log
                .line(&format!("roost: Error: invariant violated: {v:?}"));
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(out) = self.master.poll_output() {
            self.apply(out);
        }
    }

    fn main_loop(&mut self) -> i32 {
        let mut events = Events::with_capacity(256);
        self.drain();
        loop {
            if let Some(code) = self.exit {
                self.cleanup();
                return code;
            }
            let now = self.now();
            let timeout = self
                .master
                .poll_timeout()
                .map(|at| StdDuration::from_millis(at.as_millis().saturating_sub(now.as_millis())));
            if timeout == Some(StdDuration::ZERO) {
                self.handle(Input::Timeout);
                continue;
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.log
                        .line(&format!("roost: Error: epoll_wait() failed: {e}"));
                }
                continue;
            }
            let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
            for token in tokens {
                self.on_event(token);
            }
            if let Some(at) = self.master.poll_timeout() {
                if at <= self.now() {
                    self.handle(Input::Timeout);
                }
            }
        }
    }

    fn on_event(&mut self, token: Token) {
        match token {
            TOKEN_SIGNALS => self.on_signals(),
            TOKEN_CONTROL => self.on_control_accept(),
            Token(t) => {
                let id = t & !KIND_MASK;
                match t & KIND_MASK {
                    KIND_LISTENER => {
                        let listener = ListenerId(id as u32);
                        if let Some(l) = self.listeners.get(&listener) {
                            let queued = if l.opened.kind == "inet" {
                                listen::queued(l.opened.fd.as_raw_fd())
                            } else {
                                1
                            };
                            self.handle(Input::ListenerReadable { listener, queued });
                        }
                    }
                    KIND_STATUS => self.on_status(ServiceId(id as u32)),
                    KIND_LOG => self.on_log(ServiceId(id as u32)),
                    KIND_CONN => self.on_conn(id),
                    _ => {}
                }
            }
        }
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGCHLD => self.reap(),
                SIGHUP => {
                    let _ = self.reload();
                }
                SIGTERM => self.handle(Input::Signal(Signal::Term)),
                SIGINT => self.handle(Input::Signal(Signal::Int)),
                SIGUSR1 => self.log_reopen(),
                _ => {}
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.handle(Input::Exited {
                    pid: Pid(pid.as_raw()),
                    status: ExitStatus::Exited(code),
                }),
                Ok(WaitStatus::Signaled(pid, sig, core)) => self.handle(Input::Exited {
                    pid: Pid(pid.as_raw()),
                    status: ExitStatus::Signaled {
                        signal: sig as i32,
                        core_dumped: core,
                    },
                }),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn log_reopen(&mut self) {
        if let Err(e) = self.log.reopen() {
            self.log.line(&format!("roost: Error: {e}"));
        }
        self.handle(Input::Signal(Signal::Usr1));
    }

    /// Re-reads the configuration; Err with the reason when refused.
    fn reload(&mut self) -> Result<(), String> {
        self.lifecycle(Lifecycle::Reloading);
        let path = conf::choose(self.options.config.as_deref());
        let result = conf::load_checked(path.as_deref())
            .map_err(|e| e.join("\n"))
            .and_then(|(mut cfg, warnings)| {
                if let Some(name) = &self.options.instance {
                    cfg.settings.global.instance_name = name.clone();
                }
                let current = self.settings.get(&self.master.current_generation());
                if let Some(cur) = current {
                    if cur.global.base_dir != cfg.settings.global.base_dir {
                        return Err("base_dir can't be changed by a reload".to_owned());
                    }
                }
                Ok((cfg, warnings))
            });
        match result {
            Err(e) => {
                for line in e.lines() {
                    self.log.line(&format!("roost: Error: {line}"));
                }
                self.log
                    .line("roost: Error: Config reload failed, keeping the running configuration");
                self.lifecycle(Lifecycle::Ready);
                Err(e)
            }
            Ok((cfg, warnings)) => {
                self.apply_reload(cfg, warnings);
                Ok(())
            }
        }
    }

    fn apply_reload(&mut self, cfg: Config, warnings: Vec<String>) {
        for w in &warnings {
            self.log.line(&format!("roost: Warning: {w}"));
        }
        self.log
            .line("roost: Warning: SIGHUP received - reloading configuration");
        let (mc, left_out) = conf::master_config(&cfg);
        for l in &left_out {
            self.log.line(&format!("roost: Info: {l}"));
        }
        let next = Generation(self.master.current_generation().0 + 1);
        self.settings.insert(next, cfg.settings);
        self.handle(Input::Reload(Box::new(mc)));
        let current = self.master.current_generation();
        if current != next {
            if let Some(s) = self.settings.remove(&next) {
                self.settings.insert(current, s);
            }
        }
    }

    fn lifecycle(&mut self, state: Lifecycle) {
        let Ok(socket) = std::env::var("NOTIFY_SOCKET") else {
            return;
        };
        let msg = match state {
            Lifecycle::Ready => "READY=1".to_owned(),
            Lifecycle::Reloading => {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: clock_gettime fills a valid timespec.
                unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
                let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
                format!("RELOADING=1\nMONOTONIC_USEC={usec}")
            }
            Lifecycle::Stopping => "STOPPING=1".to_owned(),
        };
        let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
            return;
        };
        if let Some(name) = socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
                let _ = sock.send_to_addr(msg.as_bytes(), &addr);
            }
        } else {
            let _ = sock.send_to(msg.as_bytes(), &socket);
        }
    }

    fn apply(&mut self, out: Output) {
        match out {
            Output::OpenListener {
                listener,
                service,
                config,
            } => self.open_listener(listener, service, &config.name, &config.kind),
            Output::TakeOverListener { from, to } => {
                if let Some(mut l) = self.listeners.remove(&from) {
                    if l.watching {
                        let fd = l.opened.fd.as_raw_fd();
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                        l.watching = false;
                    }
                    // The new generation's service owns it from now on.
                    let ids: Vec<ServiceId> = self.master.services().map(|s| s.id).collect();
                    let service = ids
                        .into_iter()
                        .find(|id| self.master.service_listeners(*id).contains(&to))
                        .unwrap_or(l.service);
                    l.service = service;
                    self.listeners.insert(to, l);
                }
            }
            Output::CloseListener { listener } => {
                if let Some(l) = self.listeners.remove(&listener) {
                    if l.watching {
                        let fd = l.opened.fd.as_raw_fd();
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                    if let Some(p) = &l.opened.path {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
            Output::SetListening { listener, on } => self.set_listening(listener, on),
            Output::AcceptAndClose { listener } => {
                if let Some(l) = self.listeners.get(&listener) {
                    listen::accept_and_close(l.opened.fd.as_raw_fd());
                }
            }
            Output::Spawn(req) => {
                let input = self.spawn(&req);
                self.master.handle(input, self.now());
            }
            Output::Kill { pid, signal } => {
                // SAFETY: kill(2) with a pid the core knows as its child.
                unsafe { libc::kill(pid.0, signal.number()) };
            }
            Output::SetLoginFull { service, full } => {
                if let Some(fd) = self
                    .services
                    .get(&service)
                    .and_then(|s| s.login_notify.as_ref())
                {
                    // The offset is the state: children lseek(fd, 0, SEEK_CUR) to read it.
                    // SAFETY: lseek on a valid fd.
                    unsafe { libc::lseek(fd.as_raw_fd(), i64::from(full), libc::SEEK_SET) };
                }
            }
            Output::RetireGeneration { generation } => {
                for s in self.services.values_mut() {
                    if s.generation == generation {
                        s.dead_write = None;
                        s.login_notify = None;
                    }
                }
            }
            Output::ForgetGeneration { generation } => {
                let gone: Vec<ServiceId> = self
                    .services
                    .iter()
                    .filter(|(_, s)| s.generation == generation)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    self.close_service(id);
                }
                self.settings.remove(&generation);
            }
            Output::AnvilKill { .. } => {
                // No anvil process runs yet (the mail-host issue adds it): nothing to tell.
            }
            Output::Log(notice) => {
                let line = format!("roost: {}: {notice}", notice.level());
                self.log.line(&line);
            }
            Output::Lifecycle(state) => self.lifecycle(state),
            Output::Exit(code) => self.exit = Some(code),
        }
    }

    fn open_listener(
        &mut self,
        listener: ListenerId,
        service: ServiceId,
        name: &str,
        kind: &ListenerKind,
    ) {
        match listen::open(kind) {
            Ok(opened) => {
                let (ssl, haproxy) = match kind {
                    ListenerKind::Inet { ssl, haproxy, .. } => (*ssl, *haproxy),
                    _ => (false, false),
                };
                self.listeners.insert(
                    listener,
                    ListenerEntry {
                        opened,
                        service,
                        name: name.to_owned(),
                        ssl,
                        haproxy,
                        watching: false,
                    },
                );
            }
            Err(e) => {
                let now = self.now();
                self.master.handle(
                    Input::ListenFailed {
                        listener,
                        soft: e.soft,
                        error: e.error,
                    },
                    now,
                );
            }
        }
    }

    fn set_listening(&mut self, listener: ListenerId, on: bool) {
        let Some(l) = self.listeners.get_mut(&listener) else {
            return;
        };
        let fd = l.opened.fd.as_raw_fd();
        let token = Token(KIND_LISTENER | listener.0 as usize);
        let registry = self.poll.registry();
        let result = match (on, l.watching) {
            // mio is edge-triggered: a fresh registration (or a re-registration of one already
            // watched) reports connections that are already waiting, so every "listen" from
            // the core re-arms deliberately.
            (true, false) => registry.register(&mut SourceFd(&fd), token, Interest::READABLE),
            (true, true) => registry.reregister(&mut SourceFd(&fd), token, Interest::READABLE),
            (false, true) => registry.deregister(&mut SourceFd(&fd)),
            (false, false) => Ok(()),
        };
        match result {
            Ok(()) => l.watching = on,
            Err(e) => self.log.line(&format!(
                "roost: Error: epoll_ctl(listener {}) failed: {e}",
                l.name
            )),
        }
    }

    fn service_fds(&mut self, req: &SpawnRequest) -> io::Result<()> {
        if self.services.contains_key(&req.service) {
            return Ok(());
        }
        let settings = self
            .settings
            .get(&req.generation)
            .ok_or_else(|| io::Error::other("no settings for this generation"))?;
        let name = self
            .master
            .service_config(req.service)
            .map(|c| c.name.clone())
            .ok_or_else(|| io::Error::other("unknown service"))?;
        let service = settings
            .services
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("service {name} not in settings")))?;
        let mut global = settings.global.clone();
        let uses_ssl = service.inet_listeners.iter().any(|l| l.ssl);
        if !uses_ssl {
            // Secrets only to the services that use them.
            global.ssl_key = String::new();
        }
        let is_login = service.service_type == "login";
        let child_settings = Settings {
            global,
            services: vec![service],
        };
        let memfd = spawn::settings_memfd(&roost_core::config::to_ron(&child_settings))?;
        let (status_read, status_write) = pipe_pair()?;
        let (dead_read, dead_write) = pipe_pair()?;
        set_blocking(&dead_read)?;
        let (log_read, log_write) = pipe_pair()?;
        set_blocking(&log_write)?;
        let login_notify = if is_login {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags_tmpfile(".")?;
            Some(f)
        } else {
            None
        };
        let sid = req.service.0 as usize;
        let registry = self.poll.registry();
        registry.register(
            &mut SourceFd(&status_read.as_raw_fd()),
            Token(KIND_STATUS | sid),
            Interest::READABLE,
        )?;
        registry.register(
            &mut SourceFd(&log_read.as_raw_fd()),
            Token(KIND_LOG | sid),
            Interest::READABLE,
        )?;
        self.services.insert(
            req.service,
            ServiceFds {
                generation: req.generation,
                status_read,
                status_write,
                dead_read,
                dead_write: Some(dead_write),
                log_read,
                log_write,
                log_buf: Vec::new(),
                settings: memfd,
                login_notify,
                name,
            },
        );
        Ok(())
    }

    fn credentials(
        &self,
        user: &str,
        group: &str,
        extra: &str,
    ) -> Result<Option<Credentials>, String> {
        if !self.is_root || user.is_empty() {
            return Ok(None);
        }
        let u = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .ok_or_else(|| format!("unknown user {user}"))?;
        let gid = if group.is_empty() {
            u.gid.as_raw()
        } else {
            nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .ok_or_else(|| format!("unknown group {group}"))?
                .gid
                .as_raw()
        };
        let mut groups = vec![gid];
        for g in extra.split([' ', ',']).filter(|g| !g.is_empty()) {
            let g = nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| format!("unknown group {g}"))?;
            groups.push(g.gid.as_raw());
        }
        Ok(Some(Credentials {
            uid: u.uid.as_raw(),
            gid,
            groups,
        }))
    }

    fn spawn(&mut self, req: &SpawnRequest) -> Input {
        let failed = |errno: i32, error: String| Input::SpawnFailed {
            process: req.process,
            errno,
            error,
        };
        if let Err(e) = self.service_fds(req) {
            return failed(e.raw_os_error().unwrap_or(libc::EIO), e.to_string());
        }
        let Some(settings) = self.settings.get(&req.generation) else {
            return failed(libc::EINVAL, "no settings for this generation".into());
        };
        let Some(sc) = self.master.service_config(req.service).cloned() else {
            return failed(libc::EINVAL, "unknown service".into());
        };
        let Some(ss) = settings.services.iter().find(|s| s.name == sc.name) else {
            return failed(libc::EINVAL, "service not in settings".into());
        };
        let global = &settings.global;
        let expand = |v: &str| match v {
            "$default_internal_user" => global.default_internal_user.clone(),
            "$default_login_user" => global.default_login_user.clone(),
            "$default_internal_group" => global.default_internal_group.clone(),
            other => other.to_owned(),
        };
        let creds = match self.credentials(&expand(&ss.user), &expand(&ss.group), &ss.extra_groups)
        {
            Ok(c) => c,
            Err(e) => return failed(libc::EINVAL, format!("service({}): {e}", sc.name)),
        };
        let Some(fds) = self.services.get(&req.service) else {
            return failed(libc::EIO, "service fds missing".into());
        };
        let listeners: Vec<ListenerFd> = self
            .master
            .service_listeners(req.service)
            .iter()
            .filter_map(|id| self.listeners.get(id))
            .map(|l| ListenerFd {
                fd: l.opened.fd.as_raw_fd(),
                name: l.name.clone(),
                kind: l.opened.kind,
                ssl: l.ssl,
                haproxy: l.haproxy,
            })
            .collect();
        let child_fds = ChildFds {
            dev_null: self.dev_null.as_raw_fd(),
            stdout_is_terminal: self.options.foreground,
            log: fds.log_write.as_raw_fd(),
            listeners,
            status: fds.status_write.as_raw_fd(),
            master_dead: fds.dead_read.as_raw_fd(),
            login_notify: fds.login_notify.as_ref().map(|f| f.as_raw_fd()),
            settings: fds.settings.as_raw_fd(),
        };
        let imported: Vec<String> = global
            .import_environment
            .split_whitespace()
            .filter_map(|w| match w.split_once('=') {
                Some(_) => Some(w.to_owned()),
                None => std::env::var(w).ok().map(|v| format!("{w}={v}")),
            })
            .collect();
        let ctx = PlanContext {
            self_exe: &self.self_exe.0,
            self_dir: &self.self_exe.1,
            process_uid: req.uid.0,
            client_limit: sc.client_limit,
            service_count: sc.service_count,
            credentials: creds,
            vsz_limit: sc.vsz_limit,
            imported_env: imported,
        };
        let plan = match spawn::plan(global, ss, &child_fds, &ctx) {
            Ok(p) => p,
            Err(e) => return failed(libc::EINVAL, e.to_string()),
        };
        match spawn::spawn(plan) {
            Ok((pid, exec_error)) => {
                if let Some(e) = exec_error {
                    self.log.line(&format!("service({}): Fatal: {e}", sc.name));
                }
                Input::Spawned {
                    process: req.process,
                    pid: Pid(pid),
                }
            }
            Err((errno, error)) => failed(errno, error),
        }
    }

    fn close_service(&mut self, id: ServiceId) {
        if let Some(mut s) = self.services.remove(&id) {
            let registry = self.poll.registry();
            let _ = registry.deregister(&mut SourceFd(&s.status_read.as_raw_fd()));
            let _ = registry.deregister(&mut SourceFd(&s.log_read.as_raw_fd()));
            // Flush what is left of the children's stderr.
            drain_log(&mut s, &mut self.log);
            if !s.log_buf.is_empty() {
                let text = String::from_utf8_lossy(&s.log_buf).into_owned();
                self.log.line(&format!("{}: {text}", s.name));
            }
        }
    }

    fn on_status(&mut self, id: ServiceId) {
        let mut inputs = Vec::new();
        if let Some(s) = self.services.get(&id) {
            let mut buf = [0u8; status::STATUS_READ_CHUNK];
            loop {
                // SAFETY: read into a stack buffer of its length.
                let n = unsafe {
                    libc::read(
                        s.status_read.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n <= 0 {
                    break;
                }
                let chunk = &buf[..n as usize];
                match status::decode_chunk(chunk) {
                    Ok(records) => inputs.extend(records.map(|r| Input::Status {
                        pid: r.pid,
                        uid: r.uid,
                        available_count: r.available_count,
                    })),
                    Err(p) => inputs.push(Input::StatusPartial {
                        service: id,
                        bytes: p.bytes as u32,
                    }),
                }
            }
        }
        for input in inputs {
            self.handle(input);
        }
    }

    fn on_log(&mut self, id: ServiceId) {
        if let Some(s) = self.services.get_mut(&id) {
            drain_log(s, &mut self.log);
        }
    }

    fn on_control_accept(&mut self) {
        let Some(control) = &self.control else { return };
        while let Ok((mut stream, _)) = control.accept() {
            let id = self.next_conn;
            self.next_conn += 1;
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(KIND_CONN | id),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    stream,
                    decoder: RequestDecoder::new(),
                    out: control::HANDSHAKE.to_vec(),
                    closing: false,
                },
            );
        }
        self.on_conn_all();
    }

    fn on_conn_all(&mut self) {
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for id in ids {
            self.on_conn(id);
        }
    }

    fn on_conn(&mut self, id: usize) {
        let mut requests = Vec::new();
        let mut dead = false;
        if let Some(c) = self.conns.get_mut(&id) {
            let mut buf = [0u8; 4096];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        dead = true;
                        break;
                    }
                    Ok(n) => c.decoder.feed(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            while let Some(r) = c.decoder.next_request() {
                requests.push(r);
            }
        }
        for r in requests {
            let reply = match r {
                Ok(req) => self.control_request(req),
                Err(e) => {
                    if e.is_fatal() {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.closing = true;
                        }
                    }
                    Reply::Error(e.to_string())
                }
            };
            if let Some(c) = self.conns.get_mut(&id) {
                reply.encode(&mut c.out);
            }
        }
        if let Some(c) = self.conns.get_mut(&id) {
            while !c.out.is_empty() {
                match c.stream.write(&c.out) {
                    Ok(0) => {
                        dead = true;
                        break;
                    }
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            if c.closing && c.out.is_empty() {
                dead = true;
            }
        }
        if dead {
            if let Some(mut c) = self.conns.remove(&id) {
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
        }
    }

    fn control_request(&mut self, req: Request) -> Reply {
        match req {
            Request::Stop => {
                self.handle(Input::Signal(Signal::Term));
                Reply::Ok(String::new())
            }
            Request::Reload => match self.reload() {
                Ok(()) => Reply::Ok(String::new()),
                Err(e) => Reply::Error(e),
            },
            Request::LogReopen => {
                self.log_reopen();
                Reply::Ok(String::new())
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
                let wall = |at: Option<Instant>| at.map_or(0, |at| unix_secs_of(self.start, at));
                Reply::Table(
                    self.master
                        .processes()
                        .filter(|p| services.is_empty() || services.contains(&p.service))
                        .filter_map(|p| {
                            Some(Row::Process(ProcessRow {
                                service: p.service.clone(),
                                pid: p.pid?,
                                available_count: p.available_count,
                                total_count: p.total_count,
                                idle_start: wall(p.idle_start),
                                last_status_update: wall(p.last_status_update),
                                last_kill_sent: wall(p.last_kill_sent),
                            }))
                        })
                        .collect(),
                )
            }
            Request::Who => Reply::Table(Vec::new()),
        }
    }

    fn cleanup(&mut self) {
        for l in self.listeners.values() {
            if let Some(p) = &l.opened.path {
                let _ = std::fs::remove_file(p);
            }
        }
        self.listeners.clear();
        let ids: Vec<ServiceId> = self.services.keys().copied().collect();
        for id in ids {
            self.close_service(id);
        }
        // Answer pending control connections before going.
        self.on_conn_all();
        self.control = None;
        let _ = std::fs::remove_file(&self.control_path);
        let _ = std::fs::remove_file(&self.pid_path);
        self.log.line("roost: Info: roost stopped");
    }
}

fn unix_secs_of(start: std::time::Instant, at: Instant) -> u64 {
    let now_core = start.elapsed().as_millis() as u64;
    let ago = now_core.saturating_sub(at.as_millis()) / 1000;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    wall.saturating_sub(ago)
}

fn drain_log(s: &mut ServiceFds, log: &mut LogWriter) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: read into a stack buffer of its length.
        let n = unsafe { libc::read(s.log_read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        s.log_buf.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = s.log_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = s.log_buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            log.line(&format!("{}: {text}", s.name));
        }
        if s.log_buf.len() > 8192 {
            let text = String::from_utf8_lossy(&s.log_buf).into_owned();
            log.line(&format!("{}: {text}", s.name));
            s.log_buf.clear();
        }
    }
}

trait TmpFile {
    fn custom_flags_tmpfile(&mut self, dir: &str) -> io::Result<OwnedFd>;
}

impl TmpFile for std::fs::OpenOptions {
    /// An unlinked temporary file in `dir` (O_TMPFILE), whose offset carries a login service's
    /// "all processes full" state.
    fn custom_flags_tmpfile(&mut self, dir: &str) -> io::Result<OwnedFd> {
        let c = std::ffi::CString::new(dir).map_err(io::Error::other)?;
        // SAFETY: open(2) with a valid path; the fd is owned at once.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The client side of the control socket: sends one request, returns the reply.
pub fn control_request(base_dir: &str, req: &Request) -> Result<Reply, String> {
    use roost_core::wire::control::ReplyDecoder;
    let path = format!("{base_dir}/control");
    let mut s = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| format!("connect({path}) failed: {e} (is roost running?)"))?;
    s.set_read_timeout(Some(StdDuration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut out = control::HANDSHAKE.to_vec();
    req.encode(&mut out);
    s.write_all(&out)
        .map_err(|e| format!("write({path}) failed: {e}"))?;
    let mut dec = ReplyDecoder::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(r) = dec.next_reply() {
            return r.map_err(|e| e.to_string());
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read({path}) failed: {e}"))?;
        if n == 0 {
            return Err("the master closed the connection without a reply".into());
        }
        dec.feed(&buf[..n]);
    }
}
