//! The `pop3-login` built-in: POP3 before authentication, in a restricted environment (chroot
//! to `base_dir/login`, default_login_user), for one or many clients (the seed's
//! high-security and high-performance modes).
//!
//! Policy is in core and in the mail machines: the process-level table of clients and the
//! overflow kill are core's [`roost_core::login::Login`]; each client's conversation is
//! [`crate::mail::pop3::Login`]. This driver moves bytes between them and the sockets:
//!
//! client bytes → PROXY header (haproxy listeners) → TLS (`ssl = yes`, or after STLS) → lines →
//! POP3 login machine → `Authenticate`: anvil's penalty for the IP, then auth (`login/login`)
//! → `LoggedIn`: the client's socket goes to the post-login service (`login/pop3`,
//! [`super::handoff`]). A TLS client's socket cannot be handed over (the TLS state is here), so
//! the post-login process gets one end of a socketpair and this process stays as the TLS
//! proxy, as the seed describes; such a client is logged in and never killed.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant as StdInstant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use roost_core::login::{
    ClientId, ClientState, DisconnectReason, Input, ListenMode, Login as LoginTable, LoginConfig,
    Output,
};
use roost_core::time::Instant;

use super::conn::{Conn, Stream};
use super::handoff::{self, Handoff};
use super::server::{
    master_gone, signal_of, watch_runtime, write_status_watched, MASTER_DEAD, SIGNALS, STATUS,
};
use super::{error, info, Start};
use crate::mail::authwire::{AuthReply, AuthRequest, MAX_LINE as AUTH_MAX_LINE};
use crate::mail::pop3::{self, LineReader, LoginOutput, LoginSettings};
use crate::mail::proxy::{ProxyDecoder, TrustedNetworks};
use crate::runtime::ChildEnv;

const AUTH: Token = Token(usize::MAX - 4);
const ANVIL: Token = Token(usize::MAX - 5);
/// Client tokens: the client's socket is `2 × id`, its side link (handoff or proxy) `2 × id + 1`,
/// both above this.
const CLIENT_BASE: usize = 1 << 20;

/// A listener's flags from `ROOST_LISTENERS`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
struct ListenerFlags {
    ssl: bool,
    haproxy: bool,
}

fn listener_flags(spec: &str) -> Vec<ListenerFlags> {
    spec.split_whitespace()
        .map(|item| {
            let mut flags = ListenerFlags::default();
            for flag in item.split(':').skip(1) {
                match flag {
                    "ssl" => flags.ssl = true,
                    "haproxy" => flags.haproxy = true,
                    _ => {}
                }
            }
            flags
        })
        .collect()
}

/// Where a client is, as far as this driver is concerned.
enum Phase {
    /// Reading the PROXY header.
    Proxy(ProxyDecoder),
    /// Talking POP3 (TLS may be running underneath).
    Pop3,
    /// Handed over: waiting for the post-login process's `OK` on `link`.
    HandingOff { link: Conn, tls_pair: Option<Conn> },
    /// TLS proxy between the client and the post-login process.
    Proxying { link: Conn },
}

struct Client {
    conn: Conn,
    phase: Phase,
    remote_ip: IpAddr,
    local_ip: IpAddr,
    login: pop3::Login,
    lines: LineReader,
    input: Vec<u8>,
    /// Accepted on an `ssl = yes` listener.
    ssl: bool,
    /// STLS was accepted: the POP3 machine hears `tls_started` once the handshake is done.
    stls_pending: bool,
    /// Credentials waiting for anvil's penalty (and then its delay).
    waiting: Option<(String, String)>,
    /// The penalty delay ends.
    delay_until: Option<StdInstant>,
    /// Told to close: flush what is queued, then close.
    closing: bool,
    /// The user, once logged in (for the log).
    user: Option<String>,
}

