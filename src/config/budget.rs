//! `[budget]`: how much memory and time the frames of a run may take. The per-frame budget
//! is checked against what a frame will cost through every stage (`stage::cost`), from its
//! header, before any pixel is decoded; the in-flight budget bounds all frames together, and
//! the source waits for room instead of over-committing; a frame that runs past its deadline
//! fails with that reason; a stop drains for at most `drain_timeout_s`.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Bounds of `max_frame_mib` and `max_in_flight_mib`: 16 MiB to 1 TiB.
pub const MIB_RANGE: (u64, u64) = (16, 1 << 20);
/// Bounds of `frame_timeout_s`: a second to a day.
pub const FRAME_TIMEOUT_S: (f64, f64) = (1.0, 86_400.0);
/// Bounds of `drain_timeout_s`: 0 (stop at once, leaving everything unfinished for the next
/// run) to an hour.
pub const DRAIN_TIMEOUT_S: (f64, f64) = (0.0, 3_600.0);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Most memory one frame may cost through the pipeline, in MiB, as estimated from its
    /// header (size, channels, bit depth) and the pipeline's settings. A frame over it is set
    /// aside with the estimate in its reason.
    pub max_frame_mib: u64,
    /// Most memory all frames in flight may cost together, in MiB. At least `max_frame_mib`.
    pub max_in_flight_mib: u64,
    /// Longest a frame may take from the start of its decode to its output; past it the frame
    /// fails and is set aside with that reason.
    pub frame_timeout_s: f64,
    /// After SIGTERM: how long frames already at the model may take to finish. What is not
    /// done then is left for the next run (files, queue entries) and the process ends.
    pub drain_timeout_s: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            max_frame_mib: 1024,
            max_in_flight_mib: 1024,
            frame_timeout_s: 600.0,
            drain_timeout_s: 30.0,
        }
    }
}

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let (lo, hi) = MIB_RANGE;
        within("budget.max_frame_mib", self.max_frame_mib, lo, hi)?;
        within("budget.max_in_flight_mib", self.max_in_flight_mib, lo, hi)?;
        if self.max_in_flight_mib < self.max_frame_mib {
            return Err(Invalid::new(
                "budget.max_in_flight_mib",
                self.max_in_flight_mib,
                format!(
                    "must be at least budget.max_frame_mib ({}): one frame must fit",
                    self.max_frame_mib
                ),
            ));
        }
        let (lo, hi) = FRAME_TIMEOUT_S;
        within("budget.frame_timeout_s", self.frame_timeout_s, lo, hi)?;
        let (lo, hi) = DRAIN_TIMEOUT_S;
        within("budget.drain_timeout_s", self.drain_timeout_s, lo, hi)
    }

    pub fn max_frame_bytes(&self) -> u64 {
        self.max_frame_mib << 20
    }

    pub fn max_in_flight_bytes(&self) -> u64 {
        self.max_in_flight_mib << 20
    }

    pub fn frame_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.frame_timeout_s)
    }

    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.drain_timeout_s)
    }
}
