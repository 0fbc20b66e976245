//! Messages for the operator.
//!
//! Every line an operator may search for is a typed variant here, and its `Display` is the text
//! of the original (reference §2, §3, §4), so the texts are tested behaviour and double as
//! coverage marks. `tracing` is for developer diagnostics only.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Pid, ProcessUid};
use crate::signal::{Signal, SignalSender};
use crate::time::Duration;

/// How serious a notice is; the log prints it as `Info:`, `Warning:`, `Error:`, `Fatal:`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Normal operation.
    Info,
    /// Something an operator should look at.
    Warning,
    /// Something failed.
    Error,
    /// The master cannot go on.
    Fatal,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
            Level::Fatal => "Fatal",
        })
    }
}

/// Which limit a service hit when its listener was readable (reference §2.4 step 1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitName {
    /// `process_limit (N)`: the service may have more than one process.
    ProcessLimit,
    /// `client_limit/service_count (1)`: a single process that serves one connection.
    ClientLimitServiceCount,
    /// `client_limit (N)`: a single process.
    ClientLimit,
}

/// How a child ended, as the operator reads it (reference §2.4 exit texts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// `returned error N`, with the meaning of roost's own exit codes 80-89 where it has one.
    Error {
        /// The exit code.
        code: i32,
        /// The service's vsz_limit in bytes (0 = none), quoted by the out-of-memory text.
        vsz_limit: u64,
    },
    /// `killed with signal N`.
    Signal {
        /// The signal number.
        signal: i32,
        /// Whether a core file was written.
        core_dumped: bool,
    },
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitReason::Error { code, vsz_limit } => {
                write!(f, "returned error {code}")?;
                match code {
                    80 => f.write_str(" (Can't open log file)"),
                    81 => f.write_str(" (Can't write to log file)"),
                    82 => f.write_str(" (Internal logging error)"),
                    83 => write!(
                        f,
                        " (Out of memory (vsz_limit={} MB, you may need to increase it))",
                        vsz_limit / (1024 * 1024)
                    ),
                    84 => f.write_str(" (exec() failed)"),
                    89 => f.write_str(" (Fatal failure)"),
                    _ => Ok(()),
                }
            }
            ExitReason::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "killed with signal {signal}")?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// One operator-visible message of the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Notice {
    /// A listener could not be created; the driver's text names the address or path.
    ListenFailed {
        /// The service.
        service: String,
        /// What went wrong.
        error: String,
    },
    /// At startup, any listener failure is fatal.
    ListenersFailed,
    /// `fork()` failed for a service.
    ForkFailed {
        /// The service.
        service: String,
        /// The OS's text.
        error: String,
        /// errno was EAGAIN: probably the process limit of the user.
        eagain: bool,
    },
    /// `service(NAME): process_limit (N) reached, client connections are being dropped`.
    LimitReached {
        /// The service.
        service: String,
        /// Which limit.
        limit: LimitName,
        /// Its value.
        value: u32,
    },
    /// A child did not send its first status in time and was killed.
    FirstStatusMissing {
        /// The service.
        service: String,
        /// The child.
        pid: Pid,
        /// How long it had.
        timeout: Duration,
    },
    /// A service is throttled after failed starts.
    Throttling {
        /// The service.
        service: String,
        /// For how long.
        duration: Duration,
    },
    /// A child neither exited nor reported after an idle-kill request.
    IgnoringIdleSigint {
        /// The service.
        service: String,
        /// The child.
        pid: Pid,
    },
    /// A status record from a recycled pid (its process uid does not match).
    InvalidStatus {
        /// The pid the record claimed.
        pid: Pid,
        /// The uid it carried.
        uid: ProcessUid,
    },
    /// A status read that was not a whole number of records.
    PartialStatus {
        /// The service.
        service: String,
        /// Bytes read.
        bytes: u32,
    },
    /// `waitpid` reported a pid the master never created.
    UnknownPid {
        /// The pid.
        pid: Pid,
    },
    /// A child ended with a failure.
    ChildFailed {
        /// The service.
        service: String,
        /// The child.
        pid: Pid,
        /// How it ended.
        reason: ExitReason,
    },
    /// `SIGHUP received - reloading configuration`.
    Reloading,
    /// A reload was refused; the running generation goes on.
    ReloadFailed {
        /// Why (file:line of the error).
        error: String,
    },
    /// The reload kill timer signalled old processes.
    ReloadKill {
        /// TERM or KILL.
        signal: Signal,
        /// How many processes.
        count: u32,
        /// How many of the old processes never sent a first status (skipped for TERM).
        uninitialized: u32,
    },
    /// The reload kill timer signalled the old processes of one service.
    ReloadKillService {
        /// TERM or KILL.
        signal: Signal,
        /// How many processes.
        count: u32,
        /// The service.
        service: String,
    },
    /// The master was asked to stop.
    ShuttingDown {
        /// The signal (TERM, INT) that asked.
        signal: Signal,
        /// Who sent it, when the driver knows.
        sender: Option<SignalSender>,
    },
    /// The master was asked to reopen its log files.
    LogReopen,
    /// A violated invariant, found by a release build: logged, and the master keeps serving.
    InvariantViolated {
        /// The rule and what was seen.
        violation: String,
    },
}

