//! The Redis Streams source: one consumer of a consumer group, so that many daemons split one
//! stream. Each entry carries a frame by reference (`path`: a file on storage all workers share,
//! under a folder the operator allowed: [`paths`]) or inline (`data`: the encoded image bytes),
//! and optionally an `id` that names its outputs.
//!
//! - The group is created if missing (MKSTREAM). At start the consumer first re-reads its own
//!   pending entries (a restart under the same consumer name), then new ones (`>`).
//! - Backpressure: it reads only as many entries as the pipeline's first queue has room for.
//! - Entries are acknowledged only once their result is durable ([`RedisSettler`]); a crash
//!   before that leaves them pending, and a live consumer takes them over with XAUTOCLAIM once
//!   they have been idle for `claim_idle_ms`. Its own entries still in the pipeline are kept
//!   fresh (XCLAIM … JUSTID) so that a slow but live worker is not robbed.
//! - An entry delivered more than `max_deliveries` times (it keeps killing workers, or its file
//!   cannot be read) goes to `STREAM:dead` with its error and is acknowledged; so does one that
//!   can never succeed (does not decode, no `path`/`data`, inline data over the cap, a `path`
//!   outside the allowed folders or to something that is not a regular file).
//! - A lost server is retried with backoff; meanwhile `/readyz` says not ready.

use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{Connection, RedisResult, Value};

pub mod conn;
pub mod paths;
pub mod settle;

pub use conn::RedisAddress;
pub use paths::AllowedRoots;
pub use settle::RedisSettler;

use super::{Completion, Intake, RawFrame, Source};
use crate::config::QueueSourceConfig;
use crate::error::{Error, Result};
use crate::frame::entry::{safe_name, Entry, NameSource, QueueOrigin};
use crate::frame::FrameId;
use crate::runtime::host::host_name;
use crate::runtime::Stop;
use crate::runtime::Telemetry;
use conn::{is_nogroup, Backoff, Conn};

/// Everything the Redis source needs: the address and the `[source]` settings.
#[derive(Debug, Clone)]
pub struct RedisSourceConfig {
    pub addr: RedisAddress,
    pub group: String,
    pub consumer: String,
    pub claim_idle: Duration,
    pub max_deliveries: u64,
    pub batch: usize,
    pub max_inline_bytes: u64,
    /// Largest file a `path` entry may refer to.
    pub max_file_bytes: u64,
    /// Folders `path` entries may name files under (none: `path` entries are refused).
    pub allow_paths: Vec<PathBuf>,
    /// How long one XREADGROUP waits for new entries (stop requests are seen in between).
    pub block: Duration,
}

impl RedisSourceConfig {
    pub fn new(addr: RedisAddress, q: &QueueSourceConfig, max_file_bytes: u64) -> Self {
        Self {
            addr,
            group: q.group.clone(),
            consumer: q.consumer.clone().unwrap_or_else(default_consumer),
            claim_idle: Duration::from_millis(q.claim_idle_ms),
            max_deliveries: q.max_deliveries.max(1),
            batch: q.batch.max(1),
            max_inline_bytes: q.max_inline_bytes,
            max_file_bytes,
            allow_paths: q.allow_paths.clone(),
            block: Duration::from_millis(q.block_ms.clamp(10, 10_000)),
        }
    }
}

/// Host name + process id: unique per running daemon, so a restarted one is a new consumer
/// and its predecessor's pending entries are taken over like any dead consumer's.
pub fn default_consumer() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// The name of a `path` entry without an `id`: its real path below the allowed folder, as
/// `found` (real, below) by a lookup or a read; its bare file name when it was not found (then
/// it is named for its messages only: it is not written).
fn path_name(p: &std::path::Path, found: Option<(PathBuf, PathBuf)>) -> (String, NameSource) {
    match found {
        Some((real, rel)) => (
            safe_name(rel.as_os_str().as_bytes()),
            NameSource::Path(real),
        ),
        None => (
            safe_name(p.file_name().map_or(&[][..], |n| n.as_bytes())),
            NameSource::Path(p.to_path_buf()),
        ),
    }
}

pub struct RedisSource {
    cfg: RedisSourceConfig,
    origin: Arc<QueueOrigin>,
    settler: Arc<RedisSettler>,
    telemetry: Arc<Telemetry>,
    files: AllowedRoots,
    seq: u64,
}

