//! `aestream run`: wires a pipeline to its source and sink and runs it as a service: the
//! journal of finished inputs, quarantine, arrival rules, signals (SIGTERM drains, SIGHUP
//! reloads), the systemd notify protocol and the metrics endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use aestream::config::OutputKind;
use aestream::config::PipelineConfig;
use aestream::frame::framing::Framing;
use aestream::runtime::{Stop, Telemetry};
use aestream::serving::{self, service, Generation, ModelSlot, RunOptions};
use aestream::sink::{folder::FolderSink, redis::RedisSink, stdout, stdout::StreamSink, Sink};
use aestream::source::folder::Quarantine;
use aestream::source::redis::{RedisSource, RedisSourceConfig};
use aestream::source::stdin::StreamSource;
use aestream::source::Source;
use aestream::train::online::{self, Checkpoints};

mod folder;

use super::endpoint::Endpoint;
use super::{parse_kinds, video, with_ensemble, FramingArg};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Built-in pipeline name or path to a .toml file.
    #[arg(default_value = "denoise")]
    pipeline: String,
    /// Folder to read (and watch), - for stdin, or a Redis stream redis://HOST:PORT/STREAM
    /// (consumer group settings in the pipeline's `[source]`; default `[source] url`).
    #[arg(long, short)]
    input: Option<Endpoint>,
    /// Folder to write into, - for stdout, or a Redis stream redis://HOST:PORT/STREAM
    /// (default `[sink] url`).
    #[arg(long, short)]
    output: Option<Endpoint>,
    /// Redis input: the consumer group (overrides `[source] group`).
    #[arg(long)]
    group: Option<String>,
    /// Redis input: a folder whose files `path` entries may name (repeatable; replaces
    /// `[source] allow_paths`). Without one, `path` entries are refused.
    #[arg(long, value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// Redis input: this daemon's consumer name (overrides `[source] consumer`; default host
    /// name + process id).
    #[arg(long)]
    consumer: Option<String>,
    /// Process what is there (or stdin until EOF) and exit instead of watching.
    #[arg(long)]
    once: bool,
    /// Include sub-folders of the input folder.
    #[arg(long)]
    recursive: bool,
    /// Framing of stdin and stdout streams.
    #[arg(long, value_enum, default_value = "concat")]
    framing: FramingArg,
    /// With --framing y4m: average each denoised frame with up to N (1 to 8) earlier ones
    /// where the scene is still: less flicker, no ghosts where it moves (docs/video.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=8))]
    temporal: Option<u64>,
    /// Weights to use instead of the pipeline's.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Outputs to write, overriding the pipeline's `output.kinds`: denoised,
    /// reconstruction, latent, segmentation, overlay, instances, probability (as the model
    /// allows).
    #[arg(long, value_delimiter = ',')]
    emit: Option<Vec<String>>,
    /// Average 1, 2, 4 or 8 flipped (8: and transposed) views (overrides `infer.ensemble`).
    #[arg(long, value_parser = super::ensemble_arg)]
    ensemble: Option<usize>,
    /// Inpainting: a folder of mask images, one per input at the same relative path (or
    /// the same name as .png); black pixels are missing and get filled in.
    #[arg(long)]
    masks: Option<PathBuf>,
    /// Where undecodable input files are moved, each with a NAME.error.txt (default:
    /// OUT/.failed, or INPUT/.failed when writing to stdout). Never deleted.
    #[arg(long)]
    quarantine: Option<PathBuf>,
    /// Folder of the journal of finished inputs, so that a restart processes each input
    /// exactly once (default: $STATE_DIRECTORY under systemd, else OUT/.aestream, or
    /// INPUT/.aestream when writing to stdout).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Move each finished input here (keeping its relative path) once its outputs are written.
    #[arg(long)]
    done: Option<PathBuf>,
    /// A file written in place is taken once unchanged for this long (milliseconds, at most
    /// 3600000: an hour).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    quiet_ms: u64,
    /// Poll the input folder every SECS seconds (0.01 to 86400) instead of using file events
    /// (network filesystems); files are taken once their size is stable.
    #[arg(long, value_name = "SECS", value_parser = seconds(0.01))]
    poll: Option<f64>,
    /// Rescan the whole input folder every SECS seconds (0.01 to 86400), a safety net against
    /// lost events (0: only when events were lost).
    #[arg(long, value_name = "SECS", default_value_t = 300.0, value_parser = seconds_or_off)]
    rescan: f64,
    /// Serve HTTP (default address 127.0.0.1:9464, loopback; give another to expose it):
    /// POST /v1/infer, GET /v1/status, the status page at /, /metrics, /healthz, /readyz.
    /// Without --input it serves requests only. (`--metrics` is the old name.)
    #[arg(long, alias = "metrics", value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    http: Option<SocketAddr>,
    /// Keep before/after thumbnails of recent frames for the status page (`off` for privacy;
    /// default `[http] thumbnails`, on).
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    http_thumbnails: Option<bool>,
    /// Fine-tune the model on the stream while serving it (also `[finetune] enabled = true`).
    #[arg(long)]
    finetune: bool,
    /// Write every swapped-in fine-tuned version here, and start from the newest one.
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// cpu, cuda (= cuda:0), cuda:N, or auto: the first GPU when built with CUDA and one is
    /// there, else the CPU.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Threads for the model's kernels (candle's and rayon's pool), at most 256; 0 keeps the
    /// default (RAYON_NUM_THREADS, else one per core). Pipeline stages have their own threads.
    #[arg(long, default_value_t = 0, value_parser = aestream::runtime::threads::threads_arg)]
    threads: usize,
    /// After SIGTERM, how long frames already at the model may take to finish (seconds, 0 to
    /// 3600; overrides `[budget] drain_timeout_s`, default 30). What is not done by then is
    /// left for the next run and the process ends.
    #[arg(long, value_name = "SECS", value_parser = drain_secs)]
    drain_timeout: Option<f64>,
}

