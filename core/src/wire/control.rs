//! The control protocol between `roost stop|reload|log reopen|status` and the master's control
//! socket (after the master admin socket of reference §1.5). (`roost who` asks anvil, as
//! `doveadm who` does: the master does not count users.)
//!
//! Line based, one message per `\n`-terminated line, fields separated by tabs. Both ends first
//! send the handshake [`HANDSHAKE`] (`VERSION\troost-control\t1\t0`); a peer whose major version
//! differs is refused, a newer minor version is accepted.
//!
//! Requests (client to master): `STOP`, `RELOAD`, `LOG-REOPEN`, `STATUS`,
//! `PROCESS-STATUS[\tservice...]`.
//!
//! Replies (master to client): `+` or `+text` (done), `-text` (refused; one line, which may name
//! a `file:line`), or a table: rows, each a tab-separated line whose first field names its kind
//! (`SERVICE`, `PROCESS`), ended by an empty line. Tagging the rows keeps a table apart
//! from a one-line reply whatever a service is called, so a client needs no memory of what it
//! asked to decode what it gets.
//!
//! Escaping (Dovecot's tab-escape): inside a field, byte 0x01 is written `\x01 1`, NUL
//! `\x01 0`, tab `\x01 t`, CR `\x01 r` and LF `\x01 n` (without the spaces), so any text, an
//! error spanning several lines included, travels as one field of one line. Any other byte after
//! 0x01 is an error.
//!
//! Decoders are incremental ([`RequestDecoder`], [`ReplyDecoder`]): feed them bytes as they come,
//! take complete messages out. A line longer than [`MAX_LINE`] bytes is a fatal error (the
//! decoder stops; close the connection): memory stays bounded by what was fed since the last
//! drain plus one line. On the master's side a malformed request is not fatal, so the master can
//! answer `-...` and go on; on the client's side any error is.

use core::str::FromStr;

use thiserror::Error;

use crate::ids::Pid;

/// The name in the handshake.
pub const PROTOCOL_NAME: &str = "roost-control";
/// The major version this end speaks; a peer with another major version is refused.
pub const MAJOR_VERSION: u32 = 1;
/// The minor version this end speaks.
pub const MINOR_VERSION: u32 = 0;
/// The handshake line both ends send first.
pub const HANDSHAKE: &[u8] = b"VERSION\troost-control\t1\t0\n";
/// The longest line accepted, without its `\n`: 64 KiB.
pub const MAX_LINE: usize = 64 * 1024;
/// The most rows one table reply may have (a process status of a quarter million processes).
pub const MAX_TABLE_ROWS: usize = 256 * 1024;

/// The escape byte of the tab-escape scheme.
const ESCAPE: u8 = 0x01;

/// What went wrong while decoding.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A line longer than [`MAX_LINE`]. Fatal.
    #[error("control line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// The first line was not a `VERSION` handshake of this protocol. Fatal.
    #[error("expected the handshake VERSION\\troost-control\\t1\\t0, got {line:?}")]
    BadHandshake {
        /// The line received, escaped for display.
        line: String,
    },
    /// The peer speaks another major version. Fatal.
    #[error("incompatible control protocol version {major}.{minor} (this end speaks {MAJOR_VERSION}.{MINOR_VERSION})")]
    VersionMismatch {
        /// The peer's major version.
        major: u32,
        /// The peer's minor version.
        minor: u32,
    },
    /// A field had 0x01 followed by a byte that is not an escape.
    #[error("invalid escape sequence in control line")]
    InvalidEscape,
    /// A field was not UTF-8 once unescaped.
    #[error("control line is not UTF-8")]
    InvalidUtf8,
    /// An empty request line.
    #[error("empty control request")]
    EmptyRequest,
    /// A request word this end does not know.
    #[error("Unknown command: {0}")]
    UnknownCommand(String),
    /// A request with arguments it does not take, or an empty service name.
    #[error("{command}: invalid arguments")]
    BadArguments {
        /// The request word.
        command: &'static str,
    },
    /// A reply line that is neither `+`, `-`, a known row kind nor the end of a table. Fatal.
    #[error("unexpected control reply {0:?}")]
    UnknownReply(String),
    /// A table row with the wrong number of fields. Fatal.
    #[error("{kind} row has {got} fields, expected {expected}")]
    RowFieldCount {
        /// The row kind.
        kind: &'static str,
        /// Fields expected, the kind included.
        expected: usize,
        /// Fields received.
        got: usize,
    },
    /// A row field that does not parse. Fatal.
    #[error("{kind} row: invalid {field} {value:?}")]
    BadField {
        /// The row kind.
        kind: &'static str,
        /// The field's name.
        field: &'static str,
        /// Its text.
        value: String,
    },
    /// A one-line reply arrived in the middle of a table. Fatal.
    #[error("reply line inside a table")]
    UnterminatedTable,
    /// A table with more than [`MAX_TABLE_ROWS`] rows. Fatal.
    #[error("table reply longer than {max} rows")]
    TableTooLong {
        /// The limit.
        max: usize,
    },
}

