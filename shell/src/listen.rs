//! Listening sockets and fifos as the core's `OpenListener` describes them (reference §3.5).
//!
//! unix: path, mode, user, group; a stale socket (nobody accepts on it) is removed, a live one
//! is an error. fifo: created with its mode. inet: one address (`*` = 0.0.0.0, `::`, an IP, or a
//! host name resolved to its first address), SO_REUSEADDR, and a backlog of at least the
//! system's somaxconn (the original's process_limit × client_limit overflows, reference §10).
//! Every fd is non-blocking and close-on-exec; the spawner moves it to its place in a child.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;

use roost_core::setup::ListenerKind;
use socket2::{Domain, Socket, Type};

/// An open listener.
#[derive(Debug)]
pub struct OpenedListener {
    /// The fd.
    pub fd: OwnedFd,
    /// `unix`, `fifo` or `inet`.
    pub kind: &'static str,
    /// The path to unlink at close, for unix and fifo listeners.
    pub path: Option<String>,
}

/// Why opening failed, and whether a reload may tolerate it (reference §3.5).
#[derive(Debug)]
pub struct ListenError {
    /// Soft: address in use, missing directory.
    pub soft: bool,
    /// For the operator.
    pub error: String,
}

/// The backlog: at least somaxconn, at least 1024.
pub fn backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(4096)
        .max(1024)
}

fn is_soft(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRINUSE) | Some(libc::ENOENT) | Some(libc::EADDRNOTAVAIL)
    )
}

/// Opens one listener.
pub fn open(kind: &ListenerKind) -> Result<OpenedListener, ListenError> {
    match kind {
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

fn resolve(address: &str, port: u16) -> io::Result<SocketAddr> {
    let ip = match address {
        "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "::" | "[::]" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        a => match a.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                return (a, port).to_socket_addrs()?.next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{a}: no address"))
                })
            }
        },
    };
    Ok(SocketAddr::new(ip, port))
}

fn open_inet(address: &str, port: u16, reuse_port: bool) -> Result<OpenedListener, ListenError> {
    let fail = |e: io::Error| ListenError {
        soft: is_soft(&e),
        error: format!("listen({address}, {port}) failed: {e}"),
    };
    let addr = resolve(address, port).map_err(fail)?;
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(fail)?;
    }
    if addr.is_ipv6() {
        // `::` serves IPv6 only, so `listen = *, ::` binds both without a conflict.
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(backlog()).map_err(fail)?;
    Ok(OpenedListener {
        fd: socket.into(),
        kind: "inet",
        path: None,
    })
}

fn chown(path: &str, user: &str, group: &str) -> io::Result<()> {
    if user.is_empty() && group.is_empty() {
        return Ok(());
    }
    let uid = if user.is_empty() {
        None
    } else {
        Some(
            nix::unistd::User::from_name(user)
                .map_err(io::Error::from)?
                .ok_or_else(|| io::Error::other(format!("unknown user {user}")))?
                .uid,
        )
    };
    let gid = if group.is_empty() {
        None
    } else {
        Some(
            nix::unistd::Group::from_name(group)
                .map_err(io::Error::from)?
                .ok_or_else(|| io::Error::other(format!("unknown group {group}")))?
                .gid,
        )
    };
    nix::unistd::chown(path, uid, gid).map_err(io::Error::from)
}

fn open_unix(
    path: &str,
    mode: u32,
    user: &str,
    group: &str,
) -> Result<OpenedListener, ListenError> {
    let fail = |e: io::Error| ListenError {
        soft: is_soft(&e),
        error: format!("net_listen_unix({path}) failed: {e}"),
    };
    let addr = socket2::SockAddr::unix(path).map_err(fail)?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None).map_err(fail)?;
    if let Err(e) = socket.bind(&addr) {
        if e.raw_os_error() != Some(libc::EADDRINUSE) {
            return Err(fail(e));
        }
        // Someone may be listening: a live socket is an error, a stale one is removed.
        let probe = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None).map_err(fail)?;
        if probe.connect(&addr).is_ok() {
            return Err(ListenError {
                soft: true,
                error: format!("Socket already exists: {path}"),
            });
        }
        std::fs::remove_file(path).map_err(fail)?;
        socket.bind(&addr).map_err(fail)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    chown(path, user, group).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.listen(backlog()).map_err(fail)?;
    Ok(OpenedListener {
        fd: socket.into(),
        kind: "unix",
        path: Some(path.to_owned()),
    })
}

