//! End-to-end tests of the real `roost` binary on loopback with a temporary base_dir.
//!
//! They live in shell/tests (not the `tests` package) because Cargo gives integration tests of
//! the package that owns a binary its path, `CARGO_BIN_EXE_roost`. Every test picks a free
//! port, bounds every wait, and stops its master (TERM, then KILL) when it ends, pass or fail;
//! children die with the master through their master-dead pipe.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_roost");

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 0");
    l.local_addr().expect("addr").port()
}

/// Waits up to `secs` for `f` to hold.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

struct Roost {
    child: Option<Child>,
    dir: tempfile::TempDir,
    conf: PathBuf,
    port: u16,
}

impl Roost {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("roost.log")
    }

    fn base_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn wait_log(&self, secs: u64, needle: &str) {
        wait_for(secs, needle, || self.log().contains(needle));
    }

    /// Pids of the master's children whose title starts with `title`.
    fn children(&self, title: &str) -> Vec<i32> {
        let master = self.pid();
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(after) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = after.1.split_whitespace().collect();
            if fields.first() == Some(&"Z") {
                continue;
            }
            let ppid: i32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if ppid != master {
                continue;
            }
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
            if argv0.starts_with(title.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run roost command")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends TERM and waits for the exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Roost {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(dir: &Path, port: u16, service: &str) -> String {
    format!(
        "base_dir = {run}\nlog_path = {log}\nprotocols = none\n\
         service echo {{\n  inet_listener echo {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n{service}\n}}\n",
        run = dir.join("run").display(),
        log = dir.join("roost.log").display(),
    )
}

fn start_with(service: &str, wrap: Option<&[&str]>) -> Roost {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let conf = dir.path().join("roost.conf");
    std::fs::write(&conf, config(dir.path(), port, service)).expect("write conf");
    let mut cmd = match wrap {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("-F")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = cmd.spawn().expect("spawn roost");
    let r = Roost {
        child: Some(child),
        dir,
        conf,
        port,
    };
    r.wait_log(10, "starting up with configuration");
    r
}

fn start(service: &str) -> Roost {
    start_with(service, None)
}

const ECHO: &str = "  executable = inetd /bin/cat\n  service_count = 1\n  process_min_avail = 2\n  process_limit = 5\n";

fn echo_once(port: u16, text: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(text.as_bytes()).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read echo");
    out
}

#[test]
fn process_min_avail_processes_appear_with_their_titles_and_echo() {
    let r = start(ECHO);
    wait_for(10, "2 roost/echo processes", || {
        r.children("roost/echo").len() == 2
    });
    assert_eq!(echo_once(r.port, "hello roost\n"), "hello roost\n");
    // service_count = 1: the process that served exits and the pool is topped up again.
    wait_for(10, "pool topped up", || r.children("roost/echo").len() == 2);
    let status = r.cmd(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert!(
        text.contains("echo\t") && text.contains("process_limit=5"),
        "{text}"
    );
}

#[test]
fn service_count_recycles_processes() {
    let r = start(ECHO);
    wait_for(10, "pool", || r.children("roost/echo").len() == 2);
    let first: Vec<i32> = r.children("roost/echo");
    for i in 0..4 {
        assert_eq!(echo_once(r.port, &format!("n{i}\n")), format!("n{i}\n"));
    }
    wait_for(10, "new processes", || {
        let now = r.children("roost/echo");
        now.len() == 2 && now.iter().all(|p| !first.contains(p))
    });
}

#[test]
fn kill_9_of_a_child_is_logged_and_replaced() {
    let r = start(ECHO);
    wait_for(10, "pool", || r.children("roost/echo").len() == 2);
    let victim = r.children("roost/echo")[0];
    unsafe { libc::kill(victim, libc::SIGKILL) };
    r.wait_log(10, &format!("child {victim} killed with signal 9"));
    wait_for(10, "replacement", || {
        let now = r.children("roost/echo");
        now.len() == 2 && !now.contains(&victim)
    });
}

#[test]
fn a_burst_grows_the_pool_to_process_limit_and_warns() {
    let r = start(
        "  executable = inetd /bin/cat\n  service_count = 1\n  process_min_avail = 1\n  process_limit = 3\n",
    );
    wait_for(10, "pool", || r.children("roost/echo").len() == 1);
    // Six clients that hold their connections: only three processes may exist.
    let conns: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(("127.0.0.1", r.port)).expect("connect"))
        .collect();
    r.wait_log(
        10,
        "service(echo): process_limit (3) reached, client connections are being dropped",
    );
    // After exec the inetd processes carry /bin/cat's own title: count every child.
    assert_eq!(r.children("").len(), 3);
    drop(conns);
}

#[test]
fn an_executable_that_fails_at_start_is_throttled_and_the_master_survives() {
    let mut r = start("  executable = /bin/false\n  process_min_avail = 1\n");
    r.wait_log(
        10,
        "service(echo): command startup failed, throttling for 2.000 secs",
    );
    assert!(r.alive(), "the master must survive failing children");
}

#[test]
fn a_broken_reload_is_refused_with_file_and_line_and_the_master_keeps_serving() {
    let mut r = start(ECHO);
    wait_for(10, "pool", || r.children("roost/echo").len() == 2);
    let good = std::fs::read_to_string(&r.conf).expect("conf");
    std::fs::write(
        &r.conf,
        format!("{good}\nservice broken {{\n  proces_limit = 3\n}}\n"),
    )
    .expect("write");
    let out = r.cmd(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "reload of a broken file must fail");
    let conf = r.conf.display().to_string();
    assert!(err.contains(&format!("{conf}:")), "no file:line in {err}");
    assert!(err.contains("proces_limit"), "{err}");
    // HUP with the same file: logged, the master keeps running.
    r.signal(libc::SIGHUP);
    r.wait_log(10, "Config reload failed");
    assert!(r.alive());
    assert_eq!(echo_once(r.port, "still\n"), "still\n");
    // Fixed again: reload succeeds.
    std::fs::write(&r.conf, good).expect("write");
    let out = r.cmd(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(echo_once(r.port, "after\n"), "after\n");
}

#[test]
fn term_shuts_down_cleanly_and_a_second_instance_binds_at_once() {
    let mut r = start(ECHO);
    wait_for(10, "pool", || r.children("roost/echo").len() == 2);
    let kids = r.children("roost/echo");
    let st = r.stop().expect("master exits after TERM");
    assert!(st.success(), "{st:?}");
    wait_for(10, "children gone", || {
        kids.iter().all(|p| {
            !Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
        })
    });
    assert!(!r.base_dir().join("master.pid").exists());
    TcpListener::bind(("127.0.0.1", r.port)).expect("port free at once after TERM");
}

#[test]
fn a_second_master_on_the_same_base_dir_is_refused() {
    let r = start(ECHO);
    let out = Command::new(BIN)
        .args(["-F", "-c"])
        .arg(&r.conf)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running with PID"), "{err}");
}

#[test]
fn usr1_after_rename_writes_to_the_new_file() {
    let r = start(ECHO);
    let rotated = r.dir.path().join("roost.log.1");
    std::fs::rename(r.log_path(), &rotated).expect("rename");
    r.signal(libc::SIGUSR1);
    wait_for(10, "new log file", || r.log_path().exists());
    let out = r.cmd(&["log", "reopen"]);
    assert!(out.status.success());
    let out = r.cmd(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.wait_log(10, "reloading configuration");
    let old = std::fs::read_to_string(&rotated).expect("old log");
    assert!(old.contains("starting up"), "{old}");
    assert!(!old.contains("reloading configuration"));
}

#[test]
fn a_stop_command_stops_the_master() {
    let mut r = start(ECHO);
    let out = r.cmd(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(10, "master exit", || !r.alive());
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn as_root_a_child_runs_with_the_configured_user() {
    if !is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let r = start(&format!("{ECHO}  user = nobody\n"));
    wait_for(10, "pool", || r.children("roost/echo").len() == 2);
    let pid = r.children("roost/echo")[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody")
        .uid
        .as_raw();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(&nobody.to_string()),
        "{uid_line}"
    );
}

#[test]
fn the_non_root_path_runs_as_nobody() {
    if !is_root() {
        eprintln!("skipped: the non-root path is tested by dropping from root to nobody");
        return;
    }
    if !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: setpriv not installed");
        return;
    }
    // nobody must reach the binary and the temporary directory.
    let r = {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let port = free_port();
        let conf = dir.path().join("roost.conf");
        std::fs::write(&conf, config(dir.path(), port, ECHO)).expect("conf");
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        let child = Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                BIN,
                "-F",
                "-c",
            ])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("setpriv");
        Roost {
            child: Some(child),
            dir,
            conf,
            port,
        }
    };
    if !Path::new(BIN).ancestors().all(|p| {
        p.as_os_str().is_empty()
            || std::fs::metadata(p).is_ok_and(|m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o001 != 0
            })
    }) {
        eprintln!("skipped: nobody cannot reach {BIN}");
        return;
    }
    r.wait_log(10, "not running as root");
    wait_for(10, "pool", || r.children("roost/echo").len() == 2);
    assert_eq!(echo_once(r.port, "unprivileged\n"), "unprivileged\n");
}
