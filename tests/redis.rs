//! Many daemons, one Redis stream, end to end: real `redis-server` processes (installed by
//! `.ci/run`) and real `aestream run` workers. Work is shared; a worker killed with `kill -9`
//! has its pending entries taken over; poison and over-delivered entries land in the
//! dead-letter stream; a server restarted mid-stream loses nothing; SIGTERM finishes and
//! acknowledges what a worker holds.
//!
//! Each test starts its own server on a free loopback port (persistence off, except where a
//! restart must keep the stream), so tests run in parallel without sharing state.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, http_get, png, read_bytes, signal, wait_exit, wait_until, Daemon};
use redis::streams::{StreamId, StreamPendingReply, StreamRangeReply};
use redis::{Commands, Value};

struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    persist: bool,
}

impl RedisServer {
    fn start(persist: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Self::spawn(port, dir.path(), persist);
        let s = Self {
            child,
            port,
            dir,
            persist,
        };
        s.wait_up();
        s
    }

    fn spawn(port: u16, dir: &Path, persist: bool) -> Child {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if persist {
            // Every write on disk before its reply: a kill -9 loses nothing acknowledged.
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it (Debian: apt-get install redis-server), as .ci/run does")
        })
    }

    fn wait_up(&self) {
        assert!(
            wait_until(Duration::from_secs(10), || self.try_con().is_some()),
            "redis-server did not come up on port {}",
            self.port
        );
    }

    fn try_con(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut con = c.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        Some(con)
    }

    fn con(&self) -> redis::Connection {
        self.try_con().expect("redis connection")
    }

    fn url(&self, stream: &str) -> String {
        format!("redis://127.0.0.1:{}/{stream}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(self.port, self.dir.path(), self.persist);
        self.wait_up();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A copy of the `denoise-fast` pipeline with a `[source]` section (the shipped weights are
/// found by name).
fn pipeline(dir: &Path, source: &str) -> PathBuf {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/denoise-fast.toml"),
    )
    .unwrap();
    let p = dir.join("denoise-queue.toml");
    std::fs::write(&p, format!("{base}\n[source]\n{source}\n")).unwrap();
    p
}

/// `n` PNG frames of assorted sizes in `dir`; their paths and sizes.
fn frames(dir: &Path, n: usize, from: usize) -> Vec<(PathBuf, (u32, u32))> {
    std::fs::create_dir_all(dir).unwrap();
    (from..from + n)
        .map(|i| {
            let (w, h) = (24 + (i % 5) * 8, 16 + (i % 3) * 8);
            let p = dir.join(format!("f{i:04}.png"));
            std::fs::write(&p, png(w, h, i)).unwrap();
            (p, (w as u32, h as u32))
        })
        .collect()
}

/// `DIR/in`, made now: where the frames go, and the folder `path` entries may name files in.
fn in_dir(dir: &Path) -> String {
    let d = dir.join("in");
    std::fs::create_dir_all(&d).unwrap();
    d.to_str().unwrap().to_string()
}

fn add_paths(con: &mut redis::Connection, stream: &str, paths: &[(PathBuf, (u32, u32))]) {
    for (p, _) in paths {
        let _: String = con
            .xadd(stream, "*", &[("path", p.to_str().unwrap())])
            .unwrap();
    }
}

/// An entry carrying its frame inline, named `id`.
fn add_inline(con: &mut redis::Connection, id: &str, data: &[u8]) {
    let _: String = con
        .xadd("frames", "*", &[("data", data), ("id", id.as_bytes())])
        .unwrap();
}

fn results(con: &mut redis::Connection, stream: &str) -> Vec<StreamId> {
    let r: StreamRangeReply = con.xrange_all(stream).unwrap();
    r.ids
}

fn field(e: &StreamId, k: &str) -> Vec<u8> {
    match e.map.get(k) {
        Some(Value::BulkString(b)) => b.clone(),
        other => panic!("entry {} has no field {k}: {other:?}", e.id),
    }
}

fn text(e: &StreamId, k: &str) -> String {
    String::from_utf8(field(e, k)).unwrap()
}

/// Entries of the group delivered and not acknowledged, per consumer.
fn pending(con: &mut redis::Connection, stream: &str) -> HashMap<String, usize> {
    // (No group yet: nothing is pending.)
    match con.xpending(stream, "aestream") {
        Ok(StreamPendingReply::Data(d)) => d
            .consumers
            .into_iter()
            .map(|c| (c.name, c.pending))
            .collect(),
        _ => HashMap::new(),
    }
}

fn total_pending(con: &mut redis::Connection, stream: &str) -> usize {
    pending(con, stream).values().sum()
}

fn worker(
    pipeline: &str,
    srv: &RedisServer,
    consumer: &str,
    output: &str,
    log: PathBuf,
    extra: &[&str],
) -> Daemon {
    let input = srv.url("frames");
    let mut args = vec![
        pipeline,
        "--input",
        input.as_str(),
        "--output",
        output,
        "--consumer",
        consumer,
    ];
    args.extend_from_slice(extra);
    Daemon::start(&args, log, &[])
}

/// Every result decodes to an image of its input's size, and there is exactly one per frame.
/// Waits until `results` holds at least `n` entries and nothing is pending on `frames`; returns
/// the results.
fn all_results(con: &mut redis::Connection, n: usize, within: Duration) -> Vec<StreamId> {
    assert!(
        wait_until(within, || results(con, "results").len() >= n
            && total_pending(con, "frames") == 0),
        "not finished: {} results, pending {:?}",
        results(con, "results").len(),
        pending(con, "frames")
    );
    results(con, "results")
}

fn check_results(got: &[StreamId], sent: &[(PathBuf, (u32, u32))]) {
    let sizes: HashMap<String, (u32, u32)> = sent
        .iter()
        .map(|(p, s)| (p.display().to_string(), *s))
        .collect();
    let mut seen = BTreeSet::new();
    for e in got {
        let src = text(e, "source");
        assert!(seen.insert(src.clone()), "two results for {src}");
        let img = read_bytes(&field(e, "denoised"));
        let want = sizes[&src];
        assert_eq!(
            (img.width as u32, img.height as u32),
            want,
            "result of {src}"
        );
    }
    assert_eq!(seen.len(), sent.len(), "one result per frame");
}

#[test]
fn workers_share_the_stream_and_every_frame_gets_exactly_one_result() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let inp = in_dir(t.path());
    let inp = inp.as_str();
    let out = srv.url("results");
    let mut ws: Vec<Daemon> = (0..3)
        .map(|i| {
            worker(
                "denoise-fast",
                &srv,
                &format!("w{i}"),
                &out,
                t.path().join(format!("w{i}.log")),
                &["--allow-path", inp],
            )
        })
        .collect();
    let mut con = srv.con();
    // All three have joined the group before any frame arrives.
    assert!(wait_until(Duration::from_secs(60), || {
        redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg("frames")
            .arg("aestream")
            .query::<Vec<Value>>(&mut con)
            .map(|v| v.len() == 3)
            .unwrap_or(false)
    }));
    let sent = frames(&t.path().join("in"), 90, 0);
    add_paths(&mut con, "frames", &sent);
    let got = all_results(&mut con, sent.len(), Duration::from_secs(180));
    check_results(&got, &sent);
    let by: BTreeSet<String> = got.iter().map(|e| text(e, "consumer")).collect();
    assert!(by.len() >= 2, "work was not shared: only {by:?}");
    // SIGTERM: each stops reading and exits 0.
    for w in &mut ws {
        signal(&w.child, "TERM");
    }
    for w in &mut ws {
        let st = wait_exit(&mut w.child, Duration::from_secs(30)).expect("exits");
        assert!(st.success(), "{st:?}\n{}", w.log());
    }
}

#[test]
fn a_killed_workers_pending_entries_are_taken_over() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let inp = in_dir(t.path());
    let inp = inp.as_str();
    let p = pipeline(t.path(), "claim_idle_ms = 1500");
    let p = p.to_str().unwrap();
    let out = srv.url("results");
    let mut con = srv.con();
    // Bigger frames through the full model: the victim is busy with some when it dies.
    let sent: Vec<_> = frames(&t.path().join("in"), 24, 0)
        .into_iter()
        .map(|(path, _)| {
            std::fs::write(&path, png(256, 224, path.as_os_str().len())).unwrap();
            (path, (256, 224))
        })
        .collect();
    let mut victim = worker(
        p,
        &srv,
        "victim",
        &out,
        t.path().join("v.log"),
        &["--allow-path", inp],
    );
    add_paths(&mut con, "frames", &sent);
    assert!(wait_until(Duration::from_secs(60), || pending(
        &mut con, "frames"
    )
    .get("victim")
    .is_some_and(|&n| n > 0)));
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let held = pending(&mut con, "frames")
        .get("victim")
        .copied()
        .unwrap_or(0);
    assert!(held > 0, "the victim held nothing when it died");
    let rescuer = worker(
        p,
        &srv,
        "rescuer",
        &out,
        t.path().join("r.log"),
        &["--allow-path", inp],
    );
    let got = all_results(&mut con, sent.len(), Duration::from_secs(180));
    check_results(&got, &sent);
    assert!(
        got.iter().any(|e| text(e, "consumer") == "rescuer"),
        "the rescuer did nothing"
    );
    assert!(rescuer.log().contains("took over"), "{}", rescuer.log());
}

