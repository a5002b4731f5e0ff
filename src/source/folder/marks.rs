//! The journal's marks of unfinished work: which inputs were in progress when the process
//! ended, and which failed. They let a restart tell a file that takes the daemon down (out of
//! memory, a crash in a decoder) or that fails every time (an output name too long) from one
//! that was merely caught by a power loss, and set the former aside instead of trying it
//! forever.
//!
//! Lines, beside the records of finished inputs (all for one input's path and content hash):
//! - `{"begun": PATH, "hash": H, "time": T}`: the frame passed its budget check and is about
//!   to be decoded (written, fsync'd, before the decoder runs).
//! - `{"ended": PATH, "hash": H, "time": T}`: it left the pipeline without output, without
//!   ending the process (failed, set aside, left for the next run by a stop or a drain).
//! - `{"failed": PATH, "hash": H, "error": E, "time": T}`: it failed for a reason other than
//!   its bytes (an output that could not be written).
//! - `{"cleared": PATH, "hash": H, "time": T}`: it was set aside; its counts start again if it
//!   is put back.
//!
//! A finished record clears them all. A `begun` with no `ended` or record after it means the
//! process ended while the frame was in progress. The rule, in [`History`]: once, it is tried
//! again, alone (nothing else in flight); twice, it is set aside with a note. So a good file
//! interrupted by one power loss, or a `kill -9`, runs again; a file that kills the process
//! does so at most twice, and the second time alone, so no innocent file shares the blame.
//! (Two power losses, each while the same file was in progress, also set it aside; its note
//! says so, and moving it back gives it a fresh start.)

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How many times the process ended while one file was in progress before it is set aside.
pub const CRASHES_TO_QUARANTINE: u32 = 2;

/// One mark line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Mark {
    Begun {
        begun: String,
        hash: String,
        time: String,
    },
    Ended {
        ended: String,
        hash: String,
        time: String,
    },
    Failed {
        failed: String,
        hash: String,
        error: String,
        time: String,
    },
    Cleared {
        cleared: String,
        hash: String,
        time: String,
    },
}

impl Mark {
    fn path(&self) -> &str {
        match self {
            Mark::Begun { begun: p, .. }
            | Mark::Ended { ended: p, .. }
            | Mark::Failed { failed: p, .. }
            | Mark::Cleared { cleared: p, .. } => p,
        }
    }

    fn hash(&self) -> &str {
        match self {
            Mark::Begun { hash, .. }
            | Mark::Ended { hash, .. }
            | Mark::Failed { hash, .. }
            | Mark::Cleared { hash, .. } => hash,
        }
    }
}

/// What the marks say about one input (one content).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub hash: String,
    /// `begun` marks, and `ended` marks.
    pub begun: u32,
    pub ended: u32,
    /// When the unfinished `begun` marks were written (the latest few).
    pub begun_times: Vec<String>,
    pub failures: u32,
    pub last_error: Option<String>,
}

impl History {
    /// Times the process ended while this input was in progress.
    pub fn crashes(&self) -> u32 {
        self.begun.saturating_sub(self.ended)
    }

    /// Why it is set aside at take, if it is: it ended the process too often, or failed
    /// `max_attempts` times.
    pub fn verdict(&self, max_attempts: u32) -> Option<String> {
        if self.crashes() >= CRASHES_TO_QUARANTINE {
            return Some(format!(
                "the process ended {} times while this file was in progress (begun at {}) without finishing it: set aside so that it cannot take the daemon down again (out of memory? see [budget] in the pipeline reference); move it back to try again",
                self.crashes(),
                self.begun_times.join(", ")
            ));
        }
        if self.failures >= max_attempts {
            return Some(format!(
                "failed {} times, the last: {}; set aside (move it back to try again)",
                self.failures,
                self.last_error.as_deref().unwrap_or("unknown")
            ));
        }
        None
    }
}

/// The marks of every input, as read and as written since.
#[derive(Debug, Default)]
pub struct Marks {
    by_path: HashMap<String, History>,
}

impl Marks {
    /// Applies one mark line.
    pub fn apply(&mut self, m: &Mark) {
        if let Mark::Cleared { cleared, .. } = m {
            self.by_path.remove(cleared);
            return;
        }
        let h = self.by_path.entry(m.path().to_string()).or_default();
        if h.hash != m.hash() {
            // Other content under the same name: a new file, with no history.
            *h = History {
                hash: m.hash().to_string(),
                ..History::default()
            };
        }
        match m {
            Mark::Begun { time, .. } => {
                h.begun += 1;
                h.begun_times.push(time.clone());
                // Only the unfinished ones are of interest; keep a few.
                let keep = h.crashes() as usize + 1;
                if h.begun_times.len() > keep.min(8) {
                    h.begun_times.remove(0);
                }
            }
            Mark::Ended { .. } => {
                h.ended += 1;
                if h.crashes() == 0 {
                    h.begun_times.clear();
                }
            }
            Mark::Failed { error, .. } => {
                h.failures += 1;
                h.last_error = Some(error.clone());
            }
            Mark::Cleared { .. } => {}
        }
    }

