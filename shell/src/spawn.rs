//! Creating a child: everything planned before the clone, and a child side that only carries out
//! the plan with raw syscalls and async-signal-safe calls and `execve`s. The child is a vfork-style
//! clone (shared memory, the master suspended until the exec), as posix_spawn makes them.
//!
//! The fd layout is DESIGN.md's "Child fds": 0 and 1 are /dev/null (1 is the terminal with -F),
//! 2 is the service's log pipe, listeners start at 3 (unix, fifo, inet, each in configuration
//! order) and are announced the systemd way (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`), then
//! roost's own fds follow with their numbers in `ROOST_*` variables. The environment is wiped
//! but for `import_environment`.
//!
//! The same plan serves the spawner (`crate::spawner`), which forks the children of non-login
//! built-ins instead: [`SpawnPlan::order`] is this child as its order.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use roost_core::ids::{Pid, ProcessUid};
use roost_core::settings::ServiceSettings;
use roost_core::setup::{ListenerConfig, ListenerKind, ServiceConfig};

use nix::sched::CloneFlags;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

use crate::fdplan::{self, FdOp};
use crate::spawner::{ChildTemplate, SpawnOrder};

/// The programs built into the roost binary, run by re-executing it in that mode (login
/// services) or forked by the spawner (the others, `crate::spawner`).
pub use crate::builtin::BUILTINS;

/// The exit status of a child that could not exec (reference §2.4: "exec() failed").
pub const EXIT_EXEC_FAILED: i32 = 84;

/// The stack the child runs on between the clone and the exec: a few frames of
/// `child_after_fork` and of libc's syscall wrappers.
const CHILD_STACK: usize = 64 * 1024;

/// Where a service's executable is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// A mode of the roost binary: `roost --builtin NAME ARGS...`.
    Builtin {
        /// The built-in's name.
        name: String,
        /// The rest of the executable line.
        args: Vec<String>,
    },
    /// A file to exec, and its arguments.
    External {
        /// The program.
        path: PathBuf,
        /// Its arguments (without argv[0]).
        args: Vec<String>,
    },
}

impl Program {
    /// The inetd adapter: it reads no settings, and its program gets none (docs/child-protocol.md).
    pub fn is_inetd(&self) -> bool {
        matches!(self, Program::Builtin { name, .. } if name == "inetd")
    }
}

/// Finds the program of an `executable` setting (DESIGN.md "executable"): a built-in's name, an
/// absolute path, or a path relative to libexec_dir. `None` if nothing runnable is there.
pub fn resolve_program(executable: &str, libexec_dir: &Path) -> Option<Program> {
    let mut words = executable.split_whitespace();
    let first = words.next()?;
    let args: Vec<String> = words.map(str::to_owned).collect();
    if BUILTINS.contains(&first) {
        // `auth -w` (Dovecot's auth-worker) is not a mode roost has: left out like any
        // program it cannot run.
        if !crate::builtin::accepts(first, &args) {
            return None;
        }
        return Some(Program::Builtin {
            name: first.to_owned(),
            args,
        });
    }
    let path = if first.starts_with('/') {
        PathBuf::from(first)
    } else {
        libexec_dir.join(first)
    };
    is_executable(&path).then_some(Program::External { path, args })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The process title: `roost/<service>`, or `roost-<instance>/<service>`.
pub fn process_title(instance_name: &str, service: &str) -> String {
    if instance_name.is_empty() || instance_name == "roost" {
        format!("roost/{service}")
    } else if instance_name.starts_with("roost") {
        format!("{instance_name}/{service}")
    } else {
        format!("roost-{instance_name}/{service}")
    }
}

/// The identity a child takes before exec (foreign programs) or after (roost-aware ones).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The uid to switch to.
    pub uid: Option<u32>,
    /// The primary gid.
    pub gid: Option<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The chroot directory (absolute).
    pub chroot: Option<PathBuf>,
}

/// The fds a child receives, as the master holds them now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildFds {
    /// For fd 0.
    pub stdin: RawFd,
    /// For fd 1.
    pub stdout: RawFd,
    /// For fd 2: the service's log pipe.
    pub stderr: RawFd,
    /// The listeners, in order, with their configuration.
    pub listeners: Vec<(RawFd, ListenerConfig)>,
    /// The status pipe's write end.
    pub status: RawFd,
    /// The master-dead pipe's write end.
    pub master_dead: RawFd,
    /// The login "all processes full" notify file (login services).
    pub login_notify: Option<RawFd>,
    /// A connection to anvil made for this child (services with a protocol).
    pub anvil: Option<RawFd>,
    /// The sealed settings memfd.
    pub settings: Option<RawFd>,
    /// The log service only: the read ends of the log pipes it reads.
    pub log_pipes: Vec<LogPipeFd>,
}