impl RedisSource {
    pub fn new(cfg: RedisSourceConfig, telemetry: Arc<Telemetry>) -> Result<Self> {
        let files = AllowedRoots::new(&cfg.allow_paths).map_err(|e| Error::Config {
            origin: "allow_paths".into(),
            message: e.to_string(),
        })?;
        if files.is_empty() {
            tracing::info!("no --allow-path folder: `path` entries are refused");
        }
        let origin = Arc::new(QueueOrigin {
            server: cfg.addr.server.clone(),
            stream: cfg.addr.stream.clone(),
            group: cfg.group.clone(),
        });
        let settler = Arc::new(RedisSettler::new(
            &cfg.addr,
            origin.clone(),
            cfg.consumer.clone(),
            telemetry.clone(),
        )?);
        Ok(Self {
            cfg,
            origin,
            settler,
            telemetry,
            files,
            seq: 0,
        })
    }

    pub fn origin(&self) -> Arc<QueueOrigin> {
        self.origin.clone()
    }

    fn create_group(&self, c: &mut Connection) -> RedisResult<()> {
        let r: RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.origin.stream)
            .arg(&self.origin.group)
            .arg("0")
            .arg("MKSTREAM")
            .query(c);
        match r {
            Ok(_) => {
                tracing::info!(
                    "{}: created group {} on {}",
                    self.origin.server,
                    self.origin.group,
                    self.origin.stream
                );
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `entries` paired with their delivery counts (one XPENDING per entry, in one round trip;
    /// 1 where the server no longer lists it).
    fn with_deliveries(
        &self,
        conn: &mut Conn,
        entries: Vec<StreamId>,
    ) -> RedisResult<Vec<(StreamId, u64)>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for e in &entries {
            p.cmd("XPENDING")
                .arg(&self.origin.stream)
                .arg(&self.origin.group)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let replies: Vec<StreamPendingCountReply> = conn.call(|c| p.query(c))?;
        let counts: HashMap<String, u64> = replies
            .into_iter()
            .flat_map(|r| r.ids)
            .map(|p| (p.id, p.times_delivered as u64))
            .collect();
        Ok(entries
            .into_iter()
            .map(|e| {
                let d = counts.get(&e.id).copied().unwrap_or(1);
                (e, d)
            })
            .collect())
    }

    /// Hands an entry to the pipeline, or dead-letters it; false when the pipeline is gone.
    fn deliver(&mut self, mut e: StreamId, deliveries: u64, intake: &Intake) -> bool {
        // Fields are moved out, not copied: inline data may be large.
        let id_given = e.map.contains_key("id");
        let mut field = |k: &str| e.map.remove(k).and_then(bytes_of);
        // Names and paths are taken byte for byte: a lossy UTF-8 reading would give two ids
        // that differ only in invalid bytes one name, and so one output.
        let path = field("path").map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)));
        let (mut name, mut named_by) = match (field("id"), &path) {
            (Some(id), _) => (safe_name(&id), NameSource::Id(id)),
            // If the read below finds the file, the name comes from that read.
            (None, Some(p)) => path_name(p, self.files.name_of(p)),
            (None, None) => (safe_name(&e.id), NameSource::EntryId(e.id.clone())),
        };
        if deliveries > self.cfg.max_deliveries {
            let why = match self.settler.take_error(&e.id) {
                Some(last) => format!(
                    "delivered {deliveries} times (max_deliveries {}); last error: {last}",
                    self.cfg.max_deliveries
                ),
                None => format!(
                    "delivered {deliveries} times without a result (max_deliveries {})",
                    self.cfg.max_deliveries
                ),
            };
            self.settler.dead_letter(&e.id, &name, deliveries, &why);
            return true;
        }
        let bytes = match (field("data"), &path) {
            (Some(d), _) if d.len() as u64 > self.cfg.max_inline_bytes => Err(format!(
                "inline data of {} bytes is over the cap of {} (source.max_inline_bytes)",
                d.len(),
                self.cfg.max_inline_bytes
            )),
            (Some(d), _) => Ok(d),
            (None, Some(p)) => match self.files.read_named(p, self.cfg.max_file_bytes) {
                Ok((b, found)) => {
                    if !id_given {
                        // Named by what this read found, not by the lookup above.
                        (name, named_by) = path_name(p, Some(found));
                    }
                    Ok(b)
                }
                // Outside the allowed folders, or not a regular file: dead-lettered at once.
                Err(why) if !why.may_pass_later() => Err(why.to_string()),
                Err(why) => {
                    let why = why.to_string();
                    // Perhaps not there yet on shared storage: leave it pending; it is taken
                    // over and tried again after claim_idle_ms, up to max_deliveries.
                    tracing::warn!(
                        "{}/{} entry {} ({name}): {why}; it will be retried",
                        self.origin.server,
                        self.origin.stream,
                        e.id
                    );
                    self.settler.note_error(&e.id, &why);
                    return true;
                }
            },
            (None, None) => Err("the entry has neither a `path` nor a `data` field".into()),
        };
        self.telemetry.count(
            "aestream_redis_read_total",
            "Entries read from the input stream and handed to the pipeline.",
            1.0,
        );
        self.settler.track(&e.id);
        let frame = RawFrame {
            seq: self.seq,
            id: FrameId::Entry(Entry {
                origin: self.origin.clone(),
                id: e.id,
                name,
                named_by,
                path,
                deliveries,
            }),
            bytes,
        };
        self.seq += 1;
        intake.send(frame)
    }

