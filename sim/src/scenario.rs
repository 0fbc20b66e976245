//! Scenario files (`sim/scenarios/*.ron`): a configuration, a load, faults, and what must hold.
//! `cargo test -p sim` replays them all.

use std::collections::BTreeMap;

use roost_core::setup::{ListenerConfig, ListenerKind, MasterConfig, ServiceConfig, ServiceType};
use roost_core::time::Duration;
use serde::Deserialize;

use crate::world::{Misbehaviour, Report, World};

/// A service, with the defaults of an ordinary service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimService {
    /// Its name.
    pub name: String,
    /// Its type.
    #[serde(default = "default_type")]
    pub service_type: ServiceType,
    /// process_limit.
    #[serde(default = "default_process_limit")]
    pub process_limit: u32,
    /// client_limit (effective).
    #[serde(default = "one")]
    pub client_limit: u32,
    /// service_count.
    #[serde(default)]
    pub service_count: u32,
    /// process_min_avail.
    #[serde(default)]
    pub process_min_avail: u32,
    /// idle_kill in seconds; `None` = never.
    #[serde(default = "default_idle_kill")]
    pub idle_kill_secs: Option<u64>,
    /// A foreign program.
    #[serde(default)]
    pub foreign: bool,
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
    Some(60)
}

impl SimService {
    /// The effective configuration, with one inet listener.
    pub fn config(&self, port: u16) -> ServiceConfig {
        ServiceConfig {
            name: self.name.clone(),
            service_type: self.service_type,
            process_limit: self.process_limit,
            client_limit: if self.service_count > 0 {
                self.client_limit.min(self.service_count)
            } else {
                self.client_limit
            },
            service_count: self.service_count,
            process_min_avail: self.process_min_avail.min(self.process_limit),
            idle_kill: self.idle_kill_secs.map(Duration::from_secs),
            vsz_limit: 0,
            foreign: self.foreign,
            listeners: vec![ListenerConfig {
                name: self.name.clone(),
                kind: ListenerKind::Inet {
                    address: "*".into(),
                    port,
                    ssl: false,
                    haproxy: false,
                    reuse_port: false,
                },
            }],
        }
    }
}

/// Builds the master's configuration from services.
pub fn master_config(services: &[SimService], shutdown_clients: bool) -> MasterConfig {
    MasterConfig {
        services: services
            .iter()
            .enumerate()
            .map(|(i, s)| s.config(1000 + i as u16))
            .collect(),
        shutdown_clients,
    }
}

/// A wave of clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// When the first arrives.
    pub at_ms: u64,
    /// The service they connect to.
    pub service: String,
    /// How many.
    pub count: u32,
    /// Time between two arrivals.
    #[serde(default)]
    pub spacing_ms: u64,
    /// How long each is served.
    pub hold_ms: u64,
}

/// A fault at a time.
#[derive(Clone, Debug, Deserialize)]
pub enum Fault {
    /// The next `count` forks fail.
    FailForks(u32),
    /// New processes of the service exit 1 before their first status.
    CrashAtStart(String),
    /// New processes of the service never send a first status.
    Silent(String),
    /// New processes of the service ignore the idle SIGINT.
    IgnoreSigint(String),
    /// New processes of the service take this long to start.
    SlowExec(String, u64),
    /// kill -9 of this many processes of the service.
    Kill9(String, u32),
    /// Processes of the service behave again.
    Heal(String),
    /// A reload with these services.
    Reload(Vec<SimService>),
    /// TERM.
    Term,
}

/// What must hold at the end.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Each must be part of some notice.
    pub notices: Vec<String>,
    /// None may be part of any notice.
    pub no_notices: Vec<String>,
    /// Each service's peak process count at most this.
    pub max_processes: BTreeMap<String, u32>,
    /// Each service's peak process count at least this.
    pub min_peak_processes: BTreeMap<String, u32>,
    /// Each service's process count at the end.
    pub end_processes: BTreeMap<String, u32>,
    /// At least this many clients served.
    pub served_at_least: Option<u64>,
    /// At most this many dropped.
    pub dropped_at_most: Option<u64>,
    /// At least this many dropped.
    pub dropped_at_least: Option<u64>,
    /// The 99th percentile of the wait at most this.
    pub p99_wait_ms_at_most: Option<u64>,
    /// The master's exit status.
    pub exit: Option<i32>,
}

