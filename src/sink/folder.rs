//! The folder sink: each output at the input's relative path with the output kind's extension,
//! written to a temporary file in the same folder and renamed into place, so no reader ever
//! sees a partial file.

use std::path::{Path, PathBuf};

use super::{Output, Payload, Sink};
use crate::config::OutputKind;
use crate::error::{Error, Result};
use crate::frame::FrameId;
use crate::runtime::write_atomic;

pub struct FolderSink {
    dir: PathBuf,
    written: u64,
    /// With several output kinds each goes to its own sub-folder, `OUT/KIND/NAME.EXT`.
    per_kind: bool,
}

impl FolderSink {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        remove_stale_temps(dir);
        Ok(Self {
            dir: dir.to_path_buf(),
            written: 0,
            per_kind: false,
        })
    }

    /// Puts each output kind in its own sub-folder (used when a run emits several kinds).
    pub fn per_kind(mut self, yes: bool) -> Self {
        self.per_kind = yes;
        self
    }

    /// Where a frame's output of a kind goes.
    pub fn target(&self, id: &FrameId, kind: OutputKind) -> PathBuf {
        let dir = if self.per_kind {
            self.dir.join(kind.name())
        } else {
            self.dir.clone()
        };
        let ext = kind.extension();
        match id {
            FrameId::File { rel, .. } => dir.join(rel).with_extension(ext),
            FrameId::Stream { seq, .. } => dir.join(format!("frame-{seq:08}.{ext}")),
            // Named by the frame, not the delivery: a re-delivered entry replaces its own
            // output (atomically), so a folder never holds two outputs for one frame.
            FrameId::Entry(e) => dir.join(&e.name).with_extension(ext),
        }
    }
}

/// Removes the temporary files of a killed run (see [`crate::runtime::atomic`]).
fn remove_stale_temps(dir: &Path) {
    let removed = crate::runtime::atomic::remove_stale_temps(dir);
    if removed > 0 {
        tracing::info!(
            "{}: removed {removed} temporary files of an interrupted run",
            dir.display()
        );
    }
}

/// Whether a write error means no later write can succeed either.
fn is_fatal(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        StorageFull | ReadOnlyFilesystem | QuotaExceeded | BrokenPipe
    )
}

impl Sink for FolderSink {
    fn write(&mut self, out: Output) -> Result<()> {
        for (kind, payload) in &out.files {
            let path = self.target(&out.id, *kind);
            let npy;
            let bytes = match payload {
                Payload::Bytes(b) => b,
                Payload::Code(c) => {
                    npy = c.to_npy()?;
                    &npy
                }
            };
            match write_atomic(&path, bytes) {
                Ok(()) => tracing::debug!("{} -> {}", out.id, path.display()),
                Err(e) if !is_fatal(&e.source) => {
                    return Err(Error::FrameFailed(format!(
                        "{}: cannot write {}: {}",
                        out.id,
                        e.path.display(),
                        e.source
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.written += 1;
        Ok(())
    }

    fn skip(&mut self, _seq: u64) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
