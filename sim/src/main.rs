//! `sim`: run the swarm over many seeds, benchmark the simulator, plan capacity, or record a
//! scenario's trace.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sim::des::Options;
use sim::load::{LoadProfile, SimConfig};
use sim::{plan, plot, scenario, swarm, trace};

#[derive(Parser)]
#[command(about = "roost's simulator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run swarm seeds (safety then liveness phase each).
    Swarm {
        /// How many seeds.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Run each seed twice and compare the trace hashes.
        #[arg(long)]
        check_determinism: bool,
    },
    /// Measure simulated time against real time: N clients over M simulated minutes.
    Bench {
        /// Clients.
        #[arg(long, default_value_t = 1000)]
        clients: u32,
        /// Simulated minutes.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Also run the turmoil world (network-level) on the same load.
        #[arg(long)]
        turmoil: bool,
        /// turmoil's tick, ms.
        #[arg(long, default_value_t = 10)]
        tick_ms: u64,
        /// turmoil client hosts the clients share.
        #[arg(long, default_value_t = 1)]
        client_hosts: usize,
    },
    /// Replay a load profile against a configuration and print the report.
    Plan {
        /// A SimConfig in RON.
        #[arg(long)]
        config: String,
        /// A LoadProfile in RON.
        #[arg(long)]
        load: String,
        /// Write the timeline as SVG here.
        #[arg(long)]
        plot: Option<String>,
    },
    /// Compare the login overflow policies on a scenario (issue 6): legitimate logins'
    /// success and latency under each.
    Policies {
        /// The scenario file.
        #[arg(long, default_value = "sim/scenarios/19_preauth_flood_security.ron")]
        scenario: String,
        /// The login service measured.
        #[arg(long, default_value = "pop3-login")]
        service: String,
        /// Seeds 1..=N.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// Also run each policy with the what-if of a master that signals every change of
        /// the full state at once (no 2 s rate limit).
        #[arg(long)]
        what_if_notify_at_once: bool,
    },
    /// Run a scenario file and write the master's inputs as a trace.
    Trace {
        /// The scenario file.
        #[arg(long)]
        scenario: String,
        /// Where to write the trace.
        #[arg(long)]
        out: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Swarm {
            seeds,
            start,
            check_determinism,
        } => run_swarm(start, seeds, check_determinism),
        Command::Bench {
            clients,
            minutes,
            turmoil,
            tick_ms,
            client_hosts,
        } => bench(
            clients,
            minutes,
            turmoil.then_some(sim::net::NetOptions {
                tick_ms,
                client_hosts,
            }),
        ),
        Command::Plan { config, load, plot } => run_plan(&config, &load, plot.as_deref()),
        Command::Trace { scenario, out } => record(&scenario, &out),
        Command::Policies {
            scenario,
            service,
            seeds,
            what_if_notify_at_once,
        } => policies(&scenario, &service, seeds, what_if_notify_at_once),
    }
}

