//! Creating one child: everything planned before fork, only async-signal-safe calls after it.
//!
//! [`plan`] is pure: from a service's settings, the fds the master holds for it and the process
//! uid, it computes argv (process title first), the environment of the child protocol
//! (DESIGN.md "Child fds", docs/child-protocol.md), the fd moves ([`crate::fdplan`]), the
//! credentials and the rlimits. [`spawn`] forks and, in the child, executes that plan with raw
//! libc calls (no allocation, no locks: the master is single-threaded, but the discipline keeps
//! the child correct whatever the parent holds), then execs. A failure after fork writes errno to
//! a CLOEXEC pipe and `_exit(84)`; the parent reads it, so an exec failure is reported at once.
//!
//! Reference §1.1-§1.3 (the original's fd layout and privilege drop).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use roost_core::settings::{GlobalSettings, ServiceSettings};

use crate::fdplan::{plan_fd_moves, FdOp, FdPlanError};

/// Built-in services: modes of the roost binary itself.
pub const BUILT_INS: &[&str] = &["inetd"];

/// The exit status of a child whose setup failed before exec (reference §2.4: 84 = FATAL_EXEC).
pub const EXIT_EXEC_FAILED: i32 = 84;

/// How a service's executable is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// A mode of the roost binary: `roost <mode> args...`.
    BuiltIn {
        /// The built-in's name.
        mode: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A program file.
    Path {
        /// Its absolute path.
        path: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// Resolves `executable` (reference §1.1; DESIGN.md "executable"). `libexec_dir` empty means the
/// directory of the roost binary, given as `self_dir`.
pub fn resolve_program(executable: &str, libexec_dir: &str, self_dir: &str) -> Option<Program> {
    let mut words = executable.split_whitespace().map(str::to_owned);
    let first = words.next()?;
    let args: Vec<String> = words.collect();
    if BUILT_INS.contains(&first.as_str()) {
        return Some(Program::BuiltIn { mode: first, args });
    }
    let path = if first.starts_with('/') {
        first
    } else {
        let dir = if libexec_dir.is_empty() {
            self_dir
        } else {
            libexec_dir
        };
        format!("{}/{first}", dir.trim_end_matches('/'))
    };
    Some(Program::Path { path, args })
}

/// Whether the driver can run a service: a built-in, or an executable file that exists.
pub fn runnable(executable: &str, libexec_dir: &str, self_dir: &str) -> bool {
    match resolve_program(executable, libexec_dir, self_dir) {
        Some(Program::BuiltIn { .. }) => true,
        Some(Program::Path { path, .. }) => {
            nix::unistd::access(path.as_str(), nix::unistd::AccessFlags::X_OK).is_ok()
        }
        None => false,
    }
}

/// One listener as a child receives it.
#[derive(Clone, Debug)]
pub struct ListenerFd {
    /// The master's fd.
    pub fd: RawFd,
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// `unix`, `fifo` or `inet`.
    pub kind: &'static str,
    /// `ssl = yes`.
    pub ssl: bool,
    /// `haproxy = yes`.
    pub haproxy: bool,
}

/// The master's fds for one child.
#[derive(Clone, Debug)]
pub struct ChildFds {
    /// `/dev/null`, read-write.
    pub dev_null: RawFd,
    /// Stay on the terminal for fd 1 (`-F`).
    pub stdout_is_terminal: bool,
    /// The write end of the service's log pipe: fd 2.
    pub log: RawFd,
    /// Listeners, unix, fifo, inet, each in configuration order.
    pub listeners: Vec<ListenerFd>,
    /// The write end of the status pipe.
    pub status: RawFd,
    /// The read end of the master-dead pipe.
    pub master_dead: RawFd,
    /// The login notify file, for login services.
    pub login_notify: Option<RawFd>,
    /// The sealed settings memfd.
    pub settings: RawFd,
}

/// Credentials to switch to before exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Everything the child does, computed before fork.
#[derive(Debug)]
pub struct SpawnPlan {
    /// The file to exec.
    pub path: CString,
    /// argv; argv[0] is the process title.
    pub argv: Vec<CString>,
    /// The environment; the `LISTEN_PID=` entry has room for the pid, filled in after fork.
    pub env: Vec<Vec<u8>>,
    /// Index of the `LISTEN_PID=` entry in `env`.
    pub listen_pid_index: usize,
    /// fd moves.
    pub fd_ops: Vec<FdOp>,
    /// The highest fd the child keeps; every fd above is closed.
    pub last_fd: i32,
    /// chroot directory.
    pub chroot: Option<CString>,
    /// Switch to these credentials (only when the master is root).
    pub credentials: Option<Credentials>,
    /// RLIMIT_AS and RLIMIT_DATA, bytes.
    pub vsz_limit: Option<u64>,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The executable is empty.
    #[error("service({0}): executable is empty")]
    NoExecutable(String),
    /// A string holds a NUL byte.
    #[error("service({service}): {what} contains a NUL byte")]
    Nul {
        /// The service.
        service: String,
        /// Which string.
        what: &'static str,
    },
    /// The fd layout is inconsistent.
    #[error("fd layout: {0}")]
    Fds(#[from] FdPlanError),
}

/// What the planner needs besides the settings.
#[derive(Clone, Debug)]
pub struct PlanContext<'a> {
    /// The roost binary (`/proc/self/exe` resolved).
    pub self_exe: &'a str,
    /// Its directory.
    pub self_dir: &'a str,
    /// The process uid to echo in status records.
    pub process_uid: u32,
    /// Effective client_limit.
    pub client_limit: u32,
    /// service_count.
    pub service_count: u32,
    /// Credentials, already resolved by the caller (None: switch nothing).
    pub credentials: Option<Credentials>,
    /// Effective vsz_limit in bytes (0 or u64::MAX: unlimited).
    pub vsz_limit: u64,
    /// Environment variables passed through (import_environment), `NAME=value`.
    pub imported_env: Vec<String>,
}

/// The process title: `roost/<service>` or `roost-<instance_name>/<service>`.
pub fn process_title(global: &GlobalSettings, service: &str) -> String {
    if global.instance_name.is_empty() || global.instance_name == "roost" {
        format!("roost/{service}")
    } else {
        format!("roost-{}/{service}", global.instance_name)
    }
}

fn cstring(service: &str, what: &'static str, s: String) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| PlanError::Nul {
        service: service.to_owned(),
        what,
    })
}

