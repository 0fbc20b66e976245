//! End-to-end tests of the real `roost` binary: real processes, sockets on loopback, signals,
//! and the log as an operator reads it. Each test has its own base_dir and ports and stops its
//! master (a guard kills it if the test fails half-way).

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn process_min_avail_processes_appear_with_their_titles_and_serve() {
    let port = free_port();
    let mut roost = Roost::start(
        "minavail",
        &format!(
            "instance_name = e2e\n{}",
            echo_service(port, "  process_min_avail = 3")
        ),
    );
    // Titles are checked inside the wait: a child between fork and exec still shows the
    // master's own command line.
    roost.wait_for(
        |r| {
            let kids = r.children();
            kids.len() == 3 && kids.iter().all(|(_, t)| t == "roost-e2e/echo")
        },
        "three children titled roost-e2e/echo",
    );
    assert_eq!(echo(port, "hello\n").expect("echo"), "hello\n");
    roost.wait_for(|r| r.children().len() == 3, "the pool topped up again");
    // The served process exits and is replaced; `roost status` settles on three available.
    roost.wait_for(
        |r| {
            String::from_utf8_lossy(&r.command(&["status"]).stdout)
                .contains("echo\t1\t3\t3\t100\t1\t")
        },
        "roost status to show 3 processes, 3 available, process_limit 100, client_limit 1",
    );
    assert!(roost.stop().success());
    assert!(
        roost.log_text().contains("starting up with"),
        "{}",
        roost.log_text()
    );
}

#[test]
fn a_burst_grows_the_pool_to_process_limit_and_the_limit_is_logged() {
    let port = free_port();
    let config = format!(
        "service slow {{\n  executable = inetd /bin/sleep 2\n  service_count = 1\n  process_limit = 3\n  inet_listener slow {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
    );
    let mut roost = Roost::start("burst", &config);
    let streams: Vec<TcpStream> = (0..6)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert_eq!(
        streams.len(),
        6,
        "the kernel queues what the processes cannot take yet"
    );
    roost.wait_for(|r| r.children().len() == 3, "three busy children");
    roost.wait_for_log(
        "service(slow): process_limit (3) reached, client connections are being dropped",
    );
    assert!(roost.children().len() <= 3, "never over process_limit");
    drop(streams);
    assert!(roost.stop().success());
}

#[test]
fn service_count_recycles_processes_and_kill_9_is_logged_and_replaced() {
    let port = free_port();
    let mut roost = Roost::start("recycle", &echo_service(port, "  process_min_avail = 1"));
    roost.wait_for(|r| r.children().len() == 1, "one child");
    let first = roost.children()[0].0;
    for i in 0..5 {
        assert_eq!(
            echo(port, &format!("n{i}\n")).expect("echo"),
            format!("n{i}\n")
        );
    }
    roost.wait_for(
        |r| r.children().len() == 1 && r.children()[0].0 != first,
        "a fresh process",
    );
    let victim = roost.children()[0].0;
    unsafe { libc::kill(victim, libc::SIGKILL) };
    roost.wait_for_log(&format!(
        "service(echo): child {victim} killed with signal 9"
    ));
    roost.wait_for(
        |r| r.children().len() == 1 && r.children()[0].0 != victim,
        "a replacement",
    );
    assert_eq!(
        echo(port, "after\n").expect("echo after the kill"),
        "after\n"
    );
    assert!(roost.stop().success());
}

#[test]
fn a_program_that_fails_at_start_is_throttled_and_the_master_survives() {
    let port = free_port();
    let config = format!(
        "service broken {{\n  executable = /bin/false\n  process_min_avail = 1\n  inet_listener broken {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
    );
    let mut roost = Roost::start("throttle", &config);
    roost.wait_for_log("service(broken): command startup failed, throttling for 2.000 secs");
    assert!(
        roost.log_text().contains("returned error 1"),
        "{}",
        roost.log_text()
    );
    // After the throttle the master only listens again (reference §2.4): the next connection
    // makes it try again, and fail again, for twice as long.
    std::thread::sleep(Duration::from_millis(2_100));
    let _client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    roost.wait_for_log("service(broken): command startup failed, throttling for 4.000 secs");
    assert!(
        roost
            .child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
            .is_none(),
        "the master is alive"
    );
    assert!(roost.stop().success());
}

