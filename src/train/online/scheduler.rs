//! The trainer's thread: takes offered frames, paces the steps (`max_steps_per_minute`), runs
//! a validation round every `round_steps`, answers rollbacks, and yields to serving.
//!
//! While the pipeline is busy the steps run in a small pool (`threads`) and take at most
//! `busy_share` of the time; once it has been idle a while, in a pool as large as
//! `idle_threads`. The CPU time the steps cost is measured per thread (`clock_gettime` with
//! the thread clock) and exported, so the share can be checked rather than assumed.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::Finetuner;
use crate::frame::Planes;
use crate::runtime::Stop;

impl Finetuner {
    /// Runs until `stop`: takes offered frames, trains at the configured pace, validates
    /// every round, and answers rollbacks.
    pub fn run(mut self, inbox: Receiver<Planes>, control: Receiver<()>, stop: Stop) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let idle_threads = match self.fc.idle_threads {
            0 => cores,
            n => n,
        };
        let build = |n: usize, name: &'static str| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(move |i| format!("{name}-{i}"))
                .build()
        };
        let (pool, idle_pool) = match (
            build(self.fc.threads, "finetune"),
            build(idle_threads, "finetune-idle"),
        ) {
            (Ok(p), Ok(q)) => (p, q),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("fine-tune: cannot start its threads: {e}");
                return;
            }
        };
        let mut last_busy = Instant::now();
        let min_gap = Duration::from_secs_f64(60.0 / self.fc.max_steps_per_minute as f64);
        let mut last_step = Instant::now() - min_gap;
        let mut in_round = 0;
        while !stop.requested() {
            let wait = if self.ready() {
                min_gap.saturating_sub(last_step.elapsed())
            } else {
                Duration::from_millis(200)
            };
            match inbox.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(p) => {
                    self.add(p);
                    for p in inbox.try_iter() {
                        self.add(p);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
                Err(_) => {}
            }
            if control.try_recv().is_ok() {
                if let Err(e) = self.rollback() {
                    tracing::error!("rollback failed: {e}");
                }
            }
            if !self.ready() || last_step.elapsed() < min_gap {
                continue;
            }
            last_step = Instant::now();
            // Serving comes first: the full pool only once the pipeline has been idle a while.
            if !self.tel.idle() {
                last_busy = Instant::now();
            }
            let busy = last_busy.elapsed() <= Duration::from_secs(1);
            let pool = if busy { &pool } else { &idle_pool };
            let t_step = Instant::now();
            // CPU time summed over the pool's threads, before and after.
            let cpu = |p: &rayon::ThreadPool| -> f64 {
                p.broadcast(|_| thread_cpu_seconds()).iter().sum()
            };
            let cpu0 = cpu(pool);
            let res = pool.install(|| {
                self.step().and_then(|_| {
                    in_round += 1;
                    if in_round >= self.fc.round_steps {
                        in_round = 0;
                        self.round().map(|_| ())
                    } else {
                        Ok(())
                    }
                })
            });
            self.tel.count(
                "aestream_finetune_cpu_seconds_total",
                "CPU time of the fine-tuner's threads.",
                (cpu(pool) - cpu0).max(0.0),
            );
            if busy && self.fc.busy_share < 1.0 {
                // Leave the serving pipeline the rest of the time.
                let share = self.fc.busy_share.clamp(0.05, 1.0);
                let pause = t_step.elapsed().mul_f64(1.0 / share - 1.0);
                std::thread::sleep(pause.min(Duration::from_secs(30)));
            }
            if let Err(e) = res {
                tracing::error!("fine-tune: {e}; training paused for a minute");
                std::thread::sleep(Duration::from_secs(60).min(min_gap * 100));
            }
        }
        // Stopping: the steps since the last round are kept if they make a better model
        // (validated and checkpointed like any round).
        if in_round > 0 && self.ready() {
            if let Err(e) = idle_pool.install(|| self.round()) {
                tracing::error!("fine-tune: last round: {e}");
            }
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
