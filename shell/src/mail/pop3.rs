//! POP3 (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH PLAIN), sans-IO.
//!
//! Owns three pieces: the [`LineReader`] that splits client bytes into bounded lines (a 1 MB
//! line is refused once and skipped, never buffered), the [`Login`] machine a pop3-login process
//! runs per connection until the user is authenticated, and the [`Session`] machine the post-login
//! pop3 process runs over a [`Mailbox`]. Neither machine does IO: the driver feeds lines and
//! results, and drains [`Login::poll_output`] / the replies [`Session::handle_line`] returns.
//! A message body is not rendered into one string: [`BodyEncoder`] dot-stuffs it chunk by chunk.
//!
//! Invariants: deletions are applied only by QUIT in the transaction state ([`SessionReply::Quit`]
//! carries them), so a client that drops mid-session loses nothing; a password never reaches
//! auth over an unencrypted connection unless `disable_plaintext_auth = no`.

use std::collections::VecDeque;

/// The longest command line accepted, CRLF included. RFC 2449 allows 255 octets per command;
/// SASL responses are longer, so roost allows more, but a bounded amount.
pub const MAX_LINE: usize = 8192;

/// Pre-login commands that fail before the connection is dropped (Dovecot's
/// CLIENT_MAX_BAD_COMMANDS).
pub const MAX_BAD_COMMANDS: u32 = 3;

/// Failed commands after which a post-login session is closed: a logged-in client is
/// trusted more than a pre-login one, but a runaway script must not loop forever.
pub const MAX_SESSION_BAD_COMMANDS: u32 = 20;

/// Lines a client may pipeline while its authentication is being checked.
pub const MAX_PIPELINED_LINES: usize = 32;

/// The greeting of a login process.
pub const GREETING: &str = "+OK roost ready.";

/// The text sent to the pre-login client the login process kills when all processes are full
/// (reference §2.8).
pub const QUEUE_FULL: &str = "-ERR Connection queue full";

/// The refusal of a password over a plaintext connection.
pub const PLAINTEXT_DISALLOWED: &str =
    "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.";

/// The reply to a failed authentication.
pub const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.";

/// A line the [`LineReader`] could not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line exceeded [`MAX_LINE`]; its bytes up to the next LF are discarded.
    #[error("line too long (more than {max} bytes)")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
}

/// Splits a byte stream into lines ending in CRLF or bare LF, with a length bound.
///
/// Memory stays bounded by `max` plus the complete lines of one `feed` call: the driver feeds
/// what one read returned and drains [`LineReader::next_line`] before reading again.
#[derive(Debug, Clone)]
pub struct LineReader {
    /// Complete lines (or overflow errors) not yet returned, in order.
    lines: VecDeque<Result<Vec<u8>, LineError>>,
    /// The incomplete line at the end of what was fed, at most `max` bytes.
    partial: Vec<u8>,
    /// The longest line accepted, terminator included.
    max: usize,
    /// True while the rest of an overlong line is being skipped.
    discarding: bool,
}

impl LineReader {
    /// A reader refusing lines longer than `max` bytes (terminator included).
    pub fn new(max: usize) -> LineReader {
        LineReader {
            lines: VecDeque::new(),
            partial: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Adds bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut segments = bytes.split(|&b| b == b'\n').peekable();
        while let Some(segment) = segments.next() {
            let complete = segments.peek().is_some();
            if !self.discarding {
                if self.partial.len() + segment.len() + usize::from(complete) > self.max {
                    // Refuse the line now, whether or not its end has arrived: its bytes
                    // are never kept.
                    self.partial.clear();
                    self.lines
                        .push_back(Err(LineError::TooLong { max: self.max }));
                    self.discarding = true;
                } else {
                    self.partial.extend_from_slice(segment);
                }
            }
            if complete {
                if self.discarding {
                    self.discarding = false;
                } else {
                    let mut line = std::mem::take(&mut self.partial);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.lines.push_back(Ok(line));
                }
            }
        }
    }

    /// The next complete line without its terminator, an error for an overlong one, or
    /// `None` when more bytes are needed.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        self.lines.pop_front()
    }

    /// Bytes of an incomplete line buffered after the returned lines (handed on to a
    /// post-login process); complete lines still queued come first.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        for line in self.lines.drain(..).flatten() {
            rest.extend_from_slice(&line);
            rest.extend_from_slice(b"\r\n");
        }
        rest.extend_from_slice(&std::mem::take(&mut self.partial));
        rest
    }
}

impl Default for LineReader {
    fn default() -> Self {
        LineReader::new(MAX_LINE)
    }
}

/// A POP3 command, its verb matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `CAPA`.
    Capa,
    /// `USER name`.
    User(String),
    /// `PASS secret` (the rest of the line, spaces included).
    Pass(String),
    /// `AUTH [mechanism [initial-response]]`.
    Auth {
        /// The mechanism, upper-cased; `None` asks for the list.
        mechanism: Option<String>,
        /// The initial response, still base64.
        initial: Option<String>,
    },
    /// `STLS`.
    Stls,
    /// `QUIT`.
    Quit,
    /// `NOOP`.
    Noop,
    /// `STAT`.
    Stat,
    /// `LIST [n]`.
    List(Option<String>),
    /// `UIDL [n]`.
    Uidl(Option<String>),
    /// `TOP n k` (arguments unparsed until the state needs them).
    Top(Vec<String>),
    /// `RETR n`.
    Retr(Option<String>),
    /// `DELE n`.
    Dele(Option<String>),
    /// `RSET`.
    Rset,
    /// Any other verb, upper-cased.
    Unknown(String),
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line was empty.
    #[error("empty command")]
    Empty,
    /// The line was not UTF-8.
    #[error("command is not UTF-8")]
    NotUtf8,
    /// A required argument was missing.
    #[error("{0} needs an argument")]
    MissingArgument(&'static str),
}