#[test]
fn a_broken_reload_keeps_running_and_says_where_while_a_good_one_applies() {
    let port = free_port();
    let mut roost = Roost::start("reload", &echo_service(port, "  process_min_avail = 1"));
    roost.wait_for(|r| r.children().len() == 1, "one child");
    let good = std::fs::read_to_string(&roost.config).expect("config");
    std::fs::write(
        &roost.config,
        format!("{good}service echo {{\n  proces_limit = 5\n}}\n"),
    )
    .expect("write");
    let output = roost.command(&["reload"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = good.lines().count() + 2;
    assert!(
        stderr.contains(&format!("roost.conf:{line}: Unknown setting: proces_limit")),
        "{stderr}"
    );
    assert_eq!(echo(port, "still\n").expect("still serving"), "still\n");
    std::fs::write(
        &roost.config,
        good.replace("process_min_avail = 1", "process_min_avail = 2"),
    )
    .expect("write");
    let output = roost.command(&["reload"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    roost.wait_for(
        |r| r.children().len() == 2,
        "the new generation's two processes",
    );
    assert!(roost.stop().success());
}

#[test]
fn fifty_reloads_under_load_lose_no_connection_and_leak_no_fd_or_zombie() {
    let port = free_port();
    let mut roost = Roost::start(
        "reloadload",
        &echo_service(port, "  process_min_avail = 2\n  process_limit = 50"),
    );
    roost.wait_for(
        |r| r.children().len() == 2 && r.log_processes().len() == 1,
        "two children and the log process",
    );
    // Steady state: every pipe of the generation exists (the log process's start made them).
    let baseline = roost.fd_count();
    // A client connects again and again for as long as the reloads go on (bounded).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut served = 0;
            for i in 0..5_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match echo(port, &format!("m{i}\n")) {
                    Ok(reply) if reply == format!("m{i}\n") => served += 1,
                    other => failures.push(format!("{i}: {other:?}")),
                }
            }
            (served, failures)
        })
    };
    for _ in 0..50 {
        let output = roost.command(&["reload"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failures) = load.join().expect("load thread");
    assert!(
        failures.is_empty(),
        "connections lost during reloads: {failures:?}"
    );
    assert!(served > 50, "only {served} sessions during 50 reloads");
    // Old generations drain; the master's fds come back to where they were, and every old
    // child is reaped (no zombie left behind).
    if !poll_until(10, || roost.fd_count() <= baseline + 2) {
        let open: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", roost.master_pid()))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                )
            })
            .collect();
        panic!(
            "the fd count did not settle: {} after, {baseline} before\nfds: {open:?}\nchildren: {:?}\nstatus: {}",
            roost.fd_count(),
            children_of(roost.master_pid()),
            String::from_utf8_lossy(&roost.command(&["status"]).stdout)
        );
    }
    // Each reload started a log process for its generation; the old ones left with their
    // generations.
    roost.wait_for(|r| r.log_processes().len() == 1, "one log process");
    let master = roost.master_pid();
    roost.wait_for(
        |_| {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .all(|entry| {
                    let stat =
                        std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
                    let Some((_, rest)) = stat.rsplit_once(')') else {
                        return true;
                    };
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    !(fields.first() == Some(&"Z")
                        && fields.get(1) == Some(&master.to_string().as_str()))
                })
        },
        "no zombie children",
    );
    assert!(roost.stop().success());
}

#[test]
fn term_shuts_down_cleanly_and_a_second_instance_binds_at_once() {
    let port = free_port();
    let config = echo_service(port, "  process_min_avail = 2");
    let mut first = Roost::start("restart-a", &config);
    first.wait_for(|r| r.children().len() == 2, "two children");
    let children: Vec<i32> = first.children().iter().map(|c| c.0).collect();
    unsafe { libc::kill(first.master_pid(), libc::SIGTERM) };
    let mut child = first.child.take().expect("running");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status:?}");
    assert!(
        !first.dir.join("run/master.pid").exists(),
        "the pid file is removed"
    );
    // Who asked, as the original says it.
    let by_us = format!(
        "Warning: Killed with signal 15 (by pid={} uid={} code=kill)",
        std::process::id(),
        unsafe { libc::getuid() }
    );
    assert!(first.log_text().contains(&by_us), "{}", first.log_text());
    // The children see the master gone and leave.
    let deadline = Instant::now() + Duration::from_secs(5);
    while children.iter().any(|pid| {
        Path::new(&format!("/proc/{pid}")).exists() && unsafe { libc::kill(*pid, 0) } == 0
    }) {
        assert!(Instant::now() < deadline, "children outlived their master");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = Roost::start("restart-b", &config);
    assert_eq!(echo(port, "again\n").expect("echo"), "again\n");
    assert!(second.stop().success());
    // `roost stop` sends no signal: the line names the command and its process.
    let log = second.log_text();
    assert!(
        log.contains("Warning: Killed with signal 15 (by pid=")
            && log.contains(&format!(" uid={} code=roost stop)", unsafe {
                libc::getuid()
            })),
        "{log}"
    );
}

#[test]
fn a_second_master_on_the_same_base_dir_is_refused() {
    let port = free_port();
    let roost = Roost::start("twice", &echo_service(port, ""));
    let output = Command::new(ROOST)
        .args(["-F", "-c"])
        .arg(&roost.config)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "roost is already running with PID {}",
            roost.master_pid()
        )),
        "{stderr}"
    );
}

#[test]
fn a_stale_pid_file_with_a_live_pid_does_not_block_a_start() {
    // The original's kill(pid, 0) check refuses to start when the pid in a stale file was reused
    // by another process (typical in containers, reference §7.2 item 6). Pid 1 is always alive.
    let port = free_port();
    let mut roost = Roost::prepare("stale", &echo_service(port, ""));
    std::fs::create_dir_all(roost.dir.join("run")).expect("dir");
    std::fs::write(roost.dir.join("run/master.pid"), "1\n").expect("stale pid file");
    roost.spawn();
    assert_eq!(echo(port, "up\n").expect("echo"), "up\n");
    let pid = std::fs::read_to_string(roost.dir.join("run/master.pid")).expect("pid file");
    assert_eq!(pid.trim(), roost.master_pid().to_string());
    assert!(roost.stop().success());
}

