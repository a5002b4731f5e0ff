//! The HTTP request source: `POST /v1/infer` bodies become frames of the same pipeline as every
//! other source, batched with them, and each answer goes back to the client that waits for it.
//!
//! [`Requests`] is the gateway the HTTP handlers use. A request is admitted only while fewer
//! than `max_pending` are in the pipeline and only if the pipeline's first queue has room
//! within `admission_wait`; otherwise the caller is told at once ([`Refused`]) and answers 503.
//! A server that queued every request would hold unbounded memory and answer minutes late; one
//! that refuses quickly lets the client back off or go elsewhere.
//!
//! The source owns its frames' completion, like every source: [`RequestCompletion`] turns
//! "rejected" (the body does not decode) and "failed" into the waiting client's answer; the
//! reply sink (`sink::http`) turns written outputs into it. [`WithRequests`] runs this source
//! beside another (`run --input DIR --http ADDR`) and routes each frame's completion to the
//! source it came from.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Admission, Completion, Intake, RawFrame, SetAside, Source};
use crate::config::OutputKind;
use crate::error::{Error, Result};
use crate::frame::FrameId;
use crate::model::version::ModelVersion;
use crate::runtime::Stop;
use crate::stage::encode::Payload;

/// The answer to one request.
#[derive(Debug)]
pub enum Reply {
    /// The outputs asked for, made by `version`.
    Done {
        version: ModelVersion,
        files: Vec<(OutputKind, Payload)>,
    },
    /// The body is not an image we can decode (the client's fault: 400).
    Rejected(String),
    /// Something else failed on the frame (the server's fault: 500).
    Failed(String),
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the pipeline is busy: try again shortly")]
    Busy,
    #[error("the pipeline is shutting down")]
    Closed,
}

struct Pending {
    reply: oneshot::Sender<Reply>,
    kinds: Vec<OutputKind>,
}

struct Inner {
    /// The pipeline's intake while the source runs; `None` before and after.
    intake: Mutex<Option<Intake>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    max_pending: usize,
    admission_wait: Duration,
}

/// The gateway between the HTTP handlers and the pipeline (cheap to clone).
#[derive(Clone)]
pub struct Requests {
    inner: Arc<Inner>,
}

/// An admitted request: wait on `reply`. Dropping it (the client went away, the deadline
/// passed) forgets the request; the pipeline finishes the frame and the answer is dropped.
pub struct Ticket {
    pub n: u64,
    pub reply: oneshot::Receiver<Reply>,
    requests: Requests,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.requests.forget(self.n);
    }
}

impl Requests {
    pub fn new(max_pending: usize, admission_wait: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                intake: Mutex::new(None),
                pending: Mutex::default(),
                next: AtomicU64::new(0),
                max_pending: max_pending.max(1),
                admission_wait,
            }),
        }
    }

    /// The source to run in the pipeline: it opens the gateway while it runs.
    pub fn source(&self) -> Box<dyn Source> {
        Box::new(RequestSource {
            requests: self.clone(),
        })
    }

    /// Requests in the pipeline now.
    pub fn pending(&self) -> usize {
        lock(&self.inner.pending).len()
    }

    /// Whether the pipeline takes requests (the source runs).
    pub fn open(&self) -> bool {
        lock(&self.inner.intake).is_some()
    }

    /// Offers `body` to the pipeline, asking for `kinds`. Blocks for at most the admission
    /// wait: call it where blocking is allowed (a blocking task, not an async worker).
    pub fn submit(&self, body: Vec<u8>, kinds: Vec<OutputKind>) -> Result<Ticket, Refused> {
        let (tx, rx) = oneshot::channel();
        let n = {
            let mut pending = lock(&self.inner.pending);
            if pending.len() >= self.inner.max_pending {
                return Err(Refused::Busy);
            }
            let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
            pending.insert(n, Pending { reply: tx, kinds });
            n
        };
        // The ticket exists from here on, so every way out below forgets the request.
        let ticket = Ticket {
            n,
            reply: rx,
            requests: self.clone(),
        };
        let Some(intake) = lock(&self.inner.intake).clone() else {
            return Err(Refused::Closed);
        };
        let frame = RawFrame {
            seq: n,
            id: FrameId::Request { n },
            bytes: Ok(body),
        };
        match intake.send_within(frame, self.inner.admission_wait) {
            Admission::Taken => Ok(ticket),
            Admission::Full => Err(Refused::Busy),
            Admission::Closed => Err(Refused::Closed),
        }
    }

    /// The kinds request `n` asked for (the encode stage asks); `None` once it is forgotten.
    pub fn kinds(&self, n: u64) -> Option<Vec<OutputKind>> {
        lock(&self.inner.pending).get(&n).map(|p| p.kinds.clone())
    }

    /// Answers request `n` (the first answer wins; later ones, and answers to forgotten
    /// requests, are dropped).
    pub fn reply(&self, n: u64, reply: Reply) {
        if let Some(p) = lock(&self.inner.pending).remove(&n) {
            let _ = p.reply.send(reply);
        }
    }

    fn forget(&self, n: u64) {
        lock(&self.inner.pending).remove(&n);
    }
}

