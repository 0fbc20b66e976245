//! Master::handle events per second, for a service of 100, 1,000 and 10,000 processes.
//!
//! The point is the shape, not the figure: the cost of one event must not grow with the number
//! of processes (every per-event structure is indexed; timers live in a table ordered by
//! deadline). Each measured event is a status record that turns a process busy or idle again,
//! the master's most frequent input, for a process picked across the whole pool (a stride of
//! 7,919), so that the 10,000 case also pays the cache misses of a real master.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use roost_core::ids::{Pid, ProcessUid};
use roost_core::input::Input;
use roost_core::master::Master;
use roost_core::output::Output;
use roost_core::setup::{ListenerConfig, ListenerKind, MasterConfig, ServiceConfig, ServiceType};
use roost_core::time::{Duration, Instant};

/// A master with one service of `n` initialised, idle processes.
fn master_with(n: u32) -> (Master, Vec<(Pid, ProcessUid)>, Instant) {
    let service = ServiceConfig {
        name: "imap".to_owned(),
        protocol: "imap".to_owned(),
        service_type: ServiceType::Default,
        process_limit: n,
        client_limit: 1,
        service_count: 0,
        process_min_avail: n,
        idle_kill: Some(Duration::from_secs(60)),
        vsz_limit: 0,
        foreign: false,
        listeners: vec![ListenerConfig {
            name: "imap".to_owned(),
            kind: ListenerKind::Inet {
                address: "*".to_owned(),
                port: 143,
                ssl: false,
                haproxy: false,
                reuse_port: false,
            },
        }],
    };
    let mut now = Instant::from_millis(1);
    let mut master = Master::new(
        MasterConfig {
            services: vec![service],
            shutdown_clients: true,
        },
        now,
    );
    let mut children = Vec::new();
    let mut next_pid = 2;
    loop {
        while let Some(output) = master.poll_output() {
            if let Output::Spawn(request) = output {
                let pid = Pid(next_pid);
                next_pid += 1;
                children.push((pid, request.uid));
                master.handle(
                    Input::Spawned {
                        process: request.process,
                        pid,
                    },
                    now,
                );
            }
        }
        match master.poll_timeout() {
            Some(at) if children.len() < n as usize && at <= now => {
                master.handle(Input::Timeout, now)
            }
            _ => break,
        }
    }
    for &(pid, uid) in &children {
        master.handle(status(pid, uid, 1), now);
    }
    while master.poll_output().is_some() {}
    now = now + Duration::from_millis(1);
    (master, children, now)
}

/// A status record from a child.
fn status(pid: Pid, uid: ProcessUid, available_count: u32) -> Input {
    Input::Status {
        pid,
        uid,
        available_count,
    }
}

fn bench_handle(c: &mut Criterion) {
    let mut group = c.benchmark_group("master_handle");
    for n in [100u32, 1_000, 10_000] {
        let (mut master, children, now) = master_with(n);
        assert_eq!(children.len(), n as usize, "the pool was not built");
        group.throughput(Throughput::Elements(2));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                let (pid, uid) = children[i % children.len()];
                i = i.wrapping_add(7919);
                master.handle(status(pid, uid, 0), now);
                master.handle(status(pid, uid, 1), now);
                while let Some(output) = master.poll_output() {
                    black_box(output);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handle);
criterion_main!(benches);
