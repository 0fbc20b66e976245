//! The simulator: the core's real machines in a simulated world.
//!
//! `world` is a discrete-event world (time jumps to the next event or timer), used by the
//! scenario replays, the swarm and capacity planning. Every run is a function of its seed.

pub mod scenario;
pub mod swarm;
pub mod world;
