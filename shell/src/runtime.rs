//! The child runtime: real IO around core's `child` machine, for roost-aware programs — the
//! built-ins and any Rust service that links the `roost` library.
//!
//! It reads the child protocol from the environment (`ROOST_*`, `LISTEN_FDS`), applies the
//! privilege drop the master asked for (`ROOST_RESTRICT_*`), writes status records to the
//! status fd, and watches the master-dead fd: when the master closes its end, the write end
//! reports an error, which is how a child learns that its master or its generation is gone.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use roost_core::child::{ChildConfig, Input as ChildInput};
use roost_core::ids::{Pid, ProcessUid};
use roost_core::wire::StatusRecord;

use crate::builtin::say;

/// The child protocol as read from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildEnv {
    /// The service.
    pub service: String,
    /// The process uid to echo in status records.
    pub uid: ProcessUid,
    /// The status pipe.
    pub status_fd: RawFd,
    /// The master-dead pipe.
    pub master_dead_fd: RawFd,
    /// Listener fds (from 3).
    pub listeners: Vec<RawFd>,
    /// Effective client_limit.
    pub client_limit: u32,
    /// service_count.
    pub service_count: u32,
    /// shutdown_clients.
    pub die_with_master: bool,
    /// A login service.
    pub is_login: bool,
}

/// What is wrong with the environment of a child started outside roost.
#[derive(Debug, thiserror::Error)]
#[error("not started by roost: {0} is missing or invalid")]
pub struct NotAChild(&'static str);

fn var<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<T, NotAChild> {
    get(name)
        .and_then(|v| v.parse().ok())
        .ok_or(NotAChild(name))
}

impl ChildEnv {
    /// Reads the environment the master prepared.
    pub fn from_env() -> Result<ChildEnv, NotAChild> {
        ChildEnv::from_lookup(|name| std::env::var(name).ok(), std::process::id())
    }

    /// Reads the child protocol through `get` (the process environment in production, a map
    /// in tests), for the process `own_pid`. Listeners follow the systemd rule: they are this
    /// process's only when `LISTEN_PID` is absent or names it.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        own_pid: u32,
    ) -> Result<ChildEnv, NotAChild> {
        let listen_fds: i32 = get("LISTEN_FDS").and_then(|v| v.parse().ok()).unwrap_or(0);
        let pid_matches = get(crate::spawn::LISTEN_PID)
            .and_then(|v| v.parse::<u32>().ok())
            .is_none_or(|pid| pid == own_pid);
        let listeners = if pid_matches {
            (3..3 + listen_fds.max(0)).collect()
        } else {
            Vec::new()
        };
        Ok(ChildEnv {
            service: get("ROOST_SERVICE").ok_or(NotAChild("ROOST_SERVICE"))?,
            uid: ProcessUid(var(&get, crate::spawn::PROCESS_UID)?),
            status_fd: var(&get, "ROOST_STATUS_FD")?,
            master_dead_fd: var(&get, "ROOST_MASTER_DEAD_FD")?,
            listeners,
            client_limit: var(&get, "ROOST_CLIENT_LIMIT")?,
            service_count: var(&get, "ROOST_SERVICE_COUNT")?,
            die_with_master: get("ROOST_SHUTDOWN_CLIENTS").is_some_and(|v| v == "yes"),
            is_login: get("ROOST_SERVICE_TYPE").is_some_and(|v| v == "login"),
        })
    }

    /// Applies `ROOST_RESTRICT_*`: chroot, groups, gid, uid (in that order, while still root).
    pub fn restrict_privileges() -> io::Result<()> {
        let parse = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        let groups: Vec<u32> = std::env::var("ROOST_RESTRICT_GROUPS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|g| g.parse().ok())
            .collect();
        drop_to(
            std::env::var_os("ROOST_RESTRICT_CHROOT")
                .as_deref()
                .map(Path::new),
            parse("ROOST_RESTRICT_GID"),
            &groups,
            parse("ROOST_RESTRICT_UID"),
        )
    }
}

/// Takes an identity in this (single-threaded) process: chroot, then the supplementary groups
/// and the gid (only with a gid), then the uid, in that order while still root.
pub(crate) fn drop_to(
    chroot: Option<&Path>,
    gid: Option<u32>,
    groups: &[u32],
    uid: Option<u32>,
) -> io::Result<()> {
    if let Some(dir) = chroot {
        nix::unistd::chroot(dir)?;
        nix::unistd::chdir("/")?;
    }
    if let Some(gid) = gid {
        let groups: Vec<nix::unistd::Gid> = groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups)?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
    }
    if let Some(uid) = uid {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
    }
    Ok(())
}