    /// Reads up to `n` entries: our own pending ones first, then new ones (`>`).
    ///
    /// `own_pending` is the pass over our own pending entries (a restart under the same
    /// consumer name): the id after which to read (`0` at first), `None` once it is done. It
    /// moves on past each entry returned, so each is read once: Redis counts every read of a
    /// pending entry as a delivery, and one put off for now (its file not there yet) must wait
    /// for XAUTOCLAIM after `claim_idle`, not be read again at once until `max_deliveries`
    /// sends it to the dead letters.
    fn read(
        &mut self,
        conn: &mut Conn,
        n: usize,
        own_pending: &mut Option<String>,
    ) -> RedisResult<Vec<(StreamId, u64)>> {
        let (stream, group, consumer) = (
            self.origin.stream.clone(),
            self.origin.group.clone(),
            self.cfg.consumer.clone(),
        );
        let block = self.cfg.block.as_millis() as u64;
        let after = own_pending.clone();
        let pending = after.is_some();
        let reply: Option<StreamReadReply> = conn.call(|c| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&group)
                .arg(&consumer)
                .arg("COUNT")
                .arg(n);
            if !pending {
                cmd.arg("BLOCK").arg(block);
            }
            cmd.arg("STREAMS")
                .arg(&stream)
                .arg(after.as_deref().unwrap_or(">"));
            cmd.query(c)
        })?;
        let entries: Vec<StreamId> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        if pending {
            *own_pending = entries.last().map(|e| e.id.clone());
            // Entries already in our pipeline are not read again.
            let entries: Vec<StreamId> = entries
                .into_iter()
                .filter(|e| !self.settler.is_in_flight(&e.id))
                .collect();
            return self.with_deliveries(conn, entries);
        }
        Ok(entries.into_iter().map(|e| (e, 1)).collect())
    }

    /// One XAUTOCLAIM page of entries idle for `claim_idle` (a dead consumer's), with their
    /// delivery counts; the next cursor (`0-0` when the sweep is complete).
    fn claim(
        &mut self,
        conn: &mut Conn,
        cursor: &str,
        n: usize,
    ) -> RedisResult<(String, Vec<(StreamId, u64)>)> {
        let (stream, group, consumer) = (
            self.origin.stream.clone(),
            self.origin.group.clone(),
            self.cfg.consumer.clone(),
        );
        let idle = self.cfg.claim_idle.as_millis() as u64;
        let r: StreamAutoClaimReply = conn.call(|c| {
            redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&group)
                .arg(&consumer)
                .arg(idle)
                .arg(cursor)
                .arg("COUNT")
                .arg(n)
                .query(c)
        })?;
        for gone in &r.deleted_ids {
            // Trimmed from the stream before anyone finished it: nothing left to process.
            tracing::warn!(
                "{}/{} entry {gone} was deleted from the stream while pending; acknowledged",
                self.origin.server,
                self.origin.stream
            );
            self.settler.ack(gone);
        }
        // Our own entries still in the pipeline are not started twice.
        let claimed: Vec<StreamId> = r
            .claimed
            .into_iter()
            .filter(|e| !self.settler.is_in_flight(&e.id))
            .collect();
        if !claimed.is_empty() {
            self.telemetry.count(
                "aestream_redis_claimed_total",
                "Entries taken over from a consumer that stopped (XAUTOCLAIM).",
                claimed.len() as f64,
            );
            tracing::info!(
                "{}/{}: took over {} entries idle for over {:?}",
                self.origin.server,
                self.origin.stream,
                claimed.len(),
                self.cfg.claim_idle
            );
        }
        Ok((r.next_stream_id, self.with_deliveries(conn, claimed)?))
    }

    /// Resets the idle time of our entries still in the pipeline (XCLAIM … JUSTID does not
    /// count a delivery), so that other consumers do not take them over while we work.
    fn keep_fresh(&self, conn: &mut Conn) -> RedisResult<()> {
        let ids = self.settler.in_flight();
        if ids.is_empty() {
            return Ok(());
        }
        conn.call(|c| {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(&self.origin.stream)
                .arg(&self.origin.group)
                .arg(&self.cfg.consumer)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID");
            cmd.query::<Value>(c).map(|_| ())
        })
    }

    /// Consumer lag and pending count of our group (XINFO GROUPS), as gauges.
    fn group_info(&self, conn: &mut Conn) -> RedisResult<()> {
        let r: redis::streams::StreamInfoGroupsReply = conn.call(|c| {
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&self.origin.stream)
                .query(c)
        })?;
        if let Some(g) = r.groups.iter().find(|g| g.name == self.origin.group) {
            self.telemetry.gauge(
                "aestream_redis_group_pending",
                "Entries of the group delivered and not yet acknowledged (all consumers).",
                g.pending as f64,
            );
            if let Some(lag) = g.lag {
                self.telemetry.gauge(
                    "aestream_redis_group_lag",
                    "Entries of the stream the group has not read yet (XINFO GROUPS lag).",
                    lag as f64,
                );
            }
        }
        Ok(())
    }
}

