//! The folder sink: each output at the input's relative path, named by the injective rule of
//! [`crate::frame::names`] (`china.png` → `china.png`, `photo.jpg` → `photo.jpg.png`, a queue
//! entry `cam1.000040` → `cam1.000040.png`), written to a temporary file in the same folder and
//! renamed into place, so no reader ever sees a partial file.
//!
//! No rule can rule out every clash (a 64-bit hash collision of two long queue names, two
//! allowed folders holding the same relative path, a bug), so the sink also remembers which
//! input each output of this run was written for, and fails a frame whose output another input
//! already wrote, naming both, instead of overwriting it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{Output, Payload, Sink};
use crate::config::OutputKind;
use crate::error::{Error, Result};
use crate::frame::entry::NameSource;
use crate::frame::names::{file_base, with_extension};
use crate::frame::FrameId;
use crate::runtime::write_atomic;

/// Which input an output was written for: the frame's identity as far as naming goes (a
/// re-delivered entry, or a file taken again after it changed, is the same input).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    File(PathBuf),
    /// What the entry was named from (not its escaped name, which two entries may share).
    Entry(NameSource),
    Stream(u64),
    Request(u64),
}

impl Owner {
    fn of(id: &FrameId) -> Self {
        match id {
            FrameId::File { rel, .. } => Owner::File(rel.clone()),
            FrameId::Entry(e) => Owner::Entry(e.named_by.clone()),
            FrameId::Stream { seq, .. } => Owner::Stream(*seq),
            FrameId::Request { n } => Owner::Request(*n),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::File(rel) => write!(f, "input {}", rel.display()),
            Owner::Entry(source) => write!(f, "{source}"),
            Owner::Stream(seq) => write!(f, "stdin frame {seq}"),
            Owner::Request(n) => write!(f, "HTTP request {n}"),
        }
    }
}

/// Outputs of this run, with the input and the frame (its sequence number) each was last
/// written for, in two generations of at most [`Owners::GENERATION`] each, so a daemon that
/// runs for months holds a bounded map (a few tens of MB at most) and still checks every
/// output against at least the last 65,536 written.
#[derive(Debug, Default)]
struct Owners {
    current: HashMap<PathBuf, (Owner, u64)>,
    previous: HashMap<PathBuf, (Owner, u64)>,
}

/// What [`Owners::claim`] found.
#[derive(Debug, PartialEq)]
enum Claim {
    /// Free, or this input's own output: write it.
    Mine,
    /// This input's output from a later frame is there already: the input was taken again
    /// after it changed, and the newer frame overtook this one on the parallel stages.
    Stale,
    /// Another input's output.
    Other(Owner),
}

impl Owners {
    const GENERATION: usize = 1 << 16;

    /// Whether frame `seq` of `owner` may write `path`; if so, notes it as the path's writer.
    fn claim(&mut self, path: &Path, owner: &Owner, seq: u64) -> Claim {
        let known = self.current.get(path).or_else(|| self.previous.get(path));
        match known {
            Some((other, _)) if other != owner => return Claim::Other(other.clone()),
            Some((_, last)) if *last > seq => return Claim::Stale,
            _ => {}
        }
        if self.current.len() >= Self::GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current
            .insert(path.to_path_buf(), (owner.clone(), seq));
        Claim::Mine
    }
}

