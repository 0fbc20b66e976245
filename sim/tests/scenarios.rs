//! Replays every scenario in sim/scenarios and checks what each expects.

use std::path::Path;

use sim::scenario::Scenario;

#[test]
fn every_scenario_holds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("sim/scenarios")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut count = 0;
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
    {
        count += 1;
        let text = std::fs::read_to_string(path).expect("readable");
        let scenario = match Scenario::parse(&text) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}:{e}", path.display()));
                continue;
            }
        };
        let report = scenario.run();
        for failure in scenario.check(&report) {
            failures.push(format!(
                "{}: {failure}\n  story: {}",
                path.display(),
                scenario.story.trim()
            ));
        }
    }
    assert!(
        count >= 10,
        "only {count} scenarios found in {}",
        dir.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_scenario_that_expects_the_impossible_fails() {
    // The checker itself can fail: a scenario claiming a notice that never comes is caught.
    let scenario = Scenario::parse(
        r#"(story: "nothing happens", services: [(name: "idle")], run_ms: 1000,
            expect: (notices: ["process_limit (1) reached"], served_at_least: Some(1)))"#,
    )
    .expect("parses");
    assert_eq!(scenario.check(&scenario.run()).len(), 2);
}
