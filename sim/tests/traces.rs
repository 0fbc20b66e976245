//! Recorded traces (sim/traces/*.ron) replayed straight into the core: invariants after every
//! input, and the notices each trace names. Also proves that a replay reproduces the
//! simulator's own step hash, so a trace is a faithful record of a run.

use std::fs;
use std::path::Path;

use sim::des::{self, Options};
use sim::trace::{self, Trace};

#[test]
fn every_recorded_trace_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .expect("sim/traces exists")
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no traces in {}", dir.display());
    for path in paths {
        let text = fs::read_to_string(&path).expect("a readable trace");
        let trace: Trace = ron::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", path.display()));
        assert!(
            !trace.notices.is_empty(),
            "{}: a trace names what it pins",
            path.display()
        );
        if let Err(e) = trace::replay(&trace) {
            panic!("{} ({}): {e}", path.display(), trace.story);
        }
    }
}

/// A trace recorded from a run replays to the same step hash the run computed, and a trace
/// with one input removed does not: the digest really covers the outputs.
#[test]
fn a_recorded_run_replays_to_the_same_digest() {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/04_process_limit_drop.ron"),
    )
    .expect("the scenario exists");
    let scenario = sim::scenario::parse(&text).expect("the scenario parses");
    let options = Options {
        record_inputs: true,
        keep_lines: false,
    };
    let (world, result) = des::run(scenario.config.master_config(), &scenario.load, options);
    result.expect("the scenario runs");
    let recorded = trace::record(&world, "test");
    let replayed = trace::replay(&recorded).expect("the recording replays");
    assert_eq!(Some(replayed.digest), recorded.digest);

    let mut broken = recorded.clone();
    broken.inputs.remove(broken.inputs.len() / 2);
    assert!(trace::replay(&broken).is_err_and(|e| e.contains("differ") || e.contains("invariant")));
}