/// Room for the decimal pid written after fork.
const PID_ROOM: usize = 20;

/// Plans one child.
pub fn plan(
    global: &GlobalSettings,
    service: &ServiceSettings,
    fds: &ChildFds,
    ctx: &PlanContext<'_>,
) -> Result<SpawnPlan, PlanError> {
    let name = service.name.as_str();
    let program = resolve_program(&service.executable, &global.libexec_dir, ctx.self_dir)
        .ok_or_else(|| PlanError::NoExecutable(name.to_owned()))?;
    let title = process_title(global, name);
    let (path, rest) = match program {
        Program::BuiltIn { mode, args } => {
            let mut rest = vec![mode];
            rest.extend(args);
            (ctx.self_exe.to_owned(), rest)
        }
        Program::Path { path, args } => (path, args),
    };
    let mut argv = vec![cstring(name, "process title", title)?];
    for arg in rest {
        argv.push(cstring(name, "executable", arg)?);
    }

    // fd layout.
    let mut moves = vec![
        (fds.dev_null, 0),
        (
            if fds.stdout_is_terminal {
                1
            } else {
                fds.dev_null
            },
            1,
        ),
        (fds.log, 2),
    ];
    let mut next = 3;
    for l in &fds.listeners {
        moves.push((l.fd, next));
        next += 1;
    }
    let listen_fds = fds.listeners.len();
    let status_fd = next;
    moves.push((fds.status, status_fd));
    let master_dead_fd = status_fd + 1;
    moves.push((fds.master_dead, master_dead_fd));
    let mut last = master_dead_fd;
    let login_fd = fds.login_notify.map(|fd| {
        last += 1;
        moves.push((fd, last));
        last
    });
    last += 1;
    let settings_fd = last;
    moves.push((fds.settings, settings_fd));
    let fd_ops = plan_fd_moves(&moves)?;

    let mut env: Vec<String> = ctx.imported_env.clone();
    env.push(format!("LISTEN_FDS={listen_fds}"));
    env.push(format!(
        "LISTEN_FDNAMES={}",
        fds.listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(":")
    ));
    env.push(format!(
        "ROOST_LISTENERS={}",
        fds.listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut s = format!("{}:{}:{}", 3 + i, l.kind, l.name);
                if l.ssl {
                    s.push_str(":ssl");
                }
                if l.haproxy {
                    s.push_str(":haproxy");
                }
                s
            })
            .collect::<Vec<_>>()
            .join(" ")
    ));
    env.push(format!("ROOST_SERVICE={name}"));
    env.push(format!("ROOST_PROCESS_UID={}", ctx.process_uid));
    env.push(format!("ROOST_STATUS_FD={status_fd}"));
    env.push(format!("ROOST_MASTER_DEAD_FD={master_dead_fd}"));
    if let Some(fd) = login_fd {
        env.push(format!("ROOST_LOGIN_NOTIFY_FD={fd}"));
    }
    env.push(format!("ROOST_SETTINGS_FD={settings_fd}"));
    env.push(format!("ROOST_CLIENT_LIMIT={}", ctx.client_limit));
    env.push(format!("ROOST_SERVICE_COUNT={}", ctx.service_count));
    if !global.instance_name.is_empty() {
        env.push(format!("ROOST_INSTANCE_NAME={}", global.instance_name));
    }
    let mut env: Vec<Vec<u8>> = env
        .into_iter()
        .map(|e| {
            let mut v = e.into_bytes();
            v.push(0);
            v
        })
        .collect();
    if env.iter().any(|e| e[..e.len() - 1].contains(&0)) {
        return Err(PlanError::Nul {
            service: name.to_owned(),
            what: "environment",
        });
    }
    let listen_pid_index = env.len();
    let mut pid_entry = b"LISTEN_PID=".to_vec();
    pid_entry.extend(std::iter::repeat_n(0u8, PID_ROOM + 1));
    env.push(pid_entry);

    let chroot = if service.chroot.is_empty() {
        None
    } else {
        let dir = if service.chroot.starts_with('/') {
            service.chroot.clone()
        } else {
            format!("{}/{}", global.base_dir, service.chroot)
        };
        Some(cstring(name, "chroot", dir)?)
    };
    let vsz_limit = match ctx.vsz_limit {
        0 | u64::MAX => None,
        n => Some(n),
    };
    Ok(SpawnPlan {
        path: cstring(name, "executable", path)?,
        argv,
        env,
        listen_pid_index,
        fd_ops,
        last_fd: settings_fd,
        chroot,
        credentials: ctx.credentials.clone(),
        vsz_limit,
    })
}

