//! The state the master keeps per service and per process (reference §2.1).
//!
//! Counters are kept, not recomputed, because every rule of §2 compares them on every event; the
//! invariants (core/src/master/invariants.rs) prove after every input that they equal what the
//! process table says.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{Generation, ListenerId, Pid, ProcessId, ProcessUid, ServiceId};
use crate::setup::ServiceConfig;
use crate::time::{Duration, Instant};

/// The throttle back-off a service starts with, and returns to after a clean exit (§2.4).
pub(crate) const THROTTLE_INITIAL: Duration = Duration::from_millis(2_000);

/// One service of one generation.
#[derive(Clone, Debug)]
pub(crate) struct Service {
    /// Its id.
    pub(crate) id: ServiceId,
    /// The generation it belongs to.
    pub(crate) generation: Generation,
    /// Its effective settings.
    pub(crate) config: ServiceConfig,
    /// Its listeners, in the order of `config.listeners`.
    pub(crate) listeners: Vec<ListenerId>,
    /// Processes of this service (with or without a pid yet).
    pub(crate) process_count: u32,
    /// Processes with available_count > 0.
    pub(crate) process_avail: u32,
    /// Processes with available_count == client_limit (no client at all).
    pub(crate) process_idling: u32,
    /// The lowest process_idling seen since the last idle-kill round (§2.6).
    pub(crate) idle_low_water: u32,
    /// Processes ever created.
    pub(crate) total_created: u64,
    /// The idle list: key = order of (re)appending, so the head has been idle longest.
    pub(crate) idle: BTreeMap<u64, ProcessId>,
    /// Processes with at least one client.
    pub(crate) busy: BTreeSet<ProcessId>,
    /// The master watches the service's listeners.
    pub(crate) listening: bool,
    /// The limit was reached; connections wait (10 s) before they are dropped.
    pub(crate) listen_pending: bool,
    /// The next throttle duration.
    pub(crate) throttle_backoff: Duration,
    /// A child of this service ever exited with status 0.
    pub(crate) have_successful_exits: bool,
    /// The core second of the last failed exit.
    pub(crate) exit_failure_last: u64,
    /// Failed exits within that second.
    pub(crate) exit_failures_in_sec: u32,
    /// The core second of the last limit warning.
    pub(crate) last_drop_warning: Option<u64>,
    /// The published "all processes full" state (login services).
    pub(crate) login_full: bool,
    /// When SIGUSR1 was last sent to the service's processes for the login state.
    pub(crate) login_notify_sent: Option<Instant>,
    /// After a throttle, the service starts one process at a time until one of them sends its
    /// first status (a probe), so a still-broken program does not fork a crowd.
    pub(crate) probing: bool,
    /// Processes that have not sent their first status yet.
    pub(crate) uninitialised: u32,
}

impl Service {
    /// A service with no process yet.
    pub(crate) fn new(id: ServiceId, generation: Generation, config: ServiceConfig) -> Service {
        Service {
            id,
            generation,
            config,
            listeners: Vec::new(),
            process_count: 0,
            process_avail: 0,
            process_idling: 0,
            idle_low_water: 0,
            total_created: 0,
            idle: BTreeMap::new(),
            busy: BTreeSet::new(),
            listening: false,
            listen_pending: false,
            throttle_backoff: THROTTLE_INITIAL,
            have_successful_exits: false,
            exit_failure_last: 0,
            exit_failures_in_sec: 0,
            last_drop_warning: None,
            login_full: false,
            login_notify_sent: None,
            probing: false,
            uninitialised: 0,
        }
    }

    /// The service's name, for notices.
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }
}

/// One process of a service.
#[derive(Clone, Debug)]
pub(crate) struct Process {
    /// Its id.
    pub(crate) id: ProcessId,
    /// Its service (anvil's process moves to the new generation's anvil at a reload).
    pub(crate) service: ServiceId,
    /// The uid it echoes in status records.
    pub(crate) uid: ProcessUid,
    /// Its pid, once the driver reported `Spawned`.
    pub(crate) pid: Option<Pid>,
    /// Free slots as last reported (client_limit at creation).
    pub(crate) available_count: u32,
    /// Approximate connections accepted so far.
    pub(crate) total_count: u64,
    /// Its key in the service's idle list while idle.
    pub(crate) idle_key: Option<u64>,
    /// When it last became idle.
    pub(crate) idle_start: Option<Instant>,
    /// When it last sent a valid status.
    pub(crate) last_status_update: Option<Instant>,
    /// When it was last sent an idle-kill SIGINT.
    pub(crate) last_kill_sent: Option<Instant>,
    /// It sent its first status (foreign processes count as initialised once spawned).
    pub(crate) initialised: bool,
    /// A login process that has been signalled to read the "all processes full" state since
    /// it started (§2.8): one that has not may believe the service is not full.
    pub(crate) told_login_state: bool,
}
