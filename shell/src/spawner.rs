//! The spawner: a roost process the master starts once, which creates the children of built-in
//! services by forking itself instead of executing the roost binary again.
//!
//! Why: on a virtual machine an `execve` of the roost binary and its start-up (the dynamic
//! loader, relocations, the Rust runtime) cost about 1 ms of CPU, two thirds of a POP3
//! post-login process's whole life (issue 8). A fork of this small, already started process
//! costs a tenth of that. The master itself cannot fork cheaply (its page tables grow with
//! every table it keeps) and must not run service code in its own image.
//!
//! How: the master talks to it over a private `SOCK_SEQPACKET` socketpair. It sends each
//! [`ChildTemplate`] once (what every child of a service of a generation shares: environment,
//! title, limits, identity, fd layout), and then, per child, the template's number, the
//! child's process uid and its fds (SCM_RIGHTS, in the order of their destinations). The
//! spawner clones itself with `CLONE_PARENT`, so the child is the master's: the master reaps it
//! and sees its exit status as for any other child. The child places its fds, resets signals,
//! takes its environment, title, limits and identity exactly as the exec path would, then runs
//! the built-in's `main`. The spawner answers with the pid (or the errno of a failed clone).
//!
//! Every page the spawner writes between two clones is copied on write once more, so a spawn
//! costs it one small message read into its stack: templates are decoded and their
//! environments built when they arrive, not at each child.
//!
//! An inetd adapter is not a fork: it is a `CLONE_VM` child that runs on a stack of its own in
//! the spawner's memory until it execs its program ([`crate::inetd`]), which it does once per
//! connection. Nothing is copied at the clone and nothing torn down at the exec; what it
//! costs instead: it shares the spawner's command line, so `ps` shows a waiting adapter's own
//! name (its `comm`: the service's) but the spawner's arguments. The spawner keeps each stack
//! until the kernel clears the adapter's word in it (`CLONE_CHILD_CLEARTID`: at its exec or
//! exit), and every template an adapter still reads.
//!
//! Which: only built-ins whose service is not `type = login`. Forked children share the
//! spawner's address layout; a login process faces clients before authentication, so it keeps
//! a fresh exec (and a fresh ASLR layout) for each process, as in the original.
//!
//! If the spawner is gone or does not answer in time, the master stops it and starts children
//! the exec way. A child it cloned before it stalled is the master's but unknown to the core;
//! its first status record gives it away and the master kills it (`daemon::Strays`).

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use roost_core::ids::Pid;
use serde::{Deserialize, Serialize};

use crate::fdplan;
use crate::inetd;
use crate::spawn::{
    write_number, Environment, Identity, EXIT_EXEC_FAILED, LISTEN_PID, PROCESS_UID,
};

/// The fd the spawner finds its socket at.
const SOCKET_FD: RawFd = 3;

/// The largest message (settings travel as an fd, so a template is the environment and a few
/// names).
const MAX_MESSAGE: usize = 64 * 1024;

/// The most fds one child receives (listeners and roost's own).
const MAX_FDS: usize = 250;

/// The most templates the spawner holds; when the master needs one more, both forget them all
/// (reloads leave templates of generations that are gone).
const MAX_TEMPLATES: usize = 64;

/// How long the master waits for the pid before it gives up on the spawner.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Room for the children's titles in the spawner's argument area: `roost-INSTANCE/SERVICE`.
const TITLE_ROOM: usize = 200;

/// The master's messages, by their first byte.
/// `T` and RON: the next template (numbered from 0 in the order they come). No answer.
const TEMPLATE: u8 = b'T';
/// `S`, the template's number (u32) and the process uid (u32), little-endian, with the fds:
/// one child. Answered with the pid, or minus the errno, as an i32.
const SPAWN: u8 = b'S';
/// `F`: forget every template. No answer.
const FORGET: u8 = b'F';

/// What every child of one service of one generation shares: what `SpawnPlan` holds for the
/// exec path, for a built-in, but the process uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildTemplate {
    /// The built-in's name.
    pub builtin: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The process title.
    pub title: String,
    /// The environment, `NAME=value` each (without `LISTEN_PID` and `ROOST_PROCESS_UID`).
    pub env: Vec<String>,
    /// Whether `LISTEN_PID` is set to the child's pid.
    pub listen_pid: bool,
    /// Where each fd sent with a spawn goes, in order.
    pub destinations: Vec<RawFd>,
    /// RLIMIT_AS and RLIMIT_DATA (0: none).
    pub vsz_limit: u64,
    /// The identity taken before the built-in runs (drop_priv_before_exec).
    pub identity: Option<Identity>,
}

