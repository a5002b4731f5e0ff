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
//! Dot-files and partial files (`*.tmp`, `*.part`, …) are never taken, nor files that are not
//! inputs by name (`[source] include` / `exclude`, see [`filter`]).
//!
//! The rules read time only through the configured clock ([`crate::runtime::Clock`]) and hear
//! of changes only through `on_event` and `tick` (in `watch.rs`), which the real loops feed
//! from notify and the system clock; the unit tests (`tests.rs`) feed them synthetic events and
//! a manual clock, so every rule is checked without sleeping.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod completion;
pub mod filter;
pub mod journal;
pub mod marks;
pub mod quarantine;
pub mod retry;
mod watch;

#[cfg(test)]
mod tests;

pub use completion::FolderCompletion;
pub use filter::InputFilter;
pub use journal::Journal;
pub use quarantine::Quarantine;

use super::{Completion, Intake, RawFrame, Source};
use crate::error::{Error, Result};
use crate::frame::{FileStamp, FrameId};
use crate::runtime::{read_regular_file, Links, ReadError, SharedClock, Stop, SystemClock};

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
    /// What the quiet period and the rescan interval are measured with (tests: a manual one).
    pub clock: SharedClock,
    /// Which files are inputs (default: image files by extension).
    pub filter: filter::InputFilter,
    /// A file that failed this many times (for reasons other than its bytes: an output that
    /// cannot be written) is set aside when next taken (`[source] max_deliveries`).
    pub max_attempts: u32,
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
            clock: SystemClock::shared(),
            filter: filter::InputFilter::default(),
            max_attempts: 5,
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
    /// When the periodic work of `tick` last ran.
    timers: watch::Timers,
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
    pub fn new(mut cfg: FolderSourceConfig) -> Result<Self> {
        // While watching, failed inputs are taken again after a backoff (see `retry`); the
        // completion, cloned for the pipeline, shares the schedule with this source.
        if !cfg.once && cfg.completion.journal.is_some() {
            let r = retry::Retries::new(cfg.clock.clone());
            cfg.completion.retries = Some(Arc::new(r));
        }
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
        let timers = watch::Timers::new(cfg.clock.now());
        Ok(Self {
            cfg,
            root,
            exclude,
            seen: HashMap::new(),
            pending: HashMap::new(),
            seq: 0,
            timers,
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
        self.cfg.filter.admits(&rel).then_some(rel)
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
                // Finished and still here: a stop came between its record and its `--done`.
                self.cfg.completion.move_done(path, &rel, &stamp);
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
                self.cfg.completion.move_done(path, &rel, &stamp);
                return Taken::Skipped;
            }
        }
        self.seen.insert(path.to_path_buf(), shape);
        // What the journal's marks say of this content (see `marks`): set aside if it ended
        // the process twice or failed too often; run alone if it ended the process once.
        let mut bytes = bytes;
        let mut alone = false;
        if let (Some(j), Ok(_)) = (&self.cfg.completion.journal, &bytes) {
            let h = j.history(&rel, &stamp.hash);
            if let Some(why) = h.verdict(self.cfg.max_attempts) {
                bytes = Err(why);
            } else if h.crashes() > 0 {
                tracing::warn!(
                    "{}: was in progress when the process last ended; trying it again, alone",
                    path.display()
                );
                alone = true;
            }
        }
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
        let sent = if alone {
            intake.send_alone(frame)
        } else {
            intake.send(frame)
        };
        if sent {
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
                *since = self.cfg.clock.now();
            }
            Some(_) => {}
            None => {
                self.pending.insert(path, (shape, self.cfg.clock.now()));
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
            .and_then(|m| self.cfg.clock.system_now().duration_since(m).ok());
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
            // Read the clock per file: taking the one before may have waited on a full intake.
            let now = self.cfg.clock.now();
            if *s != shape {
                *s = shape;
                *since = now;
                continue;
            }
            if now.saturating_duration_since(*since) < self.cfg.quiet {
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
}

impl Source for FolderSource {
    fn completion(&self) -> Arc<dyn Completion> {
        Arc::new(self.cfg.completion.clone())
    }

    fn run(mut self: Box<Self>, intake: Intake, stop: Stop) -> Result<()> {
        // Files wait safely on disk: a folder is never read lossily.
        let intake = intake.lossless();
        if self.cfg.once {
            let root = self.root.clone();
            self.scan_and_take(&root, &intake, &stop);
            return Ok(());
        }
        match self.cfg.poll {
            Some(every) => self.poll(every, &intake, &stop),
            None => self.watch(&intake, &stop),
        }
    }
}
