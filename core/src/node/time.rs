//! Time as the caller sees it. The Node never reads a clock: every input carries `now`.

use std::fmt;
use std::ops::{Add, Sub};

/// A point on the caller's clock, in milliseconds. It must never go backwards. The Node also
/// stamps LTX headers and heartbeat frames with it, which LiteFS reads as milliseconds since
/// the Unix epoch, so a daemon passes wall-clock time made monotonic (never stepping back);
/// durations (lease expiry, timers) only ever use differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// The time `ms` milliseconds later, saturating.
    #[must_use]
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<u64> for Millis {
    type Output = Millis;
    fn add(self, ms: u64) -> Millis {
        self.plus(ms)
    }
}

impl Sub<u64> for Millis {
    type Output = Millis;
    fn sub(self, ms: u64) -> Millis {
        Millis(self.0.saturating_sub(ms))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
