//! The master's log writer: one line at a time to a file, stderr or syslog, reopenable.
//!
//! `log_path` names a file, `/dev/stderr`, or `syslog` (reference §4.6, §5.1). A file is opened
//! in append mode and reopened by path on USR1 or `roost log reopen`: after logrotate renames the
//! file, lines written before the reopen go to the old file, every line after it to the new one,
//! and none is lost because each line is one `write()` on an `O_APPEND` fd. Lines carry the
//! original's prefixes: `roost: Info: ...` for the master, `NAME: ...` for a service's stderr.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;

/// Where lines go.
#[derive(Debug)]
enum Target {
    /// The process's stderr.
    Stderr,
    /// syslog(3), facility `mail` as the original's default.
    Syslog,
    /// An append-mode file.
    File(File),
}

/// A reopenable line writer.
#[derive(Debug)]
pub struct LogWriter {
    /// `log_path` as configured.
    path: String,
    /// The open target.
    target: Target,
}

impl LogWriter {
    /// Opens `log_path`.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn open(path: &str) -> io::Result<LogWriter> {
        let target = match path {
            "" | "/dev/stderr" => Target::Stderr,
            "syslog" => {
                // SAFETY: openlog keeps the pointer; the identity is a static C string.
                unsafe { libc::openlog(c"roost".as_ptr(), libc::LOG_PID, libc::LOG_MAIL) };
                Target::Syslog
            }
            file => Target::File(open_append(file)?),
        };
        Ok(LogWriter {
            path: path.to_owned(),
            target,
        })
    }

    /// The configured path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Reopens a file target by its path (after a rename by logrotate). Stderr and syslog need
    /// nothing.
    ///
    /// # Errors
    /// The file cannot be opened; the old one stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Target::File(_) = self.target {
            self.target = Target::File(open_append(&self.path)?);
        }
        Ok(())
    }

    /// Writes one line (without its newline). Errors are swallowed on purpose: a full disk
    /// must not stop the master from supervising.
    pub fn line(&mut self, text: &str) {
        let mut buf = Vec::with_capacity(text.len() + 1);
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'\n');
        match &mut self.target {
            Target::Stderr => {
                let _ = io::stderr().lock().write_all(&buf);
            }
            Target::File(f) => {
                let _ = f.write_all(&buf);
            }
            Target::Syslog => {
                let clean: Vec<u8> = text.bytes().filter(|&b| b != 0).collect();
                if let Ok(c) = CString::new(clean) {
                    // SAFETY: a format string and one NUL-terminated argument.
                    unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), c.as_ptr()) };
                }
            }
        }
    }
}

fn open_append(path: &str) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open({path}) failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logrotate_rename_then_reopen_loses_no_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("roost.log");
        let path_s = path.to_str().expect("utf-8 temp path");
        let mut log = LogWriter::open(path_s).expect("open");
        log.line("roost: Info: one");
        let rotated = dir.path().join("roost.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        log.line("roost: Info: two");
        log.reopen().expect("reopen");
        log.line("roost: Info: three");
        assert_eq!(
            std::fs::read_to_string(&rotated).expect("old"),
            "roost: Info: one\nroost: Info: two\n"
        );
        assert_eq!(
            std::fs::read_to_string(&path).expect("new"),
            "roost: Info: three\n"
        );
    }

    #[test]
    fn an_unopenable_file_is_an_error_naming_it() {
        let err = LogWriter::open("/nonexistent-dir/x.log").expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent-dir/x.log"), "{err}");
    }
}