impl ControlError {
    /// Whether the decoder stopped: the connection must be closed. A request the master cannot
    /// parse (unknown command, bad arguments, bad escape) is not fatal: the master answers it
    /// with `-` and reads on.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ControlError::LineTooLong { .. }
                | ControlError::BadHandshake { .. }
                | ControlError::VersionMismatch { .. }
                | ControlError::UnknownReply(_)
                | ControlError::RowFieldCount { .. }
                | ControlError::BadField { .. }
                | ControlError::UnterminatedTable
                | ControlError::TableTooLong { .. }
        )
    }
}

/// Appends `field` to `out`, tab-escaped.
pub fn escape_into(field: &str, out: &mut Vec<u8>) {
    for &byte in field.as_bytes() {
        match byte {
            ESCAPE => out.extend_from_slice(&[ESCAPE, b'1']),
            0 => out.extend_from_slice(&[ESCAPE, b'0']),
            b'\t' => out.extend_from_slice(&[ESCAPE, b't']),
            b'\r' => out.extend_from_slice(&[ESCAPE, b'r']),
            b'\n' => out.extend_from_slice(&[ESCAPE, b'n']),
            other => out.push(other),
        }
    }
}

/// The text of one tab-escaped field.
pub fn unescape(field: &[u8]) -> Result<String, ControlError> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&byte) = bytes.next() {
        if byte != ESCAPE {
            out.push(byte);
            continue;
        }
        out.push(match bytes.next() {
            Some(b'1') => ESCAPE,
            Some(b'0') => 0,
            Some(b't') => b'\t',
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            _ => return Err(ControlError::InvalidEscape),
        });
    }
    String::from_utf8(out).map_err(|_| ControlError::InvalidUtf8)
}

/// The fields of one line (without its `\n`), unescaped.
fn split_fields(line: &[u8]) -> Result<Vec<String>, ControlError> {
    line.split(|&b| b == b'\t').map(unescape).collect()
}

/// Writes `fields` as one line.
fn write_line<'a>(fields: impl IntoIterator<Item = &'a str>, out: &mut Vec<u8>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        escape_into(field, out);
    }
    out.push(b'\n');
}

/// One request from `roost` to the master.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Request {
    /// `roost stop`: shut the master down (reference §4.5).
    Stop,
    /// `roost reload`: read the configuration again (§4.3); the reply says whether it was taken.
    Reload,
    /// `roost log reopen`: reopen log files (§4.6).
    LogReopen,
    /// `roost status`: one `SERVICE` row per service.
    Status,
    /// `roost status` of processes: one `PROCESS` row per process of the named services, or of
    /// every service when none is named.
    ProcessStatus {
        /// Service names; none = all.
        services: Vec<String>,
    },
}

impl Request {
    /// The request word.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Stop => "STOP",
            Request::Reload => "RELOAD",
            Request::LogReopen => "LOG-REOPEN",
            Request::Status => "STATUS",
            Request::ProcessStatus { .. } => "PROCESS-STATUS",
        }
    }

    /// Appends the request line to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut fields = vec![self.command()];
        if let Request::ProcessStatus { services } = self {
            fields.extend(services.iter().map(String::as_str));
        }
        write_line(fields, out);
    }

    /// Parses one request line (without its `\n`).
    fn parse(line: &[u8]) -> Result<Request, ControlError> {
        if line.is_empty() {
            return Err(ControlError::EmptyRequest);
        }
        let mut fields = split_fields(line)?.into_iter();
        let command = fields.next().unwrap_or_default();
        let args: Vec<String> = fields.collect();
        let simple = |request: Request| {
            if args.is_empty() {
                Ok(request)
            } else {
                Err(ControlError::BadArguments {
                    command: request.command(),
                })
            }
        };
        match command.as_str() {
            "STOP" => simple(Request::Stop),
            "RELOAD" => simple(Request::Reload),
            "LOG-REOPEN" => simple(Request::LogReopen),
            "STATUS" => simple(Request::Status),
            "PROCESS-STATUS" => {
                if args.iter().any(String::is_empty) {
                    return Err(ControlError::BadArguments {
                        command: "PROCESS-STATUS",
                    });
                }
                Ok(Request::ProcessStatus { services: args })
            }
            _ => Err(ControlError::UnknownCommand(command)),
        }
    }
}

