//! Time as a value that can be handed in: the real clock for the daemon, a manual one for tests.
//!
//! Rules that depend on time (a file is complete once it has not changed for a quiet period; a
//! rescan runs every so often) read it through [`Clock`] rather than `Instant::now()`, so a
//! test can set the clock to just before and just after a deadline and assert what happened,
//! with no sleeps and no margins. Both a monotonic instant (for intervals) and the wall clock
//! (to compare with file mtimes) come from the same clock, so a test moves them together.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time, for intervals and deadlines.
    fn now(&self) -> Instant;
    /// Wall-clock time, for comparing with file modification times.
    fn system_now(&self) -> SystemTime;
}

/// A clock shared by the parts of one run.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn system_now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until told to move: both of its readings advance together, by
/// exactly what [`ManualClock::advance`] says.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_system: SystemTime,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// A clock stopped at the present moment (any fixed starting point would do; the present
    /// keeps wall-clock readings comparable with the mtimes of freshly written files).
    pub fn new() -> Self {
        Self::starting_at(Instant::now(), SystemTime::now())
    }

    /// A clock stopped at the given readings.
    pub fn starting_at(start: Instant, start_system: SystemTime) -> Self {
        Self {
            start,
            start_system,
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn system_now(&self) -> SystemTime {
        self.start_system + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_both_readings_together() {
        let c = ManualClock::new();
        let (i0, s0) = (c.now(), c.system_now());
        assert_eq!((c.now(), c.system_now()), (i0, s0));
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now() - i0, Duration::from_millis(1500));
        assert_eq!(
            c.system_now().duration_since(s0).unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn the_system_clock_moves_forward() {
        let c = SystemClock;
        let a = c.now();
        assert!(c.now() >= a);
    }
}