#[test]
fn poison_and_over_delivered_entries_go_to_the_dead_letter_stream() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let mut con = srv.con();
    let _: Value = redis::cmd("XGROUP")
        .arg(&["CREATE", "frames", "aestream", "0", "MKSTREAM"])
        .query(&mut con)
        .unwrap();
    // An entry a ghost consumer has already had 7 times (it kept dying on it).
    let ghosted: String = con
        .xadd("frames", "*", &[("path", "/nonexistent/ghost.png")])
        .unwrap();
    let _: Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP", "aestream", "ghost", "COUNT", "1", "STREAMS", "frames", ">",
        ])
        .query(&mut con)
        .unwrap();
    let _: Value = redis::cmd("XCLAIM")
        .arg(&[
            "frames",
            "aestream",
            "ghost",
            "0",
            &ghosted,
            "RETRYCOUNT",
            "7",
        ])
        .query(&mut con)
        .unwrap();
    let poison: String = con
        .xadd(
            "frames",
            "*",
            &[("data", "not an image at all"), ("id", "poison")],
        )
        .unwrap();
    let empty: String = con.xadd("frames", "*", &[("note", "no frame")]).unwrap();
    add_inline(&mut con, "good", &png(40, 30, 1));
    let p = pipeline(t.path(), "claim_idle_ms = 200\nmax_deliveries = 5");
    let _w = worker(
        p.to_str().unwrap(),
        &srv,
        "w",
        &srv.url("results"),
        t.path().join("w.log"),
        &[],
    );
    assert!(wait_until(Duration::from_secs(60), || {
        results(&mut con, "frames:dead").len() == 3 && results(&mut con, "results").len() == 1
    }));
    let dead: HashMap<String, StreamId> = results(&mut con, "frames:dead")
        .into_iter()
        .map(|e| (text(&e, "entry"), e))
        .collect();
    assert!(text(&dead[&poison], "error").contains("decode"));
    assert_eq!(text(&dead[&poison], "name"), "poison");
    assert!(text(&dead[&empty], "error").contains("neither"));
    let over = text(&dead[&ghosted], "error");
    assert!(over.contains("delivered 8 times"), "{over}");
    assert_eq!(text(&dead[&ghosted], "deliveries"), "8");
    let r = &results(&mut con, "results")[0];
    assert_eq!(text(r, "id"), "good");
    assert_eq!(read_bytes(&field(r, "denoised")).width, 40);
    assert!(wait_until(Duration::from_secs(10), || total_pending(
        &mut con, "frames"
    ) == 0));
}

