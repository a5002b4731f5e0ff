//! The routes: `/metrics`, `/healthz`, `/readyz`, `POST /v1/infer`, `GET /v1/status` and the
//! status page at `/`.
//!
//! `/v1/infer` checks what it can before the frame takes a place in the pipeline (the body's
//! size, that it looks like an image, its declared size against the decode limit), so a
//! hostile body costs a header parse, not a decode. Everything else is decided where it is for
//! every other frame: the pipeline decodes, and a body that does not decode comes back as 400
//! from the source's completion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use super::board::Board;
use super::listener::ConnStats;
use super::page;
use crate::config::{HttpConfig, OutputKind};
use crate::runtime::Telemetry;
use crate::source::http::{Refused, Reply, Requests};
use crate::stage::encode::Payload;

/// What the server says about the pipeline it fronts (fixed for the run).
#[derive(Debug, Clone)]
pub struct Info {
    pub pipeline: String,
    pub device: String,
    /// What a request gets without `?emit=`.
    pub default_kinds: Vec<OutputKind>,
    /// What a request may ask for.
    pub allowed_kinds: Vec<OutputKind>,
    pub max_pixels: u64,
}

#[derive(Clone)]
pub(super) struct App {
    pub tel: Arc<Telemetry>,
    pub board: Arc<Board>,
    pub requests: Option<Requests>,
    pub info: Arc<Info>,
    pub cfg: HttpConfig,
    pub conns: Arc<ConnStats>,
}

pub(super) fn router(app: App) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/v1/infer", post(infer))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
}

/// A JSON error body: `{"error": "…"}`.
fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": msg.into() }))).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.tel.render(),
    )
        .into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    if app.tel.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn status(State(app): State<App>) -> Response {
    axum::Json(status_json(&app)).into_response()
}

async fn index(State(app): State<App>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page::render(&status_json(&app)),
    )
        .into_response()
}

/// Everything `/v1/status` and the page show.
pub(super) fn status_json(app: &App) -> Value {
    let snap = app.tel.snapshot();
    let count = |k: &str| snap.frames.get(k).copied().unwrap_or(0);
    let sum_prefix = |p: &str| -> u64 {
        snap.frames
            .iter()
            .filter(|(k, _)| k.starts_with(p))
            .map(|(_, n)| n)
            .sum()
    };
    let failed: u64 = snap
        .frames
        .iter()
        .filter(|(k, _)| k.ends_with("/failed"))
        .map(|(_, n)| n)
        .sum();
    let history = app.board.history();
    let last = |n: usize| -> f64 {
        let tail: Vec<_> = history.iter().rev().take(n).collect();
        if tail.is_empty() {
            0.0
        } else {
            tail.iter().map(|s| s.fps).sum::<f64>() / tail.len() as f64
        }
    };
    let (served, p50, p90, p99) = app.board.request_latency();
    let finetune: serde_json::Map<String, Value> = snap
        .extra
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("aestream_finetune_")
                .map(|s| (s.to_string(), json!(v)))
        })
        .collect();
    json!({
        "pipeline": app.info.pipeline,
        "device": app.info.device,
        "model": { "version": snap.model_version, "generation": snap.model_generation },
        "uptime_s": snap.uptime_s,
        "ready": snap.ready,
        "frames": {
            "in": sum_prefix("decode/"),
            "out": count("sink/ok"),
            "failed": failed,
            "quarantined": snap.quarantined,
            "dropped": snap.dropped,
            "by_stage": snap.frames,
        },
        "rates": { "fps_last_s": last(1), "fps_last_min": last(60) },
        "in_flight": snap.in_flight,
        "queues": snap.queues.iter().map(|(c, d)| json!({"channel": c, "depth": d})).collect::<Vec<_>>(),
        "batch_size": snap.batches,
        "stage_seconds": snap.stages,
        "requests": {
            "pending": app.requests.as_ref().map_or(0, Requests::pending),
            "answered": served,
            "latency_ms": { "p50": p50, "p90": p90, "p99": p99 },
        },
        "connections": {
            "open": app.conns.open.load(std::sync::atomic::Ordering::Relaxed),
            "accepted": app.conns.accepted.load(std::sync::atomic::Ordering::Relaxed),
            "refused": app.conns.refused.load(std::sync::atomic::Ordering::Relaxed),
        },
        "finetune": finetune,
        "thumbnails": app.board.thumbnails(),
        "recent": app.board.recent(),
        "failures": app.board.failures(),
        "history": history,
    })
}

/// The kinds `?emit=a,b` asks for, checked against what the model makes.
fn asked_kinds(query: Option<&str>, info: &Info) -> Result<Vec<OutputKind>, String> {
    let Some(list) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("emit="))
    else {
        return Ok(info.default_kinds.clone());
    };
    let mut kinds = Vec::new();
    for k in list.split(',').filter(|k| !k.is_empty()) {
        let kind: OutputKind = k.parse().map_err(|m: String| format!("emit: {m}"))?;
        if !info.allowed_kinds.contains(&kind) {
            let names: Vec<_> = info.allowed_kinds.iter().map(|k| k.name()).collect();
            return Err(format!(
                "emit: pipeline {} cannot emit {} (it can: {})",
                info.pipeline,
                kind.name(),
                names.join(", ")
            ));
        }
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        return Err("emit: no kind named".into());
    }
    Ok(kinds)
}

