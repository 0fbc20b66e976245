//! Scenario files (`sim/scenarios/*.ron`): a configuration, a load with faults and timed
//! events, and what must hold afterwards. `cargo test -p sim` replays every file in the
//! directory (sim/tests/scenarios.rs), through the discrete-event driver unless the file asks
//! for the turmoil world (`world: Turmoil(..)`, for what only a network shows: held or cut links,
//! clients that give up).
//!
//! Notices are matched by their exact text (the operator-visible Display of the core's
//! `Notice`), optionally within a time window, so a scenario pins both the wording and the
//! timing of a rule. So are the lines login processes send the clients they disconnect
//! (`told`), and in the turmoil world the lines clients read (`heard`), which a held link
//! delays.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::des::{self, Options};
use crate::load::{LoadProfile, SimConfig};
use crate::net::{self, NetOptions};
use crate::plan::Report;
use crate::stats;

/// One scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario proves, and which rule of the reference it exercises.
    pub story: String,
    /// The configuration.
    pub config: SimConfig,
    /// The load, faults and events.
    pub load: LoadProfile,
    /// What must hold.
    pub expect: Expect,
    /// The world that runs it.
    #[serde(default)]
    pub world: WorldKind,
}

/// The world a scenario runs in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum WorldKind {
    /// The discrete-event driver: no network, the clock jumps to the next event.
    #[default]
    Events,
    /// The turmoil world: clients on simulated TCP, network faults (`net_faults`).
    Turmoil {
        /// turmoil's tick, ms.
        tick_ms: u64,
        /// Client hosts (`client0`, `client1`, …).
        client_hosts: usize,
    },
}

/// The expectations of a scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Notices that must appear (exact text), with bounds on their count and time.
    #[serde(default)]
    pub notices: Vec<NoticeExpect>,
    /// Notices containing one of these must all differ (a rule that fires once per process).
    #[serde(default)]
    pub unique: Vec<String>,
    /// Substrings no notice may contain.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Per-service bounds.
    #[serde(default)]
    pub services: Vec<ServiceExpect>,
    /// The master's exit status at the end (`None`: still running).
    #[serde(default)]
    pub exit: Option<i32>,
    /// Every client must be done (served, dropped, killed) by the end.
    #[serde(default)]
    pub all_clients_done: bool,
    /// Lines login processes sent the clients they disconnected (exact text, e.g.
    /// `-ERR Connection queue full`), with bounds on their count and on when they were sent.
    #[serde(default)]
    pub told: Vec<NoticeExpect>,
    /// The turmoil world only: `-ERR` lines clients read, with bounds on their count and on
    /// when they were read.
    #[serde(default)]
    pub heard: Vec<NoticeExpect>,
}

/// One expected notice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeExpect {
    /// The exact text (or a part of it, with `contains`).
    pub text: String,
    /// Match any notice that contains `text` (for texts that name a pid).
    #[serde(default)]
    pub contains: bool,
    /// At least this many times (within the window).
    #[serde(default = "one")]
    pub min: u64,
    /// At most this many times (within the window).
    #[serde(default)]
    pub max: Option<u64>,
    /// Only notices from `[from, to]` ms count.
    #[serde(default)]
    pub window_ms: Option<(u64, u64)>,
}

fn one() -> u64 {
    1
}

/// Bounds on one service's report; `(min, max)` pairs, both inclusive.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceExpect {
    /// The service's name.
    pub name: String,
    /// Peak processes.
    #[serde(default)]
    pub peak_processes: Option<(u32, u32)>,
    /// Processes at the end.
    #[serde(default)]
    pub final_processes: Option<(u32, u32)>,
    /// Clients served.
    #[serde(default)]
    pub served: Option<(u64, u64)>,
    /// Connections dropped.
    #[serde(default)]
    pub dropped: Option<(u64, u64)>,
    /// Connections a process accepted.
    #[serde(default)]
    pub accepted: Option<(u64, u64)>,
    /// Connections that waited in the queue.
    #[serde(default)]
    pub queued: Option<(u64, u64)>,
    /// Login clients killed to make room.
    #[serde(default)]
    pub login_killed: Option<(u64, u64)>,
    /// Connections lost with their process.
    #[serde(default)]
    pub lost: Option<(u64, u64)>,
    /// Pre-login clients disconnected by the pre-auth timeout.
    #[serde(default)]
    pub timed_out: Option<(u64, u64)>,
    /// 99th percentile queue wait, ms.
    #[serde(default)]
    pub wait_p99_ms: Option<(u64, u64)>,
    /// Median time from first connect attempt to login, ms (served clients).
    #[serde(default)]
    pub login_p50_ms: Option<(u64, u64)>,
    /// 99th percentile time from first connect attempt to login, ms (served clients).
    #[serde(default)]
    pub login_p99_ms: Option<(u64, u64)>,
    /// Processes created.
    #[serde(default)]
    pub spawned: Option<(u64, u64)>,
    /// The first steps that created processes must have created these many, in order.
    #[serde(default)]
    pub spawn_steps: Option<Vec<u32>>,
}

