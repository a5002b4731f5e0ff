//! Model versions: which weights and settings made an output. Recorded with every output (the
//! journal, the Redis result's `version` field, `aestream_model_info`), so the text form is a
//! contract: `NAME@WWWWWWWW.SSSS` for weights as loaded (hashes of the weights file and of the
//! pipeline's settings), `NAME-vN@WWWWWWWW` for the fine-tuner's version N (hash of its
//! weights). Code passes the struct; only logs, files and metrics see the text.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelVersion {
    pub pipeline: String,
    /// N of a fine-tuned version; `None` for weights as loaded from a file.
    pub finetuned: Option<u64>,
    /// The low 32 bits of the weights' xxh3.
    pub weights: u32,
    /// The low 16 bits of the settings' xxh3 (weights as loaded only).
    pub settings: Option<u16>,
}

impl ModelVersion {
    /// Weights as loaded: their file's bytes and the pipeline's settings (serialised).
    pub fn loaded(pipeline: &str, weights_bytes: &[u8], settings_bytes: &[u8]) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            finetuned: None,
            weights: xxhash_rust::xxh3::xxh3_64(weights_bytes) as u32,
            settings: Some(xxhash_rust::xxh3::xxh3_64(settings_bytes) as u16),
        }
    }

    /// The weights alone, without pipeline or settings: `1f2e3d4c`. Two versions with the
    /// same id run the same weights.
    pub fn weights_id(&self) -> String {
        format!("{:08x}", self.weights)
    }

    /// The fine-tuner's version `n`, whose weights hash to `weights`.
    pub fn finetuned(pipeline: &str, n: u64, weights: u32) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            finetuned: Some(n),
            weights,
            settings: None,
        }
    }
}

impl fmt::Display for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pipeline)?;
        if let Some(n) = self.finetuned {
            write!(f, "-v{n}")?;
        }
        write!(f, "@{:08x}", self.weights)?;
        if let Some(s) = self.settings {
            write!(f, ".{s:04x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_are_the_recorded_ones() {
        let v = ModelVersion {
            pipeline: "denoise".into(),
            finetuned: None,
            weights: 0x9cef8a3c,
            settings: Some(0xe9ba),
        };
        assert_eq!(v.to_string(), "denoise@9cef8a3c.e9ba");
        assert_eq!(
            ModelVersion::finetuned("denoise-fast", 3, 0xab).to_string(),
            "denoise-fast-v3@000000ab"
        );
    }
}
