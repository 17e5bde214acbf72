//! The driver's clock: wall time in milliseconds (LTX timestamps and heartbeats carry it),
//! advanced by a monotonic clock so it never goes backwards while the process runs.

use std::time::{Instant, SystemTime};

use replite_core::node::Millis;

/// Milliseconds since the Unix epoch as of start, plus monotonic time since.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_wall_ms: u64,
}

impl Clock {
    /// Reads both clocks once.
    #[must_use]
    pub fn start() -> Clock {
        let start_wall_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock { start: Instant::now(), start_wall_ms }
    }

    /// Now, for the Node.
    #[must_use]
    pub fn now(&self) -> Millis {
        Millis(self.start_wall_ms.saturating_add(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)))
    }

    /// The monotonic instant a Node deadline falls at.
    #[must_use]
    pub fn instant_at(&self, at: Millis) -> Instant {
        self.start + std::time::Duration::from_millis(at.0.saturating_sub(self.start_wall_ms))
    }
}
