//! The log: `log_path` is a file, `/dev/stderr`, or `syslog`, and `info_log_path`, when set,
//! takes the Info lines the same way. Files are reopened on SIGUSR1, between lines, so
//! logrotate's rename + USR1 loses no line. tracing-appender cannot reopen a file, hence this
//! small writer of our own.
//!
//! Lines keep the original's shape: `roost: Warning: text` for the master and `NAME: text` for
//! what a child of service NAME wrote to its stderr, after the `log_timestamp` prefix on files.
//!
//! Two processes write with it: the master (its own lines, and a generation's children's lines
//! while no log process reads their pipes) and the `log` built-in (every other child's lines).
//! Both read a child's stderr through [`LogPipe`], so a line is cut the same way by either.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use roost_core::notice::Level;

/// Where lines go.
enum Target {
    /// The master's stderr.
    Stderr,
    /// A file, reopened on request.
    File { path: String, file: Option<File> },
    /// The local syslog daemon.
    Syslog {
        socket: Option<UnixDatagram>,
        facility: u8,
    },
}

impl Target {
    /// The target a `*log_path` setting names, opened.
    fn open(log_path: &str, facility: &str) -> Target {
        let mut target = match log_path {
            "" | "/dev/stderr" => Target::Stderr,
            "syslog" => Target::Syslog {
                socket: None,
                facility: facility_code(facility),
            },
            path => Target::File {
                path: path.to_owned(),
                file: None,
            },
        };
        // A file that cannot be opened now is said at start-up (`LogWriter::unwritable`).
        let _ = target.reopen();
        target
    }

    /// Reopens a file or reconnects to syslog; the error of a file that cannot be opened (its
    /// lines are lost until a reopen succeeds).
    fn reopen(&mut self) -> Result<(), String> {
        match self {
            Target::Stderr => {}
            Target::File { path, file } => {
                match OpenOptions::new().create(true).append(true).open(&*path) {
                    Ok(opened) => *file = Some(opened),
                    Err(error) => {
                        *file = None;
                        return Err(format!("Can't open log file {path}: {error}"));
                    }
                }
            }
            Target::Syslog { socket, .. } => {
                *socket = UnixDatagram::unbound()
                    .ok()
                    .filter(|s| s.connect("/dev/log").is_ok());
            }
        }
        Ok(())
    }

    /// Writes one line; false when it is lost.
    fn write(&mut self, level: Level, line: &str, timestamp: &str, ident: &str) -> bool {
        match self {
            // One write: the master and the log process share this stderr.
            Target::Stderr => std::io::stderr()
                .write_all(format!("{line}\n").as_bytes())
                .is_ok(),
            Target::File { file, .. } => match file {
                Some(file) => {
                    let stamp = format_timestamp(timestamp);
                    // One write per line: lines of the master and the log process, which
                    // append to the same file, never interleave.
                    file.write_all(format!("{stamp}{line}\n").as_bytes())
                        .is_ok()
                }
                None => false,
            },
            Target::Syslog { socket, facility } => {
                let severity = match level {
                    Level::Info => 6,
                    Level::Warning => 4,
                    Level::Error => 3,
                    Level::Fatal => 2,
                };
                let pri = u32::from(*facility) * 8 + severity;
                let message = format!("<{pri}>{ident}[{}]: {line}", std::process::id());
                match socket {
                    Some(socket) => socket.send(message.as_bytes()).is_ok(),
                    None => std::io::stderr()
                        .write_all(format!("{line}\n").as_bytes())
                        .is_ok(),
                }
            }
        }
    }
}

/// A warning, error or fatal line of a child, kept by the log process for `roost log errors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentError {
    /// When it was written (seconds since the epoch).
    pub unix_secs: u64,
    /// The child's service.
    pub service: String,
    /// The line, `Error: ...`.
    pub text: String,
}

impl RecentError {
    /// Its line on the log-errors socket: `SECS<TAB>SERVICE<TAB>TEXT`.
    pub fn encode(&self) -> String {
        format!("{}\t{}\t{}\n", self.unix_secs, self.service, self.text)
    }

