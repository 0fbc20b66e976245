//! What to do: the actions [`crate::master::Master::poll_output`] hands to the driver.
//!
//! Drivers carry these out and translate failures back into inputs; they never decide.

use serde::{Deserialize, Serialize};

use crate::ids::{Generation, ListenerId, Pid, ProcessId, ProcessUid, ServiceId};
use crate::notice::Notice;
use crate::setup::ListenerConfig;
use crate::signal::Signal;

/// One action for the driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Create a listening socket or fifo. A failure is reported with `Input::ListenFailed`.
    OpenListener {
        /// The id the core gave it.
        listener: ListenerId,
        /// The service it belongs to.
        service: ServiceId,
        /// What to create.
        config: ListenerConfig,
    },
    /// A reload keeps an unchanged listener: the socket of `from` (old generation) now serves
    /// as `to` (new generation), with no accept gap.
    TakeOverListener {
        /// The old generation's listener.
        from: ListenerId,
        /// The new generation's listener.
        to: ListenerId,
    },
    /// Close a listener (and unlink its path, for unix and fifo listeners).
    CloseListener {
        /// The listener.
        listener: ListenerId,
    },
    /// Watch (or stop watching) a listener for readability. Idempotent.
    SetListening {
        /// The listener.
        listener: ListenerId,
        /// Watch it.
        on: bool,
    },
    /// Accept every connection waiting on the listener and close it at once.
    AcceptAndClose {
        /// The listener.
        listener: ListenerId,
    },
    /// Create a process of a service. Answered by `Input::Spawned` or `Input::SpawnFailed`.
    Spawn(SpawnRequest),
    /// Send a signal to a child.
    Kill {
        /// The child.
        pid: Pid,
        /// The signal.
        signal: Signal,
    },
    /// Publish the "all processes full" state of a login service (reference §2.8) to its
    /// processes' notify file. The SIGUSR1s that tell them to look are separate `Kill`s.
    SetLoginFull {
        /// The login service.
        service: ServiceId,
        /// Full or not.
        full: bool,
    },
    /// A generation is no longer monitored: close its master-dead pipes (its children now see
    /// the master as gone, reference §4.4) and its login notify files. Its status pipes stay
    /// open: the core still counts what its processes report until they are gone.
    RetireGeneration {
        /// The old generation.
        generation: Generation,
        /// A reload: anvil's process moved to the new generation and must not hear that its
        /// master is gone (reference §4.3 step 7), so its pipe stays open. At shutdown it is
        /// closed like every other: anvil stops accepting and the master need not wait 5 s.
        keep_anvil: bool,
    },
    /// The last process of a retired generation is gone: close everything left of it (status
    /// and log pipes).
    ForgetGeneration {
        /// The old generation.
        generation: Generation,
    },
    /// Tell anvil to forget the connections of a child that exited abnormally.
    AnvilKill {
        /// The child.
        pid: Pid,
    },
    /// A message for the operator.
    Log(Notice),
    /// A lifecycle change for a supervisor (systemd's READY, RELOADING, STOPPING).
    Lifecycle(Lifecycle),
    /// The master is done: exit with this status.
    Exit(i32),
}

/// A request to create one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The core's id for it.
    pub process: ProcessId,
    /// Its service.
    pub service: ServiceId,
    /// The generation of that service.
    pub generation: Generation,
    /// The process uid it must echo in its status records.
    pub uid: ProcessUid,
}

/// The lifecycle states a supervisor is told about.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    /// Serving.
    Ready,
    /// Reading a new configuration.
    Reloading,
    /// Shutting down.
    Stopping,
}
