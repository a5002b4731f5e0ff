//! The folder source of `aestream run --input DIR`: its journal of finished inputs, what it
//! leaves out of the watch (state, outputs, quarantine, `--done`), its arrival rules and its
//! include/exclude filter, from the command line and the pipeline's `[source]`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use aestream::serving::Generation;
use aestream::source::folder::{
    FolderCompletion, FolderSource, FolderSourceConfig, InputFilter, Journal, Quarantine,
};
use aestream::source::Source;

use super::{same_folder, secs, state_dir, Endpoint, RunArgs};

/// The folder source reading `input`.
pub(super) fn source(
    a: &RunArgs,
    first: &Generation,
    input: &Path,
    quarantine: Option<Quarantine>,
) -> anyhow::Result<Box<dyn Source>> {
    let state = state_dir(a);
    let j = Arc::new(
        Journal::open(&state, &first.cfg.name, &first.version.to_string())
            .with_context(|| format!("--state {}", state.display()))?,
    );
    if !j.is_empty() {
        tracing::info!(
            "{} inputs are already finished on record in {}; they are skipped",
            j.len(),
            j.path().display()
        );
    }
    let mut exclude = vec![state];
    if let Endpoint::Folder(out) = a.output() {
        exclude.push(out.clone());
    }
    if let Some(q) = &quarantine {
        // A folder given is made now, so that it can be left out of the input even when it
        // lies inside it (`--recursive --quarantine IN/rejected`): one that does not exist yet
        // cannot be resolved, and set-aside files would be taken again from it. (The default,
        // `.failed`, is a dot-folder: never read, and made only when needed.)
        if a.quarantine.is_some() {
            std::fs::create_dir_all(q.dir())
                .with_context(|| format!("--quarantine {}", q.dir().display()))?;
        }
        exclude.push(q.dir().to_path_buf());
    }
    if let Some(d) = &a.done {
        std::fs::create_dir_all(d).with_context(|| format!("--done {}", d.display()))?;
        let output = match a.output() {
            Endpoint::Folder(out) => Some(out.as_path()),
            _ => None,
        };
        for (what, other) in [("the input", Some(input)), ("the output", output)] {
            if other.is_some_and(|o| same_folder(o, d)) {
                return Err(aestream::Error::Config {
                    origin: "--done".into(),
                    message: format!(
                        "{} is {what} folder; finished inputs must go elsewhere",
                        d.display()
                    ),
                }
                .into());
            }
        }
        exclude.push(d.clone());
    }
    let src_cfg = FolderSourceConfig {
        recursive: a.recursive,
        once: a.once,
        exclude,
        max_file_bytes: first.cfg.decode.max_alloc_mib.saturating_mul(1 << 20),
        quiet: Duration::from_millis(a.quiet_ms),
        poll: a.poll.map(|p| secs("--poll", p)).transpose()?,
        rescan: (a.rescan > 0.0)
            .then(|| secs("--rescan", a.rescan))
            .transpose()?,
        completion: FolderCompletion {
            journal: Some(j),
            done_dir: a.done.clone(),
            quarantine,
            retries: None,
        },
        max_attempts: first.cfg.source.max_deliveries.min(u32::MAX as u64) as u32,
        // Checked when the pipeline was loaded.
        filter: InputFilter::new(&first.cfg.source.include, &first.cfg.source.exclude)
            .context("[source] include/exclude")?,
        ..FolderSourceConfig::new(input.to_path_buf())
    };
    Ok(Box::new(
        FolderSource::new(src_cfg).with_context(|| format!("--input {}", input.display()))?,
    ))
}