    /// A line of the log-errors socket, without its newline.
    pub fn decode(line: &str) -> Option<RecentError> {
        let mut fields = line.splitn(3, '\t');
        Some(RecentError {
            unix_secs: fields.next()?.parse().ok()?,
            service: fields.next()?.to_owned(),
            text: fields.next()?.to_owned(),
        })
    }
}

/// How many recent errors the log process keeps (as many as the original's).
pub const RECENT_ERRORS: usize = 1000;

/// The log writer of the master and of the log process.
pub struct LogWriter {
    target: Target,
    /// `info_log_path`, when it names another place than log_path: Info lines go there.
    info: Option<Target>,
    /// `log_timestamp` (strftime) for file lines.
    timestamp: String,
    /// The syslog ident / line prefix of the master.
    ident: String,
    /// Lines that could not be written (a full disk, /dev/full): counted, never fatal.
    pub lost_lines: u64,
    /// The last warnings and errors of children, when kept (the log process keeps them).
    recent: Option<VecDeque<RecentError>>,
    /// While the master starts: where its errors are written as well, the stderr of whoever
    /// started it (reference §4.1 step 5), when the log itself goes elsewhere.
    startup_echo: Option<File>,
}

/// The syslog ident and the master's line prefix: `roost`, or `roost-NAME` for an instance,
/// as the first part of its process titles (`roost-NAME/SERVICE`).
pub fn ident(instance_name: &str) -> String {
    let title = crate::spawn::process_title(instance_name, "");
    title.trim_end_matches('/').to_owned()
}

fn facility_code(name: &str) -> u8 {
    match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "daemon" => 3,
        "auth" => 4,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => 2,
    }
}

impl LogWriter {
    /// A writer for `log_path`.
    pub fn new(log_path: &str, timestamp: &str, facility: &str, ident: &str) -> LogWriter {
        LogWriter {
            target: Target::open(log_path, facility),
            info: None,
            timestamp: timestamp.to_owned(),
            ident: ident.to_owned(),
            lost_lines: 0,
            recent: None,
            startup_echo: None,
        }
    }

    /// A writer for the global log settings: `log_path`, and `info_log_path` for Info lines
    /// when it is set to another place (as the original; roost writes no debug lines, so
    /// `debug_log_path` has nothing to take).
    pub fn for_settings(global: &roost_core::settings::GlobalSettings) -> LogWriter {
        let mut writer = LogWriter::new(
            &global.log_path,
            &global.log_timestamp,
            &global.syslog_facility,
            &ident(&global.instance_name),
        );
        if !global.info_log_path.is_empty() && global.info_log_path != global.log_path {
            writer.info = Some(Target::open(&global.info_log_path, &global.syslog_facility));
        }
        writer
    }

    /// The global settings a writer of [`LogWriter::for_settings`] follows.
    pub fn settings_of(global: &roost_core::settings::GlobalSettings) -> [&str; 5] {
        [
            &global.log_path,
            &global.info_log_path,
            &global.log_timestamp,
            &global.syslog_facility,
            &global.instance_name,
        ]
    }

    /// Writes to where `new` does from now on (a reload changed the log settings), keeping
    /// the count of lines lost so far.
    pub fn replace(&mut self, new: LogWriter) {
        let lost_lines = self.lost_lines;
        *self = LogWriter { lost_lines, ..new };
    }

    /// Keeps the last [`RECENT_ERRORS`] warnings and errors of children from now on.
    pub fn keep_recent_errors(&mut self) {
        self.recent.get_or_insert_with(VecDeque::new);
    }

    /// The warnings and errors kept, oldest first.
    pub fn recent_errors(&self) -> impl Iterator<Item = &RecentError> {
        self.recent.iter().flatten()
    }

    /// Whether lines go to the terminal (no timestamp prefix there).
    pub fn is_stderr(&self) -> bool {
        matches!(self.target, Target::Stderr)
    }

    /// Reopens the files (after logrotate renamed them) or reconnects to syslog. A file that
    /// cannot be opened loses its lines until the next reopen that succeeds.
    pub fn reopen(&mut self) {
        let _ = self.target.reopen();
        if let Some(info) = &mut self.info {
            let _ = info.reopen();
        }
    }

