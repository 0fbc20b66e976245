//! The simulator: roost's real core machines driven in simulated time.
//!
//! * [`des`]: a discrete-event driver (fake kernel, virtual clock jumping to the next deadline)
//!   for scheduling scenarios, the swarm and capacity planning;
//! * [`net`]: the same master in a turmoil world, with clients on simulated TCP;
//! * [`machine`]: the machine of one simulated process, fed the same way by both drivers;
//! * [`load`]: load profiles, faults and timed events (RON);
//! * [`stats`]: per-service counts, kept the same way by both drivers;
//! * [`scenario`]: `sim/scenarios/*.ron`, their expectations, and how they are checked;
//! * [`swarm`]: random worlds drawn from a seed;
//! * [`trace`]: recorded inputs replayed straight into the core;
//! * [`policy`]: the login overflow policies compared on one load (issue 6);
//! * [`plan`] and [`plot`]: `roost sim`'s report and SVG timeline.

pub mod des;
pub mod load;
pub mod machine;
pub mod net;
pub mod plan;
pub mod plot;
pub mod policy;
pub mod scenario;
pub mod stats;
pub mod swarm;
pub mod trace;
pub mod view;
