//! The stop signal: set when the pipeline should stop taking new input (SIGTERM/SIGINT, or a
//! sink that cannot write any more). Cloned into every thread; checked, never waited on, so a
//! blocked thread is woken by its channel closing rather than by this flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared flag: once requested, stays requested. A child ([`Stop::child`]) is also stopped
/// by its parent, and can be stopped alone (one source of two ends, the other goes on until
/// told).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    parent: Option<Box<Stop>>,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || self.parent.as_ref().is_some_and(|p| p.requested())
    }
    /// A stop that is requested when this one is, or on its own.
    pub fn child(&self) -> Stop {
        Stop {
            flag: Arc::default(),
            parent: Some(Box::new(self.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_stops_with_its_parent_but_not_the_other_way() {
        let parent = Stop::new();
        let (a, b) = (parent.child(), parent.child());
        a.request();
        assert!(a.requested() && !b.requested() && !parent.requested());
        parent.request();
        assert!(b.requested());
    }
}