#[test]
fn a_server_restarted_mid_stream_loses_nothing() {
    let mut srv = RedisServer::start(true);
    let t = tempfile::tempdir().unwrap();
    let inp = in_dir(t.path());
    let inp = inp.as_str();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let w = worker(
        "denoise-fast",
        &srv,
        "w",
        &srv.url("results"),
        t.path().join("w.log"),
        &["--metrics", &metrics, "--allow-path", inp],
    );
    let mut con = srv.con();
    let first = frames(&t.path().join("in"), 30, 0);
    add_paths(&mut con, "frames", &first);
    assert!(wait_until(Duration::from_secs(60), || results(
        &mut con, "results"
    )
    .len()
        >= 3));
    srv.kill();
    // Not ready while the server is away.
    assert!(wait_until(Duration::from_secs(20), || http_get(
        port, "/readyz"
    )
    .is_some_and(|(s, _)| s == 503)));
    std::thread::sleep(Duration::from_millis(500));
    srv.restart();
    let mut con = srv.con();
    let second = frames(&t.path().join("in"), 30, 30);
    add_paths(&mut con, "frames", &second);
    let all: Vec<_> = first.into_iter().chain(second).collect();
    check_results(
        &all_results(&mut con, all.len(), Duration::from_secs(120)),
        &all,
    );
    assert!(wait_until(Duration::from_secs(10), || http_get(
        port, "/readyz"
    )
    .is_some_and(|(s, _)| s == 200)));
    assert!(w.log().contains("connected again"), "{}", w.log());
}

