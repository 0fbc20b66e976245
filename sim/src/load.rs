//! What the simulated world does to the master: the clients (a load profile), the faults of the
//! fake kernel, and timed events (a reload, a shutdown).
//!
//! Everything here is plain data read from RON (`sim/scenarios/*.ron`, `roost sim --load`), so
//! a scenario says in one file what happens and when. Units go last in the names (`_ms`).

use roost_core::login::{
    KillPolicy, OverflowPolicy, DEFAULT_OVERFLOW_POLICY, ORIGINAL_OVERFLOW_POLICY,
};
use roost_core::setup::{ListenerConfig, ListenerKind, MasterConfig, ServiceConfig, ServiceType};
use roost_core::signal::Signal;
use roost_core::time::Duration;
use serde::{Deserialize, Serialize};

/// A load profile: who connects, when, and how they behave; plus faults and timed events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadProfile {
    /// How long the simulation runs (simulated milliseconds).
    pub duration_ms: u64,
    /// The seed of every random draw (arrival jitter, delays, faults).
    #[serde(default)]
    pub seed: u64,
    /// Groups of clients.
    #[serde(default)]
    pub clients: Vec<ClientGroup>,
    /// Faults of the fake kernel and of the simulated processes.
    #[serde(default)]
    pub faults: Faults,
    /// Events at fixed times (signals to the master, reloads).
    #[serde(default)]
    pub events: Vec<TimedEvent>,
    /// The listen backlog of every listener; `None` = the original's max(process_limit ×
    /// client_limit, 4), capped at 4096 (somaxconn), as the pinned scenarios model it. The
    /// daemon listens with at least somaxconn, and `roost sim` fills that in when unset.
    #[serde(default)]
    pub backlog: Option<u32>,
    /// Milliseconds between two samples of the time series; 0 = about 500 samples per run.
    #[serde(default)]
    pub sample_ms: u64,
    /// How every simulated login process answers an overflow (core's
    /// `roost_core::login::OverflowPolicy`); `None` = roost's `DEFAULT_OVERFLOW_POLICY`.
    #[serde(default)]
    pub overflow_policy: Option<PolicySpec>,
    /// A what-if for a change to the master that the simulator cannot make itself: every
    /// change of a login service's "all processes full" state is also signalled (SIGUSR1) to
    /// its running processes at once, as if the master's 2 s rate limit
    /// (`LOGIN_NOTIFY_INTERVAL`, reference §2.8) were 0. Off in every pinned scenario.
    #[serde(default)]
    pub what_if_notify_at_once: bool,
    /// Network faults between client hosts and the server (the turmoil world only; the
    /// discrete-event driver has no network and ignores them).
    #[serde(default)]
    pub net_faults: Vec<NetFault>,
}

/// The longest run a profile may ask for: 30 simulated days.
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;

impl LoadProfile {
    /// What is wrong with the profile for `config`, one line each: what a run would silently
    /// ignore (clients of a service the configuration does not have, clients that start after
    /// the end, reversed ranges) or could not finish (a run longer than [`MAX_DURATION_MS`],
    /// clients that reconnect without waiting).
    pub fn problems(&self, config: &MasterConfig) -> Vec<String> {
        let mut problems = Vec::new();
        if self.duration_ms == 0 || self.duration_ms > MAX_DURATION_MS {
            problems.push(format!(
                "duration_ms: {} is not between 1 and {MAX_DURATION_MS} (30 days)",
                self.duration_ms
            ));
        }
        for (index, group) in self.clients.iter().enumerate() {
            let at = format!("clients[{index}] (service {:?})", group.service);
            if !config.services.iter().any(|s| s.name == group.service) {
                let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
                problems.push(format!(
                    "{at}: the configuration runs no such service (it runs: {})",
                    names.join(", ")
                ));
            }
            if group.start_ms >= self.duration_ms {
                problems.push(format!(
                    "{at}: start_ms {} is not before the end (duration_ms {})",
                    group.start_ms, self.duration_ms
                ));
            }
            for (name, (min, max)) in [
                ("login_delay_ms", group.login_delay_ms),
                ("session_ms", group.session_ms),
                ("auth_ms", group.auth_ms),
            ] {
                if min > max {
                    problems.push(format!(
                        "{at}: {name} ({min}, {max}): the minimum is above the maximum"
                    ));
                }
            }
            if group.reconnect > 0 && group.retry_ms == 0 {
                problems.push(format!(
                    "{at}: reconnect {} with retry_ms 0: a client dropped at once would reconnect at once, for ever in no time",
                    group.reconnect
                ));
            }
        }
        problems
    }
}