/// One child to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnOrder {
    /// What it shares with its siblings.
    pub template: ChildTemplate,
    /// Its own process uid (`ROOST_PROCESS_UID`).
    pub process_uid: u32,
}

/// Why the spawner created no child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Its clone failed (a process limit, memory): an exec would most likely fail the same way.
    #[error("clone() failed: {0}")]
    Clone(io::Error),
    /// The spawner itself failed: gone, or no answer in time.
    #[error("{0}")]
    Spawner(io::Error),
}

/// The master's end: a running spawner.
#[derive(Debug)]
pub struct Spawner {
    socket: OwnedFd,
    pid: Pid,
    /// The templates the spawner holds, by number.
    templates: Vec<ChildTemplate>,
}

impl Spawner {
    /// Starts `roost --builtin spawner` with its socket at fd 3, titled `title`
    /// (`roost/spawner`, or `roost-INSTANCE/spawner`).
    pub fn start(roost_binary: &Path, title: &str) -> io::Result<Spawner> {
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let theirs_fd = theirs.as_raw_fd();
        let mut command = std::process::Command::new(roost_binary);
        command
            .arg0(title)
            .args(["--builtin", "spawner"])
            // Room its children write their titles over.
            .arg(" ".repeat(TITLE_ROOM))
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // Its session (if it has one of its own, when the master's has a terminal) has no
        // controlling terminal: its children need only process groups of their own.
        let own_session = crate::spawn::children_lead_sessions();
        // SAFETY: dup2, setsid and setpgid are async-signal-safe; the hook only places the
        // socket at fd 3 (dup2 clears its close-on-exec flag) and leaves the terminal's
        // process group.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if own_session {
                    libc::setsid();
                } else {
                    libc::setpgid(0, 0);
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(theirs);
        let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0);
        // A spawner that stops reading or answering holds the master up this long at most.
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SendTimeout, &timeout)?;
        Ok(Spawner {
            socket: ours,
            pid: Pid(child.id() as i32),
            templates: Vec::new(),
        })
    }

    /// The spawner's pid (the master reaps it like its other children).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The socket the answers come on, for the master's event loop.
    pub fn answers_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Creates one child and waits for its pid; its fds are `fds`, in the order of
    /// `order.template.destinations`.
    pub fn spawn(&mut self, order: &SpawnOrder, fds: &[RawFd]) -> Result<Pid, SpawnError> {
        self.order(order, fds)?;
        self.answer(true)
            .unwrap_or_else(|| Err(timed_out("no answer")))
    }

    /// Orders one child without waiting: its pid comes with [`Spawner::answer`], the
    /// answers in the order of the orders.
    pub fn order(&mut self, order: &SpawnOrder, fds: &[RawFd]) -> Result<(), SpawnError> {
        if fds.len() > MAX_FDS || fds.len() != order.template.destinations.len() {
            return Err(SpawnError::Clone(io::Error::other(
                "the order does not fit the spawner",
            )));
        }
        let number = match self.templates.iter().position(|t| *t == order.template) {
            Some(number) => number,
            None => self.send_template(&order.template)?,
        };
        let mut message = [0u8; 9];
        message[0] = SPAWN;
        message[1..5].copy_from_slice(&(number as u32).to_le_bytes());
        message[5..9].copy_from_slice(&order.process_uid.to_le_bytes());
        self.send(&message, fds)
    }

    /// The answer to the oldest order not answered yet: the child's pid, or why there is
    /// none. `None` when it has not come yet and `wait` is false; with `wait`, an answer
    /// that does not come within [`ANSWER_TIMEOUT`] is an error of the spawner's.
    pub fn answer(&mut self, wait: bool) -> Option<Result<Pid, SpawnError>> {
        let flags = if wait {
            MsgFlags::empty()
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let mut answer = [0u8; 4];
        let got = loop {
            match nix::sys::socket::recv(self.socket.as_raw_fd(), &mut answer, flags) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) if !wait => return None,
                Err(nix::errno::Errno::EAGAIN) => return Some(Err(timed_out("no answer"))),
                Err(error) => return Some(Err(SpawnError::Spawner(error.into()))),
                Ok(got) => break got,
            }
        };
        if got != answer.len() {
            return Some(Err(SpawnError::Spawner(io::Error::other("it went away"))));
        }
        Some(match i32::from_le_bytes(answer) {
            pid if pid > 0 => Ok(Pid(pid)),
            errno => Err(SpawnError::Clone(io::Error::from_raw_os_error(-errno))),
        })
    }

    /// Sends `template` as the next one (after forgetting them all when the table is full);
    /// returns its number.
    fn send_template(&mut self, template: &ChildTemplate) -> Result<usize, SpawnError> {
        let text =
            ron::to_string(template).map_err(|e| SpawnError::Spawner(io::Error::other(e)))?;
        if 1 + text.len() > MAX_MESSAGE {
            return Err(SpawnError::Clone(io::Error::other(
                "the order does not fit the spawner",
            )));
        }
        if self.templates.len() >= MAX_TEMPLATES {
            self.send(&[FORGET], &[])?;
            self.templates.clear();
        }
        let mut message = Vec::with_capacity(1 + text.len());
        message.push(TEMPLATE);
        message.extend_from_slice(text.as_bytes());
        self.send(&message, &[])?;
        self.templates.push(template.clone());
        Ok(self.templates.len() - 1)
    }

    fn send(&self, message: &[u8], fds: &[RawFd]) -> Result<(), SpawnError> {
        let rights = [ControlMessage::ScmRights(fds)];
        let rights: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(message)],
            rights,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(drop)
        .map_err(|e| match e {
            nix::errno::Errno::EAGAIN => timed_out("it took no order"),
            e => SpawnError::Spawner(e.into()),
        })
    }
}

