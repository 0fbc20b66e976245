//! The event loop shared by the built-ins that serve connections on their listeners with the
//! core's [`Child`] machine (auth, anvil, pop3): the machine decides when to accept, when to
//! report status, when to exit; the loop only carries that out and hands each connection's
//! bytes to the [`Service`].
//!
//! Tokens: listener `i` is `Token(i)`; connections count up from [`FIRST_CONN`]; the runtime's
//! own sources sit at the top of the range.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Instant as StdInstant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use roost_core::child::{Child, ChildConfig, Input as ChildInput, Output as ChildOutput};
use roost_core::signal::Signal;
use roost_core::time::Instant;

use super::conn::{Conn, Stream};
use crate::runtime::{write_status, ChildEnv};

/// The first connection token.
pub const FIRST_CONN: usize = 1 << 20;
/// The master-dead pipe.
pub const MASTER_DEAD: Token = Token(usize::MAX - 1);
/// The signals.
pub const SIGNALS: Token = Token(usize::MAX - 2);
/// The status pipe (while a write would block).
pub const STATUS: Token = Token(usize::MAX - 3);

/// What a service does with its connections.
pub trait Service {
    /// Per-connection state.
    type Client;

    /// A connection arrived on listener `listener` (an index into the child's listeners).
    /// Returns the connection to serve and its state, or `None` when the service handled it
    /// completely (it is then closed).
    fn accepted(
        &mut self,
        stream: std::os::unix::net::UnixStream,
        listener: usize,
    ) -> Option<(Conn, Self::Client)>;

    /// Bytes arrived: `input` holds what is not consumed yet (the service drains what it used).
    /// Returns false to close the connection.
    fn input(&mut self, client: &mut Self::Client, conn: &mut Conn, input: &mut Vec<u8>) -> bool;

    /// The connection's output is drained (for replies streamed in parts). Returns false to
    /// close the connection.
    fn drained(&mut self, _client: &mut Self::Client, _conn: &mut Conn) -> bool {
        true
    }

    /// The connection is gone (closed by either side).
    fn closed(&mut self, client: Self::Client);

    /// Once a second: housekeeping.
    fn tick(&mut self, _now: Instant) {}

    /// A connection that sends nothing for this long is closed (`None`: never).
    fn idle_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// The idle timeout expired: queue a last word for the client; the connection is closed
    /// once it is out.
    fn timed_out(&mut self, _client: &mut Self::Client, _conn: &mut Conn) {}

    /// True when the process has what it came for (a pop3 process bound to another uid): the
    /// loop returns 0 once no connection is left, after the status the last accept caused is
    /// written.
    fn done(&self) -> bool {
        false
    }

    /// False once the service wants no more connections (it asked the machine to close its
    /// listeners, which takes effect at the next turn of the loop).
    fn wants_more(&self) -> bool {
        true
    }
}

/// Registers what every roost child watches besides its clients: the signals of the child
/// protocol (and SIGUSR1 for a login process) and the master-dead pipe.
pub fn watch_runtime(
    poll: &Poll,
    env: &ChildEnv,
    usr1: bool,
) -> io::Result<signal_hook_mio::v1_0::Signals> {
    let mut wanted = vec![libc::SIGINT, libc::SIGTERM, libc::SIGQUIT];
    if usr1 {
        wanted.push(libc::SIGUSR1);
    }
    let mut signals = signal_hook_mio::v1_0::Signals::new(wanted)?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    poll.registry().register(
        &mut SourceFd(&env.master_dead_fd),
        MASTER_DEAD,
        Interest::WRITABLE,
    )?;
    Ok(signals)
}

/// Writes one status record; when the pipe is full, the status fd is watched for
/// writability (registered once, `registered` remembers it) so the machine hears
/// `StatusWritable`.
pub fn write_status_watched(
    env: &ChildEnv,
    available_count: u32,
    poll: &Poll,
    registered: &mut bool,
) -> ChildInput {
    let result = write_status(env, available_count);
    if result == ChildInput::StatusWouldBlock
        && !*registered
        && poll
            .registry()
            .register(&mut SourceFd(&env.status_fd), STATUS, Interest::WRITABLE)
            .is_ok()
    {
        *registered = true;
    }
    result
}