/// Parses one command line (without its terminator).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, Some(r)),
        None => (line, None),
    };
    if verb.is_empty() {
        return Err(ParseError::Empty);
    }
    let verb = verb.to_ascii_uppercase();
    let words: Vec<String> = rest
        .unwrap_or("")
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    let first = words.first().cloned();
    Ok(match verb.as_str() {
        "CAPA" => Command::Capa,
        "USER" => Command::User(first.ok_or(ParseError::MissingArgument("USER"))?),
        "PASS" => match rest {
            Some(r) if !r.is_empty() => Command::Pass(r.to_owned()),
            _ => return Err(ParseError::MissingArgument("PASS")),
        },
        "AUTH" => Command::Auth {
            mechanism: first.map(|m| m.to_ascii_uppercase()),
            initial: words.get(1).cloned(),
        },
        "STLS" => Command::Stls,
        "QUIT" => Command::Quit,
        "NOOP" => Command::Noop,
        "STAT" => Command::Stat,
        "LIST" => Command::List(first),
        "UIDL" => Command::Uidl(first),
        "TOP" => Command::Top(words),
        "RETR" => Command::Retr(first),
        "DELE" => Command::Dele(first),
        "RSET" => Command::Rset,
        _ => Command::Unknown(verb),
    })
}

/// Decodes standard base64 (RFC 4648, padding optional): SASL responses.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if text.len() - bytes.len() > 2 || bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// Encodes standard base64 with padding (test clients, AUTH continuations).
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut acc = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            acc |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((acc >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Splits a SASL PLAIN response (`authzid NUL authcid NUL password`) into user and password.
/// An authorization identity other than the user is refused: roost has no master users.
pub fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let authzid = parts.next()?;
    let authcid = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    if !authzid.is_empty() && authzid != authcid {
        return None;
    }
    Some((
        String::from_utf8(authcid.to_vec()).ok()?,
        String::from_utf8(password.to_vec()).ok()?,
    ))
}

/// The reply when auth cannot be asked.
pub const AUTH_UNAVAILABLE: &str = "-ERR [SYS/TEMP] Temporary authentication failure.";

/// What a login connection knows about its transport, given by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginSettings {
    /// The listener can do TLS (a certificate is configured), so STLS is offered.
    pub tls_available: bool,
    /// The connection is already encrypted (an `ssl = yes` listener).
    pub tls_active: bool,
    /// The connection is secured by other means (loopback, as Dovecot treats it).
    pub secured: bool,
    /// `disable_plaintext_auth` (or `ssl = required`, which the driver maps to it): passwords
    /// only over TLS or a secured connection.
    pub disable_plaintext_auth: bool,
}

/// What the login machine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutput {
    /// Write this line (CRLF appended already) to the client.
    Send(Vec<u8>),
    /// Ask auth about these credentials; answer with [`Login::auth_succeeded`] or
    /// [`Login::auth_failed`].
    Authenticate {
        /// The user name as the client gave it.
        user: String,
        /// The password.
        password: String,
    },
    /// The STLS reply is queued: flush it, run the TLS handshake, then call
    /// [`Login::tls_started`]. Bytes the client pipelined after STLS are discarded (RFC 2595).
    StartTls,
    /// The user is authenticated: hand the connection to the post-login process.
    LoggedIn {
        /// The authenticated user.
        user: String,
        /// Lines the client pipelined after its credentials, for the post-login process.
        pipelined: Vec<Vec<u8>>,
    },
    /// Close the connection after flushing what was sent.
    Disconnect {
        /// Why, for the log.
        reason: String,
    },
}

/// Where a login connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoginState {
    /// Reading commands.
    Commands,
    /// `AUTH PLAIN` sent without initial response; the next line is the response.
    AuthContinuation,
    /// Waiting for auth's answer about these credentials.
    AuthPending,
    /// STLS was accepted: plaintext lines the client pipelined are discarded (RFC 2595 §4)
    /// until the handshake completes.
    TlsPending,
    /// Handed over, killed or quit: nothing more is read.
    Done,
}

/// The pre-login state machine of one POP3 connection (what pop3-login runs).
#[derive(Debug, Clone)]
pub struct Login {
    /// The transport facts and the plaintext policy.
    settings: LoginSettings,
    /// Where the connection is.
    state: LoginState,
    /// The name given by USER, waiting for PASS.
    user: Option<String>,
    /// Failed commands so far.
    bad_commands: u32,
    /// The user whose credentials auth is checking.
    pending_user: Option<String>,
    /// Lines received while auth was checking.
    pipelined: VecDeque<Vec<u8>>,
    /// Outputs not yet drained.
    out: VecDeque<LoginOutput>,
}

impl Login {
    /// A new connection; the greeting is queued.
    pub fn new(settings: LoginSettings) -> Login {
        let mut login = Login {
            settings,
            state: LoginState::Commands,
            user: None,
            bad_commands: 0,
            pending_user: None,
            pipelined: VecDeque::new(),
            out: VecDeque::new(),
        };
        login.send(GREETING);
        login
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<LoginOutput> {
        self.out.pop_front()
    }

    /// True once the connection is handed over or closed.
    pub fn is_done(&self) -> bool {
        self.state == LoginState::Done
    }

    /// True while the client has not logged in: the overflow kill may choose it.
    pub fn is_pre_login(&self) -> bool {
        self.state != LoginState::Done
    }

    /// True while auth is checking this client's credentials: the overflow kill prefers
    /// other clients (reference §2.8).
    pub fn is_authenticating(&self) -> bool {
        self.state == LoginState::AuthPending
    }

    fn send(&mut self, text: &str) {
        let mut line = text.as_bytes().to_vec();
        line.extend_from_slice(b"\r\n");
        self.out.push_back(LoginOutput::Send(line));
    }

    fn disconnect(&mut self, text: Option<&str>, reason: &str) {
        if let Some(text) = text {
            self.send(text);
        }
        self.out.push_back(LoginOutput::Disconnect {
            reason: reason.to_owned(),
        });
        self.state = LoginState::Done;
    }

    fn bad_command(&mut self, text: &str) {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            self.send(text);
            self.disconnect(
                Some("-ERR Too many invalid commands."),
                "Too many invalid commands",
            );
        } else {
            self.send(text);
        }
    }

    fn plaintext_allowed(&self) -> bool {
        !self.settings.disable_plaintext_auth || self.settings.tls_active || self.settings.secured
    }

