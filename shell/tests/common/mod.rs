//! Helpers shared by the end-to-end tests of the real `roost` binary (`daemon.rs`,
//! `reliability.rs`, `mail.rs`): a free port, one running master with its own base_dir and log, the echo
//! client, and a chroot installer. Each test binary uses only some of them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ROOST: &str = env!("CARGO_BIN_EXE_roost");

/// A free TCP port on loopback.
/// Polls `ready` every 20 ms for at most `secs` seconds; true once it held.
pub fn poll_until(secs: u64, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `/proc/PID/stat` says of a process.
pub struct ProcessIds {
    pub pid: i32,
    /// Its name (`comm`).
    pub comm: String,
    /// `R`, `S`, `Z`, ...
    pub state: String,
    pub parent: i32,
    pub group: i32,
    pub session: i32,
    /// Its controlling terminal's device number, 0 for none.
    pub terminal: i32,
}

impl ProcessIds {
    /// Parses a `/proc/PID/stat` line; `None` if it is not one.
    pub fn parse(stat: &str) -> Option<ProcessIds> {
        let (pid, rest) = stat.split_once(" (")?;
        let (comm, rest) = rest.rsplit_once(") ")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let number = |i: usize| fields.get(i)?.parse::<i32>().ok();
        Some(ProcessIds {
            pid: pid.parse().ok()?,
            comm: comm.to_owned(),
            state: (*fields.first()?).to_owned(),
            parent: number(1)?,
            group: number(2)?,
            session: number(3)?,
            terminal: number(4)?,
        })
    }

    /// The process `pid`, if it exists.
    pub fn of(pid: i32) -> Option<ProcessIds> {
        ProcessIds::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }
}

/// The live (not zombie) children of `master`: (pid, title).
pub fn children_of(master: i32) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Some(ids) = ProcessIds::of(pid) else {
            continue;
        };
        if ids.parent != master || ids.state == "Z" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut title = cmdline
            .split(|b| *b == 0)
            .next()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        // A waiting inetd adapter shares its spawner's memory, and with it its command line:
        // its own name is its comm, the service's.
        if let Some(prefix) = title
            .strip_suffix("/spawner")
            .filter(|_| ids.comm != "spawner")
        {
            title = format!("{prefix}/{}", ids.comm);
        }
        found.push((pid, title));
    }
    found
}

/// A log process's title: `roost/log`, or `roost-NAME/log` under an instance name.
pub fn is_log_process(title: &str) -> bool {
    title.starts_with("roost") && title.ends_with("/log")
}

/// The spawner's title: `roost/spawner`, or `roost-NAME/spawner` under an instance name.
pub fn is_spawner(title: &str) -> bool {
    title.starts_with("roost") && title.ends_with("/spawner")
}

/// A process's whole command line, arguments separated by spaces (NULs and trailing padding
/// dropped).
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).trim().to_owned())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One running master with its own directory.
pub struct Roost {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Roost {
    /// Writes the configuration (base_dir and log_path are added) and starts `roost -F`.
    pub fn start(name: &str, config: &str) -> Roost {
        let mut roost = Roost::prepare(name, config);
        roost.spawn();
        roost
    }

