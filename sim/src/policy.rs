//! The login overflow policy compared on one load (issue 6): the same scenario run under the
//! original's policy and under candidates, over a few seeds, reporting what a legitimate user
//! sees: logins that succeeded, and the latency from first connect attempt to login (p50, p99,
//! max, over every seed's served clients pooled).
//!
//! `cargo run -p sim -- policies` prints the table for sim/scenarios/19_preauth_flood_security.ron;
//! sim/tests/overflow_policy.rs pins the choice of `DEFAULT_OVERFLOW_POLICY` with it.

use std::fmt;

use crate::des::{self, Options};
use crate::load::PolicySpec;
use crate::scenario::Scenario;

/// The policies compared: the original, and changes to one knob at a time, then together.
pub fn candidates() -> Vec<(&'static str, PolicySpec)> {
    let custom =
        |delay_max_ms, jitter_span_ms, delayed_kill_max_slots, killable_only, recheck_ms| {
            PolicySpec::Custom {
                delay_max_ms,
                age_window_ms: 10_000,
                jitter_span_ms,
                delayed_kill_max_slots,
                killable_only,
                recheck_ms,
            }
        };
    vec![
        ("original (100 ms delay, else oldest)", PolicySpec::Original),
        ("original, killable only", custom(100, 10, 1, true, 1_000)),
        ("20 ms delay", custom(20, 10, 1, false, 1_000)),
        ("jitter only (0-9 ms)", custom(0, 10, 1, false, 1_000)),
        (
            "at once (every full process kills)",
            custom(0, 0, 0, false, 1_000),
        ),
        ("original, re-check 20 ms", custom(100, 10, 1, false, 20)),
        ("jitter only, re-check 100 ms", custom(0, 10, 1, false, 100)),
        ("jitter only, re-check 20 ms", custom(0, 10, 1, false, 20)),
        (
            "jitter only, re-check 20, killable",
            custom(0, 10, 1, true, 20),
        ),
        ("roost default", PolicySpec::Default),
    ]
}

/// One policy's figures over the seeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The policy's name.
    pub name: String,
    /// Legitimate logins that succeeded, over every seed.
    pub served: u64,
    /// Legitimate logins attempted, over every seed.
    pub attempted: u64,
    /// Latency percentiles (first attempt to login), ms, pooled over the seeds.
    pub p50_ms: u64,
    /// 99th percentile, ms.
    pub p99_ms: u64,
    /// Longest, ms.
    pub max_ms: u64,
    /// Pre-login clients killed to make room, over every seed.
    pub killed: u64,
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<38} {:>5}/{:<5} {:>7} ms {:>7} ms {:>7} ms {:>7}",
            self.name,
            self.served,
            self.attempted,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.killed
        )
    }
}

/// The table's header, aligned with [`Row`]'s Display.
pub const HEADER: &str =
    "policy                                 served/tried     p50        p99        max   killed";

/// Runs `scenario` under `policy` with each of `seeds` and pools the legitimate logins of
/// `service` (the clients that log in: a pre-auth flood is never served). A run that breaks a
/// rule is an error naming the seed.
pub fn measure(
    scenario: &Scenario,
    service: &str,
    name: &str,
    policy: &PolicySpec,
    seeds: &[u64],
) -> Result<Row, String> {
    let attempted_per_run: u64 = scenario
        .load
        .clients
        .iter()
        .filter(|g| g.service == service && g.behaviour == crate::load::Behaviour::Login)
        .map(|g| u64::from(g.count))
        .sum();
    let mut latencies = Vec::new();
    let mut served = 0;
    let mut killed = 0;
    for &seed in seeds {
        let mut load = scenario.load.clone();
        load.seed = seed;
        load.overflow_policy = Some(policy.clone());
        let (world, result) = des::run(scenario.config.master_config(), &load, Options::default());
        if let Err(error) = result {
            return Err(format!("{name}, seed {seed}: {error}"));
        }
        latencies.extend(world.login_latencies(service));
        let report = world.report();
        if let Some(s) = report.services.iter().find(|s| s.name == service) {
            served += s.served;
            killed += s.login_killed;
        }
    }
    latencies.sort_unstable();
    Ok(Row {
        name: name.to_owned(),
        served,
        attempted: attempted_per_run * seeds.len() as u64,
        p50_ms: des::percentile(&latencies, 50),
        p99_ms: des::percentile(&latencies, 99),
        max_ms: latencies.last().copied().unwrap_or(0),
        killed,
    })
}

/// Every candidate of [`candidates`] on `scenario`.
pub fn compare(scenario: &Scenario, service: &str, seeds: &[u64]) -> Result<Vec<Row>, String> {
    candidates()
        .iter()
        .map(|(name, policy)| measure(scenario, service, name, policy, seeds))
        .collect()
}