    /// Why a log file cannot be written, if one cannot: a master that starts with it would
    /// lose every line.
    pub fn unwritable(&mut self) -> Option<String> {
        let error = self.target.reopen().err();
        error.or_else(|| self.info.as_mut()?.reopen().err())
    }

    /// From now until [`LogWriter::started`], the master's errors are written to `stderr`
    /// too, unless the log goes there already.
    pub fn echo_errors_to(&mut self, stderr: File) {
        if !self.is_stderr() {
            self.startup_echo = Some(stderr);
        }
    }

    /// The master has started: its errors go to the log alone.
    pub fn started(&mut self) {
        self.startup_echo = None;
    }

    /// A line of the master itself.
    pub fn master(&mut self, level: Level, text: &str) {
        let line = format!("{}: {level}: {text}", self.ident);
        if let (Some(echo), Level::Error | Level::Fatal) = (&mut self.startup_echo, level) {
            let _ = echo.write_all(format!("{line}\n").as_bytes());
        }
        self.write(level, &line);
    }

    /// A line a child of `service` wrote to its stderr. Roost's own children start each line
    /// with its level; a line without one comes from a program that knows nothing of roost (a
    /// traceback, a shell's complaint) and is an error, as in the original's log process.
    pub fn child(&mut self, service: &str, text: &str) {
        let unleveled;
        let (level, text) = match level_of(text.as_bytes()) {
            Some((_, level)) => (level, text),
            None => {
                unleveled = format!("{}: {text}", Level::Error);
                (Level::Error, unleveled.as_str())
            }
        };
        self.write(level, &format!("{service}: {text}"));
        if let (Some(recent), false) = (&mut self.recent, level == Level::Info) {
            if recent.len() == RECENT_ERRORS {
                recent.pop_front();
            }
            recent.push_back(RecentError {
                unix_secs: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                service: service.to_owned(),
                text: text.to_owned(),
            });
        }
    }

    fn write(&mut self, level: Level, line: &str) {
        let target = match (&mut self.info, level) {
            (Some(info), Level::Info) => info,
            _ => &mut self.target,
        };
        if !target.write(level, line, &self.timestamp, &self.ident) {
            self.lost_lines += 1;
        }
    }
}

/// The longest line kept whole: a longer line is written in pieces of this size (each with the
/// line's level), so one endless line cannot take the reader's memory.
pub const MAX_LINE: usize = 8192;

/// How a read of a [`LogPipe`] ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PipeState {
    /// Everything written so far has been read (EAGAIN): wait for the next readiness.
    Empty,
    /// The reads of this turn were used up with more to read: come back in the next turn.
    More,
    /// Every write end is closed (or the pipe failed): nothing more will come.
    Closed,
}

/// The read end of one service's log pipe (its children's stderr) and the part of a line read
/// so far. The fd is non-blocking; the file description may be shared by the master and a log
/// process, but only one of them reads it at a time.
#[derive(Debug)]
pub struct LogPipe {
    /// The service whose children write to it: the prefix of its lines.
    pub service: String,
    fd: OwnedFd,
    partial: Vec<u8>,
}

impl LogPipe {
    /// The read end of `service`'s pipe.
    pub fn new(service: &str, fd: OwnedFd) -> LogPipe {
        LogPipe {
            service: service.to_owned(),
            fd,
            partial: Vec::new(),
        }
    }

    /// The fd, to watch it or to hand it to a log process.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads at most `reads` chunks and writes every complete line to `log`. A child's lines
    /// are whole in the pipe when it writes each with one write() of at most PIPE_BUF bytes
    /// (the built-ins do), whatever its siblings write meanwhile.
    pub fn read(&mut self, reads: usize, log: &mut LogWriter) -> PipeState {
        let mut buffer = [0u8; 16 * 1024];
        for _ in 0..reads {
            match nix::unistd::read(&self.fd, &mut buffer) {
                Ok(0) => {
                    self.flush(log);
                    return PipeState::Closed;
                }
                Ok(n) => self.push(&buffer[..n], log),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return PipeState::Empty,
                Err(_) => {
                    self.flush(log);
                    return PipeState::Closed;
                }
            }
        }
        PipeState::More
    }

