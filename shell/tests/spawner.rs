//! The spawner's protocol, driven the way the master drives it: templates sent once, spawns
//! that name one with a process uid and carry the fds, and the forgetting of every template
//! when the table is full. The test process plays the master: `CLONE_PARENT` makes it the
//! parent of each child, which it reaps.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use roost::spawner::{ChildTemplate, SpawnOrder, Spawner};
use roost_core::wire::status::{StatusRecord, STATUS_RECORD_LEN};

const ROOST: &str = env!("CARGO_BIN_EXE_roost");

/// The next status record, read within 10 s.
fn read_status(pipe: &OwnedFd) -> StatusRecord {
    let mut fds = [libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one pollfd on our stack.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) };
    assert_eq!(ready, 1, "no status record within 10 s");
    let mut record = [0u8; STATUS_RECORD_LEN];
    let mut file = std::fs::File::from(pipe.try_clone().expect("dup"));
    file.read_exact(&mut record).expect("a status record");
    StatusRecord::decode(&record)
}

#[test]
fn spawns_name_their_template_and_carry_their_own_uid_and_pid() {
    let mut spawner =
        Spawner::start(Path::new(ROOST), "roost/spawner").expect("the spawner starts");
    let wiring = Wiring::new();
    let port = wiring.listener.local_addr().expect("its address").port();
    let fds = wiring.fds();
    let status_r = &wiring.status_r;
    let template = |title: &str| inetd_template(title, &["/bin/echo", "served"]);
    // Three children of one template, then more templates than the spawner keeps: the
    // table is forgotten and filled again, and every child still gets its own numbers.
    let titles: Vec<String> = ["roost/same", "roost/same", "roost/same"]
        .into_iter()
        .map(String::from)
        .chain((0..70).map(|i| format!("roost/t{i}")))
        .collect();
    for (i, title) in titles.iter().enumerate() {
        let process_uid = 1000 + i as u32;
        let order = SpawnOrder {
            template: template(title),
            process_uid,
        };
        let pid = spawner.spawn(&order, &fds).expect("a child");
        // It is what its template says: an inetd adapter runs in the spawner's memory (its
        // command line is the spawner's), and its name is the title's last part.
        let name = title.rsplit('/').next().expect("a name");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", pid.0)).unwrap_or_default();
            if comm.trim_end() == name {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child {i} is not {name}: {comm:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            std::fs::read(format!("/proc/{}/cmdline", pid.0)).expect("its cmdline"),
            std::fs::read(format!("/proc/{}/cmdline", spawner.pid().0)).expect("the spawner's"),
        );
        // The child takes its listener only if LISTEN_PID names it.
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // Its records, up to the one that says it is busy with the connection.
        loop {
            let record = read_status(status_r);
            assert_eq!(record.pid, pid, "child {i}");
            assert_eq!(record.uid.0, process_uid, "child {i}");
            if record.available_count == 0 {
                break;
            }
        }
        let mut reply = String::new();
        client
            .read_to_string(&mut reply)
            .expect("the program's output");
        assert_eq!(reply, "served\n", "child {i}");
        let _ = client.write_all(b"");
        let mut status = 0;
        // SAFETY: our own child (CLONE_PARENT).
        assert_eq!(unsafe { libc::waitpid(pid.0, &mut status, 0) }, pid.0);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    // A spawn of a template the spawner cannot use is refused, not a crash.
    let mut broken = template("roost/broken");
    broken.destinations = vec![0, 0, 2, 3, 4, 5];
    let order = SpawnOrder {
        template: broken,
        process_uid: 1,
    };
    assert!(matches!(
        spawner.spawn(&order, &fds),
        Err(roost::spawner::SpawnError::Clone(_))
    ));
    let pid = spawner.pid();
    drop(spawner);
    let mut status = 0;
    // SAFETY: our own child; it leaves when its socket closes.
    assert_eq!(unsafe { libc::waitpid(pid.0, &mut status, 0) }, pid.0);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

/// The fds of one inetd service as the master sends them, in the order of
/// [`inetd_template`]'s destinations.
struct Wiring {
    listener: TcpListener,
    status_r: OwnedFd,
    status_w: OwnedFd,
    _dead_r: OwnedFd,
    dead_w: OwnedFd,
    devnull: std::fs::File,
}

impl Wiring {
    fn new() -> Wiring {
        let (status_r, status_w) = nix::unistd::pipe().expect("status pipe");
        let (dead_r, dead_w) = nix::unistd::pipe().expect("master-dead pipe");
        Wiring {
            listener: TcpListener::bind("127.0.0.1:0").expect("a listener"),
            status_r,
            status_w,
            _dead_r: dead_r,
            dead_w,
            devnull: std::fs::File::open("/dev/null").expect("/dev/null"),
        }
    }

    fn fds(&self) -> [i32; 6] {
        [
            self.devnull.as_raw_fd(),
            self.devnull.as_raw_fd(),
            2,
            self.listener.as_raw_fd(),
            self.status_w.as_raw_fd(),
            self.dead_w.as_raw_fd(),
        ]
    }

    /// Connects and reads what the program says until it closes.
    fn serve_one(&self) -> String {
        let port = self.listener.local_addr().expect("its address").port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reply = String::new();
        client
            .read_to_string(&mut reply)
            .expect("the program's output");
        reply
    }
}

fn inetd_template(title: &str, program: &[&str]) -> ChildTemplate {
    ChildTemplate {
        builtin: "inetd".into(),
        args: program.iter().map(|a| a.to_string()).collect(),
        title: title.into(),
        env: [
            "LISTEN_FDS=1",
            "ROOST_SERVICE=probe",
            "ROOST_STATUS_FD=4",
            "ROOST_MASTER_DEAD_FD=5",
            "ROOST_CLIENT_LIMIT=1",
            "ROOST_SERVICE_COUNT=1",
        ]
        .map(String::from)
        .to_vec(),
        listen_pid: true,
        destinations: vec![0, 1, 2, 3, 4, 5],
        vsz_limit: 0,
        identity: None,
    }
}

/// How our child `pid` ended (waits for it).
fn wait_status(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: our own child (CLONE_PARENT makes the spawner's children ours).
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// An adapter runs in the spawner's memory until it execs: what it reads there (its template,
/// its stack) must stay while it waits, whatever the spawner does meanwhile; and a crash of one
/// must not take the spawner or the others with it (a core dump would kill every process that
/// shares the memory).
#[test]
fn an_adapter_outlives_its_template_a_crashing_sibling_and_the_spawner() {
    // Core dumps on (the kernel skips a dump, and the killing of the processes that share the
    // memory, under a limit of 0), in the spawner that inherits the limit.
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit of this test process; failing (a lower hard limit) only weakens the
    // test.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) };
    let mut spawner =
        Spawner::start(Path::new(ROOST), "roost/spawner").expect("the spawner starts");
    let first = Wiring::new();
    let order = SpawnOrder {
        template: inetd_template("roost/first", &["/bin/echo", "first"]),
        process_uid: 1,
    };
    let waiting = spawner.spawn(&order, &first.fds()).expect("an adapter");
    assert_eq!(read_status(&first.status_r).available_count, 1);
    let maps = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/maps")).ok();
    let maps_at_first = maps(spawner.pid().0);
    // More templates than the spawner keeps: it forgets them all, the first one included,
    // while its adapter waits. Each adapter is killed; their stacks are taken again.
    let other = Wiring::new();
    for i in 0..70 {
        let order = SpawnOrder {
            template: inetd_template(&format!("roost/t{i}"), &["/bin/true"]),
            process_uid: 100 + i,
        };
        let pid = spawner.spawn(&order, &other.fds()).expect("an adapter");
        // SAFETY: kill(2) of our own child, not reaped yet.
        unsafe { libc::kill(pid.0, libc::SIGKILL) };
        assert!(libc::WIFSIGNALED(wait_status(pid.0)));
    }
    // A crash (a segmentation fault, which dumps core) ends that adapter alone.
    let order = SpawnOrder {
        template: inetd_template("roost/crash", &["/bin/true"]),
        process_uid: 200,
    };
    let crashing = spawner.spawn(&order, &other.fds()).expect("an adapter");
    // SAFETY: as above.
    unsafe { libc::kill(crashing.0, libc::SIGSEGV) };
    let status = wait_status(crashing.0);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV);
    assert!(
        !libc::WCOREDUMP(status),
        "no core: it would have killed the spawner"
    );
    match (maps_at_first, maps(spawner.pid().0)) {
        (Some(before), Some(after)) => {
            // 71 adapters came and went: at most 16 free stacks (two mappings each) stay.
            let grown = after.lines().count() as i64 - before.lines().count() as i64;
            assert!(grown <= 40, "{grown} more mappings:\n{after}");
        }
        _ => println!("skipped the mapping count: the spawner's maps are not readable here"),
    }
    // The spawner leaves (its socket closes); the first adapter still serves.
    let spawner_pid = spawner.pid();
    drop(spawner);
    assert_eq!(wait_status(spawner_pid.0), 0);
    assert_eq!(first.serve_one(), "first\n");
    let status = wait_status(waiting.0);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
}
