//! A frame read from a message queue: which queue ([`QueueOrigin`]), the engine's id, the
//! name its outputs get, and how often it was delivered. Engine-neutral (Redis Streams today;
//! NATS JetStream or Kafka the same way), so frames, sinks and the wiring can name a queued
//! frame without knowing the engine.

use std::path::PathBuf;
use std::sync::Arc;

/// The queue a frame was read from: the server (without credentials), stream and group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueOrigin {
    /// `host:port/db`, as given in the URL (credentials left out so it can be logged).
    pub server: String,
    pub stream: String,
    pub group: String,
}

/// A frame read from a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub origin: Arc<QueueOrigin>,
    /// The engine's id for the entry (Redis: `1700000000000-0`).
    pub id: String,
    /// The frame's name, for output file names: its `id` field, else its file's path below
    /// the allowed folder, else the entry id; escaped by [`safe_name`], so it is a file name
    /// and two raw names never share one.
    pub name: String,
    /// What `name` was made from, byte for byte: two frames with the same source are one frame
    /// (delivered again, or retried by its producer) and share an output; two with different
    /// sources never may, even if their names came out equal (see the folder sink).
    pub named_by: NameSource,
    /// The shared-storage path the entry referred to, if it carried one.
    pub path: Option<PathBuf>,
    /// How many times the queue has delivered it (1 the first time).
    pub deliveries: u64,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} entry {} ({})",
            self.origin.server, self.origin.stream, self.id, self.name
        )
    }
}

/// What an entry's output name was made from (its identity as far as naming goes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NameSource {
    /// The entry's `id` field, as sent (not necessarily UTF-8).
    Id(Vec<u8>),
    /// The file a `path` entry named, as resolved (two spellings of one file are one frame).
    Path(PathBuf),
    /// The queue's own id for the entry (it had neither an `id` nor a readable `path`).
    EntryId(String),
}

impl std::fmt::Display for NameSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameSource::Id(b) => write!(f, "entry with id {:?}", String::from_utf8_lossy(b)),
            NameSource::Path(p) => write!(f, "entry for {}", p.display()),
            NameSource::EntryId(id) => write!(f, "entry {id}"),
        }
    }
}

/// Longest name [`safe_name`] returns (so `NAME.png` stays far below the 255-byte limit).
const MAX_NAME: usize = 200;

/// Makes `raw` usable as a file name by *escaping*, never by replacing, so that two raw names
/// never give one file name (`a/b`, `a_b`, `a b` → `a%2Fb`, `a_b`, `a%20b`):
///
/// - bytes outside `A-Z a-z 0-9 . _ -` are percent-encoded (`%` itself too, as `%25`); so is a
///   leading `.` (no dot-files, no `..`);
/// - the empty name is `~`;
/// - a name whose escaped form is longer than 200 bytes keeps its first 183 bytes and gets `~`
///   and 16 hex digits of a hash of the raw name.
///
/// Escaped text never holds `~`, so neither of the last two forms can equal an escaped name: the
/// function is injective (a clash of two long names would need a 64-bit hash collision, and the
/// folder sink still refuses to overwrite then).
pub fn safe_name(raw: impl AsRef<[u8]>) -> String {
    use std::fmt::Write;
    let raw = raw.as_ref();
    if raw.is_empty() {
        return "~".into();
    }
    let mut s = String::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    if s.len() > MAX_NAME {
        // All ASCII after escaping: any cut is a character boundary.
        s.truncate(MAX_NAME - 17);
        let _ = write!(s, "~{:016x}", xxhash_rust::xxh3::xxh3_64(raw));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_output_folder() {
        for raw in ["../../etc/passwd", "/abs/x.png", "..", ".hidden", "a\\b"] {
            let s = safe_name(raw);
            assert!(
                !s.contains('/') && !s.contains('\\') && !s.starts_with('.'),
                "{s}"
            );
        }
        assert_eq!(safe_name(".hidden"), "%2Ehidden");
        assert_eq!(safe_name(""), "~");
        assert_eq!(safe_name("cam1-000042.png"), "cam1-000042.png");
        assert_eq!(safe_name("1700000000000-0"), "1700000000000-0");
        assert!(safe_name("x".repeat(1000)).len() <= 200);
    }

    #[test]
    fn names_that_used_to_collide_stay_apart() {
        let raw = [
            "a/b",
            "a_b",
            "a b",
            "a%2Fb",
            "cam1.000040",
            "cam1.000041",
            "cam1.000042",
            "",
            "~",
        ];
        let names: std::collections::HashSet<String> = raw.iter().map(safe_name).collect();
        assert_eq!(names.len(), raw.len(), "{names:?}");
        assert_eq!(safe_name("a/b"), "a%2Fb");
        assert_eq!(safe_name("a b"), "a%20b");
        assert_eq!(safe_name("cam1.000040"), "cam1.000040");
        // Long names: cut, and told apart by the hash of the whole name.
        let (a, b) = ("x".repeat(300) + "1", "x".repeat(300) + "2");
        assert_ne!(safe_name(&a), safe_name(&b));
        assert_eq!(safe_name(&a).len(), 200);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 4000,
            rng_seed: proptest::test_runner::RngSeed::Fixed(14),
            ..Default::default()
        })]

        #[test]
        fn escaping_is_injective(
            a in proptest::collection::vec(proptest::sample::select(b"ab./ _%~-\\0\xff".to_vec()), 0..8),
            b in proptest::collection::vec(proptest::sample::select(b"ab./ _%~-\\0\xff".to_vec()), 0..8),
        ) {
            proptest::prop_assume!(a != b);
            proptest::prop_assert_ne!(safe_name(&a), safe_name(&b));
        }

        #[test]
        fn escaped_names_are_file_names(a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let s = safe_name(&a);
            proptest::prop_assert!(!s.is_empty() && s.len() <= 200);
            proptest::prop_assert!(!s.starts_with('.') && !s.contains('/') && !s.contains('\\'));
        }
    }
}
