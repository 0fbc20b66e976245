//! The inetd adapter (`executable = inetd PROGRAM ARGS...`): a roost-aware child with one slot
//! that waits on its service's listeners, accepts one connection, reports itself busy and
//! becomes PROGRAM with the connection on stdin and stdout. The program's exit is the process's
//! exit, so each connection is one process (service_count = 1).
//!
//! Every adapter serves one connection and is gone, so its life is most of what roost adds to
//! a connection's cost (issue 8). The spawner therefore starts it as a `CLONE_VM` child that
//! runs on a stack of its own in the spawner's memory until it execs the program, as
//! posix_spawn's child does: no page table is copied at the clone, nothing is faulted in, and
//! nothing is torn down at the exec (`crate::spawner`). The exec path (`roost --builtin inetd`)
//! runs the same [`serve`].
//!
//! What that asks of [`serve`] and everything it calls: no allocation (the spawner's heap is
//! not locked against a second user), no write to anything but its own stack and its own fds,
//! and no `errno` where it can be helped (the C library's `errno` is the spawner's too): system
//! calls go through rustix's raw Linux backend, core's child machine keeps its outputs inline,
//! and messages are formatted on the stack. The C library is called only where a call cannot
//! fail (the signal mask and dispositions) and for the `execve`, whose failure ends the process.

use std::ffi::{CStr, CString};
use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use roost_core::child::{Child, ChildConfig, Input as ChildInput, Output as ChildOutput};
use roost_core::ids::{Pid, ProcessUid};
use rustix::io::Errno;

/// The most listeners an adapter watches (more, and its service is served the fork way).
pub const MAX_LISTENERS: usize = 32;

/// The signals of the child protocol an adapter takes, as reads of a signalfd.
pub const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT];

/// Where an adapter's fds are.
#[derive(Clone, Copy, Debug)]
pub struct Fds {
    /// The listeners, `listener_count` of them.
    pub listeners: [RawFd; MAX_LISTENERS],
    /// How many listeners.
    pub listener_count: usize,
    /// The status pipe (write end).
    pub status: RawFd,
    /// The master-dead pipe (write end).
    pub master_dead: RawFd,
    /// The service's log pipe: the program's stderr, and the adapter's own messages.
    pub log: RawFd,
    /// A signalfd of [`SIGNALS`], which this process has blocked.
    pub signals: RawFd,
}

/// The program an adapter becomes, as `execve` takes it.
#[derive(Debug)]
pub struct Program {
    /// Where `execve` is tried, in order: the program itself when its name has a `/`, else
    /// each directory of the environment's PATH (`/bin:/usr/bin` without one), as execvp
    /// looks.
    candidates: Vec<CString>,
    /// The name as configured, for messages.
    name: String,
    /// What `argv` points into.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    /// What `envp` points into.
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
}

impl Program {
    /// `program` (the path and its arguments) with `env` (`NAME=value` each) less the child
    /// protocol's own variables (`ROOST_*`, `LISTEN_*`), which are for the adapter alone.
    pub fn new<'a>(
        program: &[String],
        env: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Program, &'static str> {
        let name = program
            .first()
            .ok_or("no program to run (executable = inetd /path/to/program)")?;
        const NUL: &str = "the program or an argument contains a NUL byte";
        let args: Vec<CString> = program
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| NUL)?;
        let env: Vec<CString> = env
            .into_iter()
            .filter(|v| !v.starts_with(b"ROOST_") && !v.starts_with(b"LISTEN_"))
            .map(|v| CString::new(v.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|_| "the environment contains a NUL byte")?;
        let candidates = if name.contains('/') {
            vec![args[0].clone()]
        } else {
            let path = env
                .iter()
                .find_map(|v| v.to_bytes().strip_prefix(b"PATH="))
                .unwrap_or(b"/bin:/usr/bin");
            path.split(|&b| b == b':')
                .map(|dir| {
                    let dir = if dir.is_empty() { &b"."[..] } else { dir };
                    let mut full = dir.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(name.as_bytes());
                    CString::new(full).map_err(|_| NUL)
                })
                .collect::<Result<_, _>>()?
        };
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Ok(Program {
            candidates,
            name: name.clone(),
            argv: pointers(&args),
            envp: pointers(&env),
            _args: args,
            _env: env,
        })
    }
}

/// Waits for one connection as core's child machine decides, then becomes `program` with it.
/// Returns only when it does not: the exit status the machine chose, or that of a failure,
/// which it has logged.
///
/// With `die_with_master` (shutdown_clients = yes) the program gets SIGTERM when the master,
/// this process's parent, dies (`PR_SET_PDEATHSIG`): once it runs, nothing of roost's watches
/// the master-dead pipe for it.
pub fn serve(fds: &Fds, program: &Program, uid: ProcessUid, die_with_master: bool) -> i32 {
    let master = die_with_master.then(rustix::process::getppid).flatten();
    match wait_for_connection(fds, uid, die_with_master) {
        Ok(conn) => become_program(fds, conn, program, master),
        Err(code) => code,
    }
}