    /// The CAPA listing for the current transport.
    pub fn capabilities(&self) -> Vec<&'static str> {
        let mut caps = vec![
            "CAPA",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "PIPELINING",
            "AUTH-RESP-CODE",
        ];
        if self.settings.tls_available && !self.settings.tls_active {
            caps.push("STLS");
        }
        // Mechanisms that would only be refused are not advertised (as Dovecot does), so a
        // client knows to STLS first.
        if self.plaintext_allowed() {
            caps.push("USER");
            caps.push("SASL PLAIN");
        }
        caps
    }

    /// A line the overflow of the [`LineReader`] refused.
    pub fn handle_line_error(&mut self, error: &LineError) {
        match self.state {
            LoginState::Done | LoginState::TlsPending => {}
            // The reply to a line cannot be sent before auth answers the credentials, and
            // nobody legitimate pipelines an overlong line behind a password.
            LoginState::AuthPending => {
                self.disconnect(None, "Input line too long during authentication")
            }
            LoginState::Commands | LoginState::AuthContinuation => {
                self.state = LoginState::Commands;
                self.bad_command(&format!("-ERR Input line too long ({error})."));
            }
        }
    }

    /// One line from the client, without its terminator.
    pub fn handle_line(&mut self, line: &[u8]) {
        match self.state {
            LoginState::Done | LoginState::TlsPending => {}
            LoginState::AuthPending => {
                if self.pipelined.len() >= MAX_PIPELINED_LINES {
                    self.disconnect(None, "Too many pipelined commands during authentication");
                } else {
                    self.pipelined.push_back(line.to_vec());
                }
            }
            LoginState::AuthContinuation => {
                self.state = LoginState::Commands;
                self.on_plain_response(line);
            }
            LoginState::Commands => match parse_command(line) {
                Ok(command) => self.on_command(command),
                Err(ParseError::MissingArgument(_)) => self.bad_command("-ERR Missing argument."),
                Err(_) => self.bad_command("-ERR Unknown command."),
            },
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Capa => {
                self.send("+OK");
                for cap in self.capabilities() {
                    self.send(cap);
                }
                self.send(".");
            }
            Command::Noop => self.send("+OK"),
            Command::Quit => self.disconnect(Some("+OK Logging out"), "logged out"),
            Command::Stls => {
                if self.settings.tls_active {
                    self.bad_command("-ERR TLS is already active.");
                } else if !self.settings.tls_available {
                    self.bad_command("-ERR TLS support isn't enabled.");
                } else {
                    self.send("+OK Begin TLS negotiation now.");
                    self.state = LoginState::TlsPending;
                    self.out.push_back(LoginOutput::StartTls);
                }
            }
            Command::User(name) => {
                if !self.plaintext_allowed() {
                    self.bad_command(PLAINTEXT_DISALLOWED);
                } else {
                    self.user = Some(name);
                    self.send("+OK");
                }
            }
            Command::Pass(password) => {
                if !self.plaintext_allowed() {
                    self.bad_command(PLAINTEXT_DISALLOWED);
                } else if let Some(user) = self.user.take() {
                    self.ask_auth(user, password);
                } else {
                    self.bad_command("-ERR No username given.");
                }
            }
            Command::Auth { mechanism, initial } => match mechanism.as_deref() {
                None => {
                    self.send("+OK");
                    self.send("PLAIN");
                    self.send(".");
                }
                Some("PLAIN") => {
                    if !self.plaintext_allowed() {
                        self.bad_command(PLAINTEXT_DISALLOWED);
                    } else if let Some(initial) = initial {
                        self.on_plain_response(initial.as_bytes());
                    } else {
                        self.send("+ ");
                        self.state = LoginState::AuthContinuation;
                    }
                }
                Some(_) => self.bad_command("-ERR Unsupported authentication mechanism."),
            },
            _ => self.bad_command("-ERR Unknown command."),
        }
    }

    fn on_plain_response(&mut self, line: &[u8]) {
        if line == b"*" {
            self.bad_command("-ERR Authentication aborted by client.");
            return;
        }
        let decoded = std::str::from_utf8(line).ok().and_then(base64_decode);
        match decoded {
            None => self.bad_command("-ERR Invalid base64 data in continued response"),
            Some(bytes) => match parse_plain(&bytes) {
                Some((user, password)) => self.ask_auth(user, password),
                None => self.bad_command(AUTH_FAILED),
            },
        }
    }

    fn ask_auth(&mut self, user: String, password: String) {
        self.state = LoginState::AuthPending;
        self.pending_user = Some(user.clone());
        self.out
            .push_back(LoginOutput::Authenticate { user, password });
    }

    /// Auth accepted the credentials: the connection goes to the post-login process.
    pub fn auth_succeeded(&mut self) {
        if self.state != LoginState::AuthPending {
            return;
        }
        let user = self.pending_user.take().unwrap_or_default();
        let pipelined = self.pipelined.drain(..).collect();
        self.state = LoginState::Done;
        self.out
            .push_back(LoginOutput::LoggedIn { user, pipelined });
    }

    /// Auth refused the credentials (after any penalty delay the driver applied); lines the
    /// client pipelined meanwhile are then handled in order.
    pub fn auth_failed(&mut self) {
        self.auth_ended(|login| login.bad_command(AUTH_FAILED));
    }

    /// auth could not be asked (not running, connection lost): the client is told to try again
    /// later. Not a failed login: no bad-command count, no penalty.
    pub fn auth_unavailable(&mut self) {
        self.auth_ended(|login| login.send(AUTH_UNAVAILABLE));
    }

    /// Auth's lookup ended without a login: `answer` tells the client, then the lines it
    /// pipelined meanwhile are handled in order (until one starts another lookup).
    fn auth_ended(&mut self, answer: impl FnOnce(&mut Login)) {
        if self.state != LoginState::AuthPending {
            return;
        }
        self.pending_user = None;
        self.state = LoginState::Commands;
        answer(self);
        while let Some(line) = self.pipelined.pop_front() {
            if self.state == LoginState::AuthPending || self.state == LoginState::Done {
                self.pipelined.push_front(line);
                break;
            }
            self.handle_line(&line);
        }
    }

    /// The TLS handshake STLS asked for completed: USER/PASS are allowed from now on when
    /// plaintext authentication is disabled, and STLS is no longer offered.
    pub fn tls_started(&mut self) {
        self.settings.tls_active = true;
        self.user = None;
        if self.state == LoginState::TlsPending {
            self.state = LoginState::Commands;
        }
    }

    /// The login process chose this connection as the victim of an overflow (reference §2.8).
    pub fn kill_queue_full(&mut self) {
        if self.state != LoginState::Done {
            self.disconnect(Some(QUEUE_FULL), "Connection queue full");
        }
    }

    /// The pre-auth timeout expired.
    pub fn timed_out(&mut self) {
        if self.state != LoginState::Done {
            self.disconnect(
                Some("-ERR Disconnected for inactivity."),
                "Disconnected for inactivity",
            );
        }
    }
}

