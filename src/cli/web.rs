//! `run --http`: starts the HTTP server beside the pipeline and puts its request source and
//! reply sink beside the run's own (or in their place, when there is no `--input`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aestream::config::OutputKind;
use aestream::runtime::Telemetry;
use aestream::serving::http::{self, Board, HttpServer, Info, Parts};
use aestream::serving::Generation;
use aestream::sink::http::WithReplies;
use aestream::sink::Sink;
use aestream::source::http::{Requests, WithRequests};
use aestream::source::Source;

/// The running server and what the pipeline needs of it.
pub struct Web {
    pub requests: Requests,
    pub board: Arc<Board>,
    pub server: HttpServer,
}

/// Binds `addr` and starts serving: status and metrics at once, requests once the pipeline
/// runs.
pub fn start(
    addr: SocketAddr,
    thumbnails: Option<bool>,
    gen: &Generation,
    device: &candle_core::Device,
    kinds: &[OutputKind],
    telemetry: Arc<Telemetry>,
) -> anyhow::Result<Web> {
    let cfg = gen.cfg.http.clone();
    let requests = Requests::new(
        cfg.max_pending,
        Duration::from_millis(cfg.admission_wait_ms),
    );
    let board = Arc::new(Board::new(thumbnails.unwrap_or(cfg.thumbnails)));
    let info = Info {
        pipeline: gen.cfg.name.clone(),
        device: aestream::model::describe_device(device),
        default_kinds: kinds.to_vec(),
        allowed_kinds: OutputKind::for_task(gen.cfg.model.arch.task()).to_vec(),
        max_pixels: gen.cfg.decode.max_pixels,
    };
    let server = http::start(
        addr,
        Parts {
            telemetry,
            board: board.clone(),
            requests: Some(requests.clone()),
            info,
            cfg,
        },
    )?;
    Ok(Web {
        requests,
        board,
        server,
    })
}

/// The run's source and sink with the server's beside them.
pub fn attach(
    web: Option<&Web>,
    source: Option<Box<dyn Source>>,
    sink: Option<Box<dyn Sink>>,
) -> anyhow::Result<(Box<dyn Source>, Box<dyn Sink>)> {
    Ok(match (web, source, sink) {
        (Some(w), Some(main), Some(sink)) => (
            Box::new(WithRequests {
                main,
                requests: w.requests.clone(),
            }),
            Box::new(WithReplies::new(Some(sink), w.requests.clone())),
        ),
        (Some(w), None, _) => (
            w.requests.source(),
            Box::new(WithReplies::new(None, w.requests.clone())),
        ),
        (None, Some(source), Some(sink)) => (source, sink),
        _ => anyhow::bail!("--input and --output are needed (or --http to serve requests)"),
    })
}