/// Parses a scenario file.
pub fn parse(text: &str) -> Result<Scenario, ron::error::SpannedError> {
    ron::from_str(text)
}

/// What a run left for the checks, from either world.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The capacity report (per-service figures, notices, exit).
    pub report: Report,
    /// Lines sent to disconnected clients, with their times.
    pub told: Vec<(u64, String)>,
    /// Lines clients read, with their times (the turmoil world only).
    pub heard: Option<Vec<(u64, String)>>,
    /// Per service, processes created by each step that created any.
    pub spawn_steps: BTreeMap<String, Vec<u32>>,
    /// Clients neither done nor waiting, one line each.
    pub unfinished: Vec<String>,
}

/// Runs a scenario in its world; a broken rule of a machine or of the driver's outside checks
/// is an `Err`.
pub fn play(scenario: &Scenario) -> Result<Seen, String> {
    match &scenario.world {
        WorldKind::Events => {
            let (world, result) = des::run(
                scenario.config.master_config(),
                &scenario.load,
                Options::default(),
            );
            let report = world.report();
            if let Err(error) = result {
                return Err(format!(
                    "the run broke a rule: {error}\n{}",
                    notices(&report)
                ));
            }
            let spawn_steps = report
                .names
                .iter()
                .map(|name| (name.clone(), world.spawn_steps(name)))
                .collect();
            Ok(Seen {
                told: world.told().to_vec(),
                heard: None,
                spawn_steps,
                unfinished: world.unfinished_clients(),
                report,
            })
        }
        WorldKind::Turmoil {
            tick_ms,
            client_hosts,
        } => {
            let options = NetOptions {
                tick_ms: *tick_ms,
                client_hosts: *client_hosts,
            };
            let summary = net::run(&scenario.config, &scenario.load, options)
                .map_err(|error| format!("the run broke a rule: {error}"))?;
            let report = Report {
                duration_ms: scenario.load.duration_ms,
                names: summary.services.iter().map(|s| s.name.clone()).collect(),
                services: summary.services.clone(),
                warnings: stats::warnings(&summary.notices),
                notices: summary.notices.clone(),
                samples: Vec::new(),
                steps: summary.steps,
                trace_hash: summary.hash,
                exit: summary.exit,
                // The world ends when every client has finished.
                unfinished_clients: 0,
                violation: None,
            };
            Ok(Seen {
                report,
                told: summary.told,
                heard: Some(summary.heard),
                spawn_steps: summary.spawn_steps,
                unfinished: Vec::new(),
            })
        }
    }
}

/// Runs a scenario and checks it; on failure the error lists every unmet expectation and
/// the notices seen.
pub fn run(scenario: &Scenario) -> Result<Report, String> {
    let seen = play(scenario)?;
    let failures = check(&scenario.expect, &seen);
    if failures.is_empty() {
        Ok(seen.report)
    } else {
        Err(format!(
            "{}\n--- report\n{}--- notices\n{}--- told\n{}",
            failures.join("\n"),
            seen.report,
            notices(&seen.report),
            lines(&seen.told),
        ))
    }
}

fn notices(report: &Report) -> String {
    lines(&report.notices)
}

fn lines(lines: &[(u64, String)]) -> String {
    lines
        .iter()
        .map(|(t, n)| format!("{t:>8} ms {n}\n"))
        .collect()
}

fn within<T: PartialOrd + Copy + std::fmt::Debug>(
    failures: &mut Vec<String>,
    what: &str,
    value: T,
    bounds: Option<(T, T)>,
) {
    if let Some((lo, hi)) = bounds {
        if value < lo || value > hi {
            failures.push(format!("{what} is {value:?}, expected {lo:?}..={hi:?}"));
        }
    }
}

