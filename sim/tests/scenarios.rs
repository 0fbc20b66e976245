//! Replays every scenario in sim/scenarios/ and checks its expectations. A new file in the
//! directory is a new test case; a file that does not parse fails the run. With
//! `SIM_CHECK_DETERMINISM=1` each scenario runs twice and the two trace hashes must agree.

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
    let check_determinism = std::env::var("SIM_CHECK_DETERMINISM").is_ok_and(|v| v == "1");
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
        let replay = format!("replay: SIM_SCENARIO={name} cargo test -p sim --test scenarios");
        match sim::scenario::run(&scenario) {
            Ok(report) => {
                println!("ok {name}\n{report}");
                if check_determinism {
                    match sim::scenario::run(&scenario) {
                        Ok(again) if again.trace_hash == report.trace_hash => {}
                        Ok(again) => failures.push(format!(
                            "== {name}: trace hash {:016x}, then {:016x}\nSIM_CHECK_DETERMINISM=1 {replay}",
                            report.trace_hash, again.trace_hash
                        )),
                        Err(e) => failures.push(format!(
                            "== {name}: held once, then not:\n{e}\nSIM_CHECK_DETERMINISM=1 {replay}"
                        )),
                    }
                }
            }
            Err(e) => failures.push(format!("== {name} ({})\n{e}\n{replay}", scenario.story)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
