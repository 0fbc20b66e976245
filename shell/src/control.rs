//! The control socket `<base_dir>/control` (mode 0600): how `roost stop`, `roost reload`,
//! `roost log reopen` and `roost status` talk to the running master.
//!
//! A line protocol. The client sends `VERSION\troost-control\t1\t0`, then one command line
//! (`STOP`, `RELOAD`, `LOG-REOPEN`, `STATUS`). The master answers with data lines (tab-separated
//! for STATUS), then one last line: `+` and a text on success, `-` and the error on failure —
//! a reload that is refused says why, with the file and line, unlike the original's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The handshake line.
pub const HANDSHAKE: &str = "VERSION\troost-control\t1\t0";

/// The longest request line the master reads.
pub const MAX_LINE: usize = 4096;

/// A request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Shut down.
    Stop,
    /// Reload the configuration.
    Reload,
    /// Reopen log files.
    LogReopen,
    /// Print services and processes.
    Status,
}

impl Command {
    /// The protocol word.
    pub fn word(self) -> &'static str {
        match self {
            Command::Stop => "STOP",
            Command::Reload => "RELOAD",
            Command::LogReopen => "LOG-REOPEN",
            Command::Status => "STATUS",
        }
    }

    /// Parses a request line.
    pub fn parse(line: &str) -> Option<Command> {
        match line.trim_end_matches(['\r', '\n']) {
            "STOP" => Some(Command::Stop),
            "RELOAD" => Some(Command::Reload),
            "LOG-REOPEN" => Some(Command::LogReopen),
            "STATUS" => Some(Command::Status),
            _ => None,
        }
    }
}

/// What the master makes of the bytes a client sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Not complete yet.
    Incomplete,
    /// A command.
    Command(Command),
    /// Something else: answer with this error and close.
    Invalid(String),
}

/// Decodes a client's bytes: the handshake line, then one command line.
pub fn decode_request(bytes: &[u8]) -> Request {
    if bytes.len() > MAX_LINE * 2 {
        return Request::Invalid("request too long".to_owned());
    }
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split_inclusive('\n');
    let Some(first) = lines.next() else {
        return Request::Incomplete;
    };
    if !first.ends_with('\n') {
        return if first.len() > MAX_LINE {
            Request::Invalid("request too long".to_owned())
        } else {
            Request::Incomplete
        };
    }
    if first.trim_end() != HANDSHAKE {
        return Request::Invalid("unsupported protocol (expected roost-control 1)".to_owned());
    }
    match lines.next() {
        Some(line) if line.ends_with('\n') => match Command::parse(line) {
            Some(command) => Request::Command(command),
            None => Request::Invalid(format!("unknown command: {}", line.trim_end())),
        },
        _ => Request::Incomplete,
    }
}

/// A reply: data lines, then success or failure.
pub fn encode_reply(lines: &[String], result: Result<&str, &str>) -> Vec<u8> {
    let mut out = String::new();
    for line in lines {
        out.push_str(&line.replace('\n', " "));
        out.push('\n');
    }
    match result {
        Ok(text) => out.push_str(&format!("+{}\n", text.replace('\n', " "))),
        Err(text) => out.push_str(&format!("-{}\n", text.replace('\n', " "))),
    }
    out.into_bytes()
}

/// The client side: sends a command, returns the data lines and the result.
pub fn request(
    socket: &str,
    command: Command,
) -> Result<(Vec<String>, Result<String, String>), String> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("Can't connect to {socket}: {e} (is roost running?)"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{HANDSHAKE}\n{}\n", command.word()).as_bytes())
        .map_err(|e| format!("Can't write to {socket}: {e}"))?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| format!("Can't read from {socket}: {e}"))?;
        if let Some(text) = line.strip_prefix('+') {
            return Ok((lines, Ok(text.to_owned())));
        }
        if let Some(text) = line.strip_prefix('-') {
            return Ok((lines, Err(text.to_owned())));
        }
        lines.push(line);
    }
    Err("the master closed the connection without an answer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_after_the_handshake_only() {
        assert_eq!(decode_request(b""), Request::Incomplete);
        assert_eq!(
            decode_request(b"VERSION\troost-control\t1\t0\nRELO"),
            Request::Incomplete
        );
        assert_eq!(
            decode_request(b"VERSION\troost-control\t1\t0\nRELOAD\n"),
            Request::Command(Command::Reload)
        );
        assert_eq!(
            decode_request(b"GET / HTTP/1.0\n"),
            Request::Invalid("unsupported protocol (expected roost-control 1)".to_owned())
        );
        assert_eq!(
            decode_request(b"VERSION\troost-control\t1\t0\nFORMAT C:\n"),
            Request::Invalid("unknown command: FORMAT C:".to_owned())
        );
        assert!(matches!(
            decode_request(&vec![b'x'; 10_000]),
            Request::Invalid(_)
        ));
    }

    #[test]
    fn replies_end_with_the_result_line() {
        let reply = encode_reply(
            &["a\tb".to_owned()],
            Err("/etc/roost/roost.conf:3: Unknown setting: x"),
        );
        assert_eq!(
            reply,
            b"a\tb\n-/etc/roost/roost.conf:3: Unknown setting: x\n"
        );
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_the_decoder_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_request(&bytes);
        }
    }
}
