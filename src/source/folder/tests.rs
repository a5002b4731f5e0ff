//! The folder source's arrival rules, driven by hand: a real temporary folder, synthetic
//! notify events, a manual clock and explicitly set mtimes, so each test says exactly which
//! frames were sent and when, with no sleeps. (That the real watcher delivers such events is
//! checked end to end in `tests/service.rs` and `tests/cli.rs`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver};
use notify::event::{AccessKind, AccessMode, CreateKind, Flag, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind};

use super::*;
use crate::config::Overload;
use crate::runtime::{Clock, ManualClock, Telemetry};
use crate::source::Admitted;

const QUIET: Duration = Duration::from_secs(2);
const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A folder source on a temporary folder, with its clock, its intake and what it sent.
struct Rig {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    src: FolderSource,
    intake: Intake,
    rx: Receiver<Admitted>,
    stop: Stop,
}

/// When a file was last modified, relative to the rig's clock.
#[derive(Clone, Copy)]
enum Mtime {
    /// Long before the quiet period: a scan takes such a file at once (unless polling).
    Old,
    /// Just now.
    Now,
    /// After now: a writer whose clock is ahead.
    Future,
}

impl Rig {
    /// Watching (not polling) with a 2 s quiet period and no periodic rescan; `tune` changes
    /// the settings before the source is made.
    fn new(tune: impl FnOnce(&mut FolderSourceConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new());
        let mut cfg = FolderSourceConfig::new(dir.path().to_path_buf());
        cfg.quiet = QUIET;
        cfg.rescan = None;
        cfg.clock = clock.clone();
        tune(&mut cfg);
        let src = FolderSource::new(cfg).unwrap();
        let (tx, rx) = bounded(64);
        let (gaps, _) = unbounded();
        let intake = Intake::new(
            tx,
            rx.clone(),
            Overload::Block,
            gaps,
            Arc::new(Telemetry::new()),
        );
        Self {
            _dir: dir,
            clock,
            src,
            intake,
            rx,
            stop: Stop::new(),
        }
    }

    /// The absolute path of `rel` in the watched folder (as the watcher would name it).
    fn path(&self, rel: &str) -> PathBuf {
        self.src.root.join(rel)
    }

    fn mtime(&self, m: Mtime) -> SystemTime {
        let now = self.clock.system_now();
        match m {
            Mtime::Old => now - HOUR,
            Mtime::Now => now,
            Mtime::Future => now + HOUR,
        }
    }

    /// Writes `rel` in place with `bytes` and the given mtime (set explicitly, so a change of
    /// shape never depends on the filesystem's timestamp resolution).
    fn write(&self, rel: &str, bytes: &[u8], m: Mtime) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        self.set_mtime(rel, self.mtime(m));
    }

    fn set_mtime(&self, rel: &str, t: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(self.path(rel))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// The first scan, as the loops do it.
    fn start(&mut self) {
        assert!(self.src.start(&self.intake, &self.stop));
    }

    /// Hands the source one event of `kind` about `rels`.
    fn event(&mut self, kind: EventKind, rels: &[&str]) {
        let ev = rels
            .iter()
            .fold(Event::new(kind), |ev, r| ev.add_path(self.path(r)));
        assert!(self.src.on_event(Ok(ev), &self.intake, &self.stop));
    }

    /// Lets `span` pass as the watch loop would: the clock moves in 50 ms steps, with a tick
    /// after each.
    fn run_for(&mut self, span: Duration) {
        let step = ms(50);
        let mut left = span;
        while !left.is_zero() {
            let d = left.min(step);
            self.clock.advance(d);
            left -= d;
            assert!(self.src.tick(&self.intake, &self.stop));
        }
    }

    /// The frames sent since the last call: relative path and bytes, in order.
    fn sent(&self) -> Vec<(String, Vec<u8>)> {
        drain(&self.rx)
    }

    /// The relative paths of the frames sent since the last call.
    fn sent_names(&self) -> Vec<String> {
        self.sent().into_iter().map(|(n, _)| n).collect()
    }
}

/// The frames waiting in `rx`: relative path and bytes (or the error's text), in order.
fn drain(rx: &Receiver<Admitted>) -> Vec<(String, Vec<u8>)> {
    rx.try_iter()
        .map(|a| a.frame)
        .map(|f| match f.id {
            FrameId::File { rel, .. } => (
                rel.to_string_lossy().into_owned(),
                f.bytes.unwrap_or_else(|e| e.into_bytes()),
            ),
            other => panic!("not a file frame: {other}"),
        })
        .collect()
}

