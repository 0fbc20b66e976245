//! One non-blocking connection of a built-in service: a TCP or unix stream, optionally wrapped
//! in rustls, with an output buffer that is flushed as the socket allows.
//!
//! mio is edge-triggered: a reader reads until `WouldBlock` ([`Conn::read_into`] does), and a
//! writer keeps what the kernel did not take and writes it on the next writable event
//! ([`Conn::flush`]). Both interests are registered once, for the connection's whole life.
//!
//! Invariants: after `read_into` returns, either the socket said `WouldBlock`, the peer closed
//! (`eof`), or `max` bytes were read (the caller reads again after handling them); bytes queued
//! with [`Conn::write`] leave in order, TLS records included, and a pending STLS upgrade
//! ([`Conn::start_tls_after_flush`]) reads nothing more until the plaintext reply is out.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use mio::event::Source;
use mio::{Interest, Registry, Token};

/// The socket under a connection.
#[derive(Debug)]
pub enum Stream {
    /// A client connection.
    Tcp(mio::net::TcpStream),
    /// A local connection (auth, anvil, a handed-over client).
    Unix(mio::net::UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(registry, token, interests),
            Stream::Unix(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(registry, token, interests),
            Stream::Unix(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
        }
    }
}

/// A stream whose first bytes were already read by someone else (the PROXY header decoder):
/// those are served first.
struct Prefixed<'a> {
    prefix: &'a mut Vec<u8>,
    stream: &'a mut Stream,
}

impl Read for Prefixed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.prefix.is_empty() {
            return self.stream.read(buf);
        }
        let n = buf.len().min(self.prefix.len());
        buf[..n].copy_from_slice(&self.prefix[..n]);
        self.prefix.drain(..n);
        Ok(n)
    }
}

/// One connection: socket, optional TLS, output buffer.
pub struct Conn {
    /// The socket.
    pub stream: Stream,
    /// Bytes read before this connection was built, served before the socket's.
    prefix: Vec<u8>,
    /// rustls, once TLS is on.
    tls: Option<Box<rustls::ServerConnection>>,
    /// STLS: the TLS configuration to switch to once `out` is flushed.
    tls_after_flush: Option<Arc<rustls::ServerConfig>>,
    /// Bytes not yet taken by the kernel (plaintext connections and the STLS reply).
    out: Vec<u8>,
    /// The peer closed its side (or TLS said close_notify).
    pub eof: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("fd", &self.stream.as_raw_fd())
            .field("tls", &self.tls.is_some())
            .field("out", &self.out.len())
            .field("eof", &self.eof)
            .finish()
    }
}

/// Reads at most this much per `read_into` call, so one busy client cannot starve the others.
pub const READ_BUDGET: usize = 64 * 1024;

impl Conn {
    /// A plaintext connection; `prefix` holds bytes already read from it.
    pub fn new(stream: Stream, prefix: Vec<u8>) -> Conn {
        Conn {
            stream,
            prefix,
            tls: None,
            tls_after_flush: None,
            out: Vec::new(),
            eof: false,
        }
    }

    /// Puts bytes back in front of what the socket will give (the PROXY header decoder read
    /// past the header).
    pub fn unread(&mut self, mut bytes: Vec<u8>) {
        bytes.append(&mut self.prefix);
        self.prefix = bytes;
    }

    /// Starts TLS now (an `ssl = yes` listener): the next bytes are the client's hello.
    pub fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        self.tls = Some(Box::new(
            rustls::ServerConnection::new(config).map_err(io::Error::other)?,
        ));
        Ok(())
    }

    /// STLS: switches to TLS once what is queued (the `+OK` reply) has left.
    pub fn start_tls_after_flush(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        self.tls_after_flush = Some(config);
        self.flush()
    }

    /// TLS is on (the handshake may still be running).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Bytes queued and not yet written.
    pub fn pending_out(&self) -> usize {
        self.out.len()
            + self
                .tls
                .as_ref()
                .map_or(0, |t| usize::from(t.wants_write()))
    }

    /// Reads what the peer sent (decrypted) into `into`, until the socket would block, the peer
    /// closed, or [`READ_BUDGET`] bytes. A TLS error is an error. Returns true when the budget
    /// ended the read: more may be waiting, and (edge-triggered) no new event will say so.
    pub fn read_into(&mut self, into: &mut Vec<u8>) -> io::Result<bool> {
        if self.tls_after_flush.is_some() {
            return Ok(false); // the client's hello waits for the switch
        }
        let start = into.len();
        let mut chunk = [0u8; 16 * 1024];
        while into.len() - start < READ_BUDGET && !self.eof {
            let mut source = Prefixed {
                prefix: &mut self.prefix,
                stream: &mut self.stream,
            };
            match &mut self.tls {
                None => match source.read(&mut chunk) {
                    Ok(0) => self.eof = true,
                    Ok(n) => into.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                },
                Some(tls) => {
                    match tls.read_tls(&mut source) {
                        Ok(0) => self.eof = true,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                    let state = tls.process_new_packets().map_err(|e| {
                        // Tell the peer why before the connection is dropped.
                        let _ = tls.write_tls(&mut self.stream);
                        io::Error::new(io::ErrorKind::InvalidData, e)
                    })?;
                    let mut plain = state.plaintext_bytes_to_read();
                    while plain > 0 {
                        let want = plain.min(chunk.len());
                        let n = tls.reader().read(&mut chunk[..want])?;
                        if n == 0 {
                            break;
                        }
                        into.extend_from_slice(&chunk[..n]);
                        plain -= n;
                    }
                    if state.peer_has_closed() {
                        self.eof = true;
                    }
                }
            }
        }
        // Handshake records and alerts go out at once.
        self.flush()?;
        Ok(into.len() - start >= READ_BUDGET && !self.eof)
    }

    /// Queues bytes for the peer (encrypted when TLS is on) and tries to send them.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => tls.writer().write_all(bytes)?,
            None => self.out.extend_from_slice(bytes),
        }
        self.flush()
    }

    /// Sends what is queued, as far as the socket takes it.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(config) = self.tls_after_flush.take() {
            self.start_tls(config)?;
        }
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Sends TLS close_notify (when TLS is on) and what is queued, best effort, before a close.
    pub fn close_gracefully(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
        }
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        (
            Conn::new(
                Stream::Unix(mio::net::UnixStream::from_std(a)),
                b"first ".to_vec(),
            ),
            b,
        )
    }

    #[test]
    fn bytes_read_before_come_first_and_eof_is_seen() {
        let (mut conn, mut peer) = pair();
        peer.write_all(b"second").expect("write");
        drop(peer);
        let mut got = Vec::new();
        conn.read_into(&mut got).expect("read");
        assert_eq!(got, b"first second");
        assert!(conn.eof);
    }

    #[test]
    fn what_the_socket_does_not_take_is_kept_in_order() {
        let (mut conn, mut peer) = pair();
        let big = vec![b'x'; 4 << 20];
        conn.write(&big).expect("queue");
        assert!(
            conn.pending_out() > 0,
            "a socketpair does not take 4 MiB at once"
        );
        conn.write(b"end").expect("queue");
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while got.len() < big.len() + 3 {
            let n = peer.read(&mut chunk).expect("read");
            got.extend_from_slice(&chunk[..n]);
            conn.flush().expect("flush");
        }
        assert!(got.ends_with(b"xend"));
        assert_eq!(conn.pending_out(), 0);
    }
}