/// An inetd service whose program writes `Error: got LINE` to its stderr for the line it
/// reads, and echoes it.
fn stderr_writing_service(dir: &Path, port: u16) -> String {
    let program = dir.join("say.sh");
    write_script(
        &program,
        "#!/bin/sh\nread line\necho \"Error: got $line\" >&2\necho \"no level $line\" >&2\necho \"$line\"\n",
    );
    format!(
        "service say {{\n  executable = inetd {}\n  service_count = 1\n  inet_listener say {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
        program.display()
    )
}

#[test]
fn the_log_process_writes_the_childrens_lines_and_a_kill_9_loses_none() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roost-e2e-logproc-prog-{}", std::process::id()));
    let mut roost = Roost::start("logproc", &stderr_writing_service(&dir, port));
    roost.wait_for(|r| r.log_processes().len() == 1, "the log process");
    let first = roost.log_processes()[0];
    let titles = children_of(roost.master_pid());
    assert!(
        titles
            .iter()
            .any(|(pid, title)| *pid == first && title == "roost/log"),
        "{titles:?}"
    );
    for i in 0..40 {
        if i == 20 {
            // Killed while idle: a kill between its read and its write would lose what it
            // held, which no reader can prevent.
            roost.wait_for_log("say: Error: no level n19");
            unsafe { libc::kill(first, libc::SIGKILL) };
        }
        assert_eq!(
            echo(port, &format!("n{i}\n")).expect("echo"),
            format!("n{i}\n")
        );
    }
    roost.wait_for_log(&format!("service(log): child {first} killed with signal 9"));
    roost.wait_for(
        |r| r.log_processes().len() == 1 && r.log_processes()[0] != first,
        "a new log process",
    );
    roost.wait_for_log("say: Error: no level n39");
    let text = roost.log_text();
    for i in 0..40 {
        // A line without a level, as any program writes, is an error as in the original.
        for line in [
            format!("say: Error: got n{i}\n"),
            format!("say: Error: no level n{i}\n"),
        ] {
            assert_eq!(text.matches(&line).count(), 1, "{line:?} once in:\n{text}");
        }
    }
    // The catalogue's default services the configuration never names are not announced at
    // every start; `roost check` lists them.
    assert!(!text.contains("default services"), "{text}");
    let check = roost.command(&["check"]);
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("default services have no program yet"),
        "{check:?}"
    );
    // The new log process keeps what it wrote for `roost log errors`.
    let output = roost.command(&["log", "errors"]);
    assert!(output.status.success());
    let errors = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(errors.contains(" say: Error: got n39\n"), "{errors}");
    assert!(roost.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn built_ins_are_made_by_the_spawner_which_a_kill_9_does_not_stop() {
    let port = free_port();
    let mut roost = Roost::start("spawner", &echo_service(port, "  process_min_avail = 2"));
    roost.wait_for(|r| r.children().len() == 2, "two inetd processes");
    // Not executed: an adapter runs in the spawner's memory until its program's exec, so
    // its command line is the spawner's and its name (comm) the service's. And the spawner's
    // socket is not open in it: a spawner that dies is seen at once.
    let spawner = roost.spawner().expect("the spawner runs");
    let links = |pid: i32| -> Vec<(String, String)> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .flatten()
            .map(|e| {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    target.display().to_string(),
                )
            })
            .collect()
    };
    let spawner_socket = links(spawner)
        .into_iter()
        .find(|(fd, _)| fd == "3")
        .map(|(_, target)| target)
        .expect("the spawner's socket");
    for (pid, _) in roost.children() {
        assert_eq!(cmdline(pid), cmdline(spawner), "pid {pid}");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        assert_eq!(comm.trim_end(), "echo", "pid {pid}");
        let fds = links(pid);
        assert!(
            !fds.iter().any(|(_, target)| *target == spawner_socket),
            "{fds:?}"
        );
    }
    unsafe { libc::kill(spawner, libc::SIGKILL) };
    roost.wait_for_log(&format!("the spawner (pid {spawner}) exited"));
    // Served meanwhile (by exec); each connection makes the pool start one more, and a new
    // spawner comes with one of them (at most one start a second).
    let mut i = 0;
    let back = poll_until(10, || {
        i += 1;
        assert_eq!(
            echo(port, &format!("after {i}\n")).expect("served"),
            format!("after {i}\n")
        );
        roost.spawner().is_some_and(|pid| pid != spawner)
    });
    assert!(back, "no new spawner; log:\n{}", roost.log_text());
    assert!(
        !roost.log_text().contains("unknown"),
        "the spawner's exit is not a service's:\n{}",
        roost.log_text()
    );
    assert!(roost.stop().success());
}

#[test]
fn a_log_process_with_no_pipe_to_read_stays_rather_than_restarting_at_once() {
    // Every other service left out: the log process has nothing to read and no end to wait
    // for. Exiting at once, it would be started again at once, for ever.
    let mut roost = Roost::start(
        "lonelylog",
        "service auth {\n  executable = no-such-program\n}\n",
    );
    roost.wait_for(|r| r.log_processes().len() == 1, "the log process");
    let first = roost.log_processes();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(roost.log_processes(), first, "the same log process");
    let status = String::from_utf8_lossy(&roost.command(&["status"]).stdout).into_owned();
    let log_row = status
        .lines()
        .find(|l| l.starts_with("log\t1\t"))
        .unwrap_or_default();
    assert!(log_row.ends_with("\t1"), "created once: {status}");
    assert!(roost.stop().success());
}