/// A network fault of the turmoil world: from `at_ms` for `duration_ms`, the links between the
/// server and the listed client hosts are cut (`partition`: messages are lost) or held
/// (`hold`: messages wait and are delivered on `release`), then repaired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetFault {
    /// When it starts.
    pub at_ms: u64,
    /// How long it lasts.
    pub duration_ms: u64,
    /// Hold messages instead of losing them.
    #[serde(default)]
    pub hold: bool,
    /// Client host indices (`client0`, `client1`, …); empty = every client host.
    #[serde(default)]
    pub client_hosts: Vec<usize>,
}

/// A login overflow policy in a scenario file: one of core's named policies, or every value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PolicySpec {
    /// `roost_core::login::ORIGINAL_OVERFLOW_POLICY` (Dovecot 2.3's timings).
    Original,
    /// `roost_core::login::DEFAULT_OVERFLOW_POLICY` (what roost ships).
    Default,
    /// Every field of `OverflowPolicy`.
    Custom {
        /// `delay_max`, ms.
        delay_max_ms: u64,
        /// `age_window`, ms.
        age_window_ms: u64,
        /// `jitter_span_ms`.
        jitter_span_ms: u32,
        /// `delayed_kill_max_slots`.
        delayed_kill_max_slots: u32,
        /// `kill_policy`: true = `OldestKillableOnly`, false = `OldestKillableElseOldest`.
        killable_only: bool,
        /// `victim_recheck_interval`, ms.
        recheck_ms: u64,
    },
}

impl PolicySpec {
    /// The core policy this names.
    pub fn policy(&self) -> OverflowPolicy {
        match *self {
            PolicySpec::Original => ORIGINAL_OVERFLOW_POLICY,
            PolicySpec::Default => DEFAULT_OVERFLOW_POLICY,
            PolicySpec::Custom {
                delay_max_ms,
                age_window_ms,
                jitter_span_ms,
                delayed_kill_max_slots,
                killable_only,
                recheck_ms,
            } => OverflowPolicy {
                delay_max: Duration::from_millis(delay_max_ms),
                age_window: Duration::from_millis(age_window_ms),
                jitter_span_ms,
                delayed_kill_max_slots,
                kill_policy: if killable_only {
                    KillPolicy::OldestKillableOnly
                } else {
                    KillPolicy::OldestKillableElseOldest
                },
                victim_recheck_interval: Duration::from_millis(recheck_ms),
            },
        }
    }
}

/// A group of clients that behave alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientGroup {
    /// The service they connect to (by name).
    pub service: String,
    /// How many clients.
    pub count: u32,
    /// When the first one connects.
    #[serde(default)]
    pub start_ms: u64,
    /// Arrivals are spread evenly over this window (with a seeded jitter of one step);
    /// 0 = all at once.
    #[serde(default)]
    pub spread_ms: u64,
    /// What they do once accepted.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// Time from accept to login (login services) or to the start of the session (others):
    /// drawn uniformly from `[min, max]`.
    #[serde(default = "default_login_delay")]
    pub login_delay_ms: (u64, u64),
    /// How long a client stays connected after logging in: drawn uniformly from `[min, max]`.
    #[serde(default = "default_session")]
    pub session_ms: (u64, u64),
    /// How often a client that was dropped or killed connects again.
    #[serde(default)]
    pub reconnect: u32,
    /// How long it waits before it does.
    #[serde(default = "default_retry")]
    pub retry_ms: u64,
    /// A connection that finds the accept queue full is not lost at once: the kernel drops
    /// the handshake and the client retransmits its SYN after 1, 2, 4, … s, this many times
    /// per attempt (Linux's tcp_syn_retries is 6), before the attempt counts as `BacklogFull`.
    #[serde(default)]
    pub syn_retries: u32,
    /// Of `login_delay_ms`, the last part spent in an auth lookup (the login process holds a
    /// reference: `InAuth`, not killable under `OldestKillableOnly`), drawn from `[min, max]`.
    #[serde(default)]
    pub auth_ms: (u64, u64),
    /// The turmoil world only: the client host (`client0`, `client1`, …) these clients run on,
    /// so a network fault can single them out; `None` = dealt round-robin over the hosts.
    #[serde(default)]
    pub client_host: Option<usize>,
    /// The turmoil world only: how long a client waits for an answer (connect, greeting, login
    /// reply) before it gives the attempt up, ms; `None` = 10 s. The discrete-event driver has
    /// no network delays, so its clients never give up.
    #[serde(default)]
    pub patience_ms: Option<u64>,
}

fn default_login_delay() -> (u64, u64) {
    (50, 200)
}

fn default_session() -> (u64, u64) {
    (1_000, 5_000)
}