/// One row of `STATUS`: the SERVICE-STATUS fields of reference §1.5.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ServiceRow {
    /// The service's name.
    pub name: String,
    /// Processes.
    pub process_count: u32,
    /// Processes with a free slot.
    pub process_avail: u32,
    /// Effective process_limit.
    pub process_limit: u32,
    /// Effective client_limit.
    pub client_limit: u32,
    /// Seconds of throttling left, rounded up; 0 when not throttled.
    pub throttle_secs: u64,
    /// When a process last failed, Unix seconds; 0 = never.
    pub exit_failure_last: u64,
    /// Failed exits within the last second.
    pub exit_failures_in_sec: u32,
    /// When the process_limit warning was last logged, Unix seconds; 0 = never.
    pub last_drop_warning: u64,
    /// Connections wait for a free process before being dropped.
    pub listen_pending: bool,
    /// The master watches the service's listeners.
    pub listening: bool,
    /// The service was stopped (doveadm_stop in the original).
    pub stopped: bool,
    /// Processes ever created.
    pub total_created: u64,
    /// The configuration generation the service belongs to (roost's addition: after a reload
    /// the old generation's services are listed too).
    pub generation: u32,
}

/// One row of `PROCESS-STATUS`: the fields of reference §1.5.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ProcessRow {
    /// The service's name.
    pub service: String,
    /// The process's pid.
    pub pid: Pid,
    /// Free slots as last reported.
    pub available_count: u32,
    /// Connections accepted (approximate, as in the original).
    pub total_count: u64,
    /// When it last became idle, Unix seconds; 0 = busy.
    pub idle_start: u64,
    /// When it last reported its status, Unix seconds; 0 = never.
    pub last_status_update: u64,
    /// When it was last asked to die idle, Unix seconds; 0 = never.
    pub last_kill_sent: u64,
}

/// One row of a table reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Row {
    /// A `SERVICE` row.
    Service(ServiceRow),
    /// A `PROCESS` row.
    Process(ProcessRow),
}

/// One reply from the master.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Reply {
    /// `+text`: done; the text may be empty.
    Ok(String),
    /// `-text`: refused, with the reason (e.g. `roost.conf:12: Unknown setting: proces_limit`).
    Error(String),
    /// Rows ended by an empty line.
    Table(Vec<Row>),
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "y"
    } else {
        "n"
    }
}

