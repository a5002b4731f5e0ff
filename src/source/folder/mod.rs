//! The folder source: an initial scan, then (unless `--once`) a watch, with rules for when a
//! file is complete.
//!
//! - A file renamed into the folder is complete: taken at once.
//! - A file written in place (close-after-write, create or modify events, or found by a scan
//!   with a recent mtime) is taken once its size and mtime have not changed for the quiet
//!   period (`--quiet-ms`): a writer that closes and reopens it, or writes it in pieces, is
//!   not caught half-way.
//! - With `--poll SECS` the folder is listed every SECS instead of watched (network
//!   filesystems send no events), and every file must be seen unchanged over the quiet period
//!   (size-stable rule), whatever its mtime says: a remote clock may be off. We list it
//!   ourselves rather than use notify's `PollWatcher` because that one compares whole-second
//!   mtimes only, so a file replaced within the same second raised no event (seen in CI).
//! - A full rescan runs every `--rescan` seconds and whenever notify reports lost events, as a
//!   safety net; it takes nothing twice.
//! - A file that changes after it was taken is taken again.
//! - Files the journal records as finished (same size and mtime, or same content) are skipped.
//!
//! Dot-files and partial files (`*.tmp`, `*.part`, …) are never taken.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::RecvTimeoutError;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

pub mod completion;
pub mod journal;
pub mod quarantine;

pub use completion::FolderCompletion;
pub use journal::Journal;
pub use quarantine::Quarantine;

use super::{Completion, Intake, RawFrame, Source};
use crate::error::{Error, Result};
use crate::frame::{FileStamp, FrameId};
use crate::runtime::{read_regular_file, Links, ReadError, Stop};

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
    /// How long a file written in place must stay unchanged before it is taken.
    pub quiet: Duration,
    /// Poll the folder at this interval instead of using native events.
    pub poll: Option<Duration>,
    /// Full rescan period (`None`: only on lost events).
    pub rescan: Option<Duration>,
    /// The journal (finished inputs are skipped), `--done` folder and quarantine.
    pub completion: FolderCompletion,
}

impl FolderSourceConfig {
    /// A source with the service defaults: 2 s quiet period, native events, rescan every 5 min.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            recursive: false,
            once: false,
            exclude: vec![],
            max_file_bytes: 1 << 30,
            quiet: Duration::from_secs(2),
            poll: None,
            rescan: Some(Duration::from_secs(300)),
            completion: FolderCompletion::default(),
        }
    }
}

/// Size and mtime: what says a file changed, without reading it.
type Shape = (u64, u64);

fn shape_of(meta: &std::fs::Metadata) -> Shape {
    let s = FileStamp::of(meta);
    (s.size, s.mtime_ns)
}

pub struct FolderSource {
    cfg: FolderSourceConfig,
    root: PathBuf,
    exclude: Vec<PathBuf>,
    /// Files taken (or skipped as finished) this run, as they were then.
    seen: HashMap<PathBuf, Shape>,
    /// Files waiting to be quiet: their shape and since when it has not changed.
    pending: HashMap<PathBuf, (Shape, Instant)>,
    seq: u64,
}

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

/// What [`FolderSource::take`] did with a file.
enum Taken {
    Sent,
    Skipped,
    /// It changed while being read: wait for it to be quiet.
    Changing,
    /// The pipeline is gone.
    Closed,
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

