//! Retrying a failed folder input while watching, with backoff.
//!
//! An input can fail for reasons other than its bytes: the output folder is not writable for a
//! while, the disk is full, the output name is too long. Such a frame is reported to the
//! source's completion as `failed`, which counts it in the journal (a `failed` mark) and, while
//! the source is watching, schedules it here: the source takes it again once its backoff has
//! passed (5 s, doubling per failure of the file, at most 5 minutes). After
//! `max_attempts` failures (`[source] max_deliveries`) the next take sets it aside with the last
//! error instead (see [`super::marks::History::verdict`]), so an input whose output can never be
//! written is neither tried forever nor stranded until a restart.
//!
//! With `--once` nothing is scheduled (the run ends after its scan); the journal's count makes
//! the next start try it again, up to the same limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{FolderSource, Taken};
use crate::runtime::SharedClock;
use crate::source::Intake;

/// The first wait before a failed input is taken again; it doubles with each failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait after a file's `failures`-th failure (1 for the first).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
}

/// Failed inputs waiting to be taken again, by absolute path, with when.
#[derive(Debug)]
pub struct Retries {
    clock: SharedClock,
    due: Mutex<HashMap<PathBuf, Instant>>,
}

impl Retries {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            due: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `abs` again once the backoff after its `failures`-th failure has passed.
    pub fn schedule(&self, abs: &Path, failures: u32) {
        let at = self.clock.now() + backoff(failures);
        let mut d = self.due.lock().unwrap_or_else(|e| e.into_inner());
        d.insert(abs.to_path_buf(), at);
    }

    /// The inputs whose time has come (forgotten here), in path order.
    pub fn take_due(&self) -> Vec<PathBuf> {
        let now = self.clock.now();
        let mut d = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let mut due: Vec<PathBuf> = d
            .iter()
            .filter(|(_, &at)| at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        due.sort();
        for p in &due {
            d.remove(p);
        }
        due
    }
}

impl FolderSource {
    /// Takes again the failed inputs whose backoff has passed. False when the pipeline is gone.
    pub(super) fn retry_due(&mut self, intake: &Intake) -> bool {
        let Some(r) = self.cfg.completion.retries.clone() else {
            return true;
        };
        for p in r.take_due() {
            // Forget that it was taken, so that `take` looks at it afresh.
            self.seen.remove(&p);
            match self.take(&p, intake) {
                Taken::Closed => return false,
                Taken::Changing => self.wait_quiet(p),
                Taken::Sent | Taken::Skipped => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
