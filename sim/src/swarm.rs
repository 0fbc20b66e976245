//! The swarm: a seed draws a configuration, a load and faults; a safety phase runs them with
//! the invariants checked after every step, then a liveness phase without faults must bring
//! every service back: queues empty, every client finished, process_min_avail kept, and fresh
//! clients served (TigerBeetle's VOPR, in small).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roost_core::setup::ServiceType;

use crate::scenario::{master_config, Fault, Load, SimService};
use crate::world::{Misbehaviour, Report, World};

/// Everything a seed drew.
#[derive(Clone, Debug)]
pub struct Drawn {
    /// The services.
    pub services: Vec<SimService>,
    /// shutdown_clients.
    pub shutdown_clients: bool,
    /// The load.
    pub loads: Vec<Load>,
    /// The faults (ms, fault).
    pub faults: Vec<(u64, Fault)>,
}

/// The safety phase's length.
pub const SAFETY_MS: u64 = 120_000;
/// The liveness phase's length: long enough for a 60 s throttle, a 30 s first-status kill and
/// idle-kill rounds.
pub const LIVENESS_MS: u64 = 600_000;

fn draw_service(rng: &mut SmallRng, index: usize) -> SimService {
    let service_type = match rng.random_range(0..10) {
        0 | 1 => ServiceType::Login,
        2 => ServiceType::Worker,
        _ => ServiceType::Default,
    };
    let process_limit = rng.random_range(1..12);
    let service_count = [0, 0, 1, 1, 3][rng.random_range(0..5)];
    SimService {
        name: format!("s{index}"),
        service_type,
        process_limit,
        client_limit: rng.random_range(1..5),
        service_count,
        process_min_avail: rng.random_range(0..=process_limit.min(4)),
        idle_kill_secs: if rng.random_bool(0.2) {
            None
        } else {
            Some(rng.random_range(1..90))
        },
        foreign: rng.random_bool(0.1),
    }
}

/// Draws a world from a seed.
pub fn draw(seed: u64) -> Drawn {
    let mut rng = SmallRng::seed_from_u64(seed);
    let services: Vec<SimService> = (0..rng.random_range(1..4))
        .map(|i| draw_service(&mut rng, i))
        .collect();
    let mut loads = Vec::new();
    for _ in 0..rng.random_range(1..6) {
        let service = services[rng.random_range(0..services.len())].name.clone();
        loads.push(Load {
            at_ms: rng.random_range(0..SAFETY_MS / 2),
            service,
            count: rng.random_range(1..120),
            spacing_ms: rng.random_range(0..200),
            hold_ms: rng.random_range(1..8_000),
        });
    }
    let mut faults = Vec::new();
    for _ in 0..rng.random_range(0..5) {
        let service = services[rng.random_range(0..services.len())].name.clone();
        let at = rng.random_range(0..SAFETY_MS);
        let fault = match rng.random_range(0..9) {
            0 => Fault::FailForks(rng.random_range(1..20)),
            1 => Fault::CrashAtStart(service),
            2 => Fault::Silent(service),
            3 => Fault::IgnoreSigint(service),
            4 => Fault::SlowExec(service, rng.random_range(10..5_000)),
            5 => Fault::Kill9(service, rng.random_range(1..5)),
            6 | 7 => {
                let mut changed = services.clone();
                let i = rng.random_range(0..changed.len());
                changed[i] = draw_service(&mut rng, i);
                Fault::Reload(changed)
            }
            _ => Fault::Heal(service),
        };
        faults.push((at, fault));
    }
    Drawn {
        services,
        shutdown_clients: rng.random_bool(0.7),
        loads,
        faults,
    }
}

/// Runs a seed: the safety phase, then the liveness phase. A broken invariant panics (with the
/// world's own message); a liveness failure is returned.
pub fn run(seed: u64) -> Result<Report, String> {
    let drawn = draw(seed);
    let mut world = World::new(master_config(&drawn.services, drawn.shutdown_clients), seed);
    for load in &drawn.loads {
        world.clients(
            &load.service,
            load.at_ms,
            load.count,
            load.spacing_ms,
            load.hold_ms,
        );
    }
    for (at, fault) in &drawn.faults {
        let at = *at;
        match fault {
            Fault::FailForks(n) => world.fail_forks(at, *n),
            Fault::CrashAtStart(s) => world.misbehave(
                at,
                s,
                Misbehaviour {
                    crash_at_start: true,
                    ..Default::default()
                },
            ),
            Fault::Silent(s) => world.misbehave(
                at,
                s,
                Misbehaviour {
                    silent: true,
                    ..Default::default()
                },
            ),
            Fault::IgnoreSigint(s) => world.misbehave(
                at,
                s,
                Misbehaviour {
                    ignores_sigint: true,
                    ..Default::default()
                },
            ),
            Fault::SlowExec(s, ms) => world.misbehave(
                at,
                s,
                Misbehaviour {
                    exec_delay_ms: *ms,
                    ..Default::default()
                },
            ),
            Fault::Heal(s) => world.misbehave(at, s, Misbehaviour::default()),
            Fault::Kill9(s, n) => world.kill9(at, s, *n),
            Fault::Reload(services) => {
                world.reload(at, master_config(services, drawn.shutdown_clients))
            }
            Fault::Term => world.term(at),
        }
    }
    world.run_until(SAFETY_MS);
    world.stop_faults();
    // Liveness: faults off. The queues drain within the time one process would need to serve
    // every client in turn (a service at its limit drains at its own pace: the drop timer is
    // re-armed whenever a slot frees first), every service recovers, and fresh clients are
    // served.
    let serial_work: u64 = drawn
        .loads
        .iter()
        .map(|l| u64::from(l.count) * l.hold_ms)
        .sum();
    let drained_by = SAFETY_MS + LIVENESS_MS / 2 + serial_work;
    let mut at = SAFETY_MS;
    while at < drained_by
        && (world.waiting() > 0 || world.in_service() > 0 || at < SAFETY_MS + LIVENESS_MS / 2)
    {
        at += 10_000;
        world.run_until(at);
    }
    let current = world.master().current_generation();
    let services: Vec<(String, u32)> = world
        .master()
        .services()
        .filter(|s| s.generation == current)
        .filter_map(|s| {
            world
                .master()
                .service_config(s.id)
                .map(|c| (s.name.clone(), c.process_min_avail))
        })
        .collect();
    let served_before = world.report().served;
    for (name, _) in &services {
        world.clients(name, at - 1_000 + 10, 2, 10, 100);
    }
    world.run_until(at + LIVENESS_MS / 2);
    if world.waiting() > 0 || world.in_service() > 0 {
        return Err(format!(
            "{} clients still waiting and {} in service after the liveness phase\n{}",
            world.waiting(),
            world.in_service(),
            world.describe()
        ));
    }
    let probes = 2 * services.len() as u64;
    let served = world.report().served - served_before;
    if served < probes {
        return Err(format!(
            "only {served} of {probes} probe clients were served after the faults stopped"
        ));
    }
    for status in world
        .master()
        .services()
        .filter(|s| s.generation == current)
    {
        let min = services
            .iter()
            .find(|(n, _)| *n == status.name)
            .map_or(0, |(_, m)| *m);
        if status.process_count < min {
            return Err(format!(
                "service {} has {} processes, below process_min_avail {min}",
                status.name, status.process_count
            ));
        }
    }
    Ok(world.report().clone())
}
