//! Swarm testing (TigerBeetle's VOPR): one seed draws a configuration, a load and faults; the
//! run has a safety phase (faults on, the master's invariants after every step, the driver's
//! outside checks) and then a liveness phase (faults off: within a bound, everything is
//! reaped, every client is done, and each service is back at process_min_avail).
//!
//! A seed is exact only at one commit; the lasting regression is a trace (`SIM_DUMP`).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roost_core::setup::ServiceType;

use crate::des::{self, Options, World};
use crate::load::{
    Behaviour, ClientGroup, Event, Faults, LoadProfile, PolicySpec, ServiceSpec, SimConfig,
    TimedEvent,
};

/// Everything one seed drew.
#[derive(Clone, Debug, PartialEq)]
pub struct Drawn {
    /// The seed.
    pub seed: u64,
    /// The configuration.
    pub config: SimConfig,
    /// The load, faults and events; `faults.off_at_ms` ends the safety phase.
    pub load: LoadProfile,
    /// End of the safety phase, ms.
    pub safety_ms: u64,
    /// By this time (ms) the world must have settled.
    pub liveness_ms: u64,
}

/// What a finished run left.
pub struct Outcome {
    /// The world at the end.
    pub world: World,
    /// The hash of its one-line-per-step trace.
    pub hash: u64,
}

fn range(rng: &mut SmallRng, lo: u64, hi: u64) -> u64 {
    rng.random_range(lo..=hi)
}

/// Draws a world from a seed.
pub fn draw(seed: u64) -> Drawn {
    let mut rng = SmallRng::seed_from_u64(seed);
    let service_count = range(&mut rng, 1, 3) as usize;
    let mut services = Vec::new();
    for i in 0..service_count {
        let service_type = match range(&mut rng, 0, 3) {
            0 | 1 => ServiceType::Login,
            2 => ServiceType::Default,
            _ => ServiceType::Worker,
        };
        let process_limit = range(&mut rng, 1, 40) as u32;
        let security_mode = service_type == ServiceType::Login && rng.random_bool(0.5);
        let (client_limit, service_count) = if security_mode {
            (1, 1)
        } else {
            (
                range(&mut rng, 1, 20) as u32,
                if rng.random_bool(0.3) {
                    range(&mut rng, 1, 6) as u32
                } else {
                    0
                },
            )
        };
        services.push(ServiceSpec {
            name: format!("svc{i}"),
            protocol: String::new(),
            service_type,
            process_limit,
            client_limit,
            service_count,
            process_min_avail: range(&mut rng, 0, u64::from(process_limit.min(5))) as u32,
            idle_kill_ms: if rng.random_bool(0.8) {
                Some(range(&mut rng, 1, 30) * 1000)
            } else {
                None
            },
            port: 100 + i as u16,
            unix_listener: None,
            fifo_listener: None,
        });
    }
    let config = SimConfig {
        services,
        shutdown_clients: rng.random_bool(0.7),
    };
    let safety_ms = range(&mut rng, 20, 120) * 1000;
    let mut clients = Vec::new();
    let mut longest_session = 0;
    for spec in &config.services {
        for _ in 0..range(&mut rng, 1, 2) {
            let behaviour = if spec.service_type == ServiceType::Login && rng.random_bool(0.25) {
                Behaviour::PreAuthIdle
            } else {
                Behaviour::Login
            };
            let session_hi = range(&mut rng, 100, 30_000);
            longest_session = longest_session.max(session_hi);
            let start_ms = range(&mut rng, 0, safety_ms / 2);
            clients.push(ClientGroup {
                service: spec.name.clone(),
                count: range(&mut rng, 0, 150) as u32,
                start_ms,
                spread_ms: range(&mut rng, 0, safety_ms - start_ms),
                behaviour,
                login_delay_ms: (range(&mut rng, 0, 100), range(&mut rng, 100, 2_000)),
                session_ms: (range(&mut rng, 0, session_hi), session_hi),
                reconnect: range(&mut rng, 0, 3) as u32,
                retry_ms: range(&mut rng, 100, 5_000),
                syn_retries: range(&mut rng, 0, 2) as u32,
                auth_ms: (0, range(&mut rng, 0, 50)),
                client_host: None,
                patience_ms: None,
            });
        }
    }
    let slow = rng.random_bool(0.1);
    let faults = Faults {
        services: Vec::new(),
        fork_fail: rng.random_range(0.0..0.15),
        crash_at_start: rng.random_range(0.0..0.15),
        crash_later: rng.random_range(0.0..0.15),
        crash_after_ms: (range(&mut rng, 100, 5_000), range(&mut rng, 5_000, 60_000)),
        exec_ms: if slow {
            (range(&mut rng, 1, 1_000), range(&mut rng, 1_000, 40_000))
        } else {
            (1, range(&mut rng, 1, 50))
        },
        ignore_sigint: rng.random_range(0.0..0.3),
        never_status: rng.random_range(0.0..0.1),
        off_at_ms: Some(safety_ms),
    };
    let mut events = Vec::new();
    for _ in 0..range(&mut rng, 0, 2) {
        let at_ms = range(&mut rng, 1_000, safety_ms);
        let event = if rng.random_bool(0.5) {
            Event::Reload
        } else {
            let mut changed = config.clone();
            for spec in &mut changed.services {
                spec.process_limit = range(&mut rng, 1, 40) as u32;
                spec.process_min_avail = spec.process_min_avail.min(spec.process_limit);
            }
            Event::ReloadWith(changed)
        };
        events.push(TimedEvent { at_ms, event });
    }
    events.sort_by_key(|e| e.at_ms);
    let longest_idle_kill = config
        .services
        .iter()
        .filter_map(|s| s.idle_kill_ms)
        .max()
        .unwrap_or(0);
    // After the faults stop: a client may still reconnect (3 × 5 s), sit out the pre-auth
    // timeout (180 s) or a session, a service may be throttled (60 s), a process may wait for
    // its first-status kill (30 s) or its die-with-master exit (30 s), and surplus processes
    // need up to three idle_kill rounds.
    let liveness_ms = safety_ms
        + 15_000
        + 180_000
        + longest_session
        + 2_000
        + 60_000
        + 30_000
        + 30_000
        + 3 * longest_idle_kill;
    let load = LoadProfile {
        duration_ms: liveness_ms,
        seed,
        clients,
        faults,
        events,
        backlog: None,
        sample_ms: 1_000,
        // Extra SIGUSR1s at every change: the login machine must take any number of them.
        what_if_notify_at_once: rng.random_bool(0.2),
        net_faults: Vec::new(),
        overflow_policy: match range(&mut rng, 0, 2) {
            0 => None,
            1 => Some(PolicySpec::Original),
            _ => Some(PolicySpec::Custom {
                delay_max_ms: range(&mut rng, 0, 200),
                age_window_ms: range(&mut rng, 0, 20_000),
                jitter_span_ms: range(&mut rng, 0, 20) as u32,
                delayed_kill_max_slots: range(&mut rng, 0, 2) as u32,
                killable_only: rng.random_bool(0.5),
                recheck_ms: range(&mut rng, 1, 2_000),
            }),
        },
    };
    Drawn {
        seed,
        config,
        load,
        safety_ms,
        liveness_ms,
    }
}

