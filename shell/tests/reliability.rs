//! The reliability suite of issue 7 (the parts that need no mail host), with the real `roost`
//! binary: malformed configurations (tests/bad-configs), children that write garbage to their
//! status pipe or flood it and their stderr, resource limits (RLIMIT_NOFILE, RLIMIT_NPROC, an
//! unwritable log), the master killed with -9, the control socket's and chroot's protection,
//! and idle_kill shrinking a pool after a burst (issue 4). The roost-aware children are
//! tests/aware.py, which speaks the child protocol by hand.
//!
//! Tests that need root say so and return when they are not root (CI runs as root). Every wait
//! polls a condition with a deadline; none sleeps for a fixed long time.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The roost-aware test service (status records, master-dead pipe, idle-kill SIGINT).
fn aware_service(name: &str, port: u16, mode: &str, extra: &str) -> Option<String> {
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        println!("skipped: {python} is not installed");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aware.py");
    Some(format!(
        "service {name} {{\n  executable = {python} {} {mode}\n  client_limit = 1\n{extra}\n  inet_listener {name} {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
        script.display()
    ))
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Whether a process exists and is not a zombie (an orphan's zombie waits for a reaper that
/// may be slow, or absent in a container).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Runs a command, killing it after `secs` seconds (a refused configuration must not start a
/// master that runs on).
fn run_bounded(command: &mut Command, secs: u64) -> (Output, bool) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roost runs");
    let finished = poll_until(secs, || matches!(child.try_wait(), Ok(Some(_))));
    if !finished {
        let _ = child.kill();
    }
    (child.wait_with_output().expect("output"), finished)
}

/// A line-echo client that keeps its connection.
struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// Sends one line and reads the echo.
    fn round_trip(&mut self, line: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        self.reader.read_line(&mut reply)?;
        Ok(reply)
    }
}

// ---------------------------------------------------------------------------------------------
// Bad configurations

/// The first line of a bad configuration: `# expect: TEXT` (or `// expect:` in RON).
fn expected_of(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    first
        .strip_prefix("# expect: ")
        .or_else(|| first.strip_prefix("// expect: "))
        .map(str::to_owned)
}

/// Refusals of reference §3.4 about global settings: they name the setting, not a service.
const GLOBAL_REFUSALS: &[&str] = &[
    "listen can't be set empty",
    "first_valid_",
    "default_login_user doesn't exist",
    "default_internal_user doesn't exist",
    "default_vsz_limit is too low",
    "protocols: Unknown protocol",
    "duplicate listener: ",
    "Multiple log services specified",
    // The mail host's settings (shell/src/builtin/check.rs) name the section or setting.
    "passdb ",
    "userdb ",
    "mail_location",
    "ssl = ",
];