/// Cheap checks before a body takes a place in the pipeline: it looks like an image and its
/// declared size is within the decode limit. The refusal: its status and why.
fn precheck(body: &[u8], info: &Info) -> Result<(), (StatusCode, String)> {
    let bad = |m: &str| Err((StatusCode::BAD_REQUEST, m.to_string()));
    if body.is_empty() {
        return bad("the body is empty: send an image (PNG, JPEG, PNM, TIFF, WebP…)");
    }
    let Ok(format) = image::guess_format(body) else {
        return bad("the body is not an image in a format we decode (PNG, JPEG, PNM, TIFF, WebP…)");
    };
    let reader = image::ImageReader::with_format(std::io::Cursor::new(body), format);
    match reader.into_dimensions() {
        Ok((w, h)) if u64::from(w) * u64::from(h) > info.max_pixels => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the image is {w}x{h}, over the limit of {} pixels",
                info.max_pixels
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err((
            StatusCode::BAD_REQUEST,
            format!("cannot read the image's header: {e}"),
        )),
    }
}

async fn infer(State(app): State<App>, req: Request) -> Response {
    let t0 = Instant::now();
    let resp = infer_inner(&app, req).await;
    app.board.request(t0.elapsed(), resp.status().as_u16());
    resp
}

async fn infer_inner(app: &App, req: Request) -> Response {
    let Some(requests) = app.requests.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server takes no frames",
        );
    };
    let kinds = match asked_kinds(req.uri().query(), &app.info) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let limit = app.cfg.max_body_bytes;
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    // A declared length over the cap is refused before a byte of the body is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_big();
    }
    // The body must keep coming: a client that trickles it is cut off like an idle one.
    let io_timeout = Duration::from_millis(app.cfg.io_timeout_ms);
    let read = tokio::time::timeout(io_timeout, axum::body::to_bytes(req.into_body(), limit));
    let body: Bytes = match read.await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} ms",
                    app.cfg.io_timeout_ms
                ),
            )
        }
        Ok(Ok(b)) => b,
        Ok(Err(e)) if over_limit(&e) => return too_big(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    if let Err((code, why)) = precheck(&body, &app.info) {
        return error(code, why);
    }
    let submitted =
        tokio::task::spawn_blocking(move || requests.submit(Vec::from(body), kinds)).await;
    let mut ticket = match submitted {
        Ok(Ok(t)) => t,
        Ok(Err(Refused::Busy)) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, Refused::Busy.to_string());
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Ok(Err(Refused::Closed)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, Refused::Closed.to_string())
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let deadline = Duration::from_millis(app.cfg.deadline_ms);
    let n = ticket.n;
    match tokio::time::timeout(deadline, &mut ticket.reply).await {
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no answer within {} ms", app.cfg.deadline_ms),
        ),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, "the pipeline stopped"),
        Ok(Ok(Reply::Rejected(m))) => error(StatusCode::BAD_REQUEST, m),
        Ok(Ok(Reply::Failed(m))) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        Ok(Ok(Reply::Done { version, files })) => answer(n, &version.to_string(), files),
    }
}

/// Whether reading a body failed on the size cap (rather than a client that went away).
fn over_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// One kind: its bytes as they are (`image/png`, or the code as JSON). Several: one JSON
/// document, images base64-encoded.
fn answer(n: u64, version: &str, files: Vec<(OutputKind, Payload)>) -> Response {
    let mut resp = if files.len() == 1 {
        let (_, payload) = files.into_iter().next().expect("one file");
        match payload {
            Payload::Bytes(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
            Payload::Code(c) => {
                axum::Json(json!({ "shape": c.shape, "code": c.data })).into_response()
            }
        }
    } else {
        let outputs: serde_json::Map<String, Value> = files
            .into_iter()
            .map(|(k, p)| {
                let v = match p {
                    Payload::Bytes(png) => json!({
                        "content_type": "image/png",
                        "base64": base64::engine::general_purpose::STANDARD.encode(png),
                    }),
                    Payload::Code(c) => json!({ "shape": c.shape, "code": c.data }),
                };
                (k.name().to_string(), v)
            })
            .collect();
        axum::Json(json!({ "request": n, "model": version, "outputs": outputs })).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(version) {
        h.insert("x-aestream-model", v);
    }
    h.insert("x-aestream-request", HeaderValue::from(n));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Info {
        Info {
            pipeline: "faces".into(),
            device: "cpu".into(),
            default_kinds: vec![OutputKind::Reconstruction],
            allowed_kinds: vec![OutputKind::Reconstruction, OutputKind::Latent],
            max_pixels: 100,
        }
    }

    #[test]
    fn emit_is_checked_against_the_model() {
        let i = info();
        assert_eq!(
            asked_kinds(None, &i).unwrap(),
            vec![OutputKind::Reconstruction]
        );
        assert_eq!(
            asked_kinds(Some("x=1&emit=latent,reconstruction,latent"), &i).unwrap(),
            vec![OutputKind::Latent, OutputKind::Reconstruction]
        );
        assert!(asked_kinds(Some("emit=segmentation"), &i)
            .unwrap_err()
            .contains("cannot emit segmentation"));
        assert!(asked_kinds(Some("emit=bogus"), &i).is_err());
        assert!(asked_kinds(Some("emit="), &i).is_err());
    }

    #[test]
    fn bodies_are_checked_before_the_pipeline() {
        let i = info();
        let status = |b: &[u8]| precheck(b, &i).err().map(|r| r.0);
        assert_eq!(status(b""), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(b"hello, world"), Some(StatusCode::BAD_REQUEST));
        let small = crate::frame::encode_png(&crate::frame::Planes::grey(5, 5, vec![0.0; 25]), "t")
            .unwrap();
        assert_eq!(status(&small), None);
        let big =
            crate::frame::encode_png(&crate::frame::Planes::grey(20, 20, vec![0.0; 400]), "t")
                .unwrap();
        assert_eq!(status(&big), Some(StatusCode::PAYLOAD_TOO_LARGE));
    }
}
