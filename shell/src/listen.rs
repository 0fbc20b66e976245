//! Creating listening sockets and fifos (reference §3.5), and what the master does with them:
//! count waiting connections, accept and close.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;

use roost_core::setup::{ListenerConfig, ListenerKind};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::system::{lookup_group, lookup_user};

/// A failure to listen, and whether a reload may go on without the listener.
#[derive(Debug)]
pub struct ListenError {
    /// Address in use, or a missing directory.
    pub soft: bool,
    /// The operator's text.
    pub text: String,
}

/// One opened listener.
#[derive(Debug)]
pub struct Opened {
    /// The sockets (an address may resolve to several).
    pub fds: Vec<OwnedFd>,
    /// TCP: the accept queue can be measured.
    pub tcp: bool,
}

/// The listen backlog: at least the system's somaxconn (the original's process_limit ×
/// client_limit overflows under a burst, reference §10).
pub fn backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(4096)
        .max(1024)
}

/// Opens a listener as configured.
pub fn open(config: &ListenerConfig) -> Result<Opened, ListenError> {
    match &config.kind {
        ListenerKind::Inet {
            address,
            port,
            reuse_port,
            ..
        } => open_inet(address, *port, *reuse_port),
        ListenerKind::Unix {
            path,
            mode,
            user,
            group,
        } => open_unix(path, *mode, user, group),
        ListenerKind::Fifo {
            path,
            mode,
            user,
            group,
        } => open_fifo(path, *mode, user, group),
    }
}

fn resolve(address: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, ListenError> {
    use std::net::ToSocketAddrs;
    let host = match address {
        "*" => "0.0.0.0",
        "::" | "[::]" => "::",
        other => other.trim_start_matches('[').trim_end_matches(']'),
    };
    let found: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ListenError {
            soft: false,
            text: format!("Can't resolve address {address}: {e}"),
        })?
        .collect();
    if found.is_empty() {
        return Err(ListenError {
            soft: false,
            text: format!("No IPs for address: {address}"),
        });
    }
    Ok(found)
}

fn open_inet(address: &str, port: u16, reuse_port: bool) -> Result<Opened, ListenError> {
    let mut fds = Vec::new();
    for addr in resolve(address, port)? {
        let fail = |e: io::Error| ListenError {
            soft: e.kind() == io::ErrorKind::AddrInUse,
            text: format!("listen({}, {port}) failed: {e}", addr.ip()),
        };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(fail)?;
        }
        if reuse_port {
            socket.set_reuse_port(true).map_err(fail)?;
        }
        socket.set_nonblocking(true).map_err(fail)?;
        socket.bind(&SockAddr::from(addr)).map_err(fail)?;
        socket.listen(backlog()).map_err(fail)?;
        fds.push(OwnedFd::from(socket));
    }
    Ok(Opened { fds, tcp: true })
}

fn chown(path: &str, user: &str, group: &str) -> Result<(), ListenError> {
    if user.is_empty() && group.is_empty() {
        return Ok(());
    }
    let uid = if user.is_empty() {
        None
    } else {
        Some(
            lookup_user(user)
                .ok_or_else(|| ListenError {
                    soft: false,
                    text: format!("{path}: unknown user {user}"),
                })?
                .0,
        )
    };
    let gid = if group.is_empty() {
        None
    } else {
        Some(lookup_group(group).ok_or_else(|| ListenError {
            soft: false,
            text: format!("{path}: unknown group {group}"),
        })?)
    };
    if !crate::system::is_root() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, uid, gid).map_err(|e| ListenError {
        soft: false,
        text: format!("chown({path}) failed: {e}"),
    })
}

fn open_unix(path: &str, mode: u32, user: &str, group: &str) -> Result<Opened, ListenError> {
    let fail = |e: io::Error| ListenError {
        soft: matches!(e.kind(), io::ErrorKind::AddrInUse | io::ErrorKind::NotFound),
        text: format!("unix_listener: bind({path}) failed: {e}"),
    };
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
    let addr = SockAddr::unix(path).map_err(fail)?;
    if let Err(e) = socket.bind(&addr) {
        if e.kind() != io::ErrorKind::AddrInUse {
            return Err(fail(e));
        }
        // A live socket is someone else's; a dead one is stale and goes (reference §3.5).
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(ListenError {
                    soft: true,
                    text: format!("Socket already exists: {path}"),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(fail)?;
                socket.bind(&addr).map_err(fail)?;
            }
            Err(_) => {
                return Err(ListenError {
                    soft: true,
                    text: format!("Socket already exists: {path}"),
                })
            }
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    chown(path, user, group)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.listen(backlog()).map_err(fail)?;
    Ok(Opened {
        fds: vec![OwnedFd::from(socket)],
        tcp: false,
    })
}

fn open_fifo(path: &str, mode: u32, user: &str, group: &str) -> Result<Opened, ListenError> {
    let fail = |e: io::Error| ListenError {
        soft: false,
        text: format!("fifo_listener: mkfifo({path}) failed: {e}"),
    };
    let make = || nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(mode));
    if let Err(nix::errno::Errno::EEXIST) = make() {
        std::fs::remove_file(path).map_err(fail)?;
        make().map_err(|e| fail(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    chown(path, user, group)?;
    // O_RDWR so the reader never sees EOF.
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(e.into()))?;
    Ok(Opened {
        fds: vec![fd],
        tcp: false,
    })
}

/// How many connections wait in a TCP listener's accept queue (Linux reports it in
/// `tcpi_unacked` for a listening socket); 1 when it cannot be told.
pub fn queued(fd: RawFd, tcp: bool) -> u32 {
    if !tcp {
        return 1;
    }
    // SAFETY: getsockopt into a zeroed tcp_info of the right size.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if r != 0 {
            return 1;
        }
        info.tcpi_unacked.max(1)
    }
}

/// Accepts every waiting connection and closes it at once.
pub fn accept_and_close(fd: RawFd) -> usize {
    let mut closed = 0;
    loop {
        // SAFETY: accept4 on a listening fd we own; the result is owned and dropped.
        let conn = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            break;
        }
        drop(unsafe { OwnedFd::from_raw_fd(conn) });
        closed += 1;
        if closed >= 4096 {
            break;
        }
    }
    closed
}