/// Removes the /dev/log a test bound, however the test ends.
struct DevLog(std::os::unix::net::UnixDatagram);

impl Drop for DevLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file("/dev/log");
    }
}

#[test]
fn as_root_syslog_gets_the_masters_lines_and_the_childrens_through_the_log_process() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: binding /dev/log needs root (CI runs as root)");
        return;
    }
    if Path::new("/dev/log").exists() {
        println!("skipped: a syslog daemon owns /dev/log here");
        return;
    }
    let Ok(socket) = std::os::unix::net::UnixDatagram::bind("/dev/log") else {
        println!("skipped: /dev/log cannot be bound here");
        return;
    };
    let syslog = DevLog(socket);
    syslog
        .0
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roost-e2e-syslog-prog-{}", std::process::id()));
    let config = format!(
        "log_path = syslog\nsyslog_facility = local3\n{}",
        stderr_writing_service(&dir, port)
    );
    let mut roost = Roost::start("syslog", &config);
    assert_eq!(echo(port, "hello\n").expect("echo"), "hello\n");
    let master = roost.master_pid();
    let (mut master_line, mut child_line) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 4096];
    while (master_line.is_none() || child_line.is_none()) && Instant::now() < deadline {
        let Ok(n) = syslog.0.recv(&mut buffer) else {
            continue;
        };
        let datagram = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if datagram.contains("roost: Info: roost v") {
            master_line = Some(datagram);
        } else if datagram.contains("say: Error: got hello") {
            child_line = Some(datagram);
        }
    }
    assert!(roost.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
    // local3 is facility 19: Info is priority 19 × 8 + 6, Error 19 × 8 + 3; the ident is roost's
    // and the pid the writer's, the master's own or the log process's.
    let master_line = master_line.expect("the master's start line in syslog");
    assert!(
        master_line.starts_with(&format!("<158>roost[{master}]: roost: Info: ")),
        "{master_line}"
    );
    let child_line = child_line.expect("the child's line in syslog");
    assert!(child_line.starts_with("<155>roost["), "{child_line}");
    assert!(
        !child_line.starts_with(&format!("<155>roost[{master}]")),
        "written by the log process, not the master: {child_line}"
    );
}

#[test]
fn usr1_after_a_rename_writes_to_the_new_log_file() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roost-e2e-rotate-prog-{}", std::process::id()));
    let mut roost = Roost::start("logrotate", &stderr_writing_service(&dir, port));
    roost.wait_for_log("starting up");
    assert_eq!(echo(port, "before\n").expect("echo"), "before\n");
    roost.wait_for_log("say: Error: got before");
    let rotated = roost.dir.join("roost.log.1");
    std::fs::rename(&roost.log, &rotated).expect("rename");
    unsafe { libc::kill(roost.master_pid(), libc::SIGUSR1) };
    roost.wait_for_log("Reopening log files");
    // The log process reopened too: a child's line reaches the new file.
    assert_eq!(echo(port, "after\n").expect("echo"), "after\n");
    roost.wait_for_log("say: Error: got after");
    let output = roost.command(&["log", "reopen"]);
    assert!(output.status.success());
    let old = std::fs::read_to_string(&rotated).expect("old log");
    assert!(
        old.contains("starting up") && !old.contains("got after"),
        "{old}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(roost.stop().success());
    assert!(
        roost.log_text().contains("Killed with signal 15"),
        "{}",
        roost.log_text()
    );
}

#[test]
fn vsz_limit_stops_a_process_that_allocates_past_it() {
    let port = free_port();
    // python3 allocating 200 MB under a 64 MB address-space limit.
    let script = "import sys; b = bytearray(200*1024*1024); sys.stdout.write('unreachable')";
    let dir = std::env::temp_dir().join(format!("roost-e2e-vsz-script-{}", std::process::id()));
    let program = dir.join("alloc.sh");
    write_script(
        &program,
        &format!("#!/bin/sh\nexec python3 -c \"{script}\"\n"),
    );
    let config = format!(
        "service alloc {{\n  executable = inetd {}\n  service_count = 1\n  vsz_limit = 64M\n  inet_listener alloc {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
        program.display()
    );
    let mut roost = Roost::start("vsz", &config);
    let reply = echo(port, "").unwrap_or_default();
    assert!(
        !reply.contains("unreachable"),
        "the allocation succeeded under vsz_limit"
    );
    roost.wait_for_log("MemoryError");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(roost.stop().success());
}

