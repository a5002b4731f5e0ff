//! `[source]` and `[sink]`: a queue to read frames from and a queue to write results to.
//! Their URLs are checked where they are opened (the CLI may override them); the source's
//! numbers are range-checked here.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

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
        }
    }
}

impl QueueSourceConfig {
    /// Numbers a queue can work with; `block_ms` 0 would block Redis reads forever (no
    /// shutdown), so it is at least 1.
    pub fn validate(&self) -> Result<(), Invalid> {
        within("source.claim_idle_ms", self.claim_idle_ms, 100, 86_400_000)?;
        within("source.max_deliveries", self.max_deliveries, 1, 1000)?;
        within("source.batch", self.batch, 1, 10_000)?;
        within("source.max_inline_bytes", self.max_inline_bytes, 1, 1 << 32)?;
        within("source.block_ms", self.block_ms, 1, 60_000)
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