/// Whether the master (or this process's generation) is gone: the read end of the master-dead
/// pipe is closed. Asked when a peer such as auth or anvil hangs up, which at a shutdown is no
/// error worth a line: everyone is leaving.
pub fn master_gone(master_dead_fd: RawFd) -> bool {
    let mut fds = [libc::pollfd {
        fd: master_dead_fd,
        events: libc::POLLOUT,
        revents: 0,
    }];
    // SAFETY: one pollfd on our stack, no timeout.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    ready > 0 && fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// The child-protocol signal as core names it.
pub fn signal_of(number: i32) -> Signal {
    match number {
        libc::SIGINT => Signal::Int,
        libc::SIGQUIT => Signal::Quit,
        libc::SIGUSR1 => Signal::Usr1,
        _ => Signal::Term,
    }
}

struct Connection<C> {
    conn: Conn,
    client: C,
    input: Vec<u8>,
    /// When the client last sent something.
    last_input: StdInstant,
}

/// Runs `service` as a roost child until the child machine says exit; returns the exit status.
pub fn run<S: Service>(env: &ChildEnv, config: ChildConfig, service: &mut S) -> io::Result<i32> {
    let start = StdInstant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    let mut poll = Poll::new()?;
    let mut signals = watch_runtime(&poll, env, false)?;
    let mut child = Child::new(config, now());
    child.handle(ChildInput::InitDone, now());
    let mut listening = Listening::default();
    let mut conns: BTreeMap<usize, Connection<S::Client>> = BTreeMap::new();
    let mut next_token = FIRST_CONN;
    let mut events = Events::with_capacity(256);
    let mut last_tick = now();
    loop {
        if let Some(code) = drain(&mut child, env, &poll, &mut listening, now())? {
            return Ok(code);
        }
        if service.done() && conns.is_empty() {
            return Ok(0);
        }
        let mut timeout = std::time::Duration::from_secs(1);
        if let Some(at) = child.poll_timeout() {
            timeout = timeout.min(std::time::Duration::from_millis(
                at.as_millis().saturating_sub(now().as_millis()),
            ));
        }
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if child.poll_timeout().is_some_and(|at| at <= now()) {
            child.handle(ChildInput::Timeout, now());
        }
        if now().as_millis() >= last_tick.as_millis() + 1000 {
            last_tick = now();
            service.tick(last_tick);
            if let Some(limit) = service.idle_timeout() {
                let idle: Vec<usize> = conns
                    .iter()
                    .filter(|(_, c)| c.last_input.elapsed() >= limit)
                    .map(|(token, _)| *token)
                    .collect();
                for token in idle {
                    if let Some(c) = conns.get_mut(&token) {
                        service.timed_out(&mut c.client, &mut c.conn);
                        c.conn.close_gracefully();
                    }
                    close(&mut poll, &mut conns, token, service, &mut child, now());
                }
            }
        }
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    for signal in signals.pending() {
                        child.handle(ChildInput::Signal(signal_of(signal)), now());
                    }
                    // At once: a listener event later in this batch must see the listeners
                    // closed (a process that exits now must not take one more client first).
                    if let Some(code) = drain(&mut child, env, &poll, &mut listening, now())? {
                        return Ok(code);
                    }
                }
                MASTER_DEAD => {
                    if event.is_error() || event.is_write_closed() {
                        let _ = poll
                            .registry()
                            .deregister(&mut SourceFd(&env.master_dead_fd));
                        child.handle(ChildInput::MasterDead, now());
                        if let Some(code) = drain(&mut child, env, &poll, &mut listening, now())? {
                            return Ok(code);
                        }
                    }
                }
                STATUS => child.handle(ChildInput::StatusWritable, now()),
                Token(i) if i < env.listeners.len() => {
                    // Edge-triggered: take every waiting connection the machine allows.
                    while listening.accepting && service.wants_more() {
                        // SAFETY: accept4 on an inherited listening fd.
                        let fd = unsafe {
                            libc::accept4(
                                env.listeners[i],
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                libc::SOCK_CLOEXEC,
                            )
                        };
                        if fd < 0 {
                            break; // EAGAIN, or another process took it
                        }
                        // SAFETY: accept4 returned a new fd we own.
                        let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
                        child.handle(ChildInput::Accepted, now());
                        let served = service.accepted(stream, i);
                        if service.done() && served.is_none() && conns.is_empty() {
                            // Report busy before the process becomes something else.
                            drain(&mut child, env, &poll, &mut listening, now())?;
                            return Ok(0);
                        }
                        let Some((mut conn, client)) = served else {
                            child.handle(ChildInput::ClientClosed, now());
                            if let Some(code) =
                                drain(&mut child, env, &poll, &mut listening, now())?
                            {
                                return Ok(code);
                            }
                            continue;
                        };
                        let token = Token(next_token);
                        next_token += 1;
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if poll
                            .registry()
                            .register(&mut conn.stream, token, interest)
                            .is_err()
                        {
                            service.closed(client);
                            child.handle(ChildInput::ClientClosed, now());
                        } else {
                            let mut connection = Connection {
                                conn,
                                client,
                                input: Vec::new(),
                                last_input: StdInstant::now(),
                            };
                            // Bytes may be waiting already (a handed-over client's pipelining).
                            let open = serve(service, &mut connection);
                            conns.insert(token.0, connection);
                            if !open {
                                close(&mut poll, &mut conns, token.0, service, &mut child, now());
                            }
                        }
                        // Each accept changes the machine's mind about accepting, and a client
                        // served at once may have ended the process's work.
                        if let Some(code) = drain(&mut child, env, &poll, &mut listening, now())? {
                            return Ok(code);
                        }
                    }
                }
                Token(t) => {
                    let open = match conns.get_mut(&t) {
                        Some(connection) => serve(service, connection),
                        None => continue,
                    };
                    if !open {
                        close(&mut poll, &mut conns, t, service, &mut child, now());
                    }
                }
            }
        }
    }
}