fn default_retry() -> u64 {
    1_000
}

/// What a client does once a process accepted it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behaviour {
    /// Logs in after `login_delay_ms`, stays `session_ms`, leaves.
    #[default]
    Login,
    /// Connects and never logs in: a pre-auth flood. The login process disconnects it after
    /// the pre-auth timeout (180 s), unless it is killed to make room first.
    PreAuthIdle,
    /// Writes one message into the service's fifo listener and is done with it (a one-way
    /// writer, as of Dovecot's `replication-notify-fifo`); it counts as served once a process
    /// of the service has read the message. A write to a full fifo fails (EAGAIN) as
    /// `BacklogFull`. The discrete-event driver only: the turmoil world has no fifos.
    FifoWrite,
}

/// Faults. Probabilities are per process created (or per fork for `fork_fail`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Only these services are affected; empty = all.
    #[serde(default)]
    pub services: Vec<String>,
    /// `fork()` fails (EAGAIN).
    #[serde(default)]
    pub fork_fail: f64,
    /// The process exits with status 89 before its first status.
    #[serde(default)]
    pub crash_at_start: f64,
    /// The process is killed by signal 11 at a time drawn from `crash_after_ms` after it started.
    #[serde(default)]
    pub crash_later: f64,
    /// When a `crash_later` process crashes.
    #[serde(default = "default_crash_after")]
    pub crash_after_ms: (u64, u64),
    /// Time from fork to the first status (exec and initialisation), drawn from `[min, max]`.
    #[serde(default = "default_exec")]
    pub exec_ms: (u64, u64),
    /// The process ignores the idle-kill SIGINT (and does not answer it with a status).
    #[serde(default)]
    pub ignore_sigint: f64,
    /// The process never sends its first status (and never accepts).
    #[serde(default)]
    pub never_status: f64,
    /// From this time on every fault is off (the liveness phase of a swarm run); `None` = never.
    #[serde(default)]
    pub off_at_ms: Option<u64>,
}

impl Default for Faults {
    /// No faults; exec takes 1-5 ms.
    fn default() -> Faults {
        Faults {
            services: Vec::new(),
            fork_fail: 0.0,
            crash_at_start: 0.0,
            crash_later: 0.0,
            crash_after_ms: default_crash_after(),
            exec_ms: default_exec(),
            ignore_sigint: 0.0,
            never_status: 0.0,
            off_at_ms: None,
        }
    }
}

fn default_crash_after() -> (u64, u64) {
    (1_000, 30_000)
}

fn default_exec() -> (u64, u64) {
    (1, 5)
}

/// An event at a fixed time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimedEvent {
    /// When.
    pub at_ms: u64,
    /// What.
    pub event: Event,
}

/// Something that happens to the master from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A signal to the master (TERM = shutdown).
    Signal(Signal),
    /// SIGHUP, then the same configuration read again (a new generation).
    Reload,
    /// SIGHUP, then this configuration.
    ReloadWith(SimConfig),
}

/// A small configuration for scenario files: the settings the master's rules use, with the
/// defaults of a stock service, turned into a [`MasterConfig`] by [`SimConfig::master_config`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// The services.
    pub services: Vec<ServiceSpec>,
    /// `shutdown_clients`.
    #[serde(default = "yes")]
    pub shutdown_clients: bool,
}

fn yes() -> bool {
    true
}

/// One service of a [`SimConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's name.
    pub name: String,
    /// `protocol`: the protocol it serves (`pop3` for pop3-login and pop3); a login service
    /// hands logged-in clients to the unix socket `login/<protocol>` when there is one. Empty
    /// (the default) = none.
    #[serde(default)]
    pub protocol: String,
    /// `type`.
    #[serde(default = "default_type")]
    pub service_type: ServiceType,
    /// `process_limit`.
    #[serde(default = "default_process_limit")]
    pub process_limit: u32,
    /// `client_limit` (capped by service_count when that is set, as the original does).
    #[serde(default = "one")]
    pub client_limit: u32,
    /// `service_count`; 0 = unlimited.
    #[serde(default)]
    pub service_count: u32,
    /// `process_min_avail`.
    #[serde(default)]
    pub process_min_avail: u32,
    /// `idle_kill` in milliseconds; `None` = never.
    #[serde(default = "default_idle_kill")]
    pub idle_kill_ms: Option<u64>,
    /// The TCP port of its one inet listener; 0 = no listener.
    #[serde(default)]
    pub port: u16,
    /// The path of its one unix listener (e.g. `login/pop3`, the post-login service's socket a
    /// login service hands logged-in clients to); `None` = no unix listener.
    #[serde(default)]
    pub unix_listener: Option<String>,
    /// The path of its one fifo listener (e.g. `replication-notify-fifo`, which one-way
    /// writers fill, [`Behaviour::FifoWrite`]); `None` = no fifo listener.
    #[serde(default)]
    pub fifo_listener: Option<String>,
}