/// The adapter's life before its exec: the machine decides when it accepts, what status it
/// reports and when it leaves; this loop only watches the signalfd, the master-dead pipe, the
/// status pipe while a write would block, and the listeners while accepting.
///
/// It watches them with an epoll of its own, on which the listeners are exclusive
/// (`EPOLLEXCLUSIVE`): a connection wakes one of the service's waiting adapters, not all of
/// them. (With `poll`, every waiting adapter woke for each connection, and all but one went
/// back to sleep; on loopback the client's connect paid for those wakeups.)
fn wait_for_connection(fds: &Fds, uid: ProcessUid, die_with_master: bool) -> Result<OwnedFd, i32> {
    use rustix::event::epoll::{self, EventData, EventFlags};
    const SIGNALS: u64 = 0;
    const MASTER_DEAD: u64 = 1;
    const STATUS: u64 = 2;
    const FIRST_LISTENER: u64 = 3;
    let config = ChildConfig {
        client_limit: 1,
        service_count: 1,
        die_with_master,
        is_login: false,
        never_idle_die: false,
        has_die_callback: false,
        starts_with_client: false,
    };
    let start = std::time::Instant::now();
    let now = || roost_core::time::Instant::from_millis(start.elapsed().as_millis() as u64);
    let pid = Pid(rustix::process::getpid().as_raw_nonzero().get());
    // SAFETY (for every `borrow` below): these fds are this process's for its whole life
    // (the child protocol's, and the signalfd), and nothing closes them while it waits.
    let borrow = |fd: RawFd| unsafe { BorrowedFd::borrow_raw(fd) };
    let failed = |what: &str, error: Errno| {
        say(
            fds.log,
            "Error",
            format_args!("inetd: {what}() failed: {}", describe(error)),
        );
        1
    };
    let watch = |epoll: &OwnedFd, fd: RawFd, key: u64, flags: EventFlags| {
        epoll::add(epoll, borrow(fd), EventData::new_u64(key), flags)
            .map_err(|error| failed("epoll_ctl", error))
    };
    let unwatch = |epoll: &OwnedFd, fd: RawFd| {
        epoll::delete(epoll, borrow(fd)).map_err(|error| failed("epoll_ctl", error))
    };
    let epoll =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| failed("epoll_create", e))?;
    watch(&epoll, fds.signals, SIGNALS, EventFlags::IN)?;
    // No event asked: its error comes anyway.
    watch(&epoll, fds.master_dead, MASTER_DEAD, EventFlags::empty())?;
    let mut child = Child::new(config, now());
    child.handle(ChildInput::InitDone, now());
    let (mut accepting, mut listening, mut status_blocked) = (false, true, false);
    let (mut listeners_watched, mut status_watched) = (false, false);
    let listeners = &fds.listeners[..fds.listener_count];
    loop {
        while let Some(output) = child.poll_output() {
            match output {
                ChildOutput::WriteStatus { available_count } => {
                    let result =
                        crate::runtime::write_status_record(fds.status, pid, uid, available_count);
                    status_blocked = result == ChildInput::StatusWouldBlock;
                    child.handle(result, now());
                }
                ChildOutput::SetAccepting { on } => accepting = on,
                ChildOutput::CloseListeners => {
                    // An exec closes them; until then they are only not watched.
                    listening = false;
                    accepting = false;
                }
                ChildOutput::Exit(code) => return Err(code),
                ChildOutput::AwaitStatusWritable
                | ChildOutput::Refuse
                | ChildOutput::DieCallback => {}
            }
        }
        if listeners_watched != (accepting && listening) {
            listeners_watched = !listeners_watched;
            for (key, &fd) in (FIRST_LISTENER..).zip(listeners) {
                if listeners_watched {
                    watch(&epoll, fd, key, EventFlags::IN | EventFlags::EXCLUSIVE)?;
                } else {
                    unwatch(&epoll, fd)?;
                }
            }
        }
        if status_watched != status_blocked {
            status_watched = status_blocked;
            if status_watched {
                watch(&epoll, fds.status, STATUS, EventFlags::OUT)?;
            } else {
                unwatch(&epoll, fds.status)?;
            }
        }
        let timeout = child.poll_timeout().map(|at| {
            let ms = at.as_millis().saturating_sub(now().as_millis());
            rustix::event::Timespec {
                tv_sec: (ms / 1000) as i64,
                tv_nsec: ((ms % 1000) * 1_000_000) as i64,
            }
        });
        let mut buffer = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 8];
        let events = match epoll::wait(&epoll, &mut buffer, timeout.as_ref()) {
            Ok((events, _)) => &*events,
            Err(Errno::INTR) => &[],
            Err(error) => return Err(failed("epoll_wait", error)),
        };
        if child.poll_timeout().is_some_and(|at| at <= now()) {
            child.handle(ChildInput::Timeout, now());
        }
        let happened = |key: u64| {
            events
                .iter()
                .find(|event| event.data.u64() == key)
                .map(|event| event.flags)
        };
        if happened(SIGNALS).is_some() {
            while let Some(signal) = read_signal(fds.signals) {
                child.handle(
                    ChildInput::Signal(crate::builtin::server::signal_of(signal)),
                    now(),
                );
            }
            // What the machine says to a signal comes before any listener: a process that
            // leaves now must not take one more client first.
            continue;
        }
        if happened(MASTER_DEAD).is_some_and(|f| f.intersects(EventFlags::ERR | EventFlags::HUP)) {
            unwatch(&epoll, fds.master_dead)?;
            child.handle(ChildInput::MasterDead, now());
            continue;
        }
        if happened(STATUS).is_some() {
            status_blocked = false;
            child.handle(ChildInput::StatusWritable, now());
        }
        if !listeners_watched {
            continue;
        }
        for event in events {
            let Some(&listener) = event
                .data
                .u64()
                .checked_sub(FIRST_LISTENER)
                .and_then(|i| listeners.get(i as usize))
            else {
                continue;
            };
            let flags = rustix::net::SocketFlags::CLOEXEC;
            let conn = match rustix::net::accept_with(borrow(listener), flags) {
                Ok(conn) => conn,
                // Another process took it, or its client left first.
                Err(Errno::AGAIN | Errno::CONNABORTED | Errno::INTR | Errno::PROTO) => continue,
                // Out of fds or memory: waiting again would only spin.
                Err(error) => return Err(failed("accept", error)),
            };
            child.handle(ChildInput::Accepted, now());
            // Report busy before the process becomes its program.
            while let Some(output) = child.poll_output() {
                if let ChildOutput::WriteStatus { available_count } = output {
                    let result =
                        crate::runtime::write_status_record(fds.status, pid, uid, available_count);
                    child.handle(result, now());
                }
            }
            return Ok(conn);
        }
    }
}

