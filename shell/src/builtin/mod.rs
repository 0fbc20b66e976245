//! The built-in services: modes of the roost binary (`roost --builtin NAME`), each a small
//! program on the child runtime (DESIGN.md "executable").
//!
//! - `log` ([`log`]): writes every other child's stderr lines to log_path.
//! - `inetd` ([`crate::runtime::run_inetd`]): one connection, then exec a program.
//! - `anvil` ([`anvil`]): connection counts per user and IP, the authentication penalty.
//! - `auth` ([`auth`]): passdb and userdb lookups for login and post-login processes.
//! - `pop3-login` ([`pop3_login`]): POP3 before authentication, TLS, PROXY, the handoff.
//! - `pop3` ([`pop3`]): a logged-in POP3 session over a Maildir.
//!
//! How they find each other (paths relative to base_dir; a chrooted login process sees
//! `base_dir/login` as `/`):
//!
//! | socket | served by | used by |
//! |---|---|---|
//! | `login/login` | auth (login requests) | pop3-login |
//! | `auth-userdb`, `auth-master` | auth (userdb requests) | pop3 |
//! | `auth-client`, `auth-login` | auth (login requests) | other clients |
//! | `login/pop3` | pop3 (handoffs) | pop3-login |
//! | `anvil` | anvil | the master connects one socket per pop3-login / pop3 process and hands it over as `ROOST_ANVIL_FD`; `roost who` |

pub mod anvil;
pub mod auth;
pub mod check;
pub mod conn;
pub mod handoff;
pub mod log;
pub mod pop3;
pub mod pop3_login;
pub mod server;

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use roost_core::settings::{ServiceSettings, Settings};

use crate::runtime::ChildEnv;

/// The names `executable` may give, besides paths.
pub const BUILTINS: &[&str] = &["log", "inetd", "anvil", "auth", "pop3-login", "pop3"];

/// True when the built-in `name` runs with these arguments: inetd needs a program, the others
/// take none.
pub fn accepts(name: &str, args: &[String]) -> bool {
    match name {
        "inetd" => !args.is_empty(),
        _ => BUILTINS.contains(&name) && args.is_empty(),
    }
}

/// Runs the built-in `name` with `args`; returns the exit status.
pub fn run(name: &str, args: &[String]) -> i32 {
    match name {
        "log" => log::main(),
        "inetd" => crate::runtime::run_inetd(args),
        "anvil" => anvil::main(),
        "auth" => auth::main(),
        "pop3-login" => pop3_login::main(),
        "pop3" => pop3::main(),
        other => {
            say("Fatal", &format!("unknown built-in: {other}"));
            EXIT_FATAL
        }
    }
}

/// Exit status of a built-in that cannot start (the original's FATAL_DEFAULT).
pub const EXIT_FATAL: i32 = 89;

/// What every built-in reads at start: the child protocol, its settings, and the settings of
/// its own service.
pub struct Start {
    /// The child protocol.
    pub env: ChildEnv,
    /// The globals and this service.
    pub settings: Settings,
    /// This service.
    pub service: ServiceSettings,
    /// `ROOST_RESTRICT_CHROOT`, when the child will chroot (paths are then relative to it).
    pub chroot: Option<PathBuf>,
    /// The anvil connection the master made for this process.
    pub anvil_fd: Option<RawFd>,
}

impl Start {
    /// Reads the environment and the settings fd; a problem is one line for the log.
    pub fn read(builtin: &str) -> Result<Start, String> {
        let env = ChildEnv::from_env().map_err(|e| format!("{builtin}: {e}"))?;
        let fd: RawFd = std::env::var("ROOST_SETTINGS_FD")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{builtin}: ROOST_SETTINGS_FD is missing"))?;
        let text = read_settings_fd(fd).map_err(|e| format!("{builtin}: settings fd: {e}"))?;
        let settings: Settings =
            ron::from_str(&text).map_err(|e| format!("{builtin}: settings: {e}"))?;
        let service = settings
            .services
            .iter()
            .find(|s| s.name == env.service)
            .cloned()
            .ok_or_else(|| format!("{builtin}: no settings for service {}", env.service))?;
        let chroot = std::env::var("ROOST_RESTRICT_CHROOT")
            .ok()
            .map(PathBuf::from);
        let anvil_fd = std::env::var("ROOST_ANVIL_FD")
            .ok()
            .and_then(|v| v.parse().ok());
        Ok(Start {
            env,
            settings,
            service,
            chroot,
            anvil_fd,
        })
    }

