//! The folder source's event feed and timers: how the watcher's events and the passing of time
//! drive the arrival rules of `mod.rs`, and the two loops (native events, or `--poll`) that
//! feed them from notify and the configured clock.
//!
//! Split this way so the rules can be driven without a watcher or a wait:
//! [`FolderSource::on_event`] takes one notify event (a test builds a synthetic one), and
//! [`FolderSource::tick`] does the periodic work that is due by the clock (a test advances a
//! manual one). The loops only add the waiting: up to 50 ms for an event while watching, up to
//! 100 ms of sleep between ticks while polling.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::{FolderSource, Taken};
use crate::error::{Error, Result};
use crate::runtime::Stop;
use crate::source::Intake;

/// How often pending files are checked for quiet while watching.
const QUIET_CHECK: Duration = Duration::from_millis(100);
/// How long the watch loop waits for an event before it ticks again.
const EVENT_WAIT: Duration = Duration::from_millis(50);
/// The longest the poll loop sleeps between ticks.
const POLL_NAP: Duration = Duration::from_millis(100);

/// When each kind of periodic work last ran.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timers {
    quiet_check: Instant,
    rescan: Instant,
    poll: Instant,
}

impl Timers {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            quiet_check: now,
            rescan: now,
            poll: now,
        }
    }
}

impl FolderSource {
    /// The first scan of a watch or a poll; the periodic work is timed from it. Called after
    /// the watcher is set up, so nothing that arrives during the scan is missed. False when the
    /// pipeline is gone or a stop was requested.
    pub(super) fn start(&mut self, intake: &Intake, stop: &Stop) -> bool {
        // A poll interval runs from the start of a scan, a rescan period from its end.
        let scan_started = self.cfg.clock.now();
        let ok = self.rescan(intake, stop);
        self.timers = Timers {
            poll: scan_started,
            ..Timers::new(self.cfg.clock.now())
        };
        ok
    }

    /// Does the periodic work that is due. Polling: a scan every `--poll` interval, then a
    /// check of the pending files. Watching: a check of the pending files every 100 ms, and a
    /// rescan every `--rescan`. Either way, first the failed inputs whose backoff has passed
    /// (`retry`). False when the pipeline is gone or a stop was requested.
    pub(super) fn tick(&mut self, intake: &Intake, stop: &Stop) -> bool {
        if !self.retry_due(intake) {
            return false;
        }
        let clock = self.cfg.clock.clone();
        if let Some(every) = self.cfg.poll {
            let now = clock.now();
            if now.saturating_duration_since(self.timers.poll) >= every {
                self.timers.poll = now;
                if !self.rescan(intake, stop) {
                    return false;
                }
            }
            return self.pending.is_empty() || self.take_quiet(intake);
        }
        let now = clock.now();
        if !self.pending.is_empty()
            && now.saturating_duration_since(self.timers.quiet_check) >= QUIET_CHECK
        {
            self.timers.quiet_check = now;
            if !self.take_quiet(intake) {
                return false;
            }
        }
        let now = clock.now();
        if self
            .cfg
            .rescan
            .is_some_and(|r| now.saturating_duration_since(self.timers.rescan) >= r)
        {
            self.timers.rescan = now;
            tracing::debug!("{}: periodic rescan", self.root.display());
            if !self.rescan(intake, stop) {
                return false;
            }
        }
        true
    }

    /// Handles one event of the watcher. Renamed in: taken at once. Created, written or closed
    /// after writing: waits for quiet. Removed or renamed away: forgotten. A folder created or
    /// moved in: scanned (when recursive). Lost events or a watcher error: a full rescan. False
    /// when the pipeline is gone or a stop was requested.
    pub(super) fn on_event(
        &mut self,
        ev: notify::Result<notify::Event>,
        intake: &Intake,
        stop: &Stop,
    ) -> bool {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("{}: watch error: {e}; rescanning", self.root.display());
                return self.rescan(intake, stop);
            }
        };
        if ev.need_rescan() {
            tracing::warn!("{}: events were lost; rescanning", self.root.display());
            return self.rescan(intake, stop);
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
                !self.cfg.recursive || self.scan_and_take(&p, intake, stop)
            } else {
                self.pending.remove(&p);
                match self.take(&p, intake) {
                    Taken::Closed => false,
                    Taken::Changing => {
                        self.wait_quiet(p);
                        true
                    }
                    Taken::Sent | Taken::Skipped => true,
                }
            };
            if !ok {
                return false;
            }
        }
        for p in later {
            if p.is_dir() {
                if self.cfg.recursive && !self.scan_and_take(&p, intake, stop) {
                    return false;
                }
            } else {
                self.wait_quiet(p);
            }
        }
        true
    }

    /// A scan of the whole folder (which also forgets files that are gone).
    fn rescan(&mut self, intake: &Intake, stop: &Stop) -> bool {
        let root: PathBuf = self.root.clone();
        self.scan_and_take(&root, intake, stop)
    }

    /// The watch loop: native events, with the periodic work between them.
    pub(super) fn watch(&mut self, intake: &Intake, stop: &Stop) -> Result<()> {
        // Watch before scanning so nothing that arrives during the scan is missed.
        let (etx, erx) = crossbeam_channel::unbounded();
        let _watcher = self.watcher(etx)?;
        tracing::info!("watching {}", self.root.display());
        if !self.start(intake, stop) {
            return Ok(());
        }
        loop {
            if stop.requested() || !self.tick(intake, stop) {
                return Ok(());
            }
            let ev = match erx.recv_timeout(EVENT_WAIT) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Other(format!(
                        "{}: the watcher stopped",
                        self.root.display()
                    )))
                }
            };
            if !self.on_event(ev, intake, stop) {
                return Ok(());
            }
        }
    }

    /// The polling loop: list the folder every `every`, comparing each file's size and mtime
    /// (to the nanosecond) with what was taken; new or changed files wait out the quiet period.
    pub(super) fn poll(&mut self, every: Duration, intake: &Intake, stop: &Stop) -> Result<()> {
        tracing::info!("watching {} (polling every {every:?})", self.root.display());
        if !self.start(intake, stop) {
            return Ok(());
        }
        loop {
            if stop.requested() || !self.tick(intake, stop) {
                return Ok(());
            }
            std::thread::sleep(every.min(POLL_NAP));
        }
    }

    fn watcher(
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
