//! Logging: human on a terminal, one JSON object per line, or journald's structured fields
//! (chosen automatically under systemd); `AESTREAM_LOG` filters (default `info`).

use std::io::IsTerminal;

use clap::ValueEnum;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Json,
    Journald,
}

/// Sets up tracing; `AESTREAM_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("AESTREAM_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // systemd sets JOURNAL_STREAM to the device:inode of the journal stream it gave us.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = match format {
        LogFormat::Auto if under_journal => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Human,
        f => f,
    };
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("aestream: journald unavailable ({e}); logging to stderr"),
        }
    }
    let base = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter());
    if format == LogFormat::Json {
        base.json().init();
    } else {
        base.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