/// The spawner did not do `what` within [`ANSWER_TIMEOUT`].
fn timed_out(what: &str) -> SpawnError {
    SpawnError::Spawner(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} within {} s", ANSWER_TIMEOUT.as_secs()),
    ))
}

/// A template as the spawner keeps it: decoded, its environment built, ready to clone.
struct Prepared {
    template: ChildTemplate,
    /// What `env` and `slots` point into.
    _environment: Environment,
    /// The environment's pointer array, for `environ`.
    env: Vec<*const libc::c_char>,
    /// Its slots: the process uid's, then LISTEN_PID's if any.
    slots: Vec<*mut libc::c_char>,
    /// An inetd template's adapter, started as a `CLONE_VM` child; `None` for the others (and
    /// an inetd template the adapter cannot take, which is forked).
    adapter: Option<AdapterTemplate>,
}

impl Prepared {
    /// Decodes a template; `None` when it is not one (a spawn of it is answered EINVAL).
    fn new(text: &[u8]) -> Option<Prepared> {
        let template: ChildTemplate = ron::from_str(std::str::from_utf8(text).ok()?).ok()?;
        // The destinations alone decide whether a plan exists (none is negative, none
        // repeats), whatever fds come with a spawn.
        let moves: Vec<(RawFd, RawFd)> = template.destinations.iter().map(|&to| (0, to)).collect();
        fdplan::plan_fd_moves(&moves).ok()?;
        let slots: &[&str] = if template.listen_pid {
            &[PROCESS_UID, LISTEN_PID]
        } else {
            &[PROCESS_UID]
        };
        let mut environment = Environment::new(&template.env, slots).ok()?;
        let (env, slots) = environment.pointers();
        let adapter = AdapterTemplate::new(&template);
        Some(Prepared {
            template,
            _environment: environment,
            env,
            slots,
            adapter,
        })
    }
}

/// What an inetd adapter needs of its template, resolved when the template comes: nothing of
/// it is written again while an adapter may read it.
struct AdapterTemplate {
    /// The program, its arguments and its environment.
    program: inetd::Program,
    /// Where each of the adapter's fds is among a spawn's fds (their index).
    listeners: Vec<usize>,
    status: usize,
    master_dead: usize,
    log: usize,
    /// shutdown_clients.
    die_with_master: bool,
    /// Its name (`comm`): the title's last part.
    name: CString,
    /// RLIMIT_AS and RLIMIT_DATA (0: none).
    vsz_limit: u64,
    /// The identities it takes in order: drop_priv_before_exec's, then `ROOST_RESTRICT_*`'s.
    identities: Vec<crate::runtime::PreparedIdentity>,
}

