//! `[source]` and `[sink]`: a queue to read frames from and a queue to write results to, which
//! files of an input folder are inputs (`[source] include` / `exclude`), and the folders a
//! queue entry's `path` may read from (`allow_paths`). The URLs are checked where they are
//! opened (the CLI may override them); the globs and folders are checked here (the folders
//! must be absolute: a pipeline file is read from anywhere), and the numbers range-checked.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};
use crate::frame::names::IMAGE_EXTENSIONS;

/// The default `[source] include`: `*.EXT` for each image extension.
pub fn default_include() -> Vec<String> {
    IMAGE_EXTENSIONS.iter().map(|e| format!("*.{e}")).collect()
}

/// Queue engines a `[source]` or `[sink]` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueKind {
    #[default]
    Redis,
}

/// A queue source: `redis://HOST:PORT/STREAM` plus consumer-group settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSourceConfig {
    pub kind: QueueKind,
    /// `redis://HOST:PORT/STREAM`; `--input` overrides it.
    pub url: Option<String>,
    /// Consumer group; created (with the stream) if missing.
    pub group: String,
    /// Consumer name; default host name + process id.
    pub consumer: Option<String>,
    /// Entries pending this long on a consumer (it died) are taken over.
    pub claim_idle_ms: u64,
    /// An entry delivered more often than this goes to the dead-letter stream `STREAM:dead`.
    pub max_deliveries: u64,
    /// Most entries read at once (never more than the pipeline has room for).
    pub batch: usize,
    /// Largest inline `data` field accepted.
    pub max_inline_bytes: u64,
    /// How long one read waits for new entries.
    pub block_ms: u64,
    /// Folder sources: the files taken as inputs, as globs on the path relative to the folder
    /// (ignoring case; `*` crosses folders). Default: the image extensions.
    pub include: Vec<String>,
    /// Folder sources: files matching one of these are not inputs even if included.
    pub exclude: Vec<String>,
    /// Folders whose files `path` entries may name (after resolving links and `..`); none:
    /// `path` entries are refused. `--allow-path` replaces the list.
    pub allow_paths: Vec<std::path::PathBuf>,
}

impl QueueSourceConfig {
    /// Numbers a queue can work with (`block_ms` 0 would block Redis reads forever, past a
    /// shutdown, so it is at least 1), globs that parse, absolute `allow_paths`.
    pub fn validate(&self) -> Result<(), Invalid> {
        within("source.claim_idle_ms", self.claim_idle_ms, 100, 86_400_000)?;
        within("source.max_deliveries", self.max_deliveries, 1, 1000)?;
        within("source.batch", self.batch, 1, 10_000)?;
        within("source.max_inline_bytes", self.max_inline_bytes, 1, 1 << 32)?;
        within("source.block_ms", self.block_ms, 1, 60_000)?;
        for (key, globs) in [
            ("source.include", &self.include),
            ("source.exclude", &self.exclude),
        ] {
            for g in globs {
                if let Err(e) = globset::Glob::new(g) {
                    return Err(Invalid::new(key, g, format!("not a glob: {}", e.kind())));
                }
            }
        }
        if self.include.is_empty() {
            return Err(Invalid::new(
                "source.include",
                &self.include,
                "no file would be an input; leave the key out for the image extensions",
            ));
        }
        if let Some(p) = self.allow_paths.iter().find(|p| !p.is_absolute()) {
            return Err(Invalid::new(
                "source.allow_paths",
                p,
                "must be an absolute folder",
            ));
        }
        Ok(())
    }
}

impl Default for QueueSourceConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Redis,
            url: None,
            group: "aestream".into(),
            consumer: None,
            claim_idle_ms: 10_000,
            max_deliveries: 5,
            batch: 16,
            max_inline_bytes: 32 << 20,
            block_ms: 1000,
            include: default_include(),
            exclude: vec![],
            allow_paths: Vec::new(),
        }
    }
}

/// A queue sink: one entry per result in `redis://HOST:PORT/STREAM`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSinkConfig {
    pub kind: QueueKind,
    /// `redis://HOST:PORT/STREAM`; `--output` overrides it.
    pub url: Option<String>,
    /// Approximate cap on the result stream's length (XADD MAXLEN ~); 0 = none.
    pub maxlen: u64,
}

impl Default for QueueSinkConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Redis,
            url: None,
            maxlen: 100_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_paths_must_be_absolute() {
        let mut q = QueueSourceConfig::default();
        assert!(q.validate().is_ok());
        q.allow_paths = vec!["/srv/in".into(), "in".into()];
        let e = q.validate().unwrap_err().to_string();
        assert!(
            e.contains("source.allow_paths") && e.contains("\"in\""),
            "{e}"
        );
    }
}
