//! The child runtime: real IO around core's `child` machine, and the built-in `inetd`.
//!
//! A roost-aware service process reads the child protocol from its environment
//! ([`ChildEnv::from_env`], docs/child-protocol.md), then runs the core's [`Child`] machine:
//! it writes the status records the machine asks for on the status fd, watches the listeners
//! only while the machine says accept, treats an error or EOF on the master-dead fd as the
//! master's death (reference §4.4), and feeds TERM/INT/QUIT to the machine.
//!
//! `inetd PROGRAM ARGS...` accepts one connection, reports itself busy, and execs PROGRAM with
//! the connection on stdin and stdout: any inetd-style program becomes a roost service.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use roost_core::child::{Child, ChildConfig, Input, Output};
use roost_core::ids::{Pid, ProcessUid};
use roost_core::settings::Settings;
use roost_core::signal::Signal;
use roost_core::time::Instant;
use roost_core::wire::status::StatusRecord;

/// What a child learns from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildEnv {
    /// `ROOST_SERVICE`.
    pub service: String,
    /// `ROOST_PROCESS_UID`: echoed in every status record.
    pub process_uid: u32,
    /// `ROOST_STATUS_FD`.
    pub status_fd: RawFd,
    /// `ROOST_MASTER_DEAD_FD`.
    pub master_dead_fd: RawFd,
    /// `ROOST_SETTINGS_FD`.
    pub settings_fd: Option<RawFd>,
    /// `ROOST_LOGIN_NOTIFY_FD`.
    pub login_notify_fd: Option<RawFd>,
    /// Listener fds: 3 .. 3 + `LISTEN_FDS`.
    pub listeners: Vec<RawFd>,
    /// `ROOST_CLIENT_LIMIT`.
    pub client_limit: u32,
    /// `ROOST_SERVICE_COUNT`.
    pub service_count: u32,
}

/// A missing or malformed variable of the child protocol.
#[derive(Debug, thiserror::Error)]
#[error("{0}: missing or invalid in the environment (not started by roost?)")]
pub struct EnvError(pub &'static str);

impl ChildEnv {
    /// Reads the protocol from a lookup function (the process environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<ChildEnv, EnvError> {
        fn num<T: std::str::FromStr>(
            get: &impl Fn(&str) -> Option<String>,
            name: &'static str,
        ) -> Result<T, EnvError> {
            get(name).and_then(|v| v.parse().ok()).ok_or(EnvError(name))
        }
        let listen_fds: i32 = num(&get, "LISTEN_FDS")?;
        Ok(ChildEnv {
            service: get("ROOST_SERVICE").ok_or(EnvError("ROOST_SERVICE"))?,
            process_uid: num(&get, "ROOST_PROCESS_UID")?,
            status_fd: num(&get, "ROOST_STATUS_FD")?,
            master_dead_fd: num(&get, "ROOST_MASTER_DEAD_FD")?,
            settings_fd: num(&get, "ROOST_SETTINGS_FD").ok(),
            login_notify_fd: num(&get, "ROOST_LOGIN_NOTIFY_FD").ok(),
            listeners: (3..3 + listen_fds.max(0)).collect(),
            client_limit: num(&get, "ROOST_CLIENT_LIMIT")?,
            service_count: num(&get, "ROOST_SERVICE_COUNT")?,
        })
    }

    /// Reads the protocol from the process environment.
    pub fn from_env() -> Result<ChildEnv, EnvError> {
        ChildEnv::from_lookup(|k| std::env::var(k).ok())
    }
}

/// Reads the settings memfd (RON of the globals and this one service).
pub fn read_settings(fd: RawFd) -> Result<Settings, String> {
    // SAFETY: the fd is the child protocol's settings fd; pread does not move a shared offset.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    let mut off = 0u64;
    let mut buf = [0u8; 8192];
    loop {
        use std::os::unix::fs::FileExt;
        match file.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => {
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                off += n as u64;
            }
            Err(e) => {
                std::mem::forget(file);
                return Err(format!("read(settings fd {fd}) failed: {e}"));
            }
        }
    }
    std::mem::forget(file);
    ron::from_str(&text).map_err(|e| format!("settings fd {fd}: {e}"))
}

/// The clock of a child: milliseconds since it started.
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// What the driver loop learned from one round of the machine's outputs.
#[derive(Default)]
struct Effects {
    exit: Option<i32>,
}

/// The runtime around one `Child` machine.
pub struct Runtime {
    env: ChildEnv,
    child: Child,
    clock: Clock,
    accepting: bool,
    listeners_open: bool,
    /// Signal self-pipe (TERM, INT, QUIT).
    sig_read: OwnedFd,
}

