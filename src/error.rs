//! The library's error type. Every variant says which file, stream offset or config key it is
//! about, so a user can act on the message alone.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: cannot decode: {message}")]
    Decode { what: String, message: String },

    #[error("{what}: cannot encode: {message}")]
    Encode { what: String, message: String },

    #[error("stdin frame {seq} at byte {offset}: {message}")]
    Stream {
        seq: u64,
        offset: u64,
        message: String,
    },

    /// One frame's output could not be written; the run goes on.
    #[error("{0}")]
    FrameFailed(String),

    #[error("model: {0}")]
    Model(#[from] candle_core::Error),

    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::runtime::PathError> for Error {
    fn from(e: crate::runtime::PathError) -> Self {
        Error::Io {
            path: e.path,
            source: e.source,
        }
    }
}