/// A poisoned lock only means another thread panicked while holding it; the map itself is
/// still consistent (every update is one insert or remove), so go on with it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs while the pipeline runs: opens the gateway, and closes it on stop so the pipeline's
/// queue can close and drain.
struct RequestSource {
    requests: Requests,
}

impl Source for RequestSource {
    fn run(self: Box<Self>, intake: Intake, stop: Stop) -> Result<()> {
        *lock(&self.requests.inner.intake) = Some(intake);
        // Nothing to read here: the handlers push. Wake now and then to see the stop.
        while !stop.requested() {
            std::thread::sleep(Duration::from_millis(50));
        }
        lock(&self.requests.inner.intake).take();
        Ok(())
    }

    fn completion(&self) -> Arc<dyn Completion> {
        Arc::new(RequestCompletion {
            requests: self.requests.clone(),
        })
    }
}

/// What becomes of a request's frame: the client hears it.
pub struct RequestCompletion {
    requests: Requests,
}

impl Completion for RequestCompletion {
    fn done(&self, _: &FrameId, _: &ModelVersion, _: bool) -> Result<()> {
        // The reply sink answered with the outputs already.
        Ok(())
    }

    fn rejected(&self, id: &FrameId, error: &str) -> SetAside {
        if let FrameId::Request { n } = id {
            self.requests.reply(*n, Reply::Rejected(error.to_string()));
        }
        SetAside::Reported
    }

    fn failed(&self, id: &FrameId, error: &str) {
        if let FrameId::Request { n } = id {
            self.requests.reply(*n, Reply::Failed(error.to_string()));
        }
    }
}

/// Another source with the request source beside it, on its own thread; each frame's
/// completion goes to the source it came from. The pair ends when the other source ends
/// (`--once`, end of stdin) or on stop.
pub struct WithRequests {
    pub main: Box<dyn Source>,
    pub requests: Requests,
}

impl Source for WithRequests {
    fn run(self: Box<Self>, intake: Intake, stop: Stop) -> Result<()> {
        let side_stop = stop.child();
        let side = self.requests.source();
        let (i2, s2) = (intake.clone(), side_stop.clone());
        let handle = std::thread::Builder::new()
            .name("source-http".into())
            .spawn(move || side.run(i2, s2))
            .map_err(|e| Error::Other(format!("cannot start the request source: {e}")))?;
        let main = self.main.run(intake, stop);
        side_stop.request();
        let side = handle
            .join()
            .unwrap_or_else(|_| Err(Error::Other("the request source panicked".into())));
        main.and(side)
    }