#[test]
fn the_unprivileged_path_runs_as_another_user() {
    // CI runs as root; the unprivileged path is proven by running the binary as `nobody`.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to switch to an unprivileged user (this run is not root)");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roost-e2e-nobody-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let config = dir.join("roost.conf");
    std::fs::write(
        &config,
        format!(
            "base_dir = {}/run\nlog_path = /dev/stderr\nprotocols = none\n{}",
            dir.display(),
            echo_service(port, "  process_min_avail = 1\n  user = root")
        ),
    )
    .expect("config");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let child = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(ROOST)
        .args(["-F", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        if let Ok(reply) = echo(port, "as nobody\n") {
            break reply;
        }
        assert!(Instant::now() < deadline, "roost did not serve as nobody");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reply, "as nobody\n");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().expect("exit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("running as nobody (not root)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn as_root_a_child_runs_with_the_configured_user() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: switching users needs root");
        return;
    }
    let port = free_port();
    let config = format!(
        "service who {{\n  executable = inetd /usr/bin/id -un\n  service_count = 1\n  user = nobody\n  inet_listener who {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
    );
    let mut roost = Roost::start("user", &config);
    assert_eq!(echo(port, "").expect("id"), "nobody\n");
    assert!(roost.stop().success());
}

/// Receives one datagram from the notify socket, or panics after 10 s.
fn next_notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the socket's timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let port = free_port();
    let mut roost = Roost::prepare("notify", &echo_service(port, "  process_min_avail = 1"));
    let socket_path = roost.dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    roost.spawn_with_env(&[("NOTIFY_SOCKET", socket_path.as_path())]);
    let ready = next_notification(&socket);
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", roost.master_pid())),
        "{ready}"
    );
    let out = roost.command(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloading = next_notification(&socket);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading
        .rsplit('=')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .expect("MONOTONIC_USEC is a number");
    assert!(usec > 0);
    let again = next_notification(&socket);
    assert!(again.starts_with("READY=1"), "{again}");
    assert!(roost.stop().success());
    let stopping = next_notification(&socket);
    assert_eq!(stopping, "STOPPING=1");
}

/// The identity a child gets as root: user, primary group and extra_groups, both when the
/// roost-aware child drops them itself after exec (ROOST_RESTRICT_*) and when the master drops
/// them before exec (drop_priv_before_exec = yes).
#[test]
fn as_root_a_child_gets_its_user_group_and_extra_groups_either_way() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: switching users needs root");
        return;
    }
    let lookup = |name: &str| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    let (Some(nogroup), Some(daemon)) = (lookup("nogroup"), lookup("daemon")) else {
        println!("skipped: the groups nogroup and daemon do not exist here");
        return;
    };
    for (name, drop_before) in [("ids-after", "no"), ("ids-before", "yes")] {
        let port = free_port();
        let config = format!(
            "service ids {{\n  executable = inetd /usr/bin/id\n  service_count = 1\n  user = nobody\n  group = nogroup\n  extra_groups = daemon\n  drop_priv_before_exec = {drop_before}\n  inet_listener ids {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
        );
        let mut roost = Roost::start(name, &config);
        let id = echo(port, "").expect("id runs");
        assert!(id.starts_with("uid=65534(nobody) "), "{name}: {id}");
        assert!(
            id.contains(&format!(" gid={nogroup}(nogroup) ")),
            "{name}: {id}"
        );
        let groups = id
            .trim_end()
            .rsplit_once("groups=")
            .map(|(_, g)| g)
            .unwrap_or("");
        assert!(
            groups.contains(&format!("{daemon}(daemon)")),
            "{name}: extra group missing in {id}"
        );
        assert!(
            !groups.contains("0(root)"),
            "{name}: root's groups leaked into {id}"
        );
        assert!(roost.stop().success());
    }
}

/// `roost status` speaks core's control protocol: a SERVICE table, then a PROCESS row for every
/// child with its pid and free slots.
#[test]
fn status_lists_services_and_every_process_with_its_pid() {
    let port = free_port();
    let mut roost = Roost::start("status", &echo_service(port, "  process_min_avail = 2"));
    roost.wait_for(|r| r.children().len() == 2, "two children");
    // Their first status record (available_count 1) may still be on its way.
    roost.wait_for(
        |r| {
            let text = String::from_utf8_lossy(&r.command(&["status"]).stdout).into_owned();
            r.children()
                .iter()
                .all(|(pid, _)| text.contains(&format!("\necho\t{pid}\t1\t")))
        },
        "a PROCESS row with available_count 1 for each child",
    );
    let out = roost.command(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("service\tgeneration\tprocess_count"),
        "{text}"
    );
    assert!(text.contains("\necho\t1\t2\t2\t"), "{text}");
    assert!(roost.stop().success());
}

/// A program replaced by something the kernel cannot run after start-up (a package upgrade
/// half done, a truncated file): the replacement's execve fails, and the log says why before
/// the failure is throttled, instead of a bare "returned error 84".
#[test]
fn a_failed_exec_is_logged_with_its_reason() {
    let mut roost = Roost::prepare("vanish", "");
    let program = roost.dir.join("prog");
    std::fs::copy("/bin/sleep", &program).expect("copy /bin/sleep");
    roost.append_config(&format!(
        "service vanish {{\n  executable = {} 1000\n  foreign = yes\n  process_min_avail = 1\n  process_limit = 1\n}}\n",
        program.display()
    ));
    roost.spawn();
    roost.wait_for(|r| r.children().len() == 1, "the foreign process");
    let (pid, _) = roost.children()[0].clone();
    // Still there and executable, so the master forks; but not a program: ENOEXEC.
    std::fs::remove_file(&program).expect("remove the program");
    std::fs::write(&program, [0u8, 1, 2, 3]).expect("garbage");
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod +x");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    roost.wait_for_log(&format!(
        "service(vanish): execv({}) failed: Exec format error (os error 8)",
        program.display()
    ));
    roost.wait_for_log("service(vanish): command startup failed, throttling");
    assert!(roost.stop().success());
}

