//! Capacity planning: replay a load profile against a configuration in simulated time and
//! report, per service, what an operator wants to know before changing a config (peak
//! processes, connections queued and their wait, drops, login clients killed, warnings).
//!
//! This is what `roost sim` prints; [`crate::plot::timeline_svg`] draws its time series.

use std::fmt;

use roost_core::setup::MasterConfig;
use serde::{Deserialize, Serialize};

use crate::des::{self, Options};
use crate::load::LoadProfile;

/// The outcome of one planning run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Simulated time covered, ms.
    pub duration_ms: u64,
    /// One entry per service name, in configuration order.
    pub services: Vec<ServiceReport>,
    /// Every notice of the master with its time (ms), in order.
    pub notices: Vec<(u64, String)>,
    /// Distinct notice texts with how often each appeared, in first-seen order.
    pub warnings: Vec<(String, u64)>,
    /// The service names the samples' columns refer to.
    pub names: Vec<String>,
    /// The time series.
    pub samples: Vec<Sample>,
    /// Inputs the master handled.
    pub steps: u64,
    /// Hash of the one-line-per-step trace (equal for equal runs).
    pub trace_hash: u64,
    /// The master's exit status, if it exited.
    pub exit: Option<i32>,
    /// Clients still queued or connected when the run ended.
    pub unfinished_clients: u64,
    /// A broken rule, if the run found one (the run stops there).
    pub violation: Option<String>,
}

/// What happened to one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service's name.
    pub name: String,
    /// Most processes alive at once.
    pub peak_processes: u32,
    /// Processes alive at the end.
    pub final_processes: u32,
    /// Connections a process accepted.
    pub accepted: u64,
    /// Accepted connections that waited in the accept queue first.
    pub queued: u64,
    /// Median wait in the accept queue, ms.
    pub wait_p50_ms: u64,
    /// 99th percentile wait, ms.
    pub wait_p99_ms: u64,
    /// Longest wait, ms.
    pub wait_max_ms: u64,
    /// Median time from a served client's first connect attempt to its login (login
    /// services) or session start (others), ms: what a user waits for.
    pub login_p50_ms: u64,
    /// 99th percentile of that time, ms.
    pub login_p99_ms: u64,
    /// Longest such time, ms.
    pub login_max_ms: u64,
    /// Clients served (logged in, or had their session).
    pub served: u64,
    /// Connections dropped: accepted and closed by the master, refused, or over the backlog.
    pub dropped: u64,
    /// Of `dropped`, those over the listen backlog.
    pub backlog_full: u64,
    /// Pre-login clients killed by a full login service to make room.
    pub login_killed: u64,
    /// Connections lost because their process died.
    pub lost: u64,
    /// Pre-login clients disconnected by the pre-auth timeout.
    pub timed_out: u64,
    /// Processes created.
    pub spawned: u64,
}

/// One point of the time series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Simulated time, ms.
    pub t_ms: u64,
    /// Per service (same order as [`Report::names`]): processes, free slots, connections,
    /// connections queued.
    pub values: Vec<[u32; 4]>,
}

/// Replays `load` against `config` and reports. A violated rule of the master (a bug of
/// roost, not of the configuration) ends the run early and is named in
/// [`Report::violation`].
pub fn run(config: MasterConfig, load: LoadProfile) -> Report {
    let (world, _result) = des::run(config, &load, Options::default());
    world.report()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:>6} {:>8} {:>7} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>7}",
            "service",
            "peak",
            "accepted",
            "queued",
            "wait p50",
            "wait p99",
            "login p50",
            "login p99",
            "served",
            "dropped",
            "killed"
        )?;
        for s in &self.services {
            writeln!(
                f,
                "{:<16} {:>6} {:>8} {:>7} {:>6}ms {:>6}ms {:>7}ms {:>7}ms {:>7} {:>7} {:>7}",
                s.name,
                s.peak_processes,
                s.accepted,
                s.queued,
                s.wait_p50_ms,
                s.wait_p99_ms,
                s.login_p50_ms,
                s.login_p99_ms,
                s.served,
                s.dropped,
                s.login_killed
            )?;
        }
        if !self.warnings.is_empty() {
            writeln!(f, "warnings:")?;
            // Texts that name a pid are distinct per process; the first ones are enough.
            const SHOWN: usize = 20;
            for (text, count) in self.warnings.iter().take(SHOWN) {
                writeln!(f, "  {count:>5} × {text}")?;
            }
            if self.warnings.len() > SHOWN {
                writeln!(
                    f,
                    "  … and {} more distinct texts",
                    self.warnings.len() - SHOWN
                )?;
            }
        }
        if let Some(violation) = &self.violation {
            writeln!(f, "BUG: {violation}")?;
        }
        Ok(())
    }
}