/// One scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows, and which rule.
    pub story: String,
    /// The services.
    pub services: Vec<SimService>,
    /// shutdown_clients.
    #[serde(default = "yes")]
    pub shutdown_clients: bool,
    /// Clients.
    #[serde(default)]
    pub load: Vec<Load>,
    /// Faults, with their times in ms.
    #[serde(default)]
    pub faults: Vec<(u64, Fault)>,
    /// How long to run.
    pub run_ms: u64,
    /// The seed.
    #[serde(default)]
    pub seed: u64,
    /// What must hold.
    pub expect: Expect,
}

fn yes() -> bool {
    true
}

impl Scenario {
    /// Parses a scenario file.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        ron::from_str(text)
            .map_err(|e| format!("{}:{}: {}", e.span.start.line, e.span.start.col, e.code))
    }

    /// Runs it and returns what was measured.
    pub fn run(&self) -> Report {
        let mut world = World::new(
            master_config(&self.services, self.shutdown_clients),
            self.seed,
        );
        for load in &self.load {
            world.clients(
                &load.service,
                load.at_ms,
                load.count,
                load.spacing_ms,
                load.hold_ms,
            );
        }
        for (at, fault) in &self.faults {
            let at = *at;
            match fault {
                Fault::FailForks(n) => world.fail_forks(at, *n),
                Fault::CrashAtStart(s) => world.misbehave(
                    at,
                    s,
                    Misbehaviour {
                        crash_at_start: true,
                        ..Default::default()
                    },
                ),
                Fault::Silent(s) => world.misbehave(
                    at,
                    s,
                    Misbehaviour {
                        silent: true,
                        ..Default::default()
                    },
                ),
                Fault::IgnoreSigint(s) => world.misbehave(
                    at,
                    s,
                    Misbehaviour {
                        ignores_sigint: true,
                        ..Default::default()
                    },
                ),
                Fault::SlowExec(s, ms) => world.misbehave(
                    at,
                    s,
                    Misbehaviour {
                        exec_delay_ms: *ms,
                        ..Default::default()
                    },
                ),
                Fault::Heal(s) => world.misbehave(at, s, Misbehaviour::default()),
                Fault::Kill9(s, n) => world.kill9(at, s, *n),
                Fault::Reload(services) => {
                    world.reload(at, master_config(services, self.shutdown_clients))
                }
                Fault::Term => world.term(at),
            }
        }
        world.run_until(self.run_ms);
        world.report().clone()
    }

    /// Checks the expectations; every failure is listed.
    pub fn check(&self, report: &Report) -> Vec<String> {
        let e = &self.expect;
        let mut failures = Vec::new();
        for text in &e.notices {
            if !report
                .notices
                .iter()
                .any(|(_, n)| n.contains(text.as_str()))
            {
                failures.push(format!("no notice contains {text:?}"));
            }
        }
        for text in &e.no_notices {
            if let Some((at, n)) = report
                .notices
                .iter()
                .find(|(_, n)| n.contains(text.as_str()))
            {
                failures.push(format!("unexpected notice at {at}: {n}"));
            }
        }
        for (service, max) in &e.max_processes {
            let peak = report.peak_processes.get(service).copied().unwrap_or(0);
            if peak > *max {
                failures.push(format!("{service}: peak {peak} processes > {max}"));
            }
        }
        for (service, min) in &e.min_peak_processes {
            let peak = report.peak_processes.get(service).copied().unwrap_or(0);
            if peak < *min {
                failures.push(format!("{service}: peak {peak} processes < {min}"));
            }
        }
        for (service, count) in &e.end_processes {
            let end = report.end_processes.get(service).copied().unwrap_or(0);
            if end != *count {
                failures.push(format!(
                    "{service}: {end} processes at the end, expected {count}"
                ));
            }
        }
        if let Some(n) = e.served_at_least {
            if report.served < n {
                failures.push(format!("served {} < {n}", report.served));
            }
        }
        if let Some(n) = e.dropped_at_most {
            if report.dropped > n {
                failures.push(format!("dropped {} > {n}", report.dropped));
            }
        }
        if let Some(n) = e.dropped_at_least {
            if report.dropped < n {
                failures.push(format!("dropped {} < {n}", report.dropped));
            }
        }
        if let Some(n) = e.p99_wait_ms_at_most {
            let p99 = report.wait_percentile(99);
            if p99 > n {
                failures.push(format!("p99 wait {p99} ms > {n}"));
            }
        }
        if e.exit.is_some() && e.exit != report.exited {
            failures.push(format!("exit {:?}, expected {:?}", report.exited, e.exit));
        }
        failures
    }
}
