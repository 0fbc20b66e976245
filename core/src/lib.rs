//! roost-core: the pure, deterministic state machines of roost.
//!
//! Nothing here does IO, reads a clock, starts a thread or draws a random number: time and every
//! event arrive as inputs, and every effect leaves as an output. The shell binds these machines
//! to the operating system, the simulator to a virtual world; both only translate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod child;
pub mod config;
pub mod ids;
pub mod input;
pub mod login;
pub mod master;
pub mod notice;
pub mod output;
pub mod post_login;
pub mod settings;
pub mod setup;
pub mod signal;
pub mod time;
pub mod violation;
pub mod wire;
