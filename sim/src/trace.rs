//! Traces: the master's inputs with their times, as RON, replayed straight into the core.
//!
//! `SIM_DUMP=path` writes one from a swarm seed (and `sim trace` from a scenario); a trace
//! moved into sim/traces/ with a story is a lasting regression, because unlike a seed it does
//! not depend on the simulator's random draws. Replaying checks the master's invariants after
//! every input, the notices the trace expects, and, if the trace records one, the digest of
//! every step's outputs (the same one-line-per-step hash the simulator computes).

use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::output::Output;
use roost_core::setup::MasterConfig;
use roost_core::time::Instant;
use serde::{Deserialize, Serialize};

use crate::des::{fnv1a, World};

/// A recorded run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// The bug it caught or the rule it pins, and how it was recorded.
    pub story: String,
    /// The configuration the master started with (at time 0).
    pub config: MasterConfig,
    /// Every input with its time in ms.
    pub inputs: Vec<(u64, Input)>,
    /// Notices (substrings) that must appear when it is replayed.
    #[serde(default)]
    pub notices: Vec<String>,
    /// The digest of the outputs, if the trace pins them exactly.
    #[serde(default)]
    pub digest: Option<u64>,
}

/// What a replay saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The digest of the step lines.
    pub digest: u64,
    /// Every notice.
    pub notices: Vec<String>,
}

/// A trace of a world that recorded its inputs.
pub fn record(world: &World, story: &str) -> Trace {
    Trace {
        story: story.to_owned(),
        config: world.initial_config().clone(),
        inputs: world.inputs().to_vec(),
        notices: Vec::new(),
        digest: Some(world.trace_hash()),
    }
}

/// Replays a trace into a fresh master.
pub fn replay(trace: &Trace) -> Result<Replayed, String> {
    let mut master = Master::new(trace.config.clone(), Instant::ZERO);
    let mut notices = Vec::new();
    while let Some(output) = master.poll_output() {
        if let Output::Log(n) = output {
            notices.push(n.to_string());
        }
    }
    let mut digest = 0xcbf2_9ce4_8422_2325;
    let mut last = 0;
    for (index, (t, input)) in trace.inputs.iter().enumerate() {
        if *t < last {
            return Err(format!("input {index} goes back in time ({t} < {last})"));
        }
        last = *t;
        let head = format!("{t} {input:?}");
        master.handle(input.clone(), Instant::from_millis(*t));
        let mut outputs = String::new();
        while let Some(output) = master.poll_output() {
            if !outputs.is_empty() {
                outputs.push_str(", ");
            }
            outputs.push_str(&format!("{output:?}"));
            if let Output::Log(n) = output {
                notices.push(n.to_string());
            }
        }
        let line = format!("{head} -> {outputs}");
        digest = fnv1a(digest, line.as_bytes());
        digest = fnv1a(digest, b"\n");
        master
            .check_invariants()
            .map_err(|v| format!("after input {index} at {t} ms ({input:?}): {v}"))?;
    }
    for expected in &trace.notices {
        if !notices.iter().any(|n| n.contains(expected.as_str())) {
            return Err(format!("notice {expected:?} never appeared"));
        }
    }
    if let Some(expected) = trace.digest {
        if expected != digest {
            return Err(format!(
                "outputs differ from the recording: digest {digest:016x}, recorded {expected:016x}"
            ));
        }
    }
    Ok(Replayed { digest, notices })
}

/// Writes a trace as pretty RON.
pub fn to_ron(trace: &Trace) -> Result<String, ron::Error> {
    ron::ser::to_string_pretty(trace, ron::ser::PrettyConfig::new().depth_limit(2))
}
