//! The spawner: a roost process the master starts once, which creates the children of built-in
//! services by forking itself instead of executing the roost binary again.
//!
//! Why: on a virtual machine an `execve` of the roost binary and its start-up (the dynamic
//! loader, relocations, the Rust runtime) cost about 1 ms of CPU, two thirds of a POP3
//! post-login process's whole life (issue 8). A fork of this small, already started process
//! costs a tenth of that. The master itself cannot fork cheaply (its page tables grow with
//! every table it keeps) and must not run service code in its own image.
//!
//! How: the master sends a [`SpawnOrder`] over a private `SOCK_SEQPACKET` socketpair with the
//! child's fds (SCM_RIGHTS), in the order of their destinations. The spawner clones itself with
//! `CLONE_PARENT`, so the child is the master's: the master reaps it and sees its exit status as
//! for any other child. The child places its fds, resets signals, sets its environment, title,
//! limits and identity exactly as the exec path would, then runs the built-in's `main`. The
//! spawner answers with the pid (or the errno of a failed clone).
//!
//! Which: only built-ins whose service is not `type = login`. Forked children share the
//! spawner's address layout; a login process faces clients before authentication, so it keeps
//! a fresh exec (and a fresh ASLR layout) for each process, as in the original.
//!
//! If the spawner is gone or does not answer, the master starts children the exec way.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use roost_core::ids::Pid;
use serde::{Deserialize, Serialize};

use crate::fdplan;
use crate::spawn::{Environment, Identity, EXIT_EXEC_FAILED};

/// The fd the spawner finds its socket at.
const SOCKET_FD: RawFd = 3;

/// The largest order (settings travel as an fd, so an order is the environment and a few names).
const MAX_ORDER: usize = 64 * 1024;

/// The most fds one child receives (listeners and roost's own).
const MAX_FDS: usize = 250;

/// How long the master waits for the pid before it gives up on the spawner.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Room for the children's titles in the spawner's argument area: `roost-INSTANCE/SERVICE`.
const TITLE_ROOM: usize = 200;

/// One child to create: what `SpawnPlan` holds for the exec path, for a built-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnOrder {
    /// The built-in's name.
    pub builtin: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The process title.
    pub title: String,
    /// The environment, `NAME=value` each (without `LISTEN_PID`).
    pub env: Vec<String>,
    /// Whether `LISTEN_PID` is set to the child's pid.
    pub listen_pid: bool,
    /// Where each fd sent with the order goes, in order.
    pub destinations: Vec<RawFd>,
    /// RLIMIT_AS and RLIMIT_DATA (0: none).
    pub vsz_limit: u64,
    /// The identity taken before the built-in runs (drop_priv_before_exec).
    pub identity: Option<Identity>,
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
}

impl Spawner {
    /// Starts `roost --builtin spawner` with its socket at fd 3.
    pub fn start(roost_binary: &Path) -> io::Result<Spawner> {
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
            .arg0("roost/spawner")
            .args(["--builtin", "spawner"])
            // Room its children write their titles over.
            .arg(" ".repeat(TITLE_ROOM))
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: dup2 and setsid are async-signal-safe; the hook only places the socket at
        // fd 3 (dup2 clears its close-on-exec flag) and leaves the terminal's process group.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::setsid();
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
        })
    }

    /// The spawner's pid (the master reaps it like its other children).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Creates one child; its fds are `fds`, in the order of `order.destinations`.
    pub fn spawn(&self, order: &SpawnOrder, fds: &[RawFd]) -> Result<Pid, SpawnError> {
        let broken = |error: nix::errno::Errno| SpawnError::Spawner(error.into());
        let text = ron::to_string(order).map_err(|e| SpawnError::Spawner(io::Error::other(e)))?;
        if text.len() > MAX_ORDER || fds.len() > MAX_FDS || fds.len() != order.destinations.len() {
            return Err(SpawnError::Clone(io::Error::other(
                "the order does not fit the spawner",
            )));
        }
        let rights = [ControlMessage::ScmRights(fds)];
        sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(text.as_bytes())],
            &rights,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(broken)?;
        let mut answer = [0u8; 4];
        let got = loop {
            match nix::sys::socket::recv(self.socket.as_raw_fd(), &mut answer, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(broken)?,
            }
        };
        if got != answer.len() {
            return Err(SpawnError::Spawner(io::Error::other("it went away")));
        }
        match i32::from_le_bytes(answer) {
            pid if pid > 0 => Ok(Pid(pid)),
            errno => Err(SpawnError::Clone(io::Error::from_raw_os_error(-errno))),
        }
    }
}