/// A log pipe's read end, for the log process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPipeFd {
    /// The read end, as the master holds it.
    pub fd: RawFd,
    /// The service whose children write to it.
    pub service: String,
    /// A writer may outlive the log process's generation (anvil's): it does not wait for
    /// the pipe's end before it exits.
    pub lasting: bool,
}

/// A child's environment as execve takes it: `NAME=value` strings, NUL-terminated, and
/// *slots*: variables whose number only the child can write (`LISTEN_PID`, its own pid after
/// the fork), or that change from one child to the next of the same plan (the spawner's
/// `ROOST_PROCESS_UID`).
#[derive(Debug)]
pub(crate) struct Environment {
    vars: Vec<Vec<u8>>,
    /// Each slot's index in `vars`, with the length of its `NAME=`.
    slots: Vec<(usize, usize)>,
}

/// The variable that tells a child its pid, for its listeners (systemd's convention).
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";

/// The variable that tells a child the uid to echo in its status records.
pub(crate) const PROCESS_UID: &str = "ROOST_PROCESS_UID";

/// The room a slot has for its number: any u64, and the NUL.
const SLOT_ROOM: usize = 21;

impl Environment {
    /// The variables of `vars`, then one slot per name of `slots`, in that order.
    pub(crate) fn new(vars: &[String], slots: &[&str]) -> Result<Environment, PlanError> {
        let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(vars.len() + slots.len() + 1);
        for var in vars {
            bytes.push(cstring(var)?.into_bytes_with_nul());
        }
        let mut indexes = Vec::with_capacity(slots.len());
        for name in slots {
            let mut slot = cstring(name)?.into_bytes();
            slot.push(b'=');
            indexes.push((bytes.len(), slot.len()));
            slot.resize(slot.len() + SLOT_ROOM, 0);
            bytes.push(slot);
        }
        Ok(Environment {
            vars: bytes,
            slots: indexes,
        })
    }

    /// The variables as text (slots without their numbers).
    pub(crate) fn vars(&self) -> Vec<String> {
        self.vars
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
            })
            .collect()
    }

    /// The NULL-terminated pointer array for execve or `environ`, and where each slot's
    /// number goes (for [`write_number`]), in the order of the slots. The pointers are valid
    /// as long as `self` is neither dropped nor changed.
    pub(crate) fn pointers(&mut self) -> (Vec<*const libc::c_char>, Vec<*mut libc::c_char>) {
        let slots = self
            .slots
            .iter()
            .map(|&(i, name)| {
                // SAFETY: `name` is within the slot, which has SLOT_ROOM bytes after it.
                unsafe { self.vars[i].as_mut_ptr().add(name).cast::<libc::c_char>() }
            })
            .collect();
        let pointers = self
            .vars
            .iter()
            .map(|v| v.as_ptr().cast())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        (pointers, slots)
    }
}

unsafe extern "C" {
    /// The C library's environment, which `std::env` reads (and `set_var` replaces): a
    /// NULL-terminated array of `NAME=value` strings.
    pub(crate) static mut environ: *const *const libc::c_char;
}

/// Everything one child needs, computed before fork.
#[derive(Debug)]
pub struct SpawnPlan {
    path: CString,
    argv: Vec<CString>,
    env: Environment,
    fd_ops: Vec<FdOp>,
    highest_fd: RawFd,
    identity_before_exec: Option<Identity>,
    vsz_limit: u64,
    /// A foreign program under shutdown_clients = yes: it cannot see the master-dead pipe, so
    /// the kernel sends it SIGTERM when the master is gone (even by `kill -9`).
    dies_with_master: bool,
    /// The same child as an order for the spawner (built-ins only), and the fds it sends.
    order: Option<(SpawnOrder, Vec<RawFd>)>,
}

/// Why a child could not be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A string with a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(String),
    /// The fd moves contradict each other.
    #[error(transparent)]
    Fds(#[from] fdplan::FdPlanError),
}

fn cstring(text: &str) -> Result<CString, PlanError> {
    CString::new(text).map_err(|_| PlanError::Nul(text.chars().take(40).collect()))
}

