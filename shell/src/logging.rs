//! The master's log: `log_path` is a file, `/dev/stderr`, or `syslog`; files are reopened on
//! SIGUSR1, between lines, so logrotate's rename + USR1 loses no line. tracing-appender cannot
//! reopen a file, hence this small writer of our own.
//!
//! Lines keep the original's shape: `roost: Warning: text` for the master and `NAME: text` for
//! what a child of service NAME wrote to its stderr, after the `log_timestamp` prefix on files.

use std::fs::{File, OpenOptions};
use std::io::Write;
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

/// The master's log writer.
pub struct LogWriter {
    target: Target,
    /// `log_timestamp` (strftime) for file lines.
    timestamp: String,
    /// The syslog ident / line prefix of the master.
    ident: String,
    /// Lines that could not be written (a full disk, /dev/full): counted, never fatal.
    pub lost_lines: u64,
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
        let target = match log_path {
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
        let mut writer = LogWriter {
            target,
            timestamp: timestamp.to_owned(),
            ident: ident.to_owned(),
            lost_lines: 0,
        };
        writer.reopen();
        writer
    }

    /// Whether lines go to the terminal (no timestamp prefix there).
    pub fn is_stderr(&self) -> bool {
        matches!(self.target, Target::Stderr)
    }

    /// Reopens a file (after logrotate renamed it) or reconnects to syslog.
    pub fn reopen(&mut self) {
        match &mut self.target {
            Target::Stderr => {}
            Target::File { path, file } => {
                *file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*path)
                    .ok();
            }
            Target::Syslog { socket, .. } => {
                *socket = UnixDatagram::unbound()
                    .ok()
                    .filter(|s| s.connect("/dev/log").is_ok());
            }
        }
    }

    /// A line of the master itself.
    pub fn master(&mut self, level: Level, text: &str) {
        let prefix = self.ident.clone();
        self.write(level, &format!("{prefix}: {level}: {text}"));
    }

    /// A line a child of `service` wrote to its stderr.
    pub fn child(&mut self, service: &str, text: &str) {
        let level = [
            ("Fatal: ", Level::Fatal),
            ("Error: ", Level::Error),
            ("Warning: ", Level::Warning),
        ]
        .into_iter()
        .find(|(p, _)| text.starts_with(p))
        .map_or(Level::Info, |(_, l)| l);
        self.write(level, &format!("{service}: {text}"));
    }

    fn write(&mut self, level: Level, line: &str) {
        let ok = match &mut self.target {
            Target::Stderr => writeln!(std::io::stderr(), "{line}").is_ok(),
            Target::File { file, .. } => match file {
                Some(file) => {
                    let stamp = format_timestamp(&self.timestamp);
                    // One write per line, so lines of the master never interleave.
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
                let message = format!("<{pri}>{}[{}]: {line}", self.ident, std::process::id());
                match socket {
                    Some(socket) => socket.send(message.as_bytes()).is_ok(),
                    None => writeln!(std::io::stderr(), "{line}").is_ok(),
                }
            }
        };
        if !ok {
            self.lost_lines += 1;
        }
    }
}

/// Formats the current local time with a strftime format.
fn format_timestamp(format: &str) -> String {
    if format.is_empty() {
        return String::new();
    }
    let Ok(format) = std::ffi::CString::new(format) else {
        return String::new();
    };
    // SAFETY: time/localtime_r/strftime with buffers we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
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
    fn an_unwritable_log_counts_lost_lines_and_never_fails() {
        let mut log = LogWriter::new("/dev/full", "", "mail", "roost");
        log.master(Level::Error, "nobody hears this");
        assert_eq!(log.lost_lines, 1);
    }
}
