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
use super::quarantine::{move_to_free_name, Quarantine};
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

impl FolderCompletion {
    /// With `--done`, moves a finished input away (see the module's notes). Also for an input
    /// found finished on record at start but still in place: a stop came between its record
    /// and its move.
    pub fn move_done(&self, abs: &std::path::Path, rel: &std::path::Path, stamp: &FileStamp) {
        if let Some(done) = &self.done_dir {
            // Only the file that was read: one replaced since (a newer version, perhaps still
            // waiting for its quiet period) is left for its own turn.
            if changed_since_read(abs, stamp) {
                tracing::info!(
                    "{}: changed since it was read; left in place for --done",
                    abs.display()
                );
                return;
            }
            // Never over a file already there (an earlier input of the same name): that one
            // keeps its name and this one gets a number, `NAME.1`, as in quarantine.
            let to = done.join(rel);
            let moved = to
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| move_to_free_name(abs, &to));
            // A failed move leaves the input where it was; the journal still marks it finished.
            match moved {
                Ok(at) if at != to => tracing::info!(
                    "{}: moved to {} ({} is taken)",
                    abs.display(),
                    at.display(),
                    to.display()
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("{}: cannot move to {}: {e}", abs.display(), to.display())
                }
            }
        }
    }
}

impl Completion for FolderCompletion {
    fn done(&self, id: &FrameId, version: &ModelVersion, _by_sink: bool) -> Result<()> {
        let FrameId::File { rel, abs, stamp } = id else {
            return Ok(());
        };
        if let Some(j) = &self.journal {
            // An older version whose newer one was finished first (the sink kept the newer
            // result): its record must not replace the newer one's, or the next start would
            // take the file again.
            let now = std::fs::metadata(abs).map(|m| FileStamp::of(&m)).ok();
            if now.is_some_and(|n| !n.same_file_state(stamp) && j.is_done(rel, &n)) {
                return Ok(());
            }
            j.record(rel, stamp, &version.to_string())?;
        }
        self.move_done(abs, rel, stamp);
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
                // Its history ends here: put back, it starts afresh. (Not before the move: a
                // file that could not be set aside keeps its marks, so one that ends the
                // process is still caught.)
                if let Some(j) = &self.journal {
                    if let Err(e) = j.cleared(rel, &stamp.hash) {
                        tracing::error!("{}: {e}", abs.display());
                    }
                }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::source::Completion;

    /// `rel` in `dir` written with `bytes`, as the source would name it.
    fn file(dir: &Path, rel: &str, bytes: &[u8]) -> FrameId {
        let abs = dir.join(rel);
        std::fs::write(&abs, bytes).unwrap();
        let mut stamp = FileStamp::of(&std::fs::metadata(&abs).unwrap());
        stamp.hash = FileStamp::hash_of(bytes);
        FrameId::File {
            rel: rel.into(),
            abs,
            stamp,
        }
    }

    fn version() -> ModelVersion {
        ModelVersion::finetuned("p", 1, 0)
    }

    #[test]
    fn done_moves_never_replace_and_leave_a_replaced_input_in_place() {
        let t = tempfile::tempdir().unwrap();
        let (inp, done) = (t.path().join("in"), t.path().join("done"));
        std::fs::create_dir_all(&inp).unwrap();
        let c = FolderCompletion {
            done_dir: Some(done.clone()),
            ..FolderCompletion::default()
        };
        c.done(&file(&inp, "a.png", b"one"), &version(), false)
            .unwrap();
        // A new a.png, finished too: the first keeps its place, this one gets a number.
        c.done(&file(&inp, "a.png", b"two!"), &version(), false)
            .unwrap();
        assert_eq!(std::fs::read(done.join("a.png")).unwrap(), b"one");
        assert_eq!(std::fs::read(done.join("a.png.1")).unwrap(), b"two!");
        // Replaced by a newer version after it was read: the newer one stays for its turn.
        let old = file(&inp, "b.png", b"old");
        std::fs::write(inp.join("b.png"), b"newer").unwrap();
        c.done(&old, &version(), false).unwrap();
        assert_eq!(std::fs::read(inp.join("b.png")).unwrap(), b"newer");
        assert!(!done.join("b.png").exists());
    }

    #[test]
    fn an_older_version_finished_last_does_not_replace_the_newer_record() {
        let t = tempfile::tempdir().unwrap();
        let (inp, state) = (t.path().join("in"), t.path().join("state"));
        std::fs::create_dir_all(&inp).unwrap();
        let j = Arc::new(Journal::open(&state, "p", "v").unwrap());
        let c = FolderCompletion {
            journal: Some(j.clone()),
            ..FolderCompletion::default()
        };
        let v1 = file(&inp, "latest.png", b"one");
        let v2 = file(&inp, "latest.png", b"version two");
        c.done(&v2, &version(), false).unwrap();
        c.done(&v1, &version(), false).unwrap();
        let FrameId::File { rel, stamp, .. } = &v2 else {
            unreachable!()
        };
        assert!(j.is_done(rel, stamp));
    }

    #[test]
    fn a_file_that_cannot_be_set_aside_keeps_its_crash_marks() {
        let t = tempfile::tempdir().unwrap();
        let (inp, state) = (t.path().join("in"), t.path().join("state"));
        std::fs::create_dir_all(&inp).unwrap();
        // A quarantine "folder" that is a file: every move into it fails.
        let q = t.path().join("q");
        std::fs::write(&q, b"in the way").unwrap();
        let id = file(&inp, "bad.png", b"junk");
        let FrameId::File { rel, stamp, .. } = &id else {
            unreachable!()
        };
        // The run before ended (kill -9) while bad.png was in progress.
        Journal::open(&state, "p", "v")
            .unwrap()
            .begun(rel, &stamp.hash)
            .unwrap();
        let j = Arc::new(Journal::open(&state, "p", "v").unwrap());
        let c = FolderCompletion {
            journal: Some(j.clone()),
            quarantine: Some(Quarantine::new(q)),
            ..FolderCompletion::default()
        };
        c.begun(&id);
        assert!(matches!(
            c.rejected(&id, "not an image"),
            SetAside::Reported
        ));
        c.ended(&id);
        assert!(inp.join("bad.png").exists());
        assert_eq!(j.history(rel, &stamp.hash).crashes(), 1);
    }
}