/// How the loop watches the listeners, as the machine asked.
#[derive(Default)]
struct Listening {
    /// Registered for accepting.
    accepting: bool,
    /// Closed for good.
    closed: bool,
    /// The status pipe is registered for writability.
    status_registered: bool,
}

/// Carries out every output the machine has; `Some(code)` when it says exit.
fn drain(
    child: &mut Child,
    env: &ChildEnv,
    poll: &Poll,
    listening: &mut Listening,
    now: Instant,
) -> io::Result<Option<i32>> {
    while let Some(output) = child.poll_output() {
        match output {
            ChildOutput::WriteStatus { available_count } => {
                let result = write_status_watched(
                    env,
                    available_count,
                    poll,
                    &mut listening.status_registered,
                );
                child.handle(result, now);
            }
            ChildOutput::SetAccepting { on } if !listening.closed && on != listening.accepting => {
                for (i, fd) in env.listeners.iter().enumerate() {
                    if on {
                        poll.registry().register(
                            &mut SourceFd(fd),
                            Token(i),
                            Interest::READABLE,
                        )?;
                    } else {
                        poll.registry().deregister(&mut SourceFd(fd))?;
                    }
                }
                listening.accepting = on;
            }
            ChildOutput::SetAccepting { .. } => {}
            ChildOutput::CloseListeners => {
                for fd in &env.listeners {
                    if listening.accepting {
                        let _ = poll.registry().deregister(&mut SourceFd(fd));
                    }
                    // SAFETY: the listener fds are ours and never used again.
                    drop(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
                listening.accepting = false;
                listening.closed = true;
            }
            ChildOutput::AwaitStatusWritable | ChildOutput::Refuse => {}
            ChildOutput::DieCallback => {}
            ChildOutput::Exit(code) => return Ok(Some(code)),
        }
    }
    Ok(None)
}

/// Reads, hands the bytes to the service, flushes. Returns false when the connection is done.
fn serve<S: Service>(service: &mut S, c: &mut Connection<S::Client>) -> bool {
    loop {
        let more = match c.conn.read_into(&mut c.input) {
            Ok(more) => more,
            Err(_) => return false,
        };
        if !c.input.is_empty() {
            c.last_input = StdInstant::now();
        }
        if !c.input.is_empty() && !service.input(&mut c.client, &mut c.conn, &mut c.input) {
            c.conn.close_gracefully();
            return false;
        }
        if !more {
            break;
        }
    }
    if c.conn.flush().is_err() {
        return false;
    }
    if c.conn.pending_out() == 0 && !service.drained(&mut c.client, &mut c.conn) {
        c.conn.close_gracefully();
        return false;
    }
    !(c.conn.eof && c.conn.pending_out() == 0)
}

fn close<S: Service>(
    poll: &mut Poll,
    conns: &mut BTreeMap<usize, Connection<S::Client>>,
    token: usize,
    service: &mut S,
    child: &mut Child,
    now: Instant,
) {
    if let Some(mut c) = conns.remove(&token) {
        let _ = poll.registry().deregister(&mut c.conn.stream);
        service.closed(c.client);
        child.handle(ChildInput::ClientClosed, now);
    }
}

/// Wraps a std unix stream for the loop.
pub fn unix_conn(stream: std::os::unix::net::UnixStream) -> Option<Conn> {
    stream.set_nonblocking(true).ok()?;
    Some(Conn::new(
        Stream::Unix(mio::net::UnixStream::from_std(stream)),
        Vec::new(),
    ))
}