    fn push(&mut self, bytes: &[u8], log: &mut LogWriter) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, ended) = match piece.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (piece, false),
            };
            self.partial.extend_from_slice(text);
            while self.partial.len() > MAX_LINE {
                // The rest of a cut line keeps the level the line started with.
                let mut rest = match level_of(&self.partial) {
                    Some((prefix, _)) => prefix.as_bytes().to_vec(),
                    None => Vec::new(),
                };
                rest.extend_from_slice(&self.partial[MAX_LINE..]);
                self.partial.truncate(MAX_LINE);
                self.write_partial(log);
                self.partial = rest;
            }
            // An empty line says nothing: it is not logged.
            if ended && !self.partial.is_empty() {
                self.write_partial(log);
            }
        }
    }

    /// Writes the part of a line read so far as a line of its own (the pipe closed, or its
    /// reader changes).
    pub fn flush(&mut self, log: &mut LogWriter) {
        if !self.partial.is_empty() {
            self.write_partial(log);
        }
    }

    fn write_partial(&mut self, log: &mut LogWriter) {
        let text = String::from_utf8_lossy(&self.partial);
        log.child(&self.service, &text);
        self.partial.clear();
    }
}

/// The level a child's line starts with, and its prefix.
fn level_of(line: &[u8]) -> Option<(&'static str, Level)> {
    [
        ("Info: ", Level::Info),
        ("Warning: ", Level::Warning),
        ("Error: ", Level::Error),
        ("Fatal: ", Level::Fatal),
    ]
    .into_iter()
    .find(|(prefix, _)| line.starts_with(prefix.as_bytes()))
}

/// Formats the current local time with a strftime format.
fn format_timestamp(format: &str) -> String {
    // SAFETY: time(NULL) only reads the clock.
    format_time(format, unsafe { libc::time(std::ptr::null_mut()) })
}

