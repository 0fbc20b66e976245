//! The capacity planner on the example load that ships in sim/loads/: the report names the
//! services, counts every client, and the SVG timeline draws one panel per service.

use std::path::Path;

use sim::load::{LoadProfile, SimConfig};

fn load(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("loads")
            .join(name),
    )
    .expect("the example ships with the repository")
}

#[test]
fn the_example_load_plans_and_plots() {
    let config: SimConfig =
        ron::from_str(&load("example-config.ron")).expect("the example config parses");
    let profile: LoadProfile =
        ron::from_str(&load("example.ron")).expect("the example load parses");
    let report = sim::plan::run(config.master_config(), profile);
    assert_eq!(report.violation, None, "{report}");
    let login = &report.services[0];
    assert_eq!(login.name, "pop3-login");
    // Every legitimate user logs in despite the scanner's 200 idle connections.
    assert_eq!(login.served, 600, "{report}");
    // The scanner fills the pool to process_limit; after the reload the old generation's
    // processes (still finishing their clients) and the new one's add up.
    assert!(login.peak_processes >= 100, "{report}");
    assert!(login.peak_processes <= 200, "{report}");
    assert!(login.login_killed > 0, "{report}");
    assert!(report
        .warnings
        .iter()
        .any(|(text, _)| text == "SIGHUP received - reloading configuration"));
    assert!(report.samples.len() > 100);

    let svg = sim::plot::timeline_svg(&report);
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("service pop3-login"));
    assert!(svg.contains("free slots"));
    assert!(
        svg.matches("<polyline").count() >= 4,
        "four series per service"
    );
}