/// What the plan is made from.
pub struct PlanInput<'a> {
    /// The roost binary (for built-ins).
    pub roost_binary: &'a Path,
    /// The program.
    pub program: &'a Program,
    /// The process title (argv[0]).
    pub title: &'a str,
    /// The service as written.
    pub settings: &'a ServiceSettings,
    /// Its effective configuration.
    pub config: &'a ServiceConfig,
    /// The process uid to echo.
    pub uid: ProcessUid,
    /// Variables kept from the master's environment.
    pub imported: Vec<(String, String)>,
    /// The fds.
    pub fds: ChildFds,
    /// The identity to take (`None`: as the master).
    pub identity: Option<Identity>,
    /// Children die with the master.
    pub shutdown_clients: bool,
}

impl SpawnPlan {
    /// Plans one child.
    pub fn new(input: PlanInput<'_>) -> Result<SpawnPlan, PlanError> {
        let (path, mut argv) = match input.program {
            Program::Builtin { name, args } => {
                let mut argv = vec![input.title.to_owned(), "--builtin".to_owned(), name.clone()];
                argv.extend(args.iter().cloned());
                (input.roost_binary.to_string_lossy().into_owned(), argv)
            }
            Program::External { path, args } => {
                let mut argv = vec![input.title.to_owned()];
                argv.extend(args.iter().cloned());
                (path.to_string_lossy().into_owned(), argv)
            }
        };
        if argv.is_empty() {
            argv.push(input.title.to_owned());
        }
        let fds = &input.fds;
        let mut moves: Vec<(RawFd, RawFd)> = vec![(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)];
        let mut next: RawFd = 3;
        let mut names = Vec::new();
        let mut flags = Vec::new();
        for (fd, listener) in &fds.listeners {
            moves.push((*fd, next));
            next += 1;
            names.push(listener.name.replace(':', "_"));
            let mut flag = listener.name.replace([' ', ':'], "_");
            if let ListenerKind::Inet { ssl, haproxy, .. } = &listener.kind {
                if *ssl {
                    flag.push_str(":ssl");
                }
                if *haproxy {
                    flag.push_str(":haproxy");
                }
            }
            flags.push(flag);
        }
        let mut env: Vec<String> = input
            .imported
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let listen_fds = fds.listeners.len();
        if listen_fds > 0 {
            env.push(format!("LISTEN_FDS={listen_fds}"));
            env.push(format!("LISTEN_FDNAMES={}", names.join(":")));
        }
        env.push(format!("ROOST_LISTENERS={}", flags.join(" ")));
        let mut own = |name: &str, fd: RawFd, env: &mut Vec<String>| {
            moves.push((fd, next));
            env.push(format!("ROOST_{name}_FD={next}"));
            next += 1;
        };
        own("STATUS", fds.status, &mut env);
        own("MASTER_DEAD", fds.master_dead, &mut env);
        if let Some(fd) = fds.login_notify {
            own("LOGIN_NOTIFY", fd, &mut env);
        }
        if let Some(fd) = fds.anvil {
            own("ANVIL", fd, &mut env);
        }
        if let Some(fd) = fds.settings {
            own("SETTINGS", fd, &mut env);
        }
        if !fds.log_pipes.is_empty() {
            let mut named = Vec::with_capacity(fds.log_pipes.len());
            for pipe in &fds.log_pipes {
                moves.push((pipe.fd, next));
                let lasting = if pipe.lasting { ":lasting" } else { "" };
                named.push(format!("{}:{next}{lasting}", pipe.service));
                next += 1;
            }
            env.push(format!("ROOST_LOG_FDS={}", named.join(" ")));
        }
        let config = input.config;
        env.push(format!("ROOST_SERVICE={}", config.name));
        env.push(format!("ROOST_CLIENT_LIMIT={}", config.client_limit));
        env.push(format!("ROOST_PROCESS_LIMIT={}", config.process_limit));
        env.push(format!(
            "ROOST_PROCESS_MIN_AVAIL={}",
            config.process_min_avail
        ));
        env.push(format!("ROOST_SERVICE_COUNT={}", config.service_count));
        env.push(format!(
            "ROOST_IDLE_KILL={}",
            config
                .idle_kill
                .map(|d| d.as_secs().to_string())
                .unwrap_or_else(|| "never".to_owned())
        ));
        env.push(format!(
            "ROOST_SHUTDOWN_CLIENTS={}",
            if input.shutdown_clients { "yes" } else { "no" }
        ));
        env.push(format!(
            "ROOST_SERVICE_TYPE={}",
            config.service_type.as_str()
        ));
        // Roost-aware children drop privileges themselves after exec, once they opened what
        // they need as root; foreign programs (and drop_priv_before_exec) are dropped before.
        let drop_before = config.foreign || input.settings.drop_priv_before_exec;
        if let (Some(identity), false) = (&input.identity, drop_before) {
            if let Some(uid) = identity.uid {
                env.push(format!("ROOST_RESTRICT_UID={uid}"));
            }
            if let Some(gid) = identity.gid {
                env.push(format!("ROOST_RESTRICT_GID={gid}"));
            }
            if !identity.groups.is_empty() {
                let groups: Vec<String> = identity.groups.iter().map(u32::to_string).collect();
                env.push(format!("ROOST_RESTRICT_GROUPS={}", groups.join(",")));
            }
            if let Some(chroot) = &identity.chroot {
                env.push(format!("ROOST_RESTRICT_CHROOT={}", chroot.display()));
            }
        }
        let highest_fd = next - 1;
        let identity_before_exec = if drop_before {
            input.identity.clone()
        } else {
            None
        };
        // Everything so far is the same for every child of this service and generation: the
        // spawner keeps it as a template. The process uid is each child's own.
        let order = match input.program {
            Program::Builtin { name, args } => Some((
                SpawnOrder {
                    template: ChildTemplate {
                        builtin: name.clone(),
                        args: args.clone(),
                        title: input.title.to_owned(),
                        env: env.clone(),
                        listen_pid: listen_fds > 0,
                        destinations: moves.iter().map(|(_, to)| *to).collect(),
                        vsz_limit: config.vsz_limit,
                        identity: identity_before_exec.clone(),
                    },
                    process_uid: input.uid.0,
                },
                moves.iter().map(|(from, _)| *from).collect(),
            )),
            Program::External { .. } => None,
        };
        env.push(format!("{PROCESS_UID}={}", input.uid.0));
        let slots: &[&str] = if listen_fds > 0 { &[LISTEN_PID] } else { &[] };
        let env_block = Environment::new(&env, slots)?;
        Ok(SpawnPlan {
            path: cstring(&path)?,
            argv: argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?,
            env: env_block,
            fd_ops: fdplan::plan_fd_moves(&moves)?,
            highest_fd,
            identity_before_exec,
            vsz_limit: config.vsz_limit,
            dies_with_master: config.foreign && input.shutdown_clients,
            order,
        })
    }

