//! roost's shell: binds the core's machines to the operating system.
//!
//! The library holds everything but `main`: the fd planner and spawner, listeners, the
//! reopenable log writer, the master's event loop, the control client, and the child runtime
//! with the built-in services, so that tests and third-party services can use them.

pub mod child;
pub mod conf;
pub mod daemon;
pub mod fdplan;
pub mod listen;
pub mod logwriter;
pub mod spawn;