/// `--drain-timeout`: 0 to an hour.
fn drain_secs(s: &str) -> Result<f64, String> {
    let (lo, hi) = aestream::config::DRAIN_TIMEOUT_S;
    match s.trim().parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("must be {lo} to {hi} seconds")),
    }
}

/// After the drain's time, how long the process waits for a step that cannot be cut (one
/// decode, one forward pass, one write) before it exits anyway.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

impl RunArgs {
    /// The input, once [`resolve_endpoints`] has filled it in.
    fn input(&self) -> &Endpoint {
        self.input.as_ref().unwrap_or(&Endpoint::Stdio)
    }
    fn output(&self) -> &Endpoint {
        self.output.as_ref().unwrap_or(&Endpoint::Stdio)
    }
    /// Where state (journal) and quarantine go by default: beside the outputs when they are a
    /// folder, else beside the input folder.
    fn base_folder(&self) -> Option<&std::path::Path> {
        self.output().folder().or_else(|| self.input().folder())
    }
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off".into()),
    }
}

/// Fills in `--input` / `--output` from the pipeline's `[source] url` / `[sink] url`. With
/// `--http` and no input anywhere, the run serves requests only and needs neither.
fn resolve_endpoints(a: &mut RunArgs) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load(&a.pipeline)?;
    if a.http.is_some() && a.input.is_none() && cfg.source.url.is_none() {
        if let Some(out) = &a.output {
            return Err(aestream::Error::Config {
                origin: "--output".into(),
                message: format!("{out:?}: without --input there is nothing to write there (requests are answered over HTTP)"),
            }
            .into());
        }
        return Ok(());
    }
    for (arg, url, section) in [
        (&mut a.input, cfg.source.url, "source"),
        (&mut a.output, cfg.sink.url, "sink"),
    ] {
        if arg.is_some() {
            continue;
        }
        let origin = format!("{}: [{section}] url", cfg.origin);
        let Some(url) = url else {
            return Err(aestream::Error::Config {
                origin: if section == "source" { "--input" } else { "--output" }.into(),
                message: format!(
                    "needed: a folder, -, or redis://HOST:PORT/STREAM (or a url in the pipeline's [{section}])"
                ),
            }
            .into());
        };
        *arg = Some(
            url.parse()
                .map_err(|message| aestream::Error::Config { origin, message })?,
        );
    }
    Ok(())
}