    /// The environment as planned (tests, and `roost status` debugging).
    pub fn env_vars(&self) -> Vec<String> {
        self.env.vars()
    }

    /// The child as an order for the spawner, with the fds to send in the order of its
    /// destinations; `None` for a program that is not a built-in.
    pub fn order(&self) -> Option<(&SpawnOrder, &[RawFd])> {
        self.order
            .as_ref()
            .map(|(order, fds)| (order, fds.as_slice()))
    }

    /// The file to execute, for messages.
    pub fn path_lossy(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// argv as planned.
    pub fn argv(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Forks and execs. Returns the child's pid and, when the child's set-up or `execve`
    /// failed, the reason: the child writes its errno to a close-on-exec pipe and exits with
    /// status 84, so the parent learns *why* (a successful exec closes the pipe: EOF) while the
    /// exit itself is still reaped and counted as a failed start like any other.
    pub fn spawn(&mut self) -> std::io::Result<(Pid, Option<std::io::Error>)> {
        let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Above every fd the plan touches, scratch copies included, so no dup2 clobbers it.
        let err_floor = self
            .fd_ops
            .iter()
            .map(|FdOp::Dup2 { from, to }| (*from).max(*to))
            .max()
            .unwrap_or(2)
            + 1;
        // Everything the child touches exists now: pointers into owned buffers.
        let argv_ptrs: Vec<*const libc::c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let (mut env_ptrs, slots) = self.env.pointers();
        let listen_pid = slots.first().copied();
        let chroot = match self
            .identity_before_exec
            .as_ref()
            .and_then(|i| i.chroot.as_ref())
        {
            Some(path) => Some(cstring(&path.to_string_lossy()).map_err(std::io::Error::other)?),
            None => None,
        };
        let identity = self.identity_before_exec.clone();
        let err = ExecErrorPipe {
            fd: std::os::fd::AsRawFd::as_raw_fd(&err_write),
            floor: err_floor,
        };
        let (fd_ops, highest_fd, vsz_limit, path) =
            (&self.fd_ops, self.highest_fd, self.vsz_limit, &self.path);
        let master = self
            .dies_with_master
            .then(|| nix::unistd::getpid().as_raw());
        let mut stack = vec![0u8; CHILD_STACK];
        // The child shares the master's memory until it execs (CLONE_VM), and the master waits
        // for that (CLONE_VFORK): no page table is copied and no page of the master's is
        // copied on write, which a fork paid for every child (issue 8: the master's CPU per
        // connection). So no handler of the master's may run on the child's side: every
        // signal is blocked across the clone, and the child resets the dispositions before
        // it unblocks them.
        let mut old_mask = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old_mask),
        )?;
        let own_session = children_lead_sessions();
        // SAFETY: the child runs only `child_after_fork`, which calls raw syscalls and
        // async-signal-safe functions on memory prepared above (writing only the LISTEN_PID
        // buffer, its own) and ends in execve or _exit; the parent is suspended meanwhile.
        let cloned = unsafe {
            nix::sched::clone(
                Box::new(|| {
                    child_after_fork(
                        err,
                        own_session,
                        fd_ops,
                        highest_fd,
                        listen_pid,
                        vsz_limit,
                        identity.as_ref(),
                        master,
                        chroot.as_ref(),
                        path,
                        &argv_ptrs,
                        &mut env_ptrs,
                    )
                }),
                &mut stack,
                CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
                Some(libc::SIGCHLD),
            )
        };
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None)?;
        let pid = cloned?;
        drop(err_write);
        Ok((Pid(pid.as_raw()), read_exec_errno(err_read)))
    }
}