struct Driver {
    start: Start,
    env: ChildEnv,
    poll: Poll,
    table: LoginTable,
    clock: StdInstant,
    listeners: Vec<(RawFd, ListenerFlags)>,
    listen_mode: ListenMode,
    listeners_open: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
    trusted: TrustedNetworks,
    disable_plaintext_auth: bool,
    clients: BTreeMap<u64, Client>,
    next_client: u64,
    auth: Option<(Conn, LineReader)>,
    /// Auth requests in flight: request id → client.
    auth_pending: BTreeMap<u32, ClientId>,
    next_auth_id: u32,
    /// The anvil link and its replies' reader; PENALTY-GET answers come in request order.
    anvil: Option<(Conn, LineReader)>,
    penalty_queue: VecDeque<ClientId>,
    /// Disconnects the machine asked for, not yet applied.
    kills: Vec<(ClientId, DisconnectReason)>,
    /// Clients whose lookup the machine found late (`AuthTimedOut`), not yet applied.
    late: Vec<ClientId>,
    status_registered: bool,
    rng: u64,
    exit: Option<i32>,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_millis(self.clock.elapsed().as_millis() as u64)
    }

    fn jitter(&mut self) -> u32 {
        // xorshift: the jitter only spreads kills, it guards nothing.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng as u32
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        self.table.handle(input, now);
        self.drain_table();
    }

    /// Carries out what core's login machine asks.
    fn drain_table(&mut self) {
        while let Some(output) = self.table.poll_output() {
            self.apply(output);
        }
    }

    /// Carries out one output of core's login machine.
    fn apply(&mut self, output: Output) {
        let now = self.now();
        match output {
            Output::WriteStatus { available_count } => {
                let result = write_status_watched(
                    &self.env,
                    available_count,
                    &self.poll,
                    &mut self.status_registered,
                );
                let input = match result {
                    roost_core::child::Input::StatusWritten => Input::StatusWritten,
                    roost_core::child::Input::StatusWouldBlock => Input::StatusWouldBlock,
                    _ => Input::StatusWriteFailed,
                };
                self.table.handle(input, now);
            }
            Output::AwaitStatusWritable => {}
            Output::SetListening { mode } => self.set_listening(mode),
            Output::CloseListeners => {
                self.set_listening(ListenMode::Off);
                for (fd, _) in self.listeners.drain(..) {
                    // SAFETY: our inherited listener, never used again.
                    unsafe { libc::close(fd) };
                }
                self.listeners_open = false;
            }
            Output::ReadFullState => {
                let full = self.env_notify_full();
                self.table.handle(Input::FullState { full }, now);
            }
            // Applied between events, when no client is taken out of the table.
            Output::Disconnect { client, reason } => self.kills.push((client, reason)),
            Output::AuthTimedOut { client } => self.late.push(client),
            Output::Refuse => {}
            Output::DieCallback => {}
            Output::Exit(code) => self.exit = Some(code),
        }
    }

    /// The login notify file says "all processes full" when its offset is 1 (§2.8).
    fn env_notify_full(&self) -> bool {
        let Some(fd) = std::env::var("ROOST_LOGIN_NOTIFY_FD")
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok())
        else {
            return false;
        };
        // SAFETY: lseek on an fd we inherited; it reads the shared offset, changes nothing.
        unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) == 1 }
    }

    fn set_listening(&mut self, mode: ListenMode) {
        if !self.listeners_open {
            return;
        }
        for (i, (fd, _)) in self.listeners.iter().enumerate() {
            if self.listen_mode != ListenMode::Off {
                let _ = self.poll.registry().deregister(&mut SourceFd(fd));
            }
            // A fresh registration: connections already waiting are reported (edge-triggered).
            if mode != ListenMode::Off {
                let _ =
                    self.poll
                        .registry()
                        .register(&mut SourceFd(fd), Token(i), Interest::READABLE);
            }
        }
        self.listen_mode = mode;
    }

    fn listener_event(&mut self, index: usize) {
        match self.listen_mode {
            ListenMode::Off => {}
            ListenMode::Overflow => {
                let jitter = self.jitter();
                self.handle(Input::ListenerReadable { jitter });
            }
            ListenMode::Accept => {
                while self.listen_mode == ListenMode::Accept {
                    let Some(&(fd, flags)) = self.listeners.get(index) else {
                        return;
                    };
                    // SAFETY: accept4 on our listening fd.
                    let conn = unsafe {
                        libc::accept4(
                            fd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                        )
                    };
                    if conn < 0 {
                        return; // drained, or another process took it
                    }
                    // SAFETY: a new fd from accept4.
                    let stream = unsafe { std::net::TcpStream::from_raw_fd(conn) };
                    self.accepted(stream, flags);
                }
                // The machine switched to Overflow while connections wait: report them.
                if self.listen_mode == ListenMode::Overflow {
                    let jitter = self.jitter();
                    self.handle(Input::ListenerReadable { jitter });
                }
            }
        }
    }

    fn accepted(&mut self, stream: std::net::TcpStream, flags: ListenerFlags) {
        let peer = stream
            .peer_addr()
            .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
        let local = stream
            .local_addr()
            .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
        let _ = stream.set_nodelay(true);
        let id = ClientId(self.next_client);
        self.next_client += 1;
        self.table
            .handle(Input::Accepted { client: id }, self.now());
        // Refuse comes at once if the machine did not want this client.
        let mut refused = false;
        let mut rest = Vec::new();
        while let Some(output) = self.table.poll_output() {
            if output == Output::Refuse {
                refused = true;
            } else {
                rest.push(output);
            }
        }
        if refused {
            drop(stream);
            self.requeue(rest);
            return;
        }
        self.requeue(rest);
        let mut conn = Conn::new(
            Stream::Tcp(mio::net::TcpStream::from_std(stream)),
            Vec::new(),
        );
        let token = Token(CLIENT_BASE + 2 * id.0 as usize);
        if self
            .poll
            .registry()
            .register(
                &mut conn.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.handle(Input::ClientClosed { client: id });
            return;
        }
        let phase = if flags.haproxy {
            match ProxyDecoder::new(peer, local, &self.trusted) {
                Ok(decoder) => Phase::Proxy(decoder),
                Err(e) => {
                    info(&format!("{e}: connection closed"));
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    self.handle(Input::ClientClosed { client: id });
                    return;
                }
            }
        } else {
            Phase::Pop3
        };
        let secured = peer.ip().is_loopback();
        let settings = LoginSettings {
            tls_available: self.tls.is_some(),
            tls_active: flags.ssl,
            secured,
            disable_plaintext_auth: self.disable_plaintext_auth,
        };
        if flags.ssl && !flags.haproxy {
            match &self.tls {
                Some(tls) => {
                    if conn.start_tls(tls.clone()).is_err() {
                        self.handle(Input::ClientClosed { client: id });
                        return;
                    }
                }
                None => {
                    error("ssl = yes listener without ssl_cert/ssl_key: connection closed");
                    let _ = self.poll.registry().deregister(&mut conn.stream);
                    self.handle(Input::ClientClosed { client: id });
                    return;
                }
            }
        }
        let mut client = Client {
            conn,
            phase,
            remote_ip: peer.ip(),
            local_ip: local.ip(),
            login: pop3::Login::new(settings),
            lines: LineReader::new(pop3::MAX_LINE),
            input: Vec::new(),
            ssl: flags.ssl,
            stls_pending: false,
            waiting: None,
            delay_until: None,
            closing: false,
            user: None,
        };
        // The greeting waits for the PROXY header; under TLS, rustls sends it after the
        // handshake.
        if matches!(client.phase, Phase::Pop3) {
            flush_login(&mut client);
        }
        self.clients.insert(id.0, client);
        self.client_event(id);
    }

    /// Outputs taken from the machine while accepting are carried out in order.
    fn requeue(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            self.apply(output);
        }
        self.drain_table();
    }

    /// The client's socket (or its side link) has news.
    fn client_event(&mut self, id: ClientId) {
        let Some(mut client) = self.clients.remove(&id.0) else {
            return;
        };
        let keep = self.serve(id, &mut client);
        if keep {
            self.clients.insert(id.0, client);
        } else {
            self.close(id, client);
        }
    }

    fn close(&mut self, id: ClientId, mut client: Client) {
        client.conn.close_gracefully();
        let _ = self.poll.registry().deregister(&mut client.conn.stream);
        match &mut client.phase {
            Phase::HandingOff { link, tls_pair } => {
                let _ = self.poll.registry().deregister(&mut link.stream);
                if let Some(pair) = tls_pair {
                    let _ = self.poll.registry().deregister(&mut pair.stream);
                }
            }
            Phase::Proxying { link } => {
                let _ = self.poll.registry().deregister(&mut link.stream);
            }
            _ => {}
        }
        self.auth_pending.retain(|_, c| *c != id);
        self.handle(Input::ClientClosed { client: id });
    }

    /// Returns false when the client is done.
    fn serve(&mut self, id: ClientId, client: &mut Client) -> bool {
        // While the post-login process takes over, the client's bytes stay in the kernel: they
        // are the post-login process's (plain) or are proxied once it answered (TLS).
        while !matches!(client.phase, Phase::HandingOff { .. }) {
            let more = match client.conn.read_into(&mut client.input) {
                Ok(more) => more,
                Err(e) => {
                    if !matches!(client.phase, Phase::Proxying { .. }) {
                        info(&format!("Disconnected ({e}): rip={}", client.remote_ip));
                    }
                    return false;
                }
            };
            if !self.consume(id, client) {
                return false;
            }
            if !more {
                break;
            }
        }
        if client.conn.flush().is_err() {
            return false;
        }
        if client.closing && client.conn.pending_out() == 0 {
            return false;
        }
        if client.conn.eof && client.conn.pending_out() == 0 {
            if let Phase::Proxy(decoder) = &client.phase {
                info(&format!("{}", decoder.eof()));
            }
            return false;
        }
        true
    }

    /// Hands what was read to the phase. Returns false when the client is done.
    fn consume(&mut self, id: ClientId, client: &mut Client) -> bool {
        if let Phase::Proxy(decoder) = &mut client.phase {
            if client.input.is_empty() {
                return true;
            }
            match decoder.feed(&std::mem::take(&mut client.input)) {
                Ok(None) => return true,
                Ok(Some(header)) => {
                    client.remote_ip = header.client.ip();
                    client.local_ip = header.server.ip();
                    client.phase = Phase::Pop3;
                    if client.ssl {
                        // The bytes after the header are the client's TLS hello.
                        let Some(tls) = self.tls.clone() else {
                            return false;
                        };
                        client.conn.unread(header.rest);
                        if client.conn.start_tls(tls).is_err()
                            || client.conn.read_into(&mut client.input).is_err()
                        {
                            return false;
                        }
                    } else {
                        client.input = header.rest;
                    }
                    flush_login(client);
                }
                Err(e) => {
                    info(&format!("{e}: connection closed"));
                    return false;
                }
            }
        }
        match &mut client.phase {
            Phase::Proxy(_) => true,
            Phase::Pop3 => {
                if client.stls_pending && client.conn.is_tls() && !client.conn.is_handshaking() {
                    client.stls_pending = false;
                    client.login.tls_started();
                }
                if !client.input.is_empty() {
                    client.lines.feed(&std::mem::take(&mut client.input));
                }
                while client.waiting.is_none()
                    && !client.closing
                    && !client.login.is_authenticating()
                {
                    let Some(line) = client.lines.next_line() else {
                        break;
                    };
                    match line {
                        Ok(line) => client.login.handle_line(&line),
                        Err(e) => client.login.handle_line_error(&e),
                    }
                    if !self.run_login_outputs(id, client) {
                        return false;
                    }
                }
                true
            }
            Phase::HandingOff { .. } => {
                // The client may pipeline before the post-login process takes over: keep it.
                true
            }
            Phase::Proxying { link } => {
                if !client.input.is_empty() {
                    if link.write(&client.input).is_err() {
                        return false;
                    }
                    client.input.clear();
                }
                if client.conn.eof {
                    return false;
                }
                true
            }
        }
    }

    /// Drains the POP3 machine's outputs for a client in the table; false when it is done.
    fn run_login_outputs(&mut self, id: ClientId, client: &mut Client) -> bool {
        while let Some(output) = client.login.poll_output() {
            match output {
                LoginOutput::Send(bytes) => {
                    if client.conn.write(&bytes).is_err() {
                        return false;
                    }
                }
                LoginOutput::Authenticate { user, password } => {
                    self.table.handle(
                        Input::ClientState {
                            client: id,
                            state: ClientState::InAuth,
                        },
                        self.now(),
                    );
                    client.waiting = Some((user, password));
                    self.ask_penalty(id, client);
                }
                LoginOutput::StartTls => {
                    let Some(tls) = self.tls.clone() else {
                        return false;
                    };
                    if client.conn.start_tls_after_flush(tls).is_err() {
                        return false;
                    }
                    client.stls_pending = true;
                }
                LoginOutput::LoggedIn { user, pipelined } => {
                    info(&format!(
                        "Login: user=<{user}>, method=PLAIN, rip={}, lip={}{}",
                        client.remote_ip,
                        client.local_ip,
                        if client.conn.is_tls() { ", TLS" } else { "" }
                    ));
                    client.user = Some(user.clone());
                    self.table.handle(
                        Input::ClientState {
                            client: id,
                            state: ClientState::HandingOff,
                        },
                        self.now(),
                    );
                    if !self.hand_off(id, client, user, pipelined) {
                        return false;
                    }
                }
                LoginOutput::Disconnect { reason } => {
                    info(&format!(
                        "Disconnected ({reason}): rip={}",
                        client.remote_ip
                    ));
                    client.closing = true;
                }
            }
        }
        self.drain_table();
        true
    }

    /// Asks anvil how long this IP must wait before its credentials are checked.
    fn ask_penalty(&mut self, id: ClientId, client: &mut Client) {
        let line = format!("PENALTY-GET\t{}\n", client.remote_ip);
        let sent = match &mut self.anvil {
            Some((conn, _)) => conn.write(line.as_bytes()).is_ok(),
            None => false,
        };
        if sent {
            self.penalty_queue.push_back(id);
        } else {
            self.anvil = None;
            self.send_auth(id, client);
        }
    }

    fn send_auth(&mut self, id: ClientId, client: &mut Client) {
        let Some((user, password)) = client.waiting.take() else {
            return;
        };
        client.delay_until = None;
        if self.auth.is_none() {
            self.connect_auth();
        }
        self.next_auth_id = self.next_auth_id.wrapping_add(1);
        let request = AuthRequest::Auth {
            id: self.next_auth_id,
            service: "pop3".to_owned(),
            user,
            password,
            remote_ip: client.remote_ip,
        };
        let sent = match &mut self.auth {
            Some((conn, _)) => conn.write(request.encode().as_bytes()).is_ok(),
            None => false,
        };
        if sent {
            self.auth_pending.insert(self.next_auth_id, id);
        } else {
            error("auth is not reachable: the client is told to try again");
            self.auth = None;
            self.auth_unavailable(id, client);
        }
    }

    fn connect_auth(&mut self) {
        let path = self.start.socket_path("login/login");
        match StdUnixStream::connect(&path) {
            Ok(stream) => {
                let _ = stream.set_nonblocking(true);
                let mut conn = Conn::new(
                    Stream::Unix(mio::net::UnixStream::from_std(stream)),
                    Vec::new(),
                );
                if self
                    .poll
                    .registry()
                    .register(
                        &mut conn.stream,
                        AUTH,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
                {
                    self.auth = Some((conn, LineReader::new(AUTH_MAX_LINE)));
                }
            }
            Err(e) => error(&format!("connect({}) failed: {e}", path.display())),
        }
    }

    fn auth_unavailable(&mut self, id: ClientId, client: &mut Client) {
        self.table.handle(
            Input::ClientState {
                client: id,
                state: ClientState::PreLogin,
            },
            self.now(),
        );
        client.login.auth_unavailable();
    }

    fn auth_result(&mut self, id: ClientId, client: &mut Client, ok: bool) {
        if ok {
            client.login.auth_succeeded();
        } else {
            let line = format!("PENALTY-INC\t{}\n", client.remote_ip);
            if let Some((conn, _)) = &mut self.anvil {
                let _ = conn.write(line.as_bytes());
            }
            self.table.handle(
                Input::ClientState {
                    client: id,
                    state: ClientState::PreLogin,
                },
                self.now(),
            );
            client.login.auth_failed();
        }
    }

    fn auth_event(&mut self) {
        let Some((mut conn, mut lines)) = self.auth.take() else {
            return;
        };
        let (received, alive) = read_lines(&mut conn, &mut lines);
        let mut replies = Vec::new();
        for line in received {
            match AuthReply::parse(&line) {
                Ok(reply) => replies.push(reply),
                Err(e) => error(&e.to_string()),
            }
        }
        if alive {
            self.auth = Some((conn, lines));
        } else {
            if !master_gone(self.env.master_dead_fd) {
                error("auth closed the connection");
            }
            let _ = self.poll.registry().deregister(&mut conn.stream);
            for (_, id) in std::mem::take(&mut self.auth_pending) {
                self.with_client(id, |driver, id, client| {
                    driver.auth_unavailable(id, client);
                    driver.run_login_outputs(id, client)
                });
            }
        }
        for reply in replies {
            let (request, ok) = match &reply {
                AuthReply::Ok { id, .. } => (*id, true),
                AuthReply::Fail { id, .. } => (*id, false),
                _ => continue,
            };
            let Some(id) = self.auth_pending.remove(&request) else {
                continue;
            };
            self.with_client(id, |driver, id, client| {
                driver.auth_result(id, client, ok);
                driver.run_login_outputs(id, client) && driver.consume(id, client)
            });
        }
    }

    fn anvil_event(&mut self) {
        let Some((mut conn, mut lines)) = self.anvil.take() else {
            return;
        };
        let (received, alive) = read_lines(&mut conn, &mut lines);
        let mut delays = Vec::new();
        for line in received {
            let ms = String::from_utf8(line)
                .ok()
                .and_then(|l| l.trim().parse::<u64>().ok());
            if let Some(id) = self.penalty_queue.pop_front() {
                delays.push((id, ms.unwrap_or(0)));
            }
        }
        if alive {
            self.anvil = Some((conn, lines));
        } else {
            if !master_gone(self.env.master_dead_fd) {
                error("anvil closed the connection; going on without penalties");
            }
            let _ = self.poll.registry().deregister(&mut conn.stream);
            delays.extend(self.penalty_queue.drain(..).map(|id| (id, 0)));
        }
        for (id, ms) in delays {
            self.with_client(id, |driver, id, client| {
                if ms == 0 {
                    driver.send_auth(id, client);
                } else {
                    client.delay_until = Some(StdInstant::now() + StdDuration::from_millis(ms));
                }
                driver.run_login_outputs(id, client)
            });
        }
    }

    fn with_client(
        &mut self,
        id: ClientId,
        f: impl FnOnce(&mut Driver, ClientId, &mut Client) -> bool,
    ) {
        let Some(mut client) = self.clients.remove(&id.0) else {
            return;
        };
        let keep = f(self, id, &mut client)
            && client.conn.flush().is_ok()
            && !(client.closing && client.conn.pending_out() == 0);
        if keep {
            self.clients.insert(id.0, client);
        } else {
            self.close(id, client);
        }
    }

    /// Sends the client to the post-login service. False when that failed at once.
    fn hand_off(
        &mut self,
        id: ClientId,
        client: &mut Client,
        user: String,
        pipelined: Vec<Vec<u8>>,
    ) -> bool {
        let path = self.start.socket_path(&post_login_socket(&self.start));
        let link = match StdUnixStream::connect(&path) {
            Ok(link) => link,
            Err(e) => {
                error(&format!(
                    "connect({}) failed: {e}: no post-login process",
                    path.display()
                ));
                let _ = client
                    .conn
                    .write(b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log.\r\n");
                client.closing = true;
                return true;
            }
        };
        let tls = client.conn.is_tls();
        // Lines read behind the credentials belong to the post-login process.
        let mut pipelined = pipelined;
        while let Some(Ok(line)) = client.lines.next_line() {
            pipelined.push(line);
        }
        if !tls {
            // A partial line cannot stay here: the socket leaves. It goes as a line of its own.
            let rest = client.lines.take_rest();
            if !rest.is_empty() {
                pipelined.push(rest);
            }
        }
        let (handed_fd, tls_pair) = if tls {
            let Ok((ours, theirs)) = StdUnixStream::pair() else {
                return false;
            };
            let _ = ours.set_nonblocking(true);
            (
                theirs,
                Some(Conn::new(
                    Stream::Unix(mio::net::UnixStream::from_std(ours)),
                    Vec::new(),
                )),
            )
        } else {
            // SAFETY: dup of the client's socket for the transfer; ours closes after OK.
            let dup =
                unsafe { libc::fcntl(client.conn.stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return false;
            }
            // SAFETY: a new fd we own.
            (unsafe { StdUnixStream::from_raw_fd(dup) }, None)
        };
        let handoff = Handoff {
            user,
            remote_ip: Some(client.remote_ip),
            local_ip: Some(client.local_ip),
            tls,
            hops: 0,
            pipelined,
        };
        if let Err(e) = handoff::send(link.as_raw_fd(), &handoff, handed_fd.as_raw_fd()) {
            error(&format!("handoff failed: {e}"));
            return false;
        }
        drop(handed_fd);
        let _ = link.set_nonblocking(true);
        let mut link = Conn::new(
            Stream::Unix(mio::net::UnixStream::from_std(link)),
            Vec::new(),
        );
        let token = Token(CLIENT_BASE + 2 * id.0 as usize + 1);
        if self
            .poll
            .registry()
            .register(&mut link.stream, token, Interest::READABLE)
            .is_err()
        {
            return false;
        }
        client.phase = Phase::HandingOff { link, tls_pair };
        true
    }

    /// The side link of a client (handoff reply, or the proxied post-login process) has news.
    fn link_event(&mut self, id: ClientId) {
        self.with_client(id, |driver, id, client| {
            match &mut client.phase {
                Phase::HandingOff { link, tls_pair } => {
                    let mut reply = Vec::new();
                    if link.read_into(&mut reply).is_err() {
                        return false;
                    }
                    if reply.is_empty() && !link.eof {
                        return true;
                    }
                    let ok = reply.starts_with(b"OK");
                    let _ = driver.poll.registry().deregister(&mut link.stream);
                    if !ok {
                        error("the post-login process refused the handoff");
                        return false;
                    }
                    match tls_pair.take() {
                        // Plain: the post-login process has the socket now; ours is closed
                        // without a word (a close of one reference does not end the connection).
                        None => false,
                        Some(mut pair) => {
                            driver.table.handle(
                                Input::ClientState {
                                    client: id,
                                    state: ClientState::LoggedIn,
                                },
                                driver.now(),
                            );
                            let token = Token(CLIENT_BASE + 2 * id.0 as usize + 1);
                            if driver
                                .poll
                                .registry()
                                .register(
                                    &mut pair.stream,
                                    token,
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .is_err()
                            {
                                return false;
                            }
                            // A partial line the client pipelined behind its credentials.
                            let rest = client.lines.take_rest();
                            if !rest.is_empty() && pair.write(&rest).is_err() {
                                return false;
                            }
                            client.phase = Phase::Proxying { link: pair };
                            // The client may have sent more while we waited.
                            driver.consume(id, client)
                        }
                    }
                }
                Phase::Proxying { link } => {
                    let mut from_post = Vec::new();
                    let result = link.read_into(&mut from_post);
                    if !from_post.is_empty() && client.conn.write(&from_post).is_err() {
                        return false;
                    }
                    if result.is_err() || link.eof || link.flush().is_err() {
                        // The session ended: flush the last reply, then close.
                        client.closing = true;
                    }
                    true
                }
                _ => true,
            }
        });
    }

    /// Tells the clients the machine chose to disconnect (overflow victims, pre-auth timeouts),
    /// and gives up on the peers that left a lookup unanswered for the auth timeout.
    fn apply_kills(&mut self) {
        let late = std::mem::take(&mut self.late);
        // Which peer each late lookup waits on, before either is given up on.
        let stuck = late
            .iter()
            .filter(|id| self.auth_pending.values().any(|c| c == *id))
            .count();
        if late.iter().any(|id| self.penalty_queue.contains(id)) {
            // anvil does not answer: every lookup on that connection goes with it, and the
            // clients go on without penalties, as when anvil hangs up.
            error(&format!(
                "anvil did not answer within {} s; going on without penalties",
                self.table.config().auth_timeout.as_secs()
            ));
            if let Some((mut conn, _)) = self.anvil.take() {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
            for id in std::mem::take(&mut self.penalty_queue) {
                // The auth lookup that follows is a new one, with a timeout of its own.
                for state in [ClientState::PreLogin, ClientState::InAuth] {
                    self.handle(Input::ClientState { client: id, state });
                }
                self.with_client(id, |driver, id, client| {
                    driver.send_auth(id, client);
                    driver.run_login_outputs(id, client)
                });
            }
        }
        if stuck > 0 {
            // auth does not answer: its clients hear a temporary failure instead of waiting
            // for the pre-auth timeout, and the connection is made anew for the next.
            error(&format!(
                "auth did not answer {stuck} request(s) within {} s: clients told to try again",
                self.table.config().auth_timeout.as_secs()
            ));
            if let Some((mut conn, _)) = self.auth.take() {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
            for (_, id) in std::mem::take(&mut self.auth_pending) {
                self.with_client(id, |driver, id, client| {
                    driver.auth_unavailable(id, client);
                    driver.run_login_outputs(id, client)
                });
            }
        }
        while !self.kills.is_empty() {
            for (id, reason) in std::mem::take(&mut self.kills) {
                self.with_client(id, |driver, id, client| {
                    match reason {
                        DisconnectReason::QueueFull => client.login.kill_queue_full(),
                        _ => client.login.timed_out(),
                    }
                    driver.run_login_outputs(id, client)
                });
            }
        }
    }

    fn timers(&mut self) {
        let now = StdInstant::now();
        let due: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.delay_until.is_some_and(|at| at <= now))
            .map(|(id, _)| ClientId(*id))
            .collect();
        for id in due {
            self.with_client(id, |driver, id, client| {
                driver.send_auth(id, client);
                driver.run_login_outputs(id, client)
            });
        }
        if self.table.poll_timeout().is_some_and(|at| at <= self.now()) {
            self.handle(Input::Timeout);
        }
    }

    fn next_timeout(&self) -> StdDuration {
        let mut timeout = StdDuration::from_secs(1);
        if let Some(at) = self.table.poll_timeout() {
            timeout = timeout.min(StdDuration::from_millis(
                at.as_millis().saturating_sub(self.now().as_millis()),
            ));
        }
        let now = StdInstant::now();
        for client in self.clients.values() {
            if let Some(at) = client.delay_until {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
        }
        timeout
    }
}

/// Reads a peer's (auth's, anvil's) replies: the complete lines, and whether the link is alive.
fn read_lines(conn: &mut Conn, lines: &mut LineReader) -> (Vec<Vec<u8>>, bool) {
    let mut input = Vec::new();
    let alive = conn.read_into(&mut input).is_ok() && !conn.eof;
    lines.feed(&input);
    let mut received = Vec::new();
    while let Some(line) = lines.next_line() {
        if let Ok(line) = line {
            received.push(line);
        }
    }
    (received, alive)
}

/// Sends what the POP3 machine queued (the greeting) before any line was read.
fn flush_login(client: &mut Client) {
    while let Some(output) = client.login.poll_output() {
        if let LoginOutput::Send(bytes) = output {
            let _ = client.conn.write(&bytes);
        }
    }
}

/// The post-login service's socket, relative to base_dir: `login/<protocol>`.
fn post_login_socket(start: &Start) -> String {
    let protocol = if start.service.protocol.is_empty() {
        "pop3"
    } else {
        start.service.protocol.as_str()
    };
    format!("login/{protocol}")
}

/// `roost --builtin pop3-login`.
pub fn main() -> i32 {
    super::main_of("pop3-login", run)
}

fn run(start: Start) -> Result<i32, String> {
    drive(start).map_err(|e| format!("pop3-login: {e}"))
}

fn drive(start: Start) -> io::Result<i32> {
    let global = &start.settings.global;
    // Certificates are read before the chroot: they live outside it.
    let tls = if global.ssl != "no" && !global.ssl_cert.is_empty() && !global.ssl_key.is_empty() {
        match crate::mail::tls::server_config(&global.ssl_cert, &global.ssl_key) {
            Ok(config) => Some(config),
            Err(e) => {
                error(&format!("TLS is off: {e}"));
                None
            }
        }
    } else {
        None
    };
    let trusted = TrustedNetworks::from_str(&global.haproxy_trusted_networks).unwrap_or_else(|e| {
        error(&format!("haproxy_trusted_networks: {e}"));
        TrustedNetworks::default()
    });
    let disable_plaintext_auth =
        start.global_bool("disable_plaintext_auth", true) || global.ssl == "required";
    start.restrict("pop3-login").map_err(io::Error::other)?;
    let env = start.env.clone();
    let flags = listener_flags(&std::env::var("ROOST_LISTENERS").unwrap_or_default());
    let listeners = env
        .listeners
        .iter()
        .enumerate()
        .map(|(i, fd)| (*fd, flags.get(i).copied().unwrap_or_default()))
        .collect();
    let poll = Poll::new()?;
    let mut signals = watch_runtime(&poll, &env, true)?;
    let mut config = LoginConfig::new(env.client_limit, env.service_count);
    config.die_with_master = env.die_with_master;
    // As the original's login processes (§4.4): when the master or the generation goes, the
    // clients still logging in get up to 30 s to finish instead of being cut at once; the
    // callback itself has nothing to do for POP3.
    config.has_die_callback = true;
    let clock = StdInstant::now();
    let anvil = start.anvil_fd.and_then(|fd| {
        // SAFETY: the master connected this socket for us.
        let stream = unsafe { StdUnixStream::from_raw_fd(fd) };
        stream.set_nonblocking(true).ok()?;
        let mut conn = Conn::new(
            Stream::Unix(mio::net::UnixStream::from_std(stream)),
            Vec::new(),
        );
        poll.registry()
            .register(
                &mut conn.stream,
                ANVIL,
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        Some((conn, LineReader::new(256)))
    });
    let mut driver = Driver {
        start,
        table: LoginTable::new(config, Instant::from_millis(0)),
        env,
        poll,
        clock,
        listeners,
        listen_mode: ListenMode::Off,
        listeners_open: true,
        tls,
        trusted,
        disable_plaintext_auth,
        clients: BTreeMap::new(),
        next_client: 1,
        auth: None,
        auth_pending: BTreeMap::new(),
        next_auth_id: 0,
        anvil,
        penalty_queue: VecDeque::new(),
        kills: Vec::new(),
        late: Vec::new(),
        status_registered: false,
        rng: u64::from(std::process::id()) | 1,
        exit: None,
    };
    driver.handle(Input::InitDone);
    let mut events = Events::with_capacity(256);
    loop {
        if let Some(code) = driver.exit {
            for (_, mut client) in std::mem::take(&mut driver.clients) {
                client.conn.close_gracefully();
            }
            return Ok(code);
        }
        let timeout = driver.next_timeout();
        match driver.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    for signal in signals.pending() {
                        driver.handle(Input::Signal(signal_of(signal)));
                    }
                }
                MASTER_DEAD => {
                    if event.is_error() || event.is_write_closed() {
                        let fd = driver.env.master_dead_fd;
                        let _ = driver.poll.registry().deregister(&mut SourceFd(&fd));
                        driver.handle(Input::MasterDead);
                    }
                }
                STATUS => driver.handle(Input::StatusWritable),
                AUTH => driver.auth_event(),
                ANVIL => driver.anvil_event(),
                Token(t) if t < CLIENT_BASE => driver.listener_event(t),
                Token(t) => {
                    let id = ClientId(((t - CLIENT_BASE) / 2) as u64);
                    if (t - CLIENT_BASE).is_multiple_of(2) {
                        driver.client_event(id);
                    } else {
                        driver.link_event(id);
                    }
                }
            }
        }
        driver.timers();
        driver.apply_kills();
        // Writes that were queued while handling other events.
        if let Some((conn, _)) = &mut driver.auth {
            let _ = conn.flush();
        }
        if let Some((conn, _)) = &mut driver.anvil {
            let _ = conn.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_flags_are_read_in_order() {
        assert_eq!(
            listener_flags("pop3 pop3s:ssl proxied:haproxy both:ssl:haproxy"),
            vec![
                ListenerFlags::default(),
                ListenerFlags {
                    ssl: true,
                    haproxy: false
                },
                ListenerFlags {
                    ssl: false,
                    haproxy: true
                },
                ListenerFlags {
                    ssl: true,
                    haproxy: true
                },
            ]
        );
    }
}
