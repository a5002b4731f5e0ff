//! The folder source: an initial scan, then (unless `--once`) a notify watch.
//!
//! Only complete files are taken: on close-after-write, or when renamed into the folder.
//! Dot-files and partial files (`*.tmp`, `*.part`, …) are ignored. When notify reports that it
//! lost events (`Flag::Rescan`), the folder is scanned again. A file is taken again only if its
//! size or modification time changed since it was last taken.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{RecvTimeoutError, Sender};
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::{RawFrame, Source, Stop};
use crate::error::{Error, Result};
use crate::frame::FrameId;

/// Settings of a folder source.
#[derive(Debug, Clone)]
pub struct FolderSourceConfig {
    pub dir: PathBuf,
    pub recursive: bool,
    /// Process what is there, then end.
    pub once: bool,
    /// Folders never read from (e.g. the output folder when it lies inside the input).
    pub exclude: Vec<PathBuf>,
    /// Files larger than this are reported instead of read.
    pub max_file_bytes: u64,
}

pub struct FolderSource {
    cfg: FolderSourceConfig,
    root: PathBuf,
    exclude: Vec<PathBuf>,
    seen: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    /// Files a scan found still changing: taken once quiet (or on their close-write event).
    pending: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    seq: u64,
}

/// A file modified more recently than this may still be being written.
const QUIET: Duration = Duration::from_secs(1);

/// Whether a file name is one we never take: hidden or partial.
pub fn is_ignored_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.ends_with('~')
        || [
            ".tmp",
            ".part",
            ".crdownload",
            ".swp",
            ".partial",
            ".download",
        ]
        .iter()
        .any(|s| lower.ends_with(s))
}

impl FolderSource {
    pub fn new(cfg: FolderSourceConfig) -> Result<Self> {
        let root = cfg.dir.canonicalize().map_err(|e| Error::Io {
            path: cfg.dir.clone(),
            source: e,
        })?;
        if !root.is_dir() {
            return Err(Error::Config {
                origin: "--input".into(),
                message: format!("{} is not a folder", cfg.dir.display()),
            });
        }
        let exclude = cfg
            .exclude
            .iter()
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        Ok(Self {
            cfg,
            root,
            exclude,
            seen: HashMap::new(),
            pending: HashMap::new(),
            seq: 0,
        })
    }

    /// The path relative to the root if it is a file we should take.
    fn candidate(&self, path: &Path) -> Option<PathBuf> {
        let rel = path.strip_prefix(&self.root).ok()?.to_path_buf();
        if rel.as_os_str().is_empty() {
            return None;
        }
        if !self.cfg.recursive && rel.components().count() != 1 {
            return None;
        }
        for c in rel.components() {
            if is_ignored_name(&c.as_os_str().to_string_lossy()) {
                return None;
            }
        }
        if self.exclude.iter().any(|e| path.starts_with(e)) {
            return None;
        }
        Some(rel)
    }

    /// Takes one file (if new or changed) and sends it; false when the receiver is gone.
    fn take(&mut self, path: &Path, tx: &Sender<RawFrame>) -> bool {
        let Some(rel) = self.candidate(path) else {
            return true;
        };
        let Ok(meta) = std::fs::metadata(path) else {
            return true; // gone again: nothing to do
        };
        if !meta.is_file() {
            return true;
        }
        let stamp = (meta.len(), meta.modified().ok());
        if self.seen.get(&rel) == Some(&stamp) {
            return true;
        }
        self.seen.insert(rel.clone(), stamp);
        let bytes = if meta.len() > self.cfg.max_file_bytes {
            Err(format!(
                "file of {} bytes is over the limit of {}",
                meta.len(),
                self.cfg.max_file_bytes
            ))
        } else {
            std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
        };
        let frame = RawFrame {
            seq: self.seq,
            id: FrameId::File {
                rel,
                abs: path.to_path_buf(),
            },
            bytes,
        };
        self.seq += 1;
        tx.send(frame).is_ok()
    }