/// Reads the errno a failed child wrote before `_exit(84)`; `None` after a successful exec
/// (the close-on-exec write end is gone: EOF).
fn read_exec_errno(pipe: std::os::fd::OwnedFd) -> Option<std::io::Error> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&pipe, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)))
}

/// Where the child reports a failure before exec.
#[derive(Copy, Clone)]
struct ExecErrorPipe {
    /// The write end as inherited.
    fd: RawFd,
    /// The lowest number it may be moved to, clear of the fd plan.
    floor: RawFd,
}

/// Reports errno on the pipe (if it could be kept) and exits with 84.
///
/// # Safety
/// Only between fork and exec: write and _exit are async-signal-safe.
unsafe fn fail_before_exec(pipe: RawFd) -> ! {
    let errno = fdplan::errno().to_ne_bytes();
    if pipe >= 0 {
        // SAFETY: a 4-byte write from the stack to our own pipe.
        unsafe { libc::write(pipe, errno.as_ptr().cast(), errno.len()) };
    }
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(EXIT_EXEC_FAILED) }
}

/// The child between fork and exec: no allocation, no locks.
#[allow(clippy::too_many_arguments)]
unsafe fn child_after_fork(
    err: ExecErrorPipe,
    own_session: bool,
    fd_ops: &[FdOp],
    highest_fd: RawFd,
    listen_pid: Option<*mut libc::c_char>,
    vsz_limit: u64,
    identity: Option<&Identity>,
    dies_with: Option<libc::pid_t>,
    chroot: Option<&CString>,
    path: &CString,
    argv: &[*const libc::c_char],
    env: &mut [*const libc::c_char],
) -> ! {
    unsafe {
        // The error pipe goes above the plan's fds first, so the dup2s cannot clobber it.
        let pipe = libc::fcntl(err.fd, libc::F_DUPFD_CLOEXEC, err.floor);
        reset_process_state(own_session);
        if fdplan::execute(fd_ops).is_err() {
            fail_before_exec(pipe);
        }
        // Everything else goes: only the planned fds survive.
        // (The error pipe stays until exec closes it.)
        let first = (highest_fd + 1) as libc::c_uint;
        if pipe > highest_fd {
            libc::close_range(first, (pipe - 1) as libc::c_uint, 0);
            libc::close_range((pipe + 1) as libc::c_uint, libc::c_uint::MAX, 0);
        } else {
            libc::close_range(first, libc::c_uint::MAX, 0);
        }
        libc::umask(0o077);
        if let Some(slot) = listen_pid {
            write_number(slot, libc::getpid() as u64);
        }
        set_vsz_limit(vsz_limit);
        if let Some(identity) = identity {
            if let Some(dir) = chroot {
                if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    fail_before_exec(pipe);
                }
            }
            // Raw syscalls, not libc's wrappers: those broadcast the change to every thread
            // of the process, and in a CLONE_VM child "the process" would be the master's.
            if let Some(gid) = identity.gid {
                let groups: &[u32] = &identity.groups;
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                    || libc::syscall(libc::SYS_setgid, gid) != 0
                {
                    fail_before_exec(pipe);
                }
            }
            if let Some(uid) = identity.uid {
                if libc::syscall(libc::SYS_setuid, uid) != 0 {
                    fail_before_exec(pipe);
                }
            }
        }
        // After the identity change, which clears it; kept across execve.
        if let Some(master) = dies_with {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                fail_before_exec(pipe);
            }
            if libc::getppid() != master {
                // The master was killed while it waited for this exec: nobody to serve.
                libc::_exit(0);
            }
        }
        let _ = &env;
        libc::execve(path.as_ptr(), argv.as_ptr(), env.as_ptr());
        fail_before_exec(pipe);
    }
}