    /// A finished record clears the input's marks.
    pub fn finished(&mut self, path: &str) {
        self.by_path.remove(path);
    }

    /// The history of `path` with content `hash` (empty if none, or for other content).
    pub fn history(&self, path: &str, hash: &str) -> History {
        match self.by_path.get(path) {
            Some(h) if h.hash == hash => h.clone(),
            _ => History::default(),
        }
    }

    /// Whether `path` has any marks (of any content).
    pub fn has(&self, path: &str) -> bool {
        self.by_path.contains_key(path)
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Lines that say the same as these marks (for compaction): an input's unfinished
    /// `begun` marks and its failures.
    pub fn lines(&self, time: &str) -> Vec<Mark> {
        let mut paths: Vec<_> = self.by_path.iter().collect();
        paths.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for (p, h) in paths {
            for k in 0..h.crashes() as usize {
                out.push(Mark::Begun {
                    begun: p.clone(),
                    hash: h.hash.clone(),
                    time: h.begun_times.get(k).cloned().unwrap_or(time.to_string()),
                });
            }
            for _ in 0..h.failures {
                out.push(Mark::Failed {
                    failed: p.clone(),
                    hash: h.hash.clone(),
                    error: h.last_error.clone().unwrap_or_default(),
                    time: time.to_string(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begun(p: &str, hash: &str, t: &str) -> Mark {
        Mark::Begun {
            begun: p.into(),
            hash: hash.into(),
            time: t.into(),
        }
    }

    fn ended(p: &str, hash: &str) -> Mark {
        Mark::Ended {
            ended: p.into(),
            hash: hash.into(),
            time: "t".into(),
        }
    }

    /// One power loss: tried again. Twice unfinished: set aside, the times named. Other
    /// content under the name, or a finished record, starts afresh.
    #[test]
    fn set_aside_after_the_second_unfinished_start_only() {
        let mut m = Marks::default();
        m.apply(&begun("a.png", "h1", "t1"));
        m.apply(&ended("a.png", "h1"));
        m.apply(&begun("a.png", "h1", "t2"));
        let h = m.history("a.png", "h1");
        assert_eq!(h.crashes(), 1);
        assert_eq!(h.verdict(5), None, "one interruption is forgiven");
        m.apply(&begun("a.png", "h1", "t3"));
        let v = m.history("a.png", "h1").verdict(5).expect("set aside");
        assert!(v.contains("2 times") && v.contains("t2, t3"), "{v}");
        assert_eq!(m.history("a.png", "h2"), History::default());
        m.apply(&begun("a.png", "h2", "t4"));
        assert_eq!(m.history("a.png", "h2").crashes(), 1, "new content");
        m.finished("a.png");
        assert!(m.is_empty());
    }

    #[test]
    fn failures_count_up_to_the_limit_and_clearing_forgets() {
        let mut m = Marks::default();
        for k in 0..3 {
            m.apply(&Mark::Failed {
                failed: "b.png".into(),
                hash: "h".into(),
                error: format!("name too long {k}"),
                time: "t".into(),
            });
        }
        let h = m.history("b.png", "h");
        assert_eq!(h.verdict(4), None);
        assert!(h.verdict(3).unwrap().contains("name too long 2"));
        m.apply(&Mark::Cleared {
            cleared: "b.png".into(),
            hash: "h".into(),
            time: "t".into(),
        });
        assert_eq!(m.history("b.png", "h").failures, 0);
    }

    /// Compaction keeps what the marks say.
    #[test]
    fn lines_say_the_same() {
        let mut m = Marks::default();
        m.apply(&begun("a.png", "h", "t1"));
        m.apply(&begun("a.png", "h", "t2"));
        m.apply(&Mark::Failed {
            failed: "c.png".into(),
            hash: "k".into(),
            error: "e".into(),
            time: "t".into(),
        });
        let mut again = Marks::default();
        for l in m.lines("now") {
            again.apply(&l);
        }
        assert_eq!(again.history("a.png", "h").crashes(), 2);
        assert_eq!(again.history("c.png", "k").failures, 1);
    }
}
