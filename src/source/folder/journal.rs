//! The journal: an append-only, fsync'd record of finished input files, so that a restart
//! (after a crash, `kill -9`, a reboot) processes every input that has no record and none twice.
//!
//! One JSON object per line in `STATE/<pipeline>.journal.jsonl`: the input's path relative to the input
//! folder, its size, mtime and content hash, the model version that made its outputs, and when.
//! A record is appended only after the frame's outputs were renamed into place, so a record
//! always means "complete outputs exist". A crash between the rename and the record makes the
//! frame run again on restart, and its outputs are replaced atomically by identical ones: still
//! exactly one complete output. A torn last line (crash mid-append) is ignored and cut off.
//!
//! The first line is a header with the format version, the pipeline and its weights' hash.
//!
//! Beside the records, marks of unfinished work (`begun`, `ended`, `failed`, `cleared`): what
//! was in progress when the process ended, and what failed; see [`super::marks`] for the lines
//! and the rule that sets an input aside after it ended the process twice.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::marks::{History, Mark, Marks};
use crate::error::{Error, Result};
use crate::frame::FileStamp;

const FORMAT: u32 = 1;

/// One finished input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub path: String,
    #[serde(flatten)]
    pub stamp: FileStamp,
    /// The model version (pipeline, weights hash, generation) that made the outputs.
    pub model: String,
    /// RFC 3339 time the record was written.
    pub time: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    aestream_journal: u32,
    pipeline: String,
    model: String,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// Held while the journal is open: see [`lock`].
    _lock: std::fs::File,
    file: Mutex<std::fs::File>,
    done: Mutex<HashMap<String, FileStamp>>,
    marks: Mutex<Marks>,
    /// Inputs begun in this run and not yet finished or ended (by key, with their hash).
    in_flight: Mutex<HashMap<String, String>>,
}

/// The journal's name for `rel`: the path itself when it is UTF-8; otherwise a NUL (never part
/// of a path, so no UTF-8 path reads the same) and the path's bytes in hex. A lossy reading
/// would give `caf\xe9.pgm` and `caf\xe8.pgm` one key, and so one record for two files.
fn key(rel: &Path) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    match rel.to_str() {
        Some(s) => s.to_string(),
        None => rel
            .as_os_str()
            .as_bytes()
            .iter()
            .fold(String::from("\0"), |mut k, b| {
                let _ = write!(k, "{b:02x}");
                k
            }),
    }
}

/// Takes `DIR/<pipeline>.journal.lock` (flock, exclusive, released by the kernel when the
/// process ends however it ends). Two daemons on one journal would each take every input (the
/// journal is read once, at start) and one's compaction would cut the other's records off.
/// The lock is a file of its own because compaction replaces the journal file.
fn lock(dir: &Path, pipeline: &str) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(format!("{pipeline}.journal.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
    // SAFETY: flock on a descriptor we own, open for the duration of the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Config {
                origin: "--state".into(),
                message: format!(
                    "{}: another aestream process is running pipeline {pipeline} on this state \
                     folder; stop it, or give this one its own --state",
                    path.display()
                ),
            }
        } else {
            Error::Io { path, source: e }
        });
    }
    Ok(f)
}

