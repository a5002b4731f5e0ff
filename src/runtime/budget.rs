//! The process-wide memory budget of frames in flight, and each frame's deadline.
//!
//! [`Budget`] is a counting semaphore in bytes. A source's intake takes a [`Lease`] of a
//! frame's raw bytes before the frame enters the pipeline, and the decode stage grows it to
//! what the frame will cost through every stage (`stage::cost`) before any pixel is decoded.
//! The lease travels with the frame and is given back when the frame leaves the pipeline
//! (written, or failed): so frames never hold more than the budget between them, and a source
//! whose frames would go over it waits (backpressure) instead of over-committing memory.
//!
//! Two rules keep it from ever locking up:
//! - A lease is always granted when nothing else holds any: one frame (already within the
//!   per-frame budget, which is at most this one) can always run.
//! - Growing a lease at decode is granted when no other frame is past decode: the frames that
//!   hold only raw bytes cannot wait on each other. The budget is then exceeded by at most one
//!   frame's cost, which the docs state.
//!
//! [`Deadline`] bounds a frame's time: from the moment it starts decoding, or the end of the
//! drain after a stop request, whichever comes first. Both read the injected
//! [`crate::runtime::Clock`], so the rules are tested on a manual clock without sleeping.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{SharedClock, Stop};

#[derive(Debug, Default)]
struct State {
    /// Bytes held by all leases.
    used: u64,
    /// Leases that hold more than their raw bytes (frames past the decode check).
    grown: usize,
    /// Leases alive.
    leases: usize,
}

#[derive(Debug)]
struct Inner {
    cap: u64,
    state: Mutex<State>,
    freed: Condvar,
}

/// Bytes of frames in flight, shared by the intake and every stage of one run.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Inner>);

impl Budget {
    /// A budget of `cap` bytes (0 is taken as 1: nothing is then admitted alongside anything).
    pub fn new(cap: u64) -> Self {
        Self(Arc::new(Inner {
            cap: cap.max(1),
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        }))
    }

    /// No limit (tests and tools that run a frame by hand).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    pub fn cap(&self) -> u64 {
        self.0.cap
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `bytes` more fit now (always when nothing is held).
    fn fits(&self, s: &State, bytes: u64) -> bool {
        s.leases == 0 || s.used.saturating_add(bytes) <= self.0.cap
    }

    /// A lease of `bytes`, waiting until they fit. `alone`: also wait until nothing else is
    /// held, and hold the whole budget, so the frame runs with no other in flight (a frame
    /// under suspicion of having ended the process: see the folder journal).
    pub fn admit(&self, bytes: u64, alone: bool) -> Lease {
        let mut s = self.lock();
        let bytes = if alone { bytes.max(self.0.cap) } else { bytes };
        while !(if alone {
            s.leases == 0
        } else {
            self.fits(&s, bytes)
        }) {
            s = self.0.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        self.take(&mut s, bytes);
        Lease {
            budget: self.clone(),
            bytes,
            grown: false,
        }
    }

    /// A lease of `bytes`, waiting at most `within` for them to fit.
    pub fn admit_within(&self, bytes: u64, within: Duration) -> Option<Lease> {
        let until = std::time::Instant::now() + within;
        let mut s = self.lock();
        while !self.fits(&s, bytes) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            s = self
                .0
                .freed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        self.take(&mut s, bytes);
        Some(Lease {
            budget: self.clone(),
            bytes,
            grown: false,
        })
    }

    /// A lease of `bytes` if they fit now.
    pub fn try_admit(&self, bytes: u64) -> Option<Lease> {
        let mut s = self.lock();
        if !self.fits(&s, bytes) {
            return None;
        }
        self.take(&mut s, bytes);
        Some(Lease {
            budget: self.clone(),
            bytes,
            grown: false,
        })
    }

    fn take(&self, s: &mut State, bytes: u64) {
        s.used = s.used.saturating_add(bytes);
        s.leases += 1;
    }

    fn give_back(&self, bytes: u64, grown: bool) {
        let mut s = self.lock();
        s.used = s.used.saturating_sub(bytes);
        s.leases = s.leases.saturating_sub(1);
        if grown {
            s.grown = s.grown.saturating_sub(1);
        }
        drop(s);
        self.0.freed.notify_all();
    }
}

/// Bytes of the budget held by one frame; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Budget,
    bytes: u64,
    grown: bool,
}