impl AdapterTemplate {
    /// `None` when the template is not an inetd one or its adapter would not fit
    /// ([`inetd::MAX_LISTENERS`], a NUL in a string): it is then forked as before.
    fn new(template: &ChildTemplate) -> Option<AdapterTemplate> {
        if template.builtin != "inetd" {
            return None;
        }
        let get = |name: &str| {
            if name == PROCESS_UID {
                // Each spawn's own; the adapter gets it as a number.
                return Some("0".to_owned());
            }
            template.env.iter().find_map(|v| {
                v.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_owned)
            })
        };
        let env = crate::runtime::ChildEnv::from_lookup(get, 0).ok()?;
        let index = |fd: RawFd| template.destinations.iter().position(|&d| d == fd);
        let listeners: Vec<usize> = env
            .listeners
            .iter()
            .map(|&fd| index(fd))
            .collect::<Option<_>>()?;
        if listeners.len() > inetd::MAX_LISTENERS {
            return None;
        }
        let program =
            inetd::Program::new(&template.args, template.env.iter().map(|v| v.as_bytes())).ok()?;
        let short = template.title.rsplit('/').next().unwrap_or(&template.title);
        let mut identities = Vec::new();
        for identity in [
            template.identity.clone(),
            Some(crate::runtime::restricted_identity(get)),
        ]
        .into_iter()
        .flatten()
        {
            identities.push(crate::runtime::PreparedIdentity::new(&identity).ok()?);
        }
        Some(AdapterTemplate {
            program,
            listeners,
            status: index(env.status_fd)?,
            master_dead: index(env.master_dead_fd)?,
            log: index(libc::STDERR_FILENO)?,
            die_with_master: env.die_with_master,
            name: CString::new(short).ok()?,
            vsz_limit: template.vsz_limit,
            identities,
        })
    }
}

/// `roost --builtin spawner`: serves the master until it closes the socket.
pub fn main() -> i32 {
    let Some(title) = TitleArea::find() else {
        eprintln!("roost: Error: spawner: /proc/self/stat has no argument area");
        return 1;
    };
    // Its own title alone, without the room left for its children's after it.
    if let Some(own) = std::env::args().next() {
        title.set(&own);
    }
    // SAFETY: the master placed the socket at fd 3 for this process alone. Nothing above it
    // is ours: what the master's own parent let it inherit (a build's jobserver pipe) goes.
    let socket = unsafe {
        libc::close_range((SOCKET_FD + 1) as libc::c_uint, libc::c_uint::MAX, 0);
        OwnedFd::from_raw_fd(SOCKET_FD)
    };
    // What a crashing adapter must not take down with it: a core dump kills every process
    // that shares the memory of the one dumping, so none is dumped (the memory holds every
    // service's template too, which nothing should read through /proc or ptrace). An exec
    // gives each program its own memory and its own dumpable flag again.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // Without a signalfd, inetd adapters are forked as the other built-ins are.
    let mut adapters = crate::runtime::SignalFd::open(&inetd::SIGNALS)
        .ok()
        .map(Adapters::new);
    let mut templates: Vec<Option<Rc<Prepared>>> = Vec::new();
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    // On the stack: a spawn writes only the few bytes it reads.
    let mut buffer = [0u8; MAX_MESSAGE];
    loop {
        let (len, fds) = match receive(&socket, &mut buffer, &mut cmsg) {
            Ok(Some(received)) => received,
            Ok(None) => return 0,
            Err(error) => {
                eprintln!("roost: Error: spawner: {error}");
                return 1;
            }
        };
        let message = &buffer[..len];
        let answer = match message.first() {
            Some(&TEMPLATE) => {
                templates.push(Prepared::new(&message[1..]).map(Rc::new));
                continue;
            }
            Some(&FORGET) => {
                templates.clear();
                continue;
            }
            Some(&SPAWN) if message.len() == 9 => {
                let number = u32::from_le_bytes([message[1], message[2], message[3], message[4]]);
                let uid = u32::from_le_bytes([message[5], message[6], message[7], message[8]]);
                match (templates.get(number as usize), adapters.as_mut()) {
                    (Some(Some(prepared)), _)
                        if prepared.template.destinations.len() != fds.len() =>
                    {
                        -libc::EINVAL
                    }
                    (Some(Some(prepared)), Some(adapters)) if prepared.adapter.is_some() => {
                        adapters.spawn(prepared, uid, fds.as_slice())
                    }
                    (Some(Some(prepared)), _) => spawn_child(prepared, uid, &fds, &title),
                    _ => -libc::EINVAL,
                }
            }
            _ => -libc::EINVAL,
        };
        drop(fds);
        if nix::sys::socket::send(
            socket.as_raw_fd(),
            &answer.to_le_bytes(),
            MsgFlags::MSG_NOSIGNAL,
        )
        .is_err()
        {
            return 0;
        }
    }
}