/// The raw fds of an opened listener.
pub fn raw_fds(opened: &Opened) -> Vec<RawFd> {
    opened.fds.iter().map(|fd| fd.as_raw_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use std::time::Duration;

    fn inet(port: u16) -> ListenerConfig {
        ListenerConfig {
            name: "test".into(),
            kind: ListenerKind::Inet {
                address: "127.0.0.1".into(),
                port,
                ssl: false,
                haproxy: false,
                reuse_port: false,
            },
        }
    }

    fn local_port(opened: &Opened) -> u16 {
        socket2::SockRef::from(&opened.fds[0])
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("an inet listener has a local port")
    }

    fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("roost-listen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// The bug this pins: mio is edge-triggered, so a listener that the master watches but
    /// does not accept on (it forks a process instead) reports its waiting connection once and
    /// then never again. If the core later says "listen" while that connection still waits
    /// and the driver only flips a flag, the connection sits in the queue until another one
    /// arrives. The driver therefore re-registers on every SetListening { on }; this test pins
    /// that a re-registration reports a connection that was already waiting.
    #[test]
    fn an_unaccepted_listener_fires_once_and_again_after_reregister() {
        let opened = open(&inet(0)).expect("listen on a free port");
        let fd = opened.fds[0].as_raw_fd();
        let mut poll = Poll::new().expect("epoll");
        let mut events = Events::with_capacity(8);
        poll.registry()
            .register(&mut SourceFd(&fd), Token(1), Interest::READABLE)
            .expect("register");
        let _client =
            std::net::TcpStream::connect(("127.0.0.1", local_port(&opened))).expect("connect");
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .expect("poll");
        assert_eq!(events.iter().count(), 1, "the first connection is reported");
        poll.poll(&mut events, Some(Duration::from_millis(200)))
            .expect("poll");
        assert_eq!(
            events.iter().count(),
            0,
            "edge-triggered: not reported twice"
        );
        poll.registry()
            .reregister(&mut SourceFd(&fd), Token(1), Interest::READABLE)
            .expect("reregister");
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .expect("poll");
        assert_eq!(
            events.iter().count(),
            1,
            "re-armed: the connection still waiting is reported again"
        );
        assert_eq!(accept_and_close(fd), 1);
    }

    #[test]
    fn the_accept_queue_length_of_a_tcp_listener_is_reported() {
        let opened = open(&inet(0)).expect("listen");
        let fd = opened.fds[0].as_raw_fd();
        assert_eq!(queued(fd, true), 1, "empty queue reads as 1 (unknown/none)");
        let port = local_port(&opened);
        let _clients: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        // The kernel completes loopback handshakes before connect() returns.
        assert_eq!(queued(fd, true), 5);
        assert_eq!(queued(fd, false), 1, "a unix listener cannot tell");
        assert_eq!(accept_and_close(fd), 5);
        assert_eq!(accept_and_close(fd), 0);
    }

    #[test]
    fn an_inet_port_in_use_is_a_soft_error_naming_the_address() {
        let first = open(&inet(0)).expect("listen");
        let port = local_port(&first);
        let err = open(&inet(port)).expect_err("the port is taken");
        assert!(err.soft, "a reload tolerates an address in use");
        assert!(
            err.text
                .starts_with(&format!("listen(127.0.0.1, {port}) failed")),
            "{}",
            err.text
        );
    }

    #[test]
    fn a_stale_unix_socket_is_replaced_and_a_live_one_refused() {
        let dir = scratch_dir("unix");
        let path = dir.join("sub").join("sock").to_string_lossy().into_owned();
        let config = ListenerConfig {
            name: "sock".into(),
            kind: ListenerKind::Unix {
                path: path.clone(),
                mode: 0o660,
                user: String::new(),
                group: String::new(),
            },
        };
        let live = open(&config).expect("first bind creates the directory and the socket");
        let err = open(&config).expect_err("a live socket is someone else's");
        assert_eq!(err.text, format!("Socket already exists: {path}"));
        drop(live);
        let again = open(&config).expect("a stale socket is removed and bound again");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_gets_its_mode_and_never_reads_eof() {
        let dir = scratch_dir("fifo");
        let path = dir.join("fifo").to_string_lossy().into_owned();
        let config = ListenerConfig {
            name: "fifo".into(),
            kind: ListenerKind::Fifo {
                path: path.clone(),
                mode: 0o620,
                user: String::new(),
                group: String::new(),
            },
        };
        let opened = open(&config).expect("mkfifo");
        let mode = std::fs::metadata(&path).expect("fifo").permissions().mode() & 0o777;
        assert_eq!(mode, 0o620);
        // Opened read-write: with no writer a read is EAGAIN, not EOF (0 bytes).
        let mut buf = [0u8; 4];
        let n = nix::unistd::read(&opened.fds[0], &mut buf);
        assert_eq!(n, Err(nix::errno::Errno::EAGAIN));
        drop(opened);
        open(&config).expect("an existing fifo is recreated");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
