//! Connections per second of an inetd service with service_count = 1, against the raw
//! fork+exec rate of the machine (spawning /bin/true), measured in the same run.
//!
//! Each connection costs one process: the adapter accepts, reports itself busy, and execs
//! /bin/cat; the master then reaps it and forks a replacement. The goal of issue 4 is a ratio of
//! at least 0.5. Run with `cargo bench -p roost --bench inetd` (release). `ROOST_BENCH_SECS`
//! sets the length of each phase (default 3).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOST: &str = env!("CARGO_BIN_EXE_roost");

fn phase_length() -> Duration {
    let secs = std::env::var("ROOST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

/// Sequential spawn+wait of /bin/true (std uses posix_spawn for this).
fn fork_exec_rate(length: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < length {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("spawn /bin/true");
        assert!(status.success());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One echo round trip on a fresh connection.
fn round_trip(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_nodelay(true);
    if s.write_all(b"x").is_err() || s.shutdown(std::net::Shutdown::Write).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).is_ok() && buf == b"x"
}

/// Connections per second with `clients` concurrent clients.
fn inetd_rate(port: u16, clients: usize, length: Duration) -> (f64, u64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ok = 0u64;
                let mut failed = 0u64;
                while start.elapsed() < length {
                    if round_trip(port) {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        let (o, f) = h.join().expect("client thread");
        ok += o;
        failed += f;
    }
    (ok as f64 / start.elapsed().as_secs_f64(), failed)
}

fn main() {
    let length = phase_length();
    let dir = std::env::temp_dir().join(format!("roost-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let config = dir.join("roost.conf");
    std::fs::write(
        &config,
        format!(
            "base_dir = {d}/run\nlog_path = {d}/roost.log\nprotocols = none\n\
             service echo {{\n  executable = inetd /bin/cat\n  service_count = 1\n  \
             process_min_avail = 8\n  process_limit = 200\n  inet_listener echo {{\n    \
             address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
            d = dir.display()
        ),
    )
    .expect("config");
    let mut master = Command::new(ROOST)
        .args(["-F", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("roost starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !round_trip(port) {
        assert!(Instant::now() < deadline, "roost did not serve within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }

    let raw = fork_exec_rate(length);
    println!("fork+exec of /bin/true: {raw:.0} per second");
    for clients in [1, 8] {
        let (rate, failed) = inetd_rate(port, clients, length);
        println!(
            "inetd echo, service_count = 1, {clients} client(s): {rate:.0} connections per second \
             ({:.2} of fork+exec), {failed} failed",
            rate / raw
        );
    }

    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    let _ = master.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