/// Counts the lines `n` matches (exact text, or containing it) within its window, and says
/// what is wrong with the count, if anything.
fn count_lines(what: &str, n: &NoticeExpect, lines: &[(u64, String)]) -> Option<String> {
    let count = lines
        .iter()
        .filter(|(t, text)| {
            (if n.contains {
                text.contains(n.text.as_str())
            } else {
                *text == n.text
            }) && n.window_ms.is_none_or(|(from, to)| *t >= from && *t <= to)
        })
        .count() as u64;
    if count < n.min || n.max.is_some_and(|max| count > max) {
        Some(format!(
            "{what} {:?} seen {count} times{}, expected {}..={}",
            n.text,
            n.window_ms
                .map(|(a, b)| format!(" in [{a}, {b}] ms"))
                .unwrap_or_default(),
            n.min,
            n.max.map(|m| m.to_string()).unwrap_or_else(|| "∞".into())
        ))
    } else {
        None
    }
}

/// Every unmet expectation.
pub fn check(expect: &Expect, seen: &Seen) -> Vec<String> {
    let report = &seen.report;
    let mut failures = Vec::new();
    for n in &expect.notices {
        failures.extend(count_lines("notice", n, &report.notices));
    }
    for n in &expect.told {
        failures.extend(count_lines("told", n, &seen.told));
    }
    if !expect.heard.is_empty() {
        match &seen.heard {
            Some(heard) => {
                for n in &expect.heard {
                    failures.extend(count_lines("heard", n, heard));
                }
            }
            None => failures.push("`heard` needs the turmoil world (world: Turmoil(..))".into()),
        }
    }
    for part in &expect.unique {
        let mut seen = std::collections::BTreeSet::new();
        for (t, text) in report
            .notices
            .iter()
            .filter(|(_, t)| t.contains(part.as_str()))
        {
            if !seen.insert(text) {
                failures.push(format!("notice repeated at {t} ms: {text}"));
            }
        }
    }
    for absent in &expect.absent {
        if let Some((t, text)) = report
            .notices
            .iter()
            .find(|(_, t)| t.contains(absent.as_str()))
        {
            failures.push(format!("notice at {t} ms contains {absent:?}: {text}"));
        }
    }
    for s in &expect.services {
        let Some(r) = report.services.iter().find(|r| r.name == s.name) else {
            failures.push(format!("no service {}", s.name));
            continue;
        };
        let name = &s.name;
        within(
            &mut failures,
            &format!("{name} peak_processes"),
            r.peak_processes,
            s.peak_processes,
        );
        within(
            &mut failures,
            &format!("{name} final_processes"),
            r.final_processes,
            s.final_processes,
        );
        within(&mut failures, &format!("{name} served"), r.served, s.served);
        within(
            &mut failures,
            &format!("{name} dropped"),
            r.dropped,
            s.dropped,
        );
        within(
            &mut failures,
            &format!("{name} accepted"),
            r.accepted,
            s.accepted,
        );
        within(&mut failures, &format!("{name} queued"), r.queued, s.queued);
        within(
            &mut failures,
            &format!("{name} login_killed"),
            r.login_killed,
            s.login_killed,
        );
        within(&mut failures, &format!("{name} lost"), r.lost, s.lost);
        within(
            &mut failures,
            &format!("{name} timed_out"),
            r.timed_out,
            s.timed_out,
        );
        within(
            &mut failures,
            &format!("{name} wait_p99_ms"),
            r.wait_p99_ms,
            s.wait_p99_ms,
        );
        within(
            &mut failures,
            &format!("{name} login_p50_ms"),
            r.login_p50_ms,
            s.login_p50_ms,
        );
        within(
            &mut failures,
            &format!("{name} login_p99_ms"),
            r.login_p99_ms,
            s.login_p99_ms,
        );
        within(
            &mut failures,
            &format!("{name} spawned"),
            r.spawned,
            s.spawned,
        );
        if let Some(steps) = &s.spawn_steps {
            let spawned = seen.spawn_steps.get(name).cloned().unwrap_or_default();
            if !spawned.starts_with(steps) {
                failures.push(format!(
                    "{name} spawns per step are {spawned:?}, expected to start with {steps:?}"
                ));
            }
        }
    }
    if report.exit != expect.exit {
        failures.push(format!(
            "the master's exit is {:?}, expected {:?}",
            report.exit, expect.exit
        ));
    }
    if expect.all_clients_done && !seen.unfinished.is_empty() {
        failures.push(format!("clients not done: {}", seen.unfinished.join("; ")));
    }
    failures
}
