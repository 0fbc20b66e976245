//! connload: the client of bench/run.py's per-connection-process rows (issue 8, row 3).
//!
//! `connload ADDRESS:PORT N C [TIMEOUT_SECS]` opens N TCP connections to the address, C at a
//! time, reads each until the server closes it, and prints one JSON line: connections per
//! second, the p50 and p99 latency (connect to close) in milliseconds, and the failures counted
//! by kind.
//!
//! Why not the harness's asyncio client: that one spent about 250 µs of a core on each
//! connection, as much as a third of all the work on a two-core machine, and more the longer a
//! server took to answer (a read that has to wait costs the event loop a future and a timer).
//! So "connections per second at 50 concurrent" measured the interpreter as much as the server.
//! Here each concurrent connection is a thread making blocking calls: a connection costs its
//! client a connect, a read or two and a close.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// What one invocation asks for.
#[derive(Debug, Clone, PartialEq)]
struct Load {
    address: SocketAddr,
    /// Connections in all.
    connections: usize,
    /// Connections open at once.
    concurrency: usize,
    /// For the connect and for each read.
    timeout: Duration,
}

/// The most concurrent connections (one thread each).
const CONCURRENCY_MAX: usize = 4096;
/// A worker's stack: it holds a read buffer and a list of latencies (on the heap).
const WORKER_STACK: usize = 64 * 1024;

const USAGE: &str = "usage: connload ADDRESS:PORT CONNECTIONS CONCURRENCY [TIMEOUT_SECS]";

impl Load {
    fn parse(args: &[String]) -> Result<Load, String> {
        let [address, connections, concurrency, rest @ ..] = args else {
            return Err(format!("expected 3 or 4 arguments, got {}", args.len()));
        };
        if rest.len() > 1 {
            return Err(format!("expected 3 or 4 arguments, got {}", args.len()));
        }
        let address = address
            .parse()
            .map_err(|e| format!("ADDRESS:PORT {address:?}: {e}"))?;
        let connections = number("CONNECTIONS", connections, usize::MAX)?;
        let concurrency = number("CONCURRENCY", concurrency, CONCURRENCY_MAX)?;
        let timeout = match rest.first() {
            Some(secs) => Duration::from_secs(number("TIMEOUT_SECS", secs, 86_400)? as u64),
            None => Duration::from_secs(30),
        };
        Ok(Load {
            address,
            connections,
            concurrency,
            timeout,
        })
    }
}

/// A count from 1 to `max`.
fn number(what: &str, text: &str, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{what} {n}: must be from 1 to {max}")),
        Err(e) => Err(format!("{what} {text:?}: {e}")),
    }
}

/// What a run measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Of every connection that worked, sorted.
    latencies: Vec<Duration>,
    /// Failed connections by kind ("connect: connection refused").
    failures: BTreeMap<String, usize>,
    elapsed: Duration,
}

fn run(load: &Load) -> io::Result<Outcome> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let mut outcome = thread::scope(|scope| -> io::Result<Outcome> {
        let mut workers = Vec::with_capacity(load.concurrency);
        for _ in 0..load.concurrency.min(load.connections) {
            let worker = thread::Builder::new()
                .stack_size(WORKER_STACK)
                .spawn_scoped(scope, || work(load, &next))?;
            workers.push(worker);
        }
        let mut outcome = Outcome::default();
        for worker in workers {
            let part = worker.join().expect("a worker does not panic");
            outcome.latencies.extend(part.latencies);
            for (kind, count) in part.failures {
                *outcome.failures.entry(kind).or_default() += count;
            }
        }
        Ok(outcome)
    })?;
    outcome.elapsed = start.elapsed();
    outcome.latencies.sort_unstable();
    Ok(outcome)
}

/// One worker: connections one after the other until all were taken.
fn work(load: &Load, next: &AtomicUsize) -> Outcome {
    let mut outcome = Outcome::default();
    let mut buffer = [0u8; 4096];
    while next.fetch_add(1, Ordering::Relaxed) < load.connections {
        let start = Instant::now();
        match connection(load, &mut buffer) {
            Ok(()) => outcome.latencies.push(start.elapsed()),
            Err(kind) => *outcome.failures.entry(kind).or_default() += 1,
        }
    }
    outcome
}

/// Connects and reads until the server closes; on failure, which step failed and why.
fn connection(load: &Load, buffer: &mut [u8]) -> Result<(), String> {
    let why = |step: &str, e: io::Error| {
        let kind = match e.kind() {
            // A read timeout: SO_RCVTIMEO makes read fail with EAGAIN.
            io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut,
            kind => kind,
        };
        format!("{step}: {kind}")
    };
    let mut stream =
        TcpStream::connect_timeout(&load.address, load.timeout).map_err(|e| why("connect", e))?;
    stream
        .set_read_timeout(Some(load.timeout))
        .map_err(|e| why("connect", e))?;
    loop {
        match stream.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(why("read", e)),
        }
    }
}