    /// A setting of the globals roost does not type (`mail_location`, ...), or `default`.
    pub fn global(&self, key: &str, default: &str) -> String {
        self.settings
            .global
            .other
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    /// A yes/no global setting roost does not type.
    pub fn global_bool(&self, key: &str, default: bool) -> bool {
        match self.settings.global.other.get(key).map(String::as_str) {
            Some("yes") => true,
            Some("no") => false,
            _ => default,
        }
    }

    /// Where this process finds `relative` (a path under base_dir) once it has chrooted.
    pub fn socket_path(&self, relative: &str) -> PathBuf {
        let full = Path::new(&self.settings.global.base_dir).join(relative);
        match &self.chroot {
            Some(root) => match full.strip_prefix(root) {
                Ok(inside) => Path::new("/").join(inside),
                Err(_) => full,
            },
            None => full,
        }
    }

    /// Drops to the identity the master asked for (`ROOST_RESTRICT_*`). A login process also
    /// gives up forking for good (reference §3.3: RLIMIT_NPROC 1), so that whoever takes over
    /// one through a hostile client cannot start anything from it.
    pub fn restrict(&self, builtin: &str) -> Result<(), String> {
        ChildEnv::restrict_privileges()
            .map_err(|e| format!("{builtin}: dropping privileges failed: {e}"))?;
        if self.env.is_login {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, 1, 1)
                .map_err(|e| format!("{builtin}: setrlimit(RLIMIT_NPROC, 1) failed: {e}"))?;
        }
        Ok(())
    }
}

/// The `main` of a built-in: reads its start, runs `body`, turns a failure into one `Fatal:`
/// line and the exit status of a process that cannot run.
pub fn main_of(builtin: &str, body: impl FnOnce(Start) -> Result<i32, String>) -> i32 {
    match Start::read(builtin).and_then(body) {
        Ok(code) => code,
        Err(e) => {
            say("Fatal", &e);
            EXIT_FATAL
        }
    }
}

impl Start {
    /// The child machine's configuration for this process.
    pub fn child_config(&self, never_idle_die: bool) -> roost_core::child::ChildConfig {
        roost_core::child::ChildConfig {
            client_limit: self.env.client_limit,
            service_count: self.env.service_count,
            never_idle_die,
            die_with_master: self.env.die_with_master,
            has_die_callback: false,
            is_login: self.env.is_login,
            starts_with_client: false,
        }
    }
}

/// Reads the sealed settings memfd from offset 0 (its offset is shared with the master).
fn read_settings_fd(fd: RawFd) -> io::Result<String> {
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: pread into a buffer we own, on an fd we inherited.
        let n = unsafe {
            libc::pread(
                fd,
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                text.len() as libc::off_t,
            )
        };
        match n {
            n if n < 0 => return Err(io::Error::last_os_error()),
            0 => break,
            n => text.extend_from_slice(&chunk[..n as usize]),
        }
    }
    String::from_utf8(text).map_err(|_| io::Error::other("not UTF-8"))
}

/// One line to the log (stderr is the service's log pipe): `LEVEL: text`, in one write, so
/// that it reaches the pipe whole (up to PIPE_BUF bytes) whatever this service's other
/// processes write meanwhile. `eprintln!` would write it in pieces.
pub fn say(level: &str, text: &str) {
    let line = format!("{level}: {text}\n");
    let _ = io::Write::write_all(&mut io::stderr().lock(), line.as_bytes());
}

/// One log line of information.
pub fn info(text: &str) {
    say("Info", text);
}

/// One error line.
pub fn error(text: &str) {
    say("Error", text);
}
