//! The core's own clock types.
//!
//! The core never reads a clock: every entry point takes `now: Instant`, given by the driver
//! (the shell reads `CLOCK_MONOTONIC` once per turn of its loop, the simulator reads its virtual
//! clock). An `Instant` is a count of milliseconds since the driver's epoch, which keeps traces
//! printable and replayable bit for bit. Durations are `core::time::Duration`.

use core::fmt;
use core::ops::{Add, Sub};
pub use core::time::Duration;

use serde::{Deserialize, Serialize};

/// Monotonic core time: milliseconds since the driver's epoch.
///
/// Drivers build it; the core only compares it and adds `Duration`s.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Instant(u64);

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Instant = Instant(0);

    /// An instant `ms` milliseconds after the driver's epoch.
    pub const fn from_millis(ms: u64) -> Instant {
        Instant(ms)
    }

    /// Milliseconds since the driver's epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the driver's epoch: the unit of the original's per-second rate
    /// limits (limit warnings, the exit-failure storm rule).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Adds a duration, saturating at the end of time: a timer of "never" (4294967295 secs)
    /// must not overflow.
    fn add(self, rhs: Duration) -> Instant {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(ms))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_never_saturates_instead_of_overflowing() {
        let late = Instant::from_millis(u64::MAX - 5);
        assert_eq!(
            late + Duration::from_secs(4_294_967_295),
            Instant::from_millis(u64::MAX)
        );
    }

    #[test]
    fn subtraction_saturates_at_zero() {
        let a = Instant::from_millis(1_000);
        let b = Instant::from_millis(3_500);
        assert_eq!(b - a, Duration::from_millis(2_500));
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!(b.as_secs(), 3);
        assert_eq!(b.to_string(), "3.500s");
    }
}