/// The stacks of the inetd adapters, which run in the spawner's memory until they exec.
struct Adapters {
    slots: Vec<Slot>,
    /// A signalfd of [`inetd::SIGNALS`]: each adapter reads its own signals from it.
    signals: crate::runtime::SignalFd,
    /// The signals whose disposition an adapter resets (bit N for signal N).
    reset_signals: u32,
}

/// One adapter's stack, and what it reads while it runs on it.
struct Slot {
    stack: Stack,
    /// At a fixed address while the adapter runs (the slot itself may move); freed only
    /// once the adapter is done with it (`Drop`).
    shared: std::mem::ManuallyDrop<Box<Shared>>,
    /// The template the adapter reads, kept until it is done.
    template: Option<Rc<Prepared>>,
}

/// What the spawner hands an adapter, and the word the kernel clears when the adapter leaves
/// the spawner's memory.
struct Shared {
    /// The adapter's tid while it runs here; 0 once it exec'd or exited
    /// (`CLONE_CHILD_CLEARTID`), when the slot is free again.
    tid: AtomicU32,
    /// Its fds, process uid and template.
    job: Job,
}

struct Job {
    fds: inetd::Fds,
    process_uid: u32,
    template: *const Prepared,
    /// [`Adapters::reset_signals`].
    reset_signals: u32,
}

/// Free stacks kept for the next adapters; more are unmapped.
const FREE_SLOTS_KEPT: usize = 16;

impl Adapters {
    fn new(signals: crate::runtime::SignalFd) -> Adapters {
        Adapters {
            slots: Vec::new(),
            signals,
            // SIGPIPE, which the Rust runtime ignores, and any the master ignored (an ignored
            // signal stays ignored across exec): one call each, where resetting every signal
            // took 29. The spawner sets no disposition after it starts.
            reset_signals: crate::spawn::changed_dispositions(),
        }
    }

    /// Starts an adapter of `prepared` (an inetd template); returns its pid, or minus the errno.
    fn spawn(&mut self, prepared: &Rc<Prepared>, process_uid: u32, fds: &[RawFd]) -> i32 {
        let Some(adapter) = prepared.adapter.as_ref() else {
            return -libc::EINVAL;
        };
        self.release();
        let mut listeners = [-1; inetd::MAX_LISTENERS];
        for (to, &from) in listeners.iter_mut().zip(&adapter.listeners) {
            *to = fds[from];
        }
        let job = Job {
            fds: inetd::Fds {
                listeners,
                listener_count: adapter.listeners.len(),
                status: fds[adapter.status],
                master_dead: fds[adapter.master_dead],
                log: fds[adapter.log],
                signals: self.signals.fd.as_raw_fd(),
            },
            process_uid,
            template: Rc::as_ptr(prepared),
            reset_signals: self.reset_signals,
        };
        let index = match self.slots.iter().position(Slot::is_free) {
            Some(index) => {
                self.slots[index].shared.job = job;
                index
            }
            None => match Stack::new() {
                Ok(stack) => {
                    self.slots.push(Slot {
                        stack,
                        shared: std::mem::ManuallyDrop::new(Box::new(Shared {
                            tid: AtomicU32::new(0),
                            job,
                        })),
                        template: None,
                    });
                    self.slots.len() - 1
                }
                Err(error) => return -error.raw_os_error().unwrap_or(libc::ENOMEM),
            },
        };
        let slot = &mut self.slots[index];
        slot.shared.tid.store(u32::MAX, Ordering::Release);
        let job: *const Job = &slot.shared.job;
        let tid: *const AtomicU32 = &slot.shared.tid;
        // SAFETY: the adapter runs `adapter_main` on its own stack, in this memory, reading
        // only `job` and the template, both kept unchanged until the kernel clears `tid`
        // (`release`). It starts with every signal blocked, as posix_spawn's child does: none
        // runs a handler of the spawner's before it has set its own dispositions. The
        // spawner's mask is restored at once. The adapter's parent is the master.
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, &all, &mut mask);
            let pid = libc::clone(
                adapter_main,
                slot.stack.top(),
                libc::CLONE_VM | libc::CLONE_PARENT | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD,
                job.cast_mut().cast(),
                std::ptr::null_mut::<libc::pid_t>(),
                std::ptr::null_mut::<libc::c_void>(),
                tid.cast_mut(),
            );
            let errno = fdplan::errno();
            libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
            if pid < 0 {
                slot.shared.tid.store(0, Ordering::Release);
                return -errno;
            }
            pid
        };
        slot.template = Some(Rc::clone(prepared));
        pid
    }

    /// Lets go of the templates of the adapters that are done, and of the free stacks beyond
    /// [`FREE_SLOTS_KEPT`].
    fn release(&mut self) {
        let mut free = 0;
        self.slots.retain_mut(|slot| {
            if !slot.is_free() {
                return true;
            }
            slot.template = None;
            free += 1;
            free <= FREE_SLOTS_KEPT
        });
    }
}