/// One message as POP3 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Size in octets with CRLF line endings (what LIST and STAT report).
    pub size: u64,
    /// The unique id UIDL reports (printable ASCII, no spaces).
    pub uidl: String,
}

/// The mailbox a post-login POP3 session serves.
pub trait Mailbox {
    /// The messages at the start of the session, in POP3 order (message n is index n-1).
    fn messages(&self) -> &[MessageInfo];
    /// Opens message `index` for reading; a message that vanished is an error.
    fn open(&mut self, index: usize) -> std::io::Result<Box<dyn std::io::Read + Send>>;
    /// Removes the messages at these indices (called at QUIT only).
    fn expunge(&mut self, indices: &[usize]) -> std::io::Result<()>;
}

/// What the post-login session answers to one line.
pub enum SessionReply {
    /// Write these bytes (complete lines).
    Send(Vec<u8>),
    /// Write `header`, then the body read from `body` through `encoder`, which ends it with
    /// `.\r\n`. An error reading the body closes the connection (the reply is cut).
    Message {
        /// The `+OK` line.
        header: Vec<u8>,
        /// The raw message.
        body: Box<dyn std::io::Read + Send>,
        /// Dot-stuffing and the TOP line limit.
        encoder: BodyEncoder,
    },
    /// QUIT: the deletions were applied (or failed); write these bytes and close.
    Quit(Vec<u8>),
    /// Too many bad commands: write these bytes and close.
    Disconnect(Vec<u8>),
}

impl std::fmt::Debug for SessionReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionReply::Send(b) => write!(f, "Send({:?})", String::from_utf8_lossy(b)),
            SessionReply::Message { header, .. } => {
                write!(f, "Message({:?})", String::from_utf8_lossy(header))
            }
            SessionReply::Quit(b) => write!(f, "Quit({:?})", String::from_utf8_lossy(b)),
            SessionReply::Disconnect(b) => {
                write!(f, "Disconnect({:?})", String::from_utf8_lossy(b))
            }
        }
    }
}

/// The transaction state of a post-login POP3 process over one mailbox.
pub struct Session<M: Mailbox> {
    /// The mailbox.
    mailbox: M,
    /// Per message: marked for deletion.
    deleted: Vec<bool>,
    /// Failed commands so far.
    bad_commands: u32,
    /// QUIT was handled.
    done: bool,
}

fn line(text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    v.extend_from_slice(b"\r\n");
    v
}

impl<M: Mailbox> Session<M> {
    /// A session over `mailbox`.
    pub fn new(mailbox: M) -> Session<M> {
        let count = mailbox.messages().len();
        Session {
            mailbox,
            deleted: vec![false; count],
            bad_commands: 0,
            done: false,
        }
    }

    /// The first line the post-login process sends.
    pub fn greeting(&self) -> Vec<u8> {
        line("+OK Logged in.")
    }

    /// The mailbox (tests, and the driver at the end).
    pub fn mailbox(&self) -> &M {
        &self.mailbox
    }

    /// Messages marked for deletion, as indices.
    pub fn marked(&self) -> Vec<usize> {
        (0..self.deleted.len())
            .filter(|&i| self.deleted[i])
            .collect()
    }

    fn error(&mut self, text: &str) -> SessionReply {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_SESSION_BAD_COMMANDS {
            self.done = true;
            let mut bytes = line(text);
            bytes.extend(line("-ERR Too many invalid commands."));
            return SessionReply::Disconnect(bytes);
        }
        SessionReply::Send(line(text))
    }

    /// Parses a message number: 1-based, present, not deleted.
    fn message(&self, arg: Option<&str>) -> Result<usize, String> {
        let arg = arg.ok_or_else(|| "-ERR Missing message number.".to_owned())?;
        let n: usize = arg
            .parse()
            .map_err(|_| format!("-ERR Invalid message number: {arg}"))?;
        if n == 0 || n > self.deleted.len() {
            return Err(format!("-ERR There's no message {n}."));
        }
        if self.deleted[n - 1] {
            return Err("-ERR Message is deleted.".to_owned());
        }
        Ok(n - 1)
    }

    /// A line the [`LineReader`] refused.
    pub fn handle_line_error(&mut self, error: &LineError) -> SessionReply {
        self.error(&format!("-ERR Input line too long ({error})."))
    }