fn renamed_to() -> EventKind {
    EventKind::Modify(ModifyKind::Name(RenameMode::To))
}
fn renamed_from() -> EventKind {
    EventKind::Modify(ModifyKind::Name(RenameMode::From))
}
fn created() -> EventKind {
    EventKind::Create(CreateKind::File)
}
fn closed_after_write() -> EventKind {
    EventKind::Access(AccessKind::Close(AccessMode::Write))
}
fn data_written() -> EventKind {
    EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Content))
}

#[test]
fn a_file_renamed_in_is_taken_at_once() {
    let mut r = Rig::new(|_| {});
    r.start();
    r.write("a.png", b"aaaa", Mtime::Now);
    r.event(renamed_to(), &["a.png"]);
    assert_eq!(r.sent(), vec![("a.png".into(), b"aaaa".to_vec())]);
    // A rename seen whole (both names in one event): the new name is taken.
    r.write(".incoming-b.png", b"bb", Mtime::Now);
    std::fs::rename(r.path(".incoming-b.png"), r.path("b.png")).unwrap();
    r.event(
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
        &[".incoming-b.png", "b.png"],
    );
    assert_eq!(r.sent(), vec![("b.png".into(), b"bb".to_vec())]);
    // Nothing else is pending.
    r.run_for(QUIET * 2);
    assert_eq!(r.sent(), vec![]);
}

#[test]
fn a_file_written_in_place_is_taken_once_quiet_for_the_quiet_period() {
    for kind in [created(), closed_after_write(), data_written()] {
        let label = format!("{kind:?}");
        let mut r = Rig::new(|_| {});
        r.start();
        r.write("a.png", b"whole", Mtime::Now);
        r.event(kind, &["a.png"]);
        assert_eq!(r.sent(), vec![], "{label}: taken at once");
        r.run_for(QUIET - ms(50));
        assert_eq!(r.sent(), vec![], "{label}: taken before the quiet period");
        r.run_for(ms(150));
        assert_eq!(r.sent(), vec![("a.png".into(), b"whole".to_vec())]);
        // More events about the unchanged file take nothing twice.
        r.event(closed_after_write(), &["a.png"]);
        r.run_for(QUIET * 2);
        assert_eq!(r.sent(), vec![], "{label}");
    }
}

#[test]
fn a_file_that_changes_while_pending_restarts_its_quiet_period() {
    let mut r = Rig::new(|_| {});
    r.start();
    // `a` is announced again when it changes; `b` changes silently (seen by the quiet check).
    for rel in ["a.png", "b.png"] {
        r.write(rel, b"first half", Mtime::Now);
        r.event(created(), &[rel]);
    }
    r.run_for(ms(1500));
    for rel in ["a.png", "b.png"] {
        r.write(rel, b"first half, second half", Mtime::Now);
    }
    r.event(data_written(), &["a.png"]);
    // Past the first write's quiet period, not yet past the second's.
    r.run_for(ms(1500));
    assert_eq!(r.sent(), vec![], "taken half-written");
    r.run_for(ms(800));
    let whole = b"first half, second half".to_vec();
    assert_eq!(
        r.sent(),
        vec![("a.png".into(), whole.clone()), ("b.png".into(), whole)]
    );
}

#[test]
fn a_changed_mtime_alone_restarts_the_quiet_period() {
    let mut r = Rig::new(|_| {});
    r.start();
    r.write("a.png", b"same size", Mtime::Now);
    r.event(created(), &["a.png"]);
    r.run_for(ms(1500));
    r.set_mtime("a.png", r.mtime(Mtime::Now));
    r.run_for(ms(1500));
    assert_eq!(r.sent(), vec![]);
    r.run_for(ms(700));
    assert_eq!(r.sent_names(), vec!["a.png"]);
}

#[test]
fn the_first_scan_takes_old_files_at_once_and_waits_for_recent_ones() {
    let mut r = Rig::new(|_| {});
    r.write("old.png", b"o", Mtime::Old);
    r.write("recent.png", b"r", Mtime::Now);
    // An mtime ahead of the clock counts as quiet, or the file would wait forever.
    r.write("skewed.png", b"s", Mtime::Future);
    r.start();
    assert_eq!(r.sent_names(), vec!["old.png", "skewed.png"]);
    r.run_for(QUIET - ms(50));
    assert_eq!(r.sent(), vec![]);
    r.run_for(ms(150));
    assert_eq!(r.sent_names(), vec!["recent.png"]);
}