/// Whether a new child of the master leads a session of its own rather than only a process
/// group of its own, which keeps a terminal's Ctrl-C (sent to the foreground group) from
/// reaching it as an idle-kill request either way. Only when the master's session has a
/// controlling terminal (`roost -F` in an interactive shell): there a child in a background
/// group that wrote to the terminal would be stopped by its job control (SIGTTOU, under `stty
/// tostop`), and a session of its own has no controlling terminal. A daemon's session, or a
/// systemd service's, has none, and then a group is all a child needs: each session is also a
/// scheduling group (the kernel's autogroups, on by default), which the kernel would make and
/// free with every child. Asked once: a session never gains a controlling terminal it has not
/// got (only its leader could take one, and the master opens no terminal), and one it loses
/// makes a session per child merely unneeded.
pub(crate) fn children_lead_sessions() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        // /dev/tty opens exactly when the caller has a controlling terminal (ENXIO otherwise).
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/tty")
            .is_ok()
    })
}

/// Every classic signal (1 to 31) that has a disposition to reset, as a mask: bit N for signal N.
pub(crate) const ALL_DISPOSITIONS: u32 = !1 & !(1 << libc::SIGKILL) & !(1 << libc::SIGSTOP);

/// Sets the signals of `mask` (bit N for signal N) to their default disposition.
///
/// # Safety
/// Async-signal-safe: for a new child before its exec.
pub(crate) unsafe fn reset_dispositions(mask: u32) {
    for signal in 1..32 {
        if mask & (1 << signal) != 0 {
            // SAFETY: the caller's.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

/// The classic signals whose disposition in this process is not the default, as a mask (bit N
/// for signal N): what a child of a process that changes no disposition after this call has to
/// reset, rather than all of them.
pub(crate) fn changed_dispositions() -> u32 {
    let mut mask = 0;
    for signal in 1..32 {
        if ALL_DISPOSITIONS & (1 << signal) == 0 {
            continue;
        }
        // SAFETY: reads the disposition into a zeroed struct of ours.
        let default = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_DFL
        };
        if !default {
            mask |= 1 << signal;
        }
    }
    mask
}

/// A new child's process state, the same for the exec path and the spawner's children: a
/// process group of its own, or a session when `own_session` ([`children_lead_sessions`]),
/// every disposition the default (SIGPIPE too: SIG_IGN survives exec), and only then an empty
/// mask (everything is blocked since the clone, so no handler of the parent's runs here).
///
/// # Safety
/// Only in a new child before it runs anything else: async-signal-safe calls only.
pub(crate) unsafe fn reset_process_state(own_session: bool) {
    unsafe {
        if own_session {
            libc::setsid();
        } else {
            libc::setpgid(0, 0);
        }
        reset_dispositions(ALL_DISPOSITIONS);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// `vsz_limit` as RLIMIT_AS and RLIMIT_DATA (0: none).
///
/// # Safety
/// Async-signal-safe: for a new child before it runs anything else.
pub(crate) unsafe fn set_vsz_limit(vsz_limit: u64) {
    if vsz_limit > 0 {
        let limit = libc::rlimit {
            rlim_cur: vsz_limit,
            rlim_max: vsz_limit,
        };
        unsafe {
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            libc::setrlimit(libc::RLIMIT_DATA, &limit);
        }
    }
}

/// Writes `value` in decimal, and its terminator, into a slot of an [`Environment`]: no
/// allocation, for a child between fork and exec.
///
/// # Safety
/// `slot` is one [`Environment::pointers`] returned, of an `Environment` still alive.
pub(crate) unsafe fn write_number(slot: *mut libc::c_char, value: u64) {
    let mut digits = [0u8; SLOT_ROOM];
    let mut n = value;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: at most 20 digits and the NUL, within the slot's SLOT_ROOM bytes.
        unsafe { *slot.add(i) = digits[len - 1 - i] as libc::c_char };
    }
    unsafe { *slot.add(len) = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_core::setup::ServiceType;
    use roost_core::time::Duration;

    fn settings() -> ServiceSettings {
        ServiceSettings {
            name: "pop3-login".into(),
            executable: "inetd /bin/cat".into(),
            service_type: "login".into(),
            protocol: String::new(),
            user: String::new(),
            group: String::new(),
            extra_groups: String::new(),
            privileged_group: String::new(),
            chroot: String::new(),
            drop_priv_before_exec: false,
            client_limit: 0,
            service_count: 1,
            process_limit: 0,
            process_min_avail: 0,
            idle_kill: Duration::ZERO,
            vsz_limit: u64::MAX,
            foreign: false,
            unix_listeners: vec![],
            fifo_listeners: vec![],
            inet_listeners: vec![],
        }
    }

    fn config() -> ServiceConfig {
        ServiceConfig {
            name: "pop3-login".into(),
            protocol: "pop3".into(),
            service_type: ServiceType::Login,
            process_limit: 100,
            client_limit: 1,
            service_count: 1,
            process_min_avail: 0,
            idle_kill: Some(Duration::from_secs(60)),
            vsz_limit: 256 << 20,
            foreign: false,
            listeners: vec![],
        }
    }

    fn inet(name: &str, ssl: bool) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            kind: ListenerKind::Inet {
                address: "127.0.0.1".into(),
                port: 1,
                ssl,
                haproxy: !ssl,
                reuse_port: false,
            },
        }
    }

    #[test]
    fn the_plan_follows_the_child_fd_layout_and_announces_listeners_the_systemd_way() {
        let program =
            resolve_program("inetd /bin/cat", Path::new("/nonexistent")).expect("a built-in");
        let settings = settings();
        let config = config();
        let plan = SpawnPlan::new(PlanInput {
            roost_binary: Path::new("/usr/sbin/roost"),
            program: &program,
            title: "roost/pop3-login",
            settings: &settings,
            config: &config,
            uid: ProcessUid(42),
            imported: vec![("TZ".into(), "UTC".into())],
            fds: ChildFds {
                stdin: 10,
                stdout: 10,
                stderr: 11,
                listeners: vec![(20, inet("pop3", false)), (21, inet("pop3s", true))],
                status: 12,
                master_dead: 13,
                login_notify: Some(14),
                anvil: None,
                settings: Some(15),
                log_pipes: Vec::new(),
            },
            identity: Some(Identity {
                uid: Some(65534),
                gid: Some(65534),
                groups: vec![],
                chroot: None,
            }),
            shutdown_clients: true,
        })
        .expect("plans");
        assert_eq!(
            plan.argv(),
            ["roost/pop3-login", "--builtin", "inetd", "/bin/cat"]
        );
        let env = plan.env_vars();
        for expected in [
            "TZ=UTC",
            "LISTEN_FDS=2",
            "LISTEN_FDNAMES=pop3:pop3s",
            "ROOST_LISTENERS=pop3:haproxy pop3s:ssl",
            "ROOST_STATUS_FD=5",
            "ROOST_MASTER_DEAD_FD=6",
            "ROOST_LOGIN_NOTIFY_FD=7",
            "ROOST_SETTINGS_FD=8",
            "ROOST_PROCESS_UID=42",
            "ROOST_CLIENT_LIMIT=1",
            "ROOST_SERVICE_COUNT=1",
            "ROOST_IDLE_KILL=60",
            "ROOST_RESTRICT_UID=65534",
        ] {
            assert!(
                env.iter().any(|v| v == expected),
                "{expected} missing from {env:?}"
            );
        }
        assert!(
            env.iter().any(|v| v == "LISTEN_PID="),
            "a buffer the child fills"
        );
        assert_eq!(plan.highest_fd, 8);
    }

    #[test]
    fn the_log_process_gets_the_log_pipes_after_its_own_fds_named_by_service() {
        let program = resolve_program("log", Path::new("/nonexistent")).expect("a built-in");
        let settings = settings();
        let config = ServiceConfig {
            name: "log".into(),
            service_type: ServiceType::Log,
            ..config()
        };
        let plan = SpawnPlan::new(PlanInput {
            roost_binary: Path::new("/usr/sbin/roost"),
            program: &program,
            title: "roost/log",
            settings: &settings,
            config: &config,
            uid: ProcessUid(1),
            imported: vec![],
            fds: ChildFds {
                stdin: 10,
                stdout: 10,
                stderr: 2,
                listeners: vec![],
                status: 12,
                master_dead: 13,
                login_notify: None,
                anvil: None,
                settings: Some(15),
                log_pipes: vec![
                    LogPipeFd {
                        fd: 30,
                        service: "pop3-login".into(),
                        lasting: false,
                    },
                    LogPipeFd {
                        fd: 31,
                        service: "anvil".into(),
                        lasting: true,
                    },
                ],
            },
            identity: None,
            shutdown_clients: true,
        })
        .expect("plans");
        let env = plan.env_vars();
        for expected in [
            "ROOST_STATUS_FD=3",
            "ROOST_SETTINGS_FD=5",
            "ROOST_LOG_FDS=pop3-login:6 anvil:7:lasting",
        ] {
            assert!(
                env.iter().any(|v| v == expected),
                "{expected} missing from {env:?}"
            );
        }
        assert!(!env.iter().any(|v| v.starts_with("LISTEN_")), "{env:?}");
    }

    #[test]
    fn executables_resolve_to_builtins_absolute_paths_or_libexec_dir() {
        assert_eq!(
            resolve_program("inetd /bin/echo hi", Path::new("/x")),
            Some(Program::Builtin {
                name: "inetd".into(),
                args: vec!["/bin/echo".into(), "hi".into()]
            })
        );
        assert_eq!(
            resolve_program("/bin/sh -c true", Path::new("/x")),
            Some(Program::External {
                path: "/bin/sh".into(),
                args: vec!["-c".into(), "true".into()]
            })
        );
        assert_eq!(
            resolve_program("sh", Path::new("/bin")),
            Some(Program::External {
                path: "/bin/sh".into(),
                args: vec![]
            })
        );
        assert_eq!(resolve_program("imap", Path::new("/nonexistent")), None);
        assert_eq!(resolve_program("", Path::new("/bin")), None);
    }

    #[test]
    fn titles_carry_the_instance_name() {
        assert_eq!(process_title("roost", "imap"), "roost/imap");
        assert_eq!(process_title("mail", "imap"), "roost-mail/imap");
        assert_eq!(process_title("roost-b", "imap"), "roost-b/imap");
    }

    #[test]
    fn slots_take_their_numbers_in_place() {
        let mut env = Environment::new(&["A=1".to_owned()], &["LISTEN_PID", "ROOST_PROCESS_UID"])
            .expect("an environment");
        let (pointers, slots) = env.pointers();
        unsafe {
            write_number(slots[0], 40213);
            write_number(slots[1], u64::MAX);
        }
        let text: Vec<String> = pointers[..3]
            .iter()
            .map(|p| {
                unsafe { std::ffi::CStr::from_ptr(*p) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(
            text,
            [
                "A=1",
                "LISTEN_PID=40213",
                "ROOST_PROCESS_UID=18446744073709551615"
            ]
        );
        assert!(pointers[3].is_null());
        // A shorter number later leaves nothing of the longer one.
        unsafe { write_number(slots[0], 7) };
        assert_eq!(
            unsafe { std::ffi::CStr::from_ptr(pointers[1]) },
            c"LISTEN_PID=7"
        );
    }

    fn spawn_program(path: &str) -> (Pid, Option<std::io::Error>) {
        use std::os::fd::AsRawFd;
        let program = Program::External {
            path: PathBuf::from(path),
            args: vec![],
        };
        let settings = settings();
        let config = config();
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd = null.as_raw_fd();
        let mut plan = SpawnPlan::new(PlanInput {
            roost_binary: Path::new("/usr/sbin/roost"),
            program: &program,
            title: "roost/test",
            settings: &settings,
            config: &config,
            uid: ProcessUid(1),
            imported: vec![],
            fds: ChildFds {
                stdin: fd,
                stdout: fd,
                stderr: fd,
                listeners: vec![],
                status: fd,
                master_dead: fd,
                login_notify: None,
                anvil: None,
                settings: None,
                log_pipes: Vec::new(),
            },
            identity: None,
            shutdown_clients: true,
        })
        .expect("plans");
        plan.spawn().expect("fork")
    }

    fn exit_code(pid: Pid) -> i32 {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid.0), None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => code,
            other => panic!("unexpected wait status {other:?}"),
        }
    }

    /// Before the error pipe, a missing program only showed as "returned error 84" with no
    /// reason; the parent now learns the errno of the failed execve.
    #[test]
    fn a_failed_exec_reports_its_errno_and_exits_84() {
        let (pid, error) = spawn_program("/nonexistent/roost-test-program");
        let error = error.expect("the exec failure is reported");
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(exit_code(pid), EXIT_EXEC_FAILED);
    }

    #[test]
    fn a_successful_exec_reports_nothing() {
        let (pid, error) = spawn_program("/bin/true");
        assert!(error.is_none(), "{error:?}");
        assert_eq!(exit_code(pid), 0);
    }
}