    /// One line from the client, without its terminator.
    pub fn handle_line(&mut self, input: &[u8]) -> SessionReply {
        if self.done {
            return SessionReply::Send(Vec::new());
        }
        let command = match parse_command(input) {
            Ok(c) => c,
            Err(ParseError::MissingArgument(_)) => return self.error("-ERR Missing argument."),
            Err(_) => return self.error("-ERR Unknown command."),
        };
        match command {
            Command::Capa => {
                let mut out = line("+OK");
                for cap in ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "USER"] {
                    out.extend(line(cap));
                }
                out.extend(line("."));
                SessionReply::Send(out)
            }
            Command::Noop => SessionReply::Send(line("+OK")),
            Command::Stat => {
                let (count, size) = self
                    .live()
                    .fold((0u64, 0u64), |(c, s), (_, m)| (c + 1, s + m.size));
                SessionReply::Send(line(&format!("+OK {count} {size}")))
            }
            Command::List(arg) => self.on_listing(arg, |m| m.size.to_string()),
            Command::Uidl(arg) => self.on_listing(arg, |m| m.uidl.clone()),
            Command::Retr(arg) => match self.message(arg.as_deref()) {
                Err(e) => self.error(&e),
                Ok(i) => self.on_message(i, None),
            },
            Command::Top(args) => {
                let lines = args.get(1).and_then(|k| k.parse::<u64>().ok());
                match (self.message(args.first().map(String::as_str)), lines) {
                    (Err(e), _) => self.error(&e),
                    (Ok(_), None) => self.error("-ERR Invalid number of lines."),
                    (Ok(i), Some(k)) => self.on_message(i, Some(k)),
                }
            }
            Command::Dele(arg) => match self.message(arg.as_deref()) {
                Err(e) => self.error(&e),
                Ok(i) => {
                    self.deleted[i] = true;
                    SessionReply::Send(line("+OK Marked to be deleted."))
                }
            },
            Command::Rset => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                SessionReply::Send(line("+OK"))
            }
            Command::Quit => {
                self.done = true;
                let marked = self.marked();
                if marked.is_empty() {
                    return SessionReply::Quit(line("+OK Logging out."));
                }
                match self.mailbox.expunge(&marked) {
                    Ok(()) => SessionReply::Quit(line("+OK Logging out, messages deleted.")),
                    Err(_) => SessionReply::Quit(line(
                        "-ERR [SYS/TEMP] Couldn't expunge messages: internal error.",
                    )),
                }
            }
            _ => self.error("-ERR Unknown command."),
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &MessageInfo)> {
        self.mailbox
            .messages()
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted[*i])
    }

    fn on_listing(
        &mut self,
        arg: Option<String>,
        field: impl Fn(&MessageInfo) -> String,
    ) -> SessionReply {
        match arg {
            Some(arg) => match self.message(Some(&arg)) {
                Err(e) => self.error(&e),
                Ok(i) => {
                    let value = field(&self.mailbox.messages()[i]);
                    SessionReply::Send(line(&format!("+OK {} {value}", i + 1)))
                }
            },
            None => {
                let mut out = line("+OK");
                for (i, m) in self.live() {
                    out.extend(line(&format!("{} {}", i + 1, field(m))));
                }
                out.extend(line("."));
                SessionReply::Send(out)
            }
        }
    }

    fn on_message(&mut self, index: usize, top: Option<u64>) -> SessionReply {
        let size = self.mailbox.messages()[index].size;
        match self.mailbox.open(index) {
            Err(_) => self.error(&format!(
                "-ERR [SYS/TEMP] Message {} vanished or cannot be read.",
                index + 1
            )),
            Ok(body) => {
                let header = match top {
                    None => line(&format!("+OK {size} octets")),
                    Some(_) => line("+OK"),
                };
                SessionReply::Message {
                    header,
                    body,
                    encoder: BodyEncoder::new(top),
                }
            }
        }
    }
}

/// Turns a raw message into its POP3 multi-line form, chunk by chunk: bare LF becomes CRLF,
/// a line starting with `.` gets one more `.`, TOP stops after the header and k body lines,
/// and [`BodyEncoder::finish`] terminates with `.\r\n` (after a CRLF if the message lacked one).
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    /// The next byte starts a line.
    at_line_start: bool,
    /// The previous byte was CR (a CRLF split across chunks).
    after_cr: bool,
    /// The blank line ending the header was seen.
    in_body: bool,
    /// The current line is empty so far (detects the header's end).
    line_empty: bool,
    /// TOP: body lines still to send; `None` for RETR.
    body_lines_left: Option<u64>,
    /// The TOP limit was reached: the rest is skipped.
    stopped: bool,
}

impl BodyEncoder {
    /// An encoder for RETR (`None`) or TOP with `k` body lines.
    pub fn new(top: Option<u64>) -> BodyEncoder {
        BodyEncoder {
            at_line_start: true,
            after_cr: false,
            in_body: false,
            line_empty: true,
            body_lines_left: top,
            stopped: false,
        }
    }

    /// Encodes one chunk of the raw message into `out`.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.stopped {
                return;
            }
            if self.at_line_start {
                if self.in_body && self.body_lines_left == Some(0) {
                    self.stopped = true;
                    return;
                }
                if b == b'.' {
                    out.push(b'.');
                }
                self.at_line_start = false;
                self.line_empty = true;
            }
            match b {
                b'\n' => {
                    if !self.after_cr {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                    self.at_line_start = true;
                    if self.in_body {
                        if let Some(left) = self.body_lines_left.as_mut() {
                            *left = left.saturating_sub(1);
                        }
                    } else if self.line_empty {
                        self.in_body = true;
                    }
                }
                b'\r' => out.push(b'\r'),
                _ => {
                    if self.after_cr {
                        // A lone CR inside a line counts as content.
                        self.line_empty = false;
                    }
                    out.push(b);
                    self.line_empty = false;
                }
            }
            self.after_cr = b == b'\r';
        }
    }

    /// True once TOP has sent all it will: the rest of the message need not be read.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Ends the reply: CRLF if the message did not end with one, then `.\r\n`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start && !self.stopped {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Streams a message reply to `dst` through `encoder`, 64 KiB at a time; returns the bytes