/// Writes `pid` in decimal after `LISTEN_PID=` (async-signal-safe: no allocation).
fn write_pid(entry: &mut [u8], pid: i32) {
    let prefix = b"LISTEN_PID=".len();
    let mut digits = [0u8; PID_ROOM];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == PID_ROOM {
            break;
        }
    }
    for i in 0..len {
        entry[prefix + i] = digits[len - 1 - i];
    }
    entry[prefix + len] = 0;
}

/// Forks and execs a planned child. Returns its pid and, when the child's setup or exec failed
/// (reported through the CLOEXEC pipe; the child then exits 84 and is reaped as any other, so
/// the core throttles it), the reason; or the errno of a failed fork.
pub fn spawn(mut plan: SpawnPlan) -> Result<(i32, Option<String>), (i32, String)> {
    let idx = plan.listen_pid_index;
    let pid_entry: &mut [u8] = &mut plan.env[idx];
    let pid_ptr = pid_entry.as_mut_ptr();
    let pid_len = pid_entry.len();
    let envp: Vec<*const libc::c_char> = plan
        .env
        .iter()
        .map(|e| e.as_ptr().cast())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| (e as i32, format!("pipe2() failed: {e}")))?;
    let groups: Vec<libc::gid_t> = plan
        .credentials
        .as_ref()
        .map(|c| c.groups.clone())
        .unwrap_or_default();
    // SAFETY: the master is single-threaded; after fork the child only calls async-signal-safe
    // functions on memory prepared above, then execs or `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        return Err((e.raw_os_error().unwrap_or(0), format!("fork() failed: {e}")));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            let own = libc::getpid();
            write_pid(std::slice::from_raw_parts_mut(pid_ptr, pid_len), own);
            child_exec(&plan, &argv, &envp, &groups, err_write.as_raw_fd())
        }
    }
    drop(err_write);
    let mut buf = [0u8; 4];
    let mut file = std::fs::File::from(err_read);
    use std::io::Read;
    match file.read(&mut buf) {
        Ok(4) => {
            let errno = i32::from_ne_bytes(buf);
            Ok((
                pid,
                Some(format!(
                    "execv({}) failed: {}",
                    plan.path.to_string_lossy(),
                    std::io::Error::from_raw_os_error(errno)
                )),
            ))
        }
        _ => Ok((pid, None)),
    }
}

