//! The turmoil world: the real master behind simulated TCP, with scripted clients on a few
//! client hosts.

use sim::load::{LoadProfile, SimConfig};
use sim::net::{self, NetOptions, NetSummary};

#[derive(serde::Deserialize)]
struct World {
    config: SimConfig,
    load: LoadProfile,
}

fn world(text: &str) -> World {
    ron::from_str(text).expect("the test's RON parses")
}

/// The one command that replays a test of this file (the seeds are in the tests' RON).
fn replay(test: &str) -> String {
    format!("replay: cargo test -p sim --test net -- --exact {test}")
}

/// Runs the world; a broken rule fails the test with the command that replays it.
fn run(w: &World, test: &str) -> NetSummary {
    net::run(&w.config, &w.load, NetOptions::default())
        .unwrap_or_else(|e| panic!("the run broke a rule: {e}\n{}", replay(test)))
}

/// How many of `lines` are exactly `text`.
fn count(lines: &[(u64, String)], text: &str) -> u64 {
    lines.iter().filter(|(_, t)| t == text).count() as u64
}

/// Both login modes under the same 100 logins over TCP: every client logs in, the
/// performance-mode service never grows past its pool, and a second run with the same seed
/// gives the same trace.
#[test]
fn both_login_modes_serve_every_client_over_tcp() {
    let w = world(
        r#"(
        config: SimConfig(services: [
            ServiceSpec(name: "secure-login", service_type: Login, process_limit: 50, service_count: 1, process_min_avail: 5, port: 110),
            ServiceSpec(name: "fast-login", service_type: Login, process_limit: 2, client_limit: 50, process_min_avail: 2, port: 995),
        ]),
        load: LoadProfile(
            duration_ms: 10000,
            seed: 3,
            clients: [
                ClientGroup(service: "secure-login", count: 50, start_ms: 100, spread_ms: 5000, session_ms: (100, 2000)),
                ClientGroup(service: "fast-login", count: 50, start_ms: 100, spread_ms: 5000, session_ms: (100, 2000)),
            ],
        ),
    )"#,
    );
    let test = "both_login_modes_serve_every_client_over_tcp";
    let first = run(&w, test);
    let again = replay(test);
    assert_eq!(first.served, 100, "{first}\n{again}");
    assert_eq!(first.never_served, 0, "{first}\n{again}");
    assert!(first.steps > 100, "{first}\n{again}");
    let second = run(&w, test);
    assert_eq!(first.hash, second.hash, "same seed, same trace\n{again}");
    assert_eq!(first, second, "{again}");
}

/// Reference §2.8 over TCP: 200 connections that never log in fill a performance-mode login
/// service; 20 legitimate clients arriving during the flood still log in, because full
/// processes kill their oldest pre-login client to make room. The kills are core's Login
/// machine's, and each victim reads `-ERR Connection queue full` before its connection closes.
#[test]
fn pre_auth_flood_over_tcp_lets_legitimate_clients_in() {
    let w = world(
        r#"(
        config: SimConfig(services: [
            ServiceSpec(name: "pop3-login", service_type: Login, process_limit: 4, client_limit: 10, port: 110),
        ]),
        load: LoadProfile(
            duration_ms: 20000,
            seed: 5,
            clients: [
                ClientGroup(service: "pop3-login", count: 200, start_ms: 0, spread_ms: 2000, behaviour: PreAuthIdle),
                ClientGroup(service: "pop3-login", count: 20, start_ms: 5000, spread_ms: 5000, session_ms: (500, 1000), reconnect: 3),
            ],
        ),
    )"#,
    );
    let test = "pre_auth_flood_over_tcp_lets_legitimate_clients_in";
    let summary = run(&w, test);
    let again = replay(test);
    assert_eq!(summary.served, 20, "{summary}\n{again}");
    assert_eq!(summary.peak_processes, 4, "{summary}\n{again}");
    assert!(summary.login_killed >= 20, "{summary}\n{again}");
    let queue_full = "-ERR Connection queue full";
    assert_eq!(
        count(&summary.told, queue_full),
        summary.login_killed,
        "{summary}\n{again}"
    );
    assert_eq!(
        count(&summary.heard, queue_full),
        summary.login_killed,
        "every victim reads why: {summary}\n{again}"
    );
}

/// Issue 5's network faults: the only client host loses the server for 3 s while its clients
/// are between greeting and login. Their login lines are lost; the server's side of those
/// connections is closed by the pre-auth timeout (180 s), and the clients give up after their
/// own timeout and reconnect, so every client logs in in the end. Nobody hears the server's
/// `-ERR Disconnected for inactivity.`: each client had hung up long before.
#[test]
fn clients_cut_off_mid_login_reconnect_and_the_pre_auth_timeout_cleans_up() {
    let w = world(
        r#"(
        config: SimConfig(services: [
            ServiceSpec(name: "pop3-login", service_type: Login, process_limit: 50, service_count: 1, process_min_avail: 5, port: 110),
        ]),
        load: LoadProfile(
            duration_ms: 200000,
            seed: 7,
            clients: [
                ClientGroup(service: "pop3-login", count: 30, start_ms: 1000, spread_ms: 2000, login_delay_ms: (1500, 2500), session_ms: (100, 500), reconnect: 3, retry_ms: 1000),
            ],
            net_faults: [NetFault(at_ms: 2500, duration_ms: 3000)],
        ),
    )"#,
    );
    let test = "clients_cut_off_mid_login_reconnect_and_the_pre_auth_timeout_cleans_up";
    let summary = run(&w, test);
    let again = replay(test);
    assert_eq!(summary.served, 30, "{summary}\n{again}");
    assert!(
        summary.client_timeouts > 0,
        "some clients were cut off: {summary}\n{again}"
    );
    assert!(
        summary.pre_auth_timeouts > 0,
        "the server cleaned up: {summary}\n{again}"
    );
    let inactivity = "-ERR Disconnected for inactivity.";
    assert_eq!(
        count(&summary.told, inactivity),
        summary.pre_auth_timeouts,
        "{summary}\n{again}"
    );
    assert_eq!(count(&summary.heard, inactivity), 0, "{summary}\n{again}");
}

/// Scenario 22 (the login→post-login handoff over the unix listener login/pop3) in the turmoil
/// world: the handed-off TcpStream reaches a pop3 process forked on demand, which answers the
/// login, and every expectation the discrete-event driver meets holds here too (pop3 bounded
/// by its process_limit of 3, one process per handoff, every client served, none dropped).
#[test]
fn the_post_login_handoff_holds_over_tcp_as_in_the_event_driver() {
    let test = "the_post_login_handoff_holds_over_tcp_as_in_the_event_driver";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/22_post_login_handoff.ron");
    let text = std::fs::read_to_string(path).expect("scenario 22 is readable");
    let mut scenario = sim::scenario::parse(&text).expect("scenario 22 parses");
    scenario.world = sim::scenario::WorldKind::Turmoil {
        tick_ms: 10,
        client_hosts: 1,
    };
    if let Err(e) = sim::scenario::run(&scenario) {
        panic!("{e}\n{}", replay(test));
    }
}