/// The value at quantile `q` of sorted `values`: the one at index ⌊q·n⌋ (the last one at most),
/// as the peer's load generators take it.
fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let last = values.len().checked_sub(1)?;
    Some(values[last.min((q * values.len() as f64) as usize)])
}

fn json(outcome: &Outcome) -> String {
    let ms = |d: Option<Duration>| match d {
        Some(d) => format!("{:.3}", d.as_secs_f64() * 1000.0),
        None => "null".to_owned(),
    };
    let rate = outcome.latencies.len() as f64 / outcome.elapsed.as_secs_f64().max(1e-9);
    let mut failures = String::new();
    for (i, (kind, count)) in outcome.failures.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        // Kinds are io::ErrorKind names after a fixed step name: nothing to escape.
        let _ = write!(failures, "{sep}\"{kind}\": {count}");
    }
    format!(
        "{{\"conns_per_s\": {rate:.1}, \"ok\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \
         \"failed\": {}, \"failures\": {{{failures}}}}}",
        outcome.latencies.len(),
        ms(quantile(&outcome.latencies, 0.5)),
        ms(quantile(&outcome.latencies, 0.99)),
        outcome.failures.values().sum::<usize>(),
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let load = match Load::parse(&args) {
        Ok(load) => load,
        Err(e) => {
            eprintln!("connload: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&load) {
        Ok(outcome) => {
            println!("{}", json(&outcome));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("connload: cannot start {} threads: {e}", load.concurrency);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A server on a free port that answers `reply` to each of `count` connections and closes.
    fn server(count: usize, reply: &'static [u8]) -> (SocketAddr, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            for _ in 0..count {
                let (mut conn, _) = listener.accept().unwrap();
                conn.write_all(reply).unwrap();
            }
        });
        (address, handle)
    }

    #[test]
    fn every_connection_is_read_to_its_end_and_timed() {
        let (address, server) = server(40, b"+OK hello\r\n");
        let load = Load::parse(&args(&[&address.to_string(), "40", "8"])).unwrap();
        let outcome = run(&load).unwrap();
        server.join().unwrap();
        assert_eq!(outcome.latencies.len(), 40, "{:?}", outcome.failures);
        assert!(outcome.failures.is_empty());
        assert!(outcome.latencies.windows(2).all(|w| w[0] <= w[1]), "sorted");
        let line = json(&outcome);
        assert!(
            line.contains("\"ok\": 40,") && line.contains("\"failed\": 0,"),
            "{line}"
        );
    }

    #[test]
    fn a_refused_connection_is_counted_by_step_and_kind() {
        // Bind and drop: nothing listens on the port any more.
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let load = Load::parse(&args(&[&address.to_string(), "3", "2", "5"])).unwrap();
        let outcome = run(&load).unwrap();
        assert!(outcome.latencies.is_empty());
        assert_eq!(
            outcome.failures.get("connect: connection refused"),
            Some(&3),
            "{:?}",
            outcome.failures
        );
        let line = json(&outcome);
        assert!(line.contains("\"p50_ms\": null"), "{line}");
        assert!(
            line.ends_with("\"failed\": 3, \"failures\": {\"connect: connection refused\": 3}}"),
            "{line}"
        );
    }

    #[test]
    fn a_server_that_never_closes_is_a_read_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let load = Load {
            timeout: Duration::from_millis(200),
            ..Load::parse(&args(&[&address.to_string(), "1", "1"])).unwrap()
        };
        // The kernel completes the handshake from the backlog; nobody accepts or closes.
        let outcome = run(&load).unwrap();
        assert_eq!(
            outcome.failures.get("read: timed out"),
            Some(&1),
            "{:?}",
            outcome.failures
        );
        drop(listener);
    }

    #[test]
    fn bad_arguments_say_which_and_why() {
        let cases: &[(&[&str], &str)] = &[
            (&["127.0.0.1:1", "10"], "expected 3 or 4 arguments, got 2"),
            (
                &["localhost", "1", "1"],
                "ADDRESS:PORT \"localhost\": invalid socket address",
            ),
            (
                &["127.0.0.1:1", "0", "1"],
                "CONNECTIONS 0: must be from 1 to",
            ),
            (
                &["127.0.0.1:1", "5", "x"],
                "CONCURRENCY \"x\": invalid digit",
            ),
            (
                &["127.0.0.1:1", "5", "5000"],
                "CONCURRENCY 5000: must be from 1 to 4096",
            ),
            (
                &["127.0.0.1:1", "5", "5", "1", "2"],
                "expected 3 or 4 arguments, got 5",
            ),
        ];
        for (given, expected) in cases {
            let error = Load::parse(&args(given)).unwrap_err();
            assert!(error.starts_with(expected), "{given:?}: {error}");
        }
    }

    #[test]
    fn quantiles_follow_the_harness() {
        let ms = |n: u64| Duration::from_millis(n);
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&values, 0.5), Some(ms(51)));
        assert_eq!(quantile(&values, 0.99), Some(ms(100)));
        assert_eq!(quantile(&values[..1], 0.99), Some(ms(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