impl Lease {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the lease to `to` bytes (a frame's full cost, known once its header is read),
    /// waiting until they fit or no other frame is past decode (see the module notes).
    /// `ready` is asked again on every wake-up: when it returns false (a stop), the wait ends
    /// and `false` is returned, the lease unchanged.
    pub fn grow(&mut self, to: u64, mut ready: impl FnMut() -> bool) -> bool {
        let b = self.budget.clone();
        let mut s = b.lock();
        let more = to.saturating_sub(self.bytes);
        loop {
            let fits = s.used.saturating_add(more) <= b.0.cap;
            let others_past_decode = s.grown - usize::from(self.grown);
            if fits || others_past_decode == 0 {
                break;
            }
            if !ready() {
                return false;
            }
            // Woken when any lease is given back; the timeout only re-asks `ready`.
            s =
                b.0.freed
                    .wait_timeout(s, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
        }
        s.used = s.used.saturating_add(more);
        if !self.grown {
            s.grown += 1;
            self.grown = true;
        }
        self.bytes = self.bytes.max(to);
        true
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes, self.grown);
    }
}

/// Why a frame's time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Its own deadline passed (`[budget] frame_timeout_s`): the frame is too costly for this
    /// configuration, and is set aside with this reason.
    Deadline(Duration),
    /// A stop was requested and the drain's time (`drain_timeout_s`) is up: the frame is not
    /// to blame, and is left for the next run where its source can give it again.
    Drain(Duration),
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expired::Deadline(d) => write!(
                f,
                "not finished within its deadline of {} s ([budget] frame_timeout_s)",
                d.as_secs_f64()
            ),
            Expired::Drain(d) => write!(
                f,
                "not finished within the drain time of {} s after the stop request ([budget] drain_timeout_s, --drain-timeout)",
                d.as_secs_f64()
            ),
        }
    }
}

/// When the drain after a stop request ends: set by the first look after the stop.
#[derive(Debug)]
pub struct Drain {
    stop: Stop,
    clock: SharedClock,
    within: Duration,
    until: Mutex<Option<Instant>>,
}

impl Drain {
    pub fn new(stop: Stop, clock: SharedClock, within: Duration) -> Arc<Self> {
        Arc::new(Self {
            stop,
            clock,
            within,
            until: Mutex::new(None),
        })
    }

    /// True once a stop was requested and the drain's time has run out. The drain starts
    /// at the first call after the request: `serving::run` looks every 50 ms, so it starts
    /// then, whatever the stages are doing.
    pub fn over(&self) -> bool {
        if !self.stop.requested() {
            return false;
        }
        let now = self.clock.now();
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let end = *until.get_or_insert(now + self.within);
        now >= end
    }

    pub fn within(&self) -> Duration {
        self.within
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }
}

/// A frame's deadline: its own time limit, and the run's drain.
///
/// The limit counts only the time the frame is in a stage's hands, not the time it waits in a
/// queue behind other frames: a watched folder of many large frames on a slow model queues
/// each for longer than any one takes, and the limit is there to stop a frame that is too
/// costly itself, not to punish backpressure. Stages [`resume`](Self::resume) the clock when
/// they take a frame and [`pause`](Self::pause) it when they hand it on.
#[derive(Debug, Clone)]
pub struct Deadline {
    limit: Duration,
    /// Time spent in stages before the current one.
    spent: Duration,
    /// When the current stage took the frame; `None` while it waits in a queue.
    since: Option<Instant>,
    drain: Arc<Drain>,
}

impl Deadline {
    /// A deadline of `limit` of working time, running from now (by the drain's clock).
    pub fn starting_now(limit: Duration, drain: &Arc<Drain>) -> Self {
        Self {
            limit,
            spent: Duration::ZERO,
            since: Some(drain.clock.now()),
            drain: drain.clone(),
        }
    }

    /// The frame is handed on to a queue: its clock stops.
    pub fn pause(&mut self) {
        if let Some(s) = self.since.take() {
            self.spent += self.drain.clock.now().saturating_duration_since(s);
        }
    }

    /// A stage took the frame: its clock runs again.
    pub fn resume(&mut self) {
        if self.since.is_none() {
            self.since = Some(self.drain.clock.now());
        }
    }