/// The child's side: executes the plan. Never returns.
///
/// # Safety
/// Only in a freshly forked child of a single-threaded process.
unsafe fn child_exec(
    plan: &SpawnPlan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    groups: &[libc::gid_t],
    err_fd: RawFd,
) -> ! {
    let fail = |err_fd: RawFd| -> ! {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(err_fd, bytes.as_ptr().cast(), 4);
        libc::_exit(EXIT_EXEC_FAILED)
    };
    // Own process group: a terminal's Ctrl-C under -F must not reach the children.
    if libc::setsid() < 0 {
        libc::setpgid(0, 0);
    }
    // Keep the error pipe clear of the fd plan's destinations and temporaries.
    let mut err_fd = err_fd;
    let high = 1000.max(plan.last_fd + 64);
    let moved = libc::fcntl(err_fd, libc::F_DUPFD_CLOEXEC, high);
    if moved >= 0 {
        err_fd = moved;
    }
    for op in &plan.fd_ops {
        match *op {
            FdOp::Dup2 { src, dst } => {
                if libc::dup2(src, dst) < 0 {
                    fail(err_fd);
                }
            }
            FdOp::ClearCloexec { fd } => {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    fail(err_fd);
                }
            }
        }
    }
    // Close everything else but the error pipe (CLOEXEC: it closes at exec).
    let first = (plan.last_fd + 1) as libc::c_uint;
    if (err_fd as libc::c_uint) > first {
        libc::syscall(libc::SYS_close_range, first, err_fd as libc::c_uint - 1, 0);
        libc::syscall(libc::SYS_close_range, err_fd as libc::c_uint + 1, !0u32, 0);
    } else {
        libc::syscall(libc::SYS_close_range, first, !0u32, 0);
    }
    // Signals: empty mask, default dispositions (SIGPIPE included).
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    libc::umask(0o077);
    if let Some(limit) = plan.vsz_limit {
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        if libc::setrlimit(libc::RLIMIT_AS, &rl) < 0 || libc::setrlimit(libc::RLIMIT_DATA, &rl) < 0
        {
            fail(err_fd);
        }
    }
    if let Some(dir) = &plan.chroot {
        if libc::chroot(dir.as_ptr()) < 0 || libc::chdir(c"/".as_ptr()) < 0 {
            fail(err_fd);
        }
    }
    if let Some(c) = &plan.credentials {
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0
            || libc::setgid(c.gid) < 0
            || libc::setuid(c.uid) < 0
        {
            fail(err_fd);
        }
    }
    libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(err_fd)
}

