//! The signals the core reasons about, independent of any platform's numbering.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A signal the master receives or sends.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Signal {
    /// Reload the configuration (to the master).
    Hup,
    /// Idle-kill request (to a child) or shutdown (to the master).
    Int,
    /// Close your listening sockets now (to a child, at shutdown).
    Quit,
    /// Stop (to a child) or shutdown (to the master).
    Term,
    /// Cannot be caught.
    Kill,
    /// Log reopen (to the master and the log process); login state refresh (to login processes).
    Usr1,
}

impl Signal {
    /// The Linux signal number, used in operator-visible texts (`killed with signal 9`).
    pub const fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Term => 15,
        }
    }

    /// The conventional name without the `SIG` prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Term => "TERM",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// Who asked the master to stop, for its shutdown line (reference §4.5: `Killed with signal 15
/// (by pid=… uid=… code=…)`): the kernel's siginfo of the signal, or the peer of the control
/// socket's `stop`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SignalSender {
    /// The sending process.
    pub pid: u32,
    /// Its user.
    pub uid: u32,
    /// How it was sent.
    pub how: SentBy,
}

/// How a signal was sent (siginfo's `si_code`), or that no signal was.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum SentBy {
    /// `kill(2)`: `code=kill`, as the original says.
    Kill,
    /// The kernel.
    Kernel,
    /// `tkill(2)` or `tgkill(2)`.
    Tkill,
    /// `sigqueue(3)`.
    Queue,
    /// `roost stop` on the control socket: no signal was sent.
    Control,
    /// A code roost does not name.
    Unknown,
}

impl fmt::Display for SignalSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self.how {
            SentBy::Kill => "kill",
            SentBy::Kernel => "kernel",
            SentBy::Tkill => "tkill",
            SentBy::Queue => "sigqueue",
            SentBy::Control => "roost stop",
            SentBy::Unknown => "unknown",
        };
        write!(f, "by pid={} uid={} code={code}", self.pid, self.uid)
    }
}

/// How a child ended, as `waitpid` reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by signal number `signal`.
    Signaled {
        /// The raw signal number (any, not only those of [`Signal`]).
        signal: i32,
        /// Whether the kernel wrote a core file.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Exit status 0: a "successful exit" for throttling (reference §2.4).
    pub const fn is_success(self) -> bool {
        matches!(self, ExitStatus::Exited(0))
    }
}