#[test]
fn folder_outputs_are_named_by_frame_and_sigterm_acks_what_it_holds() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let inp = in_dir(t.path());
    let inp = inp.as_str();
    let out = t.path().join("out");
    let mut con = srv.con();
    let sent = frames(&t.path().join("in"), 40, 0);
    for (i, (p, _)) in sent.iter().enumerate() {
        let _: String = con
            .xadd(
                "frames",
                "*",
                &[("path", p.to_str().unwrap()), ("id", &format!("cam-{i}"))],
            )
            .unwrap();
    }
    // The same frame again (a producer retried): its output is replaced, not doubled.
    let _: String = con
        .xadd(
            "frames",
            "*",
            &[("path", sent[3].0.to_str().unwrap()), ("id", "cam-3")],
        )
        .unwrap();
    let mut w = worker(
        "denoise-fast",
        &srv,
        "w",
        out.to_str().unwrap(),
        t.path().join("w.log"),
        &["--allow-path", inp],
    );
    assert!(wait_until(Duration::from_secs(60), || {
        std::fs::read_dir(&out).map_or(0, |d| d.count()) >= 5
    }));
    signal(&w.child, "TERM");
    let st = wait_exit(&mut w.child, Duration::from_secs(30)).expect("exits");
    assert!(st.success(), "{st:?}\n{}", w.log());
    // It finished and acknowledged everything it had read; the rest is still unread.
    assert_eq!(total_pending(&mut con, "frames"), 0, "{}", w.log());
    let done_first = std::fs::read_dir(&out).unwrap().count();
    let mut w2 = worker(
        "denoise-fast",
        &srv,
        "w2",
        out.to_str().unwrap(),
        t.path().join("w2.log"),
        &["--allow-path", inp],
    );
    assert!(wait_until(Duration::from_secs(60), || {
        total_pending(&mut con, "frames") == 0
            && redis::cmd("XINFO")
                .arg(&["GROUPS", "frames"])
                .query::<redis::streams::StreamInfoGroupsReply>(&mut con)
                .is_ok_and(|g| g.groups.iter().all(|g| g.lag == Some(0)))
    }));
    signal(&w2.child, "TERM");
    wait_exit(&mut w2.child, Duration::from_secs(30)).expect("exits");
    let names: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = (0..40).map(|i| format!("cam-{i}.png")).collect();
    assert_eq!(names, want, "first worker wrote {done_first}");
    let img = common::read(&out.join("cam-7.png"));
    assert_eq!((img.width as u32, img.height as u32), sent[7].1);
}