/// Creates the sealed, read-only settings memfd holding `ron`.
pub fn settings_memfd(ron: &str) -> std::io::Result<OwnedFd> {
    use std::io::Write;
    let fd = nix::sys::memfd::memfd_create(
        c"roost-settings",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(ron.as_bytes())?;
    let fd = OwnedFd::from(file);
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_ADD_SEALS(
            nix::fcntl::SealFlag::F_SEAL_WRITE
                | nix::fcntl::SealFlag::F_SEAL_GROW
                | nix::fcntl::SealFlag::F_SEAL_SHRINK
                | nix::fcntl::SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> GlobalSettings {
        let cfg = roost_core::config::load_str(
            "t.conf",
            "base_dir = /run/r\n",
            &roost_core::config::MemoryFiles::new([]),
            &roost_core::config::NoEnv,
        )
        .expect("parses");
        cfg.settings.global
    }

    fn service(executable: &str) -> ServiceSettings {
        let cfg = roost_core::config::load_str(
            "t.conf",
            &format!(
                "service echo {{\n executable = {executable}\n inet_listener echo {{\n port = 7\n }}\n}}\n"
            ),
            &roost_core::config::MemoryFiles::new([]),
            &roost_core::config::NoEnv,
        )
        .expect("parses");
        cfg.settings
            .services
            .into_iter()
            .find(|s| s.name == "echo")
            .expect("service echo")
    }

    fn fds(n_listeners: usize) -> ChildFds {
        ChildFds {
            dev_null: 40,
            stdout_is_terminal: false,
            log: 41,
            listeners: (0..n_listeners)
                .map(|i| ListenerFd {
                    fd: 50 + i as i32,
                    name: format!("l{i}"),
                    kind: "inet",
                    ssl: i == 1,
                    haproxy: false,
                })
                .collect(),
            status: 4,
            master_dead: 3,
            login_notify: None,
            settings: 60,
        }
    }

    fn ctx() -> PlanContext<'static> {
        PlanContext {
            self_exe: "/usr/sbin/roost",
            self_dir: "/usr/sbin",
            process_uid: 7,
            client_limit: 1,
            service_count: 1,
            credentials: None,
            vsz_limit: 256 << 20,
            imported_env: vec!["TZ=UTC".into()],
        }
    }

    fn env_of(p: &SpawnPlan) -> Vec<String> {
        p.env
            .iter()
            .map(|e| {
                let end = e.iter().position(|&b| b == 0).unwrap_or(e.len());
                String::from_utf8_lossy(&e[..end]).into_owned()
            })
            .collect()
    }

    #[test]
    fn executables_resolve_as_built_in_absolute_or_relative_to_libexec() {
        assert_eq!(
            resolve_program("inetd /bin/cat -u", "", "/x"),
            Some(Program::BuiltIn {
                mode: "inetd".into(),
                args: vec!["/bin/cat".into(), "-u".into()]
            })
        );
        assert_eq!(
            resolve_program("/bin/true", "/lib", "/x"),
            Some(Program::Path {
                path: "/bin/true".into(),
                args: vec![]
            })
        );
        assert_eq!(
            resolve_program("imap -x", "/usr/lib/roost/", "/x"),
            Some(Program::Path {
                path: "/usr/lib/roost/imap".into(),
                args: vec!["-x".into()]
            })
        );
        assert_eq!(
            resolve_program("imap", "", "/opt/bin"),
            Some(Program::Path {
                path: "/opt/bin/imap".into(),
                args: vec![]
            })
        );
        assert_eq!(resolve_program("  ", "", "/x"), None);
    }

    #[test]
    fn a_built_in_re_executes_roost_with_the_title_as_argv0() {
        let p = plan(&global(), &service("inetd /bin/cat"), &fds(2), &ctx()).expect("plan");
        assert_eq!(p.path.to_str(), Ok("/usr/sbin/roost"));
        let argv: Vec<&str> = p.argv.iter().map(|a| a.to_str().unwrap_or("?")).collect();
        assert_eq!(argv, ["roost/echo", "inetd", "/bin/cat"]);
    }

    #[test]
    fn instance_name_goes_into_the_title() {
        let mut g = global();
        g.instance_name = "second".into();
        assert_eq!(process_title(&g, "imap"), "roost-second/imap");
        g.instance_name = String::new();
        assert_eq!(process_title(&g, "imap"), "roost/imap");
    }

    #[test]
    fn the_environment_announces_listeners_and_roost_fds() {
        let p = plan(&global(), &service("inetd /bin/cat"), &fds(2), &ctx()).expect("plan");
        let env = env_of(&p);
        for want in [
            "TZ=UTC",
            "LISTEN_FDS=2",
            "LISTEN_FDNAMES=l0:l1",
            "ROOST_LISTENERS=3:inet:l0 4:inet:l1:ssl",
            "ROOST_SERVICE=echo",
            "ROOST_PROCESS_UID=7",
            "ROOST_STATUS_FD=5",
            "ROOST_MASTER_DEAD_FD=6",
            "ROOST_SETTINGS_FD=7",
            "ROOST_CLIENT_LIMIT=1",
            "ROOST_SERVICE_COUNT=1",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} missing in {env:?}");
        }
        assert_eq!(env[p.listen_pid_index], "LISTEN_PID=");
        assert_eq!(p.last_fd, 7);
        assert_eq!(p.vsz_limit, Some(256 << 20));
    }

    #[test]
    fn the_fd_plan_puts_every_fd_at_its_number_even_when_sources_collide() {
        // The master's status and master-dead fds (4 and 3) sit where listeners must go.
        let f = fds(2);
        let p = plan(&global(), &service("inetd /bin/cat"), &f, &ctx()).expect("plan");
        let mut table: std::collections::BTreeMap<i32, i32> = [40, 41, 50, 51, 4, 3, 60]
            .iter()
            .map(|&fd| (fd, fd))
            .collect();
        for op in &p.fd_ops {
            if let FdOp::Dup2 { src, dst } = *op {
                let v = table[&src];
                table.insert(dst, v);
            }
        }
        assert_eq!(
            (0..=7).map(|fd| table[&fd]).collect::<Vec<_>>(),
            vec![40, 40, 41, 50, 51, 4, 3, 60]
        );
    }

    #[test]
    fn the_pid_is_written_in_place() {
        let mut entry = b"LISTEN_PID=".to_vec();
        entry.extend([0u8; PID_ROOM + 1]);
        write_pid(&mut entry, 4_194_304);
        assert_eq!(&entry[..19], b"LISTEN_PID=4194304\0");
    }

    #[test]
    fn a_relative_chroot_is_under_base_dir() {
        let mut s = service("inetd /bin/cat");
        s.chroot = "empty".into();
        let p = plan(&global(), &s, &fds(0), &ctx()).expect("plan");
        assert_eq!(
            p.chroot.as_deref().and_then(|c| c.to_str().ok()),
            Some("/run/r/empty")
        );
    }
}