    fn completion(&self) -> Arc<dyn Completion> {
        Arc::new(Routed {
            main: self.main.completion(),
            requests: RequestCompletion {
                requests: self.requests.clone(),
            },
        })
    }
}

/// Sends each frame's completion to the source it came from.
struct Routed {
    main: Arc<dyn Completion>,
    requests: RequestCompletion,
}

impl Routed {
    fn of(&self, id: &FrameId) -> &dyn Completion {
        match id {
            FrameId::Request { .. } => &self.requests,
            _ => self.main.as_ref(),
        }
    }
}

impl Completion for Routed {
    fn done(&self, id: &FrameId, version: &ModelVersion, by_sink: bool) -> Result<()> {
        self.of(id).done(id, version, by_sink)
    }
    fn rejected(&self, id: &FrameId, error: &str) -> SetAside {
        self.of(id).rejected(id, error)
    }
    fn failed(&self, id: &FrameId, error: &str) {
        self.of(id).failed(id, error)
    }
    fn begun(&self, id: &FrameId) {
        self.of(id).begun(id)
    }
    fn ended(&self, id: &FrameId) {
        self.of(id).ended(id)
    }
    fn abandon_in_flight(&self) {
        self.main.abandon_in_flight()
    }
    fn can_defer(&self, id: &FrameId) -> bool {
        self.of(id).can_defer(id)
    }
    fn flush_within(&self, within: Duration) -> bool {
        self.main.flush_within(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overload;
    use crate::runtime::Telemetry;
    use crossbeam_channel::{bounded, unbounded};

    fn gateway(
        max_pending: usize,
        cap: usize,
    ) -> (
        Requests,
        crossbeam_channel::Receiver<crate::source::Admitted>,
    ) {
        let r = Requests::new(max_pending, Duration::from_millis(20));
        let (tx, rx) = bounded(cap);
        let (gtx, _grx) = unbounded();
        let intake = Intake::new(
            tx,
            rx.clone(),
            Overload::Block,
            gtx,
            Arc::new(Telemetry::new()),
        );
        *lock(&r.inner.intake) = Some(intake);
        (r, rx)
    }

    /// Admission is bounded twice: by requests in flight and by room in the queue; a refused
    /// or abandoned request leaves nothing behind.
    #[test]
    fn admission_is_bounded_and_forgets_refused_requests() {
        let (r, rx) = gateway(2, 1);
        let a = r.submit(b"a".to_vec(), vec![OutputKind::Denoised]).unwrap();
        // The queue (capacity 1) is full: the next waits 20 ms, then is refused.
        assert_eq!(r.submit(b"b".to_vec(), vec![]).err(), Some(Refused::Busy));
        assert_eq!(r.pending(), 1);
        let f = rx.recv().unwrap().frame;
        assert_eq!(f.id, FrameId::Request { n: a.n });
        let b = r.submit(b"c".to_vec(), vec![]).unwrap();
        // Two in flight: the third is refused without waiting.
        assert_eq!(r.submit(b"d".to_vec(), vec![]).err(), Some(Refused::Busy));
        assert_eq!(r.kinds(a.n), Some(vec![OutputKind::Denoised]));
        drop(b);
        assert_eq!(r.pending(), 1);
        // A closed gateway refuses with Closed.
        lock(&r.inner.intake).take();
        assert_eq!(r.submit(b"e".to_vec(), vec![]).err(), Some(Refused::Closed));
    }

    #[test]
    fn the_first_answer_reaches_the_client() {
        let (r, _rx) = gateway(4, 4);
        let mut t = r.submit(b"x".to_vec(), vec![]).unwrap();
        let c = RequestCompletion {
            requests: r.clone(),
        };
        c.rejected(&FrameId::Request { n: t.n }, "not an image");
        c.failed(&FrameId::Request { n: t.n }, "later");
        match t.reply.try_recv() {
            Ok(Reply::Rejected(m)) => assert_eq!(m, "not an image"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.pending(), 0);
    }
}