/// A segmenter on a stream: a nuclei frame sent inline comes back with its objects and its
/// probability, each a 16-bit PNG under the kind's name.
#[test]
fn nuclei_results_carry_objects_and_probability() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let out = srv.url("results");
    let mut w = worker(
        "segment-nuclei",
        &srv,
        "w",
        &out,
        t.path().join("w.log"),
        &["--emit", "instances,probability"],
    );
    let mut con = srv.con();
    let frame = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/nuclei/images/right-top.png"),
    )
    .unwrap();
    add_inline(&mut con, "nuclei", &frame);
    let got = all_results(&mut con, 1, Duration::from_secs(120));
    assert_eq!(got.len(), 1);
    for kind in ["instances", "probability"] {
        let img = image::load_from_memory(&field(&got[0], kind)).unwrap();
        assert_eq!(
            (img.color(), img.width(), img.height()),
            (image::ColorType::L16, 256, 256),
            "{kind}"
        );
    }
    let labels = image::load_from_memory(&field(&got[0], "instances")).unwrap();
    let most = labels.to_luma16().pixels().map(|p| p.0[0]).max().unwrap();
    assert!(most > 20, "{most} objects");
    signal(&w.child, "TERM");
    let st = wait_exit(&mut w.child, Duration::from_secs(30)).expect("exits");
    assert!(st.success(), "{st:?}\n{}", w.log());
}

#[test]
fn a_redis_address_without_a_stream_is_refused_clearly() {
    let t = tempfile::tempdir().unwrap();
    let o = common::bin()
        .args(["run", "denoise-fast", "-i", "redis://127.0.0.1:1", "-o"])
        .arg(t.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("redis://HOST:PORT/STREAM"), "{err}");
}

/// An entry's dead-letter reason without its `server/stream entry ID (name): ` prefix.
fn reason(e: &StreamId) -> String {
    let error = text(e, "error");
    match error.split_once("): ") {
        Some((_, why)) => why.to_string(),
        None => error,
    }
}