/// `-i NAME` names the instance: titles become `roost-NAME/SERVICE`, the master's log lines
/// `roost-NAME: ...`, and a reload keeps it.
#[test]
fn the_instance_name_from_the_command_line_is_in_titles_and_survives_a_reload() {
    let port = free_port();
    let mut roost = Roost::prepare("instance", &echo_service(port, "  process_min_avail = 2"));
    roost.launch(&[], &["-i", "second"]);
    // (A child between fork and exec still shows the master's own command line.)
    roost.wait_for(
        |r| {
            let kids = r.children();
            kids.len() == 2 && kids.iter().all(|(_, t)| t == "roost-second/echo")
        },
        "two children titled roost-second/echo",
    );
    let out = roost.command(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    roost.wait_for(
        |r| {
            let kids = r.children();
            kids.len() == 2 && kids.iter().all(|(_, t)| t == "roost-second/echo")
        },
        "the new generation's children, still roost-second/echo",
    );
    assert!(roost.stop().success());
    let log = roost.log_text();
    assert!(
        log.contains("roost-second: Info: roost v") && !log.contains("\nsecond: "),
        "{log}"
    );
}

/// As root, `chroot = jail` (relative to base_dir) confines the child: the program it runs sees
/// the jail as `/` (and exists only there). The roost-aware inetd adapter enters the chroot itself
/// after exec (ROOST_RESTRICT_CHROOT), then execs the program inside it.
#[test]
fn as_root_a_child_runs_in_its_chroot() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: chroot needs root");
        return;
    }
    let port = free_port();
    let mut roost = Roost::prepare(
        "chroot",
        &format!(
            "service jailed {{\n  executable = inetd /bin/jailed-cat /marker\n  service_count = 1\n  user = nobody\n  chroot = jail\n  inet_listener jailed {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
        ),
    );
    let jail = roost.dir.join("run/jail");
    if !install_into_chroot(&jail, "/bin/cat") {
        println!("skipped: could not copy /bin/cat and its libraries into a chroot");
        return;
    }
    // A program that exists only inside the chroot: the check looks for it there.
    std::fs::rename(jail.join("bin/cat"), jail.join("bin/jailed-cat")).expect("rename");
    std::fs::write(jail.join("marker"), "inside the chroot\n").expect("marker");
    std::fs::write(roost.dir.join("marker"), "outside\n").expect("decoy");
    roost.spawn();
    assert_eq!(
        echo(port, "").expect("cat runs in the chroot"),
        "inside the chroot\n"
    );
    assert!(roost.stop().success());
}

