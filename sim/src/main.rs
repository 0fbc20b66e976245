//! `cargo run -p sim -- swarm --seeds N`: more seeds than CI runs; `bench`: the simulator's speed.

use std::time::Instant as WallClock; // tidy: allow (measures the simulator's own speed)

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sim", about = "roost's simulator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs seeds first..first+seeds through the swarm.
    Swarm {
        /// How many seeds.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        first: u64,
    },
    /// 1,000 clients over 10 simulated minutes: simulated time against real time.
    Bench,
}

fn main() {
    match Cli::parse().command {
        Cmd::Swarm { seeds, first } => {
            let mut failed = Vec::new();
            for (n, seed) in (first..first + seeds).enumerate() {
                let result = std::panic::catch_unwind(|| sim::swarm::run(seed));
                match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failed.push(format!("seed {seed}: {e}")),
                    Err(_) => failed.push(format!("seed {seed}: safety violated")),
                }
                if (n + 1) % 50 == 0 || n + 1 == seeds as usize {
                    eprint!("\r{}/{seeds} seeds, {} failed", n + 1, failed.len());
                }
            }
            eprintln!();
            for line in &failed {
                println!("{line}  (replay: SIM_SEED={} cargo test -p sim --test random -- --exact replay)", line.split_whitespace().nth(1).unwrap_or("").trim_end_matches(':'));
            }
            std::process::exit(i32::from(!failed.is_empty()));
        }
        Cmd::Bench => {
            use sim::scenario::{master_config, SimService};
            let services = vec![SimService {
                name: "pop3-login".into(),
                service_type: roost_core::setup::ServiceType::Login,
                process_limit: 100,
                client_limit: 1,
                service_count: 1,
                process_min_avail: 2,
                idle_kill_secs: Some(60),
                foreign: false,
            }];
            let start = WallClock::now(); // tidy: allow (benchmark)
            let mut world = sim::world::World::new(master_config(&services, true), 1);
            world.clients("pop3-login", 0, 1_000, 600, 2_000);
            world.run_until(600_000);
            let real = start.elapsed().as_secs_f64();
            let report = world.report();
            println!(
                "1,000 clients over 600 s simulated: {:.3} s real, {:.0}x real time, {} steps, served {}, dropped {}, p99 wait {} ms",
                real,
                600.0 / real,
                report.steps,
                report.served,
                report.dropped,
                report.wait_percentile(99)
            );
        }
    }
}