/// written.
pub fn copy_message(
    body: &mut dyn std::io::Read,
    mut encoder: BodyEncoder,
    dst: &mut dyn std::io::Write,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len() + buf.len() / 8);
    let mut written = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.clear();
        encoder.encode(&buf[..n], &mut out);
        dst.write_all(&out)?;
        written += out.len() as u64;
        if encoder.is_stopped() {
            // TOP of a large message: stop reading once its lines are out.
            break;
        }
    }
    out.clear();
    encoder.finish(&mut out);
    dst.write_all(&out)?;
    Ok(written + out.len() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> LoginSettings {
        LoginSettings {
            tls_available: true,
            tls_active: false,
            secured: false,
            disable_plaintext_auth: false,
        }
    }

    fn drain(login: &mut Login) -> Vec<LoginOutput> {
        std::iter::from_fn(|| login.poll_output()).collect()
    }

    fn sent(outputs: &[LoginOutput]) -> String {
        outputs
            .iter()
            .filter_map(|o| match o {
                LoginOutput::Send(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn auth_that_cannot_be_asked_is_a_temporary_failure_not_a_failed_login() {
        let mut login = Login::new(settings());
        drain(&mut login);
        for _ in 0..MAX_BAD_COMMANDS + 1 {
            login.handle_line(b"USER demo");
            login.handle_line(b"PASS demo");
            assert!(login.is_authenticating());
            drain(&mut login);
            login.auth_unavailable();
            let out = drain(&mut login);
            assert_eq!(sent(&out), format!("{AUTH_UNAVAILABLE}\r\n"));
            assert!(
                !login.is_done(),
                "an outage of auth never counts against the client"
            );
        }
        login.handle_line(b"USER demo");
        login.handle_line(b"PASS demo");
        drain(&mut login);
        login.auth_succeeded();
        assert!(matches!(
            drain(&mut login).last(),
            Some(LoginOutput::LoggedIn { .. })
        ));
    }

    #[test]
    fn verbs_are_case_insensitive_and_pass_keeps_spaces() {
        assert_eq!(
            parse_command(b"uSeR demo"),
            Ok(Command::User("demo".into()))
        );
        assert_eq!(
            parse_command(b"pass two words"),
            Ok(Command::Pass("two words".into()))
        );
        assert_eq!(
            parse_command(b"top 1 0"),
            Ok(Command::Top(vec!["1".into(), "0".into()]))
        );
        assert_eq!(parse_command(b""), Err(ParseError::Empty));
        assert_eq!(
            parse_command(b"USER"),
            Err(ParseError::MissingArgument("USER"))
        );
        assert_eq!(parse_command(b"\xff"), Err(ParseError::NotUtf8));
    }

    #[test]
    fn line_reader_accepts_crlf_and_bare_lf() {
        let mut r = LineReader::default();
        r.feed(b"USER a\r\nPASS b\nQU");
        assert_eq!(r.next_line(), Some(Ok(b"USER a".to_vec())));
        assert_eq!(r.next_line(), Some(Ok(b"PASS b".to_vec())));
        assert_eq!(r.next_line(), None);
        r.feed(b"IT\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"QUIT".to_vec())));
    }

    #[test]
    fn a_one_megabyte_line_is_refused_once_and_never_buffered() {
        let mut r = LineReader::new(1024);
        let big = vec![b'a'; 1 << 20];
        for chunk in big.chunks(4096) {
            r.feed(chunk);
            assert!(r.partial.len() <= 1024 && r.lines.len() <= 1, "buffer grew");
        }
        r.feed(b"\r\nNOOP\r\n");
        assert_eq!(r.next_line(), Some(Err(LineError::TooLong { max: 1024 })));
        assert_eq!(r.next_line(), Some(Ok(b"NOOP".to_vec())));
        assert_eq!(r.next_line(), None);
    }

    #[test]
    fn greeting_and_capa_offer_stls_only_when_tls_is_available_and_inactive() {
        let mut login = Login::new(settings());
        login.handle_line(b"CAPA");
        let text = sent(&drain(&mut login));
        assert!(text.starts_with("+OK roost ready.\r\n+OK\r\n"));
        for cap in [
            "TOP",
            "UIDL",
            "RESP-CODES",
            "PIPELINING",
            "STLS",
            "USER",
            "SASL PLAIN",
        ] {
            assert!(
                text.contains(&format!("{cap}\r\n")),
                "{cap} missing: {text}"
            );
        }
        assert!(text.ends_with(".\r\n"));
        let mut tls = Login::new(LoginSettings {
            tls_active: true,
            ..settings()
        });
        tls.handle_line(b"CAPA");
        assert!(!sent(&drain(&mut tls)).contains("STLS"));
    }

    #[test]
    fn capa_hides_plaintext_mechanisms_until_tls_when_plaintext_is_disallowed() {
        let mut login = Login::new(LoginSettings {
            disable_plaintext_auth: true,
            ..settings()
        });
        login.handle_line(b"CAPA");
        let text = sent(&drain(&mut login));
        assert!(text.contains("STLS\r\n"));
        assert!(!text.contains("USER") && !text.contains("SASL"), "{text}");
        login.handle_line(b"STLS");
        drain(&mut login);
        login.tls_started();
        login.handle_line(b"CAPA");
        let text = sent(&drain(&mut login));
        assert!(text.contains("USER\r\n") && text.contains("SASL PLAIN\r\n"));
        assert!(!text.contains("STLS"));
    }

    #[test]
    fn user_pass_asks_auth_and_success_hands_over_with_pipelined_lines() {
        let mut login = Login::new(settings());
        login.handle_line(b"USER demo");
        login.handle_line(b"PASS demo");
        let out = drain(&mut login);
        assert!(out.contains(&LoginOutput::Authenticate {
            user: "demo".into(),
            password: "demo".into()
        }));
        login.handle_line(b"STAT");
        login.auth_succeeded();
        assert_eq!(
            drain(&mut login),
            vec![LoginOutput::LoggedIn {
                user: "demo".into(),
                pipelined: vec![b"STAT".to_vec()]
            }]
        );
        assert!(login.is_done());
    }

    #[test]
    fn failed_auth_replies_and_counts_as_a_bad_command() {
        let mut login = Login::new(settings());
        for _ in 0..2 {
            login.handle_line(b"USER demo");
            login.handle_line(b"PASS wrong");
            login.auth_failed();
        }
        let text = sent(&drain(&mut login));
        assert_eq!(text.matches(AUTH_FAILED).count(), 2);
        login.handle_line(b"BOGUS");
        let out = drain(&mut login);
        assert!(matches!(out.last(), Some(LoginOutput::Disconnect { .. })));
        assert!(sent(&out).contains("-ERR Too many invalid commands."));
    }

    #[test]
    fn plaintext_auth_is_refused_on_an_unencrypted_connection_when_disabled() {
        let mut login = Login::new(LoginSettings {
            disable_plaintext_auth: true,
            ..settings()
        });
        login.handle_line(b"USER demo");
        login.handle_line(b"AUTH PLAIN AGRlbW8AZGVtbw==");
        let out = drain(&mut login);
        assert_eq!(sent(&out).matches(PLAINTEXT_DISALLOWED).count(), 2);
        assert!(!out
            .iter()
            .any(|o| matches!(o, LoginOutput::Authenticate { .. })));
        // After STLS the same credentials are accepted.
        login.handle_line(b"STLS");
        assert!(drain(&mut login).contains(&LoginOutput::StartTls));
        login.tls_started();
        login.handle_line(b"AUTH PLAIN AGRlbW8AZGVtbw==");
        assert!(drain(&mut login).contains(&LoginOutput::Authenticate {
            user: "demo".into(),
            password: "demo".into()
        }));
    }

    #[test]
    fn lines_pipelined_after_stls_are_discarded_until_the_handshake() {
        // RFC 2595 §4: a man in the middle could inject plaintext commands behind STLS that
        // would otherwise run inside the TLS session.
        let mut login = Login::new(settings());
        login.handle_line(b"STLS");
        login.handle_line(b"USER injected");
        login.handle_line(b"PASS injected");
        let out = drain(&mut login);
        assert_eq!(out.last(), Some(&LoginOutput::StartTls));
        login.tls_started();
        login.handle_line(b"PASS x");
        assert!(sent(&drain(&mut login)).contains("-ERR No username given."));
    }

    #[test]
    fn an_overlong_line_during_authentication_disconnects() {
        let mut login = Login::new(settings());
        login.handle_line(b"USER demo");
        login.handle_line(b"PASS demo");
        assert!(login.is_authenticating());
        login.handle_line_error(&LineError::TooLong { max: 10 });
        assert!(matches!(
            drain(&mut login).last(),
            Some(LoginOutput::Disconnect { .. })
        ));
        login.auth_succeeded();
        assert_eq!(
            login.poll_output(),
            None,
            "no handover after the disconnect"
        );
    }

    #[test]
    fn auth_plain_with_continuation_and_cancel() {
        let mut login = Login::new(settings());
        login.handle_line(b"AUTH PLAIN");
        assert!(sent(&drain(&mut login)).ends_with("+ \r\n"));
        login.handle_line(b"*");
        assert!(sent(&drain(&mut login)).contains("aborted"));
        login.handle_line(b"auth plain");
        login.handle_line(base64_encode(b"demo\0demo\0secret").as_bytes());
        assert!(drain(&mut login).contains(&LoginOutput::Authenticate {
            user: "demo".into(),
            password: "secret".into()
        }));
    }

    #[test]
    fn plain_with_a_foreign_authzid_is_refused() {
        assert_eq!(parse_plain(b"admin\0demo\0pw"), None);
        assert_eq!(
            parse_plain(b"\0demo\0pw"),
            Some(("demo".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"demo\0pw"), None);
    }

    #[test]
    fn stls_without_tls_and_queue_full_text() {
        let mut login = Login::new(LoginSettings {
            tls_available: false,
            ..settings()
        });
        login.handle_line(b"STLS");
        assert!(sent(&drain(&mut login)).contains("-ERR TLS support isn't enabled."));
        login.kill_queue_full();
        let out = drain(&mut login);
        assert_eq!(sent(&out), "-ERR Connection queue full\r\n");
        assert!(login.is_done());
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"\0demo\0demo"] {
            assert_eq!(base64_decode(&base64_encode(data)).as_deref(), Some(data));
        }
        assert_eq!(base64_decode("A"), None);
        assert_eq!(base64_decode("!!!!"), None);
    }

    /// A mailbox in memory for the transaction tests.
    struct Memory {
        infos: Vec<MessageInfo>,
        bodies: Vec<Option<Vec<u8>>>,
        expunged: Vec<usize>,
    }

    impl Memory {
        fn new(bodies: &[&[u8]]) -> Memory {
            Memory {
                infos: bodies
                    .iter()
                    .enumerate()
                    .map(|(i, b)| MessageInfo {
                        size: b.len() as u64,
                        uidl: format!("u{i}"),
                    })
                    .collect(),
                bodies: bodies.iter().map(|b| Some(b.to_vec())).collect(),
                expunged: Vec::new(),
            }
        }
    }

    impl Mailbox for Memory {
        fn messages(&self) -> &[MessageInfo] {
            &self.infos
        }
        fn open(&mut self, index: usize) -> std::io::Result<Box<dyn std::io::Read + Send>> {
            match self.bodies.get(index).cloned().flatten() {
                Some(b) => Ok(Box::new(std::io::Cursor::new(b))),
                None => Err(std::io::ErrorKind::NotFound.into()),
            }
        }
        fn expunge(&mut self, indices: &[usize]) -> std::io::Result<()> {
            self.expunged.extend_from_slice(indices);
            Ok(())
        }
    }

    /// A reply as the client reads it (the maildir tests use it too).
    pub(crate) fn text(reply: SessionReply) -> String {
        match reply {
            SessionReply::Send(b) | SessionReply::Quit(b) | SessionReply::Disconnect(b) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            SessionReply::Message {
                header,
                mut body,
                encoder,
            } => {
                let mut out = header;
                copy_message(&mut body, encoder, &mut out).expect("memory write");
                String::from_utf8_lossy(&out).into_owned()
            }
        }
    }

    #[test]
    fn stat_list_uidl_and_dele_then_rset() {
        let mut s = Session::new(Memory::new(&[b"a\r\n", b"bb\r\n"]));
        assert_eq!(text(s.handle_line(b"STAT")), "+OK 2 7\r\n");
        assert_eq!(text(s.handle_line(b"LIST")), "+OK\r\n1 3\r\n2 4\r\n.\r\n");
        assert_eq!(text(s.handle_line(b"UIDL 2")), "+OK 2 u1\r\n");
        assert_eq!(
            text(s.handle_line(b"DELE 1")),
            "+OK Marked to be deleted.\r\n"
        );
        assert_eq!(text(s.handle_line(b"STAT")), "+OK 1 4\r\n");
        assert_eq!(
            text(s.handle_line(b"LIST 1")),
            "-ERR Message is deleted.\r\n"
        );
        assert_eq!(
            text(s.handle_line(b"RETR 3")),
            "-ERR There's no message 3.\r\n"
        );
        assert_eq!(text(s.handle_line(b"RSET")), "+OK\r\n");
        assert_eq!(text(s.handle_line(b"STAT")), "+OK 2 7\r\n");
    }

    #[test]
    fn a_session_closes_after_too_many_bad_commands() {
        let mut s = Session::new(Memory::new(&[]));
        for _ in 1..MAX_SESSION_BAD_COMMANDS {
            assert!(matches!(s.handle_line(b"BOGUS"), SessionReply::Send(_)));
        }
        assert!(matches!(
            s.handle_line(b"BOGUS"),
            SessionReply::Disconnect(_)
        ));
    }

    #[test]
    fn deletions_apply_only_at_quit() {
        let mut s = Session::new(Memory::new(&[b"a\r\n", b"b\r\n"]));
        text(s.handle_line(b"DELE 2"));
        assert!(s.mailbox().expunged.is_empty(), "DELE must not expunge");
        // A client dropping here loses nothing: the driver simply drops the session.
        assert_eq!(
            text(s.handle_line(b"QUIT")),
            "+OK Logging out, messages deleted.\r\n"
        );
        assert_eq!(s.mailbox().expunged, vec![1]);
    }

    #[test]
    fn retr_dot_stuffs_and_terminates() {
        let mut s = Session::new(Memory::new(&[b"Subject: x\n\n.hidden\nlast"]));
        assert_eq!(
            text(s.handle_line(b"RETR 1")),
            "+OK 24 octets\r\nSubject: x\r\n\r\n..hidden\r\nlast\r\n.\r\n"
        );
    }

    #[test]
    fn top_sends_headers_and_k_body_lines() {
        let mut s = Session::new(Memory::new(&[b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"]));
        assert_eq!(
            text(s.handle_line(b"TOP 1 2")),
            "+OK\r\nA: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n.\r\n"
        );
        assert_eq!(
            text(s.handle_line(b"TOP 1 0")),
            "+OK\r\nA: 1\r\nB: 2\r\n\r\n.\r\n"
        );
        assert_eq!(
            text(s.handle_line(b"TOP 1")),
            "-ERR Invalid number of lines.\r\n"
        );
    }

    #[test]
    fn top_stops_reading_after_its_lines() {
        /// A reader that fails if read past its first chunk.
        struct OneChunk(bool);
        impl std::io::Read for OneChunk {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 {
                    return Err(std::io::Error::other("read past the TOP lines"));
                }
                self.0 = true;
                let chunk = b"H: v\n\nline1\nline2\n";
                buf[..chunk.len()].copy_from_slice(chunk);
                Ok(chunk.len())
            }
        }
        let mut out = Vec::new();
        copy_message(&mut OneChunk(false), BodyEncoder::new(Some(1)), &mut out)
            .expect("stops before the second read");
        assert_eq!(out, b"H: v\r\n\r\nline1\r\n.\r\n");
    }

    #[test]
    fn a_vanished_message_gives_an_error_reply() {
        let mut mb = Memory::new(&[b"x\r\n"]);
        mb.bodies[0] = None;
        let mut s = Session::new(mb);
        assert!(text(s.handle_line(b"RETR 1")).starts_with("-ERR [SYS/TEMP]"));
    }

    #[test]
    fn encoder_handles_crlf_split_across_chunks() {
        let mut e = BodyEncoder::new(None);
        let mut out = Vec::new();
        e.encode(b"a\r", &mut out);
        e.encode(b"\n.b\r\n", &mut out);
        e.finish(&mut out);
        assert_eq!(out, b"a\r\n..b\r\n.\r\n");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_login_or_session(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)
        ) {
            let mut reader = LineReader::new(256);
            let mut login = Login::new(settings());
            let mut session = Session::new(Memory::new(&[b"a\n.b\n", b"c"]));
            for chunk in &chunks {
                reader.feed(chunk);
                prop_assert!(reader.partial.len() <= 256);
                while let Some(line) = reader.next_line() {
                    match line {
                        Ok(line) => {
                            login.handle_line(&line);
                            let _ = text(session.handle_line(&line));
                        }
                        Err(e) => {
                            login.handle_line_error(&e);
                            let _ = text(session.handle_line_error(&e));
                        }
                    }
                    login.auth_failed();
                    while login.poll_output().is_some() {}
                }
            }
        }

        #[test]
        fn no_password_reaches_auth_in_plaintext_when_disallowed(
            lines in proptest::collection::vec(
                proptest::sample::select(vec![
                    "USER demo", "PASS demo", "AUTH PLAIN", "AUTH PLAIN AGRlbW8AZGVtbw==",
                    "AGRlbW8AZGVtbw==", "STLS", "CAPA", "NOOP", "auth plain", "user x", "*",
                ]),
                0..30,
            )
        ) {
            let mut login = Login::new(LoginSettings {
                tls_available: false,
                disable_plaintext_auth: true,
                ..settings()
            });
            for line in lines {
                login.handle_line(line.as_bytes());
                while let Some(out) = login.poll_output() {
                    let is_auth = matches!(out, LoginOutput::Authenticate { .. });
                    prop_assert!(!is_auth);
                }
            }
        }

        #[test]
        fn nothing_is_expunged_without_quit(
            ops in proptest::collection::vec((0u8..4, 0u8..4), 0..30)
        ) {
            let mut session = Session::new(Memory::new(&[b"a\n", b"b\n", b"c\n"]));
            for (op, n) in ops {
                let line = match op {
                    0 => format!("DELE {n}"),
                    1 => "RSET".to_owned(),
                    2 => format!("RETR {n}"),
                    _ => format!("TOP {n} 1"),
                };
                let _ = text(session.handle_line(line.as_bytes()));
            }
            prop_assert!(session.mailbox().expunged.is_empty());
            let marked = session.marked();
            // A session that ended on too many errors takes no QUIT: nothing is expunged then.
            let quit = matches!(session.handle_line(b"QUIT"), SessionReply::Quit(_));
            if quit {
                prop_assert_eq!(&session.mailbox().expunged, &marked);
            } else {
                prop_assert!(session.mailbox().expunged.is_empty());
            }
        }

        #[test]
        fn encoder_output_never_has_a_bare_terminator(body in proptest::collection::vec(any::<u8>(), 0..500)) {
            let mut out = Vec::new();
            copy_message(&mut &body[..], BodyEncoder::new(None), &mut out).expect("memory write");
            // The only line that is exactly "." is the last one.
            let text = out.split(|&b| b == b'\n').filter(|l| *l == b".\r").count();
            prop_assert_eq!(text, 1);
            prop_assert!(out.ends_with(b".\r\n"));
        }
    }
}