/// A field's bytes (Redis returns strings as bulk strings).
fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

impl Source for RedisSource {
    fn completion(&self) -> Arc<dyn Completion> {
        self.settler.clone()
    }

    fn run(mut self: Box<Self>, intake: Intake, stop: Stop) -> Result<()> {
        // Entries wait safely in the stream: never drop one to make room.
        let intake = intake.lossless();
        let mut conn = Conn::new(
            &self.cfg.addr,
            self.cfg.block + Duration::from_secs(5),
            "redis source",
        )?;
        let mut backoff = Backoff::default();
        let mut group_ready = false;
        let mut own_pending = Some("0".to_string());
        let claim_every = (self.cfg.claim_idle / 2).max(Duration::from_millis(100));
        let fresh_every = (self.cfg.claim_idle / 3).max(Duration::from_millis(100));
        let (mut last_claim, mut last_fresh, mut last_info) =
            (None::<Instant>, Instant::now(), None::<Instant>);
        let mut cursor = "0-0".to_string();
        tracing::info!(
            "reading {}/{} as consumer {} of group {}",
            self.origin.server,
            self.origin.stream,
            self.cfg.consumer,
            self.origin.group
        );
        while !stop.requested() {
            let step: RedisResult<bool> = (|| {
                if !group_ready {
                    conn.call(|c| self.create_group(c))?;
                    group_ready = true;
                }
                self.telemetry.set_ready(true);
                self.settler.flush();
                if last_fresh.elapsed() >= fresh_every {
                    last_fresh = Instant::now();
                    self.keep_fresh(&mut conn)?;
                }
                if last_info.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
                    last_info = Some(Instant::now());
                    self.group_info(&mut conn)?;
                }
                let room = intake.room().min(self.cfg.batch);
                if room == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                    return Ok(true);
                }
                if cursor != "0-0" || last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
                    if cursor == "0-0" {
                        last_claim = Some(Instant::now());
                    }
                    let (next, claimed) = self.claim(&mut conn, &cursor.clone(), room)?;
                    cursor = next;
                    if !claimed.is_empty() {
                        for (e, d) in claimed {
                            if !self.deliver(e, d, &intake) {
                                return Ok(false);
                            }
                        }
                        return Ok(true);
                    }
                }
                for (e, d) in self.read(&mut conn, room, &mut own_pending)? {
                    if !self.deliver(e, d, &intake) {
                        return Ok(false);
                    }
                }
                Ok(true)
            })();
            match step {
                Ok(true) => backoff.reset(),
                Ok(false) => return Ok(()), // the pipeline is gone
                Err(e) => {
                    if is_nogroup(&e) {
                        // The server lost the stream and group (restarted empty): make them again.
                        group_ready = false;
                    }
                    conn.report(&e);
                    if !conn.connected() {
                        self.telemetry.set_ready(false);
                    }
                    let wait = backoff.wait();
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !stop.requested() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        Ok(())
    }
}
