fn main() {
    let path = std::env::args().nth(1).expect("a scenario file");
    let scenario = sim::scenario::Scenario::parse(&std::fs::read_to_string(&path).expect("file"))
        .expect("parses");
    let report = scenario.run();
    println!(
        "served {} dropped {} peak {:?} end {:?} p50 {} p99 {} steps {} exit {:?}",
        report.served,
        report.dropped,
        report.peak_processes,
        report.end_processes,
        report.wait_percentile(50),
        report.wait_percentile(99),
        report.steps,
        report.exited
    );
    for (at, n) in report.notices.iter().take(12) {
        println!("  {at} {n}");
    }
}
