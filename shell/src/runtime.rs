//! The child runtime: real IO around core's `child` machine, for roost-aware programs — the
//! built-ins and any Rust service that links the `roost` library.
//!
//! It reads the child protocol from the environment (`ROOST_*`, `LISTEN_FDS`), applies the
//! privilege drop the master asked for (`ROOST_RESTRICT_*`), writes status records to the
//! status fd, and watches the master-dead fd: when the master closes its end, the write end
//! reports an error, which is how a child learns that its master or its generation is gone.

use std::io;
use std::os::fd::RawFd;

use roost_core::child::Input as ChildInput;
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
        let identity = restricted_identity(|name| std::env::var(name).ok());
        PreparedIdentity::new(&identity)?.apply()
    }
}

/// The identity `ROOST_RESTRICT_*` names, read through `get`.
pub(crate) fn restricted_identity(get: impl Fn(&str) -> Option<String>) -> crate::spawn::Identity {
    let parse = |name: &str| get(name).and_then(|v| v.parse::<u32>().ok());
    crate::spawn::Identity {
        uid: parse("ROOST_RESTRICT_UID"),
        gid: parse("ROOST_RESTRICT_GID"),
        groups: get("ROOST_RESTRICT_GROUPS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|g| g.parse().ok())
            .collect(),
        chroot: get("ROOST_RESTRICT_CHROOT").map(std::path::PathBuf::from),
    }
}

/// An identity made ready to take without allocating (so that a child sharing its spawner's
/// memory can take it, `crate::inetd`): chroot, then the supplementary groups and the gid
/// (only with a gid), then the uid, in that order while still root.
pub(crate) struct PreparedIdentity {
    chroot: Option<std::ffi::CString>,
    gid: Option<rustix::process::Gid>,
    groups: Vec<rustix::process::Gid>,
    uid: Option<rustix::process::Uid>,
}

impl PreparedIdentity {
    pub(crate) fn new(identity: &crate::spawn::Identity) -> io::Result<PreparedIdentity> {
        use std::os::unix::ffi::OsStrExt;
        let chroot = match &identity.chroot {
            Some(dir) => Some(std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(
                |_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the chroot"),
            )?),
            None => None,
        };
        Ok(PreparedIdentity {
            chroot,
            gid: identity.gid.map(rustix::process::Gid::from_raw),
            groups: identity
                .groups
                .iter()
                .map(|&g| rustix::process::Gid::from_raw(g))
                .collect(),
            uid: identity.uid.map(rustix::process::Uid::from_raw),
        })
    }

    /// [`PreparedIdentity::take`], for a process that may allocate: the error says which step
    /// failed.
    pub(crate) fn apply(&self) -> io::Result<()> {
        self.take().map_err(|(step, errno)| {
            let error = io::Error::from(errno);
            io::Error::new(error.kind(), format!("{step}() failed: {error}"))
        })
    }

    /// Takes it in this (single-threaded) process; the step that failed is named.
    pub(crate) fn take(&self) -> Result<(), (&'static str, rustix::io::Errno)> {
        if let Some(dir) = &self.chroot {
            rustix::process::chroot(dir.as_c_str()).map_err(|e| ("chroot", e))?;
            rustix::process::chdir(c"/").map_err(|e| ("chdir", e))?;
        }
        if let Some(gid) = self.gid {
            rustix::thread::set_thread_groups(&self.groups).map_err(|e| ("setgroups", e))?;
            rustix::thread::set_thread_gid(gid).map_err(|e| ("setgid", e))?;
        }
        if let Some(uid) = self.uid {
            rustix::thread::set_thread_uid(uid).map_err(|e| ("setuid", e))?;
        }
        Ok(())
    }
}

/// Writes one status record; the child machine hears how it went.
pub(crate) fn write_status(env: &ChildEnv, available_count: u32) -> ChildInput {
    let pid = Pid(rustix::process::getpid().as_raw_nonzero().get());
    write_status_record(env.status_fd, pid, env.uid, available_count)
}

/// Writes one status record to `fd` with one `write()`, without allocating or touching errno
/// (the inetd adapter's too); the child machine hears how it went.
pub(crate) fn write_status_record(
    fd: RawFd,
    pid: Pid,
    uid: ProcessUid,
    available_count: u32,
) -> ChildInput {
    let record = StatusRecord {
        pid,
        uid,
        available_count,
    }
    .encode();
    // SAFETY: the status pipe is this process's (the child protocol).
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match rustix::io::write(fd, &record) {
        Ok(n) if n == record.len() => ChildInput::StatusWritten,
        Err(rustix::io::Errno::AGAIN) => ChildInput::StatusWouldBlock,
        _ => ChildInput::StatusWriteFailed,
    }
}

/// The `inetd` built-in started by exec (`roost --builtin inetd PROGRAM...`: a login service's,
/// or any while the spawner is down): reads the child protocol from the environment, takes
/// the identity it names, and runs the adapter ([`crate::inetd::serve`]).
pub fn run_inetd(program: &[String]) -> i32 {
    let env = match ChildEnv::from_env() {
        Ok(env) => env,
        Err(error) => {
            say("Fatal", &format!("inetd: {error}"));
            return 89;
        }
    };
    let environment: Vec<Vec<u8>> = std::env::vars_os()
        .map(|(name, value)| {
            use std::os::unix::ffi::OsStrExt;
            [name.as_bytes(), b"=", value.as_bytes()].concat()
        })
        .collect();
    let program = match crate::inetd::Program::new(program, environment.iter().map(Vec::as_slice)) {
        Ok(program) => program,
        Err(error) => {
            say("Fatal", &format!("inetd: {error}"));
            return 89;
        }
    };
    if env.listeners.len() > crate::inetd::MAX_LISTENERS {
        say(
            "Fatal",
            &format!(
                "inetd: {} listeners, more than the {} an adapter watches",
                env.listeners.len(),
                crate::inetd::MAX_LISTENERS
            ),
        );
        return 89;
    }
    if let Err(error) = ChildEnv::restrict_privileges() {
        say(
            "Fatal",
            &format!("inetd: dropping privileges failed: {error}"),
        );
        return 89;
    }
    let signals = match SignalFd::block(&crate::inetd::SIGNALS) {
        Ok(signals) => signals,
        Err(error) => {
            say("Fatal", &format!("inetd: signalfd() failed: {error}"));
            return 89;
        }
    };
    let mut listeners = [-1; crate::inetd::MAX_LISTENERS];
    listeners[..env.listeners.len()].copy_from_slice(&env.listeners);
    let fds = crate::inetd::Fds {
        listeners,
        listener_count: env.listeners.len(),
        status: env.status_fd,
        master_dead: env.master_dead_fd,
        log: libc::STDERR_FILENO,
        // Kept open until the process ends: the exec, or a failed one's close of every fd
        // above 2, closes it.
        signals: std::os::fd::IntoRawFd::into_raw_fd(signals.fd),
    };
    crate::inetd::serve(&fds, &program, env.uid, env.die_with_master)
}

/// Signals taken as reads of a `signalfd`: blocked, so none interrupts anything or runs a
/// handler, and read when `poll` says so. The exec of the program sets the mask free again.
pub(crate) struct SignalFd {
    pub(crate) fd: std::os::fd::OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` and opens a non-blocking signalfd for them.
    pub(crate) fn block(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        let fd = SignalFd::open(signals)?;
        let set = sigset(signals);
        // SAFETY: a sigset on our stack.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    /// Opens a non-blocking signalfd for `signals` without blocking them: for the spawner,
    /// whose adapters block them themselves (a signalfd reads the signals of the process
    /// that reads it).
    pub(crate) fn open(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        use std::os::fd::FromRawFd;
        let set = sigset(signals);
        // SAFETY: a sigset on our stack; the returned fd is ours.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new fd.
        Ok(SignalFd {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// A signal set of `signals`.
pub(crate) fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: a plain C struct, filled by the C library.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in signals {
            libc::sigaddset(&mut set, *signal);
        }
        set
    }
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
