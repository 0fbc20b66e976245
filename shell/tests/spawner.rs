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
    let mut spawner = Spawner::start(Path::new(ROOST)).expect("the spawner starts");
    let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
    let port = listener.local_addr().expect("its address").port();
    let (status_r, status_w) = nix::unistd::pipe().expect("status pipe");
    let (_dead_r, dead_w) = nix::unistd::pipe().expect("master-dead pipe");
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let fds = [
        devnull.as_raw_fd(),
        devnull.as_raw_fd(),
        2,
        listener.as_raw_fd(),
        status_w.as_raw_fd(),
        dead_w.as_raw_fd(),
    ];
    let template = |title: &str| ChildTemplate {
        builtin: "inetd".into(),
        args: vec!["/bin/echo".into(), "served".into()],
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
    };
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
        // It is what its template says: its title is the template's.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.0)).unwrap_or_default();
            if cmdline.split(|b| *b == 0).next() == Some(title.as_bytes()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child {i} is not {title}: {:?}",
                String::from_utf8_lossy(&cmdline)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The child takes its listener only if LISTEN_PID names it.
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // Its records, up to the one that says it is busy with the connection.
        loop {
            let record = read_status(&status_r);
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
