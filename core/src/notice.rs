//! Messages for the operator.
//!
//! Every line an operator may search for is a typed variant here, and its `Display` is the text
//! of the original (reference §2, §3, §4), so the texts are tested behaviour and double as
//! coverage marks. `tracing` is for developer diagnostics only.

use core::fmt;

use serde::{Deserialize, Serialize};

/// How serious a notice is; the log service prints it as `Info:`, `Warning:`, `Error:`, `Fatal:`.
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

/// One operator-visible message of the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Notice {
    /// A reload was asked for.
    Reloading,
}

impl Notice {
    /// How serious it is.
    pub fn level(&self) -> Level {
        match self {
            Notice::Reloading => Level::Warning,
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Reloading => f.write_str("SIGHUP received - reloading configuration"),
        }
    }
}