    /// Writes the configuration in a fresh directory; `spawn` starts the master.
    pub fn prepare(name: &str, config: &str) -> Roost {
        let dir = std::env::temp_dir().join(format!("roost-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let log = dir.join("roost.log");
        let path = dir.join("roost.conf");
        let text = format!(
            "base_dir = {}/run\nlog_path = {}\nprotocols = none\n{config}",
            dir.display(),
            log.display()
        );
        std::fs::write(&path, text).expect("config");
        Roost {
            dir,
            config: path,
            log,
            child: None,
        }
    }

    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// Starts `roost -F` with extra environment variables.
    pub fn spawn_with_env(&mut self, vars: &[(&str, &Path)]) {
        self.launch(vars, &[]);
    }

    /// Starts `roost -F <args> -c <config>` with extra environment variables.
    pub fn launch(&mut self, vars: &[(&str, &Path)], args: &[&str]) {
        let mut command = Command::new(ROOST);
        command
            .envs(vars.iter().copied())
            .arg("-F")
            .args(args)
            .arg("-c")
            .arg(&self.config);
        self.run_master(command);
    }

    /// Starts `roost -F -c roost.conf` in the test's directory: the configuration by a
    /// relative path.
    pub fn launch_relative(&mut self) {
        let mut command = Command::new(ROOST);
        command
            .current_dir(&self.dir)
            .args(["-F", "-c", "roost.conf"]);
        self.run_master(command);
    }

    /// Starts `roost -F -c <config>` through `wrapper`, a program that execs the rest of its
    /// arguments (`setpriv ... --`), so the master keeps the wrapper's pid.
    pub fn launch_through(&mut self, mut wrapper: Command) {
        wrapper.arg(ROOST).arg("-F").arg("-c").arg(&self.config);
        self.run_master(wrapper);
    }

    /// Starts `roost -F -c <config>` as an interactive shell would: in a session whose
    /// controlling terminal is `terminal` (a pty's subsidiary side), which is also its stdin,
    /// stdout and stderr.
    pub fn launch_in_terminal(&mut self, terminal: &std::os::fd::OwnedFd) {
        let mut command = Command::new(ROOST);
        let side = || Stdio::from(terminal.try_clone().expect("dup the terminal"));
        command
            .arg("-F")
            .arg("-c")
            .arg(&self.config)
            .stdin(side())
            .stdout(side())
            .stderr(side());
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("roost starts"));
        self.wait_until_answering();
    }

    /// Runs `command` as the master and waits until it answers `roost status`: the control
    /// socket exists before the loop opens the listeners, the answer comes from the loop after
    /// them. A master that exits at start fails the test with its stderr.
    fn run_master(&mut self, mut command: Command) {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roost starts");
        self.child = Some(child);
        self.wait_until_answering();
    }

    fn wait_until_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = self.child.as_mut().expect("just started");
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("roost exited at start ({status}): {stderr}");
            }
            if self.dir.join("run/control").exists() && self.command(&["status"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the master to answer roost status; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn master_pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// Runs `roost <args> -c <config>`.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(ROOST)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .expect("roost runs")
    }

    /// Rewrites the configuration with `from` replaced by `to`; `from` must be in it (an edit
    /// that changes nothing would leave a test proving nothing).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        assert!(
            text.contains(from),
            "{from:?} is not in the configuration:\n{text}"
        );
        std::fs::write(&self.config, text.replace(from, to)).expect("write the configuration");
    }

    /// Adds `more` at the end of the configuration.
    pub fn append_config(&self, more: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(&self.config, format!("{text}{more}")).expect("write the configuration");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 10 s) until `ready` holds.
    pub fn wait_for(&self, ready: impl Fn(&Roost) -> bool, what: &str) {
        if !poll_until(10, || ready(self)) {
            panic!("timed out waiting for {what}; log:\n{}", self.log_text());
        }
    }

    pub fn wait_for_log(&self, text: &str) {
        self.wait_for(
            |r| r.log_text().contains(text),
            &format!("{text:?} in the log"),
        );
    }

    /// The children of the master that serve its services: (pid, title). The log process
    /// (one per generation, see `log_processes`) and the spawner are left out, so that a pool
    /// counts as written.
    pub fn children(&self) -> Vec<(i32, String)> {
        children_of(self.master_pid())
            .into_iter()
            .filter(|(_, title)| !is_log_process(title) && !is_spawner(title))
            .collect()
    }

    /// The master's spawner, when it runs.
    pub fn spawner(&self) -> Option<i32> {
        children_of(self.master_pid())
            .into_iter()
            .find(|(_, title)| is_spawner(title))
            .map(|(pid, _)| pid)
    }

    /// The log processes of the master.
    pub fn log_processes(&self) -> Vec<i32> {
        children_of(self.master_pid())
            .into_iter()
            .filter(|(_, title)| is_log_process(title))
            .map(|(pid, _)| pid)
            .collect()
    }

    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.master_pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let output = self.command(&["stop"]);
        assert!(
            output.status.success(),
            "roost stop: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "the master did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Roost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `text`, half-closes, reads everything back.
pub fn echo(port: u16, text: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(text.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Writes `text` to `path` (and its directory) as an executable script.
pub fn write_script(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("script dir");
    }
    std::fs::write(path, text).expect("script");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod +x");
}

pub fn echo_service(port: u16, extra: &str) -> String {
    format!(
        "service echo {{\n  executable = inetd /bin/cat\n  service_count = 1\n{extra}\n  inet_listener echo {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
    )
}

/// Copies `program` and the shared libraries `ldd` names into `root`, at the same paths.
pub fn install_into_chroot(root: &Path, program: &str) -> bool {
    let Ok(out) = Command::new("ldd").arg(program).output() else {
        return false;
    };
    let mut files = vec![program.to_owned()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        for word in line.split_whitespace() {
            if word.starts_with('/') {
                files.push(word.to_owned());
            }
        }
    }
    for file in files {
        let target = root.join(file.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            if std::fs::create_dir_all(parent).is_err() {
                return false;
            }
        }
        if std::fs::copy(&file, &target).is_err() {
            return false;
        }
    }
    true
}
