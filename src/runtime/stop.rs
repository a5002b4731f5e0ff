//! The stop signal: set when the pipeline should stop taking new input (SIGTERM/SIGINT, or a
//! sink that cannot write any more). Cloned into every thread; checked, never waited on, so a
//! blocked thread is woken by its channel closing rather than by this flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared flag: once requested, stays requested.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
