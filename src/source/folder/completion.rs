//! A folder's frames are finished by three records, in this order: the outputs are renamed
//! into place (the sink), the journal gets the input's record (so a restart skips it), then,
//! with `--done`, the input moves away. A bad file is quarantined instead, unless it changed
//! while it was read: then its writer was not done, and it will be taken again.
//!
//! The journal also gets marks of unfinished work ([`super::marks`]): `begun` before a frame
//! is decoded, `ended` when it leaves without output, `failed` when something other than its
//! bytes failed it, `cleared` when it is set aside.

use std::path::PathBuf;
use std::sync::Arc;

use super::journal::Journal;
use super::quarantine::Quarantine;
use super::retry::Retries;
use crate::error::Result;
use crate::frame::{FileStamp, FrameId};
use crate::model::version::ModelVersion;
use crate::source::{Completion, SetAside};

/// The journal, `--done` folder and quarantine of one folder source.
#[derive(Debug, Clone, Default)]
pub struct FolderCompletion {
    pub journal: Option<Arc<Journal>>,
    /// Move each finished input file here (keeping its relative path) after its outputs and
    /// its journal record are durable.
    pub done_dir: Option<PathBuf>,
    pub quarantine: Option<Quarantine>,
    /// While watching: failed inputs are taken again after a backoff (set by the source).
    pub retries: Option<Arc<Retries>>,
}

/// Whether a file changed since it was read (then it is not quarantined: it will be taken
/// again once its writer is done).
fn changed_since_read(abs: &std::path::Path, stamp: &FileStamp) -> bool {
    match std::fs::metadata(abs) {
        Ok(m) => !FileStamp::of(&m).same_file_state(stamp),
        Err(_) => true,
    }
}

impl Completion for FolderCompletion {
    fn done(&self, id: &FrameId, version: &ModelVersion, _by_sink: bool) -> Result<()> {
        let FrameId::File { rel, abs, stamp } = id else {
            return Ok(());
        };
        if let Some(j) = &self.journal {
            j.record(rel, stamp, &version.to_string())?;
        }
        if let Some(done) = &self.done_dir {
            let to = done.join(rel);
            let moved = to
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| std::fs::rename(abs, &to));
            // A failed move leaves the input where it was; the journal still marks it finished.
            if let Err(e) = moved {
                tracing::warn!("{}: cannot move to {}: {e}", abs.display(), to.display());
            }
        }
        Ok(())
    }

    fn rejected(&self, id: &FrameId, error: &str) -> SetAside {
        let (Some(q), FrameId::File { abs, rel, stamp }) = (&self.quarantine, id) else {
            return SetAside::Reported;
        };
        if changed_since_read(abs, stamp) {
            tracing::info!(
                "{}: changed while being read; it will be taken again",
                abs.display()
            );
            return SetAside::Retaken;
        }
        if let Some(j) = &self.journal {
            // Its history ends here: put back, it starts afresh.
            if let Err(e) = j.cleared(rel, &stamp.hash) {
                tracing::error!("{}: {e}", abs.display());
            }
        }
        match q.put(abs, rel, error) {
            Ok(to) => {
                tracing::warn!("{}: moved to {}", abs.display(), to.display());
                SetAside::Quarantined(to)
            }
            Err(e) => {
                tracing::error!("{}: cannot quarantine: {e}", abs.display());
                SetAside::Reported
            }
        }
    }

    fn can_defer(&self, id: &FrameId) -> bool {
        matches!(id, FrameId::File { .. })
    }

    fn failed(&self, id: &FrameId, error: &str) {
        let (Some(j), FrameId::File { rel, abs, stamp }) = (&self.journal, id) else {
            return;
        };
        // Counted: after `max_attempts` failures the file is set aside when next taken.
        if let Err(e) = j.failed(rel, &stamp.hash, error) {
            tracing::error!("{}: {e}", abs.display());
            return;
        }
        if let Some(r) = &self.retries {
            let failures = j.history(rel, &stamp.hash).failures;
            let wait = super::retry::backoff(failures);
            tracing::info!(
                "{}: failure {failures}; taken again in {} s",
                abs.display(),
                wait.as_secs()
            );
            r.schedule(abs, failures);
        }
    }

    fn begun(&self, id: &FrameId) {
        let (Some(j), FrameId::File { rel, abs, stamp }) = (&self.journal, id) else {
            return;
        };
        if let Err(e) = j.begun(rel, &stamp.hash) {
            // The journal cannot be written: the frame's record will fail too and stop the run.
            tracing::error!("{}: {e}", abs.display());
        }
    }

    fn ended(&self, id: &FrameId) {
        let (Some(j), FrameId::File { rel, abs, .. }) = (&self.journal, id) else {
            return;
        };
        if let Err(e) = j.ended(rel) {
            tracing::error!("{}: {e}", abs.display());
        }
    }

    fn abandon_in_flight(&self) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.abandon_in_flight() {
                tracing::error!("{e}");
            }
        }
    }
}