    /// Takes one file if it is new or changed and not finished on record, and sends it.
    fn take(&mut self, path: &Path, intake: &Intake) -> Taken {
        let Some(rel) = self.candidate(path) else {
            return Taken::Skipped;
        };
        let Ok(meta) = std::fs::metadata(path) else {
            return Taken::Skipped; // gone again (or a dangling link): nothing to do
        };
        if meta.is_dir() {
            return Taken::Skipped; // a FIFO, device or socket is refused (and set aside) below
        }
        let mut stamp = FileStamp::of(&meta);
        let shape = (stamp.size, stamp.mtime_ns);
        if self.seen.get(path) == Some(&shape) {
            return Taken::Skipped;
        }
        if let Some(j) = &self.cfg.completion.journal {
            if j.is_done(&rel, &stamp) {
                self.seen.insert(path.to_path_buf(), shape);
                return Taken::Skipped;
            }
        }
        // Links are followed (a folder of links to the files is legitimate), but only to a
        // regular file that reads as many bytes as it reports: see runtime::read.
        let bytes = match read_regular_file(path, self.cfg.max_file_bytes, Links::Follow) {
            Ok(b) => {
                // Written to while we read it: not complete after all.
                let after = std::fs::metadata(path).map(|m| shape_of(&m)).ok();
                if after != Some(shape) || b.len() as u64 != stamp.size {
                    return Taken::Changing;
                }
                stamp.hash = FileStamp::hash_of(&b);
                Ok(b)
            }
            Err(ReadError::Changed) => return Taken::Changing,
            Err(ReadError::Open(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Taken::Skipped
            }
            Err(e) => Err(e.to_string()),
        };
        if let Some(j) = &self.cfg.completion.journal {
            if !stamp.hash.is_empty() && j.is_done_content(&rel, &stamp.hash) {
                tracing::debug!("{}: finished before (same content)", path.display());
                self.seen.insert(path.to_path_buf(), shape);
                return Taken::Skipped;
            }
        }
        self.seen.insert(path.to_path_buf(), shape);
        let frame = RawFrame {
            seq: self.seq,
            id: FrameId::File {
                rel,
                abs: path.to_path_buf(),
                stamp,
            },
            bytes,
        };
        self.seq += 1;
        if intake.send(frame) {
            Taken::Sent
        } else {
            Taken::Closed
        }
    }

    /// Puts a file aside until it has been unchanged for the quiet period.
    fn wait_quiet(&mut self, path: PathBuf) {
        if self.candidate(&path).is_none() {
            return;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        let shape = shape_of(&meta);
        if self.seen.get(&path) == Some(&shape) {
            return;
        }
        match self.pending.get_mut(&path) {
            Some((s, since)) if *s != shape => {
                *s = shape;
                *since = Instant::now();
            }
            Some(_) => {}
            None => {
                self.pending.insert(path, (shape, Instant::now()));
            }
        }
    }

    /// Files under `dir` (recursively if configured), sorted for a stable order.
    fn scan(&self, dir: &Path) -> Vec<PathBuf> {
        let w = crate::runtime::walk::walk(dir, |e| {
            self.cfg.recursive
                && !is_ignored_name(&e.name.to_string_lossy())
                && !self.exclude.iter().any(|x| e.path.starts_with(x))
        });
        for e in &w.errors {
            tracing::warn!("{}: cannot list folder", e.path.display());
        }
        w.files.into_iter().map(|e| e.path).collect()
    }

    /// Takes what a scan finds. While watching, a file modified within the quiet period (or,
    /// when polling, any file not yet seen) waits in `pending` instead. A scan of the whole
    /// folder also forgets files that are gone, so `seen` stays as large as the folder.
    fn scan_and_take(&mut self, dir: &Path, intake: &Intake, stop: &Stop) -> bool {
        let found = self.scan(dir);
        if dir == self.root {
            let present: HashSet<&PathBuf> = found.iter().collect();
            self.seen.retain(|p, _| present.contains(p));
        }
        for p in found {
            if stop.requested() {
                return false;
            }
            if !self.cfg.once && !self.is_quiet_on_disk(&p) {
                self.wait_quiet(p);
                continue;
            }
            match self.take(&p, intake) {
                Taken::Closed => return false,
                Taken::Changing => self.wait_quiet(p),
                Taken::Sent | Taken::Skipped => {}
            }
        }
        true
    }

    /// Whether a file found by a scan may be taken at once: not polling (a network clock may
    /// be off) and its mtime older than the quiet period.
    fn is_quiet_on_disk(&self, p: &Path) -> bool {
        if self.cfg.poll.is_some() {
            // Already taken and unchanged: nothing to wait for.
            return std::fs::metadata(p)
                .map(|m| self.seen.get(p) == Some(&shape_of(&m)))
                .unwrap_or(true);
        }
        let Ok(meta) = std::fs::metadata(p) else {
            return true;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        // An mtime in the future (clock skew) counts as quiet, or the file would wait forever.
        age.is_none_or(|a| a >= self.cfg.quiet)
    }

    /// Takes the pending files whose shape has not changed for the quiet period.
    fn take_quiet(&mut self, intake: &Intake) -> bool {
        let mut paths: Vec<PathBuf> = self.pending.keys().cloned().collect();
        paths.sort();
        for p in paths {
            let Ok(meta) = std::fs::metadata(&p) else {
                self.pending.remove(&p);
                continue;
            };
            let shape = shape_of(&meta);
            let Some((s, since)) = self.pending.get_mut(&p) else {
                continue;
            };
            if *s != shape {
                *s = shape;
                *since = Instant::now();
                continue;
            }
            if since.elapsed() < self.cfg.quiet {
                continue;
            }
            self.pending.remove(&p);
            match self.take(&p, intake) {
                Taken::Closed => return false,
                Taken::Changing => self.wait_quiet(p),
                Taken::Sent | Taken::Skipped => {}
            }
        }
        true
    }

    /// The polling loop: list the folder every `every`, comparing each file's size and mtime
    /// (to the nanosecond) with what was taken; new or changed files wait out the quiet period.
    fn poll(&mut self, every: Duration, intake: &Intake, stop: &Stop) -> Result<()> {
        let root = self.root.clone();
        tracing::info!("watching {} (polling every {every:?})", root.display());
        let tick = every.min(Duration::from_millis(100));
        let mut last_scan: Option<Instant> = None;
        loop {
            if stop.requested() {
                return Ok(());
            }
            if last_scan.is_none_or(|t| t.elapsed() >= every) {
                last_scan = Some(Instant::now());
                if !self.scan_and_take(&root, intake, stop) {
                    return Ok(());
                }
            }
            if !self.pending.is_empty() && !self.take_quiet(intake) {
                return Ok(());
            }
            std::thread::sleep(tick);
        }
    }

    fn watch(
        &self,
        etx: crossbeam_channel::Sender<notify::Result<notify::Event>>,
    ) -> Result<notify::RecommendedWatcher> {
        let err =
            |e: notify::Error| Error::Other(format!("{}: cannot watch: {e}", self.root.display()));
        let mut w = notify::recommended_watcher(etx).map_err(err)?;
        let mode = if self.cfg.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        w.watch(&self.root, mode).map_err(err)?;
        Ok(w)
    }
}

impl Source for FolderSource {
    fn completion(&self) -> Arc<dyn Completion> {
        Arc::new(self.cfg.completion.clone())
    }

    fn run(mut self: Box<Self>, intake: Intake, stop: Stop) -> Result<()> {
        // Files wait safely on disk: a folder is never read lossily.
        let intake = intake.lossless();
        let root = self.root.clone();
        if self.cfg.once {
            self.scan_and_take(&root, &intake, &stop);
            return Ok(());
        }
        if let Some(every) = self.cfg.poll {
            return self.poll(every, &intake, &stop);
        }
        // Watch before scanning so nothing that arrives during the scan is missed.
        let (etx, erx) = crossbeam_channel::unbounded();
        let _watcher = self.watch(etx)?;
        tracing::info!("watching {}", root.display());
        if !self.scan_and_take(&root, &intake, &stop) {
            return Ok(());
        }
        let mut last_quiet_check = Instant::now();
        let mut last_rescan = Instant::now();
        loop {
            if stop.requested() {
                return Ok(());
            }
            if !self.pending.is_empty() && last_quiet_check.elapsed() >= Duration::from_millis(100)
            {
                last_quiet_check = Instant::now();
                if !self.take_quiet(&intake) {
                    return Ok(());
                }
            }
            if self.cfg.rescan.is_some_and(|r| last_rescan.elapsed() >= r) {
                last_rescan = Instant::now();
                tracing::debug!("{}: periodic rescan", root.display());
                if !self.scan_and_take(&root, &intake, &stop) {
                    return Ok(());
                }
            }
            let ev = match erx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => {
                    tracing::warn!("{}: watch error: {e}; rescanning", root.display());
                    if !self.scan_and_take(&root, &intake, &stop) {
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
                if !self.scan_and_take(&root, &intake, &stop) {
                    return Ok(());
                }
                continue;
            }
            let mut now = Vec::new();
            let mut later = Vec::new();
            match ev.kind {
                // Renamed in: complete by the writer's own declaration.
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => now = ev.paths,
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    now = ev.paths.get(1).cloned().into_iter().collect()
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                    for p in &ev.paths {
                        self.pending.remove(p);
                        self.seen.remove(p);
                    }
                }
                EventKind::Create(CreateKind::Folder) => now = ev.paths,
                // Written in place: wait for it to be quiet.
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Create(_)
                | EventKind::Modify(_) => later = ev.paths,
                _ => {}
            }
            for p in now {
                let ok = if p.is_dir() {
                    // A folder created or moved in: its files raise no events of their own.
                    !self.cfg.recursive || self.scan_and_take(&p, &intake, &stop)
                } else {
                    self.pending.remove(&p);
                    match self.take(&p, &intake) {
                        Taken::Closed => false,
                        Taken::Changing => {
                            self.wait_quiet(p);
                            true
                        }
                        Taken::Sent | Taken::Skipped => true,
                    }
                };
                if !ok {
                    return Ok(());
                }
            }
            for p in later {
                if p.is_dir() {
                    if self.cfg.recursive && !self.scan_and_take(&p, &intake, &stop) {
                        return Ok(());
                    }
                } else {
                    self.wait_quiet(p);
                }
            }
        }
    }
}