impl Row {
    /// The row kind, its first field.
    fn kind(&self) -> &'static str {
        match self {
            Row::Service(_) => "SERVICE",
            Row::Process(_) => "PROCESS",
        }
    }

    /// Appends the row's line to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let fields: Vec<String> = match self {
            Row::Service(s) => vec![
                s.name.clone(),
                s.process_count.to_string(),
                s.process_avail.to_string(),
                s.process_limit.to_string(),
                s.client_limit.to_string(),
                s.throttle_secs.to_string(),
                s.exit_failure_last.to_string(),
                s.exit_failures_in_sec.to_string(),
                s.last_drop_warning.to_string(),
                yes_no(s.listen_pending).to_owned(),
                yes_no(s.listening).to_owned(),
                yes_no(s.stopped).to_owned(),
                s.total_created.to_string(),
                s.generation.to_string(),
            ],
            Row::Process(p) => vec![
                p.service.clone(),
                p.pid.0.to_string(),
                p.available_count.to_string(),
                p.total_count.to_string(),
                p.idle_start.to_string(),
                p.last_status_update.to_string(),
                p.last_kill_sent.to_string(),
            ],
        };
        write_line(
            core::iter::once(self.kind()).chain(fields.iter().map(String::as_str)),
            out,
        );
    }

    /// Parses the fields of a row line whose first field is a row kind; `None` if it is not.
    fn parse(fields: Vec<String>) -> Option<Result<Row, ControlError>> {
        let kind: &'static str = match fields.first()?.as_str() {
            "SERVICE" => "SERVICE",
            "PROCESS" => "PROCESS",
            _ => return None,
        };
        Some(Row::parse_kind(kind, fields))
    }

    fn parse_kind(kind: &'static str, fields: Vec<String>) -> Result<Row, ControlError> {
        let expected = match kind {
            "SERVICE" => 15,
            _ => 8,
        };
        if fields.len() != expected {
            return Err(ControlError::RowFieldCount {
                kind,
                expected,
                got: fields.len(),
            });
        }
        let mut f = fields.into_iter().skip(1);
        let mut next = || f.next().unwrap_or_default();
        fn num<T: FromStr>(
            kind: &'static str,
            field: &'static str,
            value: String,
        ) -> Result<T, ControlError> {
            // Only plain decimal digits: `+5` parses in Rust but is not what the encoder writes.
            let digits = value.strip_prefix('-').unwrap_or(&value);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ControlError::BadField { kind, field, value });
            }
            value
                .parse()
                .map_err(|_| ControlError::BadField { kind, field, value })
        }
        fn flag(
            kind: &'static str,
            field: &'static str,
            value: String,
        ) -> Result<bool, ControlError> {
            match value.as_str() {
                "y" => Ok(true),
                "n" => Ok(false),
                _ => Err(ControlError::BadField { kind, field, value }),
            }
        }
        Ok(match kind {
            "SERVICE" => Row::Service(ServiceRow {
                name: next(),
                process_count: num(kind, "process_count", next())?,
                process_avail: num(kind, "process_avail", next())?,
                process_limit: num(kind, "process_limit", next())?,
                client_limit: num(kind, "client_limit", next())?,
                throttle_secs: num(kind, "throttle_secs", next())?,
                exit_failure_last: num(kind, "exit_failure_last", next())?,
                exit_failures_in_sec: num(kind, "exit_failures_in_sec", next())?,
                last_drop_warning: num(kind, "last_drop_warning", next())?,
                listen_pending: flag(kind, "listen_pending", next())?,
                listening: flag(kind, "listening", next())?,
                stopped: flag(kind, "stopped", next())?,
                total_created: num(kind, "total_created", next())?,
                generation: num(kind, "generation", next())?,
            }),
            _ => Row::Process(ProcessRow {
                service: next(),
                pid: Pid(num(kind, "pid", next())?),
                available_count: num(kind, "available_count", next())?,
                total_count: num(kind, "total_count", next())?,
                idle_start: num(kind, "idle_start", next())?,
                last_status_update: num(kind, "last_status_update", next())?,
                last_kill_sent: num(kind, "last_kill_sent", next())?,
            }),
        })
    }
}

impl Reply {
    /// Appends the reply's line(s) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Ok(text) => {
                out.push(b'+');
                escape_into(text, out);
                out.push(b'\n');
            }
            Reply::Error(text) => {
                out.push(b'-');
                escape_into(text, out);
                out.push(b'\n');
            }
            Reply::Table(rows) => {
                for row in rows {
                    row.encode(out);
                }
                out.push(b'\n');
            }
        }
    }
}

/// The `\n`-framing shared by both decoders, with the handshake check and the line limit.
#[derive(Clone, Debug, Default)]
struct Lines {
    /// Bytes fed and not yet taken as lines.
    buffer: Vec<u8>,
    /// Where in `buffer` the next line starts.
    start: usize,
    /// Where in `buffer` the search for the next `\n` resumes.
    scanned: usize,
    /// The peer's handshake was accepted.
    greeted: bool,
    /// A fatal error was returned: nothing more is decoded.
    failed: bool,
    /// A fatal error found while feeding, returned by the next `next_line`.
    pending_error: Option<ControlError>,
}