impl Slot {
    fn is_free(&self) -> bool {
        self.shared.tid.load(Ordering::Acquire) == 0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.is_free() {
            // SAFETY: dropped once, here, and no adapter reads it any more.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.shared) };
        } else {
            // The spawner is leaving while an adapter still runs on this stack and reads its
            // job and template: they all stay for it (the memory lives on with the adapters;
            // a free would write the allocator's own words over the job).
            std::mem::forget(self.template.take());
            std::mem::forget(std::mem::replace(&mut self.stack, Stack::EMPTY));
        }
    }
}

/// An adapter's stack: anonymous memory below a guard page.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    /// The stack an adapter runs on: its poll loop, core's child machine and a log line.
    const SIZE: usize = 256 * 1024;
    const GUARD: usize = 4096;
    const EMPTY: Stack = Stack {
        base: std::ptr::null_mut(),
        len: 0,
    };

    fn new() -> io::Result<Stack> {
        let len = Stack::SIZE + Stack::GUARD;
        // SAFETY: a new private anonymous mapping, ours alone; its lowest page becomes the
        // guard that an overflow faults on.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Stack { base, len };
            if libc::mprotect(base, Stack::GUARD, libc::PROT_NONE) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// Where the stack starts (it grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, whose size is a multiple of the page size.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.base.is_null() {
            // SAFETY: our mapping, which no adapter runs on any more.
            unsafe { libc::munmap(self.base, self.len) };
        }
    }
}

/// An adapter: becomes what its template says, then waits for its connection and execs its
/// program ([`inetd::serve`]). It shares the spawner's memory, so it allocates nothing and
/// writes nothing but its stack (module docs of [`crate::inetd`]).
extern "C" fn adapter_main(job: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `Adapters::spawn` passed its slot's job, which stays unchanged (with the
    // template it points to) until this process has exec'd or exited.
    let job = unsafe { &*job.cast::<Job>() };
    let template = unsafe { &*job.template };
    let code = match template.adapter.as_ref() {
        Some(adapter) => run_adapter(job, adapter),
        None => EXIT_EXEC_FAILED,
    };
    // SAFETY: leaves without running anything of the spawner's.
    unsafe { libc::_exit(code) }
}