/// The next signal waiting in the signalfd.
fn read_signal(signals: RawFd) -> Option<libc::c_int> {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    // SAFETY: the signalfd is this process's.
    let fd = unsafe { BorrowedFd::borrow_raw(signals) };
    match rustix::io::read(fd, &mut info) {
        // `ssi_signo`, the record's first field.
        Ok(n) if n == info.len() => {
            Some(u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as libc::c_int)
        }
        _ => None,
    }
}

/// Puts the connection on stdin and stdout and the log pipe on stderr, lets go of everything
/// else of roost's (other fds, the blocked signals, SIGPIPE's SIG_IGN, which an exec would
/// keep), and execs the program. Returns the exit status when the exec fails.
fn become_program(
    fds: &Fds,
    conn: OwnedFd,
    program: &Program,
    master: Option<rustix::process::Pid>,
) -> i32 {
    if let Some(master) = master {
        let signal = Some(rustix::process::Signal::TERM);
        if let Err(error) = rustix::process::set_parent_process_death_signal(signal) {
            say(
                fds.log,
                "Fatal",
                format_args!("inetd: prctl(PR_SET_PDEATHSIG) failed: {}", describe(error)),
            );
            return crate::spawn::EXIT_EXEC_FAILED;
        }
        if rustix::process::getppid() != Some(master) {
            // The master died before the signal was set: the client is cut, as it would be.
            return 0;
        }
    }
    // SAFETY: the log pipe is this process's (the child protocol).
    let log = unsafe { BorrowedFd::borrow_raw(fds.log) };
    let placed = rustix::stdio::dup2_stdin(conn.as_fd())
        .and_then(|()| rustix::stdio::dup2_stdout(conn.as_fd()))
        .and_then(|()| match fds.log {
            libc::STDERR_FILENO => Ok(()),
            _ => rustix::stdio::dup2_stderr(log),
        });
    if let Err(error) = placed {
        say(
            fds.log,
            "Fatal",
            format_args!("inetd: dup2() failed: {}", describe(error)),
        );
        return crate::spawn::EXIT_EXEC_FAILED;
    }
    // Closed with every other fd above 2 just below, not dropped.
    let _ = std::os::fd::IntoRawFd::into_raw_fd(conn);
    // SAFETY: nothing above fd 2 is the program's; the calls cannot fail with these
    // arguments (so they leave errno alone), and every pointer of execve points into
    // `program`, alive until it returns.
    let errno = unsafe {
        libc::close_range(3, libc::c_uint::MAX, 0);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let mut errno = libc::ENOENT;
        for path in &program.candidates {
            libc::execve(path.as_ptr(), program.argv.as_ptr(), program.envp.as_ptr());
            // execvp's rule: a candidate that is not there (or not allowed) passes the turn
            // to the next, any other failure is the answer.
            match *libc::__errno_location() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => errno = libc::EACCES,
                other => {
                    errno = other;
                    break;
                }
            }
        }
        errno
    };
    say(
        libc::STDERR_FILENO,
        "Fatal",
        format_args!(
            "inetd: exec({}) failed: {}",
            program.name,
            describe(Errno::from_raw_os_error(errno))
        ),
    );
    crate::spawn::EXIT_EXEC_FAILED
}