    /// Whether the frame's time is up, and why.
    pub fn expired(&self) -> Option<Expired> {
        if self.drain.over() {
            return Some(Expired::Drain(self.drain.within));
        }
        let running = self.since.map_or(Duration::ZERO, |s| {
            self.drain.clock.now().saturating_duration_since(s)
        });
        (self.spent + running >= self.limit).then_some(Expired::Deadline(self.limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ManualClock;

    #[test]
    fn leases_wait_for_room_and_one_frame_always_fits() {
        let b = Budget::new(100);
        let a = b.admit(60, false);
        assert!(b.try_admit(50).is_none(), "over the budget");
        let c = b.try_admit(40).expect("fits");
        assert_eq!(b.used(), 100);
        drop((a, c));
        assert_eq!(b.used(), 0);
        // Larger than the whole budget, but alone: admitted.
        let big = b.try_admit(500).expect("nothing else held");
        assert!(b.try_admit(1).is_none());
        drop(big);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_blocked_intake_resumes_when_a_frame_leaves() {
        let b = Budget::new(100);
        let held = b.admit(80, false);
        let b2 = b.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let l = b2.admit(50, false);
            tx.send(l.bytes()).unwrap();
        });
        // Waits on the event (the lease given back), not on time: nothing arrives before it.
        assert!(rx.try_recv().is_err());
        drop(held);
        assert_eq!(rx.recv().unwrap(), 50);
        t.join().unwrap();
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn growing_never_deadlocks_frames_that_hold_only_raw_bytes() {
        let b = Budget::new(100);
        // Four raw frames fill the budget; none is past decode.
        let mut raws: Vec<Lease> = (0..4).map(|_| b.admit(25, false)).collect();
        // The first grows although it does not fit: no other frame is past decode.
        assert!(raws[0].grow(90, || true));
        assert_eq!(b.used(), 165);
        // The second must wait (one frame is past decode); a stop ends the wait.
        let mut asked = 0;
        assert!(!raws[1].grow(90, || {
            asked += 1;
            asked < 3
        }));
        assert_eq!(raws[1].bytes(), 25);
        // Once the grown one is gone it may grow.
        raws.remove(0);
        assert!(raws[0].grow(90, || true));
        drop(raws);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_frame_alone_waits_for_an_empty_pipeline_and_holds_it() {
        let b = Budget::new(100);
        let other = b.admit(10, false);
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.admit(5, true).bytes());
        drop(other);
        assert_eq!(t.join().unwrap(), 100);
        let alone = b.admit(5, true);
        assert!(b.try_admit(1).is_none(), "nothing runs beside it");
        drop(alone);
    }

    #[test]
    fn deadlines_read_the_clock_and_the_drain_starts_at_the_stop() {
        let clock = Arc::new(ManualClock::new());
        let stop = Stop::new();
        let drain = Drain::new(stop.clone(), clock.clone(), Duration::from_secs(30));
        let d = Deadline::starting_now(Duration::from_secs(60), &drain);
        clock.advance(Duration::from_secs(59));
        assert_eq!(d.expired(), None);
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            d.expired(),
            Some(Expired::Deadline(Duration::from_secs(60)))
        );

        let d = Deadline::starting_now(Duration::from_secs(600), &drain);
        clock.advance(Duration::from_secs(100));
        assert_eq!(d.expired(), None, "no stop yet");
        stop.request();
        assert_eq!(d.expired(), None, "the drain has just started");
        clock.advance(Duration::from_millis(29_999));
        assert_eq!(d.expired(), None);
        clock.advance(Duration::from_millis(1));
        assert_eq!(d.expired(), Some(Expired::Drain(Duration::from_secs(30))));
        assert!(d.expired().unwrap().to_string().contains("drain_timeout_s"));
    }

    /// Time waiting in a queue does not count against a frame's own limit; time in stages
    /// adds up across them.
    #[test]
    fn a_deadline_counts_working_time_only() {
        let clock = Arc::new(ManualClock::new());
        let drain = Drain::new(Stop::new(), clock.clone(), Duration::from_secs(30));
        let mut d = Deadline::starting_now(Duration::from_secs(60), &drain);
        clock.advance(Duration::from_secs(40));
        d.pause();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(d.expired(), None, "an hour in a queue");
        d.resume();
        d.resume(); // a second resume does not restart the clock
        clock.advance(Duration::from_secs(19));
        assert_eq!(d.expired(), None);
        d.pause();
        d.pause();
        assert_eq!(d.expired(), None);
        d.resume();
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            d.expired(),
            Some(Expired::Deadline(Duration::from_secs(60)))
        );
    }
}