fn default_type() -> ServiceType {
    ServiceType::Default
}

fn default_process_limit() -> u32 {
    100
}

fn one() -> u32 {
    1
}

fn default_idle_kill() -> Option<u64> {
    Some(60_000)
}

impl SimConfig {
    /// The effective configuration the master runs on.
    pub fn master_config(&self) -> MasterConfig {
        MasterConfig {
            services: self
                .services
                .iter()
                .map(ServiceSpec::service_config)
                .collect(),
            shutdown_clients: self.shutdown_clients,
        }
    }
}

impl ServiceSpec {
    /// Its listeners in the order a child receives them (unix, fifo, inet; reference §1.2).
    fn listeners(&self) -> Vec<ListenerConfig> {
        let mut listeners = Vec::new();
        // A unix or fifo listener is named by the last part of its path (reference §1.2).
        let name = |path: &String| path.rsplit('/').next().unwrap_or(path).to_owned();
        if let Some(path) = &self.unix_listener {
            listeners.push(ListenerConfig {
                name: name(path),
                kind: ListenerKind::Unix {
                    path: path.clone(),
                    mode: 0o666,
                    user: String::new(),
                    group: String::new(),
                },
            });
        }
        if let Some(path) = &self.fifo_listener {
            listeners.push(ListenerConfig {
                name: name(path),
                kind: ListenerKind::Fifo {
                    path: path.clone(),
                    mode: 0o600,
                    user: String::new(),
                    group: String::new(),
                },
            });
        }
        if self.port != 0 {
            listeners.push(ListenerConfig {
                name: self.name.clone(),
                kind: ListenerKind::Inet {
                    address: "0.0.0.0".to_owned(),
                    port: self.port,
                    ssl: false,
                    haproxy: false,
                    reuse_port: false,
                },
            });
        }
        listeners
    }

    /// The effective settings of this service.
    pub fn service_config(&self) -> ServiceConfig {
        let mut client_limit = self.client_limit.max(1);
        if self.service_count > 0 {
            client_limit = client_limit.min(self.service_count);
        }
        let process_limit = self.process_limit.max(1);
        ServiceConfig {
            name: self.name.clone(),
            protocol: self.protocol.clone(),
            service_type: self.service_type,
            process_limit,
            client_limit,
            service_count: self.service_count,
            process_min_avail: self.process_min_avail.min(process_limit),
            idle_kill: self.idle_kill_ms.map(Duration::from_millis),
            vsz_limit: 256 << 20,
            foreign: false,
            listeners: self.listeners(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MasterConfig {
        MasterConfig {
            services: vec![ServiceConfig {
                name: "echo".into(),
                protocol: String::new(),
                service_type: ServiceType::Default,
                process_limit: 5,
                client_limit: 1,
                service_count: 1,
                process_min_avail: 0,
                idle_kill: None,
                vsz_limit: 0,
                foreign: false,
                listeners: Vec::new(),
            }],
            shutdown_clients: true,
        }
    }

    #[test]
    fn a_profile_a_run_would_silently_misread_or_never_finish_is_refused() {
        let text = r#"LoadProfile(duration_ms: 18446744073709551615, clients: [
            ClientGroup(service: "echo", count: 3, reconnect: 5, retry_ms: 0),
            ClientGroup(service: "nosuch", count: 1, session_ms: (5000, 10)),
        ])"#;
        let profile: LoadProfile = ron::from_str(text).expect("reads");
        assert_eq!(
            profile.problems(&config()),
            vec![
                "duration_ms: 18446744073709551615 is not between 1 and 2592000000 (30 days)",
                "clients[0] (service \"echo\"): reconnect 5 with retry_ms 0: a client dropped at once would reconnect at once, for ever in no time",
                "clients[1] (service \"nosuch\"): the configuration runs no such service (it runs: echo)",
                "clients[1] (service \"nosuch\"): session_ms (5000, 10): the minimum is above the maximum",
            ]
        );
        let fine: LoadProfile = ron::from_str(
            r#"LoadProfile(duration_ms: 1000, clients: [ClientGroup(service: "echo", count: 3, start_ms: 1000)])"#,
        )
        .expect("reads");
        assert_eq!(
            fine.problems(&config()),
            vec!["clients[0] (service \"echo\"): start_ms 1000 is not before the end (duration_ms 1000)"]
        );
    }
}
