//! Issue 6: `DEFAULT_OVERFLOW_POLICY` is pinned by sim/scenarios/19_preauth_flood_security.ron.
//! The scenario holds under roost's default (every_scenario_holds runs it too) and fails under
//! the original's policy on the legitimate logins' p99, so a change back to the original's
//! timings cannot pass unnoticed. `cargo run -p sim --release -- policies` prints the whole
//! comparison.

use std::path::Path;

use sim::load::PolicySpec;
use sim::scenario::{self, Scenario};

fn flood() -> Scenario {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/19_preauth_flood_security.ron");
    let text = std::fs::read_to_string(path).expect("the flood scenario is readable");
    scenario::parse(&text).expect("the flood scenario parses")
}

#[test]
fn the_default_policy_meets_the_flood_bound_the_original_misses() {
    let mut scenario = flood();
    scenario.load.overflow_policy = Some(PolicySpec::Default);
    if let Err(e) = scenario::run(&scenario) {
        panic!("roost's default policy fails the flood scenario:\n{e}");
    }
    scenario.load.overflow_policy = Some(PolicySpec::Original);
    match scenario::run(&scenario) {
        Ok(report) => panic!("the original's policy meets the pinned bound:\n{report}"),
        Err(e) => assert!(e.contains("login_p99_ms"), "fails on the latency: {e}"),
    }
}