/// What an inetd program starts with: the connection on stdin and stdout, the environment
/// roost gives its children without the child protocol's own variables, every signal at its
/// default (the Rust runtime ignores SIGPIPE, and SIG_IGN survives exec) and none blocked.
#[test]
fn an_inetd_program_gets_a_clean_environment_and_default_signals() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roost-e2e-inetd-env-prog-{}", std::process::id()));
    let program = dir.join("show.sh");
    write_script(
        &program,
        // Its own masks, read with the shell's built-ins before it forks anything: a forking
        // shell blocks signals around each fork, which a child could see.
        "#!/bin/sh\nread line\nwhile IFS= read -r l; do case \"$l\" in Sig*) echo \"$l\";; esac; done < /proc/$$/status\nread -r stat < /proc/$$/stat\necho \"stat=$stat\"\necho \"line=$line\"\nenv\n",
    );
    let config = format!(
        "import_environment = E2E_KEPT=kept TZ=UTC\nservice show {{\n  executable = inetd {} first-argument\n  service_count = 1\n  inet_listener show {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
        program.display()
    );
    let mut roost = Roost::start("inetd-env", &config);
    let output = echo(port, "hello\n").expect("the program answers");
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines.contains(&"line=hello"), "{output}");
    assert!(lines.contains(&"TZ=UTC"), "{output}");
    assert!(lines.contains(&"E2E_KEPT=kept"), "{output}");
    for line in &lines {
        let name = line.split('=').next().unwrap_or("");
        assert!(
            !name.starts_with("ROOST_") && !name.starts_with("LISTEN_"),
            "the child protocol leaked into the program's environment: {line}\n{output}"
        );
    }
    // Signals 1 to 31: above them are the C library's own and the real-time ones, whose
    // dispositions roost leaves as it found them (a test runner may ignore some).
    let classic = |field: &str| -> u64 {
        let line = lines
            .iter()
            .find_map(|l| l.strip_prefix(field))
            .unwrap_or_else(|| panic!("no {field} in {output}"));
        u64::from_str_radix(line.trim(), 16).expect("a hex mask") & 0x7fff_ffff
    };
    assert_eq!(classic("SigBlk:"), 0, "{output}");
    assert_eq!(classic("SigIgn:"), 0, "{output}");
    // A process group of its own (a terminal's Ctrl-C is not for it) in the master's session
    // (no session, and so no scheduling autogroup, made and freed for each connection), unless
    // that session has a terminal (a test run from a shell).
    let program_stat = lines
        .iter()
        .find_map(|l| l.strip_prefix("stat="))
        .unwrap_or_else(|| panic!("no stat in {output}"));
    let program = ProcessIds::parse(program_stat).expect("a stat line");
    let master = ProcessIds::of(roost.master_pid()).expect("the master");
    assert_eq!(program.group, program.pid, "its own group: {program_stat}");
    assert_ne!(program.group, master.group);
    assert_eq!(
        program.session == master.session,
        master.terminal == 0,
        "in the master's session exactly when it has no terminal: {program_stat}"
    );
    assert!(roost.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn in_a_terminal_with_tostop_a_child_that_writes_to_it_runs_on() {
    // `roost -F` in an interactive shell with `stty tostop`: under -F a child's stdout is the
    // master's, the terminal, and a write to it from a background group of the terminal's
    // session stops the writer (SIGTTOU). A session of its own has no terminal to stop it.
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let pty = nix::pty::openpty(None, None).expect("a pty");
    let mut termios = tcgetattr(&pty.slave).expect("termios");
    termios.local_flags.insert(LocalFlags::TOSTOP);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &termios).expect("stty tostop");
    // Everything written to the terminal is read, so that no write waits for room.
    let mut terminal = std::fs::File::from(pty.master);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut terminal, &mut buffer) {
                seen.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    let dir = std::env::temp_dir().join(format!("roost-e2e-tostop-prog-{}", std::process::id()));
    let marker = dir.join("wrote");
    let program = dir.join("talk.sh");
    write_script(
        &program,
        &format!(
            "#!/bin/sh\necho \"a child on the terminal\"\ntouch {}\nexec sleep 1000\n",
            marker.display()
        ),
    );
    let config = format!(
        "service talk {{\n  executable = {}\n  foreign = yes\n  process_min_avail = 1\n  process_limit = 1\n}}\n",
        program.display()
    );
    let mut roost = Roost::prepare("tostop", &config);
    roost.launch_in_terminal(&pty.slave);
    let master = ProcessIds::of(roost.master_pid()).expect("the master");
    assert_ne!(master.terminal, 0, "the master has the terminal");
    let wrote = poll_until(10, || marker.exists());
    let children: Vec<String> = roost
        .children()
        .iter()
        .map(|(pid, title)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            format!("{title}: {stat}")
        })
        .collect();
    assert!(
        wrote,
        "the child did not get past its write (stopped?): {children:#?}\nterminal: {}",
        seen.lock().expect("lock")
    );
    for (pid, title) in roost.children() {
        let child = ProcessIds::of(pid).expect("a child");
        assert_ne!(child.session, master.session, "{title}: {children:#?}");
        assert_eq!(child.terminal, 0, "{title}: {children:#?}");
    }
    assert!(roost.stop().success());
    drop(pty.slave);
    let _ = reader.join();
    assert!(
        seen.lock()
            .expect("lock")
            .contains("a child on the terminal"),
        "{}",
        seen.lock().expect("lock")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An inetd program that is gone by the time a connection comes: the adapter says why in the
/// service's log, as the C library words it, and its exit is a failed start.
#[test]
fn an_inetd_program_that_cannot_be_executed_is_logged_with_the_reason() {
    let port = free_port();
    let dir =
        std::env::temp_dir().join(format!("roost-e2e-inetd-gone-prog-{}", std::process::id()));
    let program = dir.join("gone.sh");
    write_script(&program, "#!/bin/sh\necho here\n");
    let config = format!(
        "service gone {{\n  executable = inetd {}\n  service_count = 1\n  inet_listener gone {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
        program.display()
    );
    let mut roost = Roost::start("inetd-gone", &config);
    std::fs::remove_file(&program).expect("remove the program");
    // The adapter takes the connection, cannot exec, and closes it.
    let _ = echo(port, "hello\n");
    roost.wait_for_log(&format!(
        "gone: Fatal: inetd: exec({}) failed: No such file or directory (os error 2)",
        program.display()
    ));
    roost.wait_for_log("returned error 84");
    assert!(roost.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload that changes log_path moves the master's own lines too, not only its children's.
/// One that changes base_dir is refused (the pid file, the lock and the control socket are
/// there) and the running generation serves on; one whose new log cannot be opened likewise.
#[test]
fn a_reload_moves_the_masters_log_and_refuses_to_move_base_dir() {
    let port = free_port();
    let mut roost = Roost::start("reload-places", &echo_service(port, ""));
    let moved = roost.dir.join("moved.log");
    roost.edit_config(
        &format!("log_path = {}", roost.log.display()),
        &format!("log_path = {}", moved.display()),
    );
    let output = roost.command(&["reload"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // SAFETY: a signal to the master we started: it says so in a line of its own.
    unsafe { libc::kill(roost.master_pid(), libc::SIGUSR1) };
    assert!(
        poll_until(10, || std::fs::read_to_string(&moved)
            .is_ok_and(|t| t.contains("roost: Info: Reopening log files"))),
        "the master's lines did not follow log_path; old log:\n{}",
        roost.log_text()
    );

    let run = roost.dir.join("run");
    let elsewhere = roost.dir.join("elsewhere");
    let refused = |roost: &Roost, from: &str, to: &str, expect: &str| {
        roost.edit_config(from, to);
        // SAFETY: a signal to the master we started.
        unsafe { libc::kill(roost.master_pid(), libc::SIGHUP) };
        assert!(
            poll_until(10, || std::fs::read_to_string(&moved)
                .is_ok_and(|t| t.contains(expect))),
            "no {expect:?} in the log:\n{}",
            std::fs::read_to_string(&moved).unwrap_or_default()
        );
        roost.edit_config(to, from);
        assert_eq!(echo(port, "still\n").expect("served"), "still\n");
    };
    refused(
        &roost,
        &format!("base_dir = {}", run.display()),
        &format!("base_dir = {}", elsewhere.display()),
        &format!(
            "Config reload failed: base_dir can't be changed by a reload ({} -> {}): restart roost",
            run.display(),
            elsewhere.display()
        ),
    );
    let unopenable = roost.dir.join("no-such-dir/roost.log");
    refused(
        &roost,
        &format!("log_path = {}", moved.display()),
        &format!("log_path = {}", unopenable.display()),
        &format!(
            "Config reload failed: Can't open log file {}",
            unopenable.display()
        ),
    );
    assert!(!elsewhere.exists(), "the refused base_dir was created");
    assert!(roost.stop().success());
}

/// A reload whose new listener cannot be opened runs the new generation without it (reference
/// §3.5), and `roost reload` says so and exits non-zero instead of "configuration reloaded".
#[test]
fn a_reload_says_which_new_listeners_failed() {
    let port = free_port();
    let mut roost = Roost::start("reload-listen", &echo_service(port, ""));
    let held = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("hold a port");
    let taken = held.local_addr().expect("addr").port();
    roost.append_config(&format!(
        "service other {{\n  executable = inetd /bin/cat\n  inet_listener other {{\n    address = 127.0.0.1\n    port = {taken}\n  }}\n}}\n"
    ));
    let output = roost.command(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(89), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the new configuration runs without listeners that failed: service(other): listen(127.0.0.1, {taken}) failed: Address already in use"
        )),
        "{stderr}"
    );
    assert_eq!(echo(port, "new\n").expect("served"), "new\n");
    drop(held);
    assert!(roost.stop().success());
}

/// `roost sim` plans for the daemon as it runs: a burst larger than process_limit ×
/// client_limit waits in the daemon's accept queue (at least somaxconn) and is served, as the
/// real daemon serves it, instead of being dropped by the original's small backlog. A profile
/// a run would misread or never finish is refused, each problem said.
#[test]
fn roost_sim_models_the_daemons_backlog_and_refuses_a_profile_it_would_misread() {
    let roost = Roost::prepare(
        "sim",
        "service slow {\n  executable = inetd /bin/cat\n  service_count = 1\n  process_limit = 5\n  inet_listener slow {\n    address = 127.0.0.1\n    port = 1\n  }\n}\n",
    );
    let load = roost.dir.join("burst.ron");
    std::fs::write(
        &load,
        r#"LoadProfile(duration_ms: 30000, seed: 1, clients: [ClientGroup(service: "slow", count: 20, session_ms: (500, 500))])"#,
    )
    .expect("write");
    let sim = |load: &Path| {
        Command::new(ROOST)
            .args(["sim", "-c"])
            .arg(&roost.config)
            .arg("--load")
            .arg(load)
            .output()
            .expect("roost sim runs")
    };
    let output = sim(&load);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("slow "))
        .expect("a row for slow")
        .split_whitespace()
        .collect();
    // service peak accepted queued wait-p50 wait-p99 login-p50 login-p99 served dropped killed
    assert_eq!((row[8], row[9]), ("20", "0"), "{stdout}");

    let bad = roost.dir.join("bad.ron");
    std::fs::write(
        &bad,
        r#"LoadProfile(duration_ms: 18446744073709551615, clients: [ClientGroup(service: "nosuch", count: 1)])"#,
    )
    .expect("write");
    let output = sim(&bad);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(89), "{stderr}");
    assert!(
        stderr.contains("duration_ms: 18446744073709551615 is not between 1 and")
            && stderr.contains(
                "clients[0] (service \"nosuch\"): the configuration runs no such service"
            ),
        "{stderr}"
    );
}

/// A configuration named by a path relative to where roost was started is read again at a
/// reload, although the master has moved to its base_dir since.
#[test]
fn a_reload_rereads_a_configuration_given_by_a_relative_path() {
    let port = free_port();
    let mut roost = Roost::prepare("relative", &echo_service(port, "  process_min_avail = 1"));
    roost.launch_relative();
    roost.wait_for(|r| r.children().len() == 1, "one child");
    roost.edit_config("process_min_avail = 1", "process_min_avail = 2");
    let output = roost.command(&["reload"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        roost.log_text()
    );
    roost.wait_for(|r| r.children().len() == 2, "two children after the reload");
    assert!(
        !roost.log_text().contains("reload failed"),
        "{}",
        roost.log_text()
    );
    assert!(roost.stop().success());
}
