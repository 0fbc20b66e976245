//! Byte formats shared by the shell and the simulator (reference §1.4, §1.5).
//!
//! - [`status`]: the 12-byte status record a child writes to the master's status pipe.
//! - [`control`]: the line protocol between `roost stop|reload|log reopen|status|who` and the
//!   master's control socket.
//!
//! Every decoder here is fed bytes from a peer and is fuzzed: no input makes it panic, and no
//! input makes it keep more than a bounded amount of memory (a control line over
//! [`control::MAX_LINE`] bytes is an error, never a reason to grow).

pub mod control;
pub mod status;