/// `path` entries name files under the allowed folders only. One outside (there or not),
/// reached by `..`, or through a link or a linked folder inside the root is dead-lettered at
/// its first delivery, unread, with one reason that does not tell whether it exists; a FIFO
/// inside is refused at once too. Files inside, also through a link that stays inside, are
/// processed.
#[test]
fn path_entries_outside_the_allowed_folders_are_dead_lettered_unread() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let inp = PathBuf::from(in_dir(t.path()));
    let secret = t.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    // A readable image: a worker that trusts `path` sends it back denoised.
    std::fs::write(secret.join("s.png"), png(32, 24, 7)).unwrap();
    let good = frames(&inp, 2, 0);
    let link = |to: &Path, at: &str| std::os::unix::fs::symlink(to, inp.join(at)).unwrap();
    link(&secret.join("s.png"), "leak.png");
    link(&secret, "door");
    link(&good[0].0, "alias.png");
    let fifo = Command::new("mkfifo")
        .arg(inp.join("pipe.png"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let outside = [
        secret.join("s.png"),
        inp.join("../secret/s.png"),
        inp.join("leak.png"),
        inp.join("door/s.png"),
        secret.join("missing.png"),
        PathBuf::from("/etc/passwd"),
    ];
    let mut con = srv.con();
    let mut add = |p: &Path, id: &str| -> String {
        con.xadd("frames", "*", &[("path", p.to_str().unwrap()), ("id", id)])
            .unwrap()
    };
    let refused: Vec<String> = outside
        .iter()
        .enumerate()
        .map(|(i, p)| add(p, &format!("out-{i}")))
        .collect();
    let pipe = add(&inp.join("pipe.png"), "pipe");
    for (i, (p, _)) in good.iter().enumerate() {
        add(p, &format!("good-{i}"));
    }
    add(&inp.join("alias.png"), "alias");
    let _w = worker(
        "denoise-fast",
        &srv,
        "w",
        &srv.url("results"),
        t.path().join("w.log"),
        &["--allow-path", inp.to_str().unwrap()],
    );
    let mut con = srv.con();
    assert!(
        wait_until(Duration::from_secs(60), || {
            results(&mut con, "frames:dead").len() == outside.len() + 1
                && results(&mut con, "results").len() == good.len() + 1
        }),
        "dead: {:?}\nresults: {:?}\n{}",
        results(&mut con, "frames:dead"),
        results(&mut con, "results")
            .iter()
            .map(|r| text(r, "id"))
            .collect::<Vec<_>>(),
        _w.log()
    );
    let dead: HashMap<String, StreamId> = results(&mut con, "frames:dead")
        .into_iter()
        .map(|e| (text(&e, "entry"), e))
        .collect();
    let why = reason(&dead[&refused[0]]);
    assert!(why.contains("not under an allowed folder"), "{why}");
    for id in &refused {
        assert_eq!(reason(&dead[id]), why, "one reason for every outside path");
        assert_eq!(text(&dead[id], "deliveries"), "1");
    }
    let fifo = reason(&dead[&pipe]);
    assert!(fifo.contains("FIFO"), "{fifo}");
    let ids: BTreeSet<String> = results(&mut con, "results")
        .iter()
        .map(|r| text(r, "id"))
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["good-0".into(), "good-1".into(), "alias".into()])
    );
    assert!(wait_until(Duration::from_secs(10), || total_pending(
        &mut con, "frames"
    ) == 0));
}

/// With no allowed folder, `path` entries are refused; inline `data` still works.
#[test]
fn without_an_allowed_folder_path_entries_are_refused() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let sent = frames(&t.path().join("in"), 1, 0);
    let mut con = srv.con();
    add_paths(&mut con, "frames", &sent);
    add_inline(&mut con, "inline", &png(40, 30, 1));
    let _w = worker(
        "denoise-fast",
        &srv,
        "w",
        &srv.url("results"),
        t.path().join("w.log"),
        &[],
    );
    assert!(wait_until(Duration::from_secs(60), || {
        results(&mut con, "frames:dead").len() == 1 && results(&mut con, "results").len() == 1
    }));
    let why = reason(&results(&mut con, "frames:dead")[0]);
    assert!(why.contains("no folder is allowed"), "{why}");
    assert_eq!(text(&results(&mut con, "results")[0], "id"), "inline");
}

/// An allowed folder that does not exist, or a relative one in the pipeline file, is a
/// configuration error (exit 2) named as such.
#[test]
fn a_missing_or_relative_allowed_folder_is_refused_at_start() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    let o = common::bin()
        .args([
            "run",
            "denoise-fast",
            "-i",
            "redis://127.0.0.1:1/frames",
            "-o",
        ])
        .arg(t.path().join("out"))
        .arg("--allow-path")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("allow_paths") && err.contains("nope"), "{err}");
    let p = pipeline(t.path(), "allow_paths = [\"in\"]");
    let o = common::bin()
        .args([
            "run",
            p.to_str().unwrap(),
            "-i",
            "redis://127.0.0.1:1/frames",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("source.allow_paths"), "{err}");
}

