//! A broken invariant, as every machine of the core reports it: which machine, which numbered
//! rule (each machine lists its rules at the top of the module that checks them), and what was
//! seen. Debug builds panic with it; release builds log it and keep serving.

use core::fmt;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The machine: `master`, `child` or `login`.
    pub machine: &'static str,
    /// The rule's number in that machine's list.
    pub rule: u32,
    /// What was seen, naming the service, process or client.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} invariant {}: {}",
            self.machine, self.rule, self.detail
        )
    }
}
