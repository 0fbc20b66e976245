//! The master's input stream: any sequence of inputs and time steps keeps every invariant (a
//! debug build of the core panics on a violation; this target is built with assertions on).
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::output::Output;
use roost_core::setup::{ListenerConfig, ListenerKind, MasterConfig, ServiceConfig, ServiceType};
use roost_core::time::{Duration, Instant};

#[derive(Arbitrary, Debug)]
struct Case {
    process_limit: u8,
    client_limit: u8,
    process_min_avail: u8,
    service_count: u8,
    login: bool,
    steps: Vec<(u16, Input)>,
}

fuzz_target!(|case: Case| {
    let process_limit = u32::from(case.process_limit % 8) + 1;
    let service = ServiceConfig {
        name: "fuzz".into(),
        protocol: String::new(),
        service_type: if case.login { ServiceType::Login } else { ServiceType::Default },
        process_limit,
        client_limit: u32::from(case.client_limit % 4) + 1,
        service_count: u32::from(case.service_count % 3),
        process_min_avail: u32::from(case.process_min_avail) % (process_limit + 1),
        idle_kill: Some(Duration::from_secs(5)),
        vsz_limit: 0,
        foreign: false,
        listeners: vec![ListenerConfig {
            name: "fuzz".into(),
            kind: ListenerKind::Inet { address: "*".into(), port: 1, ssl: false, haproxy: false, reuse_port: false },
        }],
    };
    let mut now = Instant::ZERO;
    let mut master = Master::new(MasterConfig { services: vec![service], shutdown_clients: true }, now);
    for (delay, input) in case.steps.into_iter().take(200) {
        now = now + Duration::from_millis(u64::from(delay));
        // Reload inputs carry arbitrary configurations the config module would have refused.
        if let Input::Reload(config) = &input {
            if config.services.iter().any(|s| s.process_limit == 0 || s.client_limit == 0 || s.process_min_avail > s.process_limit) {
                continue;
            }
        }
        master.handle(input, now);
        while let Some(output) = master.poll_output() {
            if let Output::Exit(_) = output {
                return;
            }
        }
        if let Err(violation) = master.check_invariants() {
            panic!("{violation}");
        }
    }
});