/// Longest period `--poll` and `--rescan` take: a day.
const MAX_PERIOD_SECS: f64 = 86_400.0;

/// A parser of a period in seconds from `lo` to [`MAX_PERIOD_SECS`] (a usage error otherwise).
fn seconds(lo: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s| {
        let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
        if (lo..=MAX_PERIOD_SECS).contains(&v) {
            Ok(v)
        } else {
            Err(format!("must be {lo} to {MAX_PERIOD_SECS} seconds"))
        }
    }
}

/// `--rescan`: 0 (off) or a period.
fn seconds_or_off(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => seconds(0.01)(s).map_err(|e| format!("{e}, or 0 (off)")),
    }
}

fn secs(what: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        aestream::Error::Config {
            origin: what.into(),
            message: format!("{v} is not a number of seconds"),
        }
        .into()
    })
}

/// Loads the pipeline file and its weights as generation `number` (at start, and on SIGHUP).
fn load_generation(
    a: &RunArgs,
    device: &candle_core::Device,
    number: u64,
) -> anyhow::Result<Generation> {
    let mut cfg = with_ensemble(PipelineConfig::load(&a.pipeline)?, a.ensemble)?;
    if let Some(m) = &a.masks {
        let why = if !matches!(cfg.model.arch, aestream::model::Arch::UnetInpaint(_)) {
            Some(format!(
                "only inpainting pipelines take masks ({} is a {})",
                cfg.name,
                cfg.model.arch.name()
            ))
        } else if a.input().folder().is_none() {
            Some("masks are matched to input files by name: needs a folder --input".into())
        } else {
            None
        };
        if let Some(message) = why {
            return Err(aestream::Error::Config {
                origin: "--masks".into(),
                message,
            }
            .into());
        }
        cfg.mask_dir = Some(m.clone());
    }
    if a.finetune {
        cfg.finetune.enabled = true;
    }
    if let Some(d) = a.drain_timeout {
        cfg.budget.drain_timeout_s = d;
    }
    // One read for the model, its version and the fine-tuner's start: an operator may be
    // replacing the file right now, and each read could see a different one.
    let weights = cfg.read_weights(a.weights.as_deref())?;
    let model: Arc<dyn aestream::model::Model> = Arc::from(cfg.model_from(&weights, device)?);
    let version = cfg.version_of(&weights);
    let mut g = Generation::new(cfg, model, version, number);
    if g.cfg.finetune.enabled {
        // The fine-tuner starts from these.
        let mut t = candle_core::safetensors::load_buffer(&weights.bytes, device)?;
        aestream::model::weights::upgrade(&g.cfg.model.arch, &mut t)?;
        g = g.with_tensors(Arc::new(t));
    }
    Ok(g)
}

/// Stdout carries every kind asked for on one stream: a mix its framing cannot cut apart
/// (latent JSON lines among back-to-back images) is a usage error, found before any work.
fn check_stream_kinds(
    output: &Endpoint,
    framing: Framing,
    kinds: &[OutputKind],
) -> anyhow::Result<()> {
    if *output != Endpoint::Stdio {
        return Ok(());
    }
    stdout::check_kinds(framing, kinds).map_err(|message| {
        aestream::Error::Config {
            origin: "--framing".into(),
            message,
        }
        .into()
    })
}

/// The state folder: `--state`, else systemd's StateDirectory, else beside the outputs.
fn state_dir(a: &RunArgs) -> PathBuf {
    if let Some(s) = &a.state {
        return s.clone();
    }
    if let Some(s) = std::env::var_os("STATE_DIRECTORY") {
        // systemd lists several directories separated by ':' when the unit names several.
        if let Some(first) = s.to_string_lossy().split(':').next() {
            if !first.is_empty() {
                return PathBuf::from(first);
            }
        }
    }
    let base = a.base_folder().unwrap_or(std::path::Path::new("."));
    base.join(".aestream")
}