/// Formats a time (seconds since the epoch) as local time with a strftime format.
pub fn format_time(format: &str, unix_secs: i64) -> String {
    if format.is_empty() {
        return String::new();
    }
    let Ok(format) = std::ffi::CString::new(format) else {
        return String::new();
    };
    // SAFETY: localtime_r/strftime with buffers we own.
    unsafe {
        let now: libc::time_t = unix_secs;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return String::new();
        }
        let mut buffer = [0u8; 128];
        let len = libc::strftime(
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            format.as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_file_is_followed_by_a_new_one_after_reopen() {
        let dir = std::env::temp_dir().join(format!("roost-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("roost.log");
        let mut log = LogWriter::new(&path.to_string_lossy(), "", "mail", "roost");
        log.master(Level::Info, "one");
        std::fs::rename(&path, dir.join("roost.log.1")).expect("rename");
        log.master(Level::Info, "two");
        log.reopen();
        log.child("echo", "Error: three");
        let old = std::fs::read_to_string(dir.join("roost.log.1")).expect("old file");
        let new = std::fs::read_to_string(&path).expect("new file");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(old, "roost: Info: one\nroost: Info: two\n");
        assert_eq!(new, "echo: Error: three\n");
    }

    #[test]
    fn a_log_pipe_writes_whole_lines_cuts_endless_ones_and_flushes_at_its_end() {
        let dir = std::env::temp_dir().join(format!("roost-logpipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("roost.log");
        let mut log = LogWriter::new(&path.to_string_lossy(), "", "mail", "roost");
        log.keep_recent_errors();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).expect("pipe");
        let mut pipe = LogPipe::new("pop3", r);
        let mut w = File::from(w);
        w.write_all(b"Info: one\nError: tw").expect("write");
        assert_eq!(pipe.read(4, &mut log), PipeState::Empty);
        w.write_all(b"o\n").expect("write");
        w.write_all(&vec![b'x'; MAX_LINE + 10]).expect("write");
        w.write_all(b"\nInfo: ").expect("write");
        w.write_all(&vec![b'y'; MAX_LINE]).expect("write");
        assert_eq!(pipe.read(4, &mut log), PipeState::Empty);
        w.write_all(b"\n\nWarning: no newline").expect("write");
        drop(w);
        assert_eq!(pipe.read(4, &mut log), PipeState::Closed);
        let text = std::fs::read_to_string(&path).expect("log");
        std::fs::remove_dir_all(&dir).ok();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[0], "pop3: Info: one");
        assert_eq!(lines[1], "pop3: Error: two");
        // A line without a level is an error; each part of a cut line keeps its level.
        assert_eq!(lines[2], format!("pop3: Error: {}", "x".repeat(MAX_LINE)));
        assert_eq!(lines[3], format!("pop3: Error: {}", "x".repeat(10)));
        assert_eq!(
            lines[4],
            format!("pop3: Info: {}", "y".repeat(MAX_LINE - 6))
        );
        assert_eq!(lines[5], format!("pop3: Info: {}", "y".repeat(6)));
        assert_eq!(lines[6], "pop3: Warning: no newline");
        let recent: Vec<String> = log.recent_errors().map(|e| e.text.clone()).collect();
        assert_eq!(recent.len(), 4);
        assert_eq!(recent[0], "Error: two");
        assert_eq!(recent[3], "Warning: no newline");
    }

    #[test]
    fn recent_errors_round_trip_through_their_socket_line_and_keep_the_last_thousand() {
        let error = RecentError {
            unix_secs: 1_795_450_915,
            service: "pop3-login".into(),
            text: "Error: a\ttab".into(),
        };
        let line = error.encode();
        assert_eq!(
            RecentError::decode(line.trim_end_matches('\n')),
            Some(error)
        );
        assert_eq!(RecentError::decode("x\tpop3\ttext"), None);
        let mut log = LogWriter::new("/dev/null", "", "mail", "roost");
        log.keep_recent_errors();
        for i in 0..RECENT_ERRORS + 5 {
            log.child("auth", &format!("Error: {i}"));
        }
        log.child("auth", "Info: not an error");
        let texts: Vec<&str> = log.recent_errors().map(|e| e.text.as_str()).collect();
        assert_eq!(texts.len(), RECENT_ERRORS);
        assert_eq!(texts[0], "Error: 5");
        assert_eq!(
            texts[RECENT_ERRORS - 1],
            format!("Error: {}", RECENT_ERRORS + 4)
        );
    }

    #[test]
    fn info_lines_go_to_info_log_path_and_lines_without_a_level_are_errors() {
        let dir = std::env::temp_dir().join(format!("roost-infolog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (errors, infos) = (dir.join("errors.log"), dir.join("info.log"));
        let text = format!(
            "log_path = {}\ninfo_log_path = {}\nlog_timestamp =\n",
            errors.display(),
            infos.display()
        );
        let config = roost_core::config::load_str(
            "<test>",
            &text,
            &crate::system::RealFiles,
            &crate::system::RealEnv,
        )
        .expect("config");
        let mut log = LogWriter::for_settings(&config.settings.global);
        log.master(Level::Info, "starting");
        log.child("pop3", "Error: broken");
        log.child("pop3", "Info: fine");
        log.keep_recent_errors();
        log.child("echo", "Traceback (most recent call last):");
        let errors = std::fs::read_to_string(&errors).expect("log_path");
        let infos = std::fs::read_to_string(&infos).expect("info_log_path");
        std::fs::remove_dir_all(&dir).ok();
        // A line without a level is an error: in log_path, and among the recent errors.
        assert_eq!(
            errors,
            "pop3: Error: broken\necho: Error: Traceback (most recent call last):\n"
        );
        let recent: Vec<&str> = log.recent_errors().map(|e| e.text.as_str()).collect();
        assert_eq!(recent, ["Error: Traceback (most recent call last):"]);
        assert_eq!(infos, "roost: Info: starting\npop3: Info: fine\n");
    }

    #[test]
    fn an_unwritable_log_counts_lost_lines_and_never_fails() {
        let mut log = LogWriter::new("/dev/full", "", "mail", "roost");
        log.master(Level::Error, "nobody hears this");
        assert_eq!(log.lost_lines, 1);
    }
}