impl Runtime {
    /// Starts the machine for this process.
    ///
    /// # Errors
    /// The signal pipe cannot be set up.
    pub fn new(env: ChildEnv, is_login: bool) -> io::Result<Runtime> {
        let clock = Clock(std::time::Instant::now());
        let child = Child::new(
            ChildConfig {
                client_limit: env.client_limit.max(1),
                service_count: env.service_count,
                never_idle_die: false,
                die_with_master: true,
                has_die_callback: false,
                is_login,
                starts_with_client: false,
            },
            clock.now(),
        );
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        let w = std::os::unix::net::UnixStream::from(w);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
            signal_hook::low_level::pipe::register_raw(sig, OwnedFd::from(w.try_clone()?))?;
        }
        Ok(Runtime {
            env,
            child,
            clock,
            accepting: false,
            listeners_open: true,
            sig_read: r,
        })
    }

    fn feed(&mut self, input: Input) -> Effects {
        let now = self.clock.now();
        self.child.handle(input, now);
        let mut fx = Effects::default();
        while let Some(out) = self.child.poll_output() {
            match out {
                Output::WriteStatus { available_count } => {
                    let rec = StatusRecord {
                        pid: Pid(std::process::id() as i32),
                        uid: ProcessUid(self.env.process_uid),
                        available_count,
                    }
                    .encode();
                    // SAFETY: one write of 12 bytes from a stack buffer.
                    let n =
                        unsafe { libc::write(self.env.status_fd, rec.as_ptr().cast(), rec.len()) };
                    let reply = if n == rec.len() as isize {
                        Input::StatusWritten
                    } else if n < 0
                        && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
                    {
                        Input::StatusWouldBlock
                    } else {
                        Input::StatusWriteFailed
                    };
                    self.child.handle(reply, now);
                }
                Output::AwaitStatusWritable => {
                    // Status records are tiny and the master drains the pipe; a blocked write
                    // is retried on the next turn through the machine's timer.
                    self.child.handle(Input::StatusWritable, now);
                }
                Output::SetAccepting { on } => self.accepting = on,
                Output::CloseListeners => {
                    for &fd in &self.env.listeners {
                        // SAFETY: closing the inherited listener fds; never used again.
                        unsafe { libc::close(fd) };
                    }
                    self.listeners_open = false;
                    self.accepting = false;
                }
                Output::Refuse | Output::DieCallback => {}
                Output::Exit(code) => fx.exit = Some(code),
            }
        }
        fx
    }

    /// Runs until one connection is accepted (returned) or the machine says exit (Err(code)).
    pub fn accept_one(&mut self) -> Result<OwnedFd, i32> {
        if let Some(code) = self.feed(Input::InitDone).exit {
            return Err(code);
        }
        loop {
            let mut fds: Vec<PollFd> = Vec::new();
            // SAFETY: these fds are the child protocol's and stay open for this call.
            let dead = unsafe { BorrowedFd::borrow_raw(self.env.master_dead_fd) };
            fds.push(PollFd::new(dead, PollFlags::POLLIN));
            fds.push(PollFd::new(
                // SAFETY: owned by self.
                unsafe { BorrowedFd::borrow_raw(self.sig_read.as_raw_fd()) },
                PollFlags::POLLIN,
            ));
            if self.accepting && self.listeners_open {
                for &fd in &self.env.listeners {
                    // SAFETY: listener fds stay open while listeners_open.
                    fds.push(PollFd::new(
                        unsafe { BorrowedFd::borrow_raw(fd) },
                        PollFlags::POLLIN,
                    ));
                }
            }
            let timeout = match self.child.poll_timeout() {
                Some(at) => {
                    let ms = at.as_millis().saturating_sub(self.clock.now().as_millis());
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let ready = match poll(&mut fds, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(_) => return Err(89),
            };
            let revents: Vec<PollFlags> = fds
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect();
            drop(fds);
            if ready == 0 {
                if let Some(code) = self.feed(Input::Timeout).exit {
                    return Err(code);
                }
                continue;
            }
            if !revents[0].is_empty() {
                if let Some(code) = self.feed(Input::MasterDead).exit {
                    return Err(code);
                }
            }
            if !revents[1].is_empty() {
                let mut b = [0u8; 16];
                // SAFETY: read into a stack buffer; the pipe carries one byte per signal.
                let _ = unsafe {
                    libc::read(self.sig_read.as_raw_fd(), b.as_mut_ptr().cast(), b.len())
                };
                for sig in pending_signals() {
                    if let Some(code) = self.feed(Input::Signal(sig)).exit {
                        return Err(code);
                    }
                }
            }
            for (i, r) in revents.iter().enumerate().skip(2) {
                if r.is_empty() || !self.accepting {
                    continue;
                }
                let fd = self.env.listeners[i - 2];
                // SAFETY: accept4 on a listening fd.
                let c = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    continue;
                }
                // SAFETY: a fresh fd we own.
                let conn = unsafe { OwnedFd::from_raw_fd(c) };
                let fx = self.feed(Input::Accepted);
                if let Some(code) = fx.exit {
                    return Err(code);
                }
                return Ok(conn);
            }
        }
    }
}