/// Writes one status record; the child machine hears how it went.
pub(crate) fn write_status(env: &ChildEnv, available_count: u32) -> ChildInput {
    let record = StatusRecord {
        pid: Pid(std::process::id() as i32),
        uid: env.uid,
        available_count,
    }
    .encode();
    // SAFETY: a write of a buffer we own to an fd we inherited.
    let n = unsafe { libc::write(env.status_fd, record.as_ptr().cast(), record.len()) };
    if n == record.len() as isize {
        ChildInput::StatusWritten
    } else if crate::fdplan::errno() == libc::EAGAIN {
        ChildInput::StatusWouldBlock
    } else {
        ChildInput::StatusWriteFailed
    }
}

/// The `inetd` built-in: accepts one connection and execs `program` with it on stdin and stdout,
/// so any inetd-style program is a roost service (service_count = 1 semantics). It reports
/// itself busy before the exec; the program's exit is the process's exit.
pub fn run_inetd(program: &[String]) -> i32 {
    if program.is_empty() {
        say(
            "Fatal",
            "inetd: no program to run (executable = inetd /path/to/program)",
        );
        return 89;
    }
    let env = match ChildEnv::from_env() {
        Ok(env) => env,
        Err(error) => {
            say("Fatal", &format!("inetd: {error}"));
            return 89;
        }
    };
    if let Err(error) = ChildEnv::restrict_privileges() {
        say(
            "Fatal",
            &format!("inetd: dropping privileges failed: {error}"),
        );
        return 89;
    }
    // The master (a spawner clones with CLONE_PARENT): the program must end with it under
    // shutdown_clients = yes, as every roost-aware child does.
    let master = env.die_with_master.then(|| nix::unistd::getppid().as_raw());
    // One connection per process: the exec'd program serves it.
    let config = ChildConfig {
        client_limit: 1,
        service_count: 1,
        die_with_master: env.die_with_master,
        is_login: env.is_login,
        never_idle_die: false,
        has_die_callback: false,
        starts_with_client: false,
    };
    match wait_for_connection(&env, config) {
        Ok(Ok(conn)) => exec_with_connection(conn.as_raw_fd(), program, master),
        Ok(Err(code)) => code,
        Err(error) => {
            say("Error", &format!("inetd: {error}"));
            1
        }
    }
}

