//! Settings as written: the typed form of a configuration, before defaults are applied.
//!
//! `crate::config` parses the text syntax of the seeds (and RON) into `Settings`; the checks of
//! reference §3 and `roost config` work on this form, because the original's warnings count the
//! configuration as written. `Settings` is also what a child receives on its settings fd (as RON)
//! and what the simulator loads. The effective values the master uses are derived from it into
//! [`crate::setup::MasterConfig`].
//!
//! Conventions of the original kept here so that `roost config` prints what doveconf prints:
//! a count of 0 means "use the `default_*` setting"; `idle_kill` of 0 means `default_idle_kill`
//! and 4294967295 secs means never; `vsz_limit` of `u64::MAX` means `default_vsz_limit` and 0
//! means unlimited.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Duration;

/// `idle_kill` meaning "never" (4294967295 secs).
pub const IDLE_KILL_NEVER: Duration = Duration::from_secs(4_294_967_295);

/// `vsz_limit` meaning "use `default_vsz_limit`" (18446744073709551615 B).
pub const VSZ_LIMIT_DEFAULT: u64 = u64::MAX;

/// A whole configuration: the global settings and every service, defaults merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The global settings.
    pub global: GlobalSettings,
    /// Every service (built-in defaults modified by the file, then new ones), in doveconf's
    /// order.
    pub services: Vec<ServiceSettings>,
    /// The `passdb { }` sections, in order: what the auth service checks passwords against.
    #[serde(default)]
    pub passdbs: Vec<AuthDbSettings>,
    /// The `userdb { }` sections, in order: where post-login processes find uid, gid and home.
    #[serde(default)]
    pub userdbs: Vec<AuthDbSettings>,
}

/// One `passdb { }` or `userdb { }` section: a driver and its arguments, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthDbSettings {
    /// `driver` (`passwd-file`, `static`, ...).
    pub driver: String,
    /// `args`, `$variables` expanded.
    pub args: String,
}

/// The global settings of reference §5.1 that roost uses, and every other one as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSettings {
    /// Runtime directory: pid file, control socket, relative unix listeners, chroots.
    pub base_dir: String,
    /// Persistent state directory.
    pub state_dir: String,
    /// Where relative executables are found.
    pub libexec_dir: String,
    /// Prefix of process titles; name of the instance.
    pub instance_name: String,
    /// Enabled protocols, space separated, as written (`imap pop3 lmtp`, `none`).
    pub protocols: String,
    /// Default listen addresses of inet listeners, comma or space separated.
    pub listen: String,
    /// `yes`, `no` or `required`.
    pub ssl: String,
    /// Certificate (`<file` value kept as written).
    pub ssl_cert: String,
    /// Private key (`<file` value kept as written); a secret.
    pub ssl_key: String,
    /// User of internal services.
    pub default_internal_user: String,
    /// Group of internal services.
    pub default_internal_group: String,
    /// User of login processes.
    pub default_login_user: String,
    /// `process_limit` of services that set 0.
    pub default_process_limit: u32,
    /// `client_limit` of services that set 0.
    pub default_client_limit: u32,
    /// `idle_kill` of services that set 0.
    pub default_idle_kill: Duration,
    /// `vsz_limit` of services that leave it unset, in bytes; 0 = unlimited.
    pub default_vsz_limit: u64,
    /// Whether children die with the master, and old generations are signalled on reload.
    pub shutdown_clients: bool,
    /// Show more in process titles.
    pub verbose_proctitle: bool,
    /// Environment variables children keep (`NAME` or `NAME=VALUE`, space separated).
    pub import_environment: String,
    /// `syslog`, `/dev/stderr`, or a file path.
    pub log_path: String,
    /// Info lines go here if set, else to log_path.
    pub info_log_path: String,
    /// Debug lines go here if set, else to info_log_path.
    pub debug_log_path: String,
    /// The syslog facility.
    pub syslog_facility: String,
    /// strftime format prefixed to file log lines.
    pub log_timestamp: String,
    /// Networks whose PROXY protocol headers are trusted, space separated.
    pub haproxy_trusted_networks: String,
    /// Every other global setting, kept as written and shown by `roost config`.
    pub other: BTreeMap<String, String>,
}

/// One `service NAME { }` as written (defaults merged), reference §5.1-5.2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// The section name.
    pub name: String,
    /// The program and its arguments, split on spaces.
    pub executable: String,
    /// `type` as written (`""`, `login`, …); checked by the configuration checks.
    pub service_type: String,
    /// Enabled only if this protocol is listed in `protocols`; empty = always.
    pub protocol: String,
    /// Unix user the process runs as; empty = the master's.
    pub user: String,
    /// Primary group; empty = the user's.
    pub group: String,
    /// Secondary groups, space separated.
    pub extra_groups: String,
    /// A secondary group the process may enable later.
    pub privileged_group: String,
    /// chroot directory, relative to base_dir; empty = none.
    pub chroot: String,
    /// Drop privileges before exec rather than in the child.
    pub drop_priv_before_exec: bool,
    /// Connections per process; 0 = `default_client_limit`.
    pub client_limit: u32,
    /// Connections a process handles before it exits; 0 = unlimited.
    pub service_count: u32,
    /// Processes at most; 0 = `default_process_limit`.
    pub process_limit: u32,
    /// Processes kept available.
    pub process_min_avail: u32,
    /// Idle time before an idle-kill request; 0 = `default_idle_kill`.
    pub idle_kill: Duration,
    /// Address-space limit in bytes; `VSZ_LIMIT_DEFAULT` = `default_vsz_limit`, 0 = none.
    pub vsz_limit: u64,
    /// Not roost-aware: a fixed pool, privileges dropped before exec (DESIGN.md).
    pub foreign: bool,
    /// `unix_listener PATH { }`, in configuration order.
    pub unix_listeners: Vec<FileListenerSettings>,
    /// `fifo_listener PATH { }`, in configuration order.
    pub fifo_listeners: Vec<FileListenerSettings>,
    /// `inet_listener NAME { }`, in configuration order.
    pub inet_listeners: Vec<InetListenerSettings>,
}

/// A unix or fifo listener as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerSettings {
    /// Path, relative to base_dir unless absolute; also the section name.
    pub path: String,
    /// Octal mode; 0 disables the listener.
    pub mode: u32,
    /// Owner; empty = the master's.
    pub user: String,
    /// Group; empty = the master's.
    pub group: String,
}

/// An inet listener as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InetListenerSettings {
    /// The section name (`pop3`, `pop3s`).
    pub name: String,
    /// Addresses, comma or space separated; empty = the global `listen`.
    pub address: String,
    /// TCP port; 0 disables the listener.
    pub port: u16,
    /// Implicit TLS.
    pub ssl: bool,
    /// A PROXY protocol header comes first.
    pub haproxy: bool,
    /// SO_REUSEPORT.
    pub reuse_port: bool,
}