pub struct FolderSink {
    dir: PathBuf,
    written: u64,
    /// With several output kinds each goes to its own sub-folder, `OUT/KIND/NAME.EXT`.
    per_kind: bool,
    owners: Owners,
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
            owners: Owners::default(),
        })
    }

    /// Puts each output kind in its own sub-folder (used when a run emits several kinds).
    pub fn per_kind(mut self, yes: bool) -> Self {
        self.per_kind = yes;
        self
    }

    /// Where a frame's output of a kind goes (see [`crate::frame::names`] for the rule).
    pub fn target(&self, id: &FrameId, kind: OutputKind) -> PathBuf {
        let dir = if self.per_kind {
            self.dir.join(kind.name())
        } else {
            self.dir.clone()
        };
        let ext = kind.extension();
        match id {
            FrameId::File { rel, .. } => {
                let name = rel.file_name().unwrap_or(rel.as_os_str());
                dir.join(rel)
                    .with_file_name(with_extension(&file_base(name), ext))
            }
            FrameId::Stream { seq, .. } => dir.join(format!("frame-{seq:08}.{ext}")),
            FrameId::Request { n } => dir.join(format!("request-{n:08}.{ext}")),
            // Named by the frame, not the delivery: a re-delivered entry replaces its own
            // output (atomically), so a folder never holds two outputs for one frame. The name
            // is escaped already, and keeps any dots of its own (`cam1.000040.png`).
            FrameId::Entry(e) => dir.join(with_extension(OsStr::new(&e.name), ext)),
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
        let owner = Owner::of(&out.id);
        for (kind, payload) in &out.files {
            let path = self.target(&out.id, *kind);
            match self.owners.claim(&path, &owner, out.seq) {
                Claim::Mine => {}
                Claim::Other(other) => {
                    return Err(Error::FrameFailed(format!(
                        "{}: its output {} was already written for {other} in this run; two \
                         inputs may not share one output, so it is not overwritten",
                        out.id,
                        path.display()
                    )))
                }
                Claim::Stale => {
                    // Not an error: the newer result stands, and this one is finished.
                    tracing::info!(
                        "{}: the result of a newer version of this input is written already; \
                         this older one is not written over it",
                        out.id
                    );
                    return Ok(());
                }
            }
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

    fn skip(&mut self, _seq: u64, _id: &FrameId) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::entry::{safe_name, Entry, QueueOrigin};
    use crate::frame::FileStamp;

    fn file(rel: &str) -> FrameId {
        FrameId::File {
            rel: rel.into(),
            abs: Path::new("/in").join(rel),
            stamp: FileStamp::default(),
        }
    }

    fn entry(raw: &str) -> FrameId {
        FrameId::Entry(Entry {
            origin: std::sync::Arc::new(QueueOrigin {
                server: "h:1/0".into(),
                stream: "frames".into(),
                group: "g".into(),
            }),
            id: "1-0".into(),
            name: safe_name(raw),
            named_by: NameSource::Id(raw.as_bytes().to_vec()),
            path: None,
            deliveries: 1,
        })
    }

    #[test]
    fn same_stem_inputs_and_dotted_ids_get_their_own_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = FolderSink::new(tmp.path()).unwrap();
        let name = |id: &FrameId| {
            let p = sink.target(id, OutputKind::Denoised);
            p.strip_prefix(tmp.path()).unwrap().display().to_string()
        };
        assert_eq!(name(&file("china.png")), "china.png");
        assert_eq!(name(&file("sub/photo.jpg")), "sub/photo.jpg.png");
        assert_eq!(name(&file("photo")), "photo..png");
        assert_eq!(name(&entry("cam1.000040")), "cam1.000040.png");
        assert_eq!(name(&entry("cam1.000041")), "cam1.000041.png");
        assert_eq!(name(&entry("a/b")), "a%2Fb.png");
        assert_eq!(name(&entry("a_b")), "a_b.png");
        assert_eq!(name(&entry("a b")), "a%20b.png");
        let latent = sink
            .per_kind(true)
            .target(&file("china.png"), OutputKind::Latent);
        assert!(latent.ends_with("latent/china.npy"), "{}", latent.display());
    }

    /// An entry named `name`, made from `source`.
    fn named(name: &str, source: NameSource) -> Output {
        let FrameId::Entry(mut e) = entry(name) else {
            unreachable!()
        };
        e.named_by = source;
        Output {
            seq: 0,
            id: FrameId::Entry(e),
            version: crate::model::version::ModelVersion::finetuned("p", 1, 0),
            files: vec![(
                OutputKind::Denoised,
                Payload::Bytes(name.as_bytes().to_vec()),
            )],
        }
    }

    #[test]
    fn entries_with_one_name_from_two_sources_do_not_share_an_output() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = FolderSink::new(tmp.path()).unwrap();
        let cam = |c: &str| NameSource::Path(format!("/in/{c}/0001.png").into());
        sink.write(named("x", cam("cam1"))).unwrap();
        // Delivered again: its own output, replaced.
        sink.write(named("x", cam("cam1"))).unwrap();
        let e = sink.write(named("x", cam("cam2"))).unwrap_err().to_string();
        assert!(
            e.contains("/in/cam1/0001.png") && e.contains("not overwritten"),
            "{e}"
        );
        let e = sink
            .write(named("x", NameSource::Id(b"x\xff".to_vec())))
            .unwrap_err();
        assert!(matches!(e, Error::FrameFailed(_)), "{e}");
        assert_eq!(std::fs::read(tmp.path().join("x.png")).unwrap(), b"x");
    }

    #[test]
    fn an_output_of_another_input_is_never_overwritten() {
        let mut owners = Owners::default();
        let p = Path::new("/out/x.png");
        let (a, b) = (
            Owner::File("x.png".into()),
            Owner::Entry(NameSource::Id(b"x".to_vec())),
        );
        assert_eq!(owners.claim(p, &a, 1), Claim::Mine);
        // The same input again (changed and taken again, or re-delivered): its own output.
        assert_eq!(owners.claim(p, &a, 5), Claim::Mine);
        // ... unless the frame is older than the one that wrote it last.
        assert_eq!(owners.claim(p, &a, 3), Claim::Stale);
        assert_eq!(owners.claim(p, &b, 6), Claim::Other(a.clone()));
        // Still known after a generation turns over.
        for i in 0..Owners::GENERATION {
            owners
                .current
                .insert(PathBuf::from(i.to_string()), (b.clone(), 0));
        }
        assert_eq!(owners.claim(Path::new("/out/y.png"), &b, 7), Claim::Mine);
        assert_eq!(owners.claim(p, &b, 8), Claim::Other(a.clone()));
        assert_eq!(owners.claim(p, &a, 4), Claim::Stale);
    }

    #[test]
    fn an_older_version_of_an_input_does_not_overwrite_the_newer_result() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = FolderSink::new(tmp.path()).unwrap();
        let version = |seq: u64, bytes: &[u8]| Output {
            seq,
            id: file("latest.png"),
            version: crate::model::version::ModelVersion::finetuned("p", 1, 0),
            files: vec![(OutputKind::Denoised, Payload::Bytes(bytes.to_vec()))],
        };
        // Version 2 (taken later) overtook version 1 on the parallel stages.
        sink.write(version(2, b"v2")).unwrap();
        sink.write(version(1, b"v1")).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("latest.png")).unwrap(), b"v2");
        sink.write(version(3, b"v3")).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("latest.png")).unwrap(), b"v3");
    }
}