/// The inetd adapter's life before its exec: core's child machine decides when it accepts,
/// what status it reports and when it leaves; this loop only polls the listeners, the
/// master-dead pipe, the status pipe while a write would block, and the signals of the child
/// protocol. Returns the connection, or the exit status the machine chose.
///
/// Every adapter serves one connection and is gone, so this is most of what roost adds to a
/// connection's cost (issue 8): it is `poll(2)` and a `signalfd`, where the shared loop of the
/// other built-ins (`builtin::server`) sets up an event loop, a signal pipe and handlers, and
/// connection tables, whose pages a freshly forked process must each fault in and its exec
/// tear down again.
fn wait_for_connection(
    env: &ChildEnv,
    config: ChildConfig,
) -> io::Result<Result<std::os::fd::OwnedFd, i32>> {
    use roost_core::child::{Child, Output as ChildOutput};
    use std::os::fd::{FromRawFd, OwnedFd};
    let start = std::time::Instant::now();
    let now = || roost_core::time::Instant::from_millis(start.elapsed().as_millis() as u64);
    let signals = SignalFd::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGQUIT])?;
    let mut child = Child::new(config, now());
    child.handle(ChildInput::InitDone, now());
    let mut listeners: Vec<OwnedFd> = env
        .listeners
        .iter()
        // SAFETY: the listener fds are this process's (the child protocol), used only here.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    let (mut accepting, mut status_blocked) = (false, false);
    let mut master_dead = Some(env.master_dead_fd);
    loop {
        while let Some(output) = child.poll_output() {
            match output {
                ChildOutput::WriteStatus { available_count } => {
                    let result = write_status(env, available_count);
                    status_blocked = result == ChildInput::StatusWouldBlock;
                    child.handle(result, now());
                }
                ChildOutput::SetAccepting { on } => accepting = on,
                ChildOutput::CloseListeners => {
                    listeners.clear();
                    accepting = false;
                }
                ChildOutput::Exit(code) => return Ok(Err(code)),
                ChildOutput::AwaitStatusWritable
                | ChildOutput::Refuse
                | ChildOutput::DieCallback => {}
            }
        }
        // The signals first, then the master-dead pipe (no event asked: its error comes
        // anyway), the status pipe while blocked, then the listeners while accepting.
        let mut fds = vec![
            pollfd(signals.fd.as_raw_fd(), libc::POLLIN),
            pollfd(master_dead.unwrap_or(-1), 0),
            pollfd(
                if status_blocked { env.status_fd } else { -1 },
                libc::POLLOUT,
            ),
        ];
        if accepting {
            fds.extend(
                listeners
                    .iter()
                    .map(|l| pollfd(l.as_raw_fd(), libc::POLLIN)),
            );
        }
        let timeout = child.poll_timeout().map_or(-1, |at| {
            at.as_millis()
                .saturating_sub(now().as_millis())
                .min(i32::MAX as u64) as i32
        });
        // SAFETY: a pollfd array we own.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if child.poll_timeout().is_some_and(|at| at <= now()) {
            child.handle(ChildInput::Timeout, now());
        }
        if fds[0].revents != 0 {
            for signal in signals.pending() {
                child.handle(
                    ChildInput::Signal(crate::builtin::server::signal_of(signal)),
                    now(),
                );
            }
            // What the machine says to a signal comes before any listener: a process that
            // leaves now must not take one more client first.
            continue;
        }
        if fds[1].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            master_dead = None;
            child.handle(ChildInput::MasterDead, now());
            continue;
        }
        if fds[2].revents != 0 {
            status_blocked = false;
            child.handle(ChildInput::StatusWritable, now());
        }
        for ready in fds[3..].iter().filter(|p| p.revents != 0) {
            // SAFETY: accept4 on one of our listening fds.
            let conn = unsafe {
                libc::accept4(
                    ready.fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if conn < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    // Another process took it, or its client left first.
                    Some(libc::EAGAIN | libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => {
                        continue
                    }
                    // Out of fds or memory: polling again would only spin.
                    _ => return Err(error),
                }
            }
            // SAFETY: accept4 returned a new fd we own.
            let conn = unsafe { OwnedFd::from_raw_fd(conn) };
            child.handle(ChildInput::Accepted, now());
            // Report busy before the process becomes its program.
            while let Some(output) = child.poll_output() {
                if let ChildOutput::WriteStatus { available_count } = output {
                    let result = write_status(env, available_count);
                    child.handle(result, now());
                }
            }
            return Ok(Ok(conn));
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Signals taken as reads of a `signalfd`: blocked, so none interrupts anything or runs a
/// handler, and read when `poll` says so. The exec of the program sets the mask free again.
struct SignalFd {
    fd: std::os::fd::OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` and opens a non-blocking signalfd for them.
    fn block(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: a sigset on our stack, filled by the C library; the returned fd is ours.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in signals {
                libc::sigaddset(&mut set, *signal);
            }
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(SignalFd {
                fd: std::os::fd::OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// The signals waiting, in the order they came.
    fn pending(&self) -> Vec<libc::c_int> {
        let mut signals = Vec::new();
        loop {
            // SAFETY: a plain C struct the kernel fills.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: a read into a buffer of exactly one record.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return signals;
            }
            signals.push(info.ssi_signo as libc::c_int);
        }
    }
}

/// Puts the connection on stdin and stdout and execs the program, in the environment roost
/// gave this process less the child protocol's own variables (`ROOST_*`, `LISTEN_*`).
///
/// This is the last thing the adapter does, once per connection: it takes the C library's
/// `environ` as it is and calls execvpe, where `Command` would copy the environment into a
/// map to remove two prefixes.
///
/// With `dies_with` (the master's pid, under shutdown_clients = yes) the program gets SIGTERM
/// when the master dies, even by `kill -9`: once it runs, nothing of roost's watches the
/// master-dead pipe for it. A master already gone means no exec at all.
fn exec_with_connection(conn: RawFd, program: &[String], dies_with: Option<libc::pid_t>) -> i32 {
    let argv: Vec<CString> = match program.iter().map(|a| CString::new(a.as_bytes())).collect() {
        Ok(argv) => argv,
        Err(_) => {
            say(
                "Fatal",
                "inetd: the program or an argument contains a NUL byte",
            );
            return crate::spawn::EXIT_EXEC_FAILED;
        }
    };
    let argv: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut envp: Vec<*const libc::c_char> = Vec::new();
    // SAFETY: this process has one thread, so nothing changes `environ` while it is read;
    // it is a NULL-terminated array of NUL-terminated strings.
    unsafe {
        let mut var = crate::spawn::environ;
        while !(*var).is_null() {
            let text = std::ffi::CStr::from_ptr(*var).to_bytes();
            if !text.starts_with(b"ROOST_") && !text.starts_with(b"LISTEN_") {
                envp.push(*var);
            }
            var = var.add(1);
        }
    }
    envp.push(std::ptr::null());
    if let Some(master) = dies_with {
        // SAFETY: prctl with integer arguments; the parent-death signal survives the exec.
        let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
        if set != 0 {
            let error = io::Error::last_os_error();
            say(
                "Fatal",
                &format!("inetd: prctl(PR_SET_PDEATHSIG) failed: {error}"),
            );
            return crate::spawn::EXIT_EXEC_FAILED;
        }
        if nix::unistd::getppid().as_raw() != master {
            // The master died before the signal was set: the client is cut, as it would be.
            return 0;
        }
    }
    // SAFETY: dup2 of an fd we own onto 0 and 1, then nothing of roost's survives: the
    // program gets the connection and its stderr (the log pipe), as an inetd program expects,
    // with every signal's default (SIGPIPE's SIG_IGN would survive the exec) and an empty
    // mask. The arrays point into `argv`'s strings and `environ`, both alive until execvpe.
    let error = unsafe {
        libc::dup2(conn, 0);
        libc::dup2(conn, 1);
        libc::close_range(3, libc::c_uint::MAX, 0);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::execvpe(argv[0], argv.as_ptr(), envp.as_ptr());
        io::Error::last_os_error()
    };
    say(
        "Fatal",
        &format!("inetd: exec({}) failed: {error}", program[0]),
    );
    crate::spawn::EXIT_EXEC_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn protocol(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = [
            ("ROOST_SERVICE", "echo"),
            ("ROOST_PROCESS_UID", "12"),
            ("ROOST_STATUS_FD", "5"),
            ("ROOST_MASTER_DEAD_FD", "6"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_PID", "4242"),
            ("ROOST_CLIENT_LIMIT", "1"),
            ("ROOST_SERVICE_COUNT", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        vars
    }

    #[test]
    fn the_environment_the_master_prepares_reads_back() {
        let vars = protocol(&[
            ("ROOST_SHUTDOWN_CLIENTS", "yes"),
            ("ROOST_SERVICE_TYPE", "login"),
        ]);
        let env = ChildEnv::from_lookup(|k| vars.get(k).cloned(), 4242).expect("a roost child");
        assert_eq!(env.service, "echo");
        assert_eq!(env.uid, ProcessUid(12));
        assert_eq!((env.status_fd, env.master_dead_fd), (5, 6));
        assert_eq!(env.listeners, vec![3, 4]);
        assert!(env.die_with_master && env.is_login);
    }

    #[test]
    fn listeners_of_another_pid_are_not_this_processs() {
        // A program that forked (or inherited the environment) must not take fds 3.. as
        // listeners: LISTEN_PID names the one process they were meant for.
        let vars = protocol(&[]);
        let env = ChildEnv::from_lookup(|k| vars.get(k).cloned(), 4243).expect("a roost child");
        assert!(env.listeners.is_empty());
    }

    #[test]
    fn a_missing_or_bad_variable_is_named() {
        let mut vars = protocol(&[]);
        vars.remove("ROOST_STATUS_FD");
        let err = ChildEnv::from_lookup(|k| vars.get(k).cloned(), 4242).expect_err("incomplete");
        assert_eq!(
            err.to_string(),
            "not started by roost: ROOST_STATUS_FD is missing or invalid"
        );
        let vars = protocol(&[("ROOST_CLIENT_LIMIT", "many")]);
        let err = ChildEnv::from_lookup(|k| vars.get(k).cloned(), 4242).expect_err("bad number");
        assert!(err.to_string().contains("ROOST_CLIENT_LIMIT"), "{err}");
    }
}
