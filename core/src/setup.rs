//! What the master runs on: the effective settings of each service it will supervise.
//!
//! The configuration module (`crate::config`) turns a file into `Settings` as written, runs the
//! checks of reference §3 on them, and then derives this `MasterConfig`: defaults applied
//! (`process_limit = 0` → `default_process_limit`, `client_limit` capped by `service_count`,
//! `idle_kill = 0` → `default_idle_kill`), services of disabled protocols and services roost has
//! no program for left out, inet address lists split into one listener per address. The master
//! never looks at a setting as written; the checks never look at this.

use serde::{Deserialize, Serialize};

use crate::time::Duration;

/// The effective configuration of one generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct MasterConfig {
    /// The services to supervise, in configuration order.
    pub services: Vec<ServiceConfig>,
    /// `shutdown_clients`: whether processes of an old generation are signalled after a reload
    /// (TERM at 6 s, KILL from 12 s) and whether children die with the master (reference §4.3).
    pub shutdown_clients: bool,
}

impl MasterConfig {
    /// How many processes the services may have at once, all together: the RLIMIT_NPROC the
    /// master raises itself to when it is lower (reference §3.3), so that full pools are not
    /// refused their forks by the limit.
    pub fn process_limit_total(&self) -> u64 {
        self.services
            .iter()
            .map(|s| u64::from(s.process_limit))
            .fold(0, u64::saturating_add)
    }
}

/// The `type` setting of a service (reference §5, seed 000).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ServiceType {
    /// `""`: an ordinary service.
    Default,
    /// `startup`: one process is created at every generation start.
    Startup,
    /// `log`: created first, and again whenever none is left.
    Log,
    /// `anvil`: survives reloads; never restarted, never idle-killed.
    Anvil,
    /// `config`.
    Config,
    /// `login`: gets the "all processes full" notification.
    Login,
    /// `worker`: warns about its limit only when the condition lasts 500 ms.
    Worker,
}

impl ServiceType {
    /// The word used in configuration files.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceType::Default => "",
            ServiceType::Startup => "startup",
            ServiceType::Log => "log",
            ServiceType::Anvil => "anvil",
            ServiceType::Config => "config",
            ServiceType::Login => "login",
            ServiceType::Worker => "worker",
        }
    }

    /// Parses the configuration word; `None` for an unknown type.
    pub fn from_word(word: &str) -> Option<ServiceType> {
        Some(match word {
            "" => ServiceType::Default,
            "startup" => ServiceType::Startup,
            "log" => ServiceType::Log,
            "anvil" => ServiceType::Anvil,
            "config" => ServiceType::Config,
            "login" => ServiceType::Login,
            "worker" => ServiceType::Worker,
            _ => return None,
        })
    }
}

/// The effective settings of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service's name (`service NAME { }`), unique within a generation.
    pub name: String,
    /// `protocol`: the protocol it serves (`pop3` for both pop3-login and pop3; a login
    /// service hands logged-in clients to `login/<protocol>`); empty = none. The master's
    /// rules do not use it; drivers do. Missing in older RON traces, hence the default.
    #[serde(default)]
    pub protocol: String,
    /// `type`.
    pub service_type: ServiceType,
    /// Effective `process_limit`, at least 1.
    pub process_limit: u32,
    /// Effective `client_limit` (after defaulting and capping by `service_count`), at least 1.
    pub client_limit: u32,
    /// `service_count`: connections a process handles before it exits; 0 = unlimited.
    pub service_count: u32,
    /// `process_min_avail`: processes kept available, never more than `process_limit`.
    pub process_min_avail: u32,
    /// Effective `idle_kill`; `None` = never (4294967295 secs, or a never-idle-die service).
    pub idle_kill: Option<Duration>,
    /// Effective `vsz_limit` in bytes; 0 = unlimited. The master only quotes it in the
    /// out-of-memory exit text; the driver applies it.
    pub vsz_limit: u64,
    /// A foreign program (not roost-aware): a fixed pool of `process_min_avail` processes,
    /// each counted available with `client_limit` slots; no first-status kill, no idle kill.
    pub foreign: bool,
    /// Its listeners, unix first, then fifo, then inet, each in configuration order.
    pub listeners: Vec<ListenerConfig>,
}

/// One listener of a service, as the driver has to create it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The name a child sees (`LISTEN_FDNAMES`): the inet section name, or the basename of a
    /// unix/fifo path.
    pub name: String,
    /// What to create.
    pub kind: ListenerKind,
}

/// The three kinds of listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ListenerKind {
    /// `unix_listener PATH { }`; `path` absolute (resolved against base_dir).
    Unix {
        /// Absolute path of the socket.
        path: String,
        /// File mode, e.g. 0o600.
        mode: u32,
        /// Owner (empty: the master's).
        user: String,
        /// Group (empty: the master's).
        group: String,
    },
    /// `fifo_listener PATH { }`; `path` absolute.
    Fifo {
        /// Absolute path of the fifo.
        path: String,
        /// File mode, e.g. 0o600.
        mode: u32,
        /// Owner (empty: the master's).
        user: String,
        /// Group (empty: the master's).
        group: String,
    },
    /// `inet_listener NAME { }`, one per address of its address list.
    Inet {
        /// One address as configured (`*`, `::`, `127.0.0.1`, a host name).
        address: String,
        /// TCP port, never 0 (port 0 disables the listener and is left out).
        port: u16,
        /// `ssl = yes`: implicit TLS.
        ssl: bool,
        /// `haproxy = yes`: a PROXY protocol header comes first.
        haproxy: bool,
        /// `reuse_port = yes`.
        reuse_port: bool,
    },
}

impl ListenerConfig {
    /// Whether a listener of the old generation can be handed to this one at a reload without
    /// an accept gap: inet listeners with the same address and port (reference §4.3 step 6).
    /// roost also keeps unchanged unix and fifo listeners, where the original recreates them.
    pub fn can_take_over(&self, old: &ListenerConfig) -> bool {
        match (&self.kind, &old.kind) {
            (
                ListenerKind::Inet { address, port, .. },
                ListenerKind::Inet {
                    address: old_address,
                    port: old_port,
                    ..
                },
            ) => address == old_address && port == old_port,
            (ListenerKind::Unix { .. }, ListenerKind::Unix { .. })
            | (ListenerKind::Fifo { .. }, ListenerKind::Fifo { .. }) => self.kind == old.kind,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_limit_total_sums_every_service_and_cannot_overflow() {
        let service = |process_limit| ServiceConfig {
            name: "s".to_owned(),
            protocol: String::new(),
            service_type: ServiceType::Default,
            process_limit,
            client_limit: 1,
            service_count: 0,
            process_min_avail: 0,
            idle_kill: None,
            vsz_limit: 0,
            foreign: false,
            listeners: Vec::new(),
        };
        let config = |limits: &[u32]| MasterConfig {
            services: limits.iter().map(|&l| service(l)).collect(),
            shutdown_clients: true,
        };
        assert_eq!(config(&[]).process_limit_total(), 0);
        assert_eq!(config(&[100, 1, 1024]).process_limit_total(), 1125);
        assert_eq!(
            config(&[u32::MAX, u32::MAX]).process_limit_total(),
            2 * u64::from(u32::MAX)
        );
    }
}