impl Journal {
    /// Opens (or creates) the journal in `dir`; `pipeline`/`model` go into a new file's header.
    pub fn open(dir: &Path, pipeline: &str, model: &str) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::Io { path, source: e }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("{pipeline}.journal.jsonl"));
        let lock = lock(dir, pipeline)?;
        let mut parsed = Parsed::default();
        if path.exists() {
            let f = std::fs::File::open(&path).map_err(io(&path))?;
            parsed = parse(std::io::BufReader::new(f)).map_err(|e| match e {
                ParseError::Io(e) => io(&path)(e),
                ParseError::Corrupt { line, why } => Error::Other(format!(
                    "{}: line {line} {why}; move the file away to start afresh",
                    path.display()
                )),
            })?;
            if parsed.torn {
                tracing::warn!("{}: dropping a torn last record", path.display());
            }
        }
        let Parsed {
            done,
            records: lines,
            marks,
            mut valid_len,
            mut have_header,
            ..
        } = parsed;
        let journal_file = |truncate_to: Option<u64>| -> Result<std::fs::File> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            if let Some(len) = truncate_to {
                f.set_len(len).map_err(io(&path))?;
            }
            Ok(f)
        };
        // Compact when most lines are superseded records of files taken again.
        if lines > 1024 && lines > 2 * (done.len() + marks.len()) {
            let mut text = header_line(pipeline, model)?;
            let mut recs: Vec<_> = done.iter().collect();
            recs.sort_by(|a, b| a.0.cmp(b.0));
            for (p, stamp) in recs {
                text.push_str(&record_line(p, stamp, "compacted")?);
            }
            for m in marks.lines(&now()) {
                text.push_str(&json_line(&m)?);
            }
            crate::runtime::write_atomic(&path, text.as_bytes())?;
            valid_len = text.len() as u64;
            have_header = true;
            tracing::info!(
                "{}: compacted {lines} records to {}",
                path.display(),
                done.len()
            );
        }
        let exists = path.exists();
        let mut file = journal_file(exists.then_some(valid_len))?;
        if !have_header || !exists {
            file.write_all(header_line(pipeline, model)?.as_bytes())
                .map_err(io(&path))?;
            file.sync_data().map_err(io(&path))?;
            // The new file's name must be durable too.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        tracing::info!(
            "journal {}: {} finished inputs on record, {} with unfinished work",
            path.display(),
            done.len(),
            marks.len()
        );
        Ok(Self {
            path,
            _lock: lock,
            file: Mutex::new(file),
            done: Mutex::new(done),
            marks: Mutex::new(marks),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of finished inputs on record.
    pub fn len(&self) -> usize {
        self.done.lock().map(|d| d.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `rel` was finished as it is now (same size and mtime).
    pub fn is_done(&self, rel: &Path, now: &FileStamp) -> bool {
        let d = self.done.lock().expect("journal lock");
        d.get(&key(rel)).is_some_and(|s| s.same_file_state(now))
    }

    /// Whether `rel` was finished with exactly this content (a touched or re-copied file).
    pub fn is_done_content(&self, rel: &Path, hash: &str) -> bool {
        let d = self.done.lock().expect("journal lock");
        d.get(&key(rel)).is_some_and(|s| s.hash == hash)
    }

    /// Records `rel` as finished, durably (fdatasync) before returning.
    pub fn record(&self, rel: &Path, stamp: &FileStamp, model: &str) -> Result<()> {
        self.append(&record_line(&key(rel), stamp, model)?)?;
        self.done
            .lock()
            .expect("journal lock")
            .insert(key(rel), stamp.clone());
        self.marks.lock().expect("journal lock").finished(&key(rel));
        self.in_flight
            .lock()
            .expect("journal lock")
            .remove(&key(rel));
        Ok(())
    }

    /// Appends one line, durably. A line that could not be written whole (a full disk mid-way)
    /// is cut off again, so the next one starts on a line of its own instead of being glued to
    /// a fragment that the next start would refuse as damage.
    fn append(&self, line: &str) -> Result<()> {
        let mut f = self.file.lock().expect("journal lock");
        let io = |e| Error::Io {
            path: self.path.clone(),
            source: e,
        };
        let before = f.metadata().map_err(io)?.len();
        let written = f.write_all(line.as_bytes()).and_then(|_| f.sync_data());
        if let Err(e) = written {
            if let Err(cut) = f.set_len(before) {
                tracing::error!(
                    "{}: cannot cut a partial line off: {cut}",
                    self.path.display()
                );
            }
            return Err(io(e));
        }
        Ok(())
    }

    /// Writes a mark and applies it.
    fn mark(&self, m: Mark) -> Result<()> {
        self.append(&json_line(&m)?)?;
        self.marks.lock().expect("journal lock").apply(&m);
        Ok(())
    }

    /// What the marks say about `rel` with content `hash`, from earlier runs: its mark of this
    /// run, while it is in flight, is no crash (a second take in this run must not count it).
    pub fn history(&self, rel: &Path, hash: &str) -> History {
        let k = key(rel);
        let mut h = self.marks.lock().expect("journal lock").history(&k, hash);
        let in_flight = self.in_flight.lock().expect("journal lock");
        if in_flight.get(&k).is_some_and(|x| x == hash) && h.begun > h.ended {
            h.begun -= 1;
            h.begun_times.pop();
        }
        h
    }

    /// `rel` is about to be decoded (durable before returning).
    pub fn begun(&self, rel: &Path, hash: &str) -> Result<()> {
        let (k, hash) = (key(rel), hash.to_string());
        self.in_flight
            .lock()
            .expect("journal lock")
            .insert(k.clone(), hash.clone());
        self.mark(Mark::Begun {
            begun: k,
            hash,
            time: now(),
        })
    }

    /// `rel` left the pipeline without output and without ending the process. Only for an
    /// input begun in this run and not finished since.
    pub fn ended(&self, rel: &Path) -> Result<()> {
        let k = key(rel);
        let Some(hash) = self.in_flight.lock().expect("journal lock").remove(&k) else {
            return Ok(());
        };
        self.mark(Mark::Ended {
            ended: k,
            hash,
            time: now(),
        })
    }

    /// `rel` failed for a reason other than its bytes.
    pub fn failed(&self, rel: &Path, hash: &str, error: &str) -> Result<()> {
        self.mark(Mark::Failed {
            failed: key(rel),
            hash: hash.to_string(),
            error: error.to_string(),
            time: now(),
        })
    }

    /// `rel` was set aside: were it put back, it starts with no history.
    pub fn cleared(&self, rel: &Path, hash: &str) -> Result<()> {
        self.ended(rel)?;
        if !self.marks.lock().expect("journal lock").has(&key(rel)) {
            return Ok(());
        }
        self.mark(Mark::Cleared {
            cleared: key(rel),
            hash: hash.to_string(),
            time: now(),
        })
    }

    /// Ends every input begun in this run and not finished (before an exit that cannot wait
    /// for them: they are not to blame for it).
    pub fn abandon_in_flight(&self) -> Result<()> {
        let keys: Vec<String> = {
            let f = self.in_flight.lock().expect("journal lock");
            f.keys().cloned().collect()
        };
        for k in keys {
            self.ended(Path::new(&k))?;
        }
        Ok(())
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn json_line<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(v).map_err(|e| Error::Other(e.to_string()))? + "\n")
}

/// The longest journal line accepted. A record is a relative path (at most a few KB on any
/// filesystem) and a few numbers; a longer line is damage, and is never read whole.
pub const MAX_LINE: usize = 64 << 10;

/// What a journal file holds, as [`parse`] read it.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Each finished input's last record.
    pub done: HashMap<String, FileStamp>,
    /// Records and marks read (superseded ones included).
    pub records: usize,
    /// The marks of unfinished work, as the lines left them.
    pub marks: Marks,
    /// Bytes of whole lines: where the file is cut when a torn last line follows.
    pub valid_len: u64,
    pub have_header: bool,
    /// The last line had no newline (a crash mid-append) and was dropped.
    pub torn: bool,
}

/// Why a journal cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Line `line` (from 1) is not a journal line; `why` says how.
    #[error("line {line} {why}")]
    Corrupt { line: usize, why: &'static str },
}

/// Reads a journal: its header, its records, and a torn last line (dropped). A line over
/// [`MAX_LINE`] is never held in memory: as the last line it is torn, otherwise corrupt.
pub fn parse(mut r: impl BufRead) -> std::result::Result<Parsed, ParseError> {
    let mut p = Parsed::default();
    let mut buf = Vec::new();
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line += 1;
        if buf.last() != Some(&b'\n') {
            if n <= MAX_LINE {
                // A line without its newline was cut short by a crash: drop it.
                p.torn = true;
                break;
            }
            // Over the cap: skip to its end without keeping it.
            if skip_line(&mut r)? {
                return Err(ParseError::Corrupt {
                    line,
                    why: "is too long to be a journal record",
                });
            }
            p.torn = true;
            break;
        }
        if let Ok(rec) = serde_json::from_slice::<Record>(&buf) {
            p.marks.finished(&rec.path);
            p.done.insert(rec.path, rec.stamp);
            p.records += 1;
        } else if let Ok(m) = serde_json::from_slice::<Mark>(&buf) {
            p.marks.apply(&m);
            p.records += 1;
        } else if serde_json::from_slice::<Header>(&buf).is_ok() {
            p.have_header = true;
        } else {
            return Err(ParseError::Corrupt {
                line,
                why: "is not a journal record",
            });
        }
        p.valid_len += n as u64;
    }
    Ok(p)
}

/// Reads up to and including the next newline without keeping anything; whether there was one.
fn skip_line(r: &mut impl BufRead) -> std::io::Result<bool> {
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(false);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = chunk.len();
                r.consume(n);
            }
        }
    }
}