/// Output names are taken byte for byte and from the file's path below the allowed folder:
/// two cameras' `0001.png` get two outputs, and so do two ids that differ only in bytes that
/// are not UTF-8. (They used to share one output, the second frame replacing the first.)
#[test]
fn frames_with_alike_names_get_their_own_outputs() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let inp = PathBuf::from(in_dir(t.path()));
    let out = t.path().join("out");
    let mut con = srv.con();
    let mut sent = Vec::new();
    for (i, cam) in ["cam1", "cam2"].iter().enumerate() {
        let p = inp.join(cam).join("0001.png");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, png(24 + 8 * i, 16, i)).unwrap();
        sent.push(p);
    }
    add_paths(
        &mut con,
        "frames",
        &sent.iter().map(|p| (p.clone(), (0, 0))).collect::<Vec<_>>(),
    );
    for (i, id) in [&b"a\xff"[..], &b"a\xfe"[..]].iter().enumerate() {
        let _: String = con
            .xadd(
                "frames",
                "*",
                &[("data", &png(40 + 8 * i, 16, 9)[..]), ("id", id)],
            )
            .unwrap();
    }
    let w = worker(
        "denoise-fast",
        &srv,
        "w",
        out.to_str().unwrap(),
        t.path().join("w.log"),
        &["--allow-path", inp.to_str().unwrap()],
    );
    let mut con = srv.con();
    assert!(
        wait_until(Duration::from_secs(60), || total_pending(
            &mut con, "frames"
        ) == 0
            && std::fs::read_dir(&out).map_or(0, |d| d.count()) == 4),
        "{}",
        w.log()
    );
    assert!(results(&mut con, "frames:dead").is_empty(), "{}", w.log());
    let width = |name: &str| common::read(&out.join(name)).width;
    assert_eq!(width("cam1%2F0001.png.png"), 24);
    assert_eq!(width("cam2%2F0001.png.png"), 32);
    assert_eq!(width("a%FF.png"), 40);
    assert_eq!(width("a%FE.png"), 48);
}

/// A worker restarted under its own consumer name reads its pending entries once: one whose
/// file is not there yet waits for the takeover after `claim_idle_ms`, and is done once the
/// file comes, instead of being read again at once until `max_deliveries` dead-letters it.
#[test]
fn a_pending_entry_put_off_at_restart_waits_for_its_file() {
    let srv = RedisServer::start(false);
    let t = tempfile::tempdir().unwrap();
    let inp = PathBuf::from(in_dir(t.path()));
    let p = pipeline(t.path(), "claim_idle_ms = 1000\nmax_deliveries = 50");
    let late = inp.join("late.png");
    let mut con = srv.con();
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "frames", "aestream", "$", "MKSTREAM"])
        .query(&mut con)
        .unwrap();
    let _: String = con
        .xadd("frames", "*", &[("path", late.to_str().unwrap())])
        .unwrap();
    // Read by consumer `w`, which then died: the entry is `w`'s own pending entry.
    let _: Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP", "aestream", "w", "COUNT", "1", "STREAMS", "frames", ">",
        ])
        .query(&mut con)
        .unwrap();
    assert_eq!(pending(&mut con, "frames").get("w"), Some(&1));
    let out = t.path().join("out");
    let w = worker(
        p.to_str().unwrap(),
        &srv,
        "w",
        out.to_str().unwrap(),
        t.path().join("w.log"),
        &["--allow-path", inp.to_str().unwrap()],
    );
    assert!(
        wait_until(Duration::from_secs(60), || w
            .log()
            .contains("it will be retried")),
        "{}",
        w.log()
    );
    let tmp = inp.join(".late.png.part");
    std::fs::write(&tmp, png(40, 24, 3)).unwrap();
    std::fs::rename(&tmp, &late).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || out
            .join("late.png.png")
            .exists()),
        "dead: {:?}\n{}",
        results(&mut con, "frames:dead"),
        w.log()
    );
    assert!(results(&mut con, "frames:dead").is_empty());
    assert_eq!(common::read(&out.join("late.png.png")).width, 40);
}
