//! What the stdin source and the stdout sink of one `--framing y4m` run share.
//!
//! The sink writes the stream's header back, so it needs the header the source read; and a
//! frame that fails (the model, a panic, an overload drop) must still take its place in the
//! output, or the video would lose frames and drift out of sync with its audio. The source
//! therefore holds each input frame here until the sink has written its output: a failed
//! frame goes out as it came in (noisy, but in place), and the frame count is kept. Memory:
//! one copy of each frame in flight, which the pipeline's bounded channels already bound.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::Header;

#[derive(Default)]
pub struct Video {
    header: OnceLock<Header>,
    held: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Video {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the stream's header (the first call wins; a stream has one).
    pub fn start(&self, header: Header) {
        let _ = self.header.set(header);
    }

    /// The stream's header, once the source has read it.
    pub fn header(&self) -> Option<&Header> {
        self.header.get()
    }

    /// Keeps input frame `seq` (its one-frame record) until its output is written.
    pub fn hold(&self, seq: u64, record: Vec<u8>) {
        self.lock().insert(seq, record);
    }

    /// Input frame `seq`, no longer held; `None` if it never was.
    pub fn take(&self, seq: u64) -> Option<Vec<u8>> {
        self.lock().remove(&seq)
    }

    /// How many input frames are held (for tests: each is released once written).
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<u8>>> {
        // A panic elsewhere while holding the lock leaves the map whole: keep using it.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}