/// A failed run: the world as it was when the rule broke, and what broke.
pub struct Failure {
    /// The world at the failure.
    pub world: Box<World>,
    /// What broke.
    pub error: String,
}

fn failure(world: World, error: String) -> Failure {
    Failure {
        world: Box::new(world),
        error,
    }
}

/// Runs one drawn world through both phases.
pub fn run(drawn: &Drawn, options: Options) -> Result<Outcome, Failure> {
    let mut world = World::new(drawn.config.master_config(), &drawn.load, options);
    if let Err(error) = world.run_until(drawn.safety_ms) {
        return Err(failure(world, format!("safety phase: {error}")));
    }
    if let Err(error) = world.run_until(drawn.liveness_ms) {
        return Err(failure(world, format!("liveness phase: {error}")));
    }
    if let Err(error) = world.check_settled() {
        return Err(failure(
            world,
            format!("liveness: not settled by {} ms: {error}", drawn.liveness_ms),
        ));
    }
    let hash = world.trace_hash();
    Ok(Outcome { world, hash })
}

/// Runs a seed (twice with `check_determinism`, comparing the trace hashes).
pub fn run_seed(seed: u64, options: Options, check_determinism: bool) -> Result<Outcome, String> {
    let drawn = draw(seed);
    let first = run(&drawn, options.clone()).map_err(|f| f.error)?;
    if check_determinism {
        let second = run(&drawn, options).map_err(|f| format!("second run: {}", f.error))?;
        if first.hash != second.hash || first.world.steps() != second.world.steps() {
            return Err(format!(
                "not deterministic: trace hashes {:016x} and {:016x} ({} and {} steps)",
                first.hash,
                second.hash,
                first.world.steps(),
                second.world.steps()
            ));
        }
    }
    Ok(first)
}

/// The line that replays a seed.
pub fn replay_command(seed: u64) -> String {
    format!("SIM_SEED={seed} cargo test -p sim --test random -- --exact replay")
}

/// Shorthand for [`des::run`] of a drawn world to its end, for tools.
pub fn run_to_end(drawn: &Drawn) -> World {
    des::run(
        drawn.config.master_config(),
        &drawn.load,
        Options::default(),
    )
    .0
}