/// The text of an error number, from the C library's static table: the English text without
/// a locale, a lock or an allocation (glibc 2.32).
pub(crate) fn describe(error: Errno) -> impl std::fmt::Display {
    Description(error.raw_os_error())
}

/// An error number that displays as `text (os error N)`, as `std::io::Error` does, without
/// allocating.
struct Description(i32);

impl std::fmt::Display for Description {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        unsafe extern "C" {
            fn strerrordesc_np(errnum: libc::c_int) -> *const libc::c_char;
        }
        // SAFETY: returns NULL or a pointer to a static, NUL-terminated string.
        let text = unsafe { strerrordesc_np(self.0) };
        if text.is_null() {
            write!(f, "unknown error (os error {})", self.0)
        } else {
            // SAFETY: see above.
            let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
            write!(f, "{text} (os error {})", self.0)
        }
    }
}

/// Writes `Level: message` as one line to `fd`, formatted on the stack (cut at 1 KiB).
pub fn say(fd: RawFd, level: &str, message: std::fmt::Arguments<'_>) {
    let mut line = Line {
        bytes: [0; 1024],
        len: 0,
    };
    let _ = write!(line, "{level}: {message}");
    let len = line.len.min(line.bytes.len() - 1);
    line.bytes[len] = b'\n';
    // SAFETY: the log pipe or stderr, this process's.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = rustix::io::write(fd, &line.bytes[..=len]);
}

/// A line being formatted on the stack; what does not fit is cut.
struct Line {
    bytes: [u8; 1024],
    len: usize,
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.bytes.len() - self.len;
        let n = s.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(pointers: &[*const libc::c_char]) -> Vec<String> {
        let (last, rest) = pointers.split_last().expect("a terminator");
        assert!(last.is_null(), "NULL-terminated");
        rest.iter()
            // SAFETY: pointers into the program's own strings, alive here.
            .map(|p| unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_program_gets_the_environment_less_the_protocols_variables() {
        let env: [&[u8]; 4] = [b"TZ=UTC", b"ROOST_STATUS_FD=5", b"LISTEN_FDS=1", b"LANG=C"];
        let program = Program::new(&["/bin/echo".into(), "hi".into()], env).expect("a program");
        assert_eq!(strings(&program.argv), ["/bin/echo", "hi"]);
        assert_eq!(strings(&program.envp), ["TZ=UTC", "LANG=C"]);
        assert_eq!(program.candidates, [c"/bin/echo".to_owned()]);
    }

    #[test]
    fn a_bare_name_is_looked_for_along_path_as_execvp_does() {
        let env: [&[u8]; 1] = [b"PATH=/usr/local/bin::/bin"];
        let program = Program::new(&["cat".into()], env).expect("a program");
        assert_eq!(
            program.candidates,
            [c"/usr/local/bin/cat", c"./cat", c"/bin/cat"].map(CStr::to_owned)
        );
        let without_path = Program::new(&["cat".into()], []).expect("a program");
        assert_eq!(
            without_path.candidates,
            [c"/bin/cat", c"/usr/bin/cat"].map(CStr::to_owned)
        );
    }

    #[test]
    fn a_program_that_cannot_be_one_is_refused_with_the_reason() {
        let none = Program::new(&[], []).expect_err("no program");
        assert!(none.starts_with("no program to run"), "{none}");
        let nul = Program::new(&["/bin/echo".into(), "a\0b".into()], []).expect_err("a NUL");
        assert_eq!(nul, "the program or an argument contains a NUL byte");
    }

    #[test]
    fn an_errno_reads_as_the_io_error_would_without_allocating() {
        assert_eq!(
            describe(Errno::NOENT).to_string(),
            "No such file or directory (os error 2)"
        );
        assert_eq!(
            describe(Errno::from_raw_os_error(4095)).to_string(),
            "unknown error (os error 4095)"
        );
    }
}
