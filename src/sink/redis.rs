//! The Redis Streams sink: one entry per result (XADD with approximate MAXLEN trimming), with
//! fields `source`, `id`, `entry` (the input entry, for queue inputs), `version`, `consumer`,
//! and per output kind the result inline: PNG bytes under the kind's name (`denoised`,
//! `segmentation`, …), or a latent code as little-endian f32 bytes (`latent`) plus its shape
//! (`latent_shape`, e.g. `7,7,8`).
//!
//! When the frame came from a stream on the same server, the input's XACK and the result's
//! XADD run in one Lua script: atomic like MULTI/EXEC, and also conditional — the result is
//! added only if this XACK acknowledged the entry. A plain MULTI/EXEC would let a slow worker
//! whose entry had been taken over add a second result; this way each frame yields exactly one
//! result entry, whoever dies when. A lost server is retried with backoff (the pipeline backs
//! up meanwhile); after a stop request it is given up after a grace period, leaving the entries
//! pending for another consumer.

use std::time::{Duration, Instant};

use redis::{Connection, RedisResult, Value};

use super::{Output, Payload, Sink};
use crate::error::{Error, Result};
use crate::frame::FrameId;
use crate::runtime::Stop;
use crate::runtime::Telemetry;
use crate::source::redis::conn::{Backoff, Conn, RedisAddress};

/// XACK the input entry; only if that acknowledged it, XADD the result.
/// KEYS: input stream, result stream. ARGV: group, entry id, maxlen (0 = none), field/values.
const ACK_AND_ADD: &str = r#"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  if ARGV[3] == '0' then
    return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
  end
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
end
return false
"#;

pub struct RedisSink {
    addr: RedisAddress,
    conn: Conn,
    maxlen: u64,
    consumer: String,
    script: redis::Script,
    stop: Stop,
    telemetry: std::sync::Arc<Telemetry>,
    /// How long to keep retrying a lost server once a stop was requested.
    grace: Duration,
}

impl RedisSink {
    pub fn new(
        addr: RedisAddress,
        maxlen: u64,
        consumer: String,
        stop: Stop,
        telemetry: std::sync::Arc<Telemetry>,
    ) -> Result<Self> {
        Ok(Self {
            conn: Conn::new(&addr, Duration::from_secs(5), "redis sink")?,
            addr,
            maxlen,
            consumer,
            script: redis::Script::new(ACK_AND_ADD),
            stop,
            telemetry,
            grace: Duration::from_secs(10),
        })
    }

    fn fields(&self, out: &Output) -> Vec<(String, Vec<u8>)> {
        let (name, entry) = match &out.id {
            FrameId::Entry(e) => (e.name.clone(), Some(e.id.clone())),
            FrameId::File { rel, .. } => (rel.display().to_string(), None),
            FrameId::Stream { seq, .. } => (format!("frame-{seq:08}"), None),
            FrameId::Request { n } => (format!("request-{n:08}"), None),
        };
        let source = match &out.id {
            FrameId::Entry(e) => e
                .path
                .as_ref()
                .map_or_else(|| e.name.clone(), |p| p.display().to_string()),
            other => other.to_string(),
        };
        let mut f: Vec<(String, Vec<u8>)> = vec![
            ("source".into(), source.into_bytes()),
            ("id".into(), name.into_bytes()),
            ("version".into(), out.version.to_string().into_bytes()),
            ("consumer".into(), self.consumer.clone().into_bytes()),
        ];
        if let Some(e) = entry {
            f.push(("entry".into(), e.into_bytes()));
        }
        for (kind, payload) in &out.files {
            match payload {
                Payload::Bytes(b) => f.push((kind.name().into(), b.clone())),
                Payload::Code(c) => {
                    let bytes = c.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                    f.push((kind.name().into(), bytes));
                    let shape: Vec<String> = c.shape.iter().map(|d| d.to_string()).collect();
                    f.push((
                        format!("{}_shape", kind.name()),
                        shape.join(",").into_bytes(),
                    ));
                }
            }
        }
        f
    }
}

/// One attempt: the conditional script for a same-server entry, a plain XADD otherwise.
fn send(
    c: &mut Connection,
    script: &redis::Script,
    stream: &str,
    maxlen: u64,
    same_server: bool,
    out: &Output,
    fields: &[(String, Vec<u8>)],
) -> RedisResult<bool> {
    if let (FrameId::Entry(e), true) = (&out.id, same_server) {
        let mut inv = script.key(&e.origin.stream);
        inv.key(stream).arg(&e.origin.group).arg(&e.id).arg(maxlen);
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        let r: Value = inv.invoke(c)?;
        if matches!(r, Value::Nil) {
            tracing::info!(
                "{}: already finished by another worker; no second result",
                out.id
            );
            return Ok(false);
        }
        return Ok(true);
    }
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if maxlen > 0 {
        cmd.arg("MAXLEN").arg("~").arg(maxlen);
    }
    cmd.arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.query::<Value>(c).map(|_| true)
}

impl Sink for RedisSink {
    fn write(&mut self, out: Output) -> Result<()> {
        let fields = self.fields(&out);
        let same = self.settles(&out.id);
        let mut backoff = Backoff::default();
        let mut stopped_at: Option<Instant> = None;
        loop {
            let (script, stream, maxlen) = (&self.script, &self.addr.stream, self.maxlen);
            let r = self
                .conn
                .call(|c| send(c, script, stream, maxlen, same, &out, &fields));
            match r {
                Ok(added) => {
                    if added {
                        self.telemetry.count(
                            "aestream_redis_results_total",
                            "Result entries added to the output stream.",
                            1.0,
                        );
                    }
                    if added && same {
                        self.telemetry.count(
                            "aestream_redis_acked_total",
                            "Entries acknowledged (XACK) after their result was durable.",
                            1.0,
                        );
                    }
                    return Ok(());
                }
                Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                    self.conn.report(&e);
                    if self.stop.requested() {
                        let t = *stopped_at.get_or_insert_with(Instant::now);
                        if t.elapsed() >= self.grace {
                            return Err(Error::Other(format!(
                                "{}: Redis {} unreachable while stopping: {e}",
                                out.id, self.addr.server
                            )));
                        }
                    }
                    std::thread::sleep(backoff.wait());
                }
                // A reply error (NOGROUP after the server lost its data, a wrong key type)
                // fails this frame only.
                Err(e) => {
                    return Err(Error::FrameFailed(format!(
                        "{}: cannot add its result to {}: {e}",
                        out.id, self.addr.stream
                    )))
                }
            }
        }
    }

    fn skip(&mut self, _seq: u64, _id: &FrameId) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    fn settles(&self, id: &FrameId) -> bool {
        matches!(id, FrameId::Entry(e) if e.origin.server == self.addr.server)
    }
}