#[test]
fn with_once_the_scan_takes_every_file_at_once_and_ends() {
    let r = Rig::new(|c| c.once = true);
    r.write("recent.png", b"r", Mtime::Now);
    r.write("old.png", b"o", Mtime::Old);
    r.write(".hidden.png", b"h", Mtime::Old);
    let Rig {
        src,
        intake,
        rx,
        stop,
        _dir,
        ..
    } = r;
    Box::new(src).run(intake, stop).unwrap();
    let names: Vec<String> = drain(&rx).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["old.png", "recent.png"]);
}

#[test]
fn polling_waits_out_the_quiet_period_whatever_the_mtime() {
    let mut r = Rig::new(|c| {
        c.poll = Some(ms(200));
        c.quiet = Duration::from_secs(1);
    });
    r.write("old.png", b"o", Mtime::Old);
    r.write("skewed.png", b"s", Mtime::Future);
    r.start();
    assert_eq!(r.sent(), vec![], "polling trusted an mtime");
    r.run_for(ms(950));
    assert_eq!(r.sent(), vec![]);
    r.run_for(ms(100));
    assert_eq!(r.sent_names(), vec!["old.png", "skewed.png"]);

    // Written in two halves, with no event and an unchanging (remote, old) mtime: only the
    // size says it changed, and the second half restarts the wait.
    r.write("half.png", b"first", Mtime::Old);
    let stamp = r.mtime(Mtime::Old);
    r.run_for(ms(600));
    std::fs::write(r.path("half.png"), b"first and second").unwrap();
    r.set_mtime("half.png", stamp);
    r.run_for(ms(900));
    assert_eq!(r.sent(), vec![], "taken half-written");
    r.run_for(ms(500));
    assert_eq!(
        r.sent(),
        vec![("half.png".into(), b"first and second".to_vec())]
    );

    // Changed after it was taken: found by the next poll, taken again once quiet.
    std::fs::write(r.path("old.png"), b"replaced").unwrap();
    r.set_mtime("old.png", stamp);
    r.run_for(ms(1400));
    assert_eq!(r.sent(), vec![("old.png".into(), b"replaced".to_vec())]);
    r.run_for(Duration::from_secs(5));
    assert_eq!(r.sent(), vec![], "a poll took something twice");
}

#[test]
fn a_periodic_rescan_finds_unannounced_files_and_takes_nothing_twice() {
    let mut r = Rig::new(|c| c.rescan = Some(Duration::from_secs(60)));
    r.write("a.png", b"a", Mtime::Old);
    r.start();
    assert_eq!(r.sent_names(), vec!["a.png"]);
    // Arrives without an event (one the kernel dropped, say).
    r.write("b.png", b"b", Mtime::Old);
    r.run_for(Duration::from_secs(59));
    assert_eq!(r.sent(), vec![]);
    r.run_for(Duration::from_secs(1));
    assert_eq!(r.sent_names(), vec!["b.png"]);
    // The next rescan: nothing new, nothing twice.
    r.run_for(Duration::from_secs(61));
    assert_eq!(r.sent(), vec![]);
}

#[test]
fn lost_events_or_a_watch_error_rescan_and_take_nothing_twice() {
    let mut r = Rig::new(|_| {});
    r.write("a.png", b"a", Mtime::Old);
    r.start();
    assert_eq!(r.sent_names(), vec!["a.png"]);
    r.write("b.png", b"b", Mtime::Old);
    r.write("c.png", b"c", Mtime::Now);
    let lost = Event::new(EventKind::Other).set_flag(Flag::Rescan);
    assert!(r.src.on_event(Ok(lost), &r.intake, &r.stop));
    // The old file at once; the recent one after its quiet period.
    assert_eq!(r.sent_names(), vec!["b.png"]);
    r.run_for(QUIET + ms(100));
    assert_eq!(r.sent_names(), vec!["c.png"]);

    r.write("d.png", b"d", Mtime::Old);
    let err = notify::Error::generic("queue overflow");
    assert!(r.src.on_event(Err(err), &r.intake, &r.stop));
    assert_eq!(r.sent_names(), vec!["d.png"]);
}