/// Whether `line` holds `NAME.conf:N` (or `.inc`, `.ron`).
fn names_file_and_line(line: &str) -> bool {
    [".conf:", ".inc:", ".ron:"].iter().any(|ext| {
        line.match_indices(ext)
            .any(|(at, _)| line[at + ext.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// What is wrong with roost's answer to one bad file, if anything.
fn judge_refusal(file: &Path, expect: &str, what: &str, output: &Output) -> Option<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    if stderr.contains("panicked") {
        return Some(format!("{name} ({what}): panicked:\n{stderr}"));
    }
    if output.status.success() || output.status.code().is_none() {
        return Some(format!(
            "{name} ({what}): exit {:?}, expected a non-zero exit",
            output.status
        ));
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("Error")).collect();
    if errors.len() != 1 {
        return Some(format!(
            "{name} ({what}): {} error lines, expected one:\n{stderr}",
            errors.len()
        ));
    }
    let line = errors[0];
    if !line.contains(expect) {
        return Some(format!("{name} ({what}): expected {expect:?} in {line:?}"));
    }
    // A place: file:line, or the service, or the global setting it is about.
    let at_line = names_file_and_line(line);
    let names_place =
        at_line || line.contains("service(") || GLOBAL_REFUSALS.iter().any(|g| line.contains(g));
    if !names_place {
        return Some(format!(
            "{name} ({what}): the error names no file:line, service or setting: {line:?}"
        ));
    }
    None
}

/// At least 50 malformed or contradictory files under tests/bad-configs: syntax errors, include
/// loops and missing includes, bad sizes, times, modes, ports and booleans, unknown keys,
/// unknown users and groups, and every check of reference §3.4. Each is refused by `roost check`
/// and by a start (`roost -F`) with a non-zero exit, exactly one error line that names the file
/// and line (or the service, or the global setting) and carries the expected text, and no panic.
#[test]
fn every_bad_configuration_is_refused_with_one_clear_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/bad-configs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf" || e == "ron"))
        .collect();
    files.sort();
    assert!(files.len() >= 50, "only {} bad configurations", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let Some(expect) = expected_of(&text) else {
            failures.push(format!("{}: no '# expect:' first line", file.display()));
            continue;
        };
        let (check, _) = run_bounded(Command::new(ROOST).arg("check").arg("-c").arg(file), 10);
        failures.extend(judge_refusal(file, &expect, "roost check", &check));
        let (effective, _) = run_bounded(
            Command::new(ROOST).args(["config", "-e", "-c"]).arg(file),
            10,
        );
        failures.extend(judge_refusal(file, &expect, "roost config -e", &effective));
        let (start, finished) = run_bounded(Command::new(ROOST).arg("-F").arg("-c").arg(file), 10);
        if !finished {
            failures.push(format!("{}: roost -F started and ran", file.display()));
            continue;
        }
        failures.extend(judge_refusal(file, &expect, "roost -F", &start));
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configurations were not refused as they should be:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// An obsolete setting is often why a configuration fails (roost converts none): its warning
/// comes before the errors, from check, `config -e` and a start alike.
#[test]
fn a_refused_configuration_also_shows_the_parsers_warnings() {
    let dir = std::env::temp_dir().join(format!("roost-e2e-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("roost.conf");
    std::fs::write(
        &file,
        format!(
            "protocols = none\nbase_dir = {0}/run\nlog_path = {0}/log\nlogin_max_processes_count = 5\nservice echo {{\n  executable = inetd /bin/cat\n  process_limit = 1\n  process_min_avail = 2\n}}\n",
            dir.display()
        ),
    )
    .expect("config");
    for args in [&["check"][..], &["config", "-e"], &["-F"]] {
        let (output, finished) =
            run_bounded(Command::new(ROOST).args(args).arg("-c").arg(&file), 10);
        assert!(
            finished && output.status.code() == Some(89),
            "{args:?}: {output:?}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let warning = stderr
            .find("roost: Warning: ")
            .filter(|_| stderr.contains("roost.conf:4: Obsolete setting login_max_processes_count: replaced by service *-login { process_limit }"));
        let error = stderr.find("process_min_avail is higher than process_limit");
        assert!(
            matches!((warning, error), (Some(w), Some(e)) if w < e),
            "{args:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// Bad peers

/// A child that writes garbage to its status pipe (a partial record, a record with another
/// process uid, a record for a pid the master does not know, a record split over two writes,
/// then 50 KB of random bytes): the master logs what reference §1.4 says, stays up, and keeps
/// serving another service.
#[test]
fn a_child_writing_garbage_to_its_status_pipe_is_logged_and_the_master_serves_on() {
    let (bad_port, echo_port) = (free_port(), free_port());
    let Some(bad) = aware_service(
        "garbage",
        bad_port,
        "garbage",
        "  process_min_avail = 1\n  process_limit = 1",
    ) else {
        return;
    };
    let mut roost = Roost::start(
        "garbage",
        &format!(
            "{bad}{}",
            echo_service(echo_port, "  process_min_avail = 1")
        ),
    );
    roost.wait_for_log("garbage: Info: garbage written");
    let log = roost.log_text();
    assert!(
        log.contains("service(garbage): child sent partial status update (5 bytes)"),
        "{log}"
    );
    let pid = roost
        .children()
        .into_iter()
        .find(|(_, title)| title.ends_with("/garbage"))
        .map(|(pid, _)| pid)
        .expect("the garbage child runs");
    assert!(
        log.contains(&format!("Ignoring invalid update from child {pid} (UID=")),
        "{log}"
    );
    // The record split in two writes is two partial chunks of 7 and 5 bytes.
    assert!(
        log.contains("service(garbage): child sent partial status update (7 bytes)"),
        "{log}"
    );
    assert!(
        !log.contains("child 1 "),
        "a record for an unknown pid must be ignored silently: {log}"
    );
    assert!(
        roost
            .child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
            .is_none(),
        "the master died of garbage"
    );
    assert_eq!(
        echo(echo_port, "still here\n").expect("the other service serves"),
        "still here\n"
    );
    // After the garbage the child's well-formed records are read again (it reports itself
    // available 0.3 s after the last garbage byte, so its record is a chunk of its own): the
    // master sees it free, then busy once it serves a client.
    let row = |available: u32| format!("\ngarbage\t{pid}\t{available}\t");
    roost.wait_for(
        |r| String::from_utf8_lossy(&r.command(&["status"]).stdout).contains(&row(1)),
        "the garbage child's valid record (available 1) in roost status",
    );
    let mut client = Client::connect(bad_port).expect("connect to the garbage service");
    assert_eq!(
        client
            .round_trip("served")
            .expect("the garbage child serves"),
        "served\n"
    );
    roost.wait_for(
        |r| String::from_utf8_lossy(&r.command(&["status"]).stdout).contains(&row(0)),
        "the garbage child busy (available 0) in roost status",
    );
    assert!(roost.stop().success());
}

/// A roost-aware child that never sends its first status (hung in its start-up) is killed after
/// the 30 s of reference §1.4 with the original's message, reaped as killed by signal 9, and
/// replaced; the master serves another service all along. Core's tests prove the timer against
/// a virtual clock; this proves the real master arms it, kills the real process, and goes on.
#[test]
fn a_child_that_never_reports_is_killed_after_30_s_and_replaced() {
    let (silent_port, echo_port) = (free_port(), free_port());
    let Some(silent) = aware_service(
        "silent",
        silent_port,
        "silent",
        "  process_min_avail = 1\n  process_limit = 1",
    ) else {
        return;
    };
    let roost = Roost::start(
        "silent",
        &format!(
            "{silent}{}",
            echo_service(echo_port, "  process_min_avail = 1")
        ),
    );
    roost.wait_for_log("silent: Info: silent: started");
    let first = roost
        .children()
        .into_iter()
        .find(|(_, title)| title.ends_with("/silent"))
        .map(|(pid, _)| pid)
        .expect("the silent child runs");
    let started = Instant::now();
    let killed = format!(
        "service(silent): Initial status notification not received in 30 seconds, killing the process (pid {first})"
    );
    assert!(
        poll_until(45, || roost.log_text().contains(&killed)),
        "no first-status kill; log:\n{}",
        roost.log_text()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(25),
        "killed after {waited:?}, before its 30 s"
    );
    roost.wait_for_log(&format!(
        "service(silent): child {first} killed with signal 9"
    ));
    assert!(!alive(first), "the silent child {first} still runs");
    assert_eq!(
        echo(echo_port, "still here\n").expect("the other service serves"),
        "still here\n"
    );
    // process_min_avail brings a new one (after the throttle of a failed start).
    roost.wait_for(
        |r| {
            r.children()
                .iter()
                .any(|(pid, title)| title.ends_with("/silent") && *pid != first)
        },
        "a new silent child",
    );
}

/// Story: a child that writes to its stderr or its status pipe faster than the master reads held
/// the master in that pipe's handler for good: it read until EAGAIN, which never came. Other
/// services timed out, `roost status` got no answer, and even SIGTERM went unheard (signals are
/// one more event of the same loop). Found by this suite with `yes >&2` as a service. The
/// property: with both floods running, another service answers, `roost status` answers, and
/// `roost stop` stops the master.
#[test]
fn a_child_flooding_its_stderr_and_status_pipe_does_not_starve_the_master() {
    let (log_port, status_port, echo_port) = (free_port(), free_port(), free_port());
    let floods: Option<Vec<String>> = [
        ("floodlog", log_port, "flood-log"),
        ("floodstatus", status_port, "flood-status"),
    ]
    .into_iter()
    .map(|(name, port, mode)| {
        aware_service(
            name,
            port,
            mode,
            "  process_min_avail = 1\n  process_limit = 1",
        )
    })
    .collect();
    let Some(floods) = floods else {
        return;
    };
    // The flood goes to /dev/null, not to the disk.
    let mut roost = Roost::start(
        "flood",
        &format!(
            "log_path = /dev/null\n{}{}",
            floods.concat(),
            echo_service(echo_port, "")
        ),
    );
    roost.wait_for(
        |r| {
            let kids = r.children();
            ["/floodlog", "/floodstatus"]
                .iter()
                .all(|name| kids.iter().any(|(_, t)| t.ends_with(name)))
        },
        "both flooding children",
    );
    // Let the pipes fill up.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let started = Instant::now();
        assert_eq!(
            echo(echo_port, &format!("f{i}\n")).expect("echo during the flood"),
            format!("f{i}\n")
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "echo took {:?} during the flood",
            started.elapsed()
        );
    }
    let (status, finished) = run_bounded(
        Command::new(ROOST)
            .arg("status")
            .arg("-c")
            .arg(&roost.config),
        10,
    );
    assert!(
        finished && status.status.success(),
        "roost status during the flood"
    );
    assert!(roost.stop().success());
}

// ---------------------------------------------------------------------------------------------
// Resource limits

/// A wrapper (`env`, which execs the rest) that starts with `limit` set to `value`.
fn with_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> Command {
    with_rlimits(resource, value, value)
}

/// `with_rlimit` with a soft limit below the hard one.
fn with_rlimits(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut wrapper = Command::new("env");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        wrapper.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(resource, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    wrapper
}

/// Reference §3.3: a soft RLIMIT_NOFILE below the largest client_limit is warned about at start
/// (and by `roost check`), naming the service that asks for it; the master still serves.
#[test]
fn an_fd_limit_below_client_limit_is_warned_at_start() {
    let port = free_port();
    let mut roost = Roost::prepare("nofile", &echo_service(port, "  client_limit = 5000"));
    let warning = "fd limit (ulimit -n) is lower than required under max. load (256 < 5000), because of service echo { client_limit }";
    let mut check = with_rlimit(libc::RLIMIT_NOFILE, 256);
    let check = check
        .arg(ROOST)
        .arg("check")
        .arg("-c")
        .arg(&roost.config)
        .output()
        .expect("roost check");
    assert!(check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(&format!("roost: Warning: {warning}")),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    roost.launch_through(with_rlimit(libc::RLIMIT_NOFILE, 256));
    roost.wait_for_log(&format!("Warning: {warning}"));
    assert_eq!(echo(port, "low fds\n").expect("echo"), "low fds\n");
    assert!(roost.stop().success());
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat format");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_sec
}

/// Whether roost can be started as another user here (root, with setpriv); says why not.
fn can_run_unprivileged() -> bool {
    if !is_root() {
        println!("skipped: needs root to start roost as an unprivileged user with setpriv");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: setpriv (util-linux) is not installed");
        return false;
    }
    true
}

/// Starts a prepared roost as `uid` with RLIMIT_NPROC (soft, hard).
fn launch_unprivileged(roost: &mut Roost, uid: u32, (soft, hard): (u64, u64)) {
    std::fs::set_permissions(
        &roost.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let mut wrapper = with_rlimits(libc::RLIMIT_NPROC, soft, hard);
    wrapper.args([
        "setpriv",
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "--",
    ]);
    roost.launch_through(wrapper);
}

/// Reference §3.3: the master raises RLIMIT_NPROC to the sum of its services' process_limit.
/// Unprivileged, it can raise the soft limit up to the hard one: with a soft limit of 1 it would
/// fail every fork; raised, its pool starts.
#[test]
fn an_unprivileged_master_raises_its_soft_process_limit_to_the_services_total() {
    if !can_run_unprivileged() {
        return;
    }
    let port = free_port();
    let mut roost = Roost::prepare(
        "nproc-raise",
        &echo_service(port, "  process_min_avail = 2\n  process_limit = 7"),
    );
    launch_unprivileged(&mut roost, 64124, (1, 5000));
    let master = roost.master_pid();
    let limits = std::fs::read_to_string(format!("/proc/{master}/limits")).expect("limits");
    let nproc: Vec<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(nproc.len(), 2, "{limits}");
    assert!(nproc[0] >= 7 && nproc[0] <= 5000, "soft limit {limits}");
    assert_eq!(nproc[1], 5000, "the hard limit is left alone: {limits}");
    assert_eq!(echo(port, "forks\n").expect("the pool serves"), "forks\n");
    assert!(!roost.log_text().contains("process limit (ulimit -u)"));
    assert!(roost.stop().success());
}

/// A reload that raises the services' process_limit total raises RLIMIT_NPROC for the
/// spawner too (it is started again under the new limit), so the children of built-ins are
/// still forked by it, not executed because its clones fail.
#[test]
fn a_reload_that_raises_the_process_limit_reaches_the_spawner() {
    if !can_run_unprivileged() {
        return;
    }
    let port = free_port();
    let small = "  process_min_avail = 1\n  process_limit = 2";
    let mut roost = Roost::prepare("nproc-reload", &echo_service(port, small));
    launch_unprivileged(&mut roost, 64125, (1, 5000));
    roost.wait_for(|r| r.children().len() == 1, "one child");
    roost.edit_config(small, "  process_min_avail = 30\n  process_limit = 60");
    // SAFETY: a signal to the master we started.
    unsafe { libc::kill(roost.master_pid(), libc::SIGHUP) };
    roost.wait_for(
        |r| r.children().len() >= 30,
        "30 children of the new generation",
    );
    let executed: Vec<String> = roost
        .children()
        .iter()
        .map(|(pid, _)| cmdline(*pid))
        .filter(|line| line.contains("--builtin"))
        .collect();
    assert!(
        executed.is_empty(),
        "executed instead of forked: {executed:?}\n{}",
        roost.log_text()
    );
    assert_eq!(echo(port, "forked\n").expect("served"), "forked\n");
    // The spawner it replaced left quietly: a planned replacement is no failure.
    assert!(
        !roost.log_text().contains("the spawner (pid"),
        "{}",
        roost.log_text()
    );
    assert!(roost.stop().success());
}

/// A spawner that clones a child and then stalls past the master's 2 s wait for its answer is
/// stopped, and the child is started again by exec. The clone it made is the master's child but
/// unknown to the core: its first status record gives it away and it is killed, so the service
/// runs the processes the core counts and no stray outside its limits. The stall is real: strace
/// holds the spawner's answer back for 3 s.
#[test]
fn a_child_the_spawner_cloned_after_the_master_gave_up_on_it_is_killed() {
    if !is_root() {
        println!("skipped: attaching strace to the spawner needs root (CI runs as root)");
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        println!("skipped: strace is not installed");
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roost-e2e-stray-prog-{}", std::process::id()));
    let program = dir.join("hold.sh");
    write_script(
        &program,
        "#!/bin/sh\nread line\necho \"held $line\"\nsleep 30\n",
    );
    let config = format!(
        "service hold {{\n  executable = inetd {}\n  service_count = 1\n  process_min_avail = 1\n  inet_listener hold {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
        program.display()
    );
    let mut roost = Roost::start("stray", &config);
    roost.wait_for(
        |r| r.spawner().is_some() && r.children().len() == 1,
        "the spawner and one adapter",
    );
    let spawner = roost.spawner().expect("the spawner runs");
    let mut strace = Command::new("strace")
        .args([
            "-e",
            "trace=sendto",
            "-e",
            "inject=sendto:delay_enter=3s",
            "-o",
            "/dev/null",
            "-p",
        ])
        .arg(spawner.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace runs");
    let traced = poll_until(10, || {
        std::fs::read_to_string(format!("/proc/{spawner}/status"))
            .is_ok_and(|status| !status.contains("TracerPid:\t0\n"))
    });
    assert!(traced, "strace did not attach to the spawner");
    // The adapter takes the client and execs the program; the master orders a new adapter,
    // which the spawner clones and then cannot report.
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    client.write_all(b"one\n").expect("write");
    let mut reply = String::new();
    BufReader::new(&client)
        .read_line(&mut reply)
        .unwrap_or_else(|e| panic!("the program answers: {e}\n{}", roost.log_text()));
    assert_eq!(reply, "held one\n", "{}", roost.log_text());
    roost.wait_for_log("the spawner failed (no answer within 2 s)");
    roost.wait_for_log("the spawner created it after the master had given up on its answer");
    let _ = strace.wait();
    // What the core counts is what runs: the held program, and one adapter.
    let counted = |r: &Roost| -> Vec<i32> {
        let output = r.command(&["status"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // The second table: one line per process.
        let processes = text.split("\n\n").nth(1).unwrap_or("");
        let mut pids: Vec<i32> = processes
            .lines()
            .filter_map(|line| line.strip_prefix("hold\t"))
            .filter_map(|rest| rest.split('\t').next()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    };
    let running = |r: &Roost| -> Vec<i32> {
        let mut pids: Vec<i32> = r.children().iter().map(|(pid, _)| *pid).collect();
        pids.sort_unstable();
        pids
    };
    roost.wait_for(
        |r| running(r).len() == 2 && running(r) == counted(r),
        "the processes the core counts, and no other",
    );
    drop(client);
    assert!(roost.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The spawner killed again and again while connections pour in (so that orders are waiting
/// for its answers each time): every client is served, the children it answered for before it
/// died stay the core's (only one it cloned and had not answered for can be a stray), and
/// afterwards the processes the core counts are the ones that run.
#[test]
fn a_spawner_killed_under_load_loses_no_client_and_leaves_no_stray() {
    let port = free_port();
    let mut roost = Roost::start(
        "spawner-kill-load",
        "service quick {\n  executable = inetd /bin/true\n  service_count = 1\n  process_min_avail = 4\n  inet_listener quick {\n    address = 127.0.0.1\n    port = PORT\n  }\n}\n"
            .replace("PORT", &port.to_string())
            .as_str(),
    );
    roost.wait_for(|r| r.spawner().is_some(), "the spawner");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let (mut served, mut failed) = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let result = TcpStream::connect(("127.0.0.1", port)).and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(10)))?;
                        std::io::Read::read_to_end(&mut c, &mut Vec::new())
                    });
                    match result {
                        Ok(_) => served += 1,
                        Err(_) => failed += 1,
                    }
                }
                (served, failed)
            })
        })
        .collect();
    // Each new spawner (one a second at most) is killed once it has served a little.
    let (mut killed, mut last) = (0, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while killed < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(150));
        if let Some(spawner) = roost.spawner().filter(|pid| Some(*pid) != last) {
            // SAFETY: kill(2) of the master's child, found a moment ago.
            unsafe { libc::kill(spawner, libc::SIGKILL) };
            (killed, last) = (killed + 1, Some(spawner));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = clients
        .into_iter()
        .map(|c| c.join().expect("a client"))
        .fold((0, 0), |(s, f), (cs, cf)| (s + cs, f + cf));
    assert_eq!(killed, 5, "spawners to kill; log:\n{}", roost.log_text());
    assert_eq!(failed, 0, "of {served} clients; log:\n{}", roost.log_text());
    // A spawner killed between a clone and its answer leaves that one child a stray (killed
    // as such); a child it answered for before it died is the core's.
    let log = roost.log_text();
    let strays = log
        .matches("the spawner created it after the master had given up")
        .count();
    assert!(
        strays <= killed,
        "{strays} strays of {killed} deaths:\n{log}"
    );
    let counted = |r: &Roost| -> usize {
        let output = r.command(&["status"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.split("\n\n")
            .nth(1)
            .unwrap_or("")
            .lines()
            .filter(|line| line.starts_with("quick\t"))
            .count()
    };
    roost.wait_for(
        |r| counted(r) == 4 && r.children().len() == 4,
        "four adapters, counted and running",
    );
    assert!(roost.stop().success());
}

/// Fork failing under RLIMIT_NPROC (as an unprivileged user: root is exempt) throttles the
/// service instead of spinning: the fork error and the throttle are logged, the throttle doubles
/// while connections keep arriving, and the master's CPU time stays low.
#[test]
fn fork_failing_under_rlimit_nproc_throttles_rather_than_spins() {
    if !can_run_unprivileged() {
        return;
    }
    let port = free_port();
    let mut roost = Roost::prepare("nproc", &echo_service(port, "  process_min_avail = 1"));
    // A uid of its own, so no other process counts against its RLIMIT_NPROC of 1: the master
    // is that one process, and every fork fails with EAGAIN.
    launch_unprivileged(&mut roost, 64123, (1, 1));
    let master = roost.master_pid();
    let started = Instant::now();
    let cpu_before = cpu_seconds(master);
    // The hard limit keeps the master from raising it to the services' total (§3.3); it says so.
    roost.wait_for_log(
        "process limit (ulimit -u) is lower than the services' process_limit total (1 < ",
    );
    roost.wait_for_log(
        "service(echo): fork() failed: Resource temporarily unavailable (os error 11) (ulimit -u reached?)",
    );
    roost.wait_for_log("service(echo): command startup failed, throttling for 2.000 secs");
    // Clients keep coming: after the throttle the master listens again, tries again, fails
    // again, and waits twice as long.
    let clients = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut held = Vec::new();
        while Instant::now() < deadline {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        held.len()
    });
    let deadline = Instant::now() + Duration::from_secs(8);
    while !roost.log_text().contains("throttling for 4.000 secs") {
        assert!(
            Instant::now() < deadline,
            "no second throttle:\n{}",
            roost.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let connections = clients.join().expect("clients");
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(master) - cpu_before;
    println!(
        "master CPU under NPROC throttling: {cpu:.3} s in {wall:.2} s wall ({connections} connections)"
    );
    assert!(
        cpu < 0.2 * wall,
        "the master spins: {cpu:.3} s CPU in {wall:.2} s"
    );
    assert!(roost.stop().success());
}

/// Runs `roost <args> -c <config>` in the background mode (no -F) with stdout and stderr on
/// pipes, as `out=$(roost ...)` or an ssh session does: (exit status, stdout, stderr), or a
/// failure if either pipe stays open past 10 s (some process kept the caller's end).
fn run_in_background(config: &Path) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(ROOST)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roost runs");
    let (sender, receiver) = std::sync::mpsc::channel();
    for mut pipe in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let sender = sender.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = sender.send(text);
        });
    }
    let mut read = Vec::new();
    for _ in 0..2 {
        match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(text) => read.push(text),
            Err(_) => panic!("roost kept the caller's stdout or stderr open: {read:?}"),
        }
    }
    let status = child.wait().expect("status");
    // Which pipe ended first is not known; stdout is expected empty.
    read.sort_by_key(|text| !text.is_empty());
    (status, read[0].clone(), read[1].clone())
}

/// A master started in the background, killed if the test ends before it stopped it.
struct Running(Option<i32>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: a signal to the master this test started and has not seen stop.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// In the background, `roost` returns once the master has started, with 0, keeping nothing of
/// its caller open; the master serves with stdin, stdout and stderr on /dev/null. A start that
/// fails returns the master's exit status with the errors on stderr (reference §4.1 steps 5 and
/// 12): listening failed is 89, a log that cannot be opened the original's 80. (It returned 0
/// with nothing said, and `$(roost)` waited for the master to end.)
#[test]
fn in_the_background_roost_returns_once_started_and_reports_a_failed_start() {
    let port = free_port();
    let roost = Roost::prepare("background", &echo_service(port, ""));
    let (status, stdout, stderr) = run_in_background(&roost.config);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stdout, "");
    let pid: i32 = std::fs::read_to_string(roost.dir.join("run/master.pid"))
        .expect("master.pid")
        .trim()
        .parse()
        .expect("a pid");
    let mut running = Running(Some(pid));
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd");
        assert_eq!(target, Path::new("/dev/null"), "fd {fd} of the master");
    }
    assert_eq!(echo(port, "served\n").expect("served"), "served\n");
    assert!(roost.command(&["stop"]).status.success());
    assert!(poll_until(10, || !alive(pid)), "the master did not stop");
    running.0 = None;

    let held = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    let (status, _, stderr) = run_in_background(&roost.config);
    assert_eq!(status.code(), Some(89), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "listen(127.0.0.1, {port}) failed: Address already in use"
        )) && stderr.contains("Fatal: Failed to start listeners"),
        "{stderr}"
    );
    drop(held);

    let unopenable = roost.dir.join("no-such-dir/roost.log");
    roost.edit_config(
        &format!("log_path = {}", roost.log.display()),
        &format!("log_path = {}", unopenable.display()),
    );
    let (status, _, stderr) = run_in_background(&roost.config);
    assert_eq!(status.code(), Some(80), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Fatal: Can't open log file {}",
            unopenable.display()
        )),
        "{stderr}"
    );
}

/// `roost stop` while a program an inetd adapter became serves a client: the master does not
/// wait out its 5 s for the log process (which reports it accepts nothing once told), and it
/// does not SIGQUIT the program (whose default action would dump core and cut the client):
/// with shutdown_clients = no the client is still served after the master is gone, with yes
/// the program is sent SIGTERM. Neither end is logged as a failure.
#[test]
fn stop_leaves_an_inetd_programs_client_to_shutdown_clients_and_waits_for_nobody() {
    for shutdown_clients in ["no", "yes"] {
        let port = free_port();
        let mut roost = Roost::start(
            &format!("stop-inetd-{shutdown_clients}"),
            &format!(
                "shutdown_clients = {shutdown_clients}\n{}",
                echo_service(port, "")
            ),
        );
        let mut client = Client::connect(port).expect("connect");
        assert_eq!(client.round_trip("before").expect("echo"), "before\n");
        let started = Instant::now();
        assert!(roost.stop().success());
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(4_500),
            "the stop waited {took:?}: the 5 s wait for children to stop accepting ran out"
        );
        if shutdown_clients == "no" {
            assert_eq!(client.round_trip("after").expect("still served"), "after\n");
        } else {
            let mut rest = String::new();
            let _ = client.reader.read_line(&mut rest);
            assert_eq!(rest, "", "the program was stopped with its master");
        }
        let log = roost.log_text();
        assert!(!log.contains("killed with signal"), "{log}");
    }
}

/// A master that does not answer (stopped here with SIGSTOP) makes a control command fail
/// after its wait, saying so, instead of hanging.
#[test]
fn a_control_command_to_a_master_that_does_not_answer_fails_after_its_wait() {
    let port = free_port();
    let roost = Roost::start("unanswered", &echo_service(port, ""));
    let pid = roost.master_pid();
    // SAFETY: signals to the master we started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (output, finished) = run_bounded(
        Command::new(ROOST)
            .arg("status")
            .arg("-c")
            .arg(&roost.config),
        30,
    );
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(finished, "roost status hung");
    assert_eq!(output.status.code(), Some(89));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the master did not answer") && stderr.contains("within 10 s"),
        "{stderr}"
    );
}

/// `log_path = /dev/full`: every line is lost, yet the master starts, serves, replaces a killed
/// child, survives a child that floods its stderr, and stops cleanly.
#[test]
fn an_unwritable_log_does_not_stop_the_master() {
    let (port, noisy_port) = (free_port(), free_port());
    let mut roost = Roost::prepare("devfull", "");
    let noisy = roost.dir.join("noisy.sh");
    std::fs::write(&noisy, "#!/bin/sh\nseq 1 2000 >&2\nexec cat\n").expect("script");
    roost.append_config(&format!(
        "log_path = /dev/full\n{}service noisy {{\n  executable = inetd /bin/sh {}\n  service_count = 1\n  inet_listener noisy {{\n    address = 127.0.0.1\n    port = {noisy_port}\n  }}\n}}\n",
        echo_service(port, "  process_min_avail = 1"),
        noisy.display()
    ));
    roost.spawn();
    for i in 0..3 {
        assert_eq!(
            echo(noisy_port, &format!("n{i}\n")).expect("noisy echo"),
            format!("n{i}\n")
        );
    }
    roost.wait_for(
        |r| r.children().iter().any(|(_, t)| t.ends_with("/echo")),
        "an echo child",
    );
    let victim = roost
        .children()
        .into_iter()
        .find(|(_, t)| t.ends_with("/echo"))
        .map(|(pid, _)| pid)
        .expect("an echo child");
    unsafe { libc::kill(victim, libc::SIGKILL) };
    roost.wait_for(
        |r| {
            r.children()
                .iter()
                .any(|(pid, t)| *pid != victim && t.ends_with("/echo"))
        },
        "a replacement",
    );
    assert_eq!(echo(port, "after\n").expect("echo"), "after\n");
    assert!(
        !roost.log.exists(),
        "nothing was written to the old log path"
    );
    assert!(roost.stop().success());
}

// ---------------------------------------------------------------------------------------------
// Master death

/// Reference §4.4: the master killed with -9 while a client is connected to a roost-aware
/// child. Every child notices through its master-dead pipe: idle ones exit; the busy one exits
/// (`shutdown_clients = yes`) or finishes its client first (`no`). A new master starts at once
/// on the same base_dir despite the stale pid file and control socket, binds the same port (no
/// orphan keeps it) and serves, while the old child still finishes its client.
fn master_death(shutdown_clients: &str) {
    let port = free_port();
    let Some(service) = aware_service(
        "holder",
        port,
        "echo",
        "  process_min_avail = 2\n  process_limit = 10",
    ) else {
        return;
    };
    let name = format!("death-{shutdown_clients}");
    let mut roost = Roost::start(
        &name,
        &format!("shutdown_clients = {shutdown_clients}\n{service}"),
    );
    roost.wait_for(|r| r.children().len() == 2, "two holder processes");
    let mut client = Client::connect(port).expect("connect");
    assert_eq!(client.round_trip("before").expect("echo"), "before\n");
    // The pool is topped up again: one busy child and two free ones.
    roost.wait_for(|r| r.children().len() == 3, "three holder processes");
    let children: Vec<i32> = roost.children().iter().map(|(pid, _)| *pid).collect();
    let mut master = roost.child.take().expect("running");
    master.kill().expect("kill -9 the master");
    master.wait().expect("reaped");
    let dir = roost.dir.join("run");
    assert!(
        dir.join("master.pid").exists() && dir.join("control").exists(),
        "kill -9 leaves the pid file and the control socket behind"
    );
    if shutdown_clients == "yes" {
        assert!(
            poll_until(5, || children.iter().all(|pid| !alive(*pid))),
            "children outlived their master: {:?}",
            children
                .iter()
                .filter(|pid| alive(**pid))
                .collect::<Vec<_>>()
        );
        let mut rest = String::new();
        let _ = client.reader.read_line(&mut rest);
        assert_eq!(rest, "", "the client's connection is closed");
    } else {
        // The two idle children leave; the busy one goes on serving its client.
        assert!(
            poll_until(5, || children.iter().filter(|pid| alive(**pid)).count()
                == 1),
            "idle children outlived their master"
        );
        assert_eq!(
            client.round_trip("after the master").expect("still served"),
            "after the master\n"
        );
    }
    // A new master at once: same base_dir, stale pid file and socket, the same port.
    roost.spawn();
    roost.wait_for(
        |r| String::from_utf8_lossy(&r.command(&["status"]).stdout).contains("\nholder\t"),
        "the new master to answer on its control socket",
    );
    let mut fresh = Client::connect(port).expect("the new master's listener");
    assert_eq!(
        fresh
            .round_trip("new master")
            .expect("served by the new master"),
        "new master\n"
    );
    if shutdown_clients == "no" {
        assert_eq!(
            client
                .round_trip("still the old one")
                .expect("the old child goes on"),
            "still the old one\n"
        );
        let old: Vec<i32> = children.iter().copied().filter(|pid| alive(*pid)).collect();
        drop(client);
        assert!(
            poll_until(5, || old.iter().all(|pid| !alive(*pid))),
            "the old child did not exit after its last client"
        );
    }
    drop(fresh);
    assert!(roost.stop().success());
}

/// A foreign program cannot see the master-dead pipe: with shutdown_clients = yes the kernel
/// ends it when the master is gone, even by `kill -9` (it held the port, and a new master could
/// not start); with no it serves on.
#[test]
fn master_killed_with_9_foreign_and_inetd_programs_follow_shutdown_clients() {
    for shutdown_clients in ["yes", "no"] {
        let (port, inetd_port) = (free_port(), free_port());
        let mut roost = Roost::start(
            &format!("foreign-death-{shutdown_clients}"),
            &format!(
                "shutdown_clients = {shutdown_clients}\nservice pool {{\n  executable = /bin/sleep 1000\n  foreign = yes\n  process_min_avail = 2\n  inet_listener pool {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\nservice held {{\n  executable = inetd /bin/sleep 1001\n  inet_listener held {{\n    address = 127.0.0.1\n    port = {inetd_port}\n  }}\n}}\n"
            ),
        );
        // Two foreign processes, and a program an inetd adapter became for its client.
        let _client = std::net::TcpStream::connect(("127.0.0.1", inetd_port)).expect("connect");
        let programs = |r: &Roost| -> Vec<i32> {
            r.children()
                .into_iter()
                .filter(|(_, title)| title.starts_with("roost/pool") || title.contains("sleep"))
                .map(|(pid, _)| pid)
                .collect()
        };
        roost.wait_for(|r| programs(r).len() == 3, "three programs");
        let children = programs(&roost);
        let mut master = roost.child.take().expect("running");
        master.kill().expect("kill -9 the master");
        master.wait().expect("reaped");
        if shutdown_clients == "yes" {
            assert!(
                poll_until(5, || children.iter().all(|pid| !alive(*pid))),
                "programs outlived their master"
            );
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                children.iter().all(|pid| alive(*pid)),
                "shutdown_clients = no"
            );
            for pid in &children {
                // SAFETY: the orphans this test left on purpose.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn master_killed_with_9_children_exit_with_shutdown_clients_yes() {
    master_death("yes");
}

#[test]
fn master_killed_with_9_children_finish_their_client_with_shutdown_clients_no() {
    master_death("no");
}

// ---------------------------------------------------------------------------------------------
// Security

/// The control socket in base_dir is mode 0600, owned by the master's user, and a connection
/// from another user (`roost stop` run as nobody) is refused while the master goes on.
#[test]
fn the_control_socket_is_0600_and_refuses_another_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let port = free_port();
    let mut roost = Roost::start("control", &echo_service(port, ""));
    let meta = std::fs::metadata(roost.dir.join("run/control")).expect("control socket");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "control socket mode"
    );
    assert_eq!(
        meta.uid(),
        unsafe { libc::geteuid() },
        "control socket owner"
    );
    if !is_root() {
        println!("skipped the other-user half: needs root to run roost stop as nobody");
        assert!(roost.stop().success());
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped the other-user half: setpriv (util-linux) is not installed");
        assert!(roost.stop().success());
        return;
    }
    for request in ["stop", "status"] {
        let out = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(ROOST)
            .args([request, "-c"])
            .arg(&roost.config)
            .output()
            .expect("setpriv runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nobody's roost {request} succeeded");
        assert!(stderr.contains("Permission denied"), "{request}: {stderr}");
    }
    assert_eq!(
        echo(port, "still up\n").expect("the master goes on"),
        "still up\n"
    );
    assert!(roost.stop().success());
}

/// As root, a child of a service with `chroot` cannot read a file outside it: neither by its
/// absolute path nor by climbing with `..`, while a file inside the jail is read.
#[test]
fn as_root_a_chrooted_child_cannot_read_outside_its_chroot() {
    if !is_root() {
        println!("skipped: chroot needs root");
        return;
    }
    let port = free_port();
    let mut roost = Roost::prepare("jailbreak", "");
    let secret = roost.dir.join("secret");
    std::fs::write(&secret, "outside the chroot\n").expect("secret");
    let climb = format!("../../../../../..{}", secret.display());
    roost.append_config(&format!(
        "service jailed {{\n  executable = inetd /bin/cat /marker {} {climb}\n  service_count = 1\n  user = nobody\n  chroot = jail\n  inet_listener jailed {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
        secret.display()
    ));
    let jail = roost.dir.join("run/jail");
    if !install_into_chroot(&jail, "/bin/cat") {
        println!("skipped: could not copy /bin/cat and its libraries into a chroot");
        return;
    }
    std::fs::write(jail.join("marker"), "inside the chroot\n").expect("marker");
    roost.spawn();
    let reply = echo(port, "").expect("cat runs in the chroot");
    assert_eq!(reply, "inside the chroot\n", "read outside the chroot");
    // cat says why on stderr, which goes to the log through the master.
    roost.wait_for_log(&format!("{}: No such file or directory", secret.display()));
    roost.wait_for_log(&format!("{climb}: No such file or directory"));
    assert!(roost.stop().success());
}

// ---------------------------------------------------------------------------------------------
// issue 4: idle_kill

/// idle_kill shrinks the pool back to process_min_avail after a burst: ten held connections
/// grow a roost-aware service (client_limit 1, processes that outlive their clients) to ten
/// busy processes; once the clients leave, the idle ones are asked to exit (SIGINT) until
/// process_min_avail remain, and none of them exits with an error.
#[test]
fn idle_kill_shrinks_the_pool_back_to_process_min_avail_after_a_burst() {
    let port = free_port();
    let Some(service) = aware_service(
        "pool",
        port,
        "echo",
        "  idle_kill = 1 secs\n  process_min_avail = 1\n  process_limit = 20",
    ) else {
        return;
    };
    let mut roost = Roost::start("idlekill", &service);
    roost.wait_for(|r| r.children().len() == 1, "process_min_avail process");
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut client = Client::connect(port).expect("connect");
        assert_eq!(
            client.round_trip(&format!("c{i}")).expect("served"),
            format!("c{i}\n")
        );
        clients.push(client);
    }
    let grown = roost.children().len();
    assert!(grown >= 10, "the burst grew the pool to only {grown}");
    drop(clients);
    let released = Instant::now();
    roost.wait_for(
        |r| {
            r.children().len() == 1
                && String::from_utf8_lossy(&r.command(&["status"]).stdout)
                    .contains("\npool\t1\t1\t1\t")
        },
        "the pool back at process_min_avail (1 process, 1 available)",
    );
    println!(
        "idle_kill = 1 secs: the pool shrank from {grown} processes to 1 in {:.2} s",
        released.elapsed().as_secs_f64()
    );
    let log = roost.log_text();
    assert!(
        !log.contains("returned error") && !log.contains("killed with signal"),
        "idle processes must leave cleanly:\n{log}"
    );
    assert!(roost.stop().success());
}

/// The inetd adapter closes everything of roost's before it execs the program (reference §4.4
/// through the adapter): after a kill -9 of the master, a client of `cat` keeps its session
/// (shutdown_clients = no), the idle adapters leave, and a new master binds the same port at
/// once — the exec'd program holds no copy of the listener.
#[test]
fn master_killed_with_9_an_inetd_session_goes_on_and_holds_no_listener() {
    let port = free_port();
    // (Under shutdown_clients = yes the program ends with the master: see
    // master_killed_with_9_foreign_and_inetd_programs_follow_shutdown_clients.)
    let config = format!(
        "shutdown_clients = no\n{}",
        echo_service(port, "  process_min_avail = 2")
    );
    let mut roost = Roost::start("death-inetd", &config);
    roost.wait_for(|r| r.children().len() == 2, "two inetd processes");
    let mut client = Client::connect(port).expect("connect");
    assert_eq!(client.round_trip("before").expect("echo"), "before\n");
    roost.wait_for(|r| r.children().len() == 3, "the pool topped up");
    let children: Vec<i32> = roost.children().iter().map(|(pid, _)| *pid).collect();
    let log_process = roost.log_processes();
    assert_eq!(log_process.len(), 1);
    let mut master = roost.child.take().expect("running");
    master.kill().expect("kill -9 the master");
    master.wait().expect("reaped");
    assert!(
        poll_until(5, || children.iter().filter(|pid| alive(**pid)).count()
            == 1),
        "the idle inetd processes outlived their master"
    );
    // The log process writes the session's lines until it ends, but gave up its log-errors
    // listener at once: the new master binds it.
    assert!(alive(log_process[0]));
    roost.spawn();
    roost.wait_for(
        |r| String::from_utf8_lossy(&r.command(&["status"]).stdout).contains("\necho\t"),
        "the new master",
    );
    assert_eq!(
        echo(port, "new master\n").expect("the new master binds the port"),
        "new master\n"
    );
    assert_eq!(
        client.round_trip("old session").expect("cat goes on"),
        "old session\n"
    );
    drop(client);
    assert!(
        poll_until(5, || !alive(log_process[0])),
        "the old log process left with the last child of its master"
    );
    assert!(roost.stop().success());
}
