//! A folder's frames are finished by three records, in this order: the outputs are renamed
//! into place (the sink), the journal gets the input's record (so a restart skips it), then,
//! with `--done`, the input moves away. A bad file is quarantined instead, unless it changed
//! while it was read: then its writer was not done, and it will be taken again.

use std::path::PathBuf;
use std::sync::Arc;

use super::journal::Journal;
use super::quarantine::Quarantine;
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
}
