//! Closed- and open-loop load with latency percentiles.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Successful calls.
    pub ok: u64,
    /// Failed calls.
    pub failed: u64,
    /// Wall time of the measured window.
    pub elapsed: Duration,
    /// Sorted latencies of successful calls, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl Measured {
    /// Successful calls per second.
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0-1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn merge(parts: Vec<(u64, u64, Vec<u32>)>, elapsed: Duration) -> Measured {
        let mut ok = 0;
        let mut failed = 0;
        let mut latencies_us = Vec::new();
        for (o, f, l) in parts {
            ok += o;
            failed += f;
            latencies_us.extend(l);
        }
        latencies_us.sort_unstable();
        Measured {
            ok,
            failed,
            elapsed,
            latencies_us,
        }
    }
}

/// Runs `workers` loops of `call` for `warmup` (not counted) then `duration`.
/// `call(worker, i)` returns whether the call succeeded.
pub async fn closed_loop<F, Fut>(
    workers: usize,
    warmup: Duration,
    duration: Duration,
    call: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (call, counting, stop) = (call.clone(), counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::with_capacity(1 << 16));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let good = call(w, i).await;
                i += 1;
                if counting.load(Ordering::Relaxed) {
                    if good {
                        ok += 1;
                        lat.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        failed += 1;
                    }
                }
            }
            (ok, failed, lat)
        }));
    }
    tokio::time::sleep(warmup).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut parts = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            parts.push(p);
        }
    }
    Measured::merge(parts, elapsed)
}

/// Starts calls at a fixed `rate` per second for `duration`, whatever the
/// answers' speed (open loop). Calls are spread over worker tasks, each with
/// its own schedule. A call that starts late because the one before it was
/// slow is timed from when it was due, so slow answers are not hidden
/// (no coordinated omission); a worker that slept is timed from its wake-up,
/// so the timer's 1 ms resolution is not charged to the server.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, call: F) -> Measured
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    const WORKERS: u64 = 64;
    let call = Arc::new(call);
    let total = (rate * duration.as_secs_f64()) as u64;
    let per_worker = Duration::from_secs_f64(WORKERS as f64 / rate.max(1.0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            let offset = per_worker.mul_f64(w as f64 / WORKERS as f64);
            let mut n = 0u64;
            loop {
                let i = n * WORKERS + w;
                if i >= total {
                    break;
                }
                let due = started + offset + per_worker.mul_f64(n as f64);
                let now = Instant::now();
                let from = if now < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                };
                if call(i).await {
                    ok += 1;
                    lat.push(from.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    failed += 1;
                }
                n += 1;
            }
            (ok, failed, lat)
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            parts.push(p);
        }
    }
    Measured::merge(parts, started.elapsed())
}

/// Runs `call(worker, i)` for `i` in `0..per_worker` on each of `workers`
/// tasks, unmeasured (to fill caches before a run); how many calls failed.
pub async fn each_once<F, Fut>(workers: usize, per_worker: u64, call: F) -> u64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                for i in 0..per_worker {
                    if !call(w, i).await {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(per_worker);
    }
    failed
}
