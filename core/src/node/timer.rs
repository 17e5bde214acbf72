//! The Node's timers: one table indexed by [`TimerKind`], so `poll_timeout` can say which
//! deadline it is waiting for.

use crate::node::time::Millis;

/// Every timer the Node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Ask the lease store who holds the lease (or try to acquire it).
    LeasePoll,
    /// Renew the held lease.
    LeaseRenew,
    /// The held lease's safe write deadline (expiry minus the safety margin).
    WriteDeadline,
    /// The held lease's expiry by our clock: step down.
    LeaseExpiry,
    /// Send heartbeats to replicas.
    Heartbeat,
    /// The upstream primary has been silent too long: reconnect.
    UpstreamIdle,
    /// Reconnect to the primary after a backoff.
    Reconnect,
    /// A synchronous commit has waited for acknowledgements too long.
    SyncTimeout,
    /// Apply the retention policy to the LTX history.
    Retention,
    /// A handoff target has had long enough to catch up: give the handoff up.
    Handoff,
    /// LTX files written without an fsync have waited [`crate::node::Config::flush_ms`]:
    /// make them durable.
    Flush,
    /// A replica's next copy of a live database, held off after copies it kept failing,
    /// may go.
    CopyHoldOff,
}

impl TimerKind {
    /// All kinds, in table order.
    pub const ALL: [TimerKind; 12] = [
        TimerKind::LeasePoll,
        TimerKind::LeaseRenew,
        TimerKind::WriteDeadline,
        TimerKind::LeaseExpiry,
        TimerKind::Heartbeat,
        TimerKind::UpstreamIdle,
        TimerKind::Reconnect,
        TimerKind::SyncTimeout,
        TimerKind::Retention,
        TimerKind::Handoff,
        TimerKind::Flush,
        TimerKind::CopyHoldOff,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Deadlines by kind; `None` when a timer is not armed.
#[derive(Debug, Clone, Default)]
pub struct Timers {
    deadlines: [Option<Millis>; TimerKind::ALL.len()],
}

impl Timers {
    /// Arms (or re-arms) a timer.
    pub fn set(&mut self, kind: TimerKind, at: Millis) {
        self.deadlines[kind.index()] = Some(at);
    }

    /// Disarms a timer.
    pub fn stop(&mut self, kind: TimerKind) {
        self.deadlines[kind.index()] = None;
    }

    /// When a timer fires, if armed.
    #[must_use]
    pub fn get(&self, kind: TimerKind) -> Option<Millis> {
        self.deadlines[kind.index()]
    }

    /// The earliest armed deadline and its kind.
    #[must_use]
    pub fn next(&self) -> Option<(Millis, TimerKind)> {
        TimerKind::ALL.iter().filter_map(|&k| self.get(k).map(|at| (at, k))).min()
    }

    /// Disarms and returns every timer due at `now`, in table order.
    pub fn expire(&mut self, now: Millis) -> Vec<TimerKind> {
        let mut due = Vec::new();
        for kind in TimerKind::ALL {
            if self.get(kind).is_some_and(|at| at <= now) {
                self.stop(kind);
                due.push(kind);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_reports_the_earliest_deadline_with_its_kind() {
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(TimerKind::Heartbeat, Millis(50));
        t.set(TimerKind::LeaseRenew, Millis(20));
        assert_eq!(t.next(), Some((Millis(20), TimerKind::LeaseRenew)));
        assert_eq!(t.expire(Millis(30)), vec![TimerKind::LeaseRenew]);
        assert_eq!(t.next(), Some((Millis(50), TimerKind::Heartbeat)));
    }
}