impl Lines {
    fn feed(&mut self, bytes: &[u8]) {
        if self.failed || self.pending_error.is_some() {
            return;
        }
        // Drop what was taken already, so the buffer holds at most the undrained lines.
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        // Bound the unterminated tail before keeping it: a peer that never sends `\n` must not
        // make us grow.
        let (complete, tail) = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(at) => (at + 1, bytes.len() - at - 1),
            None => {
                let buffered = match self.buffer.iter().rposition(|&b| b == b'\n') {
                    Some(at) => self.buffer.len() - at - 1,
                    None => self.buffer.len(),
                };
                (0, buffered + bytes.len())
            }
        };
        if tail > MAX_LINE {
            // The complete lines before the runaway one are still delivered, then the error.
            self.buffer.extend_from_slice(&bytes[..complete]);
            self.pending_error = Some(ControlError::LineTooLong { max: MAX_LINE });
            return;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete line (without `\n`), the handshake already consumed.
    fn next_line(&mut self) -> Option<Result<Vec<u8>, ControlError>> {
        loop {
            if self.failed {
                return None;
            }
            let found = self.buffer[self.scanned..].iter().position(|&b| b == b'\n');
            let Some(offset) = found else {
                self.scanned = self.buffer.len();
                return self.pending_error.take().map(|e| self.fail(e));
            };
            let end = self.scanned + offset;
            let line = self.buffer[self.start..end].to_vec();
            self.start = end + 1;
            self.scanned = self.start;
            if line.len() > MAX_LINE {
                return Some(self.fail(ControlError::LineTooLong { max: MAX_LINE }));
            }
            if self.greeted {
                return Some(Ok(line));
            }
            if let Err(e) = check_handshake(&line) {
                return Some(self.fail(e));
            }
            self.greeted = true;
        }
    }

    fn fail<T>(&mut self, error: ControlError) -> Result<T, ControlError> {
        self.failed = true;
        self.buffer = Vec::new();
        self.start = 0;
        self.scanned = 0;
        Err(error)
    }
}

/// Checks a `VERSION\troost-control\tMAJOR\tMINOR` line.
fn check_handshake(line: &[u8]) -> Result<(), ControlError> {
    let bad = || ControlError::BadHandshake {
        line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
    };
    let text = core::str::from_utf8(line).map_err(|_| bad())?;
    let fields: Vec<&str> = text.split('\t').collect();
    let [version, name, major, minor] = fields.as_slice() else {
        return Err(bad());
    };
    if *version != "VERSION" || *name != PROTOCOL_NAME {
        return Err(bad());
    }
    let number = |s: &str| -> Result<u32, ControlError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (major, minor) = (number(major)?, number(minor)?);
    if major != MAJOR_VERSION {
        return Err(ControlError::VersionMismatch { major, minor });
    }
    Ok(())
}

/// The master's side: decodes the client's handshake and requests.
#[derive(Clone, Debug, Default)]
pub struct RequestDecoder {
    /// The line framing.
    lines: Lines,
}

impl RequestDecoder {
    /// A decoder expecting the client's handshake first.
    pub fn new() -> RequestDecoder {
        RequestDecoder::default()
    }

    /// Takes bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.lines.feed(bytes);
    }

    /// The next complete request, or an error for one line. After a fatal error
    /// ([`ControlError::is_fatal`]) it returns `None` forever.
    pub fn next_request(&mut self) -> Option<Result<Request, ControlError>> {
        Some(
            self.lines
                .next_line()?
                .and_then(|line| Request::parse(&line)),
        )
    }

    /// Whether a fatal error ended decoding.
    pub fn is_failed(&self) -> bool {
        self.lines.failed
    }
}

/// The client's side: decodes the master's handshake and replies.
#[derive(Clone, Debug, Default)]
pub struct ReplyDecoder {
    /// The line framing.
    lines: Lines,
    /// The rows of a table not yet ended.
    table: Option<Vec<Row>>,
}

impl ReplyDecoder {
    /// A decoder expecting the master's handshake first.
    pub fn new() -> ReplyDecoder {
        ReplyDecoder::default()
    }

    /// Takes bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.lines.feed(bytes);
    }

    /// The next complete reply. Every error is fatal: afterwards it returns `None` forever.
    pub fn next_reply(&mut self) -> Option<Result<Reply, ControlError>> {
        loop {
            let line = match self.lines.next_line()? {
                Ok(line) => line,
                Err(e) => return Some(Err(e)),
            };
            match self.parse_line(&line) {
                Ok(Some(reply)) => return Some(Ok(reply)),
                Ok(None) => continue,
                Err(e) => {
                    self.table = None;
                    return Some(self.lines.fail(e));
                }
            }
        }
    }

    /// Whether a fatal error ended decoding.
    pub fn is_failed(&self) -> bool {
        self.lines.failed
    }

    fn parse_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ControlError> {
        match line.first() {
            None => return Ok(Some(Reply::Table(self.table.take().unwrap_or_default()))),
            Some(b'+') | Some(b'-') if self.table.is_some() => {
                return Err(ControlError::UnterminatedTable)
            }
            Some(b'+') => return Ok(Some(Reply::Ok(unescape(&line[1..])?))),
            Some(b'-') => return Ok(Some(Reply::Error(unescape(&line[1..])?))),
            Some(_) => {}
        }
        let fields = split_fields(line)?;
        let Some(row) = Row::parse(fields) else {
            return Err(ControlError::UnknownReply(
                String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
            ));
        };
        let row = row?;
        let table = self.table.get_or_insert_with(Vec::new);
        if table.len() >= MAX_TABLE_ROWS {
            return Err(ControlError::TableTooLong {
                max: MAX_TABLE_ROWS,
            });
        }
        table.push(row);
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
