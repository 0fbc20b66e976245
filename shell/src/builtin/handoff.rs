//! The handoff of a logged-in client from a login process to a post-login process: one message
//! on a connection to the post-login service's unix listener (`login/pop3`), carrying the
//! client's socket (SCM_RIGHTS) and one line about it; the post-login process answers `OK` or
//! `FAIL<TAB>reason` and both close the connection.
//!
//! `HANDOFF<TAB>user<TAB>remote-ip<TAB>local-ip<TAB>flags<TAB>hops<TAB>pipelined...` where flags
//! is `tls` when the login process holds TLS for the client (the fd is then one end of a
//! socketpair the login process proxies to), and each pipelined field is one command line the
//! client sent after its credentials. Fields are escaped as in [`crate::mail::authwire`].

use std::io::{self, IoSlice, IoSliceMut};
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::mail::authwire::{escape, unescape};

/// The longest handoff line (the pipelined lines are bounded by the login process).
pub const MAX_HANDOFF: usize = 64 * 1024;

/// What a post-login process learns about a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The authenticated user.
    pub user: String,
    /// The client's address (the PROXY header's, when one was trusted).
    pub remote_ip: Option<IpAddr>,
    /// The address the client connected to.
    pub local_ip: Option<IpAddr>,
    /// The login process keeps TLS for the client.
    pub tls: bool,
    /// How many post-login processes passed it on already.
    pub hops: u32,
    /// Commands the client pipelined after its credentials.
    pub pipelined: Vec<Vec<u8>>,
}

impl Handoff {
    /// The line (with `\n`).
    pub fn encode(&self) -> String {
        let ip = |ip: Option<IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        let mut line = format!(
            "HANDOFF\t{}\t{}\t{}\t{}\t{}",
            escape(&self.user),
            ip(self.remote_ip),
            ip(self.local_ip),
            if self.tls { "tls" } else { "" },
            self.hops
        );
        for command in &self.pipelined {
            line.push('\t');
            line.push_str(&escape(&String::from_utf8_lossy(command)));
        }
        line.push('\n');
        line
    }

    /// Reads a line (without `\n`).
    pub fn parse(line: &[u8]) -> Result<Handoff, String> {
        let text = std::str::from_utf8(line).map_err(|_| "handoff is not UTF-8".to_owned())?;
        let mut fields = text.split('\t');
        if fields.next() != Some("HANDOFF") {
            return Err("not a HANDOFF line".to_owned());
        }
        let mut next = |what: &str| {
            fields
                .next()
                .ok_or_else(|| format!("handoff without {what}"))
        };
        let user = unescape(next("user")?).ok_or("bad escape in user")?;
        let ip = |text: &str| -> Result<Option<IpAddr>, String> {
            if text.is_empty() {
                Ok(None)
            } else {
                text.parse()
                    .map(Some)
                    .map_err(|_| format!("bad address {text:?}"))
            }
        };
        let remote_ip = ip(next("remote ip")?)?;
        let local_ip = ip(next("local ip")?)?;
        let tls = next("flags")?.split(',').any(|f| f == "tls");
        let hops = next("hops")?
            .parse()
            .map_err(|_| "bad hop count".to_owned())?;
        if user.is_empty() {
            return Err("handoff without user".to_owned());
        }
        let pipelined = fields
            .map(|f| {
                unescape(f)
                    .map(String::into_bytes)
                    .ok_or("bad escape in a command")
            })
            .collect::<Result<_, _>>()?;
        Ok(Handoff {
            user,
            remote_ip,
            local_ip,
            tls,
            hops,
            pipelined,
        })
    }
}

/// Sends the handoff line with `client` attached on the connected unix socket `socket`.
pub fn send(socket: RawFd, handoff: &Handoff, client: RawFd) -> io::Result<()> {
    let line = handoff.encode();
    if line.len() > MAX_HANDOFF {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many pipelined commands to hand over",
        ));
    }
    let fds = [client];
    let control = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(line.as_bytes())];
    let sent = sendmsg::<()>(socket, &iov, &control, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != line.len() {
        // Stream sockets may split a message; the rest carries no fd.
        let rest = &line.as_bytes()[sent..];
        let mut file = std::mem::ManuallyDrop::new(unsafe {
            // SAFETY: a borrowed view of the caller's fd, never closed here (ManuallyDrop).
            std::fs::File::from_raw_fd(socket)
        });
        io::Write::write_all(&mut *file, rest)?;
    }
    Ok(())
}

/// Receives a handoff on the unix socket `socket` (blocking until a line and its fd arrived,
/// within the socket's read timeout). The fd is owned by the caller from here on.
pub fn receive(socket: RawFd) -> io::Result<(Handoff, OwnedFd)> {
    let mut line = Vec::new();
    let mut client: Option<OwnedFd> = None;
    let mut buf = vec![0u8; 4096];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                socket,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = c {
                    fds.extend(received);
                }
            }
            (msg.bytes, fds)
        };
        for fd in fds {
            // SAFETY: the kernel just gave us this fd; nothing else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if client.is_none() {
                client = Some(owned);
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the login process closed before its handoff was complete",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            let handoff = Handoff::parse(&line[..end])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let client = client.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "handoff without a client fd")
            })?;
            return Ok((handoff, client));
        }
        if line.len() > MAX_HANDOFF {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handoff line too long",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn fd_of(stream: &impl AsRawFd) -> RawFd {
        stream.as_raw_fd()
    }

    fn sample() -> Handoff {
        Handoff {
            user: "demo\tuser".to_owned(),
            remote_ip: Some("192.0.2.7".parse().expect("ip")),
            local_ip: Some("::1".parse().expect("ip")),
            tls: true,
            hops: 2,
            pipelined: vec![b"STAT".to_vec(), b"LIST 1".to_vec()],
        }
    }

    #[test]
    fn a_handoff_reads_back_as_it_was_written() {
        let handoff = sample();
        let line = handoff.encode();
        assert_eq!(
            Handoff::parse(line.trim_end().as_bytes()).as_ref(),
            Ok(&handoff)
        );
        for bad in [
            "",
            "HANDOFF",
            "HANDOFF\t\t\t\t\t0",
            "HANDOFF\tu\tnot-ip\t\t\t0",
            "OK\tu",
        ] {
            assert!(Handoff::parse(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_client_fd_travels_with_the_line() {
        let (login, post) = UnixStream::pair().expect("socketpair");
        let (mut client, client_peer) = UnixStream::pair().expect("socketpair");
        send(fd_of(&login), &sample(), fd_of(&client_peer)).expect("send");
        // The login process closes its copy at once: the fd in flight keeps the connection.
        drop(client_peer);
        let (got, fd) = receive(fd_of(&post)).expect("receive");
        assert_eq!(got, sample());
        let mut handed = std::fs::File::from(fd);
        handed.write_all(b"+OK Logged in.\r\n").expect("write");
        let mut line = [0u8; 16];
        client.read_exact(&mut line).expect("read");
        assert_eq!(&line, b"+OK Logged in.\r\n");
    }
}