fn policies(path: &str, service: &str, seeds: u64, what_if: bool) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut scenario = match scenario::parse(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if what_if {
        println!("what-if: every change of the full state signalled at once");
        scenario.load.what_if_notify_at_once = true;
    }
    let seeds: Vec<u64> = (1..=seeds).collect();
    println!("{}", sim::policy::HEADER);
    for (name, policy) in sim::policy::candidates() {
        match sim::policy::measure(&scenario, service, name, &policy, &seeds) {
            Ok(row) => println!("{row}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn run_swarm(start: u64, seeds: u64, check_determinism: bool) -> ExitCode {
    let begin = std::time::Instant::now(); // tidy: allow: measures real time on purpose
    let mut failed = Vec::new();
    for (index, seed) in (start..start + seeds).enumerate() {
        if let Err(error) = swarm::run_seed(seed, Options::default(), check_determinism) {
            eprintln!(
                "\nseed {seed}: {error}\n    {}",
                swarm::replay_command(seed)
            );
            failed.push(seed);
        }
        let done = index as u64 + 1;
        let width = 40;
        let filled = (done * width / seeds.max(1)) as usize;
        eprint!(
            "\r[{}{}] {done}/{seeds} seeds, {} failed",
            "#".repeat(filled),
            " ".repeat(width as usize - filled),
            failed.len()
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!(
        "\n{seeds} seeds in {:.1} s, {} failed {failed:?}",
        begin.elapsed().as_secs_f64(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn bench_world(clients: u32, minutes: u64) -> (SimConfig, LoadProfile) {
    let text = format!(
        r#"(
            config: SimConfig(services: [
                ServiceSpec(name: "pop3-login", service_type: Login, process_limit: 100, service_count: 1, process_min_avail: 10, port: 110),
                ServiceSpec(name: "pop3", process_limit: 200, port: 1110),
            ]),
            load: LoadProfile(
                duration_ms: {duration},
                seed: 1,
                clients: [
                    ClientGroup(service: "pop3-login", count: {half}, spread_ms: {duration}, session_ms: (1000, 30000), reconnect: 2),
                    ClientGroup(service: "pop3", count: {rest}, spread_ms: {duration}, session_ms: (1000, 60000), reconnect: 2),
                ],
            ),
        )"#,
        duration = minutes * 60_000,
        half = clients / 2,
        rest = clients - clients / 2,
    );
    #[derive(serde::Deserialize)]
    struct Bench {
        config: SimConfig,
        load: LoadProfile,
    }
    let bench: Bench = ron::from_str(&text).expect("the benchmark's own RON parses");
    (bench.config, bench.load)
}

fn bench(clients: u32, minutes: u64, turmoil: Option<sim::net::NetOptions>) -> ExitCode {
    let (config, load) = bench_world(clients, minutes);
    let simulated = minutes as f64 * 60.0;
    let begin = std::time::Instant::now(); // tidy: allow: measures real time on purpose
    let report = plan::run(config.master_config(), load.clone());
    let real = begin.elapsed().as_secs_f64();
    println!(
        "discrete-event: {clients} clients, {minutes} simulated min, {} steps in {real:.3} s real: {:.0}× real time",
        report.steps,
        simulated / real
    );
    print!("{report}");
    if let Some(options) = turmoil {
        let ticks = format!(
            "{} ms tick, {} client hosts",
            options.tick_ms, options.client_hosts
        );
        let begin = std::time::Instant::now(); // tidy: allow: measures real time on purpose
        match sim::net::run(&config, &load, options) {
            Ok(summary) => {
                let real = begin.elapsed().as_secs_f64();
                println!(
                    "turmoil ({ticks}): {clients} clients, {minutes} simulated min in {real:.3} s real: {:.0}× real time; {summary}",
                    simulated / real
                );
            }
            Err(error) => {
                eprintln!("turmoil run failed: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn run_plan(config: &str, load: &str, plot_path: Option<&str>) -> ExitCode {
    let parsed = read(config).and_then(|config_text| {
        let config: SimConfig = ron::from_str(&config_text).map_err(|e| format!("{config}:{e}"))?;
        let load_text = read(load)?;
        let load: LoadProfile = ron::from_str(&load_text).map_err(|e| format!("{load}:{e}"))?;
        Ok((config, load))
    });
    let (config, load) = match parsed {
        Ok(pair) => pair,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let report = plan::run(config.master_config(), load);
    // A closed stdout (`| head`) is not an error of the plan.
    let _ = write!(std::io::stdout(), "{report}");
    if let Some(path) = plot_path {
        if let Err(e) = std::fs::write(path, plot::timeline_svg(&report)) {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn record(path: &str, out: &str) -> ExitCode {
    let result = read(path).and_then(|text| {
        let scenario = scenario::parse(&text).map_err(|e| format!("{path}:{e}"))?;
        let options = Options {
            record_inputs: true,
            keep_lines: false,
        };
        let (world, run) = sim::des::run(scenario.config.master_config(), &scenario.load, options);
        run.map_err(|e| e.to_string())?;
        let trace = trace::record(&world, &scenario.story);
        let text = trace::to_ron(&trace).map_err(|e| e.to_string())?;
        std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}