fn open_fifo(
    path: &str,
    mode: u32,
    user: &str,
    group: &str,
) -> Result<OpenedListener, ListenError> {
    let fail = |e: io::Error| ListenError {
        soft: is_soft(&e),
        error: format!("mkfifo({path}) failed: {e}"),
    };
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(fail(e.into())),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    chown(path, user, group).map_err(fail)?;
    // Read-write, so the fifo never reports EOF when the last writer goes.
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(e.into()))?;
    Ok(OpenedListener {
        fd,
        kind: "fifo",
        path: Some(path.to_owned()),
    })
}

/// How many connections wait in a listening TCP socket's accept queue (Linux reports it in
/// `tcpi_unacked`); 1 when unknown (a unix socket, an error).
pub fn queued(fd: RawFd) -> u32 {
    let mut info: libc::tcp_info = unsafe_zeroed_tcp_info();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a valid, writable tcp_info of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 && info.tcpi_unacked > 0 {
        info.tcpi_unacked
    } else {
        1
    }
}

fn unsafe_zeroed_tcp_info() -> libc::tcp_info {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Accepts every waiting connection and closes it (`AcceptAndClose`).
pub fn accept_and_close(fd: RawFd) {
    loop {
        // SAFETY: accept4 on a listening fd; the returned fd is closed at once.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            break;
        }
        // SAFETY: `c` is a fresh fd we own.
        unsafe { libc::close(c) };
    }
}

/// The fd of an opened listener.
pub fn raw(l: &OpenedListener) -> RawFd {
    l.fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use std::time::Duration;

    /// mio is edge-triggered: a listener the master does not accept on reports once. The
    /// master re-arms it deliberately (reregister) when the core says listen again; this pins
    /// that a reregister reports a connection that was already waiting.
    #[test]
    fn an_unaccepted_listener_fires_once_and_again_after_reregister() {
        let l = open(&ListenerKind::Inet {
            address: "127.0.0.1".into(),
            port: 0,
            ssl: false,
            haproxy: false,
            reuse_port: false,
        })
        .expect("listen");
        let fd = raw(&l);
        let addr = socket2::SockRef::from(&l.fd)
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let mut poll = Poll::new().expect("poll");
        let mut events = Events::with_capacity(8);
        poll.registry()
            .register(&mut SourceFd(&fd), Token(1), Interest::READABLE)
            .expect("register");
        let _c = std::net::TcpStream::connect(addr).expect("connect");
        poll.poll(&mut events, Some(Duration::from_secs(2)))
            .expect("poll");
        assert_eq!(events.iter().count(), 1);
        assert_eq!(queued(fd), 1);
        poll.poll(&mut events, Some(Duration::from_millis(200)))
            .expect("poll");
        assert_eq!(events.iter().count(), 0, "edge-triggered: no second report");
        poll.registry()
            .reregister(&mut SourceFd(&fd), Token(1), Interest::READABLE)
            .expect("reregister");
        poll.poll(&mut events, Some(Duration::from_secs(2)))
            .expect("poll");
        assert_eq!(
            events.iter().count(),
            1,
            "re-armed: the waiting connection shows"
        );
        accept_and_close(fd);
    }

    #[test]
    fn the_accept_queue_length_is_reported() {
        let l = open(&ListenerKind::Inet {
            address: "127.0.0.1".into(),
            port: 0,
            ssl: false,
            haproxy: false,
            reuse_port: false,
        })
        .expect("listen");
        let addr = socket2::SockRef::from(&l.fd)
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let _c: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(queued(raw(&l)), 5);
    }

    #[test]
    fn a_stale_unix_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s").to_str().expect("utf-8").to_owned();
        let kind = ListenerKind::Unix {
            path: path.clone(),
            mode: 0o600,
            user: String::new(),
            group: String::new(),
        };
        let live = open(&kind).expect("first");
        let err = open(&kind).expect_err("live socket");
        assert!(err.error.contains("already exists"), "{}", err.error);
        drop(live);
        let again = open(&kind).expect("stale socket is removed");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(again);
    }
}
