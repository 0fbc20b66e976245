//! The `log` built-in: "log writes to log files. All logging, except from master process, goes
//! through it" (the seed). One process per generation reads the log pipes of that
//! generation's services (the children's stderr, passed as `ROOST_LOG_FDS=service:fd ...`)
//! and writes each line as `service: text` to log_path. A slow disk or syslog then stalls the
//! children that log, never the master.
//!
//! - SIGUSR1 reopens log_path, between lines (logrotate's rename + USR1 loses nothing).
//! - It exits 0 once every pipe is closed: the master closes its write ends when the
//!   generation retires, so that happens after the generation's last child is gone. Pipes
//!   marked `:lasting` (anvil's, whose process outlives generations) are read but not waited
//!   for. TERM and INT make it write what the pipes hold, then exit.
//! - The master keeps the read ends as well: what a log process leaves unread when it dies
//!   stays in the pipes for its successor, or for the master while there is none.
//! - It keeps the last [`crate::logging::RECENT_ERRORS`] warnings and errors and hands them to whoever
//!   connects to its `log-errors` listener (`roost log errors`, the original's
//!   `doveadm log errors`), one `SECS<TAB>SERVICE<TAB>TEXT` line each.
//! - When its master or generation is gone (the master-dead pipe), or at the master's SIGQUIT,
//!   it closes that listener and reports that it accepts nothing (so a master shutting down
//!   waits no longer for it, and a new master can bind the path); the lines still come until
//!   the last child is gone.
//! - Its own stderr is the master's (reading its own pipe would loop). It reports itself idle
//!   once, as the original's does.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use roost_core::child::Input as ChildInput;

use super::server;
use crate::logging::{LogPipe, LogWriter, PipeState};
use crate::runtime::{write_status, ChildEnv};

/// The first listener (log-errors); pipes count from 0, and the runtime's own sources
/// ([`server::SIGNALS`], [`server::MASTER_DEAD`]) sit at the top of the range.
const FIRST_LISTENER: usize = 1 << 20;

/// Reads of one pipe per turn (16 KiB each): a service that floods its pipe gets its turn
/// like the others, not all of them.
const READS_PER_TURN: usize = 4;

/// Reads of one pipe when told to stop: what it holds (a full pipe is 4 reads), but not an
/// endless writer.
const READS_AT_STOP: usize = 64;

/// One pipe of `ROOST_LOG_FDS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPipe {
    /// The service whose children write to it.
    pub service: String,
    /// Its fd here.
    pub fd: RawFd,
    /// Read, but its end not waited for (a writer may outlive the generation).
    pub lasting: bool,
}

/// Parses `ROOST_LOG_FDS` (`service:fd` or `service:fd:lasting`, separated by spaces) into the
/// pipes it names. Each fd must be one this process inherited above stderr, named once.
pub fn pipes_from_env(value: &str) -> Result<Vec<NamedPipe>, String> {
    let mut pipes: Vec<NamedPipe> = Vec::new();
    for entry in value.split_whitespace() {
        let (rest, lasting) = match entry.strip_suffix(":lasting") {
            Some(rest) => (rest, true),
            None => (entry, false),
        };
        let (service, fd) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("ROOST_LOG_FDS: '{entry}' is not service:fd"))?;
        let fd: RawFd = fd
            .parse()
            .ok()
            .filter(|fd| *fd > 2)
            .ok_or_else(|| format!("ROOST_LOG_FDS: '{entry}' has no fd above 2"))?;
        if service.is_empty() || pipes.iter().any(|seen| seen.fd == fd) {
            return Err(format!("ROOST_LOG_FDS: '{entry}' is not a new service:fd"));
        }
        pipes.push(NamedPipe {
            service: service.to_owned(),
            fd,
            lasting,
        });
    }
    Ok(pipes)
}

/// `roost --builtin log`.
pub fn main() -> i32 {
    super::main_of("log", |start| {
        let named = pipes_from_env(&std::env::var("ROOST_LOG_FDS").unwrap_or_default())
            .map_err(|e| format!("log: {e}"))?;
        let mut pipes = Vec::with_capacity(named.len());
        let mut lasting = BTreeSet::new();
        for (i, pipe) in named.iter().enumerate() {
            // SAFETY: fcntl only asks whether the fd is open; an open one is ours to own: the
            // master placed it for this process and nothing else here uses it.
            if unsafe { libc::fcntl(pipe.fd, libc::F_GETFD) } < 0 {
                return Err(format!(
                    "log: fd {} of service {} is not open",
                    pipe.fd, pipe.service
                ));
            }
            pipes.push(LogPipe::new(&pipe.service, unsafe {
                OwnedFd::from_raw_fd(pipe.fd)
            }));
            if pipe.lasting {
                lasting.insert(i);
            }
        }
        // Opened before the privileges go: log_path is often writable by root only.
        let mut log = LogWriter::for_settings(&start.settings.global);
        log.keep_recent_errors();
        start.restrict("log")?;
        let listeners = start
            .env
            .listeners
            .iter()
            // SAFETY: the master placed the listeners at these fds for this process alone.
            .map(|fd| Some(unsafe { UnixListener::from_raw_fd(*fd) }))
            .collect();
        run(&start.env, pipes, &lasting, listeners, &mut log).map_err(|e| format!("log: {e}"))
    })
}

