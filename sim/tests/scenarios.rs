//! Replays every scenario in sim/scenarios/ and checks its expectations. A new file in the
//! directory is a new test case; a file that does not parse fails the run.

use std::fs;
use std::path::Path;

#[test]
fn every_scenario_holds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .expect("sim/scenarios exists")
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 14,
        "expected the scenario set, found {}",
        paths.len()
    );
    let only = std::env::var("SIM_SCENARIO").ok();
    let mut failures = Vec::new();
    for path in &paths {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_owned();
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let text = fs::read_to_string(path).expect("a readable scenario file");
        let scenario = match sim::scenario::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: does not parse: {e}"));
                continue;
            }
        };
        match sim::scenario::run(&scenario) {
            Ok(report) => println!("ok {name}\n{report}"),
            Err(e) => failures.push(format!("== {name} ({})\n{e}", scenario.story)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