fn run_adapter(job: &Job, adapter: &AdapterTemplate) -> i32 {
    // SAFETY: this process is the spawner's clone with a copy of its fds, dispositions and
    // limits (not its memory): what it sets here is its own. These calls cannot fail with
    // these arguments, so they leave errno (the spawner's too) alone. The spawner's socket
    // is closed so that a spawner that dies is seen at once.
    unsafe {
        crate::spawn::reset_dispositions(job.reset_signals);
        // Blocked since the clone: from here every other signal has its default effect, and
        // the protocol's are read from the signalfd.
        let protocol = crate::runtime::sigset(&inetd::SIGNALS);
        libc::sigprocmask(libc::SIG_SETMASK, &protocol, std::ptr::null_mut());
        drop(OwnedFd::from_raw_fd(SOCKET_FD));
        crate::spawn::set_vsz_limit(adapter.vsz_limit);
    }
    // A group, not a session: the spawner's session has no controlling terminal.
    let _ = rustix::process::setpgid(None, None);
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    for identity in &adapter.identities {
        if let Err((step, error)) = identity.take() {
            inetd::say(
                job.fds.log,
                "Fatal",
                format_args!(
                    "inetd: dropping privileges failed: {step}() failed: {}",
                    inetd::describe(error)
                ),
            );
            return EXIT_EXEC_FAILED;
        }
    }
    let _ = rustix::thread::set_name(&adapter.name);
    inetd::serve(
        &job.fds,
        &adapter.program,
        roost_core::ids::ProcessUid(job.process_uid),
        adapter.die_with_master,
    )
}

/// The fds that came with a message, closed when dropped. Kept out of the heap: a spawn writes
/// as few pages as it can (each is copied again after the clone).
struct ReceivedFds {
    fds: [RawFd; MAX_FDS],
    len: usize,
}

impl ReceivedFds {
    fn len(&self) -> usize {
        self.len
    }

    fn as_slice(&self) -> &[RawFd] {
        &self.fds[..self.len]
    }
}