/// `roost --builtin spawner`: serves the master until it closes the socket.
pub fn main() -> i32 {
    let Some(title) = TitleArea::find() else {
        eprintln!("roost: Error: spawner: /proc/self/stat has no argument area");
        return 1;
    };
    // SAFETY: the master placed the socket at fd 3 for this process alone. Nothing above it
    // is ours: what the master's own parent let it inherit (a build's jobserver pipe) goes.
    let socket = unsafe {
        libc::close_range((SOCKET_FD + 1) as libc::c_uint, libc::c_uint::MAX, 0);
        OwnedFd::from_raw_fd(SOCKET_FD)
    };
    let mut buffer = vec![0u8; MAX_ORDER];
    loop {
        let (order, fds) = match receive(&socket, &mut buffer) {
            Ok(Some(received)) => received,
            Ok(None) => return 0,
            Err(error) => {
                eprintln!("roost: Error: spawner: {error}");
                return 1;
            }
        };
        let answer = match order {
            Some(order) => spawn_child(&order, &fds, &title),
            None => -libc::EINVAL,
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

/// Reads one order and its fds; `None` when the master is gone. An order that does not decode
/// comes back as `Some((None, fds))`, answered with EINVAL.
#[allow(clippy::type_complexity)]
fn receive(
    socket: &OwnedFd,
    buffer: &mut [u8],
) -> io::Result<Option<(Option<SpawnOrder>, Vec<OwnedFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(buffer)];
        let message = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => message,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(error.into()),
        };
        let mut fds = Vec::new();
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: SCM_RIGHTS gave us these fds; nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        break (message.bytes, fds);
    };
    if len == 0 {
        return Ok(None);
    }
    let order = std::str::from_utf8(&buffer[..len])
        .ok()
        .and_then(|text| ron::from_str::<SpawnOrder>(text).ok())
        .filter(|order| order.destinations.len() == fds.len());
    Ok(Some((order, fds)))
}

/// Clones this process as a child of the master; returns its pid, or minus the errno.
fn spawn_child(order: &SpawnOrder, fds: &[OwnedFd], title: &TitleArea) -> i32 {
    let moves: Vec<(RawFd, RawFd)> = fds
        .iter()
        .map(AsRawFd::as_raw_fd)
        .zip(order.destinations.iter().copied())
        .collect();
    let Ok(ops) = fdplan::plan_fd_moves(&moves) else {
        return -libc::EINVAL;
    };
    // The child's environment, made here as the exec path makes it: the child only points
    // `environ` at it, instead of a setenv per variable (each a malloc, a search and a copy of
    // the array, in a process whose every first write to a page copies it).
    let Ok(mut environment) = Environment::new(&order.env, order.listen_pid) else {
        return -libc::EINVAL;
    };
    let (env, listen_pid) = environment.pointers();
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
        0 => child(order, &ops, &env, listen_pid, title),
        pid if pid > 0 => pid as i32,
        _ => -fdplan::errno(),
    }
}

/// The child: becomes what the order says, then runs the built-in. `env` is its environment
/// (a NULL-terminated array), `listen_pid` the room for its pid in it.
fn child(
    order: &SpawnOrder,
    ops: &[fdplan::FdOp],
    env: &[*const libc::c_char],
    listen_pid: Option<*mut libc::c_char>,
    title: &TitleArea,
) -> ! {
    // SAFETY: this process has one thread; everything below is what the exec path's child
    // does before execve, then the built-in's main as `roost --builtin` would run it.
    unsafe {
        crate::spawn::reset_process_state();
        // As the Rust runtime leaves it for every `main`, the exec path's included: a write to
        // a closed socket is an EPIPE error, not a death.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        if fdplan::execute(ops).is_err() {
            libc::_exit(EXIT_EXEC_FAILED);
        }
        // Only the planned fds survive. No exec will close the rest (the received copies, the
        // spawner's socket), so every other one is closed here.
        let highest = order.destinations.iter().copied().max().unwrap_or(2).max(2);
        for fd in 0..highest {
            if !order.destinations.contains(&fd) {
                libc::close(fd);
            }
        }
        libc::close_range((highest + 1) as libc::c_uint, libc::c_uint::MAX, 0);
        libc::umask(0o077);
        crate::spawn::set_vsz_limit(order.vsz_limit);
        if let Some(buffer) = listen_pid {
            crate::spawn::write_pid(buffer, libc::getpid());
        }
        // The array outlives this process's use of it: `child` never returns, and the
        // spawner's memory it points into is this process's own copy.
        crate::spawn::environ = env.as_ptr();
    }
    if let Err(error) = take_identity(order.identity.as_ref()) {
        crate::builtin::say("Fatal", &format!("{}: {error}", order.builtin));
        // SAFETY: leaves without running anything of the spawner's.
        unsafe { libc::_exit(EXIT_EXEC_FAILED) };
    }
    title.set(&order.title);
    let code = crate::builtin::run(&order.builtin, &order.args);
    std::process::exit(code);
}

/// The identity of drop_priv_before_exec, as the exec path takes it.
fn take_identity(identity: Option<&Identity>) -> io::Result<()> {
    match identity {
        Some(identity) => crate::runtime::drop_to(
            identity.chroot.as_deref(),
            identity.gid,
            &identity.groups,
            identity.uid,
        ),
        None => Ok(()),
    }
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
    fn an_order_round_trips_through_ron() {
        let order = SpawnOrder {
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
        assert_eq!(ron::from_str::<SpawnOrder>(&text).expect("decodes"), order);
    }
}
