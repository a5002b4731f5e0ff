//! Threads: named spawning, the model's thread count, and what a process has used.
//!
//! Every pipeline thread gets a name (`decode-0`, `infer`, …) so a stack dump, `top -H` or a
//! panic message says which stage it was.

use std::thread;

/// Starts a named thread.
pub fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(name).spawn(f)
}

/// Most threads `--threads` may ask for: starting 1024 took 11 s on a 2-core machine, and
/// 100000 never finished.
pub const MAX_THREADS: usize = 256;

/// Parses a `--threads` count: 0 to [`MAX_THREADS`] (a usage error otherwise, exit 2).
pub fn threads_arg(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n > MAX_THREADS {
        return Err(format!("{n} is more than {MAX_THREADS} threads"));
    }
    Ok(n)
}

/// Sizes rayon's global pool (and candle's, which reads `RAYON_NUM_THREADS`) before any op
/// runs; 0 keeps the default (one per core). Returns the pool's size.
pub fn set_threads(threads: usize) -> Result<usize, rayon::ThreadPoolBuildError> {
    if threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    Ok(rayon::current_num_threads())
}

/// Runs candle's elementwise ops on the calling thread (`CANDLE_NUM_THREADS=1`) unless the
/// environment already sizes that pool. candle splits an elementwise op over 64 Ki values or
/// more across a pool of its own whose helpers spin (25 000 pause loops) after every op and
/// whose caller spins until they finish. Beside rayon's threads, which run the kernels'
/// gemms, and on cores shared with other jobs, that spinning took 17 % of a `conv-ae-ref`
/// training step in `perf`, more than the ops themselves (gradient sums, mostly: memory-bound
/// passes that one thread does nearly as fast). Call it before any other thread starts.
pub fn serial_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// CPU time (user + system) this process has used so far, over all its threads, in seconds.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// The process's peak resident memory (VmHWM) in MiB; NaN where /proc does not say.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