impl Drop for ReceivedFds {
    fn drop(&mut self) {
        for fd in self.as_slice() {
            // SAFETY: SCM_RIGHTS gave us these fds; nothing else owns them.
            drop(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
}

/// Reads one message into `buffer` and its fds; `None` when the master is gone.
fn receive(
    socket: &OwnedFd,
    buffer: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<Option<(usize, ReceivedFds)>> {
    loop {
        let mut iov = [IoSliceMut::new(buffer)];
        let message = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => message,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
        };
        let mut fds = ReceivedFds {
            fds: [-1; MAX_FDS],
            len: 0,
        };
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                for fd in received {
                    if fds.len < MAX_FDS {
                        fds.fds[fds.len] = fd;
                        fds.len += 1;
                    } else {
                        // SAFETY: ours, and more than any child takes.
                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        if message.bytes == 0 {
            return Ok(None);
        }
        return Ok(Some((message.bytes, fds)));
    }
}

/// Clones this process as a child of the master; returns its pid, or minus the errno.
fn spawn_child(prepared: &Prepared, uid: u32, fds: &ReceivedFds, title: &TitleArea) -> i32 {
    // SAFETY: a fork-like clone (no CLONE_VM: the child gets a copy of this single-threaded
    // process) whose parent is the master (CLONE_PARENT). The child never returns here.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match pid {
        0 => child(prepared, uid, fds.as_slice(), title),
        pid if pid > 0 => pid as i32,
        _ => -fdplan::errno(),
    }
}

/// The child: becomes what the template says, then runs the built-in.
fn child(prepared: &Prepared, uid: u32, fds: &[RawFd], title: &TitleArea) -> ! {
    let template = &prepared.template;
    let moves: Vec<(RawFd, RawFd)> = fds
        .iter()
        .copied()
        .zip(template.destinations.iter().copied())
        .collect();
    // SAFETY: this process has one thread; everything below is what the exec path's child
    // does before execve, then the built-in's main as `roost --builtin` would run it.
    unsafe {
        // The spawner's session has no controlling terminal (`Spawner::start`).
        crate::spawn::reset_process_state(false);
        // As the Rust runtime leaves it for every `main`, the exec path's included: a write to
        // a closed socket is an EPIPE error, not a death.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        // The template's destinations were checked when it came: the plan exists.
        let placed = fdplan::plan_fd_moves(&moves).map(|ops| fdplan::execute(&ops));
        if !matches!(placed, Ok(Ok(()))) {
            libc::_exit(EXIT_EXEC_FAILED);
        }
        // Only the planned fds survive. No exec will close the rest (the received copies, the
        // spawner's socket), so every other one is closed here.
        let highest = template
            .destinations
            .iter()
            .copied()
            .max()
            .unwrap_or(2)
            .max(2);
        for fd in 0..highest {
            if !template.destinations.contains(&fd) {
                libc::close(fd);
            }
        }
        libc::close_range((highest + 1) as libc::c_uint, libc::c_uint::MAX, 0);
        libc::umask(0o077);
        crate::spawn::set_vsz_limit(template.vsz_limit);
        // The environment was built when the template came: the child writes its two
        // numbers into its own copy and points `environ` at it (not a setenv per variable,
        // each a malloc, a search and a copy of the array, in a process whose every first
        // write to a page copies it). It stays: `child` never returns.
        write_number(prepared.slots[0], u64::from(uid));
        if let Some(&slot) = prepared.slots.get(1) {
            write_number(slot, libc::getpid() as u64);
        }
        crate::spawn::environ = prepared.env.as_ptr();
    }
    if let Err(error) = take_identity(template.identity.as_ref()) {
        crate::builtin::say("Fatal", &format!("{}: {error}", template.builtin));
        // SAFETY: leaves without running anything of the spawner's.
        unsafe { libc::_exit(EXIT_EXEC_FAILED) };
    }
    title.set(&template.title);
    let code = crate::builtin::run(&template.builtin, &template.args);
    std::process::exit(code);
}

/// The identity of drop_priv_before_exec, as the exec path takes it.
fn take_identity(identity: Option<&Identity>) -> io::Result<()> {
    let Some(identity) = identity else {
        return Ok(());
    };
    crate::runtime::PreparedIdentity::new(identity)?.apply()
}

/// The spawner's argument area (what /proc/PID/cmdline and `ps` show), which each child
/// overwrites with its title, as the original's process_title_set does.
struct TitleArea {
    start: usize,
    end: usize,
}

impl TitleArea {
    /// arg_start and arg_end: fields 48 and 49 of /proc/self/stat.
    fn find() -> Option<TitleArea> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        // Fields after the command: state is field 3, so field N is at index N - 3.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let start: usize = fields.get(48 - 3)?.parse().ok()?;
        let end: usize = fields.get(49 - 3)?.parse().ok()?;
        (end > start).then_some(TitleArea { start, end })
    }

    /// Writes `title` over the area, NUL-padded, and names the thread after its last part.
    fn set(&self, title: &str) {
        let room = self.end - self.start;
        let bytes = title.as_bytes();
        let len = bytes.len().min(room - 1);
        // SAFETY: [start, end) is this process's own argument area (from the kernel), which
        // nothing reads any more: the spawner's arguments were parsed before it served.
        unsafe {
            let area = self.start as *mut u8;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), area, len);
            std::ptr::write_bytes(area.add(len), 0, room - len);
        }
        let short = title.rsplit('/').next().unwrap_or(title);
        if let Ok(name) = std::ffi::CString::new(short) {
            let _ = nix::sys::prctl::set_name(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_resets_exactly_the_dispositions_the_kernel_lists_as_changed() {
        // /proc's masks have bit N-1 for signal N; ours bit N.
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let mask = |field: &str| -> u64 {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .unwrap_or_else(|| panic!("no {field}"));
            u64::from_str_radix(line.trim(), 16).expect("hex")
        };
        let kernel = ((mask("SigIgn:") | mask("SigCgt:")) & 0x7fff_ffff) << 1;
        let ours = crate::spawn::changed_dispositions();
        assert_eq!(u64::from(ours), kernel, "{ours:#x} against {kernel:#x}");
        assert_ne!(
            ours & (1 << libc::SIGPIPE),
            0,
            "the Rust runtime ignores SIGPIPE"
        );
        assert_eq!(ours & (1 << libc::SIGKILL | 1 << libc::SIGSTOP), 0);
    }

    #[test]
    fn a_template_round_trips_through_ron() {
        let order = ChildTemplate {
            builtin: "pop3".into(),
            args: vec![],
            title: "roost/pop3".into(),
            env: vec!["ROOST_SERVICE=pop3".into(), "TZ=UTC".into()],
            listen_pid: true,
            destinations: vec![0, 1, 2, 3, 4],
            vsz_limit: 256 << 20,
            identity: Some(Identity {
                uid: Some(65534),
                gid: Some(65534),
                groups: vec![1, 2],
                chroot: Some("/var/empty".into()),
            }),
        };
        let text = ron::to_string(&order).expect("encodes");
        assert_eq!(
            ron::from_str::<ChildTemplate>(&text).expect("decodes"),
            order
        );
    }
}