static SIGNALS_SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn pending_signals() -> Vec<Signal> {
    // The self-pipe says "something came"; which signals is tracked by flags set in handlers.
    let bits = SIGNALS_SEEN.swap(0, std::sync::atomic::Ordering::SeqCst);
    let mut out = Vec::new();
    for (bit, sig) in [(1, Signal::Term), (2, Signal::Int), (4, Signal::Quit)] {
        if bits & bit != 0 {
            out.push(sig);
        }
    }
    out
}

fn register_signal_flags() -> io::Result<()> {
    for (sig, bit) in [(libc::SIGTERM, 1u32), (libc::SIGINT, 2), (libc::SIGQUIT, 4)] {
        // SAFETY: the handler only does an atomic fetch_or, which is async-signal-safe.
        unsafe {
            signal_hook::low_level::register(sig, move || {
                SIGNALS_SEEN.fetch_or(bit, std::sync::atomic::Ordering::SeqCst);
            })?;
        }
    }
    Ok(())
}

/// `roost inetd PROGRAM ARGS...`: the inetd adapter. Returns the exit status on failure or
/// when the machine ends the process before a connection came; on success it never returns.
pub fn run_inetd(program: &[OsString]) -> i32 {
    let Some((prog, args)) = program.split_first() else {
        eprintln!("Fatal: inetd: no program given (executable = inetd /path/to/program)");
        return 89;
    };
    let env = match ChildEnv::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("Fatal: inetd: {e}");
            return 89;
        }
    };
    if let Err(e) = register_signal_flags() {
        eprintln!("Fatal: inetd: signal setup failed: {e}");
        return 89;
    }
    let mut rt = match Runtime::new(env, false) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Fatal: inetd: {e}");
            return 89;
        }
    };
    let conn = match rt.accept_one() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Everything of the child protocol is closed at exec: the program sees only its client.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC marks fds 3.. close-on-exec.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, !0u32, 4u32) };
    let stdin = match conn.try_clone() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Fatal: inetd: dup failed: {e}");
            return 89;
        }
    };
    let err = std::process::Command::new(prog)
        .args(args)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(std::process::Stdio::from(stdin))
        .stdout(std::process::Stdio::from(conn))
        .exec();
    eprintln!(
        "Fatal: inetd: execvp({}) failed: {err}",
        prog.to_string_lossy()
    );
    84
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_environment_of_the_protocol_is_read_back() {
        let vars: BTreeMap<&str, &str> = [
            ("ROOST_SERVICE", "echo"),
            ("ROOST_PROCESS_UID", "12"),
            ("ROOST_STATUS_FD", "5"),
            ("ROOST_MASTER_DEAD_FD", "6"),
            ("ROOST_SETTINGS_FD", "7"),
            ("LISTEN_FDS", "2"),
            ("ROOST_CLIENT_LIMIT", "1"),
            ("ROOST_SERVICE_COUNT", "1"),
        ]
        .into_iter()
        .collect();
        let env = ChildEnv::from_lookup(|k| vars.get(k).map(|v| v.to_string())).expect("env");
        assert_eq!(env.listeners, vec![3, 4]);
        assert_eq!(env.process_uid, 12);
        assert_eq!(env.settings_fd, Some(7));
        assert_eq!(env.login_notify_fd, None);
    }

    #[test]
    fn a_missing_variable_is_named() {
        let err = ChildEnv::from_lookup(|_| None).expect_err("empty env");
        assert!(err.to_string().starts_with("LISTEN_FDS"), "{err}");
    }

    #[test]
    fn settings_written_to_a_sealed_memfd_read_back() {
        let cfg = roost_core::config::load_str(
            "t.conf",
            "base_dir = /run/x\n",
            &roost_core::config::MemoryFiles::new([]),
            &roost_core::config::NoEnv,
        )
        .expect("parses");
        let fd = crate::spawn::settings_memfd(&roost_core::config::to_ron(&cfg.settings))
            .expect("memfd");
        let back = read_settings(fd.as_raw_fd()).expect("read");
        assert_eq!(back, cfg.settings);
        // Sealed: writing fails.
        let n = unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(n, -1);
    }
}
