//! The swarm: each seed draws a configuration, a load and faults (sim::swarm::draw, printed in
//! full), runs a safety phase with faults and a liveness phase without, and fails with the
//! one line that replays it. `SIM_CHECK_DETERMINISM=1` runs every seed twice and compares the
//! trace hashes; `SIM_DUMP=path` writes the master's inputs as a trace (sim/traces/).

use std::cell::Cell;
use std::sync::Once;

use sim::des::Options;
use sim::swarm;

/// Seeds CI runs on every `cargo test -p sim` (a few seconds in a debug build); `cargo run
/// -p sim -- swarm --seeds N` runs more.
const CI_SEEDS: u64 = 64;

thread_local! {
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            if let Some(seed) = SEED.with(Cell::get) {
                eprintln!(
                    "\nreplay this run with:\n    {}\n",
                    swarm::replay_command(seed)
                );
            }
        }));
    });
}

fn check(seed: u64) {
    install_hook();
    SEED.with(|s| s.set(Some(seed)));
    let drawn = swarm::draw(seed);
    println!("seed {seed}: {drawn:#?}");
    let dump = std::env::var("SIM_DUMP").ok();
    let options = Options {
        record_inputs: dump.is_some(),
        keep_lines: false,
    };
    let result = swarm::run(&drawn, options.clone());
    if let Some(path) = &dump {
        let world = match &result {
            Ok(outcome) => &outcome.world,
            Err(failure) => &failure.world,
        };
        let trace = sim::trace::record(world, &format!("swarm seed {seed}"));
        let text = sim::trace::to_ron(&trace).expect("a trace serialises");
        std::fs::write(path, text).expect("SIM_DUMP names a writable file");
        println!("wrote the trace to {path}");
    }
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(failure) => panic!(
            "seed {seed} failed: {}\nlast notices:\n{}",
            failure.error,
            failure
                .world
                .notices()
                .iter()
                .rev()
                .take(20)
                .rev()
                .map(|(t, n)| format!("  {t} ms {n}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    if std::env::var("SIM_CHECK_DETERMINISM").is_ok_and(|v| v == "1") {
        let again = swarm::run(&drawn, options)
            .unwrap_or_else(|f| panic!("second run failed: {}", f.error));
        assert_eq!(
            outcome.hash, again.hash,
            "seed {seed} is not deterministic: the trace hashes differ"
        );
    }
    println!(
        "seed {seed}: ok, {} steps, hash {:016x}",
        outcome.world.steps(),
        outcome.hash
    );
    SEED.with(|s| s.set(None));
}

#[test]
fn swarm_ci_seeds() {
    for seed in 0..CI_SEEDS {
        check(seed);
    }
}

/// Replays `SIM_SEED` (or a fixed seed when it is not set).
#[test]
fn replay() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .map(|s| s.parse().expect("SIM_SEED is a u64"))
        .unwrap_or(0x5eed);
    check(seed);
}

/// The same seed twice gives the same trace; another seed a different one (so the hash is
/// not a constant).
#[test]
fn runs_are_deterministic() {
    let a = swarm::run_seed(7, Options::default(), true).expect("seed 7 passes");
    let b = swarm::run_seed(8, Options::default(), false).expect("seed 8 passes");
    assert_ne!(a.hash, b.hash);
}