fn header_line(pipeline: &str, model: &str) -> Result<String> {
    json_line(&Header {
        aestream_journal: FORMAT,
        pipeline: pipeline.into(),
        model: model.into(),
    })
}

fn record_line(path: &str, stamp: &FileStamp, model: &str) -> Result<String> {
    json_line(&Record {
        path: path.into(),
        stamp: stamp.clone(),
        model: model.into(),
        time: now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(size: u64, hash: &str) -> FileStamp {
        FileStamp {
            size,
            mtime_ns: 7,
            hash: hash.into(),
        }
    }

    #[test]
    fn a_second_process_on_one_journal_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path(), "p", "v1")?;
        let e = Journal::open(dir.path(), "p", "v1").unwrap_err();
        assert!(
            matches!(e, Error::Config { .. }) && e.to_string().contains("another aestream"),
            "{e}"
        );
        // Another pipeline has a journal of its own.
        Journal::open(dir.path(), "q", "v1")?;
        drop(first);
        Journal::open(dir.path(), "p", "v1")?;
        Ok(())
    }

    #[test]
    fn names_that_are_not_utf8_keep_records_of_their_own() -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let name = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        let (e9, e8) = (name(b"caf\xe9.pgm"), name(b"caf\xe8.pgm"));
        {
            let j = Journal::open(dir.path(), "p", "v1")?;
            j.record(&e9, &stamp(10, "aa"), "v1")?;
            assert!(!j.is_done(&e8, &stamp(10, "aa")));
            assert!(!j.is_done(&name("caf\u{FFFD}.pgm".as_bytes()), &stamp(10, "aa")));
        }
        let j = Journal::open(dir.path(), "p", "v1")?;
        assert!(j.is_done(&e9, &stamp(10, "")));
        assert!(!j.is_done(&e8, &stamp(10, "")));
        j.record(&e8, &stamp(10, "bb"), "v1")?;
        assert_eq!(j.len(), 2);
        Ok(())
    }

    #[test]
    fn records_survive_a_reopen_and_a_torn_tail_is_dropped() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path(), "p", "v1")?;
            j.record(Path::new("a.png"), &stamp(10, "aa"), "v1")?;
            j.record(Path::new("sub/b.png"), &stamp(20, "bb"), "v1")?;
        }
        // A crash in the middle of an append leaves half a line.
        let path = dir.path().join("p.journal.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"path\":\"c.png\",\"si").unwrap();
        drop(f);
        let j = Journal::open(dir.path(), "p", "v1")?;
        assert_eq!(j.len(), 2);
        assert!(j.is_done(Path::new("a.png"), &stamp(10, "")));
        assert!(!j.is_done(Path::new("a.png"), &stamp(11, "")));
        assert!(j.is_done_content(Path::new("sub/b.png"), "bb"));
        assert!(!j.is_done(Path::new("c.png"), &stamp(0, "")));
        // The torn tail was cut, so the next record starts on a line of its own.
        j.record(Path::new("c.png"), &stamp(30, "cc"), "v1")?;
        drop(j);
        let j = Journal::open(dir.path(), "p", "v1")?;
        assert_eq!(j.len(), 3);
        Ok(())
    }

    #[test]
    fn a_foreign_file_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.journal.jsonl"), "hello\n").unwrap();
        let e = Journal::open(dir.path(), "p", "v").unwrap_err().to_string();
        assert!(e.contains("line 1 is not a journal record"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("p.journal.jsonl")).unwrap(),
            "hello\n"
        );
    }

    /// The line number counts the header: the third line of the file is line 3.
    #[test]
    fn a_corrupt_line_is_named_by_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path(), "p", "v1").unwrap();
            j.record(Path::new("a.png"), &stamp(10, "aa"), "v1")
                .unwrap();
        }
        let path = dir.path().join("p.journal.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"garbage\n").unwrap();
        drop(f);
        let e = Journal::open(dir.path(), "p", "v1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3 is not a journal record"), "{e}");
    }

    /// A torn last line far longer than any record is dropped without being read whole; a
    /// long line with more after it is damage.
    #[test]
    fn an_overlong_line_is_never_held_whole() {
        let mut text = header_line("p", "v").unwrap().into_bytes();
        text.extend(vec![b'x'; 3 * MAX_LINE]);
        let p = parse(std::io::Cursor::new(&text)).unwrap();
        assert!(p.torn && p.have_header);
        assert_eq!(p.valid_len as usize, text.len() - 3 * MAX_LINE);
        text.extend(b"\n");
        let e = parse(std::io::Cursor::new(&text)).unwrap_err().to_string();
        assert_eq!(e, "line 2 is too long to be a journal record");
    }

    /// Marks survive a reopen: an input begun and never ended counts once per start it was
    /// left open at; ended, finished or abandoned ones count nothing.
    #[test]
    fn unfinished_marks_are_counted_across_restarts() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (Path::new("a.png"), Path::new("b.png"), Path::new("c.png"));
        for _ in 0..2 {
            // A start that ends abruptly with `a` in progress; `b` ended, `c` finished.
            let j = Journal::open(dir.path(), "p", "v1")?;
            j.begun(a, "ha")?;
            j.begun(b, "hb")?;
            j.ended(b)?;
            j.begun(c, "hc")?;
            j.record(c, &stamp(1, "hc"), "v1")?;
        }
        let j = Journal::open(dir.path(), "p", "v1")?;
        assert_eq!(j.history(a, "ha").crashes(), 2);
        assert!(j.history(a, "ha").verdict(5).is_some());
        // Its own mark in this run is no crash while it is in flight.
        j.begun(b, "hb")?;
        assert_eq!(j.history(b, "hb").crashes(), 0);
        j.ended(b)?;
        assert_eq!(j.history(b, "hb").crashes(), 0);
        assert_eq!(j.history(c, "hc"), Default::default());
        // A controlled end (a failed sink, the drain's hard exit) closes what is in flight.
        j.begun(b, "hb")?;
        j.abandon_in_flight()?;
        // Quarantine clears `a`: put back, it starts afresh.
        j.cleared(a, "ha")?;
        drop(j);
        let j = Journal::open(dir.path(), "p", "v1")?;
        assert_eq!(j.history(b, "hb").crashes(), 0);
        assert_eq!(j.history(a, "ha").crashes(), 0);
        Ok(())
    }
}
