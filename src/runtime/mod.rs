//! Leaves every other module may use: the stop signal, the memory budget and deadlines, run-time telemetry, atomic file writes,
//! the one directory walker, the one safe file reader, thread settings, and the clock
//! time-dependent rules read.
//!
//! Nothing here imports anything else of the crate (`crate::…`): these are the bottom of the
//! house, so a source, a stage, the trainer and the wiring can all share them without an
//! import circle. Errors are `std::io` ones that carry the path they are about.

pub mod atomic;
pub mod budget;
pub mod clock;
pub mod host;
pub mod read;
pub mod stop;
pub mod telemetry;
pub mod threads;
pub mod walk;

pub use atomic::{write_atomic, PathError};
pub use budget::{Budget, Deadline, Drain, Expired, Lease};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use read::{read_regular_file, Links, ReadError, RegularFile};
pub use stop::Stop;
pub use telemetry::Telemetry;