#[test]
fn a_file_that_changes_after_it_was_taken_is_taken_again() {
    let mut r = Rig::new(|_| {});
    r.start();
    r.write("a.png", b"one", Mtime::Now);
    r.event(renamed_to(), &["a.png"]);
    assert_eq!(r.sent(), vec![("a.png".into(), b"one".to_vec())]);
    // Rewritten in place (same size, new mtime): waits for quiet, then taken again.
    r.clock.advance(ms(10));
    r.write("a.png", b"two", Mtime::Now);
    r.event(closed_after_write(), &["a.png"]);
    r.run_for(QUIET + ms(100));
    assert_eq!(r.sent(), vec![("a.png".into(), b"two".to_vec())]);
    // Replaced by a rename: at once.
    r.write("a.png", b"three", Mtime::Now);
    r.event(renamed_to(), &["a.png"]);
    assert_eq!(r.sent(), vec![("a.png".into(), b"three".to_vec())]);
    // Changed with no event at all: the next full scan finds it.
    r.write("a.png", b"four", Mtime::Old);
    let lost = Event::new(EventKind::Other).set_flag(Flag::Rescan);
    assert!(r.src.on_event(Ok(lost), &r.intake, &r.stop));
    assert_eq!(r.sent(), vec![("a.png".into(), b"four".to_vec())]);
}

#[test]
fn removed_or_renamed_away_files_are_forgotten() {
    let mut r = Rig::new(|_| {});
    r.start();
    for (rel, away) in [
        ("a.png", EventKind::Remove(RemoveKind::File)),
        ("b.png", renamed_from()),
    ] {
        r.write(rel, b"same", Mtime::Old);
        r.event(renamed_to(), &[rel]);
        assert_eq!(r.sent_names(), vec![rel]);
        let stamp = std::fs::metadata(r.path(rel)).unwrap().modified().unwrap();
        std::fs::remove_file(r.path(rel)).unwrap();
        r.event(away, &[rel]);
        // Back with the very same size and mtime: a new arrival, not a repeat.
        r.write(rel, b"same", Mtime::Old);
        r.set_mtime(rel, stamp);
        r.event(renamed_to(), &[rel]);
        assert_eq!(r.sent_names(), vec![rel], "{rel}: not forgotten");
    }

    // A pending file moved away is no longer pending.
    r.write("p.png", b"p", Mtime::Now);
    r.event(created(), &["p.png"]);
    assert!(r.src.pending.contains_key(&r.path("p.png")));
    std::fs::rename(r.path("p.png"), r.path(".p.png")).unwrap();
    r.event(renamed_from(), &["p.png"]);
    assert!(r.src.pending.is_empty());

    // Gone without an event: a full scan forgets it.
    let c = r.path("a.png");
    let stamp = std::fs::metadata(&c).unwrap().modified().unwrap();
    std::fs::remove_file(&c).unwrap();
    let lost = || Event::new(EventKind::Other).set_flag(Flag::Rescan);
    assert!(r.src.on_event(Ok(lost()), &r.intake, &r.stop));
    assert!(!r.src.seen.contains_key(&c));
    r.write("a.png", b"same", Mtime::Old);
    r.set_mtime("a.png", stamp);
    assert!(r.src.on_event(Ok(lost()), &r.intake, &r.stop));
    assert_eq!(r.sent_names(), vec!["a.png"]);
}

#[test]
fn hidden_and_partial_files_are_never_taken() {
    let names = [
        ".hidden.png",
        "upload.png.part",
        "UPLOAD2.PNG.PART",
        "x.tmp",
        "y.png~",
        "z.crdownload",
        "w.swp",
        "v.partial",
        "u.download",
    ];
    for n in names {
        assert!(is_ignored_name(n), "{n}");
    }
    assert!(!is_ignored_name("part.png") && !is_ignored_name("a.tmp.png"));

    let mut r = Rig::new(|c| {
        c.recursive = true;
        c.rescan = Some(Duration::from_secs(10));
    });
    let mut all = names.to_vec();
    all.push(".cache/inside.png");
    for n in &all {
        r.write(n, b"x", Mtime::Old);
    }
    r.start();
    for kind in [
        renamed_to(),
        created(),
        closed_after_write(),
        data_written(),
    ] {
        r.event(kind, &all);
    }
    r.run_for(Duration::from_secs(11));
    let lost = Event::new(EventKind::Other).set_flag(Flag::Rescan);
    assert!(r.src.on_event(Ok(lost), &r.intake, &r.stop));
    assert_eq!(r.sent(), vec![]);
}