/// The loop: returns the exit status once every pipe is closed or a signal said stop.
fn run(
    env: &ChildEnv,
    mut pipes: Vec<LogPipe>,
    lasting: &BTreeSet<usize>,
    mut listeners: Vec<Option<UnixListener>>,
    log: &mut LogWriter,
) -> io::Result<i32> {
    let mut poll = Poll::new()?;
    // The signals of the child protocol (SIGUSR1: reopen) and the master-dead pipe, as every
    // built-in watches them.
    let mut signals = server::watch_runtime(&poll, env, true)?;
    for (i, pipe) in pipes.iter().enumerate() {
        poll.registry()
            .register(&mut SourceFd(&pipe.raw_fd()), Token(i), Interest::READABLE)?;
    }
    for (i, listener) in listeners.iter().flatten().enumerate() {
        listener.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            Token(FIRST_LISTENER + i),
            Interest::READABLE,
        )?;
    }
    // Every pipe may hold lines already: the previous log process's leftovers.
    let mut ready: BTreeSet<usize> = (0..pipes.len()).collect();
    let mut open: BTreeSet<usize> = ready.clone();
    // The pipes whose end it waits for.
    let awaited = |open: &BTreeSet<usize>| open.iter().filter(|i| !lasting.contains(i)).count();
    let waits_for_ends = awaited(&open) > 0;
    let mut status_sent = false;
    let mut events = Events::with_capacity(64);
    loop {
        if !status_sent {
            // A full status pipe is retried; a closed one means the master is gone, and the
            // lines still come until the last child is.
            status_sent = write_status(env, env.client_limit) != ChildInput::StatusWouldBlock;
        }
        for i in std::mem::take(&mut ready) {
            match pipes[i].read(READS_PER_TURN, log) {
                PipeState::Empty => {}
                PipeState::More => {
                    ready.insert(i);
                }
                PipeState::Closed => {
                    let _ = poll
                        .registry()
                        .deregister(&mut SourceFd(&pipes[i].raw_fd()));
                    open.remove(&i);
                }
            }
        }
        // With no pipe to wait for (a generation of log and anvil alone) there is no end: it
        // stays until told to stop or its master is gone, rather than exiting at once to be
        // started again at once.
        if waits_for_ends && awaited(&open) == 0 {
            return Ok(0);
        }
        let timeout = if !ready.is_empty() {
            Some(Duration::ZERO)
        } else if !status_sent {
            Some(Duration::from_millis(100))
        } else {
            None
        };
        if let Err(error) = poll.poll(&mut events, timeout) {
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        let mut stop = false;
        let mut close_listeners = false;
        for event in events.iter() {
            if event.token() == server::SIGNALS {
                for signal in signals.pending() {
                    match signal {
                        libc::SIGUSR1 => log.reopen(),
                        // The master's last word at its shutdown (§4.5): take no more
                        // connections; the lines still come until the last child is gone.
                        libc::SIGQUIT => close_listeners = true,
                        _ => stop = true,
                    }
                }
            } else if event.token() == server::MASTER_DEAD {
                if event.is_error() || event.is_write_closed() {
                    if !waits_for_ends {
                        return Ok(0);
                    }
                    let _ = poll
                        .registry()
                        .deregister(&mut SourceFd(&env.master_dead_fd));
                    close_listeners = true;
                }
            } else if event.token().0 >= FIRST_LISTENER {
                if let Some(Some(listener)) = listeners.get(event.token().0 - FIRST_LISTENER) {
                    serve_recent_errors(listener, log);
                }
            } else if open.contains(&event.token().0) {
                ready.insert(event.token().0);
            }
        }
        if close_listeners && listeners.iter().any(Option::is_some) {
            for listener in listeners.iter_mut().filter_map(Option::take) {
                let _ = poll
                    .registry()
                    .deregister(&mut SourceFd(&listener.as_raw_fd()));
            }
            // A master waiting at its shutdown for its children to stop accepting (§4.5)
            // hears it at once.
            let _ = write_status(env, 0);
        }
        if stop {
            for i in open {
                if pipes[i].read(READS_AT_STOP, log) != PipeState::Closed {
                    pipes[i].flush(log);
                }
            }
            return Ok(0);
        }
    }
}

/// Answers every waiting connection of log-errors with the recent errors, then closes it. A
/// reader that does not take them within a second loses the rest: the log must go on.
fn serve_recent_errors(listener: &UnixListener, log: &LogWriter) {
    while let Ok((mut stream, _)) = listener.accept() {
        let text: String = log.recent_errors().map(|e| e.encode()).collect();
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_fds_name_their_service_and_bad_lists_are_refused() {
        let pipe = |service: &str, fd, lasting| NamedPipe {
            service: service.to_owned(),
            fd,
            lasting,
        };
        assert_eq!(
            pipes_from_env("pop3-login:6 pop3:7 anvil:8:lasting").expect("parses"),
            vec![
                pipe("pop3-login", 6, false),
                pipe("pop3", 7, false),
                pipe("anvil", 8, true)
            ]
        );
        assert_eq!(pipes_from_env("").expect("none"), vec![]);
        for bad in [
            "pop3",
            "pop3:x",
            "pop3:2",
            ":7",
            "a:7 b:7",
            "a:lasting",
            "a:7:later",
        ] {
            let error = pipes_from_env(bad).expect_err(bad);
            assert!(error.starts_with("ROOST_LOG_FDS: "), "{error}");
        }
    }
}
