//! Logging: human on a terminal, one JSON object per line, or journald's structured fields
//! (chosen automatically under systemd); `AESTREAM_LOG` filters (default `info`).

use std::io::{IsTerminal, Write};

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
        let ansi = std::io::stderr().is_terminal();
        base.with_ansi(ansi)
            .with_writer(move || Escaping {
                out: std::io::stderr(),
                ansi,
            })
            .init();
    }
}

/// The human format's writer: one event arrives as one write of one line, and every control
/// character in it but the closing newline (and, on a terminal, the colours' ESC) is escaped.
/// A file name, queue field or error text holding a newline can then never forge a log line,
/// wherever it is logged. (JSON escapes them itself; journald keeps fields apart.)
struct Escaping<W> {
    out: W,
    ansi: bool,
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let kept = |c: char| !c.is_control() || (self.ansi && c == '\u{1b}');
        let text = String::from_utf8_lossy(body);
        if text.chars().all(kept) {
            self.out.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = String::with_capacity(buf.len() + 16);
        for c in text.chars() {
            if kept(c) {
                line.push(c);
            } else {
                line.extend(c.escape_debug());
            }
        }
        if body.len() < buf.len() {
            line.push('\n');
        }
        self.out.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cannot_hold_another() {
        let mut w = Escaping {
            out: Vec::new(),
            ansi: false,
        };
        w.write_all(b"INFO in/a\nWARN forged\x1b[2J.png: done\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(w.out).unwrap(),
            "INFO in/a\\nWARN forged\\u{1b}[2J.png: done\n"
        );
    }
}
