//! What happened: the events a driver hands to [`crate::master::Master::handle`].
//!
//! Every output whose syscall can fail has an input that reports back (a `Spawn` is answered by
//! `Spawned` or `SpawnFailed`, an `OpenListener` that fails by `ListenFailed`), so every decision
//! that follows a failure (throttling, refusing to start) is taken in the core.

use serde::{Deserialize, Serialize};

use crate::ids::{ListenerId, Pid, ProcessId, ProcessUid, ServiceId};
use crate::setup::MasterConfig;
use crate::signal::{ExitStatus, Signal, SignalSender};

/// One event for the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Input {
    /// The time of `poll_timeout()` has come. Early or repeated timeouts do nothing.
    Timeout,
    /// The driver created the process the core asked for.
    Spawned {
        /// The core's id from the `Spawn` request.
        process: ProcessId,
        /// The pid the OS gave it.
        pid: Pid,
    },
    /// `fork()` failed: the process does not exist.
    SpawnFailed {
        /// The core's id from the `Spawn` request.
        process: ProcessId,
        /// errno.
        errno: i32,
        /// The OS's text for it, for the operator.
        error: String,
    },
    /// `waitpid` reaped a child.
    Exited {
        /// Its pid.
        pid: Pid,
        /// How it ended.
        status: ExitStatus,
    },
    /// One decoded status record (reference §1.4): the child with this pid and process uid has
    /// `available_count` free slots.
    Status {
        /// The pid the record claims.
        pid: Pid,
        /// The process uid the record carries.
        uid: ProcessUid,
        /// Free slots.
        available_count: u32,
    },
    /// A read from a service's status pipe was not a whole number of records; the chunk was
    /// discarded by the driver.
    StatusPartial {
        /// The service whose pipe it was.
        service: ServiceId,
        /// How many bytes were read.
        bytes: u32,
    },
    /// A watched listener has connections waiting to be accepted.
    ListenerReadable {
        /// The listener.
        listener: ListenerId,
        /// How many connections wait in its accept queue (Linux reports it for TCP
        /// listeners); 1 when the driver cannot tell.
        queued: u32,
    },
    /// An `OpenListener` failed.
    ListenFailed {
        /// The listener.
        listener: ListenerId,
        /// Whether it is a soft failure (address in use, missing directory), which a reload
        /// tolerates (reference §3.5).
        soft: bool,
        /// What went wrong, for the operator (`listen(127.0.0.1, 110) failed: Address in use`).
        error: String,
    },
    /// A signal to the master (HUP, TERM, INT, USR1), or the same request from the control socket.
    Signal(Signal),
    /// TERM or INT with who sent it: handled as [`Input::Signal`], and said in the shutdown line.
    SignalFrom {
        /// The signal.
        signal: Signal,
        /// Who sent it.
        sender: SignalSender,
    },
    /// A new configuration, read and checked by the driver after a HUP or `roost reload`.
    Reload(Box<MasterConfig>),
}
