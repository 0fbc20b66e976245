//! The swarm in CI: a fixed set of seeds, each a safety phase with faults and a liveness phase
//! without. A failing seed prints the line that replays it.
//!
//! `SIM_SEED=<u64> cargo test -p sim --test random -- --exact replay` replays one seed;
//! `SIM_CHECK_DETERMINISM=1` runs each seed twice and compares the trace hashes;
//! `cargo run -p sim --release -- swarm --seeds N` runs many more.

use sim::swarm;

fn run_seed(seed: u64) {
    let result = std::panic::catch_unwind(|| swarm::run(seed));
    let replay = format!("SIM_SEED={seed} cargo test -p sim --test random -- --exact replay");
    match result {
        Ok(Ok(report)) => {
            if std::env::var("SIM_CHECK_DETERMINISM").is_ok() {
                let again = swarm::run(seed).expect("passed once");
                assert_eq!(
                    report.trace_hash, again.trace_hash,
                    "seed {seed} is not deterministic; replay: {replay}"
                );
            }
        }
        Ok(Err(liveness)) => panic!(
            "seed {seed}: liveness: {liveness}\n  drawn: {:?}\n  replay: {replay}",
            swarm::draw(seed)
        ),
        Err(_) => panic!(
            "seed {seed}: safety violated (message above)\n  drawn: {:?}\n  replay: {replay}",
            swarm::draw(seed)
        ),
    }
}

#[test]
fn swarm_of_fixed_seeds() {
    for seed in 0..150 {
        run_seed(seed);
    }
}

#[test]
fn seed_246_signals_queued_before_an_exit_reach_a_zombie_not_a_reaped_pid() {
    // Story: the first swarm run over 3,000 seeds failed at seed 246 with "SIGKILL sent to
    // reaped pid 121". The master had queued TERM and KILL for the same old process in one
    // drain; the simulated kernel let the child exit on TERM and fed its exit to the master
    // before the queued KILL was applied. The shell never does that: it reaps on SIGCHLD at
    // its next turn, after every output of the drain, so KILL meets a zombie. The world now
    // keeps exited children as zombies until the end of the step. Pinned: the seed passes.
    run_seed(246);
}

#[test]
fn replay() {
    match std::env::var("SIM_SEED") {
        Ok(seed) => run_seed(seed.parse().expect("SIM_SEED is a u64")),
        Err(_) => println!("set SIM_SEED=<u64> to replay a seed"),
    }
}

#[test]
fn runs_are_deterministic_by_seed() {
    for seed in [1, 7, 42] {
        let a = swarm::run(seed).map(|r| r.trace_hash);
        let b = swarm::run(seed).map(|r| r.trace_hash);
        assert_eq!(a, b, "seed {seed}");
    }
    assert_ne!(
        swarm::run(1).map(|r| r.trace_hash),
        swarm::run(2).map(|r| r.trace_hash)
    );
}