    /// Files under `dir` (recursively if configured), sorted for a stable order.
    fn scan(&self, dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                tracing::warn!("{}: cannot list folder", d.display());
                continue;
            };
            for entry in rd.flatten() {
                let p = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    let hidden = is_ignored_name(&entry.file_name().to_string_lossy());
                    if self.cfg.recursive
                        && !hidden
                        && !self.exclude.iter().any(|e| p.starts_with(e))
                    {
                        stack.push(p);
                    }
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// Takes what a scan finds; while watching, files modified within [`QUIET`] are put aside
    /// (a writer may still have them open) and taken by [`Self::take_quiet`] or their event.
    fn scan_and_take(&mut self, dir: &Path, tx: &Sender<RawFrame>, stop: &Stop) -> bool {
        for p in self.scan(dir) {
            if stop.requested() {
                return false;
            }
            if !self.cfg.once {
                if let Some(stamp) = recent_stamp(&p) {
                    self.pending.insert(p, stamp);
                    continue;
                }
            }
            if !self.take(&p, tx) {
                return false;
            }
        }
        true
    }

    /// Takes the put-aside files that have not changed for [`QUIET`].
    fn take_quiet(&mut self, tx: &Sender<RawFrame>) -> bool {
        let paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        for p in paths {
            match recent_stamp(&p) {
                // Still changing: keep waiting.
                Some(stamp) => {
                    self.pending.insert(p, stamp);
                }
                None => {
                    self.pending.remove(&p);
                    if !self.take(&p, tx) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// `(size, mtime)` of a file modified less than [`QUIET`] ago; `None` when quiet (or gone).
fn recent_stamp(p: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(p).ok()?;
    let mtime = meta.modified().ok();
    let age = mtime.and_then(|m| SystemTime::now().duration_since(m).ok());
    // An mtime in the future (clock skew) counts as quiet, or the file would wait forever.
    match age {
        Some(a) if a < QUIET => Some((meta.len(), mtime)),
        _ => None,
    }
}

impl Source for FolderSource {
    fn run(mut self: Box<Self>, tx: Sender<RawFrame>, stop: Stop) -> Result<()> {
        let root = self.root.clone();
        if self.cfg.once {
            self.scan_and_take(&root, &tx, &stop);
            return Ok(());
        }
        // Watch before scanning so nothing that arrives during the scan is missed.
        let (etx, erx) = crossbeam_channel::unbounded();
        let mut watcher = notify::recommended_watcher(etx)
            .map_err(|e| Error::Other(format!("{}: cannot watch: {e}", root.display())))?;
        let mode = if self.cfg.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher
            .watch(&root, mode)
            .map_err(|e| Error::Other(format!("{}: cannot watch: {e}", root.display())))?;
        tracing::info!("watching {}", root.display());
        if !self.scan_and_take(&root, &tx, &stop) {
            return Ok(());
        }
        let mut last_quiet_check = std::time::Instant::now();
        loop {
            if stop.requested() {
                return Ok(());
            }
            if !self.pending.is_empty() && last_quiet_check.elapsed() >= Duration::from_millis(200)
            {
                last_quiet_check = std::time::Instant::now();
                if !self.take_quiet(&tx) {
                    return Ok(());
                }
            }
            let ev = match erx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => {
                    tracing::warn!("{}: watch error: {e}; rescanning", root.display());
                    if !self.scan_and_take(&root, &tx, &stop) {
                        return Ok(());
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Other(format!(
                        "{}: the watcher stopped",
                        root.display()
                    )))
                }
            };
            if ev.need_rescan() {
                tracing::warn!("{}: events were lost; rescanning", root.display());
                if !self.scan_and_take(&root, &tx, &stop) {
                    return Ok(());
                }
                continue;
            }
            let targets: Vec<PathBuf> = match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => ev.paths.clone(),
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => ev.paths.clone(),
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    ev.paths.get(1).cloned().into_iter().collect()
                }
                EventKind::Create(CreateKind::Folder) => ev.paths.clone(),
                _ => vec![],
            };
            for p in targets {
                let ok = if p.is_dir() {
                    // A folder created or moved in: its files raise no events of their own.
                    !self.cfg.recursive || self.scan_and_take(&p, &tx, &stop)
                } else {
                    self.pending.remove(&p);
                    self.take(&p, &tx)
                };
                if !ok {
                    return Ok(());
                }
            }
        }
    }
}