/// Whether two folders are one (both exist and resolve to the same path).
fn same_folder(a: &Path, b: &Path) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).ok();
    real(a).is_some_and(|x| real(b) == Some(x))
}

pub fn run(mut a: RunArgs) -> anyhow::Result<()> {
    // Before any parallel work starts rayon's global pool.
    let threads = aestream::runtime::threads::set_threads(a.threads).context("--threads")?;
    tracing::info!("model threads: {threads}");
    resolve_endpoints(&mut a)?;
    let device = aestream::model::select_device(&a.device)?;
    tracing::info!(
        "device: {} (--device {})",
        aestream::model::describe_device(&device),
        a.device
    );
    let mut first = load_generation(&a, &device, 1)?;
    let stop = Stop::new();
    let telemetry = Arc::new(Telemetry::new());
    // Fine-tuning: serve the newest checkpoint if there is one, and resume its optimizer.
    let mut restored = None;
    let checkpoints = match (&a.checkpoints, first.cfg.finetune.enabled) {
        (Some(dir), true) => {
            let c = Checkpoints::new(dir.clone(), &first.cfg.name, first.cfg.finetune.keep)?;
            let (cfg, file) = (first.cfg.clone(), first.version.clone());
            let serve = |mut r: online::Restored| {
                r.descends_from(&file)?;
                r.upgrade(&cfg.model.arch)?;
                let resume = r.resume();
                Ok((online::restored_generation(&cfg, r, &device, 1)?, resume))
            };
            if let Some((g, resume)) = c.newest_with(&device, serve) {
                first = g;
                tracing::info!(
                    "fine-tune: serving checkpoint {} ({} steps on record)",
                    first.version,
                    resume.steps()
                );
                restored = Some(resume);
            }
            Some(c)
        }
        (Some(_), false) => {
            return Err(aestream::Error::Config {
                origin: "--checkpoints".into(),
                message: "only with --finetune".into(),
            }
            .into())
        }
        _ => None,
    };
    let kinds = parse_kinds(a.emit.clone(), &first.cfg)?;
    // Only files can be set aside; a bad stdin frame is reported and skipped.
    // (A bad queue entry goes to the queue's dead-letter stream instead.)
    let quarantine = a.input().folder().map(|_| {
        Quarantine::new(a.quarantine.clone().unwrap_or_else(|| {
            let base = a.base_folder().unwrap_or(std::path::Path::new("."));
            base.join(".failed")
        }))
    });
    let framing: Framing = a.framing.into();
    // `--http` without an input anywhere: the run serves requests only.
    let serve_only = a.http.is_some() && a.input.is_none();
    let (mut video_source, mut video_sink) = (None, None);
    if a.framing == FramingArg::Y4m && !serve_only {
        video::check(a.input(), a.output(), &first, &kinds)?;
        (video_source, video_sink) = video::pair(&first, a.temporal);
    } else if serve_only {
        video::check_temporal(a.temporal)?;
    } else {
        video::check_temporal(a.temporal)?;
        check_stream_kinds(a.output(), framing, &kinds)?;
    }
    if let (Endpoint::Folder(input), Endpoint::Folder(output)) = (a.input(), a.output()) {
        if same_folder(input, output) {
            return Err(aestream::Error::Config {
                origin: "--output".into(),
                message: format!(
                    "{} is the input folder; outputs would be taken as inputs",
                    output.display()
                ),
            }
            .into());
        }
    }
    // The output folder exists before the source starts, so it can be excluded.
    let consumer = a
        .consumer
        .clone()
        .or_else(|| first.cfg.source.consumer.clone())
        .unwrap_or_else(aestream::source::redis::default_consumer);
    let sink: Option<Box<dyn Sink>> = (!serve_only)
        .then(|| -> anyhow::Result<Box<dyn Sink>> {
            Ok(match a.output() {
                Endpoint::Stdio => video_sink.take().unwrap_or_else(|| {
                    Box::new(StreamSink::new(
                        std::io::BufWriter::new(std::io::stdout()),
                        framing,
                    ))
                }),
                Endpoint::Redis(addr) => Box::new(RedisSink::new(
                    addr.clone(),
                    first.cfg.sink.maxlen,
                    consumer.clone(),
                    stop.clone(),
                    telemetry.clone(),
                )?),
                Endpoint::Folder(dir) => Box::new(FolderSink::new(dir)?.per_kind(kinds.len() > 1)),
            })
        })
        .transpose()?;
    let source: Option<Box<dyn Source>> = (!serve_only)
        .then(|| -> anyhow::Result<Box<dyn Source>> {
            Ok(match a.input() {
                Endpoint::Redis(addr) => {
                    let mut q = first.cfg.source.clone();
                    q.consumer = Some(consumer.clone());
                    if let Some(g) = &a.group {
                        q.group = g.clone();
                    }
                    if !a.allow_path.is_empty() {
                        q.allow_paths = a.allow_path.clone();
                    }
                    let max_file = first.cfg.decode.max_alloc_mib.saturating_mul(1 << 20);
                    let cfg = RedisSourceConfig::new(addr.clone(), &q, max_file);
                    Box::new(RedisSource::new(cfg, telemetry.clone())?)
                }
                Endpoint::Stdio => video_source.take().unwrap_or_else(|| {
                    Box::new(StreamSource::new(
                        std::io::stdin(),
                        framing,
                        first.cfg.decode.max_alloc_mib.saturating_mul(1 << 20) as usize,
                    ))
                }),
                Endpoint::Folder(input) => folder::source(&a, &first, input, quarantine)?,
            })
        })
        .transpose()?;
    let web = a
        .http
        .map(|addr| {
            let t = telemetry.clone();
            super::web::start(addr, a.http_thumbnails, &first, &device, &kinds, t)
        })
        .transpose()?;
    let (source, sink) = super::web::attach(web.as_ref(), source, sink)?;
    tracing::info!(
        "pipeline {} ({}, model {}) on {:?}: {} -> {}",
        first.cfg.name,
        first.cfg.origin,
        first.version,
        device,
        a.input(),
        a.output()
    );
    let finetune_on = first.cfg.finetune.enabled;
    let slot = serving::slot(first);
    let (offer, control) = if finetune_on {
        let trainer =
            online::Finetuner::start(slot.clone(), telemetry.clone(), checkpoints, restored)?;
        let (o, c, handle) = online::spawn(trainer, stop.clone())?;
        (
            Some(Arc::new(o) as Arc<dyn serving::Tap>),
            Some((c, handle)),
        )
    } else {
        (None, None)
    };
    let (control, trainer) = match control {
        Some((c, h)) => (Some(c), Some(h)),
        None => (None, None),
    };
    let completion = source.completion();
    install_signals(
        a.clone(),
        device,
        slot.clone(),
        telemetry.clone(),
        stop.clone(),
        (control, completion.clone()),
    );
    service::spawn_watchdog(telemetry.clone(), stop.clone());
    service::ready(&format!("running {}", slot.load().version));
    let opts = RunOptions {
        telemetry: telemetry.clone(),
        tap: offer,
        watch: web
            .as_ref()
            .map(|w| w.board.clone() as Arc<dyn serving::Watch>),
        requests: web.as_ref().map(|w| w.requests.clone()),
        ..RunOptions::default()
    };
    let s = serving::run(slot, source, sink, kinds, opts, stop.clone())?;
    if let Some(h) = trainer {
        // Its last round (validate, maybe swap and checkpoint) finishes before we exit.
        stop.request();
        let t0 = std::time::Instant::now();
        while !h.is_finished() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(w) = web {
        w.server.stop();
    }
    // Acknowledgements owed while a queue server was away: a last try before exiting.
    completion.flush_within(Duration::from_secs(10));
    tracing::info!(
        "done: {} frames in, {} written, {} failed ({} quarantined), {} dropped, {} left for the next run, {} batches, {:.2} s ({:.2} frames/s)",
        s.frames_in,
        s.frames_out,
        s.failed,
        s.quarantined,
        s.dropped,
        s.deferred,
        s.batches,
        s.seconds,
        s.frames_out as f64 / s.seconds.max(1e-9)
    );
    Ok(())
}

/// SIGTERM / SIGINT: stop taking input and drain (a second one exits at once).
/// SIGHUP: reload the pipeline file and weights; frames in flight finish on the old ones.
/// SIGUSR1: with fine-tuning, return to the previous version.
/// The drain is bounded: stages cut frames at `[budget] drain_timeout_s`, and should a step
/// not end, the process exits [`DRAIN_GRACE`] later, its unfinished frames marked as not to
/// blame in the journal, so a restart redoes them.
fn install_signals(
    a: RunArgs,
    device: candle_core::Device,
    slot: ModelSlot,
    telemetry: Arc<Telemetry>,
    stop: Stop,
    (control, completion): (
        Option<online::Control>,
        Arc<dyn aestream::source::Completion>,
    ),
) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            tracing::warn!("no signal handling: cannot start the runtime");
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut hup), Ok(mut usr1)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
                signal(SignalKind::user_defined1()),
            ) else {
                tracing::warn!("no signal handling: cannot install handlers");
                return;
            };
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {
                        reload(&a, &device, &slot, &telemetry);
                        continue;
                    }
                    _ = usr1.recv() => {
                        match &control {
                            Some(c) => c.rollback(),
                            None => tracing::warn!("SIGUSR1: rollback needs --finetune"),
                        }
                        continue;
                    }
                }
                if !stopping {
                    stopping = true;
                    // The stop first: nothing else may delay it.
                    stop.request();
                    let within = slot.load().cfg.budget.drain_timeout();
                    tracing::info!(
                        "stopping: finishing the frames in flight (at most {} s)",
                        within.as_secs_f64()
                    );
                    service::stopping();
                    let completion = completion.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(within + DRAIN_GRACE);
                        tracing::error!(
                            "the drain did not end within {} s: exiting; unfinished frames are redone on restart",
                            (within + DRAIN_GRACE).as_secs_f64()
                        );
                        completion.abandon_in_flight();
                        std::process::exit(1);
                    });
                } else {
                    tracing::warn!("second signal: exiting now");
                    completion.abandon_in_flight();
                    std::process::exit(130);
                }
            }
        });
    });
}

fn reload(a: &RunArgs, device: &candle_core::Device, slot: &ModelSlot, telemetry: &Telemetry) {
    service::reloading();
    let old = slot.load_full();
    tracing::info!("SIGHUP: reloading {}", a.pipeline);
    match load_generation(a, device, old.number + 1) {
        Ok(g) => {
            if g.cfg.channels.capacity != old.cfg.channels.capacity
                || g.cfg.infer.workers != old.cfg.infer.workers
            {
                tracing::warn!(
                    "reload: channel capacity and worker counts take effect on restart only"
                );
            }
            // Numbered when it lands: the fine-tuner may have swapped a version in meanwhile.
            let (old, g) = aestream::serving::generation::publish(slot, g);
            let msg = format!(
                "reloaded: model {} (generation {}), was {}",
                g.version, g.number, old.version
            );
            telemetry.set_model(&g.version.to_string(), g.number);
            telemetry.reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!("{msg}");
            service::ready(&msg);
        }
        Err(e) => {
            // A broken file must not take a running service down: keep serving the old one.
            tracing::error!(
                "reload failed, still serving {}: {}",
                old.version,
                super::error_text(&e)
            );
            service::ready(&format!("reload failed, serving {}: {e}", old.version));
        }
    }
}
