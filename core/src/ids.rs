//! Identifiers.
//!
//! The core assigns `ServiceId`, `ListenerId`, `ProcessId` and `ProcessUid` itself: each is
//! monotonic over the master's whole life and never reused, so a stale reference (a status
//! record from a reaped process, a timer of a destroyed generation) can never alias a new
//! object. The operating system assigns `Pid`, which it does reuse; the core keeps the two apart.

use core::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id!(
    /// One service of one generation (a `service NAME { }` block after defaults are merged).
    ServiceId(u32),
    "service#"
);
id!(
    /// One listening socket or fifo (one resolved address of an inet listener).
    ListenerId(u32),
    "listener#"
);
id!(
    /// One process the master decided to create, before and after it has a pid.
    ProcessId(u64),
    "process#"
);
id!(
    /// The process "uid" of reference §1.3 (`GENERATION` in the original): a master-wide
    /// counter echoed back in every status record, so a record from a recycled pid is told
    /// apart from one of the live process.
    ProcessUid(u32),
    "uid="
);
id!(
    /// One configuration generation: the initial start is 1, each reload adds one.
    Generation(u32),
    "generation#"
);
id!(
    /// A process id as the operating system gave it.
    Pid(i32),
    ""
);