impl Notice {
    /// How serious it is.
    pub fn level(&self) -> Level {
        match self {
            Notice::ListenersFailed => Level::Fatal,
            Notice::ListenFailed { .. }
            | Notice::ForkFailed { .. }
            | Notice::FirstStatusMissing { .. }
            | Notice::Throttling { .. }
            | Notice::IgnoringIdleSigint { .. }
            | Notice::InvalidStatus { .. }
            | Notice::PartialStatus { .. }
            | Notice::UnknownPid { .. }
            | Notice::ChildFailed { .. }
            | Notice::ReloadFailed { .. }
            | Notice::InvariantViolated { .. } => Level::Error,
            Notice::LimitReached { .. }
            | Notice::Reloading
            | Notice::ReloadKill { .. }
            | Notice::ReloadKillService { .. }
            | Notice::ShuttingDown { .. } => Level::Warning,
            Notice::LogReopen => Level::Info,
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::ListenFailed { service, error } => write!(f, "service({service}): {error}"),
            Notice::ListenersFailed => f.write_str("Failed to start listeners"),
            Notice::ForkFailed { service, error, eagain } => {
                write!(f, "service({service}): fork() failed: {error}")?;
                if *eagain {
                    f.write_str(" (ulimit -u reached?)")?;
                }
                Ok(())
            }
            Notice::LimitReached { service, limit, value } => {
                let name = match limit {
                    LimitName::ProcessLimit => "process_limit",
                    LimitName::ClientLimitServiceCount => "client_limit/service_count",
                    LimitName::ClientLimit => "client_limit",
                };
                write!(
                    f,
                    "service({service}): {name} ({value}) reached, client connections are being dropped"
                )
            }
            Notice::FirstStatusMissing { service, pid, timeout } => write!(
                f,
                "service({service}): Initial status notification not received in {} seconds, killing the process (pid {pid})",
                timeout.as_secs()
            ),
            Notice::Throttling { service, duration } => write!(
                f,
                "service({service}): command startup failed, throttling for {}.{:03} secs",
                duration.as_secs(),
                duration.subsec_millis()
            ),
            Notice::IgnoringIdleSigint { service, pid } => {
                write!(f, "service({service}): Process {pid} is ignoring idle SIGINT")
            }
            Notice::InvalidStatus { pid, uid } => {
                write!(f, "Ignoring invalid update from child {pid} (UID={})", uid.0)
            }
            Notice::PartialStatus { service, bytes } => {
                write!(f, "service({service}): child sent partial status update ({bytes} bytes)")
            }
            Notice::UnknownPid { pid } => write!(f, "waitpid() returned unknown PID {pid}"),
            Notice::ChildFailed { service, pid, reason } => {
                write!(f, "service({service}): child {pid} {reason}")
            }
            Notice::Reloading => f.write_str("SIGHUP received - reloading configuration"),
            Notice::ReloadFailed { error } => write!(f, "Config reload failed: {error}"),
            Notice::ReloadKill { signal, count, uninitialized } => {
                write!(
                    f,
                    "Processes aren't dying after reload, sent {signal} to {count} processes."
                )?;
                if *uninitialized > 0 {
                    write!(f, " ({uninitialized} processes still uninitialized)")?;
                }
                Ok(())
            }
            Notice::ReloadKillService { signal, count, service } => {
                write!(f, "Sent {signal} to {count} {service} processes")
            }
            Notice::ShuttingDown { signal, sender } => {
                write!(f, "Killed with signal {}", signal.number())?;
                match sender {
                    Some(sender) => write!(f, " ({sender})"),
                    None => Ok(()),
                }
            }
            Notice::LogReopen => f.write_str("Reopening log files"),
            Notice::InvariantViolated { violation } => {
                write!(f, "Internal error, please report: {violation}")
            }
        }
    }
}
