//! Where `run` reads from and writes to, parsed once here at the edge: `-` (stdin/stdout), a
//! Redis stream `redis://HOST:PORT/STREAM`, or else a folder. Everything after this matches
//! on the enum; nothing compares strings again.

use std::path::{Path, PathBuf};

use aestream::source::redis::RedisAddress;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `-`: stdin for input, stdout for output.
    Stdio,
    /// A Redis stream (consumer group settings in the pipeline's `[source]`).
    Redis(RedisAddress),
    Folder(PathBuf),
}

impl Endpoint {
    pub fn folder(&self) -> Option<&Path> {
        match self {
            Endpoint::Folder(p) => Some(p),
            _ => None,
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "-" {
            Ok(Endpoint::Stdio)
        } else if s.starts_with("redis://") {
            RedisAddress::parse(s)
                .map(Endpoint::Redis)
                .map_err(|e| e.to_string())
        } else if s.is_empty() {
            Err("empty: expected a folder, - or redis://HOST:PORT/STREAM".into())
        } else {
            Ok(Endpoint::Folder(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for Endpoint {
    /// As given, but without Redis credentials (safe to log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Stdio => f.write_str("-"),
            Endpoint::Redis(a) => write!(f, "redis stream {} on {}", a.stream, a.server),
            Endpoint::Folder(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_once() {
        assert_eq!("-".parse::<Endpoint>().unwrap(), Endpoint::Stdio);
        assert_eq!(
            "in/".parse::<Endpoint>().unwrap(),
            Endpoint::Folder(PathBuf::from("in/"))
        );
        let r = "redis://u:secret@h:7000/frames"
            .parse::<Endpoint>()
            .unwrap();
        assert!(matches!(&r, Endpoint::Redis(a) if a.stream == "frames"));
        assert!(!r.to_string().contains("secret"));
        assert!("redis://host".parse::<Endpoint>().is_err());
        assert!("".parse::<Endpoint>().is_err());
    }
}