#[test]
fn subfolders_are_taken_only_when_recursive() {
    for recursive in [false, true] {
        let mut r = Rig::new(|c| c.recursive = recursive);
        r.write("sub/early.png", b"e", Mtime::Old);
        r.write("top.png", b"t", Mtime::Old);
        r.start();
        let want: Vec<&str> = if recursive {
            vec!["sub/early.png", "top.png"]
        } else {
            vec!["top.png"]
        };
        assert_eq!(r.sent_names(), want);
        // A folder moved in: its files raise no events of their own, so it is scanned.
        r.write("moved/in.png", b"m", Mtime::Old);
        r.event(EventKind::Create(CreateKind::Folder), &["moved"]);
        r.write("sub/new.png", b"n", Mtime::Now);
        r.event(renamed_to(), &["sub/new.png"]);
        r.run_for(QUIET * 2);
        let want: Vec<&str> = if recursive {
            vec!["moved/in.png", "sub/new.png"]
        } else {
            vec![]
        };
        assert_eq!(r.sent_names(), want, "recursive: {recursive}");
    }
}

#[test]
fn files_finished_on_record_are_skipped() {
    let state = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(state.path(), "p", "m").unwrap());
    let mut r = Rig::new(|c| c.completion.journal = Some(journal.clone()));
    r.write("done.png", b"done", Mtime::Old);
    r.write("touched.png", b"same content", Mtime::Old);
    r.write("new.png", b"new", Mtime::Old);
    // `done.png` is on record with its size and mtime, which are trusted without reading it
    // (the recorded content is some other, so only that rule can skip it); `touched.png` with
    // its content.
    for (rel, content) in [
        ("done.png", &b"other"[..]),
        ("touched.png", b"same content"),
    ] {
        let mut stamp = FileStamp::of(&std::fs::metadata(r.path(rel)).unwrap());
        stamp.hash = FileStamp::hash_of(content);
        journal.record(Path::new(rel), &stamp, "m@1").unwrap();
    }
    // Touched since it was finished: a new mtime, the same bytes.
    r.set_mtime("touched.png", r.mtime(Mtime::Old) + Duration::from_secs(1));
    r.start();
    assert_eq!(r.sent_names(), vec!["new.png"]);
    // And through events too.
    r.event(renamed_to(), &["done.png", "touched.png"]);
    r.run_for(QUIET * 2);
    assert_eq!(r.sent(), vec![]);
    // Changed content is a new input.
    r.write("done.png", b"different", Mtime::Old);
    r.event(renamed_to(), &["done.png"]);
    assert_eq!(r.sent_names(), vec!["done.png"]);
}

#[test]
fn a_file_over_the_size_limit_is_sent_as_an_error() {
    let mut r = Rig::new(|c| c.max_file_bytes = 4);
    r.write("big.png", b"12345", Mtime::Old);
    r.write("small.png", b"1234", Mtime::Old);
    r.start();
    let frames: Vec<RawFrame> = r.rx.try_iter().map(|a| a.frame).collect();
    assert_eq!(frames.len(), 2);
    let err = frames[0].bytes.as_ref().unwrap_err();
    assert!(err.contains("over the limit"), "{err}");
    assert_eq!(frames[1].bytes.as_deref().unwrap(), b"1234");
    assert_eq!((frames[0].seq, frames[1].seq), (0, 1));
}

/// An input that failed (its output could not be written) is taken again once its backoff
/// has passed (5 s, then 10 s), and set aside with the last error at its `max_attempts`-th
/// failure, instead of waiting for a restart or failing forever.
#[test]
fn a_failed_input_is_taken_again_after_its_backoff_then_set_aside() {
    let state = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(state.path(), "p", "v").unwrap());
    let mut r = Rig::new(|c| {
        c.completion.journal = Some(j.clone());
        c.max_attempts = 2;
    });
    r.write("a.png", b"abc", Mtime::Old);
    r.start();
    let id = r.rx.try_recv().unwrap().frame.id;
    let completion = r.src.completion();
    completion.failed(&id, "out: read-only");
    r.run_for(ms(4950));
    assert!(r.sent().is_empty(), "before its backoff");
    r.run_for(ms(100));
    assert_eq!(r.sent_names(), vec!["a.png"]);
    completion.failed(&id, "out: still read-only");
    r.run_for(ms(9950));
    assert!(r.sent().is_empty(), "the backoff doubled");
    r.run_for(ms(100));
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    let why = String::from_utf8(sent[0].1.clone()).unwrap();
    assert!(
        why.contains("failed 2 times") && why.contains("still read-only"),
        "{why}"
    );
}
